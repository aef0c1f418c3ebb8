//! Prints the OpenAPI document generated from the code, as `docs/openapi.json` holds it:
//! `cargo run --locked -p flashcart-api --features openapi --example openapi > docs/openapi.json`.

fn main() {
    print!("{}", flashcart_api::openapi::render());
}
