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

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets from 10 µs to 10 s: instantiation sits at the bottom, deadlines at
/// the top.
const BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the recorder (once per process) and returns its handle; `None` when another
/// recorder was installed first by the embedding program.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .expect("the bucket list is not empty");
            builder.install_recorder().ok()
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
