//! flashcart edge component `admin`: thin by design; the contract lives in `flashcart-api`.

use flashcart_spin::{Operation, WasiRequest, component, serve};
use spin_sdk::http::IntoResponse;

/// Handles one request.
async fn handle(req: WasiRequest) -> impl IntoResponse {
    serve(req, Operation::Admin).await
}

component!(super::handle);
