//! Recovery: the gate never forgets what the ledger knows.
//!
//! Redis runs `appendfsync everysec` by default, so a power cut (or a failover to a replica
//! that lagged) can lose its last second of writes — after settlement has committed their
//! events. Deciding on from there would sell those units again. The function library fences
//! every write to a *guarded* partition in a redis-server process that has not been checked
//! against the ledger (see `checked` in `shared/redis/flashcart.lua` and
//! [`flashcart_core::recovery`]); this module is settlement's side:
//!
//! - [`Recovery::guard`] marks every partition as guarded before settlement commits anything,
//!   and makes the mark durable (`WAITAOF` on Redis ≥ 7.2, else an AOF rewrite), so a power
//!   cut cannot lose the mark together with events the ledger has;
//! - [`Recovery::pass`] (every maintenance pass, and `reconcile --repair`) checks each fenced
//!   partition: when its stream's last id is at or above the ledger's highest applied id,
//!   Redis did not go back in time and the fence is lifted; otherwise, once the partition's
//!   stream is drained into the ledger, Redis is rewritten from the ledger (SKU levels,
//!   reservations and their timers, orders and theirs, payment outcomes, purchase counters),
//!   the stream's id is moved past the ledger's, and the fence is lifted. Every step is
//!   idempotent and the fence stays up until the last one, so a restore that stops halfway
//!   is simply run again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flashcart_core::ids::{BuyerId, OrderId, PspEventId, ReservationId, SkuId};
use flashcart_core::inventory::{PaymentOutcome, SegmentLevel, SkuTerms};
use flashcart_core::order::OrderState;
use flashcart_core::recovery::{
    OrderImage, ReservationImage, ReservationState, Restored, SkuImage, Verified,
};
use flashcart_core::sku::SkuSpec;
use flashcart_core::{KeySchema, Partition, Rejection};
use flashcart_inventory::{NativeInventory, RedisConn};

use crate::consumer::dead_letter_key;
use crate::entry::EntryId;
use crate::ledger::{
    Ledger, PaidOrder, PaymentRow, ReservationRow, SkuRow, parse_payment_outcome,
    parse_reservation_state,
};
use crate::metrics::{Metrics, now_ms};
use crate::{Error, Result, reply};

/// What one [`Recovery::pass`] found, by partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pass {
    /// Fenced partitions whose stream had not gone back in time: fence lifted, nothing lost.
    pub lifted: Vec<Partition>,
    /// Partitions restored from the ledger, then lifted.
    pub restored: Vec<Partition>,
    /// Partitions still fenced, and why (waiting for the stream to drain, dead letters, …).
    pub fenced: Vec<(Partition, String)>,
}

/// Settlement's side of the fence.
#[derive(Clone)]
pub struct Recovery {
    inventory: NativeInventory,
    ledger: Ledger,
    metrics: Arc<Metrics>,
    group: String,
}

fn inventory_error(e: Rejection) -> Error {
    Error::Inventory(e)
}

impl Recovery {
    /// Recovery over `inventory` and `ledger`, for the consumer group `group`.
    pub fn new(
        inventory: NativeInventory,
        ledger: Ledger,
        metrics: Arc<Metrics>,
        group: &str,
    ) -> Self {
        Self {
            inventory,
            ledger,
            metrics,
            group: group.to_owned(),
        }
    }

    fn schema(&self) -> KeySchema {
        *self.inventory.schema()
    }

    /// Guards every partition (before settlement commits anything) and makes new guards
    /// durable. A partition the ledger has events of but whose guard is missing is fenced
    /// now: Redis lost the guard, so it may have lost more. Returns the guards set now.
    ///
    /// # Errors
    /// When Redis or the ledger fails, or a new guard cannot be made durable.
    pub async fn guard(&self) -> Result<usize> {
        let mut new = 0;
        for p in self.schema().partitions() {
            let known = self.ledger.highest_applied(p).await?.is_some();
            new += usize::from(self.guard_one(p, known).await?);
        }
        if new > 0 {
            make_durable(self.inventory.executor()).await?;
        }
        Ok(new)
    }

    /// Guards `p`; whether the guard is new.
    async fn guard_one(&self, p: Partition, known: bool) -> Result<bool> {
        let outcome = self
            .inventory
            .guard(p, known)
            .await
            .map_err(inventory_error)?;
        let new = outcome == flashcart_core::recovery::Guarded::New;
        if new && known {
            tracing::warn!(partition = %p, "ledger guard missing while the ledger holds events of the partition: Redis lost its data; fenced until restored");
        }
        Ok(new)
    }

