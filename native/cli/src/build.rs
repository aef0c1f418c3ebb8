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
    Ok(())
}
