use proptest::prelude::*;

use super::builder::{encode_request, ResourceSpans, Span, Value};
use super::*;

fn span(trace: u8, id: u8, parent: Option<u8>, status_code: u8) -> Span {
    Span {
        trace_id: [trace; 16],
        span_id: [id; 8],
        parent_span_id: parent.map(|parent| [parent; 8]),
        name: format!("span-{id}"),
        start_time_unix_nano: 1_000_000_000 * u64::from(id),
        end_time_unix_nano: 1_000_000_000 * u64::from(id) + 5_000_000,
        status_code,
        attributes: vec![
            ("http.route".into(), Value::Str("/pay".into())),
            ("retry".into(), Value::Bool(true)),
            ("attempt".into(), Value::Int(-3)),
            ("ratio".into(), Value::Double(0.5)),
        ],
    }
}

#[test]
fn parse_reads_spans_and_attributes() {
    let mut value = Vec::new();
    encode_request(
        &[
            ResourceSpans {
                resource: vec![("service.name".into(), Value::Str("checkout".into()))],
                scope_name: "a".into(),
                spans: vec![span(1, 1, None, 2), span(2, 2, Some(1), 0)],
            },
            ResourceSpans {
                resource: vec![],
                scope_name: "b".into(),
                spans: vec![span(1, 3, Some(1), 1)],
            },
        ],
        &mut value,
    );
    let mut batch = Batch::default();
    parse_request(&value, &mut batch).unwrap();
    assert_eq!(batch.resources.len(), 2);
    assert_eq!(batch.scopes.len(), 2);
    assert_eq!(batch.spans.len(), 3);
    let first = &batch.spans[0];
    assert_eq!(first.trace_id, [1; 16]);
    assert!(!first.has_parent);
    assert_eq!(first.status_code, STATUS_ERROR);
    assert_eq!(first.start_time_unix_nano, 1_000_000_000);
    assert_eq!(first.end_time_unix_nano, 1_005_000_000);
    assert!(batch.spans[1].has_parent);
    assert_eq!(batch.spans[2].status_code, STATUS_OK);
    assert_eq!(batch.spans[2].scope, 1);
    let attributes: Vec<_> = attributes(&value[first.content.clone()], SPAN_ATTRIBUTES).collect();
    assert_eq!(
        attributes,
        vec![
            ("http.route", AttributeValue::Str("/pay")),
            ("retry", AttributeValue::Bool(true)),
            ("attempt", AttributeValue::Int(-3)),
            ("ratio", AttributeValue::Double(0.5)),
        ]
    );
    let resource = batch.resources[0].resource.clone().unwrap();
    let resource: Vec<_> = attributes_of(&value[resource]);
    assert_eq!(
        resource,
        vec![("service.name".to_owned(), "checkout".to_owned())]
    );
}

fn attributes_of(message: &[u8]) -> Vec<(String, String)> {
    attributes(message, RESOURCE_ATTRIBUTES)
        .map(|(key, value)| match value {
            AttributeValue::Str(text) => (key.to_owned(), text.to_owned()),
            other => (key.to_owned(), format!("{other:?}")),
        })
        .collect()
}

