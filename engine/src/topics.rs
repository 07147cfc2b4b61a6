//! Creating the topics breadcrumb writes to, shaped after its inputs.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use crate::error::{EngineError, Result};

const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

/// A topic breadcrumb needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    /// Changelogs are compacted: only the last value per key matters for a restore.
    pub compacted: bool,
    /// Internal topics (changelogs, repartition) must have exactly `partitions`; outputs may have
    /// been created differently by their owners.
    pub exact_partitions: bool,
}

/// Partition counts of existing topics (absent topics are left out).
pub fn partition_counts(
    client_config: &ClientConfig,
    topics: &[String],
) -> Result<BTreeMap<String, i32>> {
    let consumer: BaseConsumer = client_config.create()?;
    let metadata = consumer.fetch_metadata(None, METADATA_TIMEOUT)?;
    let mut counts = BTreeMap::new();
    for topic in metadata.topics() {
        if topics.iter().any(|name| name == topic.name())
            && topic.error().is_none()
            && !topic.partitions().is_empty()
        {
            counts.insert(topic.name().to_owned(), topic.partitions().len() as i32);
        }
    }
    Ok(counts)
}

/// Creates the topics that are missing and checks the shape of those that exist.
pub async fn ensure(
    client_config: &ClientConfig,
    specs: &[TopicSpec],
    replication_factor: i32,
) -> Result<()> {
    let names: Vec<String> = specs.iter().map(|spec| spec.name.clone()).collect();
    let existing = partition_counts(client_config, &names)?;
    for spec in specs {
        if let Some(&partitions) = existing.get(&spec.name) {
            if spec.exact_partitions && partitions != spec.partitions {
                return Err(EngineError::Topic {
                    topic: spec.name.clone(),
                    reason: format!(
                        "has {partitions} partitions, but its input has {}; state partitions must match input partitions",
                        spec.partitions
                    ),
                });
            }
        }
    }
    let missing: Vec<&TopicSpec> = specs
        .iter()
        .filter(|spec| !existing.contains_key(&spec.name))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = client_config.create()?;
    let new_topics: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|spec| {
            let topic = NewTopic::new(
                &spec.name,
                spec.partitions,
                TopicReplication::Fixed(replication_factor),
            );
            if spec.compacted {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
    let results = admin.create_topics(&new_topics, &options).await?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, "Created topic."),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %name, "Topic created concurrently by another instance.")
            }
            Err((name, code)) => {
                return Err(EngineError::Topic {
                    topic: name,
                    reason: format!("could not be created: {code}"),
                })
            }
        }
    }
    // Wait until the new topics show up in metadata, so the first produce does not race them.
    for _ in 0..50 {
        let counts = partition_counts(client_config, &names)?;
        if counts.len() == names.len() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
