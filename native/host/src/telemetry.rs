//! Prometheus metrics: one process-wide recorder, rendered by `/metrics`.
//!
//! Metric names (all prefixed `flashcart_`):
//! - `requests_total{component,status}` and `request_duration_seconds{component}`;
//! - `instantiate_seconds{component}`: store creation + instantiation per request;
//! - `redis_clients` (pooled clients), `redis_connects_total`, `redis_connect_seconds`,
//!   `redis_command_seconds{command}`, `redis_errors_total{kind}`,
//!   `redis_refused_total{component}` (addresses outside `allowed_outbound_hosts`);
//! - `in_flight_requests`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets from 10 µs to 10 s: instantiation sits at the bottom, deadlines at
/// the top.
const BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often recorded histogram samples are folded into their buckets.
const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

/// Installs the recorder (once per process) and returns its handle; `None` when another
/// recorder was installed first by the embedding program.
///
/// The recorder keeps every histogram sample (a value and its time, 24 bytes) until an
/// upkeep folds them into buckets. Without one, a node that nobody scrapes grows by that
/// much for every request and Redis command — about 1 GB an hour at 5 000 deducts/s — so
/// a thread runs the upkeep every [`UPKEEP_PERIOD`] for the life of the process.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .expect("the bucket list is not empty");
            let handle = builder.install_recorder().ok()?;
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("flashcart-metrics".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_PERIOD);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no metrics upkeep thread: histograms grow until scraped");
            }
            Some(handle)
        })
        .as_ref()
}

/// The current metrics in Prometheus text format.
pub fn render() -> String {
    match install() {
        Some(handle) => {
            handle.run_upkeep();
            handle.render()
        }
        None => "# metrics recorder owned by the embedding program\n".to_owned(),
    }
}

/// One component's request metrics, registered once and then only recorded: looking a
/// labelled metric up by name for every request (a key built, hashed and found in the
/// registry, its label strings allocated) cost more than recording it.
#[derive(Debug)]
pub struct ComponentMetrics {
    component: String,
    duration: Histogram,
    /// `requests_total` per status code, 100–599, registered on first use.
    answered: Box<[OnceLock<Counter>]>,
}

impl ComponentMetrics {
    /// The metrics of `component`; call after [`install`], or they record nowhere.
    pub fn new(component: &str) -> Self {
        Self {
            component: component.to_owned(),
            duration: metrics::histogram!(
                "flashcart_request_duration_seconds",
                "component" => component.to_owned()
            ),
            answered: (100..600).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Records one request: how long the component took and the status it was answered.
    pub fn record(&self, seconds: f64, status: u16) {
        self.duration.record(seconds);
        let Some(slot) = status
            .checked_sub(100)
            .and_then(|i| self.answered.get(usize::from(i)))
        else {
            return;
        };
        slot.get_or_init(|| {
            metrics::counter!(
                "flashcart_requests_total",
                "component" => self.component.clone(),
                "status" => status.to_string()
            )
        })
        .increment(1);
    }
}
