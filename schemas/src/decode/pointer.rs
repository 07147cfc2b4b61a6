//! Reads the values at a fixed set of JSON pointers in one pass over the input, without building a
//! `serde_json::Value` tree: the pointers form a trie, parts of the document off every path are
//! skipped, and strings are borrowed from the input when they need no unescaping.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use smallvec::SmallVec;

use super::common::{parse_json, Scalar};

/// A set of JSON pointers (RFC 6901), each given a slot number in the order added.
#[derive(Debug, Default)]
pub(crate) struct PathTree {
    root: Node,
    slot_count: usize,
}

/// A position in the trie: the slots whose pointer ends here and the tokens that go deeper.
#[derive(Debug, Default)]
pub(crate) struct Node {
    /// Slots filled with the value found at this node.
    pub(crate) slots: Vec<usize>,
    pub(crate) children: Vec<Child>,
}

#[derive(Debug)]
pub(crate) struct Child {
    /// The unescaped reference token (object member name or array index).
    pub(crate) token: String,
    /// The token as an array index, when it is one (`0` or digits without a leading zero).
    pub(crate) index: Option<usize>,
    /// The pointer up to and including this token, for messages.
    pub(crate) pointer: String,
    pub(crate) node: Node,
}

/// Why [`PathTree::capture`] failed.
#[derive(Debug)]
pub(crate) enum CaptureError {
    /// The input is not well-formed JSON.
    Json(serde_json::Error),
    /// An object on a configured path repeats a member name on that path; which value is meant
    /// would be ambiguous. Carries the pointer to the repeated member.
    DuplicateKey(String),
}

impl PathTree {
    /// Adds `pointer` and returns its slot. A pointer that is neither empty nor starts with `/`
    /// gets a slot that never resolves (as `serde_json::Value::pointer` would return `None`).
    pub(crate) fn add(&mut self, pointer: &str) -> usize {
        let slot = self.slot_count;
        self.slot_count += 1;
        if !pointer.is_empty() && !pointer.starts_with('/') {
            return slot;
        }
        let mut node = &mut self.root;
        let mut prefix = String::new();
        for raw in pointer.split('/').skip(1) {
            prefix.push('/');
            prefix.push_str(raw);
            let token = raw.replace("~1", "/").replace("~0", "~");
            let position = match node.children.iter().position(|child| child.token == token) {
                Some(position) => position,
                None => {
                    node.children.push(Child {
                        index: array_index(&token),
                        token,
                        pointer: prefix.clone(),
                        node: Node::default(),
                    });
                    node.children.len() - 1
                }
            };
            node = &mut node.children[position].node;
        }
        node.slots.push(slot);
        slot
    }

    /// The trie's root: the slots of the empty pointer (the whole value) and the first tokens.
    pub(crate) fn root(&self) -> &Node {
        &self.root
    }

    /// How many slots have been handed out.
    pub(crate) fn slot_count(&self) -> usize {
        self.slot_count
    }

    /// Parses `text` and stores in `slots` (indexed by slot, at least `slot_count` long, all
    /// [`Scalar::Missing`] on entry) the value at every pointer that resolves.
    pub(crate) fn capture<'de>(
        &self,
        text: &'de str,
        slots: &mut [Scalar<'de>],
    ) -> Result<(), CaptureError> {
        let mut context = Context {
            slots,
            duplicate: None,
        };
        let result = parse_json(
            text,
            NodeSeed {
                node: &self.root,
                context: &mut context,
            },
        );
        if let Some(pointer) = context.duplicate {
            return Err(CaptureError::DuplicateKey(pointer.to_owned()));
        }
        result.map_err(CaptureError::Json)
    }
}

/// RFC 6901 array index: `0`, or digits without a leading zero.
fn array_index(token: &str) -> Option<usize> {
    let bytes = token.as_bytes();
    if bytes.is_empty()
        || !bytes.iter().all(u8::is_ascii_digit)
        || (bytes.len() > 1 && bytes.first() == Some(&b'0'))
    {
        return None;
    }
    token.parse().ok()
}

struct Context<'t, 's, 'de> {
    slots: &'s mut [Scalar<'de>],
    duplicate: Option<&'t str>,
}

