//! Rewrites personal data in a record before anything else in the pipeline sees it.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use smallvec::SmallVec;

use breadcrumb_schemas::{Envelope, HeaderRef, RawRecord};
use breadcrumb_state::PartitionStore;

use super::config::{PiiAction, PiiConfig, MIN_KEY_BYTES};
use crate::error::{OperatorError, Result};
use crate::operator::{Disposition, Emitter, Header, Operator, Port};

/// Header added to a rewritten record, so downstream consumers can tell.
pub const PII_HEADER: &str = "breadcrumb-pii";

/// Token prefix: a token is recognisable as one, and never collides with a plain value that
/// happens to be 32 hex digits.
const TOKEN_PREFIX: &str = "tok_";
/// HMAC-SHA256 bytes kept in a token (128 bits: collisions stay out of reach at any volume).
const TOKEN_BYTES: usize = 16;

/// A field rule with its pointer split once: the parent's pointer and the last token.
#[derive(Debug)]
struct CompiledField {
    path: String,
    parent: String,
    last: String,
    action: PiiAction,
}

/// Drops, masks or tokenizes configured fields and headers; see [`PiiConfig`].
pub struct Pii {
    fields: Vec<CompiledField>,
    headers: Vec<(String, PiiAction)>,
    key_action: Option<PiiAction>,
    key: Option<Hmac<Sha256>>,
    mask_keep_last_chars: usize,
    /// The rewritten value of the record being processed (reused between records).
    value: Vec<u8>,
    /// Rewritten header values, in rule order of the record's headers.
    header_values: Vec<Vec<u8>>,
    /// The rewritten Kafka key.
    record_key: Vec<u8>,
}

impl std::fmt::Debug for Pii {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never appears, not even in debug output.
        formatter
            .debug_struct("Pii")
            .field("fields", &self.fields)
            .field("headers", &self.headers)
            .field("key_action", &self.key_action)
            .field("has_key", &self.key.is_some())
            .finish()
    }
}

impl Pii {
    /// Builds the operator from a validated configuration, reading the key file.
    pub fn new(config: &PiiConfig) -> Result<Self> {
        let key = match &config.key_file {
            Some(path) => {
                let mut bytes = std::fs::read(path).map_err(|error| OperatorError::Config {
                    key: "key_file".into(),
                    message: format!("cannot read {}: {error}", path.display()),
                })?;
                while matches!(bytes.last(), Some(b'\n' | b'\r')) {
                    bytes.pop();
                }
                if bytes.len() < MIN_KEY_BYTES {
                    return Err(OperatorError::Config {
                        key: "key_file".into(),
                        message: format!(
                            "the key has {} bytes; at least {MIN_KEY_BYTES} are required",
                            bytes.len()
                        ),
                    });
                }
                Some(Self::keyed(&bytes))
            }
            None => None,
        };
        Ok(Self::with_key(config, key))
    }

    /// Builds the operator with a key given directly (tests, benches).
    pub fn with_key_bytes(config: &PiiConfig, key: &[u8]) -> Self {
        Self::with_key(config, Some(Self::keyed(key)))
    }

    fn keyed(key: &[u8]) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length")
    }

    fn with_key(config: &PiiConfig, key: Option<Hmac<Sha256>>) -> Self {
        let fields = config
            .fields
            .iter()
            .map(|rule| {
                let (parent, last) = rule.path.rsplit_once('/').unwrap_or(("", ""));
                CompiledField {
                    path: rule.path.clone(),
                    parent: parent.to_owned(),
                    last: last.replace("~1", "/").replace("~0", "~"),
                    action: rule.action,
                }
            })
            .collect();
        Self {
            fields,
            headers: config
                .headers
                .iter()
                .map(|rule| (rule.header.clone(), rule.action))
                .collect(),
            key_action: config.key,
            key,
            mask_keep_last_chars: config.mask_keep_last_chars,
            value: Vec::new(),
            header_values: Vec::new(),
            record_key: Vec::new(),
        }
    }

    /// `tok_` and the hex of the first bytes of HMAC-SHA256(key, value).
    fn token(&self, value: &[u8]) -> String {
        let mut mac = self
            .key
            .clone()
            .expect("validation requires a key when a rule tokenizes");
        mac.update(value);
        let digest = mac.finalize().into_bytes();
        let mut token = String::with_capacity(TOKEN_PREFIX.len() + TOKEN_BYTES * 2);
        token.push_str(TOKEN_PREFIX);
        for byte in &digest[..TOKEN_BYTES] {
            token.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
            token.push(char::from(b"0123456789abcdef"[usize::from(byte & 0xf)]));
        }
        token
    }

    fn mask(&self, text: &str) -> String {
        let count = text.chars().count();
        let kept = self.mask_keep_last_chars.min(count);
        let mut masked: String = std::iter::repeat_n('*', count - kept).collect();
        masked.extend(text.chars().skip(count - kept));
        masked
    }

    /// The replacement of one JSON value, or `None` to remove it.
    fn rewrite(&self, action: PiiAction, value: &Value) -> Option<Value> {
        match action {
            PiiAction::Drop => None,
            PiiAction::Mask => Some(match value {
                Value::String(text) => Value::String(self.mask(text)),
                _ => Value::Null,
            }),
            PiiAction::Tokenize => Some(Value::String(match value {
                Value::String(text) => self.token(text.as_bytes()),
                other => self.token(other.to_string().as_bytes()),
            })),
        }
    }

    /// Applies the field rules to `document`; whether anything changed.
    fn rewrite_fields(&self, document: &mut Value) -> bool {
        let mut changed = false;
        for field in &self.fields {
            let Some(current) = document.pointer(&field.path) else {
                continue;
            };
            let replacement = self.rewrite(field.action, current);
            let Some(parent) = document.pointer_mut(&field.parent) else {
                continue;
            };
            match (parent, replacement) {
                (Value::Object(map), Some(value)) => {
                    map.insert(field.last.clone(), value);
                }
                (Value::Object(map), None) => {
                    map.remove(&field.last);
                }
                (Value::Array(items), replacement) => {
                    if let Some(item) = field
                        .last
                        .parse::<usize>()
                        .ok()
                        .and_then(|index| items.get_mut(index))
                    {
                        *item = replacement.unwrap_or(Value::Null);
                    }
                }
                _ => continue,
            }
            changed = true;
        }
        changed
    }

    fn header_rule(&self, name: &str) -> Option<PiiAction> {
        self.headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, action)| *action)
    }
}

