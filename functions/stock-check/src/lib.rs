//! flashcart edge component `stock-check`: thin by design; the contract lives in `flashcart-api`.

use flashcart_spin::serve_stock_check;
use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

/// Handles one request.
#[http_service]
async fn handle(req: Request) -> impl IntoResponse {
    serve_stock_check(req).await
}
