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

use crate::exec::{ExecError, RedisExecutor, Value};
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
    fn arg(self) -> String {
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
    fn step_us(self) -> u64 {
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

/// A function's flat reply: `code`, `replayed`, then fields.
pub(crate) struct Reply {
    pub(crate) code: String,
    pub(crate) replayed: bool,
    fields: Vec<Value>,
}

impl Reply {
    fn parse(values: Vec<Value>) -> Result<Self> {
        let mut it = values.into_iter();
        let code = it
            .next()
            .and_then(|v| v.text())
            .ok_or_else(|| bad_reply("no code"))?;
        let replayed = it.next().and_then(|v| v.int()).unwrap_or(0) == 1;
        Ok(Self {
            code,
            replayed,
            fields: it.collect(),
        })
    }

    pub(crate) fn text(&self, i: usize) -> Result<String> {
        self.fields
            .get(i)
            .and_then(Value::text)
            .ok_or_else(|| bad_reply(&format!("{}: field {i}", self.code)))
    }

    pub(crate) fn uint(&self, i: usize) -> Result<u64> {
        self.fields
            .get(i)
            .and_then(Value::int)
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| bad_reply(&format!("{}: field {i}", self.code)))
    }

    /// Field `i` when the reply has it (optional trailing fields).
    fn optional_uint(&self, i: usize) -> Option<u64> {
        self.fields
            .get(i)
            .and_then(Value::int)
            .and_then(|n| u64::try_from(n).ok())
    }

    fn optional_text(&self, i: usize) -> Option<String> {
        self.fields.get(i).and_then(Value::text)
    }

    pub(crate) fn unexpected(&self) -> Rejection {
        bad_reply(&format!("unexpected code {}", self.code))
    }
}

fn bad_reply(what: &str) -> Rejection {
    Rejection::Unavailable(format!(
        "unexpected reply from the function library: {what}"
    ))
}

fn unavailable(e: ExecError) -> Rejection {
    Rejection::from(e)
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

    pub(crate) async fn fcall(
        &self,
        function: &str,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Reply> {
        let command = if matches!(
            function,
            "fc_stock" | "fc_order_get" | "fc_due" | "fc_fence_state"
        ) {
            "FCALL_RO"
        } else {
            "FCALL"
        };
        let mut all = Vec::with_capacity(2 + keys.len() + args.len());
        all.push(function.to_owned());
        all.push(keys.len().to_string());
        all.extend(keys);
        all.extend(args);
        let reply = Reply::parse(self.exec.execute(command, all).await.map_err(unavailable)?)?;
        // Every function that writes answers `fenced` (having written nothing) while its
        // partition waits for settlement's check after a restart.
        if reply.code == "fenced" {
            return Err(Rejection::Fenced);
        }
        Ok(reply)
    }

    /// The version of the library loaded in the Redis `exec` reaches, if any.
    ///
    /// # Errors
    /// When Redis cannot be reached; a missing library is `Ok(None)`.
    pub async fn loaded_version(&self) -> Result<Option<String>, ExecError> {
        match self
            .exec
            .execute("FCALL_RO", vec!["fc_version".into(), "0".into()])
            .await
        {
            Ok(values) => Ok(values.first().and_then(Value::text)),
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
        let fp = spec.fingerprint();
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
            let reply = match self
                .fcall(
                    "fc_load",
                    vec![
                        self.schema.sku(p, &spec.sku),
                        self.schema.events(p),
                        self.schema.guard(p),
                    ],
                    vec![
                        spec.sku.to_string(),
                        fp.clone(),
                        spec.stock.to_string(),
                        spec.segment_count(&self.schema).to_string(),
                        spec.price.to_string(),
                        spec.currency.to_string(),
                        spec.sale_start.to_string(),
                        spec.sale_end.to_string(),
                        spec.per_buyer_limit.to_string(),
                        spec.reservation_ttl_ms.to_string(),
                        spec.payment_window_ms.to_string(),
                        self.schema.partition_count().to_string(),
                        shares,
                        now.arg(),
                    ],
                )
                .await
            {
                Ok(reply) => reply,
                // The answer (a deployment error's detail) or the log (any other failure)
                // says where the load stopped and how to finish it.
                Err(Rejection::Unavailable(why)) => {
                    return Err(Rejection::Unavailable(self.stopped_at(p, &why)));
                }
                Err(Rejection::Unreachable(why)) => {
                    return Err(Rejection::Unreachable(self.stopped_at(p, &why)));
                }
                Err(other) => return Err(other),
            };
            match reply.code.as_str() {
                "loaded" => outcome = LoadOutcome::Loaded,
                "unchanged" => {}
                "conflict" => return Err(Rejection::SkuConflict),
                _ => return Err(reply.unexpected()),
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
        let home = self.schema.home_of_buyer(&req.buyer);
        let rid = home_record(req, home);
        let (capacity, step_us) = self
            .settings
            .buyer_rate
            .map_or((0, 0), |r| (r.capacity, r.step_us()));
        let reply = self
            .fcall(
                "fc_reserve",
                vec![
                    self.schema.sku(home, &req.sku),
                    self.schema.purchase_count(&req.sku, &req.buyer),
                    self.schema.reservation(&rid),
                    self.schema.events(home),
                    self.schema.expiries(home),
                    self.schema.buyer_bucket(&req.buyer),
                    self.schema.guard(home),
                ],
                vec![
                    req.sku.to_string(),
                    req.buyer.to_string(),
                    req.fingerprint.clone(),
                    req.quantity.get().to_string(),
                    now.arg(),
                    rid.to_string(),
                    self.settings.idempotency_ttl_ms.to_string(),
                    self.settings.fallback_lease_ms.to_string(),
                    affinity_of(&req.buyer).to_string(),
                    capacity.to_string(),
                    step_us.to_string(),
                    skip.to_owned(),
                    self.schema.first_segment_in(&req.sku, home).to_string(),
                ],
            )
            .await;
        match reply {
            Ok(reply) => (home_outcome(&reply, skip), Sighting::of_home(&reply)),
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
        let rid = ReservationId::new(p, token.clone(), req.sku.clone());
        let reply = self
            .fcall(
                "fc_reserve_at",
                vec![
                    self.schema.sku(p, &req.sku),
                    self.schema.reservation(&rid),
                    self.schema.skip(p, &token),
                    self.schema.events(p),
                    self.schema.expiries(p),
                    self.schema.guard(p),
                ],
                vec![
                    req.sku.to_string(),
                    req.buyer.to_string(),
                    req.quantity.get().to_string(),
                    now.arg(),
                    rid.to_string(),
                    self.settings.idempotency_ttl_ms.to_string(),
                    affinity_of(&req.buyer).to_string(),
                    self.schema.first_segment_in(&req.sku, p).to_string(),
                ],
            )
            .await?;
        match reply.code.as_str() {
            "ok" => Ok((
                Search::Found(reservation_from(&reply)?),
                reply.optional_uint(3),
            )),
            "insufficient" => Ok((Search::Insufficient, reply.optional_uint(0))),
            "sold_out" => Ok((Search::SoldOut, reply.optional_uint(0))),
            // A partition not loaded yet (a load under way) has nothing to give.
            "unknown_sku" => Ok((Search::SoldOut, None)),
            _ => Err(reply.unexpected()),
        }
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
        let home = self.schema.home_of_buyer(&req.buyer);
        let record = home_record(req, home);
        let mut args = match search {
            Search::Found(r) => vec![
                "ok".into(),
                r.id.to_string(),
                r.segment.to_string(),
                r.expires_at.to_string(),
            ],
            Search::Insufficient => vec![
                "insufficient".into(),
                String::new(),
                String::new(),
                String::new(),
            ],
            Search::SoldOut => vec![
                "sold_out".into(),
                String::new(),
                String::new(),
                String::new(),
            ],
        };
        args.push(self.settings.idempotency_ttl_ms.to_string());
        let reply = self
            .fcall(
                "fc_reserve_finish",
                vec![
                    self.schema.reservation(&record),
                    self.schema.purchase_count(&req.sku, &req.buyer),
                    self.schema.guard(home),
                ],
                args,
            )
            .await?;
        reservation_from(&reply)
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
        let p = self.check_partition(id.partition())?;
        // The name the event records, from the stream's one contract.
        let reason = crate::event::release_reason_name(reason);
        let reply = self
            .fcall(
                "fc_release",
                vec![
                    self.schema.sku(p, id.sku()),
                    self.schema.reservation(id),
                    self.schema.events(p),
                    self.schema.expiries(p),
                    self.schema.guard(p),
                ],
                vec![
                    id.to_string(),
                    reason.into(),
                    now.arg(),
                    self.settings.released_keep_ms.to_string(),
                ],
            )
            .await?;
        match reply.code.as_str() {
            "released" => Ok(ReleaseOutcome::Released {
                quantity: reply.uint(0)?,
            }),
            "not_due" => Ok(ReleaseOutcome::NotDue {
                expires_at: reply.uint(0)?,
            }),
            "not_active" => Ok(ReleaseOutcome::NotActive {
                state: reply.text(0)?,
            }),
            "unknown_reservation" => Err(Rejection::UnknownReservation),
            _ => Err(reply.unexpected()),
        }
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
        let created = self.create_order_in(p, req, now).await;
        if let (Some((home, claim)), Err(e)) = (&claim, &created)
            && e.decided_nothing()
        {
            self.release_key(*home, claim, &req.fingerprint).await?;
        }
        created
    }

    async fn create_order_in(&self, p: Partition, req: &OrderRequest, now: Now) -> Result<Order> {
        let id = &req.reservation;
        let oid = id.order_id();
        let reply = self
            .fcall(
                "fc_order_create",
                vec![
                    self.schema.sku(p, id.sku()),
                    self.schema.reservation(id),
                    self.schema.order(&oid),
                    self.schema.idempotency(p, "ord", &req.buyer, &req.key),
                    self.schema.events(p),
                    self.schema.expiries(p),
                    self.schema.deadlines(p),
                    self.schema.guard(p),
                ],
                vec![
                    id.to_string(),
                    oid.to_string(),
                    req.buyer.to_string(),
                    req.fingerprint.clone(),
                    now.arg(),
                    self.settings.idempotency_ttl_ms.to_string(),
                ],
            )
            .await?;
        match reply.code.as_str() {
            "ok" => order_from(&reply),
            "unknown_reservation" => Err(Rejection::UnknownReservation),
            "reservation_gone" => Err(Rejection::ReservationGone),
            "already_ordered" => Err(Rejection::AlreadyOrdered {
                order_id: reply.text(0)?,
            }),
            "idem_mismatch" => Err(Rejection::IdempotencyMismatch),
            _ => Err(reply.unexpected()),
        }
    }

    /// Binds an idempotency key to the request that first used it ([`KeySchema::order_claim`],
    /// [`KeySchema::psp_claim`]): a replay passes, another request with the key is refused.
    async fn claim_key(
        &self,
        p: Partition,
        key: &str,
        fingerprint: &str,
        ttl_ms: u64,
    ) -> Result<()> {
        let reply = self
            .fcall(
                "fc_idem_claim",
                vec![key.to_owned(), self.schema.guard(p)],
                vec![fingerprint.to_owned(), ttl_ms.to_string()],
            )
            .await?;
        match reply.code.as_str() {
            "claimed" | "same" => Ok(()),
            "idem_mismatch" => Err(Rejection::IdempotencyMismatch),
            _ => Err(reply.unexpected()),
        }
    }

    /// Gives back a claim whose request was refused before anything was decided.
    async fn release_key(&self, p: Partition, key: &str, fingerprint: &str) -> Result<()> {
        let reply = self
            .fcall(
                "fc_idem_release",
                vec![key.to_owned(), self.schema.guard(p)],
                vec![fingerprint.to_owned()],
            )
            .await?;
        match reply.code.as_str() {
            "released" | "kept" => Ok(()),
            _ => Err(reply.unexpected()),
        }
    }

    /// An order's current record.
    ///
    /// # Errors
    /// [`Rejection::UnknownOrder`], or unavailable.
    pub async fn order(&self, id: &OrderId) -> Result<Order> {
        self.check_partition(id.partition())?;
        let reply = self
            .fcall("fc_order_get", vec![self.schema.order(id)], vec![])
            .await?;
        match reply.code.as_str() {
            "ok" => order_from(&reply),
            "unknown_order" => Err(Rejection::UnknownOrder),
            _ => Err(reply.unexpected()),
        }
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
        let p = self.check_partition(notice.order.partition())?;
        // The event id is bound to this payment in its own partition first: the same id for
        // another order (in any partition) is refused, a replay passes.
        let at = self.schema.home_of_psp_event(&notice.event_id);
        let claim = self.schema.psp_claim(&notice.event_id);
        let fingerprint = notice.fingerprint();
        self.claim_key(at, &claim, &fingerprint, self.settings.psp_event_ttl_ms)
            .await?;
        let applied = self.apply_payment_in(p, notice, now).await;
        if let Err(e) = &applied
            && e.decided_nothing()
        {
            self.release_key(at, &claim, &fingerprint).await?;
        }
        applied
    }

    async fn apply_payment_in(
        &self,
        p: Partition,
        notice: &PaymentNotice,
        now: Now,
    ) -> Result<(PaymentOutcome, bool)> {
        let id = &notice.order;
        let reply = self
            .fcall(
                "fc_payment",
                vec![
                    self.schema.sku(p, id.sku()),
                    self.schema.order(id),
                    self.schema.psp_event(p, &notice.event_id),
                    self.schema.events(p),
                    self.schema.deadlines(p),
                    self.schema.guard(p),
                ],
                vec![
                    id.to_string(),
                    notice.event_id.to_string(),
                    notice.amount.to_string(),
                    notice.currency.to_string(),
                    now.arg(),
                    self.settings.psp_event_ttl_ms.to_string(),
                ],
            )
            .await?;
        let outcome = match reply.code.as_str() {
            "paid" => PaymentOutcome::Paid,
            "paid_after_cancel" => PaymentOutcome::PaidAfterCancel,
            "amount_mismatch" => PaymentOutcome::AmountMismatch,
            "duplicate_payment" => PaymentOutcome::DuplicatePayment,
            "unknown_order" => return Err(Rejection::UnknownOrder),
            _ => return Err(reply.unexpected()),
        };
        Ok((outcome, reply.replayed))
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
        let p = self.check_partition(id.partition())?;
        let reason = crate::event::cancel_reason_name(reason);
        let reply = self
            .fcall(
                "fc_order_cancel",
                vec![
                    self.schema.sku(p, id.sku()),
                    self.schema.order(id),
                    self.schema.events(p),
                    self.schema.deadlines(p),
                    self.schema.guard(p),
                ],
                vec![id.to_string(), reason.into(), now.arg()],
            )
            .await?;
        match reply.code.as_str() {
            "cancelled" => Ok(CancelOutcome::Cancelled),
            "not_due" => Ok(CancelOutcome::NotDue {
                deadline: reply.uint(0)?,
            }),
            "illegal" => Err(Rejection::IllegalTransition {
                state: reply.text(0)?,
            }),
            "unknown_order" => Err(Rejection::UnknownOrder),
            _ => Err(reply.unexpected()),
        }
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
        let p = self.check_partition(id.partition())?;
        let reply = self
            .fcall(
                "fc_refund",
                vec![
                    self.schema.order(id),
                    self.schema.events(p),
                    self.schema.guard(p),
                ],
                vec![event.as_str().into(), now.arg()],
            )
            .await?;
        match reply.code.as_str() {
            "ok" => OrderState::parse(&reply.text(0)?).ok_or_else(|| reply.unexpected()),
            "illegal" => Err(Rejection::IllegalTransition {
                state: reply.text(0)?,
            }),
            "unknown_order" => Err(Rejection::UnknownOrder),
            _ => Err(reply.unexpected()),
        }
    }

    /// A SKU's terms and every segment's levels.
    ///
    /// # Errors
    /// [`Rejection::UnknownSku`], or unavailable.
    pub async fn stock(&self, sku: &SkuId) -> Result<StockLevels> {
        let home = self.schema.home_of_sku(sku);
        let first = self
            .fcall("fc_stock", vec![self.schema.sku(home, sku)], vec![])
            .await?;
        let terms = match first.code.as_str() {
            "ok" => terms_from(&first)?,
            "unknown_sku" => return Err(Rejection::UnknownSku),
            _ => return Err(first.unexpected()),
        };
        let mut segments = levels_from(&first, home)?;
        for p in self
            .schema
            .sku_partitions(sku, terms.segments)
            .into_iter()
            .skip(1)
        {
            let reply = self
                .fcall("fc_stock", vec![self.schema.sku(p, sku)], vec![])
                .await?;
            if reply.code != "ok" {
                return Err(reply.unexpected());
            }
            segments.extend(levels_from(&reply, p)?);
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
        let reply = self
            .fcall("fc_stock", vec![self.schema.sku(p, sku)], vec![])
            .await?;
        match reply.code.as_str() {
            "ok" => Ok(levels_from(&reply, p)?.iter().map(|s| s.available).sum()),
            "unknown_sku" => Err(Rejection::UnknownSku),
            _ => Err(reply.unexpected()),
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
        self.due(
            self.schema.expiries(partition),
            now,
            limit,
            ReservationId::parse,
        )
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
        self.due(self.schema.deadlines(partition), now, limit, OrderId::parse)
            .await
    }

    async fn due<T>(
        &self,
        key: String,
        now: Now,
        limit: usize,
        parse: fn(&str) -> Result<T, crate::ids::ValidationError>,
    ) -> Result<Vec<T>> {
        let reply = self
            .fcall("fc_due", vec![key], vec![now.arg(), limit.to_string()])
            .await?;
        if reply.code != "ok" {
            return Err(reply.unexpected());
        }
        (0..reply.fields.len())
            .map(|i| parse(&reply.text(i)?).map_err(|_| reply.unexpected()))
            .collect()
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

/// The id of the reservation a request makes in its buyer's home partition `home`; its key
/// holds the request's record whatever the request decided (see `fc_reserve`).
fn home_record(req: &ReserveRequest, home: Partition) -> ReservationId {
    ReservationId::new(
        home,
        HoldToken::derive(&req.buyer, &req.key),
        req.sku.clone(),
    )
}

fn affinity_of(buyer: &BuyerId) -> u32 {
    let d = crate::digest(&[b"affinity", buyer.as_str().as_bytes()]);
    u32::from(u16::from_be_bytes([d[0], d[1]]))
}

fn order_from(reply: &Reply) -> Result<Order> {
    let bad = || reply.unexpected();
    Ok(Order {
        id: OrderId::parse(&reply.text(0)?).map_err(|_| bad())?,
        state: OrderState::parse(&reply.text(1)?).ok_or_else(bad)?,
        sku: reply.text(2)?,
        quantity: reply.uint(3)?,
        amount: reply.uint(4)?,
        currency: reply.text(5)?,
        payment_deadline: reply.uint(6)?,
        reservation: reply.text(7)?,
        buyer: reply.text(8)?,
        replayed: reply.replayed,
    })
}

fn terms_from(reply: &Reply) -> Result<SkuTerms> {
    Ok(SkuTerms {
        stock: reply.uint(0)?,
        segments: u16::try_from(reply.uint(1)?).map_err(|_| reply.unexpected())?,
        price: reply.uint(2)?,
        currency: reply.text(3)?,
        sale_start: reply.uint(4)?,
        sale_end: reply.uint(5)?,
        per_buyer_limit: reply.uint(6)?,
        reservation_ttl_ms: reply.uint(7)?,
        payment_window_ms: reply.uint(8)?,
    })
}

/// Segment levels after the terms: field 10 is the count, then 6 numbers per segment.
fn levels_from(reply: &Reply, p: Partition) -> Result<Vec<SegmentLevel>> {
    let count = usize::try_from(reply.uint(10)?).map_err(|_| reply.unexpected())?;
    (0..count)
        .map(|k| {
            let at = 11 + k * 6;
            Ok(SegmentLevel {
                segment: u16::try_from(reply.uint(at)?).map_err(|_| reply.unexpected())?,
                partition: p.index(),
                initial: reply.uint(at + 1)?,
                available: reply.uint(at + 2)?,
                reserved: reply.uint(at + 3)?,
                ordered: reply.uint(at + 4)?,
                sold: reply.uint(at + 5)?,
            })
        })
        .collect()
}

/// What a home step's reply told about the home partition.
#[derive(Debug, Default)]
struct Sighting {
    /// Units left there afterwards (fresh decisions only: a replay tells nothing of now).
    left: Option<u64>,
    /// The SKU's segment count.
    segments: Option<u16>,
}

impl Sighting {
    fn of_home(reply: &Reply) -> Self {
        let segments = |i: usize| reply.optional_uint(i).and_then(|n| u16::try_from(n).ok());
        match reply.code.as_str() {
            // ok(rid seg expires left segs); a replay carries the first three only.
            "ok" => Self {
                left: reply.optional_uint(3),
                segments: segments(4),
            },
            // fallback(segs left), resume(segs skip)
            "fallback" => Self {
                left: reply.optional_uint(1),
                segments: segments(0),
            },
            "resume" => Self {
                left: None,
                segments: segments(0),
            },
            // A decision without stock at home: sold_out(left), insufficient(left).
            "sold_out" | "insufficient" if !reply.replayed => Self {
                left: reply.optional_uint(0),
                segments: None,
            },
            _ => Self::default(),
        }
    }
}

/// The outcome of `fc_reserve`'s reply. `skip` is the argument the call was made with.
fn home_outcome(reply: &Reply, skip: &str) -> Result<HomeStep> {
    let segments = |i| u16::try_from(reply.uint(i)?).map_err(|_| reply.unexpected());
    match reply.code.as_str() {
        "fallback" => Ok(HomeStep::LookElsewhere {
            segments: segments(0)?,
            skip: parse_skip(skip).ok_or_else(|| reply.unexpected())?,
        }),
        "resume" => Ok(HomeStep::LookElsewhere {
            segments: segments(0)?,
            skip: parse_skip(&reply.optional_text(1).unwrap_or_default())
                .ok_or_else(|| reply.unexpected())?,
        }),
        _ => reservation_from(reply).map(HomeStep::Decided),
    }
}

/// A `skip` list as `fc_reserve` keeps it: partition numbers joined by commas.
fn parse_skip(skip: &str) -> Option<Vec<Partition>> {
    skip.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().ok().map(Partition::new))
        .collect()
}

fn reservation_from(reply: &Reply) -> Result<Reservation> {
    match reply.code.as_str() {
        "ok" => Ok(Reservation {
            id: ReservationId::parse(&reply.text(0)?).map_err(|_| reply.unexpected())?,
            segment: u16::try_from(reply.uint(1)?).map_err(|_| reply.unexpected())?,
            expires_at: reply.uint(2)?,
            replayed: reply.replayed,
        }),
        "sold_out" => Err(Rejection::SoldOut),
        "insufficient" => Err(Rejection::Insufficient),
        "limit_reached" => Err(Rejection::LimitReached {
            remaining: reply.uint(0)?,
        }),
        "unknown_sku" => Err(Rejection::UnknownSku),
        "not_on_sale" => Err(Rejection::NotOnSale {
            starts_at: reply.uint(0)?,
        }),
        "sale_ended" => Err(Rejection::SaleEnded),
        "idem_mismatch" => Err(Rejection::IdempotencyMismatch),
        "in_flight" => Err(Rejection::IdempotencyInFlight),
        // rate_limited(remaining retry_after_ms): a refusal finds less than one token, so
        // `remaining` is 0 with a cost of 1.
        "rate_limited" => Err(Rejection::RateLimited {
            retry_after_ms: reply.uint(1)?,
        }),
        _ => Err(reply.unexpected()),
    }
}
