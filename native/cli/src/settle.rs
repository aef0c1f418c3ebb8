//! `flashcart settle`, `flashcart reconcile`, `flashcart dlq` and `flashcart trace`: thin wrappers over
//! `flashcart-settlement`.

use anyhow::Context as _;
use flashcart_settlement::cli::{DlqArgs, ReconcileArgs, TraceArgs};

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("starting tokio")
}

/// Runs settlement until Ctrl-C or SIGTERM; the current batch finishes first.
pub(crate) fn settle(config: flashcart_settlement::Config) -> anyhow::Result<()> {
    runtime()?.block_on(flashcart_settlement::run(config, crate::shutdown::signal()))
}

/// Prints the drift table; `Ok(true)` when there is drift.
pub(crate) fn reconcile(args: &ReconcileArgs) -> anyhow::Result<bool> {
    runtime()?.block_on(flashcart_settlement::cli::reconcile(args))
}

/// Prints a request's trail; `Ok(false)` when the ledger holds none of its events.
pub(crate) fn trace(args: &TraceArgs) -> anyhow::Result<bool> {
    runtime()?.block_on(flashcart_settlement::cli::trace(args))
}

/// Runs a dead-letter command.
pub(crate) fn dlq(args: &DlqArgs) -> anyhow::Result<()> {
    runtime()?
        .block_on(flashcart_settlement::cli::dlq(args))
        .map(|_| ())
}
