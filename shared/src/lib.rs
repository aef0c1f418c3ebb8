//! flashcart-core: the domain core shared by the edge functions (wasm) and native services.
#![deny(missing_docs)]
