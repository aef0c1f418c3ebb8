//! Baselines called through redis-rs, on the same Redis as the sale, through the same
//! [`crate::driver`]:
//!
//! - [`MinimalDeduct`]: the least a deduct can be — `HGET` the stock, `HINCRBY -1`, `XADD` an
//!   event — as a Redis Function under its own library name (`fcbench`), so the ratio to it
//!   says what flashcart's idempotency, sale window, limits, segments, reservation record
//!   and timer cost on top;
//! - [`DirectReserve`]: flashcart's own `fc_reserve` through `flashcart-inventory`, so the
//!   ratio to it says what the edge (HTTP, the host, a WebAssembly instance) costs on top.
//!
//! Both share one multiplexed connection among all virtual users, as the host shares one per
//! Redis address.

use std::sync::Arc;

use anyhow::Context as _;
use flashcart_core::Rejection;
use flashcart_core::exec::RedisExecutor;
use flashcart_core::ids::{BuyerId, IdempotencyKey, Quantity, SkuId};
use flashcart_core::inventory::{Now, ReserveRequest};
use flashcart_inventory::{NativeInventory, RedisConn, info_field};
use serde::Serialize;

use crate::driver::{Failure, Outcome, Target};

/// The minimal deduct's library: its name differs from flashcart's, so loading it never
/// touches `flashcart`'s functions.
pub const MINIMAL_LIBRARY: &str = r"#!lua name=fcbench
redis.register_function('fcbench_deduct', function(keys, args)
  local stock = tonumber(redis.call('HGET', keys[1], 'stock') or '0')
  if stock < 1 then return 0 end
  redis.call('HINCRBY', keys[1], 'stock', -1)
  redis.call('XADD', keys[2], '*', 'type', 'deducted', 'buyer', args[1])
  return 1
end)
";

/// The minimal deduct's keys: one hash tag, so it would run on a cluster too.
const STOCK_KEY: &str = "{fcbench}:stock";
const EVENTS_KEY: &str = "{fcbench}:events";

/// `fcbench_deduct` over redis-rs.
#[derive(Debug)]
pub struct MinimalDeduct {
    conn: RedisConn,
    prefix: String,
}

impl MinimalDeduct {
    /// Loads the library (replacing an older copy) and stocks it with plenty of units.
    ///
    /// # Errors
    /// When Redis refuses.
    pub async fn prepare(conn: RedisConn, prefix: &str) -> anyhow::Result<Self> {
        conn.query(
            redis::cmd("FUNCTION")
                .arg("LOAD")
                .arg("REPLACE")
                .arg(MINIMAL_LIBRARY),
        )
        .await
        .context("loading the minimal deduct function (library fcbench)")?;
        conn.query(
            redis::cmd("HSET")
                .arg(STOCK_KEY)
                .arg("stock")
                .arg(1_000_000_000_000u64),
        )
        .await
        .context("stocking the minimal deduct")?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
        })
    }

    /// Deletes its event stream (it has no consumer; this bounds its memory between runs).
    ///
    /// # Errors
    /// When Redis refuses.
    pub async fn clear_events(&self) -> anyhow::Result<()> {
        self.conn
            .query(redis::cmd("DEL").arg(EVENTS_KEY))
            .await
            .context("deleting the minimal deduct's events")?;
        Ok(())
    }
}

impl Target for MinimalDeduct {
    type User = RedisConn;

    async fn connect(&self, _: usize) -> anyhow::Result<RedisConn> {
        Ok(self.conn.clone())
    }

    async fn call(&self, conn: &mut RedisConn, i: u64) -> Outcome {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("fcbench_deduct")
            .arg(2)
            .arg(STOCK_KEY)
            .arg(EVENTS_KEY)
            .arg(format!("{}-{i}", self.prefix));
        match conn.query(&cmd).await {
            Ok(redis::Value::Int(1)) => Outcome::status(201),
            Ok(redis::Value::Int(0)) => Outcome::Answer {
                status: 409,
                sold_out: true,
                from_edge_flag: false,
            },
            Ok(_) => Outcome::status(500),
            Err(e) if e.is_timeout() => Outcome::Failed(Failure::Timeout),
            Err(_) => Outcome::Failed(Failure::Transport),
        }
    }
}

