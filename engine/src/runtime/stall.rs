//! Notices when the whole process was stopped (SIGSTOP, a paused VM, a frozen container) for
//! long enough that the consumer group may have given its partitions to another member.
//!
//! A stop freezes every thread, librdkafka's heartbeats included, so the group can move on
//! while the processing thread still believes it owns its partitions; on resume it would commit
//! a zombie transaction before librdkafka notices. Apache Kafka fences that commit by the
//! group generation; test brokers may not, so the engine fences itself: a watchdog thread that
//! ticks every [`TICK`] sees the gap, and the core aborts and rejoins. A slow operation on the
//! processing thread (a long restore) does not stop the watchdog, so it is not mistaken for one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(100);

/// Set when the process was stopped for at least the threshold; taken by the core.
#[derive(Clone, Default)]
pub struct StallFlag(Arc<AtomicBool>);

impl StallFlag {
    /// Starts the watchdog: a gap of `threshold` between ticks sets the flag.
    pub fn watch(threshold: Duration) -> Self {
        let flag = Self::default();
        let setter = flag.clone();
        let spawned = std::thread::Builder::new()
            .name("breadcrumb-stall".to_owned())
            .spawn(move || {
                let mut last = Instant::now();
                loop {
                    std::thread::sleep(TICK);
                    let now = Instant::now();
                    if now.duration_since(last) >= threshold {
                        tracing::warn!(
                            stopped_ms = now.duration_since(last).as_millis() as u64,
                            "The process was stopped; its group membership is in doubt."
                        );
                        setter.0.store(true, Ordering::Release);
                    }
                    last = now;
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "No stall watchdog: could not start its thread.");
        }
        flag
    }

    /// Whether a stop was seen since the last [`StallFlag::take`].
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::AcqRel)
    }

    #[cfg(test)]
    fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_flag_is_taken_once() {
        let flag = StallFlag::default();
        assert!(!flag.is_set());
        flag.set();
        assert!(flag.is_set());
        assert!(flag.take());
        assert!(!flag.take());
    }

    #[test]
    fn stall_watchdog_does_not_fire_while_the_process_runs() {
        let flag = StallFlag::watch(Duration::from_millis(600));
        // A busy or blocked thread elsewhere does not stop the watchdog.
        std::thread::sleep(Duration::from_millis(900));
        assert!(!flag.is_set());
    }
}
