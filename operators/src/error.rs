//! The operators crate's error type. Expected outcomes (duplicate, conflict, missing key) are
//! values ([`crate::Disposition`], ports), not errors: an error here means state is unusable.

/// Failures an operator cannot handle itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OperatorError {
    /// Reading or writing operator state failed.
    #[error(transparent)]
    State(#[from] breadcrumb_state::StateError),
    /// Persisted operator state has a format this build does not read.
    #[error("operator `{operator}`: unsupported state payload version {found}")]
    UnsupportedPayload { operator: String, found: u8 },
    /// Persisted operator state is malformed.
    #[error("operator `{operator}`: corrupt state payload: {reason}")]
    CorruptPayload {
        operator: String,
        reason: &'static str,
    },
    /// The operator's configuration names a file it cannot use. `key` is relative to the
    /// operator's table; the message never contains the file's content.
    #[error("{key}: {message}")]
    Config { key: String, message: String },
    /// The operator was handed a partition it was never opened for.
    #[error("operator `{operator}`: partition {partition} is not open")]
    PartitionNotOpen { operator: String, partition: i32 },
}

pub type Result<T, E = OperatorError> = std::result::Result<T, E>;
