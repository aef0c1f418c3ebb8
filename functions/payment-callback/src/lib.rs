//! flashcart edge component `payment-callback`: thin by design; the contract lives in `flashcart-api`.

use flashcart_spin::{Operation, WasiRequest, WasiResponse, component, serve};

/// Handles one request.
async fn handle(req: WasiRequest) -> WasiResponse {
    serve(req, Operation::PaymentCallback).await
}

component!(super::handle);
