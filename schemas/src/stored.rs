//! A Kafka record kept in operator state until it is released (ordering buffers, trace buffers),
//! in a versioned binary format.
//!
//! Layout of format 1 (integers big-endian, lengths `u32`, `-1` as length means null):
//! `[1][partition i32][offset i64][timestamp flag u8][timestamp i64]?[topic len][topic]`
//! `[key len][key]?[value len][value]?[header count u32]([name len][name][value len][value]?)*`
//!
//! A record written by an older format stays readable: [`StoredRecord::decode`] dispatches on
//! the version byte, so a format change adds a decoder and never rewrites state in place.

use std::fmt;

/// Current format version of a stored record.
pub const STORED_RECORD_VERSION: u8 = 1;

/// Why a stored record could not be read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredRecordError {
    UnknownVersion(u8),
    Truncated,
    InvalidUtf8,
}

impl fmt::Display for StoredRecordError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoredRecordError::UnknownVersion(version) => {
                write!(formatter, "unknown stored record format version {version}")
            }
            StoredRecordError::Truncated => formatter.write_str("stored record is truncated"),
            StoredRecordError::InvalidUtf8 => {
                formatter.write_str("stored record has a topic or header name that is not UTF-8")
            }
        }
    }
}

impl std::error::Error for StoredRecordError {}

/// An owned copy of a [`crate::RawRecord`], read back from state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl StoredRecord {
    /// Appends the encoding of `record` (current format) to `out`.
    pub fn encode(record: &crate::RawRecord<'_>, out: &mut Vec<u8>) {
        out.push(STORED_RECORD_VERSION);
        out.extend_from_slice(&record.partition.to_be_bytes());
        out.extend_from_slice(&record.offset.to_be_bytes());
        match record.timestamp_ms {
            Some(timestamp) => {
                out.push(1);
                out.extend_from_slice(&timestamp.to_be_bytes());
            }
            None => out.push(0),
        }
        put_bytes(out, Some(record.topic.as_bytes()));
        put_bytes(out, record.key);
        put_bytes(out, record.value);
        out.extend_from_slice(&(record.headers.len() as u32).to_be_bytes());
        for (name, value) in record.headers {
            put_bytes(out, Some(name.as_bytes()));
            put_bytes(out, *value);
        }
    }

    /// The encoded size of `record`, for byte budgets.
    pub fn encoded_len(record: &crate::RawRecord<'_>) -> usize {
        let optional = |bytes: Option<&[u8]>| 4 + bytes.map_or(0, <[u8]>::len);
        1 + 4
            + 8
            + 1
            + record.timestamp_ms.map_or(0, |_| 8)
            + optional(Some(record.topic.as_bytes()))
            + optional(record.key)
            + optional(record.value)
            + 4
            + record
                .headers
                .iter()
                .map(|(name, value)| optional(Some(name.as_bytes())) + optional(*value))
                .sum::<usize>()
    }

    /// Reads a record written by any known format version.
    pub fn decode(bytes: &[u8]) -> Result<Self, StoredRecordError> {
        let mut reader = Reader { bytes };
        match reader.u8()? {
            1 => Self::decode_v1(&mut reader),
            version => Err(StoredRecordError::UnknownVersion(version)),
        }
    }

    fn decode_v1(reader: &mut Reader<'_>) -> Result<Self, StoredRecordError> {
        let partition = i32::from_be_bytes(reader.array()?);
        let offset = i64::from_be_bytes(reader.array()?);
        let timestamp_ms = match reader.u8()? {
            0 => None,
            _ => Some(i64::from_be_bytes(reader.array()?)),
        };
        let topic = reader.string()?;
        let key = reader.bytes()?.map(<[u8]>::to_vec);
        let value = reader.bytes()?.map(<[u8]>::to_vec);
        let count = u32::from_be_bytes(reader.array()?) as usize;
        // The count comes from state we wrote, but a corrupt value must not allocate wildly.
        let mut headers = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            let name = reader.string()?;
            let value = reader.bytes()?.map(<[u8]>::to_vec);
            headers.push((name, value));
        }
        Ok(Self {
            topic,
            partition,
            offset,
            timestamp_ms,
            key,
            value,
            headers,
        })
    }

    /// A borrowed view for emitting; `headers` is scratch space for the header references.
    pub fn as_raw<'a>(
        &'a self,
        headers: &'a mut Vec<(&'a str, Option<&'a [u8]>)>,
    ) -> crate::RawRecord<'a> {
        headers.clear();
        headers.extend(
            self.headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_deref())),
        );
        crate::RawRecord {
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key: self.key.as_deref(),
            value: self.value.as_deref(),
            headers,
        }
    }
}

/// A record of the current format read in place: every field borrows the encoded bytes, so
/// emitting a held record costs no allocation. Records of older formats go through
/// [`StoredRecord::decode`].
#[derive(Debug, Clone, Copy)]
pub struct StoredRecordView<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    header_count: u32,
    /// The encoded headers, validated by [`StoredRecordView::parse`].
    header_bytes: &'a [u8],
}

