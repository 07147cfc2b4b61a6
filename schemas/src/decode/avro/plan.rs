//! Reads the configured paths out of an Avro binary datum in one pass, without building an
//! `apache_avro::types::Value`: the writer schema is compiled against the path trie into a plan
//! that says, per value, whether to skip it or visit it (and which slots it fills).

use std::borrow::Cow;

use super::schema::{CompiledSchema, Node, NodeId, TimeUnit};
use crate::decode::common::Scalar;
use crate::decode::pointer::Node as PathNode;
use crate::DecodeErrorClass;

/// Deepest nesting read; a recursive schema with adversarial input must not exhaust the stack.
const MAX_DEPTH: usize = 64;

/// Items of a block allowed beyond the bytes left (items of type null take no bytes).
const MAX_ZERO_SIZE_ITEMS: u64 = 65_536;

type StepId = usize;

/// What to do with one value of the datum.
#[derive(Debug)]
enum Step {
    /// Nothing configured lies at or below this value.
    Skip(NodeId),
    /// A value on a configured path: fill `slots` with it, and go deeper as `inner` says.
    Visit {
        node: NodeId,
        slots: Vec<usize>,
        inner: Inner,
    },
}

#[derive(Debug)]
enum Inner {
    Leaf,
    /// One step per writer field.
    Record(Vec<StepId>),
    /// One step per branch, each compiled against the same path node.
    Union(Vec<StepId>),
    /// Steps for the configured item indexes, in index order; other items are skipped.
    Array {
        item: NodeId,
        wanted: Vec<(usize, StepId)>,
    },
    /// Steps for the configured keys; other entries are skipped.
    Map {
        value: NodeId,
        wanted: Vec<(String, StepId)>,
    },
}

/// A writer schema compiled against the configured paths.
#[derive(Debug)]
pub(crate) struct Plan {
    schema: CompiledSchema,
    steps: Vec<Step>,
    root: StepId,
}

/// Why a datum could not be read: a class and a message naming the byte offset, never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReadError {
    pub(crate) class: DecodeErrorClass,
    pub(crate) message: String,
}

impl ReadError {
    fn invalid(position: usize, what: &str) -> Self {
        Self {
            class: DecodeErrorClass::InvalidAvro,
            message: format!("Avro body is malformed at byte {position}: {what}"),
        }
    }
}

impl Plan {
    pub(crate) fn new(schema: CompiledSchema, paths: &PathNode) -> Self {
        let mut plan = Self {
            schema,
            steps: Vec::new(),
            root: 0,
        };
        let root = plan.schema.root();
        plan.root = plan.compile(root, Some(paths));
        plan
    }

    fn compile(&mut self, node: NodeId, paths: Option<&PathNode>) -> StepId {
        let Some(paths) = paths else {
            return self.push(Step::Skip(node));
        };
        // Reserve the slot first: children are compiled after, and recursion through a union
        // back into this node compiles against deeper path nodes only (the trie is finite).
        let id = self.push(Step::Skip(node));
        let inner = match self.schema.node(node).clone() {
            Node::Record(fields) => Inner::Record(
                fields
                    .iter()
                    .map(|(name, field)| {
                        let child = paths
                            .children
                            .iter()
                            .find(|child| child.token == *name)
                            .map(|child| &child.node);
                        self.compile(*field, child)
                    })
                    .collect(),
            ),
            Node::Union(branches) => Inner::Union(
                branches
                    .iter()
                    .map(|branch| self.compile(*branch, Some(paths)))
                    .collect(),
            ),
            Node::Array(item) => {
                let mut wanted: Vec<(usize, StepId)> = paths
                    .children
                    .iter()
                    .filter_map(|child| child.index.map(|index| (index, &child.node)))
                    .map(|(index, child)| (index, self.compile(item, Some(child))))
                    .collect();
                wanted.sort_unstable_by_key(|(index, _)| *index);
                Inner::Array { item, wanted }
            }
            Node::Map(value) => Inner::Map {
                value,
                wanted: paths
                    .children
                    .iter()
                    .map(|child| (child.token.clone(), self.compile(value, Some(&child.node))))
                    .collect(),
            },
            _ => Inner::Leaf,
        };
        self.steps[id] = Step::Visit {
            node,
            slots: paths.slots.clone(),
            inner,
        };
        id
    }

    fn push(&mut self, step: Step) -> StepId {
        self.steps.push(step);
        self.steps.len() - 1
    }

    /// Reads the whole of `body` (trailing bytes are an error: they mean the wrong schema) and
    /// stores the value at each configured path in `slots`.
    pub(crate) fn capture<'a>(
        &'a self,
        body: &'a [u8],
        slots: &mut [Scalar<'a>],
    ) -> Result<(), ReadError> {
        let mut reader = Reader {
            plan: self,
            input: Input { body, position: 0 },
            slots,
        };
        reader.step(self.root, 0)?;
        if reader.input.position != body.len() {
            return Err(ReadError::invalid(
                reader.input.position,
                &format!(
                    "{} bytes left after the datum (written with another schema?)",
                    body.len() - reader.input.position
                ),
            ));
        }
        Ok(())
    }
}

