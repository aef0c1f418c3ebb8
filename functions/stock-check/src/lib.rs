//! flashcart edge component `stock-check`: thin by design; the contract lives in `flashcart-api`.

use flashcart_spin::{WasiRequest, component, serve_stock_check};
use spin_sdk::http::IntoResponse;

/// Handles one request.
async fn handle(req: WasiRequest) -> impl IntoResponse {
    serve_stock_check(req).await
}

component!(super::handle);