    /// Checks every partition: lifts the fence where Redis did not go back in time, restores
    /// from the ledger where it did (once the partition's stream is drained), and leaves the
    /// rest fenced with the reason. Updates the fenced-partitions gauge.
    ///
    /// # Errors
    /// When Redis or the ledger fails (what was done before stays done).
    pub async fn pass(&self) -> Result<Pass> {
        let mut pass = Pass::default();
        let mut image: Option<Image> = None;
        for p in self.schema().partitions() {
            let highest = self
                .ledger
                .highest_applied(p)
                .await?
                .map(|id| id.to_string());
            // A guard gone while settlement runs: Redis lost everything (an empty server).
            if self.guard_one(p, highest.is_some()).await? {
                make_durable(self.inventory.executor()).await?;
            }
            match self
                .inventory
                .verify(p, highest.as_deref())
                .await
                .map_err(inventory_error)?
            {
                Verified::Open => {}
                Verified::Lifted => {
                    tracing::warn!(partition = %p, "partition was fenced after a Redis restart; its stream is at or above the ledger: nothing lost, fence lifted");
                    pass.lifted.push(p);
                }
                Verified::Behind { last } => {
                    let highest = highest.unwrap_or_default();
                    tracing::warn!(partition = %p, stream = last.as_deref().unwrap_or("(gone)"), ledger = %highest,
                        "Redis lost writes the ledger has: partition fenced until restored from the ledger");
                    if let Some(why) = self.blocked(p).await? {
                        pass.fenced.push((p, why));
                        continue;
                    }
                    if image.is_none() {
                        image = Some(Image::read(&self.ledger).await?);
                    }
                    let image = image
                        .as_ref()
                        .ok_or_else(|| Error::Invalid("image".into()))?;
                    match self.restore(p, &highest, image, usize::MAX).await? {
                        Ok(()) => {
                            tracing::warn!(partition = %p, "partition restored from the ledger; fence lifted");
                            self.metrics.restored();
                            pass.restored.push(p);
                        }
                        Err(why) => pass.fenced.push((p, why)),
                    }
                }
            }
        }
        self.metrics.fenced(pass.fenced.len());
        Ok(pass)
    }

    /// Why partition `p` cannot be restored yet, if it cannot: entries of its stream that the
    /// ledger has not applied (their effects are in Redis; a restore would undo them), or dead
    /// letters (the same, until an operator retries or drops them).
    async fn blocked(&self, p: Partition) -> Result<Option<String>> {
        let conn = self.inventory.executor();
        let events = self.schema().events(p);
        let dead = reply::int(
            &conn
                .query(redis::cmd("XLEN").arg(dead_letter_key(p)))
                .await?,
        )
        .unwrap_or(0);
        if dead > 0 {
            return Ok(Some(format!(
                "{dead} dead letters: retry or drop them (flashcart dlq) first"
            )));
        }
        if stream_last_id(conn, &events).await?.is_none() {
            return Ok(None);
        }
        let groups = conn
            .query(redis::cmd("XINFO").arg("GROUPS").arg(&events))
            .await?;
        let Some(info) = reply::group_info(&groups, &self.group) else {
            // The group was lost with the writes: recreate it from the start of the stream so
            // what is left there is settled (applied entries are skipped by their identity).
            let created = conn
                .query(
                    redis::cmd("XGROUP")
                        .arg("CREATE")
                        .arg(&events)
                        .arg(&self.group)
                        .arg("0"),
                )
                .await;
            if let Err(e) = created
                && e.code() != Some("BUSYGROUP")
            {
                return Err(e.into());
            }
            return Ok(Some("consumer group recreated; settling the stream".into()));
        };
        let undelivered = undelivered(conn, &events, &info.last_delivered).await?;
        if info.pending > 0 || undelivered > 0 {
            return Ok(Some(format!(
                "{} entries pending and {undelivered} not delivered yet: settling them first",
                info.pending
            )));
        }
        Ok(None)
    }

