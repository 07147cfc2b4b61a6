//! Helpers for driving operators without an engine: in tests, property tests and benches.

use crate::operator::{Emitter, Header, Port};

/// An emitter that records what was emitted for the current record.
#[derive(Debug, Default)]
pub struct RecordingEmitter {
    /// `(port, headers)` per emission, in order.
    pub emitted: Vec<(Port, Vec<(&'static str, Vec<u8>)>)>,
}

impl RecordingEmitter {
    /// The ports emitted to, in order.
    pub fn ports(&self) -> Vec<Port> {
        self.emitted.iter().map(|(port, _)| *port).collect()
    }

    /// The value of header `name` on emission `index`, as text.
    pub fn header(&self, index: usize, name: &str) -> Option<String> {
        self.emitted.get(index).and_then(|(_, headers)| {
            headers
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
        })
    }
}

impl Emitter for RecordingEmitter {
    fn emit_current(&mut self, port: Port, headers: &[Header<'_>]) {
        self.emitted.push((
            port,
            headers
                .iter()
                .map(|header| (header.name, header.value.to_vec()))
                .collect(),
        ));
    }
}

/// An emitter that only counts emissions per port: no allocation, for benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingEmitter {
    pub main: u64,
    pub duplicates: u64,
    pub conflicts: u64,
}

impl Emitter for CountingEmitter {
    fn emit_current(&mut self, port: Port, _headers: &[Header<'_>]) {
        match port {
            Port::Main => self.main += 1,
            Port::Duplicates => self.duplicates += 1,
            Port::Conflicts => self.conflicts += 1,
        }
    }
}
