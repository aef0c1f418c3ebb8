//! Crash safety: settlement runs as a child process over ≥ 20 000 real events and is killed
//! with SIGKILL at random moments — from outside at random times, and from inside right after
//! a commit and before its XACK — then restarted, until everything is settled. At the end the
//! ledger holds every event exactly once and reconciliation finds no drift.

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use flashcart_settlement::reconcile::reconcile;
use tokio::process::{Child, Command};

use crate::support::{Env, assert_ledger_matches, on_both, story, unique_sku};

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
        .args([
            "--consumer",
            "crash-1",
            "--batch-size",
            "200",
            "--no-timers",
        ])
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

async fn survives_sigkill_anywhere(env: Env) -> Result<()> {
    let inv = env.inventory().await?;
    let sku = unique_sku("crash");
    let s = story(&inv, &sku, 8_500, 8).await?;
    let ids = env.stream_ids().await?;
    assert!(ids.len() >= 20_000, "the story made {} events", ids.len());
    let target = i64::try_from(ids.len())?;

    let seed = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64 | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let ledger = env.ledger().await?;
    let mut external_kills = 0;
    let mut died_after_commit = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let applied = ledger.counts().await?.applied_events;
        if applied >= target {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "settled in time ({applied} of {target})"
        );
        // Rounds alternate: one dies by its own hand right after its n-th commit (before the
        // XACK), the next is killed from outside at a random moment. After 16 rounds the
        // child is left to finish.
        let rounds = external_kills + died_after_commit;
        let inside = rounds < 16 && rounds % 2 == 0;
        let mut child = spawn(&env, inside.then(|| 1 + rng.next(4)))?;
        let life = Duration::from_millis(if inside { 10_000 } else { 100 + rng.next(400) });
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
            Err(_) if rounds < 16 => {
                child.start_kill()?; // SIGKILL
                child.wait().await?;
                external_kills += 1;
            }
            Err(_) => {
                // Enough kills: let it finish.
                while ledger.counts().await?.applied_events < target {
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

    // A last clean run acknowledges whatever the final kill left unacknowledged.
    let mut child = spawn(&env, None)?;
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

    assert_ledger_matches(&ledger, &ids, &s).await?;
    let report = reconcile(&inv, &ledger, "settlement", false).await?;
    assert!(!report.has_drift(), "{}", report.render());
    assert_eq!((report.in_flight, report.dead_letters), (0, 0));
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