    /// Rewrites partition `p` from `image` and lifts its fence. `budget`: the most records
    /// written before stopping (tests use it to stop a restore halfway); the fence stays up
    /// then. Answers why it stopped, if it did.
    ///
    /// # Errors
    /// When Redis fails.
    pub async fn restore(
        &self,
        p: Partition,
        highest: &str,
        image: &Image,
        budget: usize,
    ) -> Result<Result<(), String>> {
        let mut writes = Writes {
            left: budget,
            stopped: false,
            refused: false,
        };
        self.restore_skus(p, image, &mut writes).await?;
        self.restore_records(p, image, &mut writes).await?;
        if writes.refused {
            return Ok(Err("the partition was not fenced: restore refused".into()));
        }
        if writes.stopped {
            return Ok(Err("stopped before the end (budget)".into()));
        }
        if !highest.is_empty()
            && self
                .inventory
                .restore_stream(p, highest)
                .await
                .map_err(inventory_error)?
                == Restored::NotFenced
        {
            return Ok(Err("the partition was not fenced: restore refused".into()));
        }
        // A stream that was gone took the consumer group with it.
        let created = self
            .inventory
            .executor()
            .query(
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(self.schema().events(p))
                    .arg(&self.group)
                    .arg("$")
                    .arg("MKSTREAM"),
            )
            .await;
        if let Err(e) = created
            && e.code() != Some("BUSYGROUP")
        {
            return Err(e.into());
        }
        let verified = self
            .inventory
            .verify(p, Some(highest).filter(|h| !h.is_empty()))
            .await
            .map_err(inventory_error)?;
        Ok(match verified {
            Verified::Lifted | Verified::Open => Ok(()),
            Verified::Behind { .. } => Err("the stream is still behind the ledger".into()),
        })
    }

    async fn restore_skus(&self, p: Partition, image: &Image, w: &mut Writes) -> Result<()> {
        for row in &image.skus {
            let Some(sku) = sku_image(row, p, &self.schema()) else {
                tracing::error!(sku = %row.sku, "ledger holds a SKU the core cannot parse; not restored");
                continue;
            };
            if !w.take() {
                return Ok(());
            }
            w.note(self.inventory.restore_sku(p, &sku).await);
        }
        Ok(())
    }

    async fn restore_records(&self, p: Partition, image: &Image, w: &mut Writes) -> Result<()> {
        let now = now_ms();
        let settings = *self.inventory.settings();
        for row in &image.reservations {
            let Some(r) = reservation_image(row, now, settings.released_keep_ms) else {
                continue;
            };
            let home = self.schema().home_of_buyer(&r.buyer);
            if r.id.partition() == p {
                if !w.take() {
                    return Ok(());
                }
                w.note(self.inventory.restore_reservation(&r).await);
            } else if home == p {
                // Found by a fallback search: the request's record at home replays it.
                let age = now.saturating_sub(unsigned(row.created_at));
                let Some(ttl) = settings.idempotency_ttl_ms.checked_sub(age) else {
                    continue;
                };
                if !w.take() {
                    return Ok(());
                }
                w.note(self.inventory.restore_decision(&r, ttl).await);
            }
        }
        for row in &image.orders {
            let Some(o) = order_image(row) else { continue };
            if o.id.partition() != p {
                continue;
            }
            if !w.take() {
                return Ok(());
            }
            w.note(self.inventory.restore_order(&o).await);
        }
        for row in &image.payments {
            let Some((order, event, outcome, state)) = payment_image(row) else {
                continue;
            };
            let age = now.saturating_sub(u64::try_from(row.at).unwrap_or(0));
            let Some(ttl) = settings
                .psp_event_ttl_ms
                .checked_sub(age)
                .filter(|t| *t > 0)
            else {
                continue;
            };
            if order.partition() != p {
                continue;
            }
            if !w.take() {
                return Ok(());
            }
            w.note(
                self.inventory
                    .restore_payment(&order, &event, &outcome, state, ttl)
                    .await,
            );
        }
        for (sku, buyer, units) in &image.purchases {
            let (Ok(sku), Ok(buyer)) = (SkuId::parse(sku), BuyerId::parse(buyer)) else {
                continue;
            };
            if self.schema().home_of_buyer(&buyer) != p {
                continue;
            }
            if !w.take() {
                return Ok(());
            }
            w.note(
                self.inventory
                    .restore_purchase_count(&sku, &buyer, u64::try_from(*units).unwrap_or(0))
                    .await,
            );
        }
        Ok(())
    }
}

/// Counts restore writes against a budget and remembers a refusal.
struct Writes {
    left: usize,
    /// A write was wanted after the budget ran out.
    stopped: bool,
    refused: bool,
}

impl Writes {
    fn take(&mut self) -> bool {
        if self.refused {
            return false;
        }
        if self.left == 0 {
            self.stopped = true;
            return false;
        }
        self.left -= 1;
        true
    }

