//! Counters and gauges of one settlement process, and a tiny HTTP endpoint serving them
//! (`GET /metrics` in the Prometheus text format, `GET /health`).
//!
//! Plain atomics: every update is a single relaxed add or store on the hot path, and a scrape
//! reads them without stopping the worker. The HTTP side is hand-rolled (request line only,
//! `Connection: close`) because two fixed GET routes do not justify an HTTP stack here.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

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

/// The process's metrics. Shared as `Arc<Metrics>`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Events applied to the ledger (first time).
    pub events_applied: AtomicU64,
    /// Redeliveries recognised as applied before and skipped.
    pub events_duplicate: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
    /// Sum of batch latencies (read → commit → ack), microseconds.
    pub batch_micros: AtomicU64,
    /// Latency of the last batch, microseconds.
    pub last_batch_micros: AtomicU64,
    /// Event failures recorded (each try that failed).
    pub event_failures: AtomicU64,
    /// Entries moved to a dead-letter stream.
    pub dead_lettered: AtomicU64,
    /// Entries claimed from other (dead) consumers or retried after a failure.
    pub claimed: AtomicU64,
    /// Stream entries trimmed.
    pub trimmed: AtomicU64,
    /// Reservations released by the expiry timer.
    pub timers_expired: AtomicU64,
    /// Orders cancelled by the payment-deadline timer.
    pub timers_cancelled: AtomicU64,
    /// Refund requests sent to the core for orders paid after cancellation.
    pub refunds_requested: AtomicU64,
    /// Partitions fenced now (Redis restarted and settlement has not yet checked or restored
    /// them): writes there answer 503.
    pub fenced_partitions: AtomicU64,
    /// Partitions restored from the ledger after Redis lost writes the ledger had.
    pub partitions_restored: AtomicU64,
    /// Unix ms of the last successful worker iteration (for `/health`).
    pub last_success_ms: AtomicU64,
    /// Per-partition gauges, by partition number.
    pub partitions: Mutex<BTreeMap<u16, PartitionGauges>>,
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

impl Metrics {
    /// Records a committed batch.
    pub fn batch(&self, applied: usize, duplicates: usize, took: Duration) {
        self.events_applied
            .fetch_add(applied as u64, Ordering::Relaxed);
        self.events_duplicate
            .fetch_add(duplicates as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.batch_micros.fetch_add(micros, Ordering::Relaxed);
        self.last_batch_micros.store(micros, Ordering::Relaxed);
    }

    /// Marks the worker healthy now.
    pub fn alive(&self) {
        self.last_success_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Whether the worker succeeded within `within`.
    pub fn healthy(&self, within: Duration) -> bool {
        let last = self.last_success_ms.load(Ordering::Relaxed);
        last > 0
            && now_ms().saturating_sub(last)
                <= u64::try_from(within.as_millis()).unwrap_or(u64::MAX)
    }

    /// The metrics in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters: [(&str, &str, &AtomicU64); 14] = [
            (
                "flashcart_settle_events_applied_total",
                "Events applied to the ledger.",
                &self.events_applied,
            ),
            (
                "flashcart_settle_events_duplicate_total",
                "Redeliveries skipped as already applied.",
                &self.events_duplicate,
            ),
            (
                "flashcart_settle_batches_total",
                "Batches committed.",
                &self.batches,
            ),
            (
                "flashcart_settle_batch_seconds_sum_micros",
                "Sum of batch latencies in microseconds.",
                &self.batch_micros,
            ),
            (
                "flashcart_settle_event_failures_total",
                "Failed tries to apply an event.",
                &self.event_failures,
            ),
            (
                "flashcart_settle_dead_lettered_total",
                "Entries moved to a dead-letter stream.",
                &self.dead_lettered,
            ),
            (
                "flashcart_settle_claimed_total",
                "Entries claimed from dead consumers or retried.",
                &self.claimed,
            ),
            (
                "flashcart_settle_trimmed_total",
                "Stream entries trimmed.",
                &self.trimmed,
            ),
            (
                "flashcart_settle_timers_expired_total",
                "Reservations released by the expiry timer.",
                &self.timers_expired,
            ),
            (
                "flashcart_settle_timers_cancelled_total",
                "Orders cancelled at their payment deadline.",
                &self.timers_cancelled,
            ),
            (
                "flashcart_settle_refunds_requested_total",
                "Refund requests for orders paid after cancellation.",
                &self.refunds_requested,
            ),
            (
                "flashcart_settle_partitions_restored_total",
                "Partitions restored from the ledger after Redis lost writes the ledger had.",
                &self.partitions_restored,
            ),
            (
                "flashcart_settle_fenced_partitions",
                "Partitions whose writes are fenced until settlement checked them after a Redis restart.",
                &self.fenced_partitions,
            ),
            (
                "flashcart_settle_last_batch_micros",
                "Latency of the last batch in microseconds.",
                &self.last_batch_micros,
            ),
        ];
        for (name, help, value) in counters {
            let kind = if name.ends_with("_total") || name.ends_with("_sum_micros") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let partitions = self
            .partitions
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default();
        for (name, help) in [
            (
                "flashcart_settle_lag",
                "Stream entries not yet delivered to the settlement group.",
            ),
            (
                "flashcart_settle_pending",
                "Stream entries delivered but not acknowledged.",
            ),
            (
                "flashcart_settle_dead_letters",
                "Entries in the dead-letter stream.",
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (p, g) in &partitions {
                let value = match name {
                    "flashcart_settle_lag" => match g.lag {
                        Some(lag) => lag,
                        None => continue,
                    },
                    "flashcart_settle_pending" => g.pending,
                    _ => g.dead_letters,
                };
                let _ = writeln!(out, "{name}{{partition=\"p{p:02}\"}} {value}");
            }
        }
        out
    }
}

/// Serves `/metrics` and `/health` on `listener` until the task is dropped. `/health` is 200
/// while the worker succeeded within `stale_after`, else 503.
pub async fn serve(listener: TcpListener, metrics: std::sync::Arc<Metrics>, stale_after: Duration) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = match tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = match path {
                "/metrics" => ("200 OK", metrics.render()),
                "/health" if metrics.healthy(stale_after) => ("200 OK", "ok\n".to_owned()),
                "/health" => ("503 Service Unavailable", "stalled\n".to_owned()),
                _ => ("404 Not Found", "not found\n".to_owned()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_partition_gauges() {
        let m = Metrics::default();
        m.batch(10, 2, Duration::from_micros(1500));
        m.partitions.lock().unwrap().insert(
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
        assert!(text.contains("flashcart_settle_lag{partition=\"p03\"} 4\n"));
        assert!(text.contains("flashcart_settle_pending{partition=\"p03\"} 1\n"));
        assert!(!m.healthy(Duration::from_secs(1)));
        m.alive();
        assert!(m.healthy(Duration::from_secs(1)));
    }
}
