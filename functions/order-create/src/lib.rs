//! flashcart edge component `order-create`: thin by design; the contract lives in `flashcart-api`.

use flashcart_spin::{Operation, WasiRequest, WasiResponse, component, serve};

/// Handles one request.
async fn handle(req: WasiRequest) -> WasiResponse {
    serve(req, Operation::Orders).await
}

component!(super::handle);
