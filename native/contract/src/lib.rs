//! flashcart-contract: the edge contract's scenarios, written once and run two ways:
//! in-process against the `flashcart-api` handlers, and over real HTTP through flashcart's
//! host serving the repo's `spin.toml` with the real `.wasm` components. Both use a private
//! `redis-server`.
//!
//! - [`node`]: a node under test (Redis or a Redis Cluster, an inventory for set-up steps,
//!   the transport)
//! - [`cluster`]: the edge on a Redis Cluster: spread, a partition moved mid-sale, bad
//!   deployments
//! - [`contract`]: the whole flow and every problem type
//! - [`signatures`]: the payment callback's signature checks
//! - [`idempotency`]: one Idempotency-Key, one effect, across partitions
//! - [`flash_sale`]: 2 000 buyers for 50 units, then a burst that never reaches Redis
//! - [`sell_out`]: what finding the last units and a sold-out crowd cost Redis, counted
#![deny(missing_docs)]

pub mod cluster;
pub mod contract;
pub mod flash_sale;
pub mod idempotency;
pub mod node;
pub mod sell_out;
pub mod signatures;

pub use node::{
    HOST_PROBLEM_TYPES, Kind, Node, NodeClock, NodeOptions, PROBLEM_TYPES,
    REPLICATED_PROBLEM_TYPES, Redis,
};