/// `fc_reserve` (the deduct's atomic call) through `flashcart-inventory`: request `i` is a new
/// buyer and key `<prefix>-<i>`, one unit.
#[derive(Debug)]
pub struct DirectReserve {
    inventory: Arc<NativeInventory>,
    sku: SkuId,
    prefix: String,
}

impl DirectReserve {
    /// Reserves from `sku` (loaded by the caller).
    pub fn new(inventory: Arc<NativeInventory>, sku: SkuId, prefix: &str) -> Self {
        Self {
            inventory,
            sku,
            prefix: prefix.to_owned(),
        }
    }
}

impl Target for DirectReserve {
    type User = ();

    async fn connect(&self, _: usize) -> anyhow::Result<()> {
        // Proves the shared connection works before the clock starts.
        self.inventory
            .executor()
            .execute("PING", Vec::new())
            .await
            .context("PING")?;
        Ok(())
    }

    async fn call(&self, _: &mut (), i: u64) -> Outcome {
        let id = format!("{}-{i}", self.prefix);
        let (Ok(buyer), Ok(key), Ok(quantity)) = (
            BuyerId::parse(&id),
            IdempotencyKey::parse(&id),
            Quantity::new(1),
        ) else {
            return Outcome::status(400);
        };
        let request = ReserveRequest {
            request: None,
            sku: self.sku.clone(),
            buyer,
            quantity,
            key,
            fingerprint: "bench".into(),
        };
        match self.inventory.reserve(&request, Now::Server).await {
            Ok(_) => Outcome::status(201),
            Err(Rejection::Unavailable(_) | Rejection::Unreachable(_)) => {
                Outcome::Failed(Failure::Transport)
            }
            Err(rejection) => Outcome::Answer {
                status: rejection.status(),
                sold_out: matches!(rejection, Rejection::SoldOut),
                from_edge_flag: false,
            },
        }
    }
}

/// A kind of stall Redis's latency monitor saw (`LATENCY LATEST`): a command or an internal
/// event (`aof-write`, `aof-fsync-always`, `fork`, `expire-cycle`, …) that took at least the
/// monitor's threshold.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RedisStall {
    /// The event's name.
    pub event: String,
    /// When its latest stall happened, Unix seconds.
    pub latest_at_unix_s: u64,
    /// How long its latest stall took, ms.
    pub latest_ms: u64,
    /// Its longest stall since the last reset, ms.
    pub max_ms: u64,
}

/// Turns on Redis's latency monitor for stalls of `threshold_ms` and longer (only on a Redis
/// the bench started: it changes the server's configuration).
///
/// # Errors
/// When Redis refuses the command.
pub async fn watch_stalls(conn: &RedisConn, threshold_ms: u64) -> anyhow::Result<()> {
    conn.query(
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("latency-monitor-threshold")
            .arg(threshold_ms),
    )
    .await
    .context("CONFIG SET latency-monitor-threshold")?;
    Ok(())
}

/// Forgets the stalls seen so far, so the next [`stalls`] covers one run.
///
/// # Errors
/// When Redis refuses the command.
pub async fn forget_stalls(conn: &RedisConn) -> anyhow::Result<()> {
    conn.query(redis::cmd("LATENCY").arg("RESET"))
        .await
        .context("LATENCY RESET")?;
    Ok(())
}

/// The stalls Redis's latency monitor saw since the last reset.
///
/// # Errors
/// When Redis refuses the command.
pub async fn stalls(conn: &RedisConn) -> anyhow::Result<Vec<RedisStall>> {
    let latest = conn
        .query(redis::cmd("LATENCY").arg("LATEST"))
        .await
        .context("LATENCY LATEST")?;
    Ok(stalls_from(&latest))
}

/// Reads `LATENCY LATEST`'s reply: one `[event, timestamp, latest ms, max ms]` per event.
fn stalls_from(reply: &redis::Value) -> Vec<RedisStall> {
    let redis::Value::Array(events) = reply else {
        return Vec::new();
    };
    events
        .iter()
        .filter_map(|event| {
            let redis::Value::Array(fields) = event else {
                return None;
            };
            let number = |v: &redis::Value| match v {
                redis::Value::Int(n) => u64::try_from(*n).ok(),
                _ => None,
            };
            let name = match fields.first()? {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                redis::Value::SimpleString(s) => s.clone(),
                _ => return None,
            };
            Some(RedisStall {
                event: name,
                latest_at_unix_s: number(fields.get(1)?)?,
                latest_ms: number(fields.get(2)?)?,
                max_ms: number(fields.get(3)?)?,
            })
        })
        .collect()
}