impl<'a> StoredRecordView<'a> {
    /// Reads `bytes` (current format only) and checks the headers are well formed.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, StoredRecordError> {
        let mut reader = Reader { bytes };
        match reader.u8()? {
            STORED_RECORD_VERSION => {}
            version => return Err(StoredRecordError::UnknownVersion(version)),
        }
        let partition = i32::from_be_bytes(reader.array()?);
        let offset = i64::from_be_bytes(reader.array()?);
        let timestamp_ms = match reader.u8()? {
            0 => None,
            _ => Some(i64::from_be_bytes(reader.array()?)),
        };
        let topic = reader.str()?;
        let key = reader.bytes()?;
        let value = reader.bytes()?;
        let header_count = u32::from_be_bytes(reader.array()?);
        let header_bytes = reader.bytes;
        for _ in 0..header_count {
            reader.str()?;
            reader.bytes()?;
        }
        Ok(Self {
            topic,
            partition,
            offset,
            timestamp_ms,
            key,
            value,
            header_count,
            header_bytes,
        })
    }

    /// The headers in order.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> {
        let mut reader = Reader {
            bytes: self.header_bytes,
        };
        (0..self.header_count).map(move |_| {
            // Validated by `parse`.
            let name = reader.str().expect("header name checked by parse");
            let value = reader.bytes().expect("header value checked by parse");
            (name, value)
        })
    }

    /// A [`crate::RawRecord`] over this view; `headers` holds the header references (collect
    /// [`StoredRecordView::headers`] into it, e.g. a `SmallVec` on the stack).
    pub fn as_raw(&self, headers: &'a [(&'a str, Option<&'a [u8]>)]) -> crate::RawRecord<'a> {
        crate::RawRecord {
            topic: self.topic,
            partition: self.partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key: self.key,
            value: self.value,
            headers,
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        Some(bytes) => {
            out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            out.extend_from_slice(bytes);
        }
        None => out.extend_from_slice(&u32::MAX.to_be_bytes()),
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], StoredRecordError> {
        if self.bytes.len() < count {
            return Err(StoredRecordError::Truncated);
        }
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, StoredRecordError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StoredRecordError> {
        Ok(self.take(N)?.try_into().expect("length checked"))
    }

    fn bytes(&mut self) -> Result<Option<&'a [u8]>, StoredRecordError> {
        let length = u32::from_be_bytes(self.array()?);
        if length == u32::MAX {
            return Ok(None);
        }
        self.take(length as usize).map(Some)
    }

    fn string(&mut self) -> Result<String, StoredRecordError> {
        self.str().map(str::to_owned)
    }

    fn str(&mut self) -> Result<&'a str, StoredRecordError> {
        let bytes = self.bytes()?.ok_or(StoredRecordError::Truncated)?;
        std::str::from_utf8(bytes).map_err(|_| StoredRecordError::InvalidUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RawRecord;
    use proptest::prelude::*;

    fn sample() -> (Vec<crate::HeaderRef<'static>>, RawRecord<'static>) {
        let headers: Vec<(&'static str, Option<&'static [u8]>)> = vec![
            ("ce_id", Some(b"p-1")),
            ("empty", None),
            ("ce_id", Some(b"")),
        ];
        let leaked: &'static [(&'static str, Option<&'static [u8]>)] =
            Box::leak(headers.clone().into_boxed_slice());
        let record = RawRecord {
            topic: "payments",
            partition: 3,
            offset: 42,
            timestamp_ms: Some(1_700_000_000_000),
            key: Some(b"account-7"),
            value: None,
            headers: leaked,
        };
        (headers, record)
    }

    #[test]
    fn stored_record_round_trips_nulls_repeats_and_empties() {
        let (_, record) = sample();
        let mut bytes = Vec::new();
        StoredRecord::encode(&record, &mut bytes);
        assert_eq!(bytes.len(), StoredRecord::encoded_len(&record));
        let stored = StoredRecord::decode(&bytes).unwrap();
        let mut scratch = Vec::new();
        let view = stored.as_raw(&mut scratch);
        assert_eq!(view.topic, "payments");
        assert_eq!((view.partition, view.offset), (3, 42));
        assert_eq!(view.timestamp_ms, Some(1_700_000_000_000));
        assert_eq!(view.key, Some(&b"account-7"[..]));
        assert_eq!(view.value, None);
        assert_eq!(view.headers, record.headers);
    }

    #[test]
    fn stored_record_rejects_unknown_versions_and_truncation() {
        let (_, record) = sample();
        let mut bytes = Vec::new();
        StoredRecord::encode(&record, &mut bytes);
        for cut in 0..bytes.len() {
            assert!(StoredRecord::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        bytes[0] = 9;
        assert_eq!(
            StoredRecord::decode(&bytes),
            Err(StoredRecordError::UnknownVersion(9))
        );
    }

    #[test]
    fn stored_record_view_reads_in_place_what_decode_reads() {
        let (_, record) = sample();
        let mut bytes = Vec::new();
        StoredRecord::encode(&record, &mut bytes);
        let view = StoredRecordView::parse(&bytes).unwrap();
        let headers: Vec<_> = view.headers().collect();
        let raw = view.as_raw(&headers);
        assert_eq!(raw.topic, "payments");
        assert_eq!((raw.partition, raw.offset), (3, 42));
        assert_eq!(raw.timestamp_ms, Some(1_700_000_000_000));
        assert_eq!(raw.key, Some(&b"account-7"[..]));
        assert_eq!(raw.value, None);
        assert_eq!(raw.headers, record.headers);
        for cut in 0..bytes.len() {
            assert!(
                StoredRecordView::parse(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        bytes[0] = 9;
        assert_eq!(
            StoredRecordView::parse(&bytes).unwrap_err(),
            StoredRecordError::UnknownVersion(9)
        );
    }

    proptest! {
        #[test]
        fn stored_record_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = StoredRecord::decode(&bytes);
            if let Ok(view) = StoredRecordView::parse(&bytes) {
                let _ = view.headers().count();
            }
        }
    }
}
