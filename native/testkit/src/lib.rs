//! flashcart-testkit: private servers for tests, each on free ports in its own temp dir and
//! torn down on drop. Tests never use a server they did not start.
//!
//! - [`RedisServer`]: one `redis-server` with AOF on; it can be killed (SIGKILL), its AOF cut
//!   back to an earlier size (a simulated power cut) and restarted on the same port and dir.
//! - [`RedisCluster`]: `redis-server --cluster-enabled yes` masters joined with
//!   `redis-cli --cluster create`, optionally a replica for each (`CLUSTER REPLICATE`); a
//!   node can be killed (SIGKILL), its replica's promotion waited for, and the node restarted
//!   (it rejoins as a replica).
//! - [`snapshot`]: every key of a server, `DUMP`ed, to assert that a call changed nothing.

pub mod postgres;
mod redis_server;

pub use redis_server::{RedisCluster, RedisServer, Snapshot, snapshot, target_dir};
