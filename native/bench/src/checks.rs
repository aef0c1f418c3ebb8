//! What every run checks after the load: nothing oversold, the books balance
//! (`initial = available + reserved + ordered + sold`), and — once settlement has drained the
//! streams — the ledger agrees with Redis (settlement's own reconciliation).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use flashcart_core::ids::SkuId;
use flashcart_core::keys::KeySchema;
use flashcart_inventory::{NativeInventory, RedisConn};
use serde::Serialize;

/// Stock levels of one SKU, in total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Units loaded.
    pub initial: u64,
    /// Free to reserve.
    pub available: u64,
    /// Held by reservations.
    pub reserved: u64,
    /// In unpaid orders.
    pub ordered: u64,
    /// Paid for.
    pub sold: u64,
}

impl Totals {
    /// Units no longer available: reserved, ordered or sold.
    pub fn taken(&self) -> u64 {
        self.reserved + self.ordered + self.sold
    }
}

/// One SKU the bench sold from.
#[derive(Debug, Clone, Serialize)]
pub struct SkuCheck {
    /// The SKU.
    pub sku: String,
    /// Which runs used it: `sustained`, `drop` or `fc_reserve`.
    pub regime: String,
    /// Units loaded.
    pub stock: u64,
    /// 201 answers the bench counted for it.
    pub created: u64,
    /// Its requests that got no answer (each may or may not have reserved a unit).
    pub unanswered: u64,
    /// Levels read through the admin API (`GET /v1/admin/skus/{sku}`).
    pub admin: Option<Totals>,
    /// The admin API's own `invariant_holds`.
    pub admin_invariant_holds: Option<bool>,
    /// Levels read from Redis through `flashcart-inventory` (every segment).
    pub redis: Option<Totals>,
    /// The invariant per segment and in total, from Redis.
    pub redis_invariant_holds: Option<bool>,
    /// Units sold beyond the stock: `max(created, taken) − stock`, at least 0.
    pub oversold: u64,
    /// Whether Redis's taken units match the answers: `created ≤ taken ≤ created + unanswered`.
    pub answers_match_levels: bool,
}

impl SkuCheck {
    /// Whether this SKU passed: nothing oversold, the books balance, answers match levels.
    pub fn passed(&self) -> bool {
        self.oversold == 0
            && self.admin_invariant_holds != Some(false)
            && self.redis_invariant_holds != Some(false)
            && (self.admin.is_some() || self.redis.is_some())
            && self.answers_match_levels
    }
}

/// Where the SKU levels are read.
pub struct Readers<'a> {
    /// An edge node and the admin token, for the admin API.
    pub admin: Option<(SocketAddr, &'a str)>,
    /// The inventory over the sale's Redis.
    pub inventory: Option<&'a NativeInventory>,
}

/// Checks one SKU.
///
/// # Errors
/// When a reader fails (unreachable, or the SKU unknown).
pub async fn check_sku(
    readers: &Readers<'_>,
    sku: &str,
    regime: &str,
    stock: u64,
    created: u64,
    unanswered: u64,
) -> anyhow::Result<SkuCheck> {
    let (admin, admin_invariant_holds) = match readers.admin {
        Some((node, token)) => {
            let (status, body) = crate::http::exchange(
                node,
                http::Method::GET,
                &format!("/v1/admin/skus/{sku}"),
                Some(token),
                None,
            )
            .await?;
            if status != 200 {
                bail!("GET /v1/admin/skus/{sku} answered {status}: {body}");
            }
            let t = &body["totals"];
            let field = |name: &str| {
                t[name]
                    .as_u64()
                    .with_context(|| format!("admin GET {sku}: totals.{name} missing: {body}"))
            };
            (
                Some(Totals {
                    initial: field("stock")?,
                    available: field("available")?,
                    reserved: field("reserved")?,
                    ordered: field("ordered")?,
                    sold: field("sold")?,
                }),
                body["invariant_holds"].as_bool(),
            )
        }
        None => (None, None),
    };
    let (redis, redis_invariant_holds) = match readers.inventory {
        Some(inventory) => {
            let id = SkuId::parse(sku).with_context(|| format!("SKU {sku}"))?;
            let levels = inventory
                .stock(&id)
                .await
                .map_err(|r| anyhow::anyhow!("reading {sku} from Redis: {r}"))?;
            (
                Some(Totals {
                    initial: levels.terms.stock,
                    available: levels.available(),
                    reserved: levels.reserved(),
                    ordered: levels.ordered(),
                    sold: levels.sold(),
                }),
                Some(levels.invariant_holds()),
            )
        }
        None => (None, None),
    };
    let taken = redis.or(admin).map_or(0, |t| t.taken());
    Ok(SkuCheck {
        sku: sku.to_owned(),
        regime: regime.to_owned(),
        stock,
        created,
        unanswered,
        admin,
        admin_invariant_holds,
        redis,
        redis_invariant_holds,
        oversold: created.max(taken).saturating_sub(stock),
        answers_match_levels: created <= taken && taken <= created + unanswered,
    })
}

