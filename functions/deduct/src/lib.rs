//! flashcart edge component `deduct`: thin by design; the contract lives in `flashcart-api`.

use flashcart_spin::{Operation, WasiRequest, WasiResponse, component, serve};

/// Handles one request.
async fn handle(req: WasiRequest) -> WasiResponse {
    serve(req, Operation::Deduct).await
}

component!(super::handle);
