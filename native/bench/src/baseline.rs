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
use flashcart_inventory::{NativeInventory, RedisConn};

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

/// Calls per command name since Redis started (`INFO commandstats`), e.g. `fcall`.
///
/// # Errors
/// When Redis cannot be reached.
pub async fn command_calls(
    conn: &RedisConn,
) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let info = conn
        .query(redis::cmd("INFO").arg("commandstats"))
        .await
        .context("INFO commandstats")?;
    let text = match info {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::VerbatimString { text, .. } => text,
        other => format!("{other:?}"),
    };
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

/// A field of `INFO server` (e.g. `process_id`, `redis_version`).
///
/// # Errors
/// When Redis cannot be reached.
pub async fn server_info(conn: &RedisConn, field: &str) -> anyhow::Result<Option<String>> {
    let info = conn
        .query(redis::cmd("INFO").arg("server"))
        .await
        .context("INFO server")?;
    let text = match info {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::VerbatimString { text, .. } => text,
        other => format!("{other:?}"),
    };
    Ok(text.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|r| r.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
    }))
}