/// The ledger against Redis after settlement drained.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerCheck {
    /// Stream entries still unsettled when the check ran (0 after a drain).
    pub in_flight: i64,
    /// Dead-lettered entries.
    pub dead_letters: i64,
    /// How long the drain took after the last run.
    pub drain_seconds: f64,
    /// SKUs, segments and records compared.
    pub skus: usize,
    /// Segments compared.
    pub segments: usize,
    /// Reservations and orders compared.
    pub records: usize,
    /// Bench SKUs the ledger does not know (should be none).
    pub missing_in_ledger: Vec<String>,
    /// Whether reconciliation found drift.
    pub drift: bool,
    /// The reconciliation's table.
    pub table: String,
}

impl LedgerCheck {
    /// Whether the ledger matches Redis for every bench SKU.
    pub fn passed(&self) -> bool {
        !self.drift
            && self.in_flight == 0
            && self.dead_letters == 0
            && self.missing_in_ledger.is_empty()
    }
}

/// Unsettled entries (lag + pending of `group`) summed over every partition stream.
///
/// # Errors
/// When Redis fails.
pub async fn backlog(conn: &RedisConn, schema: &KeySchema, group: &str) -> anyhow::Result<i64> {
    let mut total = 0;
    for p in schema.partitions() {
        let key = schema.events(p);
        let groups = match conn
            .query(redis::cmd("XINFO").arg("GROUPS").arg(&key))
            .await
        {
            Ok(v) => v,
            // No stream: nothing was ever decided in this partition.
            Err(e)
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
            {
                continue;
            }
            Err(e) => return Err(e).context("XINFO GROUPS"),
        };
        match find_group(&groups, group) {
            Some(fields) => {
                let pending = int_field(&fields, "pending").unwrap_or(0);
                let lag = match int_field(&fields, "lag") {
                    Some(lag) => lag,
                    // Redis cannot say (entries deleted past the group's position): compare
                    // the group's position with the stream's last id instead.
                    None => {
                        let stream = conn
                            .query(redis::cmd("XINFO").arg("STREAM").arg(&key))
                            .await
                            .context("XINFO STREAM")?;
                        let last = text_field(&pairs(&stream), "last-generated-id");
                        i64::from(text_field(&fields, "last-delivered-id") != last)
                    }
                };
                total += lag + pending;
            }
            None => {
                let len = conn
                    .query(redis::cmd("XLEN").arg(&key))
                    .await
                    .context("XLEN")?;
                if let redis::Value::Int(n) = len {
                    total += n;
                }
            }
        }
    }
    Ok(total)
}

/// Key/value pairs of a RESP2 flat array or a RESP3 map.
fn pairs(value: &redis::Value) -> Vec<(String, redis::Value)> {
    match value {
        redis::Value::Map(m) => m
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, v.clone())))
            .collect(),
        redis::Value::Array(items) => items
            .chunks(2)
            .filter_map(|kv| Some((text(kv.first()?)?, kv.get(1)?.clone())))
            .collect(),
        _ => Vec::new(),
    }
}

fn text(value: &redis::Value) -> Option<String> {
    match value {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        redis::Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn int_field(fields: &[(String, redis::Value)], name: &str) -> Option<i64> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| match v {
            redis::Value::Int(i) => Some(*i),
            other => text(other)?.parse().ok(),
        })
}

