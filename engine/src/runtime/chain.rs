//! A pipeline's operators run as a chain inside one transaction: what an operator emits on
//! [`Port::Main`] is the next operator's input; every other port, and the last operator's main
//! output, leaves through the [`Sink`].
//!
//! Records an operator releases from state (rather than the record being processed) are decoded
//! again for the next operator: decoding is deterministic, so the envelope is the one the first
//! operator saw.

use breadcrumb_operators::lineage::Span;
use breadcrumb_operators::{
    Disposition, Emitter, Header, Lookup, LookupKind, Operator, Port, Waiting,
};
use breadcrumb_schemas::{DecodeErrorClass, Decoder, Envelope, HeaderRef, RawRecord};
use breadcrumb_state::PartitionStore;
use smallvec::SmallVec;

use super::pipeline::decode_reason;
use crate::error::{EngineError, Result};

/// Longest chain a pipeline may have; per-transaction counters are sized by it.
pub const MAX_OPERATORS: usize = 4;

/// Where records leave the chain.
pub trait Sink {
    /// `operator` (its position in the chain) emitted `record` to `port`, with `headers` added.
    /// `event` is its decoded envelope when the chain has it at hand (the record being
    /// processed), `None` for a record released from state.
    fn send(
        &mut self,
        operator: usize,
        port: Port,
        record: &RawRecord<'_>,
        event: Option<&Envelope>,
        headers: &[Header<'_>],
    );

    /// An operator rejected `record`: it goes to the dead-letter topic.
    fn reject(&mut self, record: &RawRecord<'_>, reason: &'static str, message: &str);
}

/// The operators of a pipeline and how the stores of a partition split between them.
pub struct OperatorChain {
    operators: Vec<Box<dyn Operator>>,
    /// Number of stores of each operator, in chain order; a partition's stores are the
    /// concatenation.
    store_counts: Vec<usize>,
}

impl OperatorChain {
    pub fn new(operators: Vec<Box<dyn Operator>>) -> Self {
        assert!(
            !operators.is_empty() && operators.len() <= MAX_OPERATORS,
            "a chain has 1 to {MAX_OPERATORS} operators"
        );
        let store_counts = operators
            .iter()
            .map(|operator| operator.stores().len())
            .collect();
        Self {
            operators,
            store_counts,
        }
    }

    pub fn len(&self) -> usize {
        self.operators.len()
    }

    pub fn is_empty(&self) -> bool {
        self.operators.is_empty()
    }

    /// Runs `record` through the chain.
    pub fn process(
        &mut self,
        record: &RawRecord<'_>,
        envelope: &Envelope,
        stores: &mut [PartitionStore],
        decoder: &dyn Decoder,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        let (first, rest) = self
            .operators
            .split_first_mut()
            .expect("a chain is never empty");
        let (first_stores, rest_stores) = stores.split_at_mut(self.store_counts[0]);
        let mut error = None;
        let disposition = {
            let mut link = Link {
                index: 0,
                rest,
                rest_stores,
                store_counts: &self.store_counts[1..],
                decoder,
                current: Some((record, envelope)),
                sink: &mut *sink,
                error: &mut error,
            };
            first.process(record, envelope, first_stores, &mut link)?
        };
        if let Some(error) = error {
            return Err(error);
        }
        if let Disposition::Rejected { reason, message } = disposition {
            sink.reject(record, reason, message);
        }
        Ok(())
    }

    /// Hands a span of the partition's trace side input to every operator (those that do not
    /// join spans ignore it). What they release goes on down the chain.
    pub fn process_span(
        &mut self,
        span: &Span<'_>,
        stores: &mut [PartitionStore],
        decoder: &dyn Decoder,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        self.each_with_link(stores, decoder, sink, |operator, own, link| {
            operator.process_span(span, own, link)
        })
    }

    /// Lets every operator act on processing time.
    pub fn on_processing_time(
        &mut self,
        stores: &mut [PartitionStore],
        now_ms: i64,
        decoder: &dyn Decoder,
        sink: &mut dyn Sink,
    ) -> Result<()> {
        self.each_with_link(stores, decoder, sink, |operator, own, link| {
            operator.on_processing_time(own, now_ms, link)
        })
    }

    /// Calls `hook` on every operator in chain order with its stores and an emitter whose main
    /// output goes on to the operators after it. Nothing is being processed: an operator may
    /// only emit records it holds or generates.
    fn each_with_link(
        &mut self,
        stores: &mut [PartitionStore],
        decoder: &dyn Decoder,
        sink: &mut dyn Sink,
        mut hook: impl FnMut(
            &mut dyn Operator,
            &mut [PartitionStore],
            &mut dyn Emitter,
        ) -> breadcrumb_operators::Result<()>,
    ) -> Result<()> {
        let mut stores = stores;
        for index in 0..self.operators.len() {
            let (operator, rest) = self.operators[index..]
                .split_first_mut()
                .expect("index is in range");
            let (own, rest_stores) = stores.split_at_mut(self.store_counts[index]);
            let mut error = None;
            {
                let mut link = Link {
                    index,
                    rest,
                    rest_stores: &mut *rest_stores,
                    store_counts: &self.store_counts[index + 1..],
                    decoder,
                    current: None,
                    sink: &mut *sink,
                    error: &mut error,
                };
                hook(operator.as_mut(), own, &mut link)?;
            }
            if let Some(error) = error {
                return Err(error);
            }
            stores = rest_stores;
        }
        Ok(())
    }