#[test]
fn fragments_hold_exactly_the_chosen_spans_with_their_resource_and_scope() {
    let mut value = Vec::new();
    encode_request(
        &[
            ResourceSpans {
                resource: vec![("service.name".into(), Value::Str("a".into()))],
                scope_name: "s1".into(),
                spans: vec![
                    span(1, 1, None, 0),
                    span(2, 2, None, 0),
                    span(1, 3, Some(1), 0),
                ],
            },
            ResourceSpans {
                resource: vec![("service.name".into(), Value::Str("b".into()))],
                scope_name: "s2".into(),
                spans: vec![span(1, 4, Some(1), 2)],
            },
        ],
        &mut value,
    );
    let mut batch = Batch::default();
    parse_request(&value, &mut batch).unwrap();
    let mut fragment = Vec::new();
    encode_fragment(&value, &batch, &[0, 2], &mut fragment);
    encode_fragment(&value, &batch, &[3], &mut fragment);
    let mut again = Batch::default();
    parse_request(&fragment, &mut again).unwrap();
    assert_eq!(again.resources.len(), 2);
    let spans: Vec<&[u8]> = again
        .spans
        .iter()
        .map(|span| &fragment[span.content.clone()])
        .collect();
    let expected: Vec<&[u8]> = [0usize, 2, 3]
        .iter()
        .map(|&index| &value[batch.spans[index].content.clone()])
        .collect();
    assert_eq!(spans, expected);
    let resources: Vec<&[u8]> = again
        .resources
        .iter()
        .map(|resource| &fragment[resource.resource.clone().unwrap()])
        .collect();
    assert_eq!(
        resources,
        vec![
            &value[batch.resources[0].resource.clone().unwrap()],
            &value[batch.resources[1].resource.clone().unwrap()]
        ]
    );
    assert_eq!(
        &fragment[again.scopes[1].scope.clone().unwrap()],
        &value[batch.scopes[1].scope.clone().unwrap()]
    );
}

#[test]
fn malformed_batches_are_rejected() {
    let mut batch = Batch::default();
    let mut value = Vec::new();
    encode_request(
        &[ResourceSpans {
            resource: vec![],
            scope_name: "s".into(),
            spans: vec![span(1, 1, None, 0)],
        }],
        &mut value,
    );
    for cut in 1..value.len() {
        assert!(
            parse_request(&value[..cut], &mut batch).is_err(),
            "cut at {cut}"
        );
    }
    let mut zero = Vec::new();
    encode_request(
        &[ResourceSpans {
            resource: vec![],
            scope_name: "s".into(),
            spans: vec![span(0, 1, None, 0)],
        }],
        &mut zero,
    );
    assert_eq!(
        parse_request(&zero, &mut batch),
        Err(BatchError::InvalidTraceId)
    );
    assert!(parse_request(b"{\"resourceSpans\":[]}", &mut batch).is_err());
    assert_eq!(parse_request(&[], &mut batch), Ok(()));
    assert!(batch.spans.is_empty());
}

#[test]
fn otlp_json_converts_to_the_same_spans() {
    let json = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"checkout"}}]},
      "scopeSpans":[{"scope":{"name":"lib","version":"1"},"spans":[
        {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","parentSpanId":"",
         "name":"GET /pay","kind":2,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":1544712661000000000,
         "attributes":[{"key":"http.status_code","value":{"intValue":"503"}},{"key":"ok","value":{"boolValue":false}},
                       {"key":"tags","value":{"arrayValue":{"values":[{"stringValue":"a"}]}}},
                       {"key":"raw","value":{"bytesValue":"AQI="}}],
         "events":[{"timeUnixNano":"1544712660500000000","name":"retry"}],
         "status":{"code":"STATUS_CODE_ERROR","message":"boom"}},
        {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b175","parentSpanId":"eee19b7ec3c1b174",
         "startTimeUnixNano":"1544712660100000000","endTimeUnixNano":"1544712660200000000","status":{}}]}]}]}"#;
    let mut proto = Vec::new();
    json::to_protobuf(json, &mut proto).unwrap();
    let mut batch = Batch::default();
    parse_request(&proto, &mut batch).unwrap();
    assert_eq!(batch.spans.len(), 2);
    let root = &batch.spans[0];
    assert_eq!(
        trace_id_hex(&root.trace_id),
        *b"5b8efff798038103d269b633813fc60c"
    );
    assert!(!root.has_parent);
    assert_eq!(root.status_code, STATUS_ERROR);
    assert_eq!(root.start_time_unix_nano, 1_544_712_660_000_000_000);
    assert_eq!(root.end_time_unix_nano, 1_544_712_661_000_000_000);
    let attributes: Vec<_> = attributes(&proto[root.content.clone()], SPAN_ATTRIBUTES).collect();
    assert_eq!(
        attributes[0],
        ("http.status_code", AttributeValue::Int(503))
    );
    assert_eq!(attributes[1], ("ok", AttributeValue::Bool(false)));
    assert_eq!(attributes[2], ("tags", AttributeValue::Other));
    assert!(batch.spans[1].has_parent);
    assert_eq!(batch.spans[1].status_code, STATUS_UNSET);

    let mut out = Vec::new();
    assert_eq!(
        json::to_protobuf(b"{", &mut out),
        Err(json::JsonError::Syntax)
    );
    assert!(json::to_protobuf(br#"{"resourceSpans":{}}"#, &mut out).is_err());
    assert!(json::to_protobuf(
        br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"xyz"}]}]}]}"#,
        &mut out
    )
    .is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn no_input_panics_the_walker(value in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut batch = Batch::default();
        if parse_request(&value, &mut batch).is_ok() {
            for span in &batch.spans {
                let _ = attributes(&value[span.content.clone()], SPAN_ATTRIBUTES).count();
            }
            let all: Vec<u32> = (0..batch.spans.len() as u32).collect();
            let mut fragment = Vec::new();
            encode_fragment(&value, &batch, &all, &mut fragment);
            let mut again = Batch::default();
            prop_assert!(parse_request(&fragment, &mut again).is_ok());
            prop_assert_eq!(again.spans.len(), batch.spans.len());
        }
        let mut out = Vec::new();
        let _ = json::to_protobuf(&value, &mut out);
    }
}