/// Calls per command name since Redis started (`INFO commandstats`), e.g. `fcall`.
///
/// # Errors
/// When Redis cannot be reached.
pub async fn command_calls(
    conn: &RedisConn,
) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let text = conn
        .info("commandstats")
        .await
        .context("INFO commandstats")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect())
}

/// Redis's append-only file at one moment (`INFO persistence`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AofState {
    /// What Redis has appended, bytes: `aof_current_size` (the base file and every
    /// increment written since) plus `aof_buffer_length` (appended but not yet written).
    /// The buffer counts because with `appendfsync everysec` Redis postpones writing it for
    /// up to 2 s while the previous fsync is still running; a slow disk leaves most of a
    /// short run there.
    pub size: u64,
    /// `aof_rewrites`: rewrites since the server started.
    pub rewrites: u64,
    /// `aof_rewrite_in_progress`.
    pub rewriting: bool,
}

/// What a run appended to the AOF: the figure to size `auto-aof-rewrite-min-size` by.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AofGrowth {
    /// Bytes appended during the run; `None` when a rewrite ran meanwhile (it replaces the
    /// files, so the size difference says nothing).
    pub appended_bytes: Option<u64>,
    /// Of those, per request.
    pub bytes_per_request: Option<f64>,
    /// Rewrites that started or finished during the run.
    pub rewrites: u64,
}

impl AofGrowth {
    /// The growth from `before` to `after`, over `requests` requests.
    pub fn between(before: AofState, after: AofState, requests: u64) -> Self {
        let rewrites = after.rewrites.saturating_sub(before.rewrites)
            + u64::from(after.rewriting && !before.rewriting);
        let rewritten = rewrites > 0 || before.rewriting || after.size < before.size;
        let appended_bytes = (!rewritten).then(|| after.size - before.size);
        Self {
            appended_bytes,
            bytes_per_request: appended_bytes.map(|b| b as f64 / requests.max(1) as f64),
            rewrites,
        }
    }
}

/// The AOF's size and rewrites now; `None` when Redis runs without the AOF.
///
/// # Errors
/// When Redis cannot be reached.
pub async fn aof(conn: &RedisConn) -> anyhow::Result<Option<AofState>> {
    let info = conn.info("persistence").await.context("INFO persistence")?;
    Ok(aof_from(&info))
}

fn aof_from(info: &str) -> Option<AofState> {
    let field = |name: &str| info_field::<u64>(info, name);
    if field("aof_enabled")? != 1 {
        return None;
    }
    Some(AofState {
        size: field("aof_current_size")? + field("aof_buffer_length").unwrap_or(0),
        rewrites: field("aof_rewrites").unwrap_or(0),
        rewriting: field("aof_rewrite_in_progress") == Some(1),
    })
}

/// A field of `INFO server` (e.g. `process_id`, `redis_version`).
///
/// # Errors
/// When Redis cannot be reached.
pub async fn server_info(conn: &RedisConn, field: &str) -> anyhow::Result<Option<String>> {
    let text = conn.info("server").await.context("INFO server")?;
    Ok(info_field(&text, field))
}

#[cfg(test)]
mod tests {
    use flashcart_inventory::Target as RedisTarget;
    use flashcart_testkit::RedisServer;

    use super::*;

    #[test]
    fn latency_latest_is_read_event_by_event() {
        use redis::Value::{Array, BulkString, Int};
        let reply = Array(vec![
            Array(vec![
                BulkString(b"aof-write".to_vec()),
                Int(1_700_000_007),
                Int(12),
                Int(30),
            ]),
            Array(vec![BulkString(b"broken".to_vec()), Int(1)]),
        ]);
        assert_eq!(
            stalls_from(&reply),
            vec![RedisStall {
                event: "aof-write".into(),
                latest_at_unix_s: 1_700_000_007,
                latest_ms: 12,
                max_ms: 30,
            }]
        );
        assert!(stalls_from(&redis::Value::Nil).is_empty());
    }

