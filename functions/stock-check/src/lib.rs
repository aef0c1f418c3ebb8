//! flashcart edge component `stock-check`: thin by design; the contract lives in `flashcart-api`.

use flashcart_spin::{WasiRequest, WasiResponse, component, serve_stock_check};

/// Handles one request.
async fn handle(req: WasiRequest) -> WasiResponse {
    serve_stock_check(req).await
}

component!(super::handle);