#[test]
fn span_identity_and_service_name_are_read_from_the_batch() {
    let mut value = Vec::new();
    encode_request(
        &[
            ResourceSpans {
                resource: vec![
                    ("host".into(), Value::Str("h1".into())),
                    ("service.name".into(), Value::Str("payments".into())),
                ],
                scope_name: "a".into(),
                spans: vec![span(1, 1, None, 0), span(1, 2, Some(1), 0)],
            },
            ResourceSpans {
                resource: vec![("service.name".into(), Value::Int(3))],
                scope_name: "b".into(),
                spans: vec![span(1, 3, Some(2), 0)],
            },
        ],
        &mut value,
    );
    let mut batch = Batch::default();
    parse_request(&value, &mut batch).unwrap();
    let identities: Vec<_> = batch
        .spans
        .iter()
        .map(|span| span_identity(&value[span.content.clone()]).unwrap())
        .collect();
    assert_eq!(identities[0].span_id, [1; 8]);
    assert_eq!(identities[0].parent_span_id, None);
    assert_eq!(identities[0].name, "span-1");
    assert_eq!(identities[1].parent_span_id, Some([1; 8]));
    assert_eq!(identities[2].parent_span_id, Some([2; 8]));
    let services: Vec<_> = batch
        .resources
        .iter()
        .map(|resource| service_name(&value[resource.resource.clone().unwrap()]))
        .collect();
    // A `service.name` that is not a string is no service name.
    assert_eq!(services, vec![Some("payments"), None]);
}

#[test]
fn span_identity_refuses_ids_of_the_wrong_length() {
    let mut message = Vec::new();
    wire::put_bytes_field(&mut message, 2, &[1, 2, 3]);
    assert_eq!(span_identity(&message), None);
    message.clear();
    wire::put_bytes_field(&mut message, 2, &[1; 8]);
    wire::put_bytes_field(&mut message, 4, &[2; 5]);
    assert_eq!(span_identity(&message), None);
    message.clear();
    wire::put_bytes_field(&mut message, 2, &[1; 8]);
    wire::put_bytes_field(&mut message, 4, &[]);
    assert_eq!(
        span_identity(&message),
        Some(SpanIdentity {
            span_id: [1; 8],
            parent_span_id: None,
            name: ""
        })
    );
}