    fn note(&mut self, outcome: Result<Restored, Rejection>) {
        match outcome {
            Ok(Restored::Written) => {}
            Ok(Restored::NotFenced) => self.refused = true,
            Err(e) => {
                // An unavailable Redis: stop here, the fence stays, the next pass retries.
                tracing::warn!(error = %e, "restore write failed");
                self.refused = true;
            }
        }
    }
}

/// Everything the ledger knows, read once per pass that has a partition to restore.
#[derive(Debug, Clone, Default)]
pub struct Image {
    skus: Vec<SkuRow>,
    reservations: Vec<ReservationRow>,
    orders: Vec<PaidOrder>,
    payments: Vec<PaymentRow>,
    purchases: Vec<(String, String, i64)>,
}

impl Image {
    /// Reads it.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn read(ledger: &Ledger) -> Result<Self> {
        Ok(Self {
            skus: ledger.sku_rows().await?,
            reservations: ledger.reservation_rows().await?,
            orders: ledger.order_rows().await?,
            payments: ledger.payment_rows().await?,
            purchases: ledger.purchase_counts().await?,
        })
    }
}

fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn sku_image(row: &SkuRow, p: Partition, schema: &KeySchema) -> Option<SkuImage> {
    let sku = SkuId::parse(&row.sku).ok()?;
    let segments = u16::try_from(row.segments).ok()?;
    let terms = SkuTerms {
        stock: unsigned(row.stock),
        segments,
        price: unsigned(row.price),
        currency: row.currency.clone(),
        sale_start: unsigned(row.starts_at),
        sale_end: unsigned(row.ends_at),
        per_buyer_limit: unsigned(row.buyer_limit),
        reservation_ttl_ms: unsigned(row.ttl_ms),
        payment_window_ms: unsigned(row.paywin_ms),
    };
    let fingerprint = match &row.fingerprint {
        Some(fp) => fp.clone(),
        None => guessed_fingerprint(&sku, &terms, schema)?,
    };
    let segments = row
        .levels
        .iter()
        .filter(|(part, _)| *part == i64::from(p.index()))
        .map(|(_, l)| SegmentLevel {
            segment: u16::try_from(l.segment).unwrap_or(u16::MAX),
            partition: p.index(),
            initial: unsigned(l.initial),
            available: unsigned(l.available()),
            reserved: unsigned(l.reserved),
            ordered: unsigned(l.ordered),
            sold: unsigned(l.sold),
        })
        .collect();
    Some(SkuImage {
        sku,
        fingerprint,
        terms,
        segments,
    })
}

/// The fingerprint of terms loaded before `sku.loaded` carried it: computed as the load
/// computed it, assuming the segment count was left to its default when it equals the default
/// (a second load with an explicit count would then answer `conflict`).
fn guessed_fingerprint(sku: &SkuId, t: &SkuTerms, schema: &KeySchema) -> Option<String> {
    let mut spec = SkuSpec {
        sku: sku.clone(),
        stock: t.stock,
        segments: None,
        price: t.price,
        currency: flashcart_core::ids::Currency::parse(&t.currency).ok()?,
        sale_start: t.sale_start,
        sale_end: t.sale_end,
        per_buyer_limit: u32::try_from(t.per_buyer_limit).ok()?,
        reservation_ttl_ms: t.reservation_ttl_ms,
        payment_window_ms: t.payment_window_ms,
    };
    if spec.segment_count(schema) != t.segments {
        spec.segments = Some(t.segments);
    }
    Some(spec.fingerprint())
}

fn reservation_image(row: &ReservationRow, now: u64, keep_ms: u64) -> Option<ReservationImage> {
    let state = parse_reservation_state(&row.state)?;
    let keep = match state {
        ReservationState::Active | ReservationState::Ordered => None,
        ReservationState::Expired | ReservationState::Cancelled => {
            let closed = unsigned(row.closed_at.unwrap_or(0));
            Some(keep_ms.saturating_sub(now.saturating_sub(closed)))
        }
    };
    Some(ReservationImage {
        id: ReservationId::parse(&row.rsv).ok()?,
        state,
        segment: u16::try_from(row.segment).ok()?,
        quantity: unsigned(row.qty),
        expires_at: unsigned(row.expires_at),
        buyer: BuyerId::parse(&row.buyer).ok()?,
        keep_ms: keep,
    })
}

