//! The engine's error type.

use rdkafka::error::KafkaError;

/// Failures of the engine. Bad input is not among them: it becomes a dead letter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The configuration is invalid; every problem found, each naming its key.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Config(Vec<String>),
    /// A Kafka operation failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// Operator state failed.
    #[error("state: {0}")]
    State(#[from] breadcrumb_state::StateError),
    /// An operator failed (its state is unusable).
    #[error("operator: {0}")]
    Operator(#[from] breadcrumb_operators::OperatorError),
    /// A topic breadcrumb needs is missing or has the wrong shape.
    #[error("topic `{topic}`: {reason}")]
    Topic { topic: String, reason: String },
    /// Restoring a partition's state did not finish in time.
    #[error("restore of `{topic}` partition {partition} timed out after {elapsed_ms} ms")]
    RestoreTimeout {
        topic: String,
        partition: i32,
        elapsed_ms: u128,
    },
    /// A changelog record could not be applied.
    #[error("changelog `{topic}` partition {partition} offset {offset}: {reason}")]
    Changelog {
        topic: String,
        partition: i32,
        offset: i64,
        reason: &'static str,
    },
    /// The producer was fenced or hit a fatal error: the engine must recreate it and rejoin.
    #[error("producer fenced or failed fatally: {0}")]
    Fatal(String),
    /// A schema a record names could not be fetched (registry down). Not bad input: the open
    /// transaction is aborted and the records are read again after a back-off.
    #[error("schema source unavailable: {0}")]
    SchemaUnavailable(String),
    /// Local I/O (journal, state directory).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
