//! The HTTP contract driven directly (no transport) against a private real Redis: the same
//! handler code every edge component runs. The HTTP end-to-end tests through the host live
//! with the host.

mod contract;
mod flash_sale;
mod openapi;
mod signatures;
mod support;
