//! A component outside the flashcart world: it reads a file, so it imports
//! `wasi:filesystem`, and the host must refuse it at load, naming that import.
use spin_sdk::http::{IntoResponse, Request, StatusCode};
use spin_sdk::http_service;

#[http_service]
async fn read_file(_req: Request) -> impl IntoResponse {
    match std::fs::read_to_string("/etc/hostname") {
        Ok(text) => (StatusCode::OK, text),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
