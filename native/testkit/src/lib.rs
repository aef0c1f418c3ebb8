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

/// How much longer and larger the fault scenarios run: `FLASHCART_FAULT_SCALE` (a whole number
/// ≥ 1; 1, the CI size, when unset). `scripts/faults.sh` runs the fault suite at 10 locally.
///
/// # Panics
/// When the variable is set to anything but a whole number ≥ 1: a long run that silently ran
/// short would prove less than it claims.
#[must_use]
pub fn fault_scale() -> u32 {
    match std::env::var("FLASHCART_FAULT_SCALE") {
        Err(_) => 1,
        Ok(v) => match v.trim().parse::<u32>() {
            Ok(n) if n >= 1 => n,
            _ => panic!("FLASHCART_FAULT_SCALE must be a whole number ≥ 1, not {v:?}"),
        },
    }
}

/// Generated cases for a fuzz test: `FLASHCART_FUZZ_CASES` when set, else `base` times
/// [`fault_scale`].
///
/// # Panics
/// When `FLASHCART_FUZZ_CASES` is set but not a whole number.
#[must_use]
pub fn fuzz_cases(base: u32) -> u32 {
    match std::env::var("FLASHCART_FUZZ_CASES") {
        Err(_) => base * fault_scale(),
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("FLASHCART_FUZZ_CASES must be a whole number, not {v:?}")),
    }
}
