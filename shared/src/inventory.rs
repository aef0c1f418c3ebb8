//! The inventory operations, over any [`RedisExecutor`]: the same code runs in an edge
//! component (spin-sdk's redis) and natively (the `redis` crate).
//!
//! Each operation is one `FCALL` into one partition, except a reserve whose buyer's home
//! partition is short of stock: it then visits the SKU's other partitions in a fixed order
//! ([`KeySchema::fallback_order`]) and closes in the home partition (see `fc_reserve` in the
//! library for why that never takes stock twice). A caller that knows which partitions are
//! empty says so ([`StockHint`]): the reserve skips them, and answers from the home partition
//! alone when they are all of them.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::exec::{ExecError, RedisExecutor};
use crate::functions::orders::{
    IdemClaim, IdemRelease, OrderCancel, OrderCreate, OrderGet, Refund,
};
use crate::functions::payments::Payment;
use crate::functions::reserve::{
    Release, Reserve, ReserveAt, ReserveFinish, Sighting, home_record,
};
use crate::functions::stock::{Due, Load, Stock};
use crate::functions::{self, Function, Version};
use crate::ids::{
    BuyerId, Currency, HoldToken, IdempotencyKey, OrderId, PspEventId, Quantity, ReservationId,
    SkuId,
};
use crate::keys::{KeySchema, Partition};
use crate::order::{OrderEvent, OrderState};
use crate::problem::Rejection;
use crate::sku::SkuSpec;

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

/// A deduct: reserve `quantity` of `sku` for `buyer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveRequest {
    /// The SKU.
    pub sku: SkuId,
    /// The buyer.
    pub buyer: BuyerId,
    /// Units.
    pub quantity: Quantity,
    /// The request's idempotency key.
    pub key: IdempotencyKey,
    /// A digest of the request body (see [`crate::fingerprint`]).
    pub fingerprint: String,
}

/// A reservation that holds stock until it expires or becomes an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reservation {
    /// Its id.
    pub id: ReservationId,
    /// The segment the units came from.
    pub segment: u16,
    /// When it expires, unix ms.
    pub expires_at: u64,
    /// Whether this answer replays an earlier decision.
    pub replayed: bool,
}

/// Turn a reservation into an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRequest {
    /// The reservation.
    pub reservation: ReservationId,
    /// The buyer who holds it.
    pub buyer: BuyerId,
    /// The request's idempotency key.
    pub key: IdempotencyKey,
    /// A digest of the request body.
    pub fingerprint: String,
}

/// An order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Order {
    /// Its id.
    pub id: OrderId,
    /// The state.
    pub state: OrderState,
    /// The SKU.
    pub sku: String,
    /// Units.
    pub quantity: u64,
    /// Amount due, minor units.
    pub amount: u64,
    /// Currency.
    pub currency: String,
    /// Payment deadline, unix ms.
    pub payment_deadline: u64,
    /// The reservation it was made from.
    pub reservation: String,
    /// The buyer.
    pub buyer: String,
    /// Whether this answer replays an earlier decision.
    #[serde(skip)]
    pub replayed: bool,
}

/// A payment provider's report that an order was paid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentNotice {
    /// The order.
    pub order: OrderId,
    /// The provider's event id (replays of it are no-ops).
    pub event_id: PspEventId,
    /// Amount paid, minor units.
    pub amount: u64,
    /// Currency paid.
    pub currency: Currency,
}

impl PaymentNotice {
    /// What makes two notices with one event id the same payment.
    pub fn fingerprint(&self) -> String {
        let target = format!("{}\t{}\t{}", self.order, self.amount, self.currency);
        crate::fingerprint(&target, b"")
    }
}

/// What a payment did. Every outcome is recorded, so a replayed event answers the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentOutcome {
    /// The order is paid.
    Paid,
    /// The order had been cancelled: a refund will be requested.
    PaidAfterCancel,
    /// Amount or currency differ from the order's: rejected, recorded.
    AmountMismatch,
    /// The order was already paid (or beyond): rejected, recorded.
    DuplicatePayment,
}

/// Why a reservation is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseReason {
    /// Its time ran out (refused before then).
    Expired,
    /// The buyer let it go.
    Cancelled,
}