impl Operator for Pii {
    fn name(&self) -> &str {
        "pii"
    }

    fn process(
        &mut self,
        record: &RawRecord<'_>,
        _event: &Envelope,
        _stores: &mut [PartitionStore],
        out: &mut dyn Emitter,
    ) -> Result<Disposition> {
        // Values: parsed only when a field rule exists. The decoder already accepted the record,
        // but a binary-mode CloudEvent's data need not be JSON: such a value has no fields to
        // rewrite, and a rule that cannot be applied must not let it through unseen.
        let mut value_changed = false;
        if !self.fields.is_empty() {
            if let Some(bytes) = record.value {
                let Ok(mut document) = serde_json::from_slice::<Value>(bytes) else {
                    return Ok(Disposition::Rejected {
                        reason: "invalid_json",
                        message: "PII field rules need a JSON value",
                    });
                };
                if self.rewrite_fields(&mut document) {
                    self.value.clear();
                    serde_json::to_writer(&mut self.value, &document)
                        .expect("a JSON value serializes into a Vec");
                    value_changed = true;
                }
            }
        }

        // Headers: rewritten values are computed first (they need `&self`), then borrowed.
        let mut header_changed = false;
        let mut rewritten: SmallVec<[(usize, Option<usize>); 4]> = SmallVec::new();
        let mut values = std::mem::take(&mut self.header_values);
        values.clear();
        for (position, (name, header_value)) in record.headers.iter().enumerate() {
            let Some(action) = self.header_rule(name) else {
                continue;
            };
            header_changed = true;
            let replacement = match (action, header_value) {
                (PiiAction::Drop, _) => None,
                (_, None) => Some(None),
                (PiiAction::Mask, Some(bytes)) => Some(Some(
                    self.mask(&String::from_utf8_lossy(bytes)).into_bytes(),
                )),
                (PiiAction::Tokenize, Some(bytes)) => Some(Some(self.token(bytes).into_bytes())),
            };
            match replacement {
                None => rewritten.push((position, None)),
                Some(None) => rewritten.push((position, None)),
                Some(Some(bytes)) => {
                    values.push(bytes);
                    rewritten.push((position, Some(values.len() - 1)));
                }
            }
        }

        // The key.
        let key_rewrite = match (self.key_action, record.key) {
            (Some(action), Some(key)) => Some(match action {
                PiiAction::Drop => None,
                PiiAction::Mask => {
                    self.record_key = self.mask(&String::from_utf8_lossy(key)).into_bytes();
                    Some(())
                }
                PiiAction::Tokenize => {
                    self.record_key = self.token(key).into_bytes();
                    Some(())
                }
            }),
            _ => None,
        };

        if !value_changed && !header_changed && key_rewrite.is_none() {
            out.emit_current(Port::Main, &[]);
            self.header_values = values;
            return Ok(Disposition::Handled);
        }
        let mut headers: SmallVec<[HeaderRef<'_>; 16]> = SmallVec::new();
        for (position, header) in record.headers.iter().enumerate() {
            match rewritten.iter().find(|(at, _)| *at == position) {
                None => headers.push(*header),
                Some((_, Some(index))) => headers.push((header.0, Some(values[*index].as_slice()))),
                Some((_, None)) => {
                    // Dropped, or a null value kept null.
                    if self.header_rule(header.0) != Some(PiiAction::Drop) {
                        headers.push((header.0, None));
                    }
                }
            }
        }
        let rewritten_record = RawRecord {
            key: match key_rewrite {
                None => record.key,
                Some(None) => None,
                Some(Some(())) => Some(self.record_key.as_slice()),
            },
            value: if value_changed {
                Some(self.value.as_slice())
            } else {
                record.value
            },
            headers: &headers,
            ..*record
        };
        out.emit_record(
            Port::Main,
            &rewritten_record,
            &[Header {
                name: PII_HEADER,
                value: b"rewritten",
            }],
        );
        drop(headers);
        self.header_values = values;
        Ok(Disposition::Handled)
    }
}
