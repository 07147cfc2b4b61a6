//! Writer schemas flattened into an arena the reader walks without recursion through `Box`es or
//! name lookups: every named reference is resolved once, when the schema is compiled.

use std::collections::HashMap;

use apache_avro::schema::{Name, Schema};

/// Index of a node in a [`CompiledSchema`].
pub(crate) type NodeId = usize;

/// How a `long` or `int` is to be read as a time, from its logical type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeUnit {
    /// Not a timestamp: the number as it is.
    None,
    Millis,
    Micros,
    Nanos,
    /// `date`: days since the epoch.
    Days,
}

/// One writer-schema type, as far as the binary encoding needs to know it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Null,
    Boolean,
    /// `int` or `long` (both zig-zag varints on the wire).
    Integer(TimeUnit),
    Float,
    Double,
    /// `bytes`, and the `bytes`-based logical types (decimal, big-decimal).
    Bytes,
    /// `string` and string-based logical types (uuid).
    String,
    Fixed(usize),
    /// Enum symbols, indexed by the encoded ordinal.
    Enum(Vec<String>),
    Array(NodeId),
    Map(NodeId),
    Union(Vec<NodeId>),
    /// Field names and types, in writer order.
    Record(Vec<(String, NodeId)>),
}

/// A parsed writer schema.
#[derive(Debug, Clone)]
pub(crate) struct CompiledSchema {
    nodes: Vec<Node>,
}

/// Why a schema could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SchemaError(pub(crate) String);

impl CompiledSchema {
    /// Parses Avro schema JSON (as a registry returns it) and compiles it.
    pub(crate) fn parse(text: &str) -> Result<Self, SchemaError> {
        let schema = Schema::parse_str(text)
            .map_err(|error| SchemaError(format!("schema does not parse: {error}")))?;
        Self::compile(&schema)
    }

    /// Compiles a parsed schema; the root is node 0.
    pub(crate) fn compile(schema: &Schema) -> Result<Self, SchemaError> {
        let mut compiler = Compiler::default();
        let root = compiler.node(schema, &None)?;
        debug_assert_eq!(root, 0);
        Ok(Self {
            nodes: compiler.nodes,
        })
    }

    pub(crate) fn root(&self) -> NodeId {
        0
    }

    pub(crate) fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }
}

#[derive(Default)]
struct Compiler {
    nodes: Vec<Node>,
    /// Named types by full name, as defined so far. Avro requires a name to be defined before it
    /// is used; a record is defined before its fields, so a recursive record refers to itself.
    named: HashMap<String, NodeId>,
}

impl Compiler {
    fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn define(&mut self, name: &Name, enclosing: &Option<String>, id: NodeId) {
        self.named.insert(name.fullname(enclosing.clone()), id);
    }

    fn node(&mut self, schema: &Schema, namespace: &Option<String>) -> Result<NodeId, SchemaError> {
        let node = match schema {
            Schema::Null => Node::Null,
            Schema::Boolean => Node::Boolean,
            Schema::Int | Schema::Long | Schema::TimeMillis | Schema::TimeMicros => {
                Node::Integer(TimeUnit::None)
            }
            Schema::Date => Node::Integer(TimeUnit::Days),
            Schema::TimestampMillis | Schema::LocalTimestampMillis => {
                Node::Integer(TimeUnit::Millis)
            }
            Schema::TimestampMicros | Schema::LocalTimestampMicros => {
                Node::Integer(TimeUnit::Micros)
            }
            Schema::TimestampNanos | Schema::LocalTimestampNanos => Node::Integer(TimeUnit::Nanos),
            Schema::Float => Node::Float,
            Schema::Double => Node::Double,
            Schema::Bytes | Schema::BigDecimal => Node::Bytes,
            Schema::String | Schema::Uuid => Node::String,
            Schema::Duration => Node::Fixed(12),
            Schema::Decimal(decimal) => return self.node(&decimal.inner, namespace),
            Schema::Fixed(fixed) => {
                let id = self.push(Node::Fixed(fixed.size));
                self.define(&fixed.name, namespace, id);
                return Ok(id);
            }
            Schema::Enum(enumeration) => {
                let id = self.push(Node::Enum(enumeration.symbols.clone()));
                self.define(&enumeration.name, namespace, id);
                return Ok(id);
            }
            Schema::Array(array) => {
                let id = self.push(Node::Null);
                let items = self.node(&array.items, namespace)?;
                self.nodes[id] = Node::Array(items);
                return Ok(id);
            }
            Schema::Map(map) => {
                let id = self.push(Node::Null);
                let values = self.node(&map.types, namespace)?;
                self.nodes[id] = Node::Map(values);
                return Ok(id);
            }
            Schema::Union(union) => {
                let id = self.push(Node::Null);
                let mut branches = Vec::with_capacity(union.variants().len());
                for variant in union.variants() {
                    branches.push(self.node(variant, namespace)?);
                }
                self.nodes[id] = Node::Union(branches);
                return Ok(id);
            }
            Schema::Record(record) => {
                let id = self.push(Node::Null);
                self.define(&record.name, namespace, id);
                let inner = record.name.namespace.clone().or_else(|| namespace.clone());
                let mut fields = Vec::with_capacity(record.fields.len());
                for field in &record.fields {
                    fields.push((field.name.clone(), self.node(&field.schema, &inner)?));
                }
                self.nodes[id] = Node::Record(fields);
                return Ok(id);
            }
            Schema::Ref { name } => {
                let full = name.fullname(namespace.clone());
                return self
                    .named
                    .get(&full)
                    .copied()
                    .ok_or_else(|| SchemaError(format!("reference to undefined type `{full}`")));
            }
        };
        Ok(self.push(node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_nested_and_recursive_schemas() {
        let schema = CompiledSchema::parse(
            r#"{"type":"record","name":"Node","namespace":"x","fields":[
                {"name":"id","type":"string"},
                {"name":"at","type":{"type":"long","logicalType":"timestamp-micros"}},
                {"name":"next","type":["null","Node"]},
                {"name":"tags","type":{"type":"map","values":"int"}},
                {"name":"kind","type":{"type":"enum","name":"Kind","symbols":["A","B"]}}
            ]}"#,
        )
        .unwrap();
        let Node::Record(fields) = schema.node(schema.root()) else {
            panic!("root is a record");
        };
        let names: Vec<&str> = fields.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["id", "at", "next", "tags", "kind"]);
        assert_eq!(schema.node(fields[1].1), &Node::Integer(TimeUnit::Micros));
        // `next` is a union whose second branch is the record itself.
        let Node::Union(branches) = schema.node(fields[2].1) else {
            panic!("next is a union");
        };
        assert_eq!(branches[1], schema.root());
        assert_eq!(
            schema.node(fields[4].1),
            &Node::Enum(vec!["A".into(), "B".into()])
        );
    }

    #[test]
    fn rejects_what_does_not_parse() {
        assert!(CompiledSchema::parse("{").is_err());
        assert!(CompiledSchema::parse(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"Missing"}]}"#
        )
        .is_err());
    }
}
