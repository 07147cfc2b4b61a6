//! The protobuf wire format: reading fields of a message in place, writing tags and lengths.

/// Why bytes are not a well-formed protobuf message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// The message ends inside a field.
    Truncated,
    /// A varint is longer than ten bytes.
    VarintOverflow,
    /// A wire type this format never uses (groups, or 6 and 7), or a field number 0.
    InvalidTag,
    /// A field has a different wire type than its definition.
    WrongWireType,
    /// A string field is not UTF-8.
    InvalidUtf8,
}

impl WireError {
    pub fn message(self) -> &'static str {
        match self {
            WireError::Truncated => "protobuf message ends inside a field",
            WireError::VarintOverflow => "protobuf varint longer than ten bytes",
            WireError::InvalidTag => "protobuf field with an invalid tag or wire type",
            WireError::WrongWireType => "protobuf field with an unexpected wire type",
            WireError::InvalidUtf8 => "protobuf string field is not UTF-8",
        }
    }
}

/// The value of one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireValue<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

impl<'a> WireValue<'a> {
    pub fn bytes(self) -> Result<&'a [u8], WireError> {
        match self {
            WireValue::Bytes(bytes) => Ok(bytes),
            _ => Err(WireError::WrongWireType),
        }
    }

    pub fn varint(self) -> Result<u64, WireError> {
        match self {
            WireValue::Varint(value) => Ok(value),
            _ => Err(WireError::WrongWireType),
        }
    }

    pub fn fixed64(self) -> Result<u64, WireError> {
        match self {
            WireValue::Fixed64(value) => Ok(value),
            _ => Err(WireError::WrongWireType),
        }
    }
}

/// Reads the fields of one message in order.
#[derive(Debug, Clone)]
pub struct WireReader<'a> {
    rest: &'a [u8],
}

impl<'a> WireReader<'a> {
    pub fn new(message: &'a [u8]) -> Self {
        Self { rest: message }
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for (index, &byte) in self.rest.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * index);
            if byte & 0x80 == 0 {
                self.rest = &self.rest[index + 1..];
                return Ok(value);
            }
        }
        if self.rest.len() < 10 {
            Err(WireError::Truncated)
        } else {
            Err(WireError::VarintOverflow)
        }
    }

    fn take(&mut self, length: usize) -> Result<&'a [u8], WireError> {
        if self.rest.len() < length {
            return Err(WireError::Truncated);
        }
        let (taken, rest) = self.rest.split_at(length);
        self.rest = rest;
        Ok(taken)
    }

    /// The next field number and value, or `None` at the end of the message.
    pub fn next_field(&mut self) -> Result<Option<(u32, WireValue<'a>)>, WireError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let field = tag >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(WireError::InvalidTag);
        }
        let value = match tag & 7 {
            0 => WireValue::Varint(self.varint()?),
            1 => {
                let bytes = self.take(8)?;
                WireValue::Fixed64(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
            }
            2 => {
                let length = self.varint()?;
                let length = usize::try_from(length).map_err(|_| WireError::Truncated)?;
                WireValue::Bytes(self.take(length)?)
            }
            5 => {
                let bytes = self.take(4)?;
                WireValue::Fixed32(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
            }
            _ => return Err(WireError::InvalidTag),
        };
        Ok(Some((field as u32, value)))
    }
}

/// Encoded length of a varint.
pub fn varint_len(mut value: u64) -> usize {
    let mut length = 1;
    while value >= 0x80 {
        value >>= 7;
        length += 1;
    }
    length
}

pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Writes the tag of length-delimited field `field` (below 16) and `length`.
pub fn put_tag_len(out: &mut Vec<u8>, field: u32, length: usize) {
    put_varint(out, u64::from(field << 3 | 2));
    put_varint(out, length as u64);
}

pub fn put_bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_tag_len(out, field, bytes.len());
    out.extend_from_slice(bytes);
}

pub fn put_varint_field(out: &mut Vec<u8>, field: u32, value: u64) {
    put_varint(out, u64::from(field << 3));
    put_varint(out, value);
}

pub fn put_fixed64_field(out: &mut Vec<u8>, field: u32, value: u64) {
    put_varint(out, u64::from(field << 3 | 1));
    out.extend_from_slice(&value.to_le_bytes());
}

pub fn put_fixed32_field(out: &mut Vec<u8>, field: u32, value: u32) {
    put_varint(out, u64::from(field << 3 | 5));
    out.extend_from_slice(&value.to_le_bytes());
}
