//! Helpers for driving operators without an engine: in tests, property tests and benches.

use breadcrumb_schemas::{RawRecord, StoredRecord};

use crate::operator::{Emitter, Header, Port};

/// One emission seen by a [`RecordingEmitter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emission {
    pub port: Port,
    /// Headers the operator added.
    pub headers: Vec<(&'static str, Vec<u8>)>,
    /// The record emitted, or `None` for the record being processed.
    pub record: Option<StoredRecord>,
}

/// An emitter that records what was emitted.
#[derive(Debug, Default)]
pub struct RecordingEmitter {
    /// Emissions in order.
    pub emitted: Vec<Emission>,
}

impl RecordingEmitter {
    /// The ports emitted to, in order.
    pub fn ports(&self) -> Vec<Port> {
        self.emitted.iter().map(|emission| emission.port).collect()
    }

    /// The value of header `name` on emission `index`, as text.
    pub fn header(&self, index: usize, name: &str) -> Option<String> {
        self.emitted.get(index).and_then(|emission| {
            emission
                .headers
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
        })
    }
}

fn owned_headers(headers: &[Header<'_>]) -> Vec<(&'static str, Vec<u8>)> {
    headers
        .iter()
        .map(|header| (header.name, header.value.to_vec()))
        .collect()
}

impl Emitter for RecordingEmitter {
    fn emit_current(&mut self, port: Port, headers: &[Header<'_>]) {
        self.emitted.push(Emission {
            port,
            headers: owned_headers(headers),
            record: None,
        });
    }

    fn emit_record(&mut self, port: Port, record: &RawRecord<'_>, headers: &[Header<'_>]) {
        let mut bytes = Vec::new();
        StoredRecord::encode(record, &mut bytes);
        self.emitted.push(Emission {
            port,
            headers: owned_headers(headers),
            record: Some(StoredRecord::decode(&bytes).expect("a record just encoded decodes")),
        });
    }
}

/// An emitter that only counts emissions per port: no allocation, for benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingEmitter {
    pub main: u64,
    pub duplicates: u64,
    pub conflicts: u64,
    pub late: u64,
    pub gaps: u64,
    pub decisions: u64,
    pub lineage: u64,
}

impl CountingEmitter {
    fn count(&mut self, port: Port) {
        match port {
            Port::Main => self.main += 1,
            Port::Duplicates => self.duplicates += 1,
            Port::Conflicts => self.conflicts += 1,
            Port::Late => self.late += 1,
            Port::Gaps => self.gaps += 1,
            Port::Decisions => self.decisions += 1,
            Port::Lineage => self.lineage += 1,
        }
    }
}

impl Emitter for CountingEmitter {
    fn emit_current(&mut self, port: Port, _headers: &[Header<'_>]) {
        self.count(port);
    }

    fn emit_record(&mut self, port: Port, _record: &RawRecord<'_>, _headers: &[Header<'_>]) {
        self.count(port);
    }
}
