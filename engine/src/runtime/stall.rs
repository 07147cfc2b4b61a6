//! Notices when the whole process was stopped (SIGSTOP, a paused VM, a frozen container) for
//! long enough that the consumer group may have given its partitions to another member.
//!
//! A stop freezes every thread, librdkafka's heartbeats included, so the group can move on
//! while the processing thread still believes it owns its partitions; on resume it would commit
//! a zombie transaction before librdkafka notices. Apache Kafka fences that commit by the
//! group generation; test brokers may not, so the engine fences itself: a watchdog thread that
//! ticks every [`TICK`] sees the gap, and the core aborts and rejoins. A slow operation on the
//! processing thread (a long restore) does not stop the watchdog, so it is not mistaken for one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(100);

/// Set when the process was stopped for at least the threshold; taken by the core.
#[derive(Clone)]
pub struct StallFlag {
    stopped: Arc<AtomicBool>,
    /// Milliseconds since `base` at the watchdog's last tick; `u64::MAX` without a watchdog.
    last_tick_ms: Arc<AtomicU64>,
    base: Instant,
    threshold: Duration,
}

impl Default for StallFlag {
    /// A flag without a watchdog: set only by hand.
    fn default() -> Self {
        Self {
            stopped: Arc::default(),
            last_tick_ms: Arc::new(AtomicU64::new(u64::MAX)),
            base: Instant::now(),
            threshold: Duration::MAX,
        }
    }
}

impl StallFlag {
    /// Starts the watchdog: a gap of `threshold` between ticks sets the flag.
    pub fn watch(threshold: Duration) -> Self {
        let flag = Self {
            last_tick_ms: Arc::new(AtomicU64::new(0)),
            threshold,
            ..Self::default()
        };
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
                        setter.stopped.store(true, Ordering::Release);
                    }
                    setter
                        .last_tick_ms
                        .store(setter.elapsed_ms(now), Ordering::Release);
                    last = now;
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "No stall watchdog: could not start its thread.");
        }
        flag
    }

    fn elapsed_ms(&self, at: Instant) -> u64 {
        at.duration_since(self.base).as_millis() as u64
    }

    /// Whether a stop was seen since the last [`StallFlag::take`], or may have just happened:
    /// right after a resume the processing thread can run before the watchdog wakes, so a
    /// watchdog that has not ticked for the threshold counts as a stop too.
    pub fn is_set(&self) -> bool {
        self.stopped.load(Ordering::Acquire) || self.watchdog_silent()
    }

    pub fn take(&self) -> bool {
        self.stopped.swap(false, Ordering::AcqRel) || self.watchdog_silent()
    }

    fn watchdog_silent(&self) -> bool {
        let last = self.last_tick_ms.load(Ordering::Acquire);
        last != u64::MAX
            && self.elapsed_ms(Instant::now()).saturating_sub(last)
                >= self.threshold.as_millis() as u64
    }

    #[cfg(test)]
    fn set(&self) {
        self.stopped.store(true, Ordering::Release);
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
