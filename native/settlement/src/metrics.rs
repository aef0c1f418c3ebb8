//! Settlement's metrics, through the `metrics` crate, and its health.
//!
//! Every handle is registered once, when [`Metrics`] is made (the per-partition gauges when a
//! partition is first measured), and then only recorded: an update is an atomic add or
//! store, as it was when these were plain atomics. Where they are registered is a
//! [`Registry`]: the process's ([`Metrics::process`], what `run` uses — inside
//! `flashcart up` the host's metrics and these share one recorder, and either listener
//! shows both), or one of their own ([`Metrics::default`], for a settlement that must count
//! apart from the rest of its process, as the tests' several consumers do).
//! `flashcart_telemetry::serve` answers `/metrics` and `/health` with them.
//!
//! docs/metrics.md lists every metric with its unit, labels and what to do when it moves.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flashcart_telemetry::Registry;
use metrics::{Counter, Gauge, Histogram};

/// Per-partition gauges read from Redis by the maintenance pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionGauges {
    /// Entries not yet delivered to the group (`XINFO GROUPS` lag), if Redis knows it.
    pub lag: Option<i64>,
    /// Entries delivered but not acknowledged.
    pub pending: i64,
    /// Entries in the partition's dead-letter stream.
    pub dead_letters: i64,
}

/// One partition's gauge handles, labelled `partition="pNN"`.
#[derive(Debug)]
struct PartitionHandles {
    lag: Gauge,
    pending: Gauge,
    dead_letters: Gauge,
}

/// The metrics of one settlement (a consumer, its timers and its recovery). Shared as
/// `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    events_applied: Counter,
    events_duplicate: Counter,
    batches: Counter,
    batch_seconds: Histogram,
    last_batch_seconds: Gauge,
    event_failures: Counter,
    dead_lettered: Counter,
    claimed: Counter,
    trimmed: Counter,
    timers_expired: Counter,
    timers_cancelled: Counter,
    refunds_requested: Counter,
    fenced_partitions: Gauge,
    partitions_restored: Counter,
    last_success: Gauge,
    /// Unix ms of the last successful worker iteration (for `/health`): state, not only a
    /// metric, so it is kept where `healthy` can read it.
    last_success_ms: AtomicU64,
    partitions: Mutex<BTreeMap<u16, PartitionHandles>>,
}

