//! The smallest flashcart test component: answers every request with a greeting and
//! echoes what the host told it about the route (Spin's `spin-*` request headers), and the
//! `proxy-authorization` header it got, which a host must never pass to a guest.
//! A path ending in `/sleep/<ms>` first waits that long (an await on the host's clock,
//! not a busy loop), to test draining on shutdown and the wall-clock deadline.
//! `instance-requests=` counts the requests this instance has served, so tests can see
//! whether the host reused it.
use std::sync::atomic::{AtomicU64, Ordering};

use spin_sdk::http::{IntoResponse, Request, StatusCode};
use spin_sdk::http_service;

/// Requests served by this instance (an instance's statics live as long as it does).
static SERVED: AtomicU64 = AtomicU64::new(0);

#[http_service]
async fn hello(req: Request) -> impl IntoResponse {
    let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
    if let Some(ms) = req
        .uri()
        .path()
        .rsplit_once("/sleep/")
        .and_then(|(_, ms)| ms.parse::<u64>().ok())
    {
        spin_sdk::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let body = format!(
        "hello from flashcart\nmethod={}\npath-info={}\nmatched-route={}\nparam-sku={}\ninstance-requests={served}\nproxy-authorization={}\n",
        req.method(),
        header("spin-path-info"),
        header("spin-matched-route"),
        header("spin-path-match-sku"),
        header("proxy-authorization"),
    );
    (StatusCode::OK, body)
}
