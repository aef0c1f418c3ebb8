//! `flashcart bench`.

use anyhow::Context as _;

/// What to measure.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Compile, cache load, first request after a cached start, instantiation and memory per
    /// instance of every component of the manifest as deployed (its variables, key-value
    /// store, a private Redis with a SKU), recorded per build in a history; or of one `.wasm`.
    ColdStart(Box<flashcart_bench::cold_start::Options>),
    /// A flash sale over real HTTP (closed and open loop, sustained and drop), baselines
    /// measured in the same run, and checks that nothing was oversold.
    Sale(Box<flashcart_bench::sale::Options>),
}

pub(crate) fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::ColdStart(options) => cold_start(*options),
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

/// `flashcart bench cold-start` (and `flashcart build --cold-start`): runs, records, prints.
pub(crate) fn cold_start(options: flashcart_bench::cold_start::Options) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting tokio")?;
    let report = runtime.block_on(flashcart_bench::cold_start::run(options))?;
    print!("{report}");
    Ok(())
}
