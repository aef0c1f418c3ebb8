//! The node's `default` key-value store, shared by every instance of every component.
//!
//! In memory unless the runtime config names a SQLite file (Spin's
//! `[key_value_store.default] type = "spin", path = "..."`). The in-memory map uses a
//! std `Mutex`: every operation is a short map access that never awaits, so an async
//! mutex would only add overhead.
//!
//! With SQLite, the file is the store's persistence and a map in memory answers the
//! reads: the edge cache reads the store on every deduct and stock check, and a SQLite
//! read on tokio's blocking pool cost more than the request's own work. The map is
//! loaded from the file at open; a write goes to SQLite and then to the map under the
//! connection's lock, so the two never disagree about the order of writes. One node
//! owns its file: two processes sharing one file would not see each other's writes
//! (Spin reads the file each time; flashcart's edge cache is node-local by design, so
//! nothing it stores needs another node's view). WAL with `synchronous = NORMAL`: a
//! write survives a process crash; an OS crash may lose the last ones, which for a
//! cache means a few extra Redis reads.

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

type Map = Mutex<BTreeMap<String, Vec<u8>>>;

#[derive(Debug)]
enum Backend {
    Memory(Map),
    /// The file, and the map of its rows that answers reads.
    Sqlite {
        conn: Mutex<rusqlite::Connection>,
        rows: Map,
    },
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
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS spin_key_value (
                 store TEXT NOT NULL,
                 key   TEXT NOT NULL,
                 value BLOB NOT NULL,
                 PRIMARY KEY (store, key)
             );",
        )?;
        let rows = {
            let mut stmt =
                conn.prepare("SELECT key, value FROM spin_key_value WHERE store = 'default'")?;
            let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.collect::<rusqlite::Result<BTreeMap<String, Vec<u8>>>>()?
        };
        Ok(Self {
            backend: Arc::new(Backend::Sqlite {
                conn: Mutex::new(conn),
                rows: Mutex::new(rows),
            }),
        })
    }

    /// Runs a write on the SQLite file, then `apply` on the map, both under the
    /// connection's lock (on tokio's blocking pool: SQLite calls block).
    async fn write(
        &self,
        sql: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<()> + Send + 'static,
        apply: impl FnOnce(&mut BTreeMap<String, Vec<u8>>) + Send + 'static,
    ) -> Result<()> {
        let backend = Arc::clone(&self.backend);
        tokio::task::spawn_blocking(move || match &*backend {
            Backend::Sqlite { conn, rows } => {
                let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                sql(&conn)?;
                apply(&mut rows.lock().unwrap_or_else(|p| p.into_inner()));
                Ok(())
            }
            Backend::Memory(map) => {
                apply(&mut map.lock().unwrap_or_else(|p| p.into_inner()));
                Ok(())
            }
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// The map that answers reads.
    fn rows(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        // A poisoned map is still a consistent map: each operation is one insert/remove.
        match &*self.backend {
            Backend::Memory(map) | Backend::Sqlite { rows: map, .. } => {
                map.lock().unwrap_or_else(|p| p.into_inner())
            }
        }
    }

    fn is_memory(&self) -> bool {
        matches!(&*self.backend, Backend::Memory(_))
    }

    /// The value of `key`.
    ///
    /// # Errors
    /// When the SQLite file fails.
    pub async fn get(&self, key: String) -> Result<Option<Vec<u8>>> {
        Ok(self.rows().get(&key).cloned())
    }

    /// Sets `key` to `value`.
    ///
    /// # Errors
    /// When the SQLite file fails.
    pub async fn set(&self, key: String, value: Vec<u8>) -> Result<()> {
        if self.is_memory() {
            self.rows().insert(key, value);
            return Ok(());
        }
        let row = (key.clone(), value.clone());
        self.write(
            move |c| {
                c.prepare_cached(
                    "INSERT INTO spin_key_value (store, key, value) VALUES ('default', ?1, ?2)
                     ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
                )?
                .execute(rusqlite::params![row.0, row.1])
                .map(drop)
            },
            move |rows| {
                rows.insert(key, value);
            },
        )
        .await
    }

    /// Removes `key` (no error when absent).
    ///
    /// # Errors
    /// When the SQLite file fails.
    pub async fn delete(&self, key: String) -> Result<()> {
        if self.is_memory() {
            self.rows().remove(&key);
            return Ok(());
        }
        let gone = key.clone();
        self.write(
            move |c| {
                c.prepare_cached("DELETE FROM spin_key_value WHERE store = 'default' AND key = ?1")?
                    .execute([gone])
                    .map(drop)
            },
            move |rows| {
                rows.remove(&key);
            },
        )
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
        Ok(self.rows().keys().cloned().collect())
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
        assert_eq!(
            reopened.get("a".into()).await?,
            None,
            "a delete persists too"
        );
        assert_eq!(reopened.keys().await?, ["b"]);
        Ok(())
    }
}