impl<'de> Context<'_, '_, 'de> {
    fn fill(&mut self, node: &Node, value: Scalar<'de>) {
        for &slot in &node.slots {
            if let Some(target) = self.slots.get_mut(slot) {
                *target = value.clone();
            }
        }
    }
}

struct NodeSeed<'t, 'c, 's, 'de> {
    node: &'t Node,
    context: &'c mut Context<'t, 's, 'de>,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_, '_, '_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_, '_, '_, 'de> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<(), E> {
        self.context.fill(self.node, Scalar::Bool(value));
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<(), E> {
        self.context.fill(self.node, Scalar::I64(value));
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<(), E> {
        self.context.fill(self.node, Scalar::U64(value));
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<(), E> {
        self.context.fill(self.node, Scalar::F64(value));
        Ok(())
    }

    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<(), E> {
        self.context.fill(self.node, Scalar::Str(value.into()));
        Ok(())
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<(), E> {
        if !self.node.slots.is_empty() {
            self.context
                .fill(self.node, Scalar::Str(value.to_owned().into()));
        }
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.context.fill(self.node, Scalar::Null);
        Ok(())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.context.fill(self.node, Scalar::Array);
        let children = &self.node.children;
        let mut index = 0usize;
        loop {
            let child = children.iter().find(|child| child.index == Some(index));
            let more = match child {
                Some(child) => seq
                    .next_element_seed(NodeSeed {
                        node: &child.node,
                        context: &mut *self.context,
                    })?
                    .is_some(),
                None => seq.next_element::<IgnoredAny>()?.is_some(),
            };
            if !more {
                return Ok(());
            }
            index = index.saturating_add(1);
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.context.fill(self.node, Scalar::Object);
        let children = &self.node.children;
        let mut seen: SmallVec<[bool; 8]> = SmallVec::from_elem(false, children.len());
        while let Some(found) = map.next_key_seed(KeySeed { children })? {
            let matched = found.and_then(|position| Some((children.get(position)?, position)));
            match matched {
                Some((child, position)) => {
                    if let Some(seen) = seen.get_mut(position) {
                        if *seen {
                            self.context.duplicate = Some(&child.pointer);
                            return Err(de::Error::custom("duplicate key on a configured path"));
                        }
                        *seen = true;
                    }
                    map.next_value_seed(NodeSeed {
                        node: &child.node,
                        context: &mut *self.context,
                    })?;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Reads an object member name and returns the position of the child it names, if any.
struct KeySeed<'t> {
    children: &'t [Child],
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an object member name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.children.iter().position(|child| child.token == key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    /// What `serde_json::Value::pointer` finds, reduced to a [`Scalar`].
    fn reference(value: &Value, pointer: &str) -> Scalar<'static> {
        match value.pointer(pointer) {
            None => Scalar::Missing,
            Some(Value::Null) => Scalar::Null,
            Some(Value::Bool(flag)) => Scalar::Bool(*flag),
            Some(Value::Number(number)) => {
                if let Some(number) = number.as_u64() {
                    Scalar::U64(number)
                } else if let Some(number) = number.as_i64() {
                    Scalar::I64(number)
                } else {
                    Scalar::F64(number.as_f64().unwrap())
                }
            }
            Some(Value::String(text)) => Scalar::Str(text.clone().into()),
            Some(Value::Array(_)) => Scalar::Array,
            Some(Value::Object(_)) => Scalar::Object,
        }
    }

    fn capture_all(pointers: &[&str], text: &str) -> Result<Vec<Scalar<'static>>, String> {
        let mut tree = PathTree::default();
        for pointer in pointers {
            tree.add(pointer);
        }
        let mut slots = vec![Scalar::Missing; tree.slot_count()];
        tree.capture(text, &mut slots)
            .map_err(|error| match error {
                CaptureError::Json(error) => format!("json: {error}"),
                CaptureError::DuplicateKey(pointer) => format!("duplicate: {pointer}"),
            })?;
        Ok(slots
            .into_iter()
            .map(|scalar| match scalar {
                Scalar::Str(text) => Scalar::Str(text.into_owned().into()),
                Scalar::Missing => Scalar::Missing,
                Scalar::Null => Scalar::Null,
                Scalar::I64(number) => Scalar::I64(number),
                Scalar::U64(number) => Scalar::U64(number),
                Scalar::F64(number) => Scalar::F64(number),
                Scalar::Bool(flag) => Scalar::Bool(flag),
                Scalar::Object => Scalar::Object,
                Scalar::Array => Scalar::Array,
            })
            .collect())
    }

    #[test]
    fn finds_nested_members_and_array_elements() {
        let text = r#"{"payment": {"id": "p-1", "lines": [{"sku": "a"}, {"sku": "b"}],
            "amount": 12.5, "n": -4}, "a/b": {"c~d": true}, "": 1, "x": null}"#;
        let pointers = [
            "/payment/id",
            "/payment/lines/1/sku",
            "/payment/lines/01",
            "/payment/lines/2",
            "/payment/amount",
            "/payment/n",
            "/a~1b/c~0d",
            "/",
            "/x",
            "/missing",
            "/payment",
            "/payment/lines",
            "",
            "no-slash",
            "/payment/id",
        ];
        let found = capture_all(&pointers, text).unwrap();
        assert_eq!(
            found,
            [
                Scalar::Str("p-1".into()),
                Scalar::Str("b".into()),
                Scalar::Missing,
                Scalar::Missing,
                Scalar::F64(12.5),
                Scalar::I64(-4),
                Scalar::Bool(true),
                Scalar::U64(1),
                Scalar::Null,
                Scalar::Missing,
                Scalar::Object,
                Scalar::Array,
                Scalar::Object,
                Scalar::Missing,
                Scalar::Str("p-1".into()),
            ]
        );
    }

    #[test]
    fn duplicate_keys_on_a_path_are_refused_elsewhere_ignored() {
        let error = capture_all(&["/a/id"], r#"{"a": {"id": 1, "id": 2}}"#).unwrap_err();
        assert_eq!(error, "duplicate: /a/id");
        let error = capture_all(&["/a/id"], r#"{"a": {"id": 1}, "a": {}}"#).unwrap_err();
        assert_eq!(error, "duplicate: /a");
        let found = capture_all(&["/a/id"], r#"{"b": 1, "b": 2, "a": {"id": 1}}"#).unwrap();
        assert_eq!(found, [Scalar::U64(1)]);
    }

    #[test]
    fn malformed_json_is_an_error() {
        for text in [
            "",
            "{",
            r#"{"a": }"#,
            r#"{"a": 1} x"#,
            "[1,]",
            "nul",
            r#"{"a":"\x"}"#,
        ] {
            assert!(
                capture_all(&["/a"], text)
                    .unwrap_err()
                    .starts_with("json: "),
                "{text}"
            );
        }
        let deep = "[".repeat(10_000);
        assert!(capture_all(&["/0"], &deep).is_err());
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just("0".to_owned()),
            Just("a/b".to_owned()),
            Just("~".to_owned()),
            Just("é\"".to_owned()),
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|number| json!(number)),
            any::<u64>().prop_map(|number| json!(number)),
            (-1e9f64..1e9).prop_map(|number| json!(number)),
            "[a-z\"\\\\é]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 40, 4, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(key.clone(), inner, 0..4)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    fn arbitrary_pointer() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                Just("a"),
                Just("b"),
                Just("0"),
                Just("1"),
                Just("00"),
                Just("a~1b"),
                Just("~0"),
                Just("é\""),
            ],
            0..4,
        )
        .prop_map(|tokens| tokens.iter().map(|token| format!("/{token}")).collect())
    }

    proptest! {
        #[test]
        fn agrees_with_serde_json_pointer(
            value in arbitrary_json(),
            pointers in prop::collection::vec(arbitrary_pointer(), 1..6),
            pretty in any::<bool>(),
        ) {
            let text = if pretty {
                serde_json::to_string_pretty(&value).unwrap()
            } else {
                serde_json::to_string(&value).unwrap()
            };
            // Compare with the tree serde_json parses from the same text (its float parsing is
            // not an exact round trip, so the generated value may differ in the last digit).
            let value: Value = serde_json::from_str(&text).unwrap();
            let pointers: Vec<&str> = pointers.iter().map(String::as_str).collect();
            let found = capture_all(&pointers, &text).unwrap();
            let expected: Vec<Scalar<'static>> =
                pointers.iter().map(|pointer| reference(&value, pointer)).collect();
            prop_assert_eq!(found, expected);
        }
    }
}