fn order_image(PaidOrder { order: row, paid }: &PaidOrder) -> Option<OrderImage> {
    let state = OrderState::parse(&row.state)?;
    Some(OrderImage {
        id: OrderId::parse(&row.ord).ok()?,
        reservation: ReservationId::parse(&row.rsv).ok()?,
        segment: u16::try_from(row.segment).ok()?,
        quantity: unsigned(row.qty),
        buyer: BuyerId::parse(&row.buyer).ok()?,
        amount: unsigned(row.amount),
        currency: row.currency.clone(),
        state,
        deadline: unsigned(row.deadline_at),
        created_at: unsigned(row.created_at),
        paid: paid.clone().map(|(e, at)| (e, unsigned(at))),
        cancelled_at: (state == OrderState::Cancelled).then(|| unsigned(row.updated_at)),
    })
}

fn payment_image(row: &PaymentRow) -> Option<(OrderId, PspEventId, PaymentOutcome, OrderState)> {
    let outcome = parse_payment_outcome(&row.outcome)?;
    Some((
        OrderId::parse(&row.ord).ok()?,
        PspEventId::parse(&row.psp_event).ok()?,
        outcome,
        OrderState::parse(&row.order_state)?,
    ))
}

/// How many entries of stream `key` lie after `after` (a group's last delivered id), counted
/// up to 10 000.
///
/// # Errors
/// When Redis fails.
pub(crate) async fn undelivered(conn: &RedisConn, key: &str, after: &str) -> Result<i64> {
    let v = conn
        .query(
            redis::cmd("XRANGE")
                .arg(key)
                .arg(format!("({after}"))
                .arg("+")
                .arg("COUNT")
                .arg(10_000),
        )
        .await?;
    Ok(i64::try_from(reply::items(&v).len()).unwrap_or(i64::MAX))
}

/// The stream's last generated id, `None` when the stream does not exist.
async fn stream_last_id(conn: &RedisConn, key: &str) -> Result<Option<EntryId>> {
    let info = conn.query(redis::cmd("XINFO").arg("STREAM").arg(key)).await;
    match info {
        Ok(v) => {
            let pairs = reply::pairs(&v);
            let last = pairs
                .iter()
                .find(|(k, _)| k == "last-generated-id")
                .and_then(|(_, v)| reply::text(v));
            Ok(match last {
                Some(id) => Some(id.parse()?),
                None => None,
            })
        }
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Makes every write so far durable in the AOF: `WAITAOF 1 0` where Redis has it (≥ 7.2),
/// else an AOF rewrite (its new base file is fsynced before it replaces the old one). Once per
/// deployment: only new guards need it.
async fn make_durable(conn: &RedisConn) -> Result<()> {
    if let RedisConn::Cluster(_) = conn {
        tracing::warn!(
            "ledger guards on a Redis Cluster are not forced to disk: a power cut within a second of settlement's first start could lose them (docs/reliability.md)"
        );
        return Ok(());
    }
    match conn.query(redis::cmd("WAITAOF").arg(1).arg(0).arg(0)).await {
        Ok(_) => return Ok(()),
        Err(e) if e.code() == Some("ERR") && e.to_string().contains("unknown command") => {}
        Err(e) if e.to_string().contains("appendonly") => {
            tracing::warn!(error = %e, "Redis runs without the AOF: a restart loses every decision, the guards too");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    let info = persistence(conn).await?;
    if info("aof_enabled") != Some(1) {
        tracing::warn!(
            "Redis runs without the AOF: a restart loses every decision, the guards too"
        );
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    // Start a rewrite that begins after our writes: one already running may have begun before.
    let before = loop {
        let before = persistence(conn).await?("aof_rewrites").unwrap_or(0);
        match conn.query(&redis::cmd("BGREWRITEAOF")).await {
            Ok(_) => break before,
            Err(e) if e.to_string().contains("already in progress") => {}
            Err(e) => return Err(e.into()),
        }
        if Instant::now() > deadline {
            return Err(Error::Invalid(
                "the AOF rewrite did not start in 120 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    loop {
        let info = persistence(conn).await?;
        if info("aof_rewrite_in_progress") == Some(0)
            && info("aof_rewrite_scheduled") == Some(0)
            && info("aof_rewrites").unwrap_or(0) > before
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Invalid(
                "the AOF rewrite that makes the ledger guards durable did not finish in 120 s"
                    .into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `INFO persistence` as a lookup of its integer fields.
async fn persistence(conn: &RedisConn) -> Result<impl Fn(&str) -> Option<i64>> {
    let text = conn.info("persistence").await?;
    Ok(move |name: &str| flashcart_inventory::info_field(&text, name))
}