/// What a release did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// The units went back to their segment.
    Released {
        /// Units returned.
        quantity: u64,
    },
    /// Not expired yet.
    NotDue {
        /// When it expires.
        expires_at: u64,
    },
    /// Already ordered, released or expired: nothing to do.
    NotActive {
        /// Its state.
        state: String,
    },
}

/// Why an order is cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The payment deadline passed (refused before then).
    Deadline,
    /// The buyer cancelled.
    Buyer,
}

/// What a cancel did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Cancelled; the units went back to their segment.
    Cancelled,
    /// The deadline has not passed.
    NotDue {
        /// The deadline.
        deadline: u64,
    },
}

/// Whether a load wrote anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadOutcome {
    /// The SKU is now on the shelf.
    Loaded,
    /// The same terms were already loaded; nothing changed.
    Unchanged,
}

/// A SKU's terms, as loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkuTerms {
    /// Total units loaded.
    pub stock: u64,
    /// Segment count.
    pub segments: u16,
    /// Price of one unit, minor units.
    pub price: u64,
    /// Currency.
    pub currency: String,
    /// Sale opens, unix ms.
    pub sale_start: u64,
    /// Sale closes, unix ms.
    pub sale_end: u64,
    /// Units per buyer, 0 for none.
    pub per_buyer_limit: u64,
    /// Reservation lifetime, ms.
    pub reservation_ttl_ms: u64,
    /// Payment window, ms.
    pub payment_window_ms: u64,
}

/// One segment's levels: `initial = available + reserved + ordered + sold`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SegmentLevel {
    /// Segment number.
    pub segment: u16,
    /// The partition holding it.
    pub partition: u16,
    /// Units loaded.
    pub initial: u64,
    /// Units free to reserve.
    pub available: u64,
    /// Units held by live reservations.
    pub reserved: u64,
    /// Units in orders awaiting payment.
    pub ordered: u64,
    /// Units paid for.
    pub sold: u64,
}

impl SegmentLevel {
    /// Whether the segment's books balance.
    pub fn balances(&self) -> bool {
        self.initial == self.available + self.reserved + self.ordered + self.sold
    }
}

/// A SKU's terms and every segment's levels (each partition read atomically; the partitions
/// one after another).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StockLevels {
    /// The terms.
    pub terms: SkuTerms,
    /// The segments, in segment order.
    pub segments: Vec<SegmentLevel>,
}

impl StockLevels {
    fn sum(&self, f: impl Fn(&SegmentLevel) -> u64) -> u64 {
        self.segments.iter().map(f).sum()
    }
    /// Units free to reserve.
    pub fn available(&self) -> u64 {
        self.sum(|s| s.available)
    }
    /// Units held by live reservations.
    pub fn reserved(&self) -> u64 {
        self.sum(|s| s.reserved)
    }
    /// Units in unpaid orders.
    pub fn ordered(&self) -> u64 {
        self.sum(|s| s.ordered)
    }
    /// Units sold.
    pub fn sold(&self) -> u64 {
        self.sum(|s| s.sold)
    }
    /// `initial = available + reserved + ordered + sold`, for every segment and in total.
    pub fn invariant_holds(&self) -> bool {
        self.segments.iter().all(SegmentLevel::balances)
            && self.terms.stock == self.available() + self.reserved() + self.ordered() + self.sold()
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

/// What the first step of a reserve decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HomeStep {
    /// Done: reserved at home, or a replay of an earlier decision.
    Decided(Reservation),
    /// The home partition is short: look in the SKU's other partitions (the buyer's limit is
    /// held meanwhile). Also the answer to a retry of a reserve that stopped midway.
    LookElsewhere {
        /// The SKU's segment count, to list its partitions.
        segments: u16,
        /// Partitions not to visit: the ones the caller believed empty (kept with the request,
        /// so a resumed search skips the same ones).
        skip: Vec<Partition>,
    },
}

/// What a caller believes about a SKU's partitions before a reserve: those it saw empty
/// lately. The reserve does not visit them, and when they are every partition of the SKU
/// but the buyer's home, the home partition decides alone. A wrong belief costs stock that is
/// not offered (until the caller learns better), never stock taken twice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StockHint {
    /// The SKU's segment count, when known (needed to tell "every partition").
    pub segments: Option<u16>,
    /// Partitions believed to have no units left.
    pub empty: BTreeSet<Partition>,
}

