//! The state crate's error type.

/// Everything that can go wrong reading or writing operator state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// RocksDB refused an operation (I/O error, corruption, lock held by another process).
    #[error("rocksdb: {0}")]
    RocksDb(#[from] rocksdb::Error),
    /// A store name was used that was not declared when the backend was opened.
    #[error("unknown state store `{0}`")]
    UnknownStore(String),
    /// A persisted value carries a format version this build cannot read.
    #[error("unsupported state format version {found} (this build reads up to {supported})")]
    UnsupportedFormat { found: u8, supported: u8 },
    /// A persisted value is shorter than its header or otherwise malformed.
    #[error("corrupt state value in store `{store}`: {reason}")]
    Corrupt { store: String, reason: &'static str },
}

pub type Result<T, E = StateError> = std::result::Result<T, E>;
