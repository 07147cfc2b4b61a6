//! The transactional producer, and a bound on the one transactional call librdkafka may never
//! return from.
//!
//! `send_offsets_to_transaction` adds the offsets to the transaction at the transaction
//! coordinator, then sends `TxnOffsetCommit` to the group coordinator through librdkafka's
//! coordinator requests. Those ignore their timeout (librdkafka issue 5456) and, while the
//! coordinator they cached is not up, wait for a broker connection of the producer to go up or
//! down before they look again. Since librdkafka 2.10 a broker missing from one metadata
//! response (as a broker that is down is) is decommissioned: its connection never changes
//! state again, yet it can stay cached as the group coordinator (issue 5511, unfixed in 2.12).
//! A commit begun while the group coordinator's broker was down then blocks until some other
//! broker of the producer happens to connect or disconnect: in the mock fault suite, forever.
//!
//! So the call runs on a helper thread, and the processing thread gives up after the call's
//! own timeout (capped by `transaction.timeout.ms`, as librdkafka caps it) and a grace. Giving
//! up is fatal for this producer: the transaction's offsets are in an unknown state and a
//! transactional call is still in progress, so no other may be made. The runtime recreates the
//! clients; the new producer's `init_transactions` fences the stuck one and aborts its
//! transaction, whose journal entry never got past `begin` (resolved `aborted` on rejoin). The
//! helper thread and the old producer end whenever librdkafka lets the call return.

use std::ops::Deref;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;

use super::context::DeliveryContext;

/// Time librdkafka gets past its own timeout to answer before the call is given up.
const GRACE: Duration = Duration::from_secs(5);
/// How often a flush looks again whether every delivery report is in.
const FLUSH_RECHECK: Duration = Duration::from_micros(200);

/// The engine's transactional (or idempotent) producer. Everything but
/// [`TransactionalProducer::send_offsets_to_transaction_bounded`] is the plain
/// [`ThreadedProducer`]'s, through `Deref`.
pub struct TransactionalProducer {
    inner: Arc<ThreadedProducer<DeliveryContext>>,
    /// `transaction.timeout.ms`: librdkafka caps every transactional call's timeout to it.
    transaction_timeout: Duration,
}

impl TransactionalProducer {
    pub fn new(producer: ThreadedProducer<DeliveryContext>, transaction_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(producer),
            transaction_timeout,
        }
    }

    /// `send_offsets_to_transaction`, returning within its timeout (capped by
    /// `transaction.timeout.ms`) and [`GRACE`] even when librdkafka does not. A call given up
    /// returns a non-transactional error, which the core treats as fatal for the producer.
    pub fn send_offsets_to_transaction_bounded(
        &self,
        offsets: &TopicPartitionList,
        metadata: ConsumerGroupMetadata,
        timeout: Duration,
    ) -> KafkaResult<()> {
        let bound = timeout.min(self.transaction_timeout) + GRACE;
        let (answer, answered) = mpsc::sync_channel(1);
        let producer = Arc::clone(&self.inner);
        let offsets = offsets.clone();
        let spawned = std::thread::Builder::new()
            .name("breadcrumb-offsets".to_owned())
            .spawn(move || {
                let outcome = producer.send_offsets_to_transaction(&offsets, &metadata, timeout);
                // The engine may have given up waiting: nobody to tell then.
                let _ = answer.send(outcome);
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "No thread for send_offsets_to_transaction; giving up the transaction.");
            return Err(KafkaError::Global(RDKafkaErrorCode::Fail));
        }
        match answered.recv_timeout(bound) {
            Ok(outcome) => outcome,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                tracing::warn!(
                    waited_ms = bound.as_millis() as u64,
                    "send_offsets_to_transaction did not return within its timeout (librdkafka \
                     waits for a group coordinator that will not come back); recreating the \
                     producer."
                );
                Err(KafkaError::Global(RDKafkaErrorCode::OperationTimedOut))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(KafkaError::Global(RDKafkaErrorCode::Fail))
            }
        }
    }

    /// Waits until every enqueued record has its delivery report, within `timeout`.
    ///
    /// rust-rdkafka's `flush` polls the delivery queue for up to 100 ms per round, but on a
    /// threaded producer the background thread serves the reports, so that poll idles its full
    /// 100 ms on every commit. Here each round only asks librdkafka to send what lingers
    /// (`rd_kafka_flush` with no wait) and looks again shortly.
    pub fn flush_deliveries(&self, timeout: Duration) -> KafkaResult<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.inner.flush(Duration::ZERO) {
                Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut))
                    if Instant::now() < deadline =>
                {
                    std::thread::sleep(FLUSH_RECHECK);
                }
                outcome => return outcome,
            }
        }
    }
}

impl Deref for TransactionalProducer {
    type Target = ThreadedProducer<DeliveryContext>;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}
