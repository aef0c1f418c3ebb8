//! The inventory operations, over any [`RedisExecutor`]: the same code runs in an edge
//! component (spin-sdk's redis) and natively (the `redis` crate).
//!
//! Each operation is one `FCALL` into one partition (a call of [`crate::functions`]), except
//! a reserve whose buyer's home partition is short of stock: it then visits the SKU's other
//! partitions in a fixed order ([`KeySchema::fallback_order`]) and closes in the home
//! partition (see `fc_reserve` in the library for why that never takes stock twice). A caller
//! that knows which partitions are empty says so ([`StockHint`]): the reserve skips them, and
//! answers from the home partition alone when they are all of them.
//!
//! One module per concept, their types re-exported here:
//! - `reserve`: the deduct ([`Inventory::reserve`]) and a reservation's release;
//! - `orders`: orders, their cancel and refunds, and the claims that bind an order's key;
//! - `payments`: a payment provider's events;
//! - `stock`: loading a SKU, its levels, and the timers' due lists;
//! - `backlog`: a partition's settlement backlog (stream length, lag, dead letters).

mod backlog;
mod orders;
mod payments;
mod reserve;
mod stock;

pub use backlog::PartitionBacklog;
pub use orders::{CancelOutcome, CancelReason, Order, OrderRequest};
pub use payments::{PaymentNotice, PaymentOutcome};
pub use reserve::{
    HomeStep, ReleaseOutcome, ReleaseReason, Reservation, ReserveRequest, Reserved, Search,
    StockHint,
};
pub use stock::{LoadOutcome, SegmentLevel, SkuTerms, StockLevels};

use crate::exec::{ExecError, RedisExecutor};
use crate::functions::{self, Function, Version};
use crate::keys::{KeySchema, Partition};
use crate::problem::Rejection;

/// Every operation answers a value or a [`Rejection`] (which maps to an HTTP status).
pub type Result<T, E = Rejection> = std::result::Result<T, E>;

/// The clock a decision uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Now {
    /// Redis's own clock: one clock for every edge node (production).
    Server,
    /// A given time in unix ms (tests, replays).
    At(u64),
}

impl Now {
    /// The `now` argument the library's functions take (`0`: Redis's own clock).
    pub(crate) fn arg(self) -> String {
        match self {
            Now::Server => "0".into(),
            Now::At(ms) => ms.to_string(),
        }
    }
}

/// Retention, lease and rate settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// How long idempotency records (and fallback skip markers) live: 24 h by default.
    pub idempotency_ttl_ms: u64,
    /// How long a reserve that is looking in other partitions owns its key: a retry meanwhile
    /// is told the key is in flight (409), after it resumes the search. With 0 a retry resumes
    /// at once, so a search that found units needs no closing call at home (the reservation
    /// it found is what a resume finds): the edge's setting (see [`Settings::edge`]).
    pub fallback_lease_ms: u64,
    /// How long payment provider event ids are remembered.
    pub psp_event_ttl_ms: u64,
    /// How long released reservation records are kept.
    pub released_keep_ms: u64,
    /// The buyer's token bucket every reserve draws one token from (in the same call, in the
    /// buyer's home partition); `None` turns it off. Off by default: the edge sets it.
    pub buyer_rate: Option<RateLimit>,
}

impl Settings {
    /// What an edge node runs with: the buyers' token bucket, and searches that end where
    /// they find units, so a deduct whose home partition is short costs two calls when the
    /// caller's [`StockHint`] leads it straight to a partition with units.
    pub fn edge(buyer_rate: Option<RateLimit>) -> Self {
        Self {
            fallback_lease_ms: 0,
            buyer_rate,
            ..Self::default()
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            idempotency_ttl_ms: 24 * 3_600_000,
            fallback_lease_ms: 5_000,
            psp_event_ttl_ms: 30 * 24 * 3_600_000,
            released_keep_ms: 7 * 24 * 3_600_000,
            buyer_rate: None,
        }
    }
}

/// A token bucket's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Burst size.
    pub capacity: u64,
    /// Tokens added per second (at most 1 000: the bucket keeps time in ms).
    pub refill_per_second: u64,
}

impl RateLimit {
    /// The µs a token takes to come back.
    pub(crate) fn step_us(self) -> u64 {
        (1_000_000 / self.refill_per_second.max(1)).max(1_000)
    }
}

impl From<ExecError> for Rejection {
    /// A failed Redis call as the answer says it: a deployment error names its cause, any
    /// other failure keeps its cause for the log only.
    fn from(e: ExecError) -> Self {
        match e.kind {
            crate::exec::FailureKind::Unreachable => Rejection::Unreachable(e.message),
            crate::exec::FailureKind::NotReplicated => Rejection::NotReplicated(e.message),
            crate::exec::FailureKind::Connection
            | crate::exec::FailureKind::Timeout
            | crate::exec::FailureKind::Server => Rejection::Unavailable(e.to_string()),
        }
    }
}

/// The inventory, reached through `E`.
#[derive(Debug, Clone)]
pub struct Inventory<E> {
    exec: E,
    schema: KeySchema,
    settings: Settings,
}

impl<E: RedisExecutor> Inventory<E> {
    /// An inventory over `exec`.
    pub fn new(exec: E, schema: KeySchema, settings: Settings) -> Self {
        Self {
            exec,
            schema,
            settings,
        }
    }

    /// The key schema in use.
    pub fn schema(&self) -> &KeySchema {
        &self.schema
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The executor.
    pub fn executor(&self) -> &E {
        &self.exec
    }

    /// Calls a library function (one round trip) and decodes its reply.
    pub(crate) async fn call<F, const KEYS: usize, const ARGS: usize>(
        &self,
        call: &F,
    ) -> Result<F::Output>
    where
        F: Function<KEYS, ARGS>,
    {
        let (command, line) = functions::command(call, &self.schema);
        let values = self.exec.execute(command, line).await?;
        functions::decode(call, values)
    }

    /// The version of the library loaded in the Redis `exec` reaches, if any.
    ///
    /// # Errors
    /// When Redis cannot be reached; a missing library is `Ok(None)`.
    pub async fn loaded_version(&self) -> Result<Option<String>, ExecError> {
        let (command, line) = functions::command(&Version, &self.schema);
        match self.exec.execute(command, line).await {
            Ok(values) => Ok(functions::decode(&Version, values).ok()),
            Err(e) if e.kind == crate::exec::FailureKind::Server => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Loads the library unless the current version is already there. On a cluster, the
    /// native client runs this on every master.
    ///
    /// # Errors
    /// When Redis cannot be reached or refuses the library.
    pub async fn ensure_library(&self) -> Result<bool, ExecError> {
        if self.loaded_version().await?.as_deref() == Some(crate::library::version()) {
            return Ok(false);
        }
        self.exec
            .execute(
                "FUNCTION",
                vec![
                    "LOAD".into(),
                    "REPLACE".into(),
                    crate::library::source().into(),
                ],
            )
            .await?;
        Ok(true)
    }

    /// `p` when this deployment has it. An id naming another partition is well formed (the
    /// OpenAPI document cannot know the partition count) but names a record that cannot
    /// exist here: `unknown` (404), as for any other id nobody created.
    fn check_partition(&self, p: Partition, unknown: Rejection) -> Result<Partition> {
        if self.schema.contains(p) {
            Ok(p)
        } else {
            Err(unknown)
        }
    }
}