struct Input<'a> {
    body: &'a [u8],
    position: usize,
}

impl<'a> Input<'a> {
    /// A zig-zag varint (`int` and `long` alike).
    fn long(&mut self) -> Result<i64, ReadError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.body.get(self.position) else {
                return Err(ReadError::invalid(self.position, "truncated number"));
            };
            self.position += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        Err(ReadError::invalid(
            self.position,
            "number longer than 10 bytes",
        ))
    }

    /// A length or count: non-negative and, for byte lengths, within the input.
    fn length(&mut self) -> Result<usize, ReadError> {
        let start = self.position;
        let length = self.long()?;
        usize::try_from(length).map_err(|_| ReadError::invalid(start, "negative length"))
    }

    fn take(&mut self, length: usize) -> Result<&'a [u8], ReadError> {
        let end = self
            .position
            .checked_add(length)
            .filter(|end| *end <= self.body.len())
            .ok_or_else(|| ReadError::invalid(self.position, "length beyond the end"))?;
        let bytes = &self.body[self.position..end];
        self.position = end;
        Ok(bytes)
    }

    fn bytes(&mut self) -> Result<&'a [u8], ReadError> {
        let length = self.length()?;
        self.take(length)
    }

    /// The item count of the next array or map block, and its byte size when the writer gave
    /// one (a negative count).
    fn block(&mut self) -> Result<(usize, Option<usize>), ReadError> {
        let start = self.position;
        let count = self.long()?;
        let (count, size) = if count >= 0 {
            (count as u64, None)
        } else {
            let count = count
                .checked_neg()
                .ok_or_else(|| ReadError::invalid(start, "bad block count"))?;
            (count as u64, Some(self.length()?))
        };
        // Every item but a null takes a byte at least; a count far beyond what is left would
        // only spin (an array of nulls), so it is refused.
        let remaining = (self.body.len() - self.position) as u64;
        if count > remaining.max(MAX_ZERO_SIZE_ITEMS) {
            return Err(ReadError::invalid(start, "block count beyond the input"));
        }
        Ok((count as usize, size))
    }
}

struct Reader<'a, 's> {
    plan: &'a Plan,
    input: Input<'a>,
    slots: &'s mut [Scalar<'a>],
}