fn text_field(fields: &[(String, redis::Value)], name: &str) -> Option<String> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| text(v))
}

fn find_group(groups: &redis::Value, group: &str) -> Option<Vec<(String, redis::Value)>> {
    let redis::Value::Array(list) = groups else {
        return None;
    };
    list.iter()
        .map(pairs)
        .find(|fields| text_field(fields, "name").as_deref() == Some(group))
}

/// Waits until settlement has applied every stream entry (backlog 0), up to `within`.
///
/// # Errors
/// When Redis fails or the backlog is not 0 in time (the message says how many remain).
pub async fn drain(
    conn: &RedisConn,
    schema: &KeySchema,
    group: &str,
    within: Duration,
) -> anyhow::Result<Duration> {
    let started = tokio::time::Instant::now();
    loop {
        let left = backlog(conn, schema, group).await?;
        if left == 0 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            bail!(
                "settlement did not drain within {within:?}: {left} stream entries unsettled \
                 (is settlement running against this Redis, group `{group}`?)"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reconciles the ledger at `ledger_url` with Redis, for the bench's SKUs.
///
/// # Errors
/// When the ledger or Redis cannot be read.
pub async fn reconcile(
    inventory: &NativeInventory,
    ledger_url: &str,
    group: &str,
    skus: &[String],
    drain_seconds: f64,
) -> anyhow::Result<LedgerCheck> {
    let ledger = flashcart_settlement::Ledger::open(ledger_url)
        .await
        .with_context(|| {
            format!(
                "opening the ledger at {}",
                flashcart_settlement::redact(ledger_url)
            )
        })?;
    let known = ledger.skus().await.context("listing the ledger's SKUs")?;
    let report = flashcart_settlement::reconcile::reconcile(inventory, &ledger, group, false)
        .await
        .context("reconciling the ledger with Redis")?;
    ledger.close().await;
    Ok(LedgerCheck {
        in_flight: report.in_flight,
        dead_letters: report.dead_letters,
        drain_seconds,
        skus: report.skus,
        segments: report.segments,
        records: report.records,
        missing_in_ledger: skus
            .iter()
            .filter(|s| !known.contains(s))
            .cloned()
            .collect(),
        drift: report.has_drift(),
        table: report.render(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_fields_are_read_from_resp2_and_resp3_replies() {
        let bulk = |s: &str| redis::Value::BulkString(s.as_bytes().to_vec());
        let resp2 = redis::Value::Array(vec![redis::Value::Array(vec![
            bulk("name"),
            bulk("settlement"),
            bulk("pending"),
            redis::Value::Int(3),
            bulk("lag"),
            redis::Value::Int(4),
        ])]);
        let fields = find_group(&resp2, "settlement").expect("group");
        assert_eq!(int_field(&fields, "pending"), Some(3));
        assert_eq!(int_field(&fields, "lag"), Some(4));
        assert!(find_group(&resp2, "other").is_none());

        let resp3 = redis::Value::Array(vec![redis::Value::Map(vec![
            (bulk("name"), bulk("settlement")),
            (bulk("lag"), redis::Value::Nil),
        ])]);
        let fields = find_group(&resp3, "settlement").expect("group");
        assert_eq!(int_field(&fields, "lag"), None);
    }

    #[test]
    fn a_sku_fails_when_oversold_or_unbalanced() {
        let totals = Totals {
            initial: 10,
            available: 0,
            reserved: 10,
            ordered: 0,
            sold: 0,
        };
        let check = SkuCheck {
            sku: "s".into(),
            regime: "drop".into(),
            stock: 10,
            created: 10,
            unanswered: 0,
            admin: Some(totals),
            admin_invariant_holds: Some(true),
            redis: Some(totals),
            redis_invariant_holds: Some(true),
            oversold: 0,
            answers_match_levels: true,
        };
        assert!(check.passed());
        assert!(
            !SkuCheck {
                oversold: 1,
                ..check.clone()
            }
            .passed()
        );
        assert!(
            !SkuCheck {
                redis_invariant_holds: Some(false),
                ..check.clone()
            }
            .passed()
        );
        assert!(
            !SkuCheck {
                admin: None,
                redis: None,
                ..check
            }
            .passed()
        );
    }
}
