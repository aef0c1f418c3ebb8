//! The runtime config file (`--runtime-config-file`), in Spin's format where the two
//! overlap: `[key_value_store.default]` with `type = "spin"` and a `path` selects the
//! SQLite-backed store (relative paths are resolved against the file's directory).
//! flashcart adds a `[variables]` table, the runtime-config provider of variable values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

/// The runtime config file cannot be used.
#[derive(Debug, Error)]
pub enum RuntimeConfigError {
    /// Unreadable file.
    #[error("cannot read runtime config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Bad TOML or an unknown key.
    #[error("runtime config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// `[key_value_store.<label>]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "snake_case")]
pub enum KeyValueStoreConfig {
    /// Spin's default store type: a SQLite file.
    Spin {
        /// The SQLite file (default `.spin/sqlite_key_value.db`, as in Spin).
        #[serde(default)]
        path: Option<PathBuf>,
    },
    /// In memory, lost at exit (flashcart's default when no table is given).
    Memory,
}

/// A parsed runtime config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfigFile {
    /// Key-value stores by label (only `default` is used).
    #[serde(default)]
    pub key_value_store: BTreeMap<String, KeyValueStoreConfig>,
    /// Variable values (the runtime-config variables provider).
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
}

impl RuntimeConfigFile {
    /// Reads the file at `path`, resolving relative store paths against its directory.
    ///
    /// # Errors
    /// When it cannot be read or parsed.
    pub fn load(path: &Path) -> Result<Self, RuntimeConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| RuntimeConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Self = toml::from_str(&text).map_err(|e| RuntimeConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for store in config.key_value_store.values_mut() {
            if let KeyValueStoreConfig::Spin { path: Some(p) } = store
                && p.is_relative()
            {
                *p = base.join(&*p);
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_spin_store_and_variables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("runtime-config.toml");
        std::fs::write(
            &file,
            "[key_value_store.default]\ntype = \"spin\"\npath = \"kv/default.db\"\n\
             [variables]\nredis_address = \"127.0.0.1:6380\"\n",
        )
        .expect("write");
        let config = RuntimeConfigFile::load(&file).expect("valid");
        assert_eq!(
            config.key_value_store["default"],
            KeyValueStoreConfig::Spin {
                path: Some(dir.path().join("kv/default.db"))
            }
        );
        assert_eq!(config.variables["redis_address"], "127.0.0.1:6380");

        std::fs::write(&file, "[llm_compute]\ntype = \"spin\"\n").expect("write");
        let err = RuntimeConfigFile::load(&file).expect_err("unknown table");
        assert!(err.to_string().contains("llm_compute"), "{err}");
    }
}
