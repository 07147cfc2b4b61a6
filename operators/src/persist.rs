//! Pieces of the persisted state formats shared by the stateful operators.

use breadcrumb_state::PartitionStore;

use crate::{OperatorError, Result};

/// Key of a partition's [`PartitionMeta`] in an operator's store.
pub(crate) const META_KEY: &[u8] = b"m:partition";

const META_VERSION: u8 = 1;
const META_LEN: usize = 1 + 8 + 8;

/// `CorruptPayload` for `operator`.
pub(crate) fn corrupt(operator: &str, reason: &'static str) -> OperatorError {
    OperatorError::CorruptPayload {
        operator: operator.to_owned(),
        reason,
    }
}

/// What an operator persists about a partition as a whole (ordering, lineage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PartitionMeta {
    pub stream_time_ms: i64,
    /// Last input offset of the partition's committed prefix: tags writes that no input record
    /// made (processing-time decisions) so a restore applies them.
    pub last_input_offset: i64,
}

impl PartitionMeta {
    /// A partition that has seen nothing yet.
    pub(crate) const EMPTY: Self = Self {
        stream_time_ms: i64::MIN,
        last_input_offset: -1,
    };

    pub(crate) fn encode(&self) -> [u8; META_LEN] {
        let mut out = [0u8; META_LEN];
        out[0] = META_VERSION;
        out[1..9].copy_from_slice(&self.stream_time_ms.to_be_bytes());
        out[9..17].copy_from_slice(&self.last_input_offset.to_be_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8], operator: &str) -> Result<Self> {
        let i64_at =
            |at: usize| i64::from_be_bytes(bytes[at..at + 8].try_into().expect("length checked"));
        match bytes.first() {
            Some(&META_VERSION) if bytes.len() == META_LEN => Ok(Self {
                stream_time_ms: i64_at(1),
                last_input_offset: i64_at(9),
            }),
            Some(&META_VERSION) | None => {
                Err(corrupt(operator, "partition meta has the wrong length"))
            }
            Some(&found) => Err(OperatorError::UnsupportedPayload {
                operator: operator.to_owned(),
                found,
            }),
        }
    }

    /// The partition's meta from `store` (committed or in the open transaction), or
    /// [`PartitionMeta::EMPTY`]. `scratch` is a reused read buffer.
    pub(crate) fn load(
        store: &mut PartitionStore,
        scratch: &mut Vec<u8>,
        operator: &str,
    ) -> Result<Self> {
        Ok(match store.get(META_KEY, scratch)? {
            Some(_) => Self::decode(scratch, operator)?,
            None => Self::EMPTY,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_meta_round_trips_and_rejects_other_versions() {
        let meta = PartitionMeta {
            stream_time_ms: 123,
            last_input_offset: -1,
        };
        let mut bytes = meta.encode().to_vec();
        assert_eq!(PartitionMeta::decode(&bytes, "t").unwrap(), meta);
        assert!(PartitionMeta::decode(&bytes[..9], "t").is_err());
        bytes[0] = 9;
        assert!(PartitionMeta::decode(&bytes, "t").is_err());
    }
}