/// Unix time in milliseconds.
pub fn now_ms_public() -> u64 {
    now_ms()
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Default for Metrics {
    /// Metrics in a registry of their own.
    fn default() -> Self {
        Self::new(Registry::own())
    }
}

impl Metrics {
    /// Metrics in the process's registry, beside the host's when they share a process.
    pub fn process() -> Self {
        Self::new(Registry::process())
    }

    /// Registers settlement's metrics in `registry`.
    pub fn new(registry: Registry) -> Self {
        use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};
        registry.clone().register(|| {
            describe_counter!(
                "flashcart_settle_events_applied_total",
                "Events applied to the ledger (the first time)."
            );
            describe_counter!(
                "flashcart_settle_events_duplicate_total",
                "Redeliveries skipped as already applied."
            );
            describe_counter!("flashcart_settle_batches_total", "Batches committed.");
            describe_histogram!(
                "flashcart_settle_batch_seconds",
                "Time to apply a batch: SQL transaction, commit and XACK."
            );
            describe_gauge!(
                "flashcart_settle_last_batch_seconds",
                "Time the latest batch took to apply, commit and acknowledge."
            );
            describe_counter!(
                "flashcart_settle_event_failures_total",
                "Failed tries to apply an event."
            );
            describe_counter!(
                "flashcart_settle_dead_lettered_total",
                "Entries moved to a dead-letter stream."
            );
            describe_counter!(
                "flashcart_settle_claimed_total",
                "Entries claimed from dead consumers or retried after a failure."
            );
            describe_counter!("flashcart_settle_trimmed_total", "Stream entries trimmed.");
            describe_counter!(
                "flashcart_settle_timers_expired_total",
                "Reservations released by the expiry timer."
            );
            describe_counter!(
                "flashcart_settle_timers_cancelled_total",
                "Orders cancelled at their payment deadline."
            );
            describe_counter!(
                "flashcart_settle_refunds_requested_total",
                "Refund requests for orders paid after cancellation."
            );
            describe_gauge!(
                "flashcart_settle_fenced_partitions",
                "Partitions whose writes are fenced (503) after the last recovery pass."
            );
            describe_counter!(
                "flashcart_settle_partitions_restored_total",
                "Partitions restored from the ledger after Redis lost writes the ledger had."
            );
            describe_gauge!(
                "flashcart_settle_last_success_timestamp_seconds",
                "Unix time of the worker's last successful step."
            );
            describe_gauge!(
                "flashcart_settle_lag",
                "Stream entries not yet delivered to the settlement group, by partition."
            );
            describe_gauge!(
                "flashcart_settle_pending",
                "Stream entries delivered but not acknowledged, by partition."
            );
            describe_gauge!(
                "flashcart_settle_dead_letters",
                "Entries in the dead-letter stream, by partition."
            );
            Self {
                events_applied: counter!("flashcart_settle_events_applied_total"),
                events_duplicate: counter!("flashcart_settle_events_duplicate_total"),
                batches: counter!("flashcart_settle_batches_total"),
                batch_seconds: metrics::histogram!("flashcart_settle_batch_seconds"),
                last_batch_seconds: gauge!("flashcart_settle_last_batch_seconds"),
                event_failures: counter!("flashcart_settle_event_failures_total"),
                dead_lettered: counter!("flashcart_settle_dead_lettered_total"),
                claimed: counter!("flashcart_settle_claimed_total"),
                trimmed: counter!("flashcart_settle_trimmed_total"),
                timers_expired: counter!("flashcart_settle_timers_expired_total"),
                timers_cancelled: counter!("flashcart_settle_timers_cancelled_total"),
                refunds_requested: counter!("flashcart_settle_refunds_requested_total"),
                fenced_partitions: gauge!("flashcart_settle_fenced_partitions"),
                partitions_restored: counter!("flashcart_settle_partitions_restored_total"),
                last_success: gauge!("flashcart_settle_last_success_timestamp_seconds"),
                last_success_ms: AtomicU64::new(0),
                partitions: Mutex::new(BTreeMap::new()),
                registry,
            }
        })
    }

    /// The registry these metrics are in.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Records a committed batch: `applied` new events, `duplicates` skipped, and how long
    /// applying, committing and acknowledging it took.
    pub fn batch(&self, applied: usize, duplicates: usize, took: Duration) {
        self.events_applied.increment(applied as u64);
        self.events_duplicate.increment(duplicates as u64);
        self.batches.increment(1);
        let seconds = took.as_secs_f64();
        self.batch_seconds.record(seconds);
        self.last_batch_seconds.set(seconds);
    }

    /// Counts a failed try to apply an event.
    pub fn event_failed(&self) {
        self.event_failures.increment(1);
    }

    /// Counts an entry moved to a dead-letter stream.
    pub fn dead_lettered(&self) {
        self.dead_lettered.increment(1);
    }

    /// Counts `n` entries claimed from dead consumers or retried.
    pub fn claimed(&self, n: usize) {
        self.claimed.increment(n as u64);
    }

    /// Counts `n` stream entries trimmed.
    pub fn trimmed(&self, n: u64) {
        self.trimmed.increment(n);
    }

    /// Counts what a timer pass did.
    pub fn timers_fired(&self, expired: usize, cancelled: usize, refunds: usize) {
        self.timers_expired.increment(expired as u64);
        self.timers_cancelled.increment(cancelled as u64);
        self.refunds_requested.increment(refunds as u64);
    }

    /// How many partitions the last recovery pass left fenced.
    pub fn fenced(&self, partitions: usize) {
        self.fenced_partitions.set(partitions as f64);
    }

    /// Counts a partition restored from the ledger.
    pub fn restored(&self) {
        self.partitions_restored.increment(1);
    }

    /// Sets partition `p`'s gauges (registered on its first measurement). A lag Redis cannot
    /// tell (entries deleted from the middle of the stream) is NaN, not the last value seen.
    pub fn partition(&self, p: u16, gauges: PartitionGauges) {
        let Ok(mut partitions) = self.partitions.lock() else {
            return;
        };
        let handles = partitions.entry(p).or_insert_with(|| {
            let label = format!("p{p:02}");
            self.registry.register(|| PartitionHandles {
                lag: metrics::gauge!("flashcart_settle_lag", "partition" => label.clone()),
                pending: metrics::gauge!("flashcart_settle_pending", "partition" => label.clone()),
                dead_letters: metrics::gauge!("flashcart_settle_dead_letters", "partition" => label),
            })
        });
        handles
            .lag
            .set(gauges.lag.map_or(f64::NAN, |lag| lag as f64));
        handles.pending.set(gauges.pending as f64);
        handles.dead_letters.set(gauges.dead_letters as f64);
    }

    /// Marks the worker healthy now.
    pub fn alive(&self) {
        let now = now_ms();
        self.last_success_ms.store(now, Ordering::Relaxed);
        self.last_success.set(now as f64 / 1e3);
    }

    /// Whether the worker succeeded within `within`.
    pub fn healthy(&self, within: Duration) -> bool {
        let last = self.last_success_ms.load(Ordering::Relaxed);
        last > 0
            && now_ms().saturating_sub(last)
                <= u64::try_from(within.as_millis()).unwrap_or(u64::MAX)
    }

    /// Folds recorded histogram samples into their buckets (the maintenance pass calls it,
    /// so a registry of its own does not grow between scrapes).
    pub fn upkeep(&self) {
        self.registry.upkeep();
    }

    /// The registry's metrics in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        self.registry.render()
    }

    /// The value of one series as rendered, e.g. `flashcart_settle_events_applied_total` or
    /// `flashcart_settle_pending{partition="p03"}` — of the whole process when these metrics
    /// are in the process's registry.
    pub fn value(&self, series: &str) -> Option<f64> {
        flashcart_telemetry::series_value(&self.render(), series)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_partition_gauges() {
        let m = Metrics::default();
        m.batch(10, 2, Duration::from_micros(1500));
        m.partition(
            3,
            PartitionGauges {
                lag: Some(4),
                pending: 1,
                dead_letters: 0,
            },
        );
        let text = m.render();
        assert!(
            text.contains("flashcart_settle_events_applied_total 10\n"),
            "{text}"
        );
        assert!(text.contains("flashcart_settle_events_duplicate_total 2\n"));
        assert!(text.contains("# TYPE flashcart_settle_batch_seconds histogram\n"));
        assert!(text.contains("flashcart_settle_batch_seconds_bucket{le=\"0.0025\"} 1\n"));
        assert!(text.contains("flashcart_settle_lag{partition=\"p03\"} 4\n"));
        assert!(text.contains("flashcart_settle_pending{partition=\"p03\"} 1\n"));
        assert_eq!(m.value("flashcart_settle_last_batch_seconds"), Some(0.0015));
        assert_eq!(m.value("flashcart_settle_dead_lettered_total"), Some(0.0));
        assert!(!m.healthy(Duration::from_secs(1)));
        m.alive();
        assert!(m.healthy(Duration::from_secs(1)));
        assert!(
            m.value("flashcart_settle_last_success_timestamp_seconds")
                .is_some_and(|t| t > 1.7e9),
            "{}",
            m.render()
        );
        assert!(
            !Metrics::default().render().contains("p03"),
            "each default Metrics counts apart"
        );
    }

    #[test]
    fn an_unknown_lag_is_nan_not_the_last_value() {
        let m = Metrics::default();
        let mut gauges = PartitionGauges {
            lag: Some(9),
            ..PartitionGauges::default()
        };
        m.partition(0, gauges);
        gauges.lag = None;
        m.partition(0, gauges);
        assert!(
            m.value("flashcart_settle_lag{partition=\"p00\"}")
                .is_some_and(f64::is_nan),
            "{}",
            m.render()
        );
    }
}
