use breadcrumb_schemas::{Envelope, HeaderRef, RawRecord};

use super::*;
use crate::operator::{Disposition, Operator, Port};
use crate::testing::RecordingEmitter;

const KEY: &[u8] = b"0123456789abcdef-test-key";
const EMAIL: &str = "canary-7f3e@example.com";
const CARD: &str = "4111111111111111";

fn config() -> PiiConfig {
    PiiConfig {
        key_file: None,
        fields: vec![
            FieldRule {
                path: "/data/email".into(),
                action: PiiAction::Tokenize,
            },
            FieldRule {
                path: "/data/card".into(),
                action: PiiAction::Mask,
            },
            FieldRule {
                path: "/data/notes".into(),
                action: PiiAction::Drop,
            },
            FieldRule {
                path: "/data/phones/1".into(),
                action: PiiAction::Drop,
            },
        ],
        headers: vec![
            HeaderRule {
                header: "ce_email".into(),
                action: PiiAction::Tokenize,
            },
            HeaderRule {
                header: "x-ssn".into(),
                action: PiiAction::Drop,
            },
        ],
        key: Some(PiiAction::Tokenize),
        mask_keep_last_chars: 4,
    }
}

fn value(email: &str) -> String {
    serde_json::json!({
        "id": "evt-1",
        "data": {
            "email": email,
            "card": CARD,
            "notes": "call me",
            "phones": ["+100", "+200", "+300"],
            "amount": 12
        }
    })
    .to_string()
}

fn run(
    operator: &mut Pii,
    value: &str,
    headers: &[HeaderRef<'_>],
) -> (Disposition, RecordingEmitter) {
    let record = RawRecord {
        topic: "payments",
        partition: 0,
        offset: 1,
        timestamp_ms: Some(1),
        key: Some(EMAIL.as_bytes()),
        value: Some(value.as_bytes()),
        headers,
    };
    let mut out = RecordingEmitter::default();
    let disposition = operator
        .process(&record, &Envelope::default(), &mut [], &mut out)
        .unwrap();
    (disposition, out)
}

#[test]
fn fields_headers_and_key_are_rewritten_and_the_canary_is_gone() {
    let mut operator = Pii::with_key_bytes(&config(), KEY);
    let headers: [HeaderRef<'_>; 3] = [
        ("ce_email", Some(EMAIL.as_bytes())),
        ("x-ssn", Some(b"078-05-1120")),
        ("ce_type", Some(b"payment.settled")),
    ];
    let (disposition, out) = run(&mut operator, &value(EMAIL), &headers);
    assert_eq!(disposition, Disposition::Handled);
    assert_eq!(out.ports(), [Port::Main]);
    assert_eq!(out.header(0, PII_HEADER).as_deref(), Some("rewritten"));
    let record = out.emitted[0].record.clone().expect("a rewritten record");
    let value = String::from_utf8(record.value.clone().unwrap()).unwrap();
    let key = String::from_utf8(record.key.clone().unwrap()).unwrap();
    for text in [&value, &key] {
        assert!(!text.contains(EMAIL), "{text}");
        assert!(!text.contains(CARD), "{text}");
    }
    let document: serde_json::Value = serde_json::from_str(&value).unwrap();
    let email_token = document["data"]["email"].as_str().unwrap().to_owned();
    assert!(
        email_token.starts_with("tok_") && email_token.len() == 36,
        "{email_token}"
    );
    assert_eq!(
        key, email_token,
        "the same value gives the same token everywhere"
    );
    assert_eq!(document["data"]["card"], "************1111");
    assert!(document["data"].get("notes").is_none());
    assert_eq!(
        document["data"]["phones"],
        serde_json::json!(["+100", null, "+300"])
    );
    assert_eq!(document["data"]["amount"], 12);
    assert_eq!(document["id"], "evt-1");

    let header_names: Vec<&str> = record
        .headers
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(header_names, ["ce_email", "ce_type"]);
    assert_eq!(record.headers[0].1.as_deref(), Some(email_token.as_bytes()));
    assert_eq!(
        record.headers[1].1.as_deref(),
        Some(&b"payment.settled"[..])
    );
}

#[test]
fn tokens_are_deterministic_per_key_and_differ_across_keys() {
    let mut first = Pii::with_key_bytes(&config(), KEY);
    let mut again = Pii::with_key_bytes(&config(), KEY);
    let mut other_key = Pii::with_key_bytes(&config(), b"another-key-of-16-bytes-or-more");
    let token = |operator: &mut Pii, email: &str| {
        let (_, out) = run(operator, &value(email), &[]);
        let record = out.emitted[0].record.clone().unwrap();
        let document: serde_json::Value =
            serde_json::from_slice(record.value.as_ref().unwrap()).unwrap();
        document["data"]["email"].as_str().unwrap().to_owned()
    };
    let original = token(&mut first, EMAIL);
    assert_eq!(
        token(&mut first, EMAIL),
        original,
        "same operator, same token"
    );
    assert_eq!(token(&mut again, EMAIL), original, "same key, same token");
    assert_ne!(token(&mut first, "someone-else@example.com"), original);
    assert_ne!(token(&mut other_key, EMAIL), original, "the key matters");
}

#[test]
fn a_record_without_personal_data_passes_unchanged() {
    let mut config = config();
    config.key = None;
    let mut operator = Pii::with_key_bytes(&config, KEY);
    let (_, out) = run(&mut operator, r#"{"id":"x","data":{"amount":1}}"#, &[]);
    assert_eq!(out.ports(), [Port::Main]);
    assert!(out.emitted[0].record.is_none(), "emitted as is, not copied");
}

#[test]
fn a_value_that_is_not_json_is_rejected_not_passed() {
    let mut operator = Pii::with_key_bytes(&config(), KEY);
    let (disposition, out) = run(&mut operator, "not json", &[]);
    assert!(matches!(
        disposition,
        Disposition::Rejected {
            reason: "invalid_json",
            ..
        }
    ));
    assert!(out.emitted.is_empty());
}

#[test]
fn validation_names_keys_and_the_key_file_is_checked() {
    let mut config = config();
    config.fields[0].path = "data/email".into();
    config.headers[1].header = "breadcrumb-txn".into();
    let problems = config.validate("pipelines.p.pii");
    let joined = problems.join("\n");
    assert!(
        joined.contains("pipelines.p.pii.fields[0].path"),
        "{joined}"
    );
    assert!(
        joined.contains("pipelines.p.pii.headers[1].header"),
        "{joined}"
    );
    assert!(
        joined.contains("pipelines.p.pii.key_file: required"),
        "{joined}"
    );

    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, "tiny\n").unwrap();
    let mut config = self::config();
    config.key_file = Some(short);
    let error = Pii::new(&config).unwrap_err().to_string();
    assert!(
        error.starts_with("key_file:") && !error.contains("tiny"),
        "{error}"
    );

    let good = dir.path().join("good");
    std::fs::write(&good, "a-secret-key-canary-0042\n").unwrap();
    config.key_file = Some(good);
    let operator = Pii::new(&config).unwrap();
    assert!(!format!("{operator:?}").contains("canary-0042"));
}
