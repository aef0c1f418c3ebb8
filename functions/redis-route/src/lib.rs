//! flashcart-redis-route: Redis Cluster routing inside an edge component, over a
//! single-node client such as Spin's `spin:redis`, so the same `.wasm` reaches a cluster's
//! masters directly on Spin and on flashcart's host — no proxy in front.
//!
//! - [`slot`]: CRC16 key slots (hash tags: every flashcart key is in one partition's slot).
//! - [`topology`]: the slot → master map from `CLUSTER NODES` (one bulk string, which
//!   survives `execute`'s flattening).
//! - [`redirect`]: `MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN` read from an error's message,
//!   the only thing `spin:redis` passes on.
//! - [`target`]: which node a command runs on (a slot, every master, any node).
//! - [`seeds`]: the `redis_address` seed list.
//! - [`durability`]: the `durability` variable: `local`, or `replicated` (`WAIT` for a
//!   replica after every write, on the connection that wrote).
//! - [`Router`]: the core's `RedisExecutor` that puts these together, with a connection per
//!   node cached in the instance and the map cached in the instance and the node's
//!   key-value store.
#![deny(missing_docs)]

pub mod durability;
pub mod redirect;
mod router;
pub mod seeds;
pub mod slot;
pub mod target;
pub mod topology;

pub use durability::{Durability, DurabilityError};
pub use router::{Connector, MapCache, OpenError, Router};
pub use seeds::{SeedError, Seeds};
