//! The `flashcart` command: a thin dispatcher, one module per subcommand.

use clap::{Parser, Subcommand};

mod bench;
mod build;
mod settle;
mod shutdown;
mod up;

/// flashcart: flash sales that never oversell.
#[derive(Debug, Parser)]
#[command(name = "flashcart", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a Spin manifest's components on flashcart's own host.
    Up(Box<up::Args>),
    /// Run each component's build command (like `spin build`).
    Build(build::Args),
    /// Measure the host.
    #[command(subcommand)]
    Bench(bench::Command),
    /// Settle the edge's events into the SQL ledger and run the expiry/deadline timers.
    Settle(flashcart_settlement::Config),
    /// Compare Redis with the ledger per SKU; exits 1 on drift (`--repair` fixes what is provably safe).
    Reconcile(flashcart_settlement::cli::ReconcileArgs),
    /// List, retry or drop dead-lettered events.
    Dlq(flashcart_settlement::cli::DlqArgs),
    /// Print the settled events an HTTP request decided (by its `x-request-id`); exits 1 when
    /// there are none.
    Trace(flashcart_settlement::cli::TraceArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLASHCART_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Up(args) => up::run(*args),
        Command::Build(args) => build::run(args),
        Command::Bench(command) => bench::run(command),
        Command::Settle(config) => settle::settle(config),
        Command::Reconcile(args) => match settle::reconcile(&args) {
            Ok(false) => Ok(()),
            Ok(true) => return std::process::ExitCode::from(1),
            Err(e) => Err(e),
        },
        Command::Dlq(args) => settle::dlq(&args),
        Command::Trace(args) => match settle::trace(&args) {
            Ok(true) => Ok(()),
            Ok(false) => return std::process::ExitCode::from(1),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain: the outermost context alone rarely says what to fix.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