    #[test]
    fn a_rewrite_during_the_run_leaves_the_growth_unknown() {
        let at = |size, rewrites, rewriting| AofState {
            size,
            rewrites,
            rewriting,
        };
        let grown = AofGrowth::between(at(1_000, 2, false), at(41_000, 2, false), 100);
        assert_eq!(grown.appended_bytes, Some(40_000));
        assert_eq!(grown.bytes_per_request, Some(400.0));
        assert_eq!(grown.rewrites, 0);
        for (before, after) in [
            (at(1_000, 2, false), at(41_000, 3, false)),
            (at(1_000, 2, false), at(41_000, 2, true)),
            (at(1_000, 2, true), at(41_000, 3, false)),
            (at(50_000, 2, true), at(41_000, 2, true)),
        ] {
            let growth = AofGrowth::between(before, after, 100);
            assert_eq!(growth.appended_bytes, None, "{before:?} → {after:?}");
            assert_eq!(growth.bytes_per_request, None, "{before:?} → {after:?}");
        }
        let info = "# Persistence\r\naof_enabled:1\r\naof_rewrite_in_progress:0\r\n\
                    aof_rewrites:4\r\naof_current_size:2048\r\n";
        assert_eq!(aof_from(info), Some(at(2048, 4, false)));
        // A write postponed behind a running fsync: what waits in the buffer is appended too.
        let postponed = "aof_enabled:1\r\naof_current_size:152\r\naof_buffer_length:12870\r\n";
        assert_eq!(aof_from(postponed), Some(at(13_022, 0, false)));
        assert_eq!(aof_from("aof_enabled:0\r\n"), None);
    }

    #[tokio::test]
    async fn the_aof_growth_of_writes_is_seen_and_a_rewrite_noticed() -> anyhow::Result<()> {
        let redis = tokio::task::spawn_blocking(RedisServer::start).await??;
        let conn = RedisConn::connect(&RedisTarget::Single(redis.url())).await?;
        let before = aof(&conn).await?.expect("the test Redis runs with the AOF");
        for i in 0..100 {
            conn.query(redis::cmd("SET").arg(format!("k{i}")).arg("x".repeat(100)))
                .await?;
        }
        let after = aof(&conn).await?.expect("the AOF");
        let growth = AofGrowth::between(before, after, 100);
        let per_set = growth.bytes_per_request.expect("no rewrite ran");
        // `*3 $3 SET $2 k1 $100 xxx…`: a little over the 100-byte value.
        assert!((100.0..200.0).contains(&per_set), "{growth:?}");
        conn.query(&redis::cmd("BGREWRITEAOF")).await?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let rewritten = loop {
            let now = aof(&conn).await?.expect("the AOF");
            if now.rewrites > after.rewrites && !now.rewriting {
                break now;
            }
            assert!(std::time::Instant::now() < deadline, "no rewrite in 60 s");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        let growth = AofGrowth::between(after, rewritten, 100);
        assert_eq!(growth.appended_bytes, None, "{growth:?}");
        assert_eq!(growth.rewrites, 1);
        Ok(())
    }

    #[tokio::test]
    async fn a_slow_command_is_seen_as_a_stall_and_forgotten_on_reset() -> anyhow::Result<()> {
        let redis = tokio::task::spawn_blocking(RedisServer::start).await??;
        let conn = RedisConn::connect(&RedisTarget::Single(redis.url())).await?;
        watch_stalls(&conn, 10).await?;
        // A script that keeps Redis busy for 60 ms: one command over the threshold.
        let busy = "local t = redis.call('TIME') \
                    local start = t[1] * 1000000 + t[2] \
                    repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start >= 60000 \
                    return 1";
        conn.query(redis::cmd("EVAL").arg(busy).arg(0)).await?;
        let seen = stalls(&conn).await?;
        let command = seen
            .iter()
            .find(|s| s.event == "command")
            .unwrap_or_else(|| panic!("no command stall in {seen:?}"));
        assert!(command.max_ms >= 60, "{command:?}");
        forget_stalls(&conn).await?;
        assert_eq!(stalls(&conn).await?, Vec::new());
        Ok(())
    }
}
