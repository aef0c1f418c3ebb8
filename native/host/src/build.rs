//! `flashcart build`: runs each component's `[component.<id>.build] command`, like
//! `spin build`: in the component's `workdir` (relative to the manifest), through the
//! shell, in manifest order, stopping at the first failure.

use std::path::Path;
use std::process::Command;

use thiserror::Error;

use crate::manifest::{Manifest, ManifestError};

/// A build that did not succeed.
#[derive(Debug, Error)]
pub enum BuildError {
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The shell could not be started.
    #[error("component `{component}`: cannot run `{command}`: {source}")]
    Spawn {
        /// Component id.
        component: String,
        /// The command.
        command: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The command failed.
    #[error("component `{component}`: `{command}` failed ({status})")]
    Failed {
        /// Component id.
        component: String,
        /// The command.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
    },
}

/// Builds the components of the manifest at `manifest_path`; `only` restricts the
/// build to the named components. Returns the ids built.
///
/// # Errors
/// When the manifest is invalid or a command fails.
pub fn build(manifest_path: &Path, only: &[String]) -> Result<Vec<String>, BuildError> {
    let manifest = Manifest::load(manifest_path)?;
    let mut built = Vec::new();
    for (id, component) in &manifest.components {
        if !only.is_empty() && !only.contains(id) {
            continue;
        }
        let Some(build) = &component.build else {
            tracing::info!(component = %id, "no build command; skipped");
            continue;
        };
        let workdir = match &build.workdir {
            Some(dir) => manifest.base_dir.join(dir),
            None => manifest.base_dir.clone(),
        };
        for command in build.command.iter() {
            tracing::info!(component = %id, command, workdir = %workdir.display(), "building");
            let status = Command::new("sh")
                .arg("-c")
                .arg(command)
                .current_dir(&workdir)
                .status()
                .map_err(|source| BuildError::Spawn {
                    component: id.clone(),
                    command: command.to_owned(),
                    source,
                })?;
            if !status.success() {
                return Err(BuildError::Failed {
                    component: id.clone(),
                    command: command.to_owned(),
                    status,
                });
            }
        }
        built.push(id.clone());
    }
    Ok(built)
}
