//! The `flashcart` command: a thin dispatcher, one module per subcommand.

use clap::{Parser, Subcommand};

mod bench;
mod build;
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
    Up(up::Args),
    /// Run each component's build command (like `spin build`).
    Build(build::Args),
    /// Measure the host.
    #[command(subcommand)]
    Bench(bench::Command),
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
        Command::Up(args) => up::run(args),
        Command::Build(args) => build::run(args),
        Command::Bench(command) => bench::run(command),
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
