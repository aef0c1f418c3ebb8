//! The gate never forgets what the ledger knows: Redis killed with SIGKILL, its AOF cut back to
//! an earlier size (the second `appendfsync everysec` may lose on a power cut), restarted on
//! the same port and directory. Settlement had committed the lost events; the partitions it
//! guards are fenced until it has checked them, and restored from the ledger where Redis went
//! back in time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use flashcart_core::ids::ReservationId;
use flashcart_core::inventory::PaymentOutcome;
use flashcart_core::recovery::Verified;
use flashcart_core::{Now, Partition, Rejection};
use flashcart_inventory::NativeInventory;
use flashcart_settlement::recovery::{Image, Recovery};
use flashcart_settlement::{Ledger, Metrics};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::support::{
    Db, Env, T0, drain, on_both, order_req, payment, reserve_req, spec, unique_sku,
};

const STOCK: u64 = 300;

/// The settlement service (`run`) in-process, stopped on drop of its sender.
struct Service {
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Service {
    fn start(env: &Env) -> Self {
        let mut config = flashcart_settlement::Config::new(&env.redis.url(), &env.ledger_url);
        config.consumer = Some("powercut".into());
        config.maintain_every = Duration::from_millis(100);
        config.claim_idle = Duration::from_millis(500);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(flashcart_settlement::run(config, async {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.task).await???;
        Ok(())
    }
}

/// Waits until the ledger holds every event the streams ever got.
async fn settled(env: &Env, ledger: &Ledger) -> Result<()> {
    let total = i64::try_from(env.entries_added().await?)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while ledger.counts().await?.applied_events < total {
        if Instant::now() > deadline {
            bail!("settlement did not commit {total} events in 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Waits until no partition is fenced.
/// Settlement's recovery over `inv` and `ledger`, as the service builds it.
fn recovery_over(inv: &NativeInventory, ledger: &Ledger) -> Recovery {
    Recovery::new(
        inv.clone(),
        ledger.clone(),
        Arc::new(Metrics::default()),
        "settlement",
    )
}

/// Loads `sku` with the suite's stock and windows.
async fn load(inv: &NativeInventory, sku: &flashcart_core::ids::SkuId) -> Result<()> {
    inv.load_sku(&spec(sku, STOCK, 600_000, 900_000), Now::At(T0))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

async fn unfenced(inv: &NativeInventory) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut fenced = Vec::new();
        for p in inv.schema().partitions() {
            if inv.is_fenced(p).await.map_err(|e| anyhow::anyhow!("{e}"))? {
                fenced.push(p);
            }
        }
        if fenced.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("partitions still fenced after 60 s: {fenced:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until reconciliation finds no drift (settlement caught up), and returns its report.
async fn reconciled(
    inv: &NativeInventory,
    ledger: &Ledger,
) -> Result<flashcart_settlement::reconcile::Report> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let report =
            flashcart_settlement::reconcile::reconcile(inv, ledger, "settlement", false).await?;
        if !report.has_drift() {
            return Ok(report);
        }
        if Instant::now() > deadline {
            bail!("drift after 60 s:\n{}", report.render());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A simulated power cut: SIGKILL, the AOF cut back to `len` bytes of `file`, restart.
fn power_cut(env: &mut Env, file: &std::path::Path, len: u64) -> Result<()> {
    env.redis.kill()?;
    env.redis.cut_aof(file, len)?;
    env.redis.restart()
}

/// Buyers `from..to` reserve `qty` units each; every 3rd orders, every 6th pays.
/// Returns the reservations.
async fn sell(
    inv: &NativeInventory,
    sku: &flashcart_core::ids::SkuId,
    from: u64,
    to: u64,
    qty: u64,
) -> Result<Vec<ReservationId>> {
    let mut out = Vec::new();
    for i in from..to {
        let now = Now::At(T0 + 1_000 + i);
        let buyer = format!("b{i}");
        let r = inv
            .reserve(&reserve_req(sku, &buyer, qty, &format!("r{i}")), now)
            .await
            .map_err(|e| anyhow::anyhow!("reserve {i}: {e}"))?;
        if i.is_multiple_of(3) {
            let o = inv
                .create_order(&order_req(&r.id, &buyer, &format!("o{i}")), now)
                .await
                .map_err(|e| anyhow::anyhow!("order {i}: {e}"))?;
            if i.is_multiple_of(6) {
                inv.apply_payment(&payment(&o.id, &format!("ev{i}"), o.amount), now)
                    .await
                    .map_err(|e| anyhow::anyhow!("pay {i}: {e}"))?;
            }
        }
        out.push(r.id);
    }
    Ok(out)
}

/// New buyers take one unit each until the SKU is sold out; returns how many got one.
async fn sell_out(inv: &NativeInventory, sku: &flashcart_core::ids::SkuId) -> Result<u64> {
    let mut sold = 0;
    for i in 0..2 * STOCK {
        let req = reserve_req(sku, &format!("late{i}"), 1, &format!("late{i}"));
        match inv.reserve(&req, Now::At(T0 + 500_000 + i)).await {
            Ok(_) => sold += 1,
            Err(Rejection::SoldOut) => return Ok(sold),
            Err(e) => bail!("late reserve {i}: {e}"),
        }
    }
    bail!("never sold out")
}

/// Units the ledger holds as reserved, ordered or sold, over every segment of `sku`.
async fn taken_in_ledger(ledger: &Ledger, sku: &str) -> Result<i64> {
    Ok(ledger
        .levels(sku)
        .await?
        .iter()
        .map(|l| l.reserved + l.ordered + l.sold)
        .sum())
}

async fn a_power_cut_never_oversells(mut env: Env) -> Result<()> {
    let inv = env.inventory().await?;
    let ledger = env.ledger().await?;
    let sku = unique_sku("cut");
    let mut terms = spec(&sku, STOCK, 600_000, 900_000);
    terms.per_buyer_limit = 2;
    inv.load_sku(&terms, Now::At(T0))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let service = Service::start(&env);

    // 150 units that survive the cut, then 100 that Redis loses after settlement committed them.
    sell(&inv, &sku, 0, 150, 1).await?;
    settled(&env, &ledger).await?;
    let (file, len) = env.redis.aof_tail()?;
    let lost = sell(&inv, &sku, 150, 200, 2).await?;
    settled(&env, &ledger).await?;
    service.stop().await?;
    assert_eq!(taken_in_ledger(&ledger, sku.as_str()).await?, 250);

    power_cut(&mut env, &file, len)?;
    let inv = env.inventory().await?;
    // Redis went back in time: it sees ~150 units taken, the ledger 250.
    let stock = inv.stock(&sku).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(
        stock.available() > STOCK - 250,
        "the cut lost writes: {} available",
        stock.available()
    );
    // Fenced until settlement checked: every decision, in every partition, writes nothing.
    let before = flashcart_testkit::snapshot(&env.redis)?;
    for i in 0..20 {
        let req = reserve_req(&sku, &format!("early{i}"), 1, &format!("early{i}"));
        assert_eq!(
            inv.reserve(&req, Now::At(T0 + 400_000)).await,
            Err(Rejection::Fenced),
            "buyer early{i}"
        );
    }
    assert_eq!(
        inv.load_sku(&spec(&unique_sku("new"), 5, 600_000, 900_000), Now::At(T0))
            .await,
        Err(Rejection::Fenced)
    );
    assert!(
        before == flashcart_testkit::snapshot(&env.redis)?,
        "fenced calls wrote nothing"
    );

    let service = Service::start(&env);
    unfenced(&inv).await?;

    // What the ledger knew is back: the lost reservations (replayed by their key), their
    // orders and payments, the buyers' limits.
    for (k, id) in lost.iter().enumerate() {
        let i = 150 + k as u64;
        let replay = inv
            .reserve(
                &reserve_req(&sku, &format!("b{i}"), 2, &format!("r{i}")),
                Now::At(T0 + 1_000 + i),
            )
            .await
            .map_err(|e| anyhow::anyhow!("replay {i}: {e}"))?;
        assert_eq!(&replay.id, id);
        assert!(replay.replayed);
        assert_eq!(
            inv.reserve(
                &reserve_req(&sku, &format!("b{i}"), 1, &format!("more{i}")),
                Now::At(T0 + 300_000)
            )
            .await,
            Err(Rejection::LimitReached { remaining: 0 }),
            "buyer b{i}'s limit was restored"
        );
        if i.is_multiple_of(3) {
            let order = inv
                .order(&id.order_id())
                .await
                .map_err(|e| anyhow::anyhow!("order {i}: {e}"))?;
            let state = ledger.order_state(&order.id.to_string()).await?;
            assert_eq!(Some(order.state.as_str()), state.as_deref());
        }
        if i.is_multiple_of(6) {
            let (outcome, replayed) = inv
                .apply_payment(
                    &payment(&id.order_id(), &format!("ev{i}"), 2 * 2_500),
                    Now::At(T0 + 300_000),
                )
                .await
                .map_err(|e| anyhow::anyhow!("pay {i}: {e}"))?;
            assert_eq!((outcome, replayed), (PaymentOutcome::Paid, true));
        }
    }

    // The sale goes on from the ledger's picture: exactly the 50 units nobody holds are sold.
    assert_eq!(sell_out(&inv, &sku).await?, STOCK - 250);
    let stock = inv.stock(&sku).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(stock.invariant_holds());
    assert_eq!(stock.available(), 0);
    // (Entries-added went back with the cut, so "settled" is: the ledger agrees with Redis.)
    let report = reconciled(&inv, &ledger).await?;
    assert!(report.records >= 300, "{}", report.render());
    assert_eq!(
        taken_in_ledger(&ledger, sku.as_str()).await?,
        i64::try_from(STOCK)?,
        "oversold = 0"
    );
    service.stop().await
}
on_both!(a_power_cut_never_oversells);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_lost_nothing_is_checked_not_restored() -> Result<()> {
    let mut env = Env::start(Db::Sqlite)?;
    let inv = env.inventory().await?;
    let ledger = env.ledger().await?;
    let sku = unique_sku("kill");
    load(&inv, &sku).await?;
    let service = Service::start(&env);
    sell(&inv, &sku, 0, 60, 1).await?;
    settled(&env, &ledger).await?;
    service.stop().await?;

    // SIGKILL only: the kernel keeps what Redis wrote, nothing is lost.
    env.redis.kill()?;
    env.redis.restart()?;
    let inv = env.inventory().await?;
    let req = reserve_req(&sku, "after", 1, "after");
    assert_eq!(
        inv.reserve(&req, Now::At(T0 + 400_000)).await,
        Err(Rejection::Fenced)
    );

    let metrics = Arc::new(Metrics::default());
    let recovery = Recovery::new(inv.clone(), ledger.clone(), metrics.clone(), "settlement");
    let pass = recovery.pass().await?;
    assert_eq!(pass.lifted.len(), 16, "{pass:?}");
    assert!(
        pass.restored.is_empty() && pass.fenced.is_empty(),
        "{pass:?}"
    );
    assert_eq!(
        metrics.value("flashcart_settle_partitions_restored_total"),
        Some(0.0)
    );
    inv.reserve(&req, Now::At(T0 + 400_000))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let report =
        flashcart_settlement::reconcile::reconcile(&inv, &ledger, "settlement", false).await?;
    // The new reservation is not settled yet (no consumer runs): one in flight, levels aside.
    assert!(report.record_drift.is_empty(), "{}", report.render());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_never_settled_are_never_fenced() -> Result<()> {
    let mut env = Env::start(Db::Sqlite)?;
    let inv = env.inventory().await?;
    let sku = unique_sku("edge");
    inv.load_sku(&spec(&sku, 50, 600_000, 900_000), Now::At(T0))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    sell(&inv, &sku, 0, 10, 1).await?;
    let (file, len) = env.redis.aof_tail()?;
    sell(&inv, &sku, 10, 20, 1).await?;
    power_cut(&mut env, &file, len)?;
    let inv = env.inventory().await?;
    for p in inv.schema().partitions() {
        assert!(!inv.is_fenced(p).await.map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    for i in 100..120 {
        inv.reserve(
            &reserve_req(&sku, &format!("b{i}"), 1, &format!("r{i}")),
            Now::At(T0 + 1_000 + i),
        )
        .await
        .map_err(|e| anyhow::anyhow!("reserve after restart: {e}"))?;
    }
    Ok(())
}

/// Costs of a fenced check on the hot path: a deduct in a partition this process has checked
/// runs the commands it ran before fencing existed — its one `EXISTS` is its own record's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checked_partition_costs_no_extra_command() -> Result<()> {
    let env = Env::start(Db::Sqlite)?;
    let inv = env.inventory().await?;
    let ledger = env.ledger().await?;
    let sku = unique_sku("cost");
    inv.load_sku(&spec(&sku, 500, 600_000, 900_000), Now::At(T0))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let recovery = recovery_over(&inv, &ledger);
    recovery.guard().await?;
    // Warm every partition once (a buyer per home partition).
    sell(&inv, &sku, 0, 200, 1).await?;
    let exists = |env: &Env| -> Result<u64> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut env.redis.connection()?)?;
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_exists:calls="))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .context("cmdstat_exists")
    };
    let before = exists(&env)?;
    for i in 1_000..1_100 {
        inv.reserve(
            &reserve_req(&sku, &format!("c{i}"), 1, &format!("c{i}")),
            Now::At(T0 + 2_000),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    assert_eq!(
        exists(&env)? - before,
        100,
        "one EXISTS per deduct: its record"
    );
    Ok(())
}

async fn an_interrupted_restore_converges(mut env: Env) -> Result<()> {
    let inv = env.inventory().await?;
    let ledger = env.ledger().await?;
    let sku = unique_sku("halfway");
    load(&inv, &sku).await?;
    let recovery = recovery_over(&inv, &ledger);
    recovery.guard().await?;
    let mut consumer = env.consumer(env.config("halfway")).await?;
    sell(&inv, &sku, 0, 40, 1).await?;
    drain(&mut consumer).await?;
    let (file, len) = env.redis.aof_tail()?;
    sell(&inv, &sku, 40, 100, 1).await?;
    drain(&mut consumer).await?;
    drop(consumer);

    power_cut(&mut env, &file, len)?;
    let inv = env.inventory().await?;
    let recovery = recovery_over(&inv, &ledger);
    // Whatever deliveries the cut lost are settled again (skipped as applied) first.
    let mut consumer = env.consumer(env.config("halfway")).await?;
    drain(&mut consumer).await?;

    // The partitions that went back in time stay fenced when checked (the others open).
    let mut behind: Vec<Partition> = Vec::new();
    for p in inv.schema().partitions() {
        let highest = ledger.highest_applied(p).await?.map(|id| id.to_string());
        match inv
            .verify(p, highest.as_deref())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
        {
            Verified::Behind { .. } => behind.push(p),
            Verified::Lifted | Verified::Open => {}
        }
    }
    assert!(!behind.is_empty(), "the cut lost events the ledger has");
    // A restore that dies after a few writes leaves the partition fenced…
    let image = Image::read(&ledger).await?;
    let p = behind[0];
    let highest = ledger
        .highest_applied(p)
        .await?
        .map(|id| id.to_string())
        .unwrap_or_default();
    let stopped = recovery.restore(p, &highest, &image, 3).await?;
    assert!(stopped.is_err(), "{stopped:?}");
    assert!(inv.is_fenced(p).await.map_err(|e| anyhow::anyhow!("{e}"))?);
    // …and a second one, over the whole server, converges to the ledger.
    let pass = recovery.pass().await?;
    assert!(pass.fenced.is_empty(), "{pass:?}");
    assert_eq!(pass.restored, behind, "{pass:?}");
    // A restore of a partition that is not fenced is refused and writes nothing.
    let before = flashcart_testkit::snapshot(&env.redis)?;
    let refused = recovery.restore(p, &highest, &image, usize::MAX).await?;
    assert!(refused.is_err(), "{refused:?}");
    assert!(before == flashcart_testkit::snapshot(&env.redis)?);

    let report =
        flashcart_settlement::reconcile::reconcile(&inv, &ledger, "settlement", false).await?;
    assert!(!report.has_drift(), "{}", report.render());
    assert_eq!(sell_out(&inv, &sku).await?, STOCK - 100);
    Ok(())
}
on_both!(an_interrupted_restore_converges);

async fn a_redis_that_lost_everything_is_rebuilt_from_the_ledger(mut env: Env) -> Result<()> {
    let inv = env.inventory().await?;
    let ledger = env.ledger().await?;
    let sku = unique_sku("empty");
    load(&inv, &sku).await?;
    let recovery = recovery_over(&inv, &ledger);
    recovery.guard().await?;
    let mut consumer = env.consumer(env.config("empty")).await?;
    sell(&inv, &sku, 0, 120, 1).await?;
    drain(&mut consumer).await?;
    drop(consumer);

    // The disk is gone: Redis starts empty — no SKU, no guard, no function library.
    env.redis.kill()?;
    env.redis.lose_data()?;
    env.redis.restart()?;
    let inv = env.inventory().await?; // loads the library again
    let recovery = recovery_over(&inv, &ledger);
    let pass = recovery.pass().await?;
    assert_eq!(pass.restored.len(), 16, "{pass:?}");
    assert!(pass.fenced.is_empty(), "{pass:?}");
    let report =
        flashcart_settlement::reconcile::reconcile(&inv, &ledger, "settlement", false).await?;
    assert!(!report.has_drift(), "{}", report.render());
    // The same terms load as `unchanged`: the fingerprint came back with them.
    assert_eq!(
        inv.load_sku(&spec(&sku, STOCK, 600_000, 900_000), Now::At(T0))
            .await,
        Ok(flashcart_core::inventory::LoadOutcome::Unchanged)
    );
    // Settlement reads the new streams (groups recreated), and the sale goes on.
    assert_eq!(sell_out(&inv, &sku).await?, STOCK - 120);
    let mut consumer = env.consumer(env.config("empty")).await?;
    drain(&mut consumer).await?;
    assert_eq!(
        taken_in_ledger(&ledger, sku.as_str()).await?,
        i64::try_from(STOCK)?
    );
    Ok(())
}
on_both!(a_redis_that_lost_everything_is_rebuilt_from_the_ledger);
