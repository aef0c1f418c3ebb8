//! Prometheus metrics: the process's one recorder (`flashcart-telemetry`, shared with
//! settlement inside `flashcart up`), rendered by `/metrics`. docs/metrics.md lists every
//! metric with its unit, labels and what to do when it moves.
//!
//! Metric names (all prefixed `flashcart_`):
//! - `requests_total{component,status}` and `request_duration_seconds{component}`;
//! - `edge_cache_answers_total{component,cache}`: answers a component marked with a
//!   `Flashcart-Cache` header (where the answer came from: the node's cache or Redis);
//! - `instantiate_seconds{component}` and `instances_total{component}`: store creation +
//!   instantiation per instance;
//! - `redis_clients` (pooled clients), `redis_connects_total`, `redis_connect_seconds`,
//!   `redis_command_seconds{command}`, `redis_errors_total{kind}`,
//!   `redis_refused_total{component}` (addresses outside `allowed_outbound_hosts`);
//! - `in_flight_requests`, `accept_errors_total`.

use std::sync::OnceLock;

use flashcart_telemetry::Registry;
use metrics::{Counter, Histogram};

/// The process's registry (shared with settlement when `flashcart up` runs both), installed
/// on first use; the host's metrics are described there once.
pub fn install() -> Registry {
    static DESCRIBED: OnceLock<()> = OnceLock::new();
    let registry = Registry::process();
    DESCRIBED.get_or_init(|| registry.register(describe));
    registry
}

/// The current metrics of the process in Prometheus text format.
pub fn render() -> String {
    install().render()
}

/// `# HELP` text for each of the host's metrics (docs/metrics.md says more).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "flashcart_requests_total",
        "Requests a component answered, by component and HTTP status."
    );
    describe_counter!(
        "flashcart_edge_cache_answers_total",
        "Answers a component marked with a Flashcart-Cache header, by component and its value."
    );
    describe_histogram!(
        "flashcart_request_duration_seconds",
        "Time a component took to answer a request, by component."
    );
    describe_histogram!(
        "flashcart_instantiate_seconds",
        "Store creation and instantiation of a component instance."
    );
    describe_counter!(
        "flashcart_instances_total",
        "Component instances created (each serves up to --max-instance-reuse requests)."
    );
    describe_gauge!(
        "flashcart_in_flight_requests",
        "Requests being served by a component now."
    );
    describe_counter!(
        "flashcart_accept_errors_total",
        "Failed accepts on the application listener (e.g. out of file descriptors)."
    );
    describe_gauge!(
        "flashcart_redis_clients",
        "Shared Redis clients (one per address a component opened)."
    );
    describe_counter!(
        "flashcart_redis_connects_total",
        "Redis clients connected (first use of an address)."
    );
    describe_histogram!(
        "flashcart_redis_connect_seconds",
        "Time to connect a Redis client."
    );
    describe_histogram!(
        "flashcart_redis_command_seconds",
        "Time of a spin:redis command, by command."
    );
    describe_counter!(
        "flashcart_redis_errors_total",
        "Failed spin:redis commands, by kind (timeout, connection, server, other)."
    );
    describe_counter!(
        "flashcart_redis_refused_total",
        "Redis addresses refused by a component's allowed_outbound_hosts, by component."
    );
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
    /// `edge_cache_answers_total` per [`CACHE_ANSWERS`] value, registered on first use.
    cache_answers: [OnceLock<Counter>; CACHE_ANSWERS.len()],
}

/// The values of the `Flashcart-Cache` response header that are counted: where flashcart's
/// stock read (`hit`, `miss`, `stale-on-error`) and deduct (`sold-out`, from the node's
/// stock map without a Redis call) took their answer from. Any other value is not counted,
/// so a component cannot grow the label set.
pub const CACHE_ANSWERS: [&str; 4] = ["hit", "miss", "stale-on-error", "sold-out"];

/// The index in [`CACHE_ANSWERS`] of a `Flashcart-Cache` header value.
fn cache_answer(value: &[u8]) -> Option<usize> {
    CACHE_ANSWERS.iter().position(|v| v.as_bytes() == value)
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
            cache_answers: Default::default(),
        }
    }

    /// Records one request: how long the component took, the status it was answered, and
    /// its `Flashcart-Cache` header's value if it had one.
    pub fn record(&self, seconds: f64, status: u16, cache: Option<&[u8]>) {
        self.duration.record(seconds);
        if let Some(i) = cache.and_then(cache_answer) {
            self.cache_answers[i]
                .get_or_init(|| {
                    metrics::counter!(
                        "flashcart_edge_cache_answers_total",
                        "component" => self.component.clone(),
                        "cache" => CACHE_ANSWERS[i]
                    )
                })
                .increment(1);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_known_cache_answers_are_counted() {
        assert_eq!(cache_answer(b"sold-out"), Some(3));
        assert_eq!(cache_answer(b"hit"), Some(0));
        assert_eq!(cache_answer(b"stale-on-error"), Some(2));
        for other in [
            &b""[..],
            b"HIT",
            b"sold-out ",
            b"anything a component likes",
        ] {
            assert_eq!(cache_answer(other), None, "{other:?}");
        }
    }
}
