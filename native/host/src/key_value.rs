//! The node's `default` key-value store, shared by every instance of every component.
//!
//! In memory unless the runtime config names a SQLite file (Spin's
//! `[key_value_store.default] type = "spin", path = "..."`). The in-memory map uses a
//! std `Mutex`: every operation is a short map access that never awaits, so an async
//! mutex would only add overhead. SQLite calls block, so they run on tokio's blocking
//! pool.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use thiserror::Error;

/// A store operation failed (guest-visible as `error::other`).
#[derive(Debug, Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The directory for the SQLite file cannot be created.
    #[error("cannot create {path}: {source}")]
    Dir {
        /// The directory.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The blocking task died.
    #[error("store task failed: {0}")]
    Task(String),
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug)]
enum Backend {
    Memory(Mutex<BTreeMap<String, Vec<u8>>>),
    Sqlite(Mutex<rusqlite::Connection>),
}

/// A key-value store.
#[derive(Debug, Clone)]
pub struct KeyValueStore {
    backend: Arc<Backend>,
}

impl KeyValueStore {
    /// An empty in-memory store.
    pub fn in_memory() -> Self {
        Self {
            backend: Arc::new(Backend::Memory(Mutex::new(BTreeMap::new()))),
        }
    }

    /// A store in the SQLite file at `path`, created if missing (same table layout as
    /// Spin's SQLite key-value store, so a file can move between the two).
    ///
    /// # Errors
    /// When the file cannot be opened or the table created.
    pub fn sqlite(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let conn = rusqlite::Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS spin_key_value (
                 store TEXT NOT NULL,
                 key   TEXT NOT NULL,
                 value BLOB NOT NULL,
                 PRIMARY KEY (store, key)
             );",
        )?;
        Ok(Self {
            backend: Arc::new(Backend::Sqlite(Mutex::new(conn))),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let backend = Arc::clone(&self.backend);
        tokio::task::spawn_blocking(move || match &*backend {
            Backend::Sqlite(conn) => {
                let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                f(&conn).map_err(StoreError::from)
            }
            Backend::Memory(_) => unreachable!("blocking() is only called for SQLite"),
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    fn memory(&self) -> Option<std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>>> {
        match &*self.backend {
            // A poisoned map is still a consistent map: each operation is one insert/remove.
            Backend::Memory(map) => Some(map.lock().unwrap_or_else(|p| p.into_inner())),
            Backend::Sqlite(_) => None,
        }
    }

    /// The value of `key`.
    ///
    /// # Errors
    /// When the SQLite file fails.
    pub async fn get(&self, key: String) -> Result<Option<Vec<u8>>> {
        if let Some(map) = self.memory() {
            return Ok(map.get(&key).cloned());
        }
        self.blocking(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT value FROM spin_key_value WHERE store = 'default' AND key = ?1",
            )?;
            let mut rows = stmt.query([key])?;
            match rows.next()? {
                Some(row) => Ok(Some(row.get(0)?)),
                None => Ok(None),
            }
        })
        .await
    }

    /// Sets `key` to `value`.
    ///
    /// # Errors
    /// When the SQLite file fails.
    pub async fn set(&self, key: String, value: Vec<u8>) -> Result<()> {
        if let Some(mut map) = self.memory() {
            map.insert(key, value);
            return Ok(());
        }
        self.blocking(move |c| {
            c.prepare_cached(
                "INSERT INTO spin_key_value (store, key, value) VALUES ('default', ?1, ?2)
                 ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
            )?
            .execute(rusqlite::params![key, value])
            .map(drop)
        })
        .await
    }

    /// Removes `key` (no error when absent).
    ///
    /// # Errors
    /// When the SQLite file fails.
    pub async fn delete(&self, key: String) -> Result<()> {
        if let Some(mut map) = self.memory() {
            map.remove(&key);
            return Ok(());
        }
        self.blocking(move |c| {
            c.prepare_cached("DELETE FROM spin_key_value WHERE store = 'default' AND key = ?1")?
                .execute([key])
                .map(drop)
        })
        .await
    }

    /// Whether `key` exists.
    ///
    /// # Errors
    /// When the SQLite file fails.
    pub async fn exists(&self, key: String) -> Result<bool> {
        Ok(self.get(key).await?.is_some())
    }

    /// Every key.
    ///
    /// # Errors
    /// When the SQLite file fails.
    pub async fn keys(&self) -> Result<Vec<String>> {
        if let Some(map) = self.memory() {
            return Ok(map.keys().cloned().collect());
        }
        self.blocking(|c| {
            let mut stmt =
                c.prepare_cached("SELECT key FROM spin_key_value WHERE store = 'default'")?;
            let keys = stmt.query_map([], |row| row.get(0))?;
            keys.collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn round_trip(store: KeyValueStore) -> Result<()> {
        assert_eq!(store.get("a".into()).await?, None);
        store.set("a".into(), b"1".to_vec()).await?;
        store.set("b".into(), b"2".to_vec()).await?;
        store.set("a".into(), b"3".to_vec()).await?;
        assert_eq!(store.get("a".into()).await?, Some(b"3".to_vec()));
        assert!(store.exists("b".into()).await?);
        let mut keys = store.keys().await?;
        keys.sort();
        assert_eq!(keys, ["a", "b"]);
        store.delete("a".into()).await?;
        store.delete("missing".into()).await?;
        assert!(!store.exists("a".into()).await?);
        Ok(())
    }

    #[tokio::test]
    async fn memory_round_trip() -> Result<()> {
        round_trip(KeyValueStore::in_memory()).await
    }

    #[tokio::test]
    async fn sqlite_round_trip_and_persistence() -> Result<()> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kv/default.db");
        round_trip(KeyValueStore::sqlite(&path)?).await?;
        let reopened = KeyValueStore::sqlite(&path)?;
        assert_eq!(reopened.get("b".into()).await?, Some(b"2".to_vec()));
        Ok(())
    }
}
