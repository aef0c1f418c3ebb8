//! Reconciliation: per SKU, Redis's segment levels and reservation/order states against the
//! ledger, with a table of drift; `--repair` fixes Redis levels from the ledger only where
//! that is provably safe.
//!
//! The comparison means something only once the streams are drained (an event in flight is
//! in Redis and not yet in the ledger); the report says how many entries were in flight.
//!
//! Repair rules. A segment is rewritten from the ledger only when
//! 1. nothing is in flight or dead-lettered on any partition (the ledger is a complete replay
//!    of every decision Redis streamed),
//! 2. both sides loaded the same `initial`, and the ledger's levels balance,
//! 3. the ledger has no more units available than Redis (a repair may withhold stock, never
//!    create it: that is the case of a Redis that lost its last writes after the ledger had
//!    settled their events — an oversell risk — while the opposite direction could just as
//!    well be an event the ledger never saw), and
//! 4. Redis still holds the levels the comparison read (a compare-and-set script, so a decision
//!    made meanwhile wins and the repair is skipped).
//!
//! The repair script writes the core's per-segment level fields of the partition's SKU hash,
//! named by the core's key schema (`KeySchema::segment_level_fields`).

use std::fmt::Write as _;

use flashcart_core::Inventory;
use flashcart_core::ids::SkuId;
use flashcart_core::keys::KeySchema;
use flashcart_core::recovery::ReservationState;
use flashcart_inventory::RedisConn;

use crate::consumer::dead_letter_key;
use crate::ledger::{Ledger, SegmentLevels, reservation_state_name};
use crate::{Error, Result, reply};

/// One segment's levels on one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[expect(
    missing_docs,
    reason = "the four levels and the initial stock, as everywhere"
)]
pub struct Levels {
    pub initial: i64,
    pub available: i64,
    pub reserved: i64,
    pub ordered: i64,
    pub sold: i64,
}

impl From<SegmentLevels> for Levels {
    fn from(l: SegmentLevels) -> Self {
        Self {
            initial: l.initial,
            available: l.available(),
            reserved: l.reserved,
            ordered: l.ordered,
            sold: l.sold,
        }
    }
}

/// A segment whose levels differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentDrift {
    /// The SKU.
    pub sku: String,
    /// The segment.
    pub segment: i64,
    /// Redis's levels.
    pub redis: Levels,
    /// The ledger's levels.
    pub ledger: Levels,
    /// What `--repair` did: `None` when not asked; otherwise whether Redis was rewritten, and why not.
    pub repair: Option<Result<(), String>>,
}

/// A reservation or order whose state differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordDrift {
    /// `reservation` or `order`.
    pub kind: String,
    /// Its id.
    pub id: String,
    /// The state in Redis (`None`: no record).
    pub redis: Option<String>,
    /// The state in the ledger.
    pub ledger: String,
}

/// The outcome of a reconciliation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// SKUs compared.
    pub skus: usize,
    /// Segments compared.
    pub segments: usize,
    /// Reservations and orders compared.
    pub records: usize,
    /// Stream entries not yet settled (lag + pending over all partitions).
    pub in_flight: i64,
    /// Entries in dead-letter streams.
    pub dead_letters: i64,
    /// Segments whose levels differ.
    pub segment_drift: Vec<SegmentDrift>,
    /// Records whose states differ.
    pub record_drift: Vec<RecordDrift>,
    /// SKUs the ledger knows and Redis does not.
    pub missing_in_redis: Vec<String>,
}

impl Report {
    /// Whether anything differs.
    pub fn has_drift(&self) -> bool {
        !self.segment_drift.is_empty()
            || !self.record_drift.is_empty()
            || !self.missing_in_redis.is_empty()
    }

