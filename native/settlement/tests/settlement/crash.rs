//! Crash safety: settlement runs as a child process over ≥ 20 000 real events and is killed
//! with SIGKILL at random moments — from outside at random times, and from inside right after
//! a commit and before its XACK — then restarted, until everything is settled. At the end the
//! ledger holds every event exactly once and reconciliation finds no drift.

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use flashcart_settlement::reconcile::reconcile;
use tokio::process::{Child, Command};

use crate::support::{Env, Story, assert_ledger_matches, on_both, story, unique_sku};

/// A small xorshift generator seeded from the clock (printed, so a failure can be replayed).
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// Starts the settle binary; with `kill_after_commit = Some(n)` it SIGKILLs itself right after
/// its n-th commit, before that batch's XACK.
fn spawn(env: &Env, kill_after_commit: Option<u64>) -> Result<Child> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flashcart-settle"));
    if let Some(n) = kill_after_commit {
        cmd.args(["--kill-after-commit-number", &n.to_string()]);
    }
    Ok(cmd
        .args([
            "--redis-url",
            &env.redis.url(),
            "--ledger-url",
            &env.ledger_url,
        ])
        .args(["--consumer", "crash-1", "--batch-size", "50", "--no-timers"])
        .args([
            "--claim-idle",
            "1s",
            "--retry-base",
            "100ms",
            "--maintain-every",
            "200ms",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?)
}

/// Kills and restarts settlement — alternately right after its n-th commit (before the XACK)
/// and from outside at a random moment, sixteen times — until the ledger holds every event the
/// stories added (once `producer`, if any, has finished). Returns (outside kills, deaths after
/// a commit).
async fn chaos(
    env: &Env,
    ledger: &flashcart_settlement::Ledger,
    producer: Option<&tokio::task::JoinHandle<Result<Story>>>,
) -> Result<(u32, u32)> {
    let seed = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64 | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let mut external_kills = 0;
    let mut died_after_commit = 0;
    let kills = 16 * flashcart_testkit::fault_scale();
    let deadline = Instant::now() + Duration::from_secs(240) * flashcart_testkit::fault_scale();
    // Every event added so far, once the producer is done (trims do not change it).
    let target = || async {
        match producer {
            Some(p) if !p.is_finished() => Ok::<_, anyhow::Error>(None),
            _ => Ok(Some(i64::try_from(env.entries_added().await?)?)),
        }
    };
    loop {
        let applied = ledger.counts().await?.applied_events;
        if target().await?.is_some_and(|t| applied >= t) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "settled in time ({applied} applied)"
        );
        // Small batches (50) and short lives (50–300 ms) keep each round's progress small, so
        // even a fast machine needs many rounds for 20 000 events.
        let rounds = external_kills + died_after_commit;
        let inside = rounds < kills && rounds % 2 == 0;
        let mut child = spawn(env, inside.then(|| 1 + rng.next(4)))?;
        let life = Duration::from_millis(if inside { 10_000 } else { 50 + rng.next(250) });
        match tokio::time::timeout(life, child.wait()).await {
            Ok(status) => {
                let status = status?;
                assert!(inside, "the child dies only when told to: {status}");
                assert!(
                    status.code().is_none(),
                    "the child only ever dies by SIGKILL: {status}"
                );
                died_after_commit += 1;
            }
            Err(_) if rounds < kills => {
                child.start_kill()?; // SIGKILL
                child.wait().await?;
                external_kills += 1;
            }
            Err(_) => {
                // Enough kills: let it finish.
                loop {
                    let applied = ledger.counts().await?.applied_events;
                    if target().await?.is_some_and(|t| applied >= t) {
                        break;
                    }
                    assert!(Instant::now() < deadline, "settled in time");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                child.start_kill()?;
                child.wait().await?;
            }
        }
    }
    eprintln!(
        "crash test: {external_kills} outside kills, {died_after_commit} deaths between commit and XACK"
    );
    assert!(external_kills >= 3, "killed from outside several times");
    assert!(
        died_after_commit >= 3,
        "killed between commit and XACK several times"
    );
    Ok((external_kills, died_after_commit))
}

/// A last clean run acknowledges whatever the final kill left unacknowledged; then nothing
/// may be pending or dead-lettered, and reconciliation must agree.
async fn settle_rest_and_reconcile(
    env: &Env,
    inv: &flashcart_inventory::NativeInventory,
    ledger: &flashcart_settlement::Ledger,
) -> Result<()> {
    let mut child = spawn(env, None)?;
    let mut conn = env.conn().await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut pending = 0i64;
        for p in env.schema.partitions() {
            let summary: redis::Value = redis::cmd("XPENDING")
                .arg(env.schema.events(p))
                .arg("settlement")
                .query_async(&mut conn)
                .await?;
            if let redis::Value::Array(items) = summary
                && let Some(redis::Value::Int(n)) = items.first()
            {
                pending += n;
            }
        }
        if pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{pending} still pending");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.start_kill()?;
    child.wait().await?;
    let report = reconcile(inv, ledger, "settlement", false).await?;
    assert!(!report.has_drift(), "{}", report.render());
    assert_eq!((report.in_flight, report.dead_letters), (0, 0));
    Ok(())
}

/// Buyers in a crash story: ≥ 20 000 events at the CI size, more with `FLASHCART_FAULT_SCALE`.
fn buyers() -> u64 {
    8_500 * u64::from(flashcart_testkit::fault_scale())
}

async fn survives_sigkill_anywhere(env: Env) -> Result<()> {
    let inv = env.inventory().await?;
    let sku = unique_sku("crash");
    let s = story(&inv, &sku, buyers(), 8).await?;
    let ids = env.stream_ids().await?;
    assert!(ids.len() >= 20_000, "the story made {} events", ids.len());
    let ledger = env.ledger().await?;
    chaos(&env, &ledger, None).await?;
    settle_rest_and_reconcile(&env, &inv, &ledger).await?;
    assert_ledger_matches(&ledger, &ids, &s).await?;
    // The same through the CLI's entry point.
    let args = flashcart_settlement::cli::ReconcileArgs {
        config: flashcart_settlement::Config::new(&env.redis.url(), &env.ledger_url),
        repair: false,
    };
    assert!(
        !flashcart_settlement::cli::reconcile(&args).await?,
        "no drift"
    );
    Ok(())
}
on_both!(survives_sigkill_anywhere);

/// The same chaos while the decisions are still being made: settlement is killed while the
/// producer appends, and trims behind itself, so the stream never holds everything at once.
async fn survives_sigkill_with_a_live_producer(env: Env) -> Result<()> {
    let inv = env.inventory().await?;
    let ledger = env.ledger().await?;
    let producer = {
        let inv = inv.clone();
        tokio::spawn(async move { story(&inv, &unique_sku("live"), buyers(), 8).await })
    };
    chaos(&env, &ledger, Some(&producer)).await?;
    let s = producer.await??;
    settle_rest_and_reconcile(&env, &inv, &ledger).await?;
    let added = env.entries_added().await?;
    assert!(added >= 20_000, "the story made {added} events");
    let counts = ledger.counts().await?;
    // Identities are the table's primary key, so equal counts mean each event exactly once.
    assert_eq!(
        counts.applied_events,
        i64::try_from(added)?,
        "every event applied, once"
    );
    assert_eq!(counts.reservations, i64::try_from(s.reservations)?);
    assert_eq!(counts.orders, i64::try_from(s.orders)?);
    assert_eq!(counts.payments, i64::try_from(s.paid + s.rejected)?);
    assert_eq!(counts.order_events, i64::try_from(s.orders + s.paid)?);
    Ok(())
}
on_both!(survives_sigkill_with_a_live_producer);
