//! `flashcart build`.

use std::path::PathBuf;

use anyhow::Context as _;

/// Arguments of `flashcart build`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The application manifest.
    #[arg(
        long = "from",
        short = 'f',
        default_value = "spin.toml",
        env = "FLASHCART_MANIFEST"
    )]
    manifest: PathBuf,
    /// Build only these components (repeatable); all when omitted.
    #[arg(long = "component-id", short = 'c')]
    components: Vec<String>,
    /// Then measure the built components' cold start as deployed and record it in the
    /// history, as `flashcart bench cold-start` does (about a minute for five components on
    /// two cores, and a private redis-server: off by default, so a build stays a build).
    #[arg(long)]
    cold_start: bool,
    /// With `--cold-start`: the history file (default as `flashcart bench cold-start`'s).
    #[arg(long, requires = "cold_start", env = "FLASHCART_COLD_START_HISTORY")]
    history: Option<PathBuf>,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let built = flashcart_host::build::build(&args.manifest, &args.components)
        .with_context(|| format!("building {}", args.manifest.display()))?;
    eprintln!(
        "built: {}",
        if built.is_empty() {
            "nothing".to_owned()
        } else {
            built.join(", ")
        }
    );
    if args.cold_start && !built.is_empty() {
        let mut options = flashcart_bench::cold_start::Options::for_manifest(args.manifest, built);
        options.history = args.history;
        crate::bench::cold_start(options)?;
    }
    Ok(())
}
