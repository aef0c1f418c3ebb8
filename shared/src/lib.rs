//! flashcart-core: the domain core shared by the edge functions (wasm) and native services.
//!
//! It has no I/O of its own: Redis is reached through [`exec::RedisExecutor`], which an edge
//! component implements with spin-sdk's redis and native code with the `redis` crate.
//!
//! - [`ids`]: validated identifiers and quantities (everything that reaches Redis)
//! - [`keys`]: the key schema, partitions as Redis Cluster hash tags
//! - [`sku`]: a SKU's terms and how its stock splits into segments
//! - [`order`]: the order state machine, a pure function
//! - [`problem`]: RFC 9457 problem details and the domain's rejections
//! - [`library`]: the Redis function library (Lua) and its version
//! - [`functions`]: the library's functions as one typed table: name, read-only flag, keys,
//!   arguments and reply decoder of each
//! - [`inventory`]: the operations (load, reserve, order, pay, cancel, release, stock)
//! - [`recovery`]: the ledger guard, the fence after a restart, and restoring from the ledger
//! - [`signature`]: the payment provider's webhook signature (Stripe-compatible)
//! - [`event`]: the events each decision appends to its partition's stream
//! - [`exec`]: the one door to Redis
//! - `schema` (feature `openapi`): JSON Schemas of the validated types, read from the same
//!   limits and character sets as their validation
#![deny(missing_docs)]

pub mod event;
pub mod exec;
pub mod functions;
pub mod ids;
pub mod inventory;
pub mod keys;
pub mod library;
pub mod order;
pub mod problem;
pub mod recovery;
#[cfg(feature = "openapi")]
pub(crate) mod schema;
pub mod signature;
pub mod sku;

pub use exec::{ExecError, FailureKind, RedisExecutor, Value};
pub use inventory::{Inventory, Now, Settings};
pub use keys::{KeySchema, Partition};
pub use problem::{Problem, Rejection};

use sha2::{Digest, Sha256};

/// SHA-256 over `parts`, each length-prefixed so `["ab","c"]` and `["a","bc"]` differ.
pub(crate) fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// The fingerprint of a request, compared on idempotent replays: the same key with another
/// request is refused. `target` is what the path names that the body does not (the SKU of a
/// deduct; empty where the body names its target), so one key and one body sent to two SKUs
/// are two requests, not a replay of the first.
pub fn fingerprint(target: &str, body: &[u8]) -> String {
    hex::encode(&digest(&[b"request", target.as_bytes(), body])[..16])
}
