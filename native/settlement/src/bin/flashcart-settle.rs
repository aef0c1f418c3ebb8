//! `flashcart-settle`: runs settlement as its own process (what the crash tests spawn and
//! kill; operators use `flashcart settle`, which calls the same library).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use clap::Parser;

/// Settle flashcart's partition event streams into the SQL ledger.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: flashcart_settlement::Config,
    /// Fault injection for crash tests: after each commit, before its XACK, SIGKILL this
    /// process with this probability (0..1).
    #[arg(long, default_value_t = 0.0)]
    kill_after_commit: f64,
    /// Fault injection for crash tests: SIGKILL this process right after its N-th commit,
    /// before that batch's XACK.
    #[arg(long)]
    kill_after_commit_number: Option<u64>,
}

/// A small xorshift generator: the fault injection needs no cryptographic randomness.
fn chance(state: &AtomicU64, p: f64) -> bool {
    let mut x = state.load(Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    state.store(x, Ordering::Relaxed);
    (x >> 11) as f64 / (1u64 << 53) as f64 <= p
}

fn kill_self() -> ! {
    // SIGKILL, not abort: nothing of ours runs after this point, exactly like an external kill.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &std::process::id().to_string()])
        .status();
    loop {
        std::thread::park();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let hook: Option<flashcart_settlement::consumer::AfterCommit> =
        if cli.kill_after_commit > 0.0 || cli.kill_after_commit_number.is_some() {
            let seed = u64::from(std::process::id())
                | (flashcart_settlement::metrics::now_ms_public() << 20)
                | 1;
            let state = AtomicU64::new(seed);
            let commits = AtomicU64::new(0);
            let p = cli.kill_after_commit;
            let nth = cli.kill_after_commit_number;
            Some(Arc::new(move || {
                let n = commits.fetch_add(1, Ordering::Relaxed) + 1;
                if nth == Some(n) || (p > 0.0 && chance(&state, p)) {
                    kill_self();
                }
            }))
        } else {
            None
        };
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    flashcart_settlement::run_with(cli.config, hook, shutdown)
        .await
        .context("settlement failed")
}