    /// A human-readable table.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "reconciled {} SKUs, {} segments, {} records; {} entries in flight, {} dead-lettered",
            self.skus, self.segments, self.records, self.in_flight, self.dead_letters
        );
        if !self.segment_drift.is_empty() {
            let _ = writeln!(
                out,
                "{:<24} {:>4} {:<10} {:>10} {:>10} {:>8}  repair",
                "sku", "seg", "level", "redis", "ledger", "delta"
            );
            for d in &self.segment_drift {
                let fields = [
                    ("initial", d.redis.initial, d.ledger.initial),
                    ("available", d.redis.available, d.ledger.available),
                    ("reserved", d.redis.reserved, d.ledger.reserved),
                    ("ordered", d.redis.ordered, d.ledger.ordered),
                    ("sold", d.redis.sold, d.ledger.sold),
                ];
                let repair = match &d.repair {
                    None => "-".to_owned(),
                    Some(Ok(())) => "repaired".to_owned(),
                    Some(Err(why)) => format!("skipped: {why}"),
                };
                for (name, r, l) in fields.into_iter().filter(|(_, r, l)| r != l) {
                    let _ = writeln!(
                        out,
                        "{:<24} {:>4} {:<10} {:>10} {:>10} {:>8}  {repair}",
                        d.sku,
                        d.segment,
                        name,
                        r,
                        l,
                        r - l
                    );
                }
            }
        }
        for r in &self.record_drift {
            let _ = writeln!(
                out,
                "{} {}: redis {} ledger {}",
                r.kind,
                r.id,
                r.redis.as_deref().unwrap_or("(none)"),
                r.ledger
            );
        }
        for sku in &self.missing_in_redis {
            let _ = writeln!(out, "sku {sku}: in the ledger, not in redis");
        }
        let _ = writeln!(
            out,
            "{}",
            if self.has_drift() {
                "DRIFT"
            } else {
                "no drift"
            }
        );
        out
    }
}

/// Compare-and-set of four fields of one hash. ARGV: the fields
/// ([`KeySchema::segment_level_fields`]), the values expected, the values to write.
const REPAIR: &str = r"
local v = redis.call('HMGET', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
for i = 1, 4 do
  if tonumber(v[i] or '0') ~= tonumber(ARGV[4 + i]) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[9], ARGV[2], ARGV[10], ARGV[3], ARGV[11],
  ARGV[4], ARGV[12])
return 1
";

/// A record's state as Redis holds it, in the ledger's words (the core's `active`
/// reservation is the ledger's `held`).
fn ledger_name<'a>(kind: &str, state: &'a str) -> &'a str {
    match ReservationState::parse(state) {
        Some(s) if kind == "reservation" => reservation_state_name(s),
        _ => state,
    }
}

/// Compares Redis with the ledger for every SKU the ledger knows; with `repair`, rewrites
/// Redis levels where the module's rules allow.
///
/// # Errors
/// When Redis or the ledger fails.
pub async fn reconcile(
    inventory: &Inventory<RedisConn>,
    ledger: &Ledger,
    group: &str,
    repair: bool,
) -> Result<Report> {
    let schema: KeySchema = *inventory.schema();
    let conn = inventory.executor();
    let mut report = Report::default();
    for sku in ledger.skus().await? {
        let Ok(id) = SkuId::parse(&sku) else { continue };
        // Redis first, then the stream state, then the ledger: a decision made after the
        // Redis read is either still in flight (counted) or already in the ledger read.
        let stock = match inventory.stock(&id).await {
            Ok(stock) => stock,
            Err(flashcart_core::Rejection::UnknownSku) => {
                report.missing_in_redis.push(sku);
                continue;
            }
            Err(other) => return Err(Error::Inventory(other)),
        };
        report.skus += 1;
        let (in_flight, dead) = stream_state(conn, &schema, group).await?;
        report.in_flight = report.in_flight.max(in_flight);
        report.dead_letters = dead;
        let ledger_levels = ledger.levels(&sku).await?;
        for seg in &stock.segments {
            report.segments += 1;
            let redis = Levels {
                initial: seg.initial as i64,
                available: seg.available as i64,
                reserved: seg.reserved as i64,
                ordered: seg.ordered as i64,
                sold: seg.sold as i64,
            };
            let ledger = ledger_levels
                .iter()
                .find(|l| l.segment == i64::from(seg.segment))
                .map(|l| Levels::from(*l))
                .unwrap_or_default();
            if redis == ledger {
                continue;
            }
            let outcome = if repair {
                Some(
                    try_repair(
                        conn,
                        &schema,
                        &id,
                        seg.segment,
                        seg.partition,
                        redis,
                        ledger,
                        in_flight + dead,
                    )
                    .await?,
                )
            } else {
                None
            };
            report.segment_drift.push(SegmentDrift {
                sku: sku.clone(),
                segment: i64::from(seg.segment),
                redis,
                ledger,
                repair: outcome,
            });
        }
        for (kind, rid, state) in ledger.records(&sku).await? {
            report.records += 1;
            let key = if kind == "order" {
                flashcart_core::ids::OrderId::parse(&rid).map(|o| schema.order(&o))
            } else {
                flashcart_core::ids::ReservationId::parse(&rid).map(|r| schema.reservation(&r))
            };
            let Ok(key) = key else { continue };
            let value = conn
                .query(redis::cmd("HGET").arg(&key).arg(KeySchema::STATE_FIELD))
                .await?;
            let in_redis = reply::text(&value);
            let agrees = match in_redis.as_deref() {
                Some(s) => ledger_name(&kind, s) == state,
                // Released reservations' records expire in Redis after a while; a terminal
                // state in the ledger with no record in Redis is expected.
                None => {
                    kind == "reservation"
                        && state != reservation_state_name(ReservationState::Active)
                }
            };
            if !agrees {
                report.record_drift.push(RecordDrift {
                    kind,
                    id: rid,
                    redis: in_redis,
                    ledger: state,
                });
            }
        }
    }
    Ok(report)
}

