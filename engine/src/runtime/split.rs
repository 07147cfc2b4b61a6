//! Re-keying OTLP trace batches by trace id for the repartition topic.
//!
//! A batch from an exporter that does not partition by trace id holds spans of many traces, so
//! it cannot simply be re-keyed: it is split into one request per trace (spans with their
//! resource and scope, bytes unchanged), each keyed by the trace id in hex, so every span of a
//! trace reaches the partition that owns the trace's state.

use breadcrumb_schemas::otlp::{encode_fragment, parse_request, trace_id_hex, Batch, BatchError};

/// Why a batch could not be split.
#[derive(Debug)]
pub enum SplitError<E> {
    /// The batch does not parse: bad input, for the dead-letter topic.
    Batch(BatchError),
    /// Sending a part failed.
    Emit(E),
}

/// Splits batches; its buffers are reused from one batch to the next.
#[derive(Debug, Default)]
pub struct TraceSplitter {
    batch: Batch,
    /// Span indices, sorted by trace id (stable, so batch order is kept within a trace).
    order: Vec<u32>,
    part: Vec<u8>,
}

impl TraceSplitter {
    /// Calls `emit(key, value)` once per trace of the batch in `value`, in order of trace id.
    /// Nothing is emitted for a batch that does not parse.
    pub fn split<E>(
        &mut self,
        value: &[u8],
        mut emit: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
    ) -> Result<(), SplitError<E>> {
        parse_request(value, &mut self.batch).map_err(SplitError::Batch)?;
        self.order.clear();
        self.order.extend(0..self.batch.spans.len() as u32);
        let spans = &self.batch.spans;
        self.order
            .sort_by_key(|&index| spans[index as usize].trace_id);
        let mut start = 0;
        while start < self.order.len() {
            let trace_id = spans[self.order[start] as usize].trace_id;
            let end = start
                + self.order[start..]
                    .iter()
                    .take_while(|&&index| spans[index as usize].trace_id == trace_id)
                    .count();
            // `encode_fragment` wants the spans of one scope adjacent: batch order does that.
            self.part.clear();
            encode_fragment(value, &self.batch, &self.order[start..end], &mut self.part);
            emit(&trace_id_hex(&trace_id), &self.part).map_err(SplitError::Emit)?;
            start = end;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use breadcrumb_schemas::otlp::builder::{encode_request, ResourceSpans, Span, Value};

    use super::*;

    fn span(trace: u8, id: u8, parent: Option<u8>) -> Span {
        Span {
            trace_id: [trace; 16],
            span_id: [id; 8],
            parent_span_id: parent.map(|parent| [parent; 8]),
            name: format!("op-{id}"),
            start_time_unix_nano: u64::from(id) * 1_000,
            end_time_unix_nano: u64::from(id) * 1_000 + 500,
            status_code: 0,
            attributes: vec![("n".into(), Value::Int(i64::from(id)))],
        }
    }

    #[test]
    fn one_request_per_trace_with_every_span_once() {
        let mut value = Vec::new();
        encode_request(
            &[
                ResourceSpans {
                    resource: vec![("service.name".into(), Value::Str("checkout".into()))],
                    scope_name: "a".into(),
                    spans: vec![span(1, 1, None), span(2, 2, None), span(1, 3, Some(1))],
                },
                ResourceSpans {
                    resource: vec![("service.name".into(), Value::Str("payments".into()))],
                    scope_name: "b".into(),
                    spans: vec![span(2, 4, Some(2)), span(3, 5, None)],
                },
            ],
            &mut value,
        );
        let mut splitter = TraceSplitter::default();
        let mut parts: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        splitter
            .split(&value, |key, part| -> Result<(), ()> {
                assert!(
                    parts.insert(key.to_vec(), part.to_vec()).is_none(),
                    "one part per trace"
                );
                Ok(())
            })
            .unwrap();
        assert_eq!(parts.len(), 3);
        let mut seen = Vec::new();
        for (key, part) in &parts {
            let mut batch = Batch::default();
            parse_request(part, &mut batch).expect("each part is a valid request");
            for span in &batch.spans {
                assert_eq!(trace_id_hex(&span.trace_id).as_slice(), key.as_slice());
                seen.push(part[span.content.clone()].to_vec());
            }
        }
        // Every span of the batch, once, bytes unchanged.
        let mut original = Batch::default();
        parse_request(&value, &mut original).unwrap();
        let mut expected: Vec<Vec<u8>> = original
            .spans
            .iter()
            .map(|span| value[span.content.clone()].to_vec())
            .collect();
        expected.sort();
        seen.sort();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_batch_that_does_not_parse_emits_nothing() {
        let mut splitter = TraceSplitter::default();
        let mut emitted = 0;
        let result = splitter.split(&[0x0a, 0xff, 0x01], |_, _| -> Result<(), ()> {
            emitted += 1;
            Ok(())
        });
        assert!(matches!(result, Err(SplitError::Batch(_))));
        assert_eq!(emitted, 0);
    }
}