/// A reserve's outcome, and what it saw of the SKU on the way (for the caller's hints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    /// The outcome.
    pub result: Result<Reservation>,
    /// The SKU's segment count, when a reply told it.
    pub segments: Option<u16>,
    /// Units left in each partition a reply reported on, after this reserve.
    pub seen: Vec<(Partition, u64)>,
}

/// What one partition of a fallback search answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Search {
    /// Reserved there (or reserved there before, for this token).
    Found(Reservation),
    /// Some units there, fewer than asked.
    Insufficient,
    /// None there.
    SoldOut,
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

    /// Loads (preheats) a SKU: its terms into every partition, its segments into theirs.
    /// Loading the same terms again changes nothing.
    ///
    /// The partitions are loaded one call each (on a cluster they live on several masters, so
    /// no one call can load them all). A load that stops midway — a master unreachable — has
    /// loaded some partitions and not the others; the same load sent again skips the loaded
    /// ones (`unchanged`) and loads the rest, so retrying converges, and the answer says so.
    ///
    /// # Errors
    /// [`Rejection::Invalid`] for bad terms, [`Rejection::SkuConflict`] when the SKU exists
    /// with other terms, [`Rejection::Unavailable`] when Redis failed (retry the same load).
    pub async fn load_sku(&self, spec: &SkuSpec, now: Now) -> Result<LoadOutcome> {
        spec.validate()?;
        let fingerprint = spec.fingerprint();
        let by_partition = spec.shares_by_partition(&self.schema);
        let mut outcome = LoadOutcome::Unchanged;
        for p in self.schema.partitions() {
            let shares = by_partition
                .get(&p)
                .map(|v| {
                    v.iter()
                        .map(|s| format!("{}:{}", s.segment, s.initial))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let load = Load {
                spec,
                partition: p,
                fingerprint: &fingerprint,
                shares: &shares,
                now,
            };
            match self.call(&load).await {
                Ok(LoadOutcome::Loaded) => outcome = LoadOutcome::Loaded,
                Ok(LoadOutcome::Unchanged) => {}
                // The answer (a deployment error's detail) or the log (any other failure)
                // says where the load stopped and how to finish it.
                Err(Rejection::Unavailable(why)) => {
                    return Err(Rejection::Unavailable(self.stopped_at(p, &why)));
                }
                Err(Rejection::Unreachable(why)) => {
                    return Err(Rejection::Unreachable(self.stopped_at(p, &why)));
                }
                Err(other) => return Err(other),
            }
        }
        Ok(outcome)
    }

    fn stopped_at(&self, p: Partition, why: &str) -> String {
        format!(
            "{why}; the load stopped at partition {p} of {}: send the same load again to finish it",
            self.schema.partition_count()
        )
    }

    /// Reserves stock: the deduct. Replays with the same key answer the first decision.
    ///
    /// # Errors
    /// The rejections of the deduct contract: sold out, insufficient, limit reached, rate
    /// limited, unknown SKU, not on sale, sale ended, idempotency mismatch or in flight,
    /// unavailable.
    pub async fn reserve(&self, req: &ReserveRequest, now: Now) -> Result<Reservation> {
        self.reserve_hinted(req, &StockHint::default(), now)
            .await
            .result
    }

    /// [`Self::reserve`] with the caller's belief about empty partitions, reporting what it
    /// saw. One call when the home partition has the units or (with a hint that every other
    /// partition is empty) decides alone; else one more per partition visited, and a last one
    /// at home unless the search found units with no lease (see
    /// [`Settings::fallback_lease_ms`]).
    pub async fn reserve_hinted(
        &self,
        req: &ReserveRequest,
        hint: &StockHint,
        now: Now,
    ) -> Reserved {
        let mut seen = Vec::new();
        let mut segments = hint.segments;
        let result = self
            .reserve_seeing(req, hint, now, &mut seen, &mut segments)
            .await;
        Reserved {
            result,
            segments,
            seen,
        }
    }

    async fn reserve_seeing(
        &self,
        req: &ReserveRequest,
        hint: &StockHint,
        now: Now,
        seen: &mut Vec<(Partition, u64)>,
        segments_seen: &mut Option<u16>,
    ) -> Result<Reservation> {
        let home = self.schema.home_of_buyer(&req.buyer);
        let skip = self.skip_arg(&req.sku, hint, home);
        let (step, at_home) = self.home_step(req, &skip, now).await;
        if let Some(left) = at_home.left {
            seen.push((home, left));
        }
        *segments_seen = at_home.segments.or(*segments_seen);
        let (segments, skip) = match step? {
            HomeStep::Decided(reservation) => return Ok(reservation),
            HomeStep::LookElsewhere { segments, skip } => (segments, skip),
        };
        let mut search = Search::SoldOut;
        for p in self.schema.fallback_order(&req.sku, segments, home) {
            if skip.contains(&p) {
                continue;
            }
            let (found, left) = self.search_in(req, p, now).await?;
            if let Some(left) = left {
                seen.push((p, left));
            }
            match found {
                found @ Search::Found(_) => {
                    search = found;
                    break;
                }
                Search::Insufficient => search = Search::Insufficient,
                Search::SoldOut => {}
            }
        }
        match search {
            // No lease: a retry resumes the search and finds this reservation itself.
            Search::Found(reservation) if self.settings.fallback_lease_ms == 0 => Ok(reservation),
            search => self.reserve_finish(req, &search).await,
        }
    }

    /// The `skip` argument of `fc_reserve`: the SKU's partitions (but home) believed empty,
    /// or `*` when that is all of them.
    fn skip_arg(&self, sku: &SkuId, hint: &StockHint, home: Partition) -> String {
        let Some(segments) = hint.segments else {
            return String::new();
        };
        let others = self.schema.fallback_order(sku, segments, home);
        let empty: Vec<String> = others
            .iter()
            .filter(|p| hint.empty.contains(p))
            .map(|p| p.index().to_string())
            .collect();
        if !others.is_empty() && empty.len() == others.len() {
            "*".into()
        } else {
            empty.join(",")
        }
    }

    /// Step 1 of a reserve, in the buyer's home partition: idempotency, sale window, rate,
    /// limit, and the local segments, in one call. Exposed so tests can stop a reserve midway.
    ///
    /// # Errors
    /// As [`Self::reserve`].
    pub async fn reserve_at_home(&self, req: &ReserveRequest, now: Now) -> Result<HomeStep> {
        self.home_step(req, "", now).await.0
    }

    async fn home_step(
        &self,
        req: &ReserveRequest,
        skip: &str,
        now: Now,
    ) -> (Result<HomeStep>, Sighting) {
        let record = home_record(req, self.schema.home_of_buyer(&req.buyer));
        let call = Reserve {
            req,
            record: &record,
            skip,
            now,
            settings: &self.settings,
        };
        match self.call(&call).await {
            Ok(decided) => decided,
            Err(e) => (Err(e), Sighting::default()),
        }
    }

    /// Step 2 of a reserve whose home was short: try partition `p`. The outcome for this
    /// request's token in `p` is final, so repeating the step answers the same.
    ///
    /// # Errors
    /// Unavailable.
    pub async fn reserve_in(&self, req: &ReserveRequest, p: Partition, now: Now) -> Result<Search> {
        Ok(self.search_in(req, p, now).await?.0)
    }

    async fn search_in(
        &self,
        req: &ReserveRequest,
        p: Partition,
        now: Now,
    ) -> Result<(Search, Option<u64>)> {
        let token = HoldToken::derive(&req.buyer, &req.key);
        let record = ReservationId::new(p, token, req.sku.clone());
        self.call(&ReserveAt {
            req,
            record: &record,
            now,
            idempotency_ttl_ms: self.settings.idempotency_ttl_ms,
        })
        .await
    }

    /// Step 3: record the search's outcome in the buyer's home partition (a failed search
    /// gives the held limit back). The first finish decides; later ones replay it.
    ///
    /// # Errors
    /// As [`Self::reserve`].
    pub async fn reserve_finish(
        &self,
        req: &ReserveRequest,
        search: &Search,
    ) -> Result<Reservation> {
        let record = home_record(req, self.schema.home_of_buyer(&req.buyer));
        self.call(&ReserveFinish {
            req,
            record: &record,
            search,
            idempotency_ttl_ms: self.settings.idempotency_ttl_ms,
        })
        .await
    }

    /// Gives a reservation's units back.
    ///
    /// # Errors
    /// [`Rejection::UnknownReservation`], or unavailable.
    pub async fn release(
        &self,
        id: &ReservationId,
        reason: ReleaseReason,
        now: Now,
    ) -> Result<ReleaseOutcome> {
        self.check_partition(id.partition())?;
        self.call(&Release {
            id,
            reason,
            now,
            keep_ms: self.settings.released_keep_ms,
        })
        .await
    }

    /// Turns an active reservation into an order awaiting payment. Replays with the same key
    /// answer the same order.
    ///
    /// # Errors
    /// Unknown reservation (or not the buyer's), reservation gone (expired or released),
    /// already ordered, idempotency mismatch, unavailable.
    pub async fn create_order(&self, req: &OrderRequest, now: Now) -> Result<Order> {
        let p = self.check_partition(req.reservation.partition())?;
        // The key is bound in the buyer's home partition; when the reservation lives there
        // too, the order's own record is that binding (one call).
        let home = self.schema.home_of_buyer(&req.buyer);
        let claim = (home != p).then(|| (home, self.schema.order_claim(&req.buyer, &req.key)));
        if let Some((home, claim)) = &claim {
            self.claim_key(
                *home,
                claim,
                &req.fingerprint,
                self.settings.idempotency_ttl_ms,
            )
            .await?;
        }
        let order = req.reservation.order_id();
        let created = self
            .call(&OrderCreate {
                req,
                order: &order,
                now,
                idempotency_ttl_ms: self.settings.idempotency_ttl_ms,
            })
            .await;
        if let (Some((home, claim)), Err(e)) = (&claim, &created)
            && e.decided_nothing()
        {
            self.release_key(*home, claim, &req.fingerprint).await?;
        }
        created
    }

    /// Binds an idempotency key to the request that first used it ([`KeySchema::order_claim`],
    /// [`KeySchema::psp_claim`]): a replay passes, another request with the key is refused.
    async fn claim_key(
        &self,
        partition: Partition,
        key: &str,
        fingerprint: &str,
        ttl_ms: u64,
    ) -> Result<()> {
        self.call(&IdemClaim {
            partition,
            key,
            fingerprint,
            ttl_ms,
        })
        .await
    }

    /// Gives back a claim whose request was refused before anything was decided.
    async fn release_key(&self, partition: Partition, key: &str, fingerprint: &str) -> Result<()> {
        self.call(&IdemRelease {
            partition,
            key,
            fingerprint,
        })
        .await
    }

    /// An order's current record.
    ///
    /// # Errors
    /// [`Rejection::UnknownOrder`], or unavailable.
    pub async fn order(&self, id: &OrderId) -> Result<Order> {
        self.check_partition(id.partition())?;
        self.call(&OrderGet { id }).await
    }

    /// Applies a payment provider's event. Every outcome but an unknown order is recorded
    /// under the event id, so a replay answers the same and changes nothing.
    ///
    /// # Errors
    /// [`Rejection::UnknownOrder`], or unavailable.
    pub async fn apply_payment(
        &self,
        notice: &PaymentNotice,
        now: Now,
    ) -> Result<(PaymentOutcome, bool)> {
        self.check_partition(notice.order.partition())?;
        // The event id is bound to this payment in its own partition first: the same id for
        // another order (in any partition) is refused, a replay passes.
        let at = self.schema.home_of_psp_event(&notice.event_id);
        let claim = self.schema.psp_claim(&notice.event_id);
        let fingerprint = notice.fingerprint();
        self.claim_key(at, &claim, &fingerprint, self.settings.psp_event_ttl_ms)
            .await?;
        let applied = self
            .call(&Payment {
                notice,
                now,
                psp_event_ttl_ms: self.settings.psp_event_ttl_ms,
            })
            .await;
        if let Err(e) = &applied
            && e.decided_nothing()
        {
            self.release_key(at, &claim, &fingerprint).await?;
        }
        applied
    }

    /// Cancels an unpaid order and gives its units back.
    ///
    /// # Errors
    /// [`Rejection::UnknownOrder`], [`Rejection::IllegalTransition`] when it is not awaiting
    /// payment, or unavailable.
    pub async fn cancel_order(
        &self,
        id: &OrderId,
        reason: CancelReason,
        now: Now,
    ) -> Result<CancelOutcome> {
        self.check_partition(id.partition())?;
        self.call(&OrderCancel { id, reason, now }).await
    }

    /// Requests a refund of a paid (or paid-after-cancel) order.
    ///
    /// # Errors
    /// Unknown order, illegal transition, unavailable.
    pub async fn request_refund(&self, id: &OrderId, now: Now) -> Result<OrderState> {
        self.refund_step(id, OrderEvent::RefundRequest, now).await
    }

    /// Records that a refund completed.
    ///
    /// # Errors
    /// Unknown order, illegal transition, unavailable.
    pub async fn complete_refund(&self, id: &OrderId, now: Now) -> Result<OrderState> {
        self.refund_step(id, OrderEvent::RefundComplete, now).await
    }

    async fn refund_step(&self, id: &OrderId, event: OrderEvent, now: Now) -> Result<OrderState> {
        self.check_partition(id.partition())?;
        self.call(&Refund { id, event, now }).await
    }

    /// A SKU's terms and every segment's levels.
    ///
    /// # Errors
    /// [`Rejection::UnknownSku`], or unavailable.
    pub async fn stock(&self, sku: &SkuId) -> Result<StockLevels> {
        let home = self.schema.home_of_sku(sku);
        let Some((terms, mut segments)) = self
            .call(&Stock {
                sku,
                partition: home,
            })
            .await?
        else {
            return Err(Rejection::UnknownSku);
        };
        for p in self
            .schema
            .sku_partitions(sku, terms.segments)
            .into_iter()
            .skip(1)
        {
            // Every partition of a loaded SKU holds its terms.
            let Some((_, levels)) = self.call(&Stock { sku, partition: p }).await? else {
                return Err(functions::unexpected_code("unknown_sku"));
            };
            segments.extend(levels);
        }
        segments.sort_by_key(|s| s.segment);
        Ok(StockLevels { terms, segments })
    }

    /// Units free to reserve in one partition of the SKU (one read-only call): how a node
    /// checks, cheaply, that a partition it saw empty still is.
    ///
    /// # Errors
    /// [`Rejection::UnknownSku`], or unavailable.
    pub async fn available_in(&self, sku: &SkuId, p: Partition) -> Result<u64> {
        match self.call(&Stock { sku, partition: p }).await? {
            Some((_, levels)) => Ok(levels.iter().map(|s| s.available).sum()),
            None => Err(Rejection::UnknownSku),
        }
    }

    /// Reservations in `partition` whose expiry has passed, oldest first.
    ///
    /// # Errors
    /// Unavailable.
    pub async fn due_reservations(
        &self,
        partition: Partition,
        now: Now,
        limit: usize,
    ) -> Result<Vec<ReservationId>> {
        self.call(&Due {
            timers: KeySchema::expiries,
            partition,
            now,
            limit,
            parse: ReservationId::parse,
        })
        .await
    }

    /// Orders in `partition` whose payment deadline has passed, oldest first.
    ///
    /// # Errors
    /// Unavailable.
    pub async fn due_orders(
        &self,
        partition: Partition,
        now: Now,
        limit: usize,
    ) -> Result<Vec<OrderId>> {
        self.call(&Due {
            timers: KeySchema::deadlines,
            partition,
            now,
            limit,
            parse: OrderId::parse,
        })
        .await
    }

    fn check_partition(&self, p: Partition) -> Result<Partition> {
        if self.schema.contains(p) {
            Ok(p)
        } else {
            Err(Rejection::Invalid(crate::ids::ValidationError::new(
                "id",
                format!("names partition {p}, which does not exist here"),
            )))
        }
    }
}
