//! `flashcart bench`.

use std::path::PathBuf;

use anyhow::Context as _;
use flashcart_host::bench::{ColdStartOptions, cold_start};

/// What to measure.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Compile, cache-load, per-request instantiation (pooling vs on-demand) and
    /// first-request latency after a cached start.
    ColdStart(ColdStartArgs),
    /// A flash sale over real HTTP (closed and open loop, sustained and drop), baselines
    /// measured in the same run, and checks that nothing was oversold.
    Sale(Box<flashcart_bench::sale::Options>),
}

/// Arguments of `flashcart bench cold-start`.
#[derive(Debug, clap::Args)]
pub(crate) struct ColdStartArgs {
    /// The component to measure (a spin-sdk 7 / WASI 0.3 HTTP handler .wasm).
    #[arg(long)]
    component: PathBuf,
    /// Instantiations (and in-process requests) per allocator.
    #[arg(long, default_value_t = 10_000)]
    requests: usize,
}

pub(crate) fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::ColdStart(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting tokio")?;
            let report = runtime
                .block_on(cold_start(&ColdStartOptions {
                    component: args.component.clone(),
                    requests: args.requests,
                }))
                .with_context(|| format!("benchmarking {}", args.component.display()))?;
            println!("{}", report.to_markdown());
            Ok(())
        }
        Command::Sale(options) => {
            let runtime = tokio::runtime::Runtime::new().context("starting tokio")?;
            let (report, out) = runtime.block_on(flashcart_bench::sale::run(*options))?;
            print!("{}", report.render());
            println!("report: {}", out.join("sale.json").display());
            println!("plot:   {}", out.join("sale.svg").display());
            anyhow::ensure!(report.checks.passed, "a check failed: see the report above");
            Ok(())
        }
    }
}