/// Entries in flight (lag + pending) and dead-lettered, over every partition.
async fn stream_state(conn: &RedisConn, schema: &KeySchema, group: &str) -> Result<(i64, i64)> {
    let mut in_flight: i64 = 0;
    let mut dead = 0;
    for p in schema.partitions() {
        let groups = conn
            .query(redis::cmd("XINFO").arg("GROUPS").arg(schema.events(p)))
            .await;
        match groups {
            Ok(v) => match reply::group_info(&v, group) {
                Some(info) => {
                    // Redis cannot always tell the lag (after trims or a restart that lost
                    // entries): count what lies beyond the last delivered id then.
                    let lag = match info.lag {
                        Some(lag) => lag,
                        None => {
                            crate::recovery::undelivered(
                                conn,
                                &schema.events(p),
                                &info.last_delivered,
                            )
                            .await?
                        }
                    };
                    in_flight = in_flight.saturating_add(lag).saturating_add(info.pending);
                }
                // No group yet: everything in the stream is in flight.
                None => {
                    in_flight +=
                        reply::int(&conn.query(redis::cmd("XLEN").arg(schema.events(p))).await?)
                            .unwrap_or(0)
                }
            },
            // No stream at all: nothing in flight there.
            Err(e)
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) => {}
            Err(e) => return Err(e.into()),
        }
        dead += reply::int(
            &conn
                .query(redis::cmd("XLEN").arg(dead_letter_key(p)))
                .await?,
        )
        .unwrap_or(0);
    }
    Ok((in_flight, dead))
}

#[expect(
    clippy::too_many_arguments,
    reason = "one segment's whole comparison, named"
)]
async fn try_repair(
    conn: &RedisConn,
    schema: &KeySchema,
    sku: &SkuId,
    segment: u16,
    partition: u16,
    redis: Levels,
    ledger: Levels,
    unsettled: i64,
) -> Result<Result<(), String>> {
    if unsettled != 0 {
        return Ok(Err(format!(
            "{unsettled} stream entries unsettled or dead-lettered"
        )));
    }
    if redis.initial != ledger.initial {
        return Ok(Err("initial stock differs".to_owned()));
    }
    if ledger.available < 0 || ledger.reserved < 0 || ledger.ordered < 0 || ledger.sold < 0 {
        return Ok(Err("ledger levels do not balance".to_owned()));
    }
    if ledger.available > redis.available {
        return Ok(Err(
            "ledger has more available than redis: a repair would create stock".to_owned(),
        ));
    }
    let key = schema.sku(flashcart_core::Partition::new(partition), sku);
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(REPAIR).arg(1).arg(key);
    cmd.arg(&KeySchema::segment_level_fields(segment)[..]);
    for v in [
        redis.available,
        redis.reserved,
        redis.ordered,
        redis.sold,
        ledger.available,
        ledger.reserved,
        ledger.ordered,
        ledger.sold,
    ] {
        cmd.arg(v);
    }
    let done = reply::int(&conn.query(&cmd).await?).unwrap_or(0);
    Ok(if done == 1 {
        Ok(())
    } else {
        Err("redis changed meanwhile".to_owned())
    })
}