impl<'a> Reader<'a, '_> {
    fn step(&mut self, step: StepId, depth: usize) -> Result<(), ReadError> {
        if depth > MAX_DEPTH {
            return Err(ReadError::invalid(self.input.position, "nested too deeply"));
        }
        let plan = self.plan;
        let (node, slots, inner) = match &plan.steps[step] {
            Step::Skip(node) => return self.skip(*node, depth),
            Step::Visit { node, slots, inner } => (*node, slots, inner),
        };
        let value = match (plan.schema.node(node), inner) {
            (Node::Record(_), Inner::Record(fields)) => {
                for field in fields {
                    self.step(*field, depth + 1)?;
                }
                Scalar::Object
            }
            (Node::Union(_), Inner::Union(branches)) => {
                let start = self.input.position;
                let index = self.input.long()?;
                let branch = usize::try_from(index)
                    .ok()
                    .and_then(|index| branches.get(index))
                    .ok_or_else(|| ReadError::invalid(start, "union branch out of range"))?;
                // The branch step fills the same slots.
                return self.step(*branch, depth + 1);
            }
            (Node::Array(_), Inner::Array { item, wanted }) => {
                let mut index = 0;
                let mut next_wanted = 0;
                loop {
                    let (count, size) = self.input.block()?;
                    if count == 0 {
                        break;
                    }
                    let block_end = index + count;
                    let wanted_here = wanted
                        .get(next_wanted)
                        .is_some_and(|(at, _)| *at < block_end);
                    if let (Some(size), false) = (size, wanted_here) {
                        self.input.take(size)?;
                        index = block_end;
                        continue;
                    }
                    while index < block_end {
                        match wanted.get(next_wanted) {
                            Some((at, step)) if *at == index => {
                                next_wanted += 1;
                                self.step(*step, depth + 1)?;
                            }
                            _ => self.skip(*item, depth + 1)?,
                        }
                        index += 1;
                    }
                }
                Scalar::Array
            }
            (Node::Map(_), Inner::Map { value, wanted }) => {
                loop {
                    let (count, _) = self.input.block()?;
                    if count == 0 {
                        break;
                    }
                    for _ in 0..count {
                        let key = self.input.bytes()?;
                        match wanted.iter().find(|(name, _)| name.as_bytes() == key) {
                            Some((_, step)) => self.step(*step, depth + 1)?,
                            None => self.skip(*value, depth + 1)?,
                        }
                    }
                }
                Scalar::Object
            }
            (scalar, _) => self.scalar(scalar)?,
        };
        for &slot in slots {
            if let Some(target) = self.slots.get_mut(slot) {
                *target = value.clone();
            }
        }
        Ok(())
    }

    /// Reads a value with no children on any path. Records, arrays and maps are skipped and
    /// reported by kind.
    fn scalar(&mut self, node: &'a Node) -> Result<Scalar<'a>, ReadError> {
        let start = self.input.position;
        Ok(match node {
            Node::Null => Scalar::Null,
            Node::Boolean => match self.input.take(1)?[0] {
                0 => Scalar::Bool(false),
                1 => Scalar::Bool(true),
                _ => return Err(ReadError::invalid(start, "boolean is neither 0 nor 1")),
            },
            Node::Integer(unit) => {
                let number = self.input.long()?;
                let millis = match unit {
                    TimeUnit::None | TimeUnit::Millis => Some(number),
                    TimeUnit::Micros => Some(number.div_euclid(1_000)),
                    TimeUnit::Nanos => Some(number.div_euclid(1_000_000)),
                    TimeUnit::Days => number.checked_mul(86_400_000),
                };
                match millis {
                    Some(value) => Scalar::I64(value),
                    None => return Err(ReadError::invalid(start, "date out of range")),
                }
            }
            Node::Float => {
                let bytes = self.input.take(4)?;
                Scalar::F64(f64::from(f32::from_le_bytes(
                    bytes.try_into().expect("took 4 bytes"),
                )))
            }
            Node::Double => {
                let bytes = self.input.take(8)?;
                Scalar::F64(f64::from_le_bytes(bytes.try_into().expect("took 8 bytes")))
            }
            Node::String => {
                let bytes = self.input.bytes()?;
                let text = std::str::from_utf8(bytes).map_err(|_| ReadError {
                    class: DecodeErrorClass::InvalidUtf8,
                    message: format!("Avro string at byte {start} is not valid UTF-8"),
                })?;
                Scalar::Str(Cow::Borrowed(text))
            }
            // Bytes have no text form an envelope field could take.
            Node::Bytes => {
                self.input.bytes()?;
                Scalar::Object
            }
            Node::Fixed(size) => {
                self.input.take(*size)?;
                Scalar::Object
            }
            Node::Enum(symbols) => {
                let ordinal = self.input.long()?;
                let symbol = usize::try_from(ordinal)
                    .ok()
                    .and_then(|ordinal| symbols.get(ordinal))
                    .ok_or_else(|| ReadError::invalid(start, "enum ordinal out of range"))?;
                Scalar::Str(Cow::Borrowed(symbol.as_str()))
            }
            Node::Record(_) | Node::Map(_) | Node::Array(_) | Node::Union(_) => {
                unreachable!("containers are visited, not read as scalars")
            }
        })
    }

    /// Moves past one value of type `node`.
    fn skip(&mut self, node: NodeId, depth: usize) -> Result<(), ReadError> {
        if depth > MAX_DEPTH {
            return Err(ReadError::invalid(self.input.position, "nested too deeply"));
        }
        let plan = self.plan;
        match plan.schema.node(node) {
            Node::Null => {}
            Node::Boolean => {
                self.input.take(1)?;
            }
            Node::Integer(_) | Node::Enum(_) => {
                self.input.long()?;
            }
            Node::Float => {
                self.input.take(4)?;
            }
            Node::Double => {
                self.input.take(8)?;
            }
            Node::Bytes | Node::String => {
                self.input.bytes()?;
            }
            Node::Fixed(size) => {
                self.input.take(*size)?;
            }
            Node::Record(fields) => {
                for (_, field) in fields {
                    self.skip(*field, depth + 1)?;
                }
            }
            Node::Union(branches) => {
                let start = self.input.position;
                let index = self.input.long()?;
                let branch = usize::try_from(index)
                    .ok()
                    .and_then(|index| branches.get(index))
                    .ok_or_else(|| ReadError::invalid(start, "union branch out of range"))?;
                self.skip(*branch, depth + 1)?;
            }
            Node::Array(item) => loop {
                let (count, size) = self.input.block()?;
                if count == 0 {
                    break;
                }
                if let Some(size) = size {
                    self.input.take(size)?;
                    continue;
                }
                for _ in 0..count {
                    self.skip(*item, depth + 1)?;
                }
            },
            Node::Map(value) => loop {
                let (count, size) = self.input.block()?;
                if count == 0 {
                    break;
                }
                if let Some(size) = size {
                    self.input.take(size)?;
                    continue;
                }
                for _ in 0..count {
                    self.input.bytes()?;
                    self.skip(*value, depth + 1)?;
                }
            },
        }
        Ok(())
    }
}