    pub fn open_partition(&mut self, stores: &mut [PartitionStore]) -> Result<()> {
        self.each(stores, |operator, own| operator.open_partition(own))
    }

    pub fn checkpoint(
        &mut self,
        stores: &mut [PartitionStore],
        last_input_offset: i64,
    ) -> Result<()> {
        self.each(stores, |operator, own| {
            operator.checkpoint(own, last_input_offset)
        })
    }

    pub fn abort_partition(&mut self, stores: &mut [PartitionStore]) -> Result<()> {
        self.each(stores, |operator, own| operator.abort_partition(own))
    }

    pub fn close_partition(&mut self, partition: i32) {
        for operator in &mut self.operators {
            operator.close_partition(partition);
        }
    }

    pub fn close(&mut self) {
        for operator in &mut self.operators {
            operator.close();
        }
    }

    /// Events held by operator `index` for `partition`.
    pub fn waiting(&self, index: usize, partition: i32) -> Waiting {
        self.operators[index].waiting(partition)
    }

    /// Whether an operator of the chain answers lookups of `kind`.
    pub fn answers(&self, kind: LookupKind) -> bool {
        self.operators.iter().any(|operator| operator.answers(kind))
    }

    /// Asks the first operator that answers `lookup`'s kind, with its own stores of the
    /// partition. Reads only (see [`Operator::lookup`]).
    pub fn lookup(
        &mut self,
        stores: &mut [PartitionStore],
        lookup: &Lookup<'_>,
    ) -> Result<Option<serde_json::Value>> {
        let mut stores = stores;
        for (operator, count) in self.operators.iter_mut().zip(&self.store_counts) {
            let (own, rest) = stores.split_at_mut(*count);
            if operator.answers(lookup.kind()) {
                return Ok(operator.lookup(own, lookup)?);
            }
            stores = rest;
        }
        Ok(None)
    }

    fn each(
        &mut self,
        stores: &mut [PartitionStore],
        mut hook: impl FnMut(
            &mut dyn Operator,
            &mut [PartitionStore],
        ) -> breadcrumb_operators::Result<()>,
    ) -> Result<()> {
        let mut stores = stores;
        for (operator, count) in self.operators.iter_mut().zip(&self.store_counts) {
            let (own, rest) = stores.split_at_mut(*count);
            hook(operator.as_mut(), own)?;
            stores = rest;
        }
        Ok(())
    }
}

/// The emitter handed to operator `index`: main output goes on to the next operator.
struct Link<'a> {
    index: usize,
    rest: &'a mut [Box<dyn Operator>],
    rest_stores: &'a mut [PartitionStore],
    store_counts: &'a [usize],
    decoder: &'a dyn Decoder,
    /// The record being processed and its envelope; `None` on a processing-time tick.
    current: Option<(&'a RawRecord<'a>, &'a Envelope)>,
    sink: &'a mut dyn Sink,
    error: &'a mut Option<EngineError>,
}

impl Link<'_> {
    fn forward(
        &mut self,
        port: Port,
        record: &RawRecord<'_>,
        envelope: Option<&Envelope>,
        headers: &[Header<'_>],
    ) {
        if self.error.is_some() {
            return;
        }
        if port != Port::Main || self.rest.is_empty() {
            self.sink.send(self.index, port, record, envelope, headers);
            return;
        }
        // The next operator sees the headers this one added, as the output topic would.
        let merged_headers: SmallVec<[HeaderRef<'_>; 16]> = record
            .headers
            .iter()
            .copied()
            .chain(
                headers
                    .iter()
                    .map(|header| (header.name, Some(header.value))),
            )
            .collect();
        let merged = RawRecord {
            headers: &merged_headers,
            ..*record
        };
        let decoded;
        let envelope = match envelope {
            Some(envelope) => envelope,
            None => {
                let mut fresh = Envelope::default();
                if let Err(error) = self.decoder.decode(&merged, &mut fresh) {
                    if error.class == DecodeErrorClass::SchemaUnavailable {
                        *self.error = Some(EngineError::SchemaUnavailable(error.message));
                    } else {
                        self.sink
                            .reject(&merged, decode_reason(error.class), &error.message);
                    }
                    return;
                }
                decoded = fresh;
                &decoded
            }
        };
        let (next, rest) = self
            .rest
            .split_first_mut()
            .expect("checked non-empty above");
        let (next_stores, rest_stores) = self.rest_stores.split_at_mut(self.store_counts[0]);
        let mut link = Link {
            index: self.index + 1,
            rest,
            rest_stores,
            store_counts: &self.store_counts[1..],
            decoder: self.decoder,
            current: Some((&merged, envelope)),
            sink: &mut *self.sink,
            error: &mut *self.error,
        };
        match next.process(&merged, envelope, next_stores, &mut link) {
            Ok(Disposition::Handled) => {}
            Ok(Disposition::Rejected { reason, message }) => {
                link.sink.reject(&merged, reason, message)
            }
            Err(error) => *link.error = Some(error.into()),
        }
    }
}

impl Emitter for Link<'_> {
    fn emit_current(&mut self, port: Port, headers: &[Header<'_>]) {
        match self.current {
            Some((record, envelope)) => self.forward(port, record, Some(envelope), headers),
            None => {
                *self.error = Some(EngineError::Fatal(format!(
                    "operator {} emitted the current record outside of processing",
                    self.index
                )))
            }
        }
    }

    fn emit_record(&mut self, port: Port, record: &RawRecord<'_>, headers: &[Header<'_>]) {
        self.forward(port, record, None, headers);
    }
}
