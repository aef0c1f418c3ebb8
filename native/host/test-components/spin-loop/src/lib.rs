//! A component that never answers: it spins forever, so the host's deadline must cut
//! it off and answer for it.
use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

#[http_service]
async fn spin_forever(_req: Request) -> impl IntoResponse {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
        if std::hint::black_box(false) {
            break;
        }
    }
    format!("unreachable {n}")
}
