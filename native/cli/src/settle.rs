//! `flashcart settle`, `flashcart reconcile` and `flashcart dlq`: thin wrappers over
//! `flashcart-settlement`.

use anyhow::Context as _;
use flashcart_settlement::cli::{DlqArgs, ReconcileArgs};

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

/// Runs a dead-letter command.
pub(crate) fn dlq(args: &DlqArgs) -> anyhow::Result<()> {
    runtime()?
        .block_on(flashcart_settlement::cli::dlq(args))
        .map(|_| ())
}
