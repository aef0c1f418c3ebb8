//! The SQL ledger: SQLite (a file under the data dir, WAL) or PostgreSQL (`postgres://` URLs),
//! through sqlx's `Any` driver so one set of statements serves both.
//!
//! A batch of events is applied in ONE transaction. Its first statement inserts every event's
//! identity — (partition, stream entry id) — into `applied_events` with `ON CONFLICT DO
//! NOTHING RETURNING`: only the rows that statement really inserted are applied, so an event
//! delivered twice (a crash between commit and `XACK`, a claim by another process) is
//! recognised by the database's unique key, not by a read that could race (insert-then-check).
//! Every entity write then carries its own unique key or state guard, so an anomaly that slips
//! past that (the same reservation created by two different events) fails loudly instead of
//! counting twice.
//!
//! Events are applied one way: `store::read` reads the rows they touch, `fold::fold` folds the
//! events over them in memory (pure: every rule, the order transitions being the core's
//! `OrderState::next`), `store::write` writes the result with a few multi-row statements. The
//! per-event fallback is the same path, one event at a time (see [`Ledger::apply`]).

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Any, AnyPool, AssertSqlSafe, Row, Transaction};

mod fold;
mod image;
mod rows;
mod store;

pub use image::{PaidOrder, PaymentRow, SkuRow};
pub use rows::{
    OrderRow, ReservationRow, parse_payment_outcome, parse_reservation_state, payment_outcome_name,
    reservation_state_name,
};

use crate::entry::EntryId;
use flashcart_core::event::{Event, EventError};
use flashcart_core::keys::Partition;
use flashcart_core::order::OrderState;
use flashcart_core::recovery::ReservationState;

/// Which database the ledger lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in WAL mode: the default, no server to run.
    Sqlite,
    /// A PostgreSQL database: for several settlement hosts or a shared ledger.
    Postgres,
}

/// Why one event cannot be applied. The event is retried with backoff and dead-lettered
/// after K tries; the events around it are applied without it.
#[derive(Debug, thiserror::Error)]
pub enum EventFailure {
    /// The entry does not parse as an event.
    #[error(transparent)]
    Malformed(#[from] EventError),
    /// It refers to a reservation or order the ledger does not have (yet: an earlier event may
    /// still be in another consumer's hands, so this is retried).
    #[error("{what} {id} is not in the ledger")]
    Missing {
        /// `reservation` or `order`.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// The transition is not legal from the state the ledger holds.
    #[error("{event} is not allowed for {what} {id} in state {state}")]
    IllegalTransition {
        /// The event type.
        event: &'static str,
        /// `reservation` or `order`.
        what: &'static str,
        /// Its id.
        id: String,
        /// The state it is in.
        state: String,
    },
    /// A reservation, order or refund the event creates exists already.
    #[error("{what} {id} exists already")]
    Duplicate {
        /// `reservation`, `order` or `refund`.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// The database refused the event's writes (a unique key or other constraint).
    #[error("database refused the event: {0}")]
    Refused(sqlx::Error),
}

/// Errors of the ledger as a whole.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database failed (connection, I/O, lock timeout): nothing of the batch was
    /// committed; the same batch can be tried again.
    #[error("ledger database: {0}")]
    Storage(#[from] sqlx::Error),
    /// Running the migrations failed.
    #[error("ledger migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Event `index` of the batch cannot be applied; the transaction was rolled back.
    #[error("event {index} of the batch: {failure}")]
    Event {
        /// Index into the batch.
        index: usize,
        /// Why.
        failure: EventFailure,
    },
    /// The database URL is not one the ledger understands.
    #[error("unsupported ledger URL {0:?}: use sqlite://PATH, postgres://… or a file path")]
    Url(String),
}

type Result<T, E = LedgerError> = std::result::Result<T, E>;

/// One event to apply: its identity and its parsed body.
#[derive(Debug, Clone)]
pub struct Applicable {
    /// The partition whose stream carried it.
    pub partition: Partition,
    /// Its identity (see [`crate::entry::Entry::identity`]).
    pub identity: EntryId,
    /// The event.
    pub event: Event,
}

/// What one [`Ledger::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// Events applied now.
    pub new: usize,
    /// Events that had been applied before (redeliveries), skipped.
    pub duplicates: usize,
}

/// Units of one segment as the ledger sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SegmentLevels {
    /// The segment number.
    pub segment: i64,
    /// Units loaded into it.
    pub initial: i64,
    /// Held by live reservations.
    pub reserved: i64,
    /// Held by orders awaiting payment.
    pub ordered: i64,
    /// Sold (paid before the deadline).
    pub sold: i64,
}

impl SegmentLevels {
    /// Units still for sale: what is neither reserved, ordered nor sold.
    pub fn available(&self) -> i64 {
        self.initial - self.reserved - self.ordered - self.sold
    }
}

/// Row counts of the ledger's tables (tests, reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[expect(missing_docs, reason = "one field per table, named as the table")]
pub struct Counts {
    pub applied_events: i64,
    pub skus: i64,
    pub reservations: i64,
    pub orders: i64,
    pub order_events: i64,
    pub payments: i64,
    pub refunds: i64,
}

/// One event of a request's trail ([`Ledger::request_trail`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrailEntry {
    /// The partition whose stream carried it.
    pub partition: Partition,
    /// Its stream entry id there.
    pub identity: EntryId,
    /// Its type, e.g. `reservation.created`.
    pub kind: String,
    /// The SKU.
    pub sku: String,
    /// Decision time, unix ms.
    pub at: i64,
    /// The reservation or order it is about (none for `sku.loaded`).
    pub subject: Option<String>,
}

/// The settlement ledger. Cheap to clone (a pool).
#[derive(Debug, Clone)]
pub struct Ledger {
    pool: AnyPool,
    backend: Backend,
}

fn migrator(backend: Backend) -> Migrator {
    // Embedded, so a deployed binary needs no migrations directory beside it.
    let files: [(i64, &str, &'static str); 3] = match backend {
        Backend::Sqlite => [
            (
                1,
                "ledger",
                include_str!("../migrations/sqlite/0001_ledger.sql"),
            ),
            (
                2,
                "sku fingerprint",
                include_str!("../migrations/sqlite/0002_sku_fingerprint.sql"),
            ),
            (
                3,
                "request trace",
                include_str!("../migrations/sqlite/0003_request_trace.sql"),
            ),
        ],
        Backend::Postgres => [
            (
                1,
                "ledger",
                include_str!("../migrations/postgres/0001_ledger.sql"),
            ),
            (
                2,
                "sku fingerprint",
                include_str!("../migrations/postgres/0002_sku_fingerprint.sql"),
            ),
            (
                3,
                "request trace",
                include_str!("../migrations/postgres/0003_request_trace.sql"),
            ),
        ],
    };
    Migrator::with_migrations(
        files
            .into_iter()
            .map(|(version, name, sql)| {
                Migration::new(
                    version,
                    name.into(),
                    MigrationType::Simple,
                    sqlx::SqlSafeStr::into_sql_str(sql),
                    false,
                )
            })
            .collect(),
    )
}

/// Whether a database error is the database's trouble (retry the batch as it is) rather than
/// the event's (a constraint it broke).
fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            use sqlx::error::ErrorKind;
            match db.kind() {
                ErrorKind::UniqueViolation
                | ErrorKind::ForeignKeyViolation
                | ErrorKind::NotNullViolation
                | ErrorKind::CheckViolation => false,
                // SQLite BUSY/LOCKED (and their extended codes); PostgreSQL classes 08
                // (connection), 40 (serialization/deadlock), 53 (resources), 57 (shutdown).
                _ => db.code().is_some_and(|code| {
                    let code = code.as_ref();
                    matches!(code.parse::<i64>().map(|c| c & 0xff), Ok(5 | 6))
                        || ["08", "40", "53", "57"]
                            .iter()
                            .any(|class| code.starts_with(class))
                }),
            }
        }
        sqlx::Error::RowNotFound
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::Encode(_)
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnIndexOutOfBounds { .. } => false,
        _ => true,
    }
}

impl Ledger {
    /// Opens (creating if needed) the ledger at `url` and runs the migrations.
    /// `url` is `postgres://…`/`postgresql://…`, `sqlite://PATH`, or a plain file path for SQLite.
    ///
    /// # Errors
    /// When the database cannot be reached or migrated.
    pub async fn open(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            (Backend::Sqlite, sqlite_url(path))
        } else if !url.contains("://") && !url.is_empty() {
            (Backend::Sqlite, sqlite_url(url))
        } else {
            return Err(LedgerError::Url(url.to_owned()));
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = match backend {
            // One writer at a time is all SQLite allows; a few connections let readers
            // (reconcile, metrics) run beside the writer under WAL.
            Backend::Sqlite => {
                AnyPoolOptions::new()
                    .max_connections(4)
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            // WAL: readers never block the writer. synchronous=NORMAL: a commit
                            // survives a process crash (SIGKILL), which is what settlement's
                            // exactly-once argument needs; only an OS crash may lose the last
                            // commits, and those events are still unacknowledged in Redis.
                            sqlx::query("PRAGMA journal_mode = WAL")
                                .execute(&mut *conn)
                                .await?;
                            sqlx::query("PRAGMA synchronous = NORMAL")
                                .execute(&mut *conn)
                                .await?;
                            sqlx::query("PRAGMA busy_timeout = 10000")
                                .execute(&mut *conn)
                                .await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?
            }
            Backend::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(options)
                    .await?
            }
        };
        // sqlx locks the migrations on PostgreSQL (advisory lock) but not on SQLite: two
        // processes opening a new SQLite ledger at once both try migration 1, and the second
        // fails on the first's tables. Its transaction rolls back, and a second look finds
        // the migration applied.
        let migrator = migrator(backend);
        let mut attempt = 0;
        loop {
            match migrator.run(&pool).await {
                Ok(()) => break,
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "migrating the ledger again");
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Self { pool, backend })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Applies `events` in one transaction; events applied before are skipped.
    ///
    /// The events are folded over the rows they touch and written with a few multi-row
    /// statements. If the database refuses the batch for a constraint only it checks (a
    /// payment id seen before), the batch is applied again one event at a time — each a batch
    /// of one through the same read, fold and write — which names the event it refuses.
    ///
    /// # Errors
    /// [`LedgerError::Event`] names the first event that cannot be applied (nothing was
    /// committed); [`LedgerError::Storage`] when the database failed.
    pub async fn apply(&self, events: &[Applicable]) -> Result<Applied> {
        if events.is_empty() {
            return Ok(Applied::default());
        }
        let mut tx = self.pool.begin().await?;
        let fresh = claim(&mut tx, self.backend, events).await?;
        let applied = Applied {
            new: fresh.len(),
            duplicates: events.len() - fresh.len(),
        };
        match apply_batch(&mut tx, self.backend, events, &fresh).await {
            Ok(()) => {
                tx.commit().await?;
                return Ok(applied);
            }
            Err(Failed::Event { index, failure }) => {
                return Err(LedgerError::Event { index, failure });
            }
            Err(Failed::Db(e)) if is_transient(&e) => return Err(LedgerError::Storage(e)),
            Err(Failed::Db(e)) => {
                tracing::debug!(error = %e, "batch refused; applying event by event")
            }
        }
        // PostgreSQL refuses every statement after an error: start again.
        drop(tx);
        self.apply_each(events).await
    }

    /// The fallback: the same batch, each event a batch of its own, in a new transaction;
    /// the first event the database refuses is named.
    async fn apply_each(&self, events: &[Applicable]) -> Result<Applied> {
        let mut tx = self.pool.begin().await?;
        let fresh = claim(&mut tx, self.backend, events).await?;
        let applied = Applied {
            new: fresh.len(),
            duplicates: events.len() - fresh.len(),
        };
        for index in fresh {
            match apply_batch(&mut tx, self.backend, events, &[index]).await {
                Ok(()) => {}
                Err(Failed::Event { index, failure }) => {
                    return Err(LedgerError::Event { index, failure });
                }
                Err(Failed::Db(e)) if is_transient(&e) => return Err(LedgerError::Storage(e)),
                Err(Failed::Db(e)) => {
                    let failure = EventFailure::Refused(e);
                    return Err(LedgerError::Event { index, failure });
                }
            }
        }
        tx.commit().await?;
        Ok(applied)
    }

    /// Per-segment levels of `sku` as the ledger derives them.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn levels(&self, sku: &str) -> Result<Vec<SegmentLevels>> {
        let rows = sqlx::query(
            "SELECT s.segment, s.initial,
                CAST(COALESCE((SELECT SUM(r.qty) FROM reservations r
                    WHERE r.sku = s.sku AND r.segment = s.segment AND r.state = $1), 0) AS BIGINT),
                CAST(COALESCE((SELECT SUM(o.qty) FROM orders o
                    WHERE o.sku = s.sku AND o.segment = s.segment AND o.state = $2), 0) AS BIGINT),
                CAST(COALESCE((SELECT SUM(o.sold_qty) FROM orders o
                    WHERE o.sku = s.sku AND o.segment = s.segment), 0) AS BIGINT)
             FROM sku_segments s WHERE s.sku = $3 ORDER BY s.segment",
        )
        // Reserved: live reservations; ordered: orders that still hold their units.
        .bind(reservation_state_name(ReservationState::Active))
        .bind(OrderState::PendingPayment.as_str())
        .bind(sku)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SegmentLevels {
                    segment: r.try_get(0)?,
                    initial: r.try_get(1)?,
                    reserved: r.try_get(2)?,
                    ordered: r.try_get(3)?,
                    sold: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// Every SKU the ledger knows, sorted.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn skus(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT sku FROM skus ORDER BY sku")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    /// Row counts of every table.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn counts(&self) -> Result<Counts> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM applied_events), (SELECT COUNT(*) FROM skus),
                    (SELECT COUNT(*) FROM reservations), (SELECT COUNT(*) FROM orders),
                    (SELECT COUNT(*) FROM order_events), (SELECT COUNT(*) FROM payments),
                    (SELECT COUNT(*) FROM refunds)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Counts {
            applied_events: row.try_get(0)?,
            skus: row.try_get(1)?,
            reservations: row.try_get(2)?,
            orders: row.try_get(3)?,
            order_events: row.try_get(4)?,
            payments: row.try_get(5)?,
            refunds: row.try_get(6)?,
        })
    }

    /// Whether the event with this identity has been applied.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn is_applied(&self, partition: Partition, identity: EntryId) -> Result<bool> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM applied_events WHERE part = $1 AND entry_ms = $2 AND entry_seq = $3",
        )
        .bind(i64::from(partition.index()))
        .bind(identity.ms_sql())
        .bind(identity.seq_sql())
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>(0)? > 0)
    }

    /// Every applied event's identity, `(partition, entry id)`, in order (audits and tests;
    /// reads the whole `applied_events` table).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn applied_ids(&self) -> Result<Vec<(Partition, EntryId)>> {
        let rows = sqlx::query("SELECT part, entry_ms, entry_seq FROM applied_events ORDER BY part, entry_ms, entry_seq")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(applied_identity).collect()
    }

    /// The events HTTP request `request` decided (its `x-request-id`), in the order they
    /// were appended: what `flashcart trace` prints.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn request_trail(&self, request: &str) -> Result<Vec<TrailEntry>> {
        let rows = sqlx::query(
            "SELECT part, entry_ms, entry_seq, type, sku, at, subject FROM applied_events
             WHERE request_id = $1 ORDER BY at, part, entry_ms, entry_seq",
        )
        .bind(request)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let (partition, identity) = applied_identity(r)?;
                Ok(TrailEntry {
                    partition,
                    identity,
                    kind: r.try_get(3)?,
                    sku: r.try_get(4)?,
                    at: r.try_get(5)?,
                    subject: r.try_get(6)?,
                })
            })
            .collect()
    }

    /// The highest identity applied from `partition`'s stream, if any.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn highest_applied(&self, partition: Partition) -> Result<Option<EntryId>> {
        let row = sqlx::query(
            "SELECT entry_ms, entry_seq FROM applied_events WHERE part = $1
             ORDER BY entry_ms DESC, entry_seq DESC LIMIT 1",
        )
        .bind(i64::from(partition.index()))
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some(EntryId {
                ms: u64::try_from(r.try_get::<i64, _>(0)?).unwrap_or(0),
                seq: u64::try_from(r.try_get::<i64, _>(1)?).unwrap_or(0),
            }),
            None => None,
        })
    }

    /// The one text column of the row `sql` selects by `key`, if there is such a row.
    async fn optional_text(&self, sql: &'static str, key: &str) -> Result<Option<String>> {
        let row = sqlx::query(sql)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// The state the ledger holds for an order.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn order_state(&self, ord: &str) -> Result<Option<String>> {
        self.optional_text("SELECT state FROM orders WHERE ord = $1", ord)
            .await
    }

    /// The state the ledger holds for a reservation.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn reservation_state(&self, rsv: &str) -> Result<Option<String>> {
        self.optional_text("SELECT state FROM reservations WHERE rsv = $1", rsv)
            .await
    }

    /// The state of an order's refund, if one exists.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn refund_state(&self, ord: &str) -> Result<Option<String>> {
        self.optional_text("SELECT state FROM refunds WHERE ord = $1", ord)
            .await
    }

    /// Orders whose refund settlement must still ask the core for (paid after cancellation).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn refunds_to_request(&self, limit: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT ord FROM refunds WHERE state = 'to_request' ORDER BY created_at, ord LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    /// Every reservation and order of `sku` with its state: `(kind, id, state)`, kind being
    /// `reservation` or `order`.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn records(&self, sku: &str) -> Result<Vec<(String, String, String)>> {
        let rows = sqlx::query(
            "SELECT 'reservation', rsv, state FROM reservations WHERE sku = $1
             UNION ALL
             SELECT 'order', ord, state FROM orders WHERE sku = $1",
        )
        .bind(sku)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    /// Number of reservations and orders per state for `sku`: `(kind, state, count)`.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn state_counts(&self, sku: &str) -> Result<Vec<(String, String, i64)>> {
        let rows = sqlx::query(
            "SELECT 'reservation', state, COUNT(*) FROM reservations WHERE sku = $1 GROUP BY state
             UNION ALL
             SELECT 'order', state, COUNT(*) FROM orders WHERE sku = $1 GROUP BY state",
        )
        .bind(sku)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }
}

/// Appends the `n`-th (1-based) bind parameter. PostgreSQL numbers them (`$n`); SQLite gets
/// anonymous `?`, bound in order: SQLite resolves each *named* parameter (`$n`, `?n`) by a
/// linear search over the names seen so far, which made a 6 000-parameter statement spend
/// most of its time in the parser.
fn push_mark(sql: &mut String, backend: Backend, n: usize) {
    match backend {
        Backend::Postgres => {
            sql.push('$');
            sql.push_str(&n.to_string());
        }
        Backend::Sqlite => sql.push('?'),
    }
}

/// An applied event's identity from the first three columns of `row`: `part, entry_ms,
/// entry_seq`.
fn applied_identity(row: &sqlx::any::AnyRow) -> Result<(Partition, EntryId)> {
    let part: i64 = row.try_get(0)?;
    let ms: i64 = row.try_get(1)?;
    let seq: i64 = row.try_get(2)?;
    Ok((
        Partition::new(u16::try_from(part).unwrap_or(u16::MAX)),
        EntryId {
            ms: u64::try_from(ms).unwrap_or(0),
            seq: u64::try_from(seq).unwrap_or(0),
        },
    ))
}

/// The columns [`claim`] writes per event.
const CLAIM_COLUMNS: usize = 8;

/// Inserts every event's identity into `applied_events` (`ON CONFLICT DO NOTHING RETURNING`)
/// and returns the indices of the events this transaction inserted — the ones to apply. The
/// same identity twice in one batch is applied once (its first occurrence).
async fn claim(
    tx: &mut Tx<'_>,
    backend: Backend,
    events: &[Applicable],
) -> Result<Vec<usize>, sqlx::Error> {
    let mut fresh = HashSet::with_capacity(events.len());
    // Parameter limits: SQLite allows 32 766, PostgreSQL 65 535 per statement.
    for chunk in events.chunks(1000) {
        let mut sql = String::from(
            "INSERT INTO applied_events \
             (part, entry_ms, entry_seq, type, sku, at, request_id, subject) VALUES ",
        );
        for i in 0..chunk.len() {
            sql.push_str(if i > 0 { ",(" } else { "(" });
            for c in 1..=CLAIM_COLUMNS {
                if c > 1 {
                    sql.push(',');
                }
                push_mark(&mut sql, backend, i * CLAIM_COLUMNS + c);
            }
            sql.push(')');
        }
        sql.push_str(" ON CONFLICT DO NOTHING RETURNING part, entry_ms, entry_seq");
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for e in chunk {
            q = q
                .bind(i64::from(e.partition.index()))
                .bind(e.identity.ms_sql())
                .bind(e.identity.seq_sql())
                .bind(e.event.body.kind().as_str())
                .bind(e.event.sku.as_str())
                .bind(e.event.at)
                .bind(e.event.request.as_deref())
                .bind(e.event.body.subject());
        }
        for row in q.fetch_all(&mut **tx).await? {
            fresh.insert((
                row.try_get::<i64, _>(0)?,
                row.try_get::<i64, _>(1)?,
                row.try_get::<i64, _>(2)?,
            ));
        }
    }
    Ok(events
        .iter()
        .enumerate()
        // `remove`, not `contains`: the same identity twice in one batch applies once.
        .filter(|(_, e)| {
            fresh.remove(&(
                i64::from(e.partition.index()),
                e.identity.ms_sql(),
                e.identity.seq_sql(),
            ))
        })
        .map(|(i, _)| i)
        .collect())
}

fn sqlite_url(path: &str) -> String {
    if path == ":memory:" {
        return "sqlite::memory:".to_owned();
    }
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("sqlite://{path}{sep}mode=rwc")
}

/// Why [`apply_batch`] applied nothing.
enum Failed {
    /// Event `index` breaks a rule: nothing was written.
    Event { index: usize, failure: EventFailure },
    /// The database failed or refused: the caller decides (retry, or one event at a time).
    Db(sqlx::Error),
}

impl From<sqlx::Error> for Failed {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e)
    }
}

type Tx<'a> = Transaction<'a, Any>;

/// The one way events are applied: read the rows the events at `fresh` (claimed by this
/// transaction) touch, fold the events over them, write the result.
async fn apply_batch(
    tx: &mut Tx<'_>,
    backend: Backend,
    events: &[Applicable],
    fresh: &[usize],
) -> Result<(), Failed> {
    let rows = store::read(tx, backend, events, fresh).await?;
    let folded = fold::fold(rows, events, fresh)
        .map_err(|(index, failure)| Failed::Event { index, failure })?;
    store::write(tx, backend, events, &folded).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(p: u16, id: &str, pairs: &[(&str, &str)]) -> Applicable {
        Applicable {
            partition: Partition::new(p),
            identity: id.parse().unwrap(),
            event: Event::parse(pairs.iter().copied()).unwrap(),
        }
    }

    fn created(id: &str, rsv: &str) -> Applicable {
        ev(
            1,
            id,
            &[
                ("type", "reservation.created"),
                ("at", "1"),
                ("sku", "s"),
                ("rsv", rsv),
                ("seg", "0"),
                ("qty", "2"),
                ("buyer", "b"),
                ("expires", "9"),
            ],
        )
    }

    fn ordered(id: &str, rsv: &str, ord: &str) -> Applicable {
        ev(
            1,
            id,
            &[
                ("type", "order.created"),
                ("at", "2"),
                ("sku", "s"),
                ("ord", ord),
                ("rsv", rsv),
                ("seg", "0"),
                ("qty", "2"),
                ("buyer", "b"),
                ("amount", "10"),
                ("currency", "EUR"),
                ("deadline", "99"),
            ],
        )
    }

    fn paid(id: &str, ord: &str, psp: &str) -> Applicable {
        ev(
            1,
            id,
            &[
                ("type", "order.paid"),
                ("at", "3"),
                ("sku", "s"),
                ("ord", ord),
                ("seg", "0"),
                ("qty", "2"),
                ("psp_event", psp),
                ("amount", "10"),
                ("currency", "EUR"),
            ],
        )
    }

    async fn ledger() -> (Ledger, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("l.sqlite").display().to_string())
            .await
            .unwrap();
        (ledger, dir)
    }

    #[tokio::test]
    async fn applies_once_even_twice_in_one_batch() {
        let (ledger, _dir) = ledger().await;
        let batch = [
            created("1-0", "r1"),
            created("1-0", "r1"),
            ordered("2-0", "r1", "o1"),
        ];
        assert_eq!(
            ledger.apply(&batch).await.unwrap(),
            Applied {
                new: 2,
                duplicates: 1
            }
        );
        assert_eq!(
            ledger.apply(&batch).await.unwrap(),
            Applied {
                new: 0,
                duplicates: 3
            }
        );
        assert_eq!(
            ledger.reservation_state("r1").await.unwrap().as_deref(),
            Some("ordered")
        );
        assert_eq!(ledger.counts().await.unwrap().order_events, 1);
    }

    #[tokio::test]
    async fn names_the_event_that_breaks_a_rule_and_writes_nothing() {
        let (ledger, _dir) = ledger().await;
        let batch = [
            created("1-0", "r1"),
            paid("2-0", "o1", "psp1"),
            ordered("3-0", "r1", "o1"),
        ];
        match ledger.apply(&batch).await {
            Err(LedgerError::Event {
                index: 1,
                failure: EventFailure::Missing { what: "order", .. },
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            ledger.counts().await.unwrap(),
            Counts::default(),
            "rolled back"
        );
    }

    #[tokio::test]
    async fn a_second_event_creating_the_same_reservation_is_refused() {
        let (ledger, _dir) = ledger().await;
        ledger.apply(&[created("1-0", "r1")]).await.unwrap();
        match ledger
            .apply(&[created("2-0", "r2"), created("2-1", "r1")])
            .await
        {
            Err(LedgerError::Event {
                index: 1,
                failure:
                    EventFailure::Duplicate {
                        what: "reservation",
                        ..
                    },
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            ledger.counts().await.unwrap().reservations,
            1,
            "rolled back"
        );
    }

    #[tokio::test]
    async fn a_constraint_only_the_database_checks_is_pinned_on_its_event() {
        let (ledger, _dir) = ledger().await;
        ledger
            .apply(&[
                created("1-0", "r1"),
                ordered("1-1", "r1", "o1"),
                paid("1-2", "o1", "psp1"),
            ])
            .await
            .unwrap();
        // A second order paid with a provider event id the ledger already holds.
        let batch = [
            created("2-0", "r2"),
            ordered("2-1", "r2", "o2"),
            paid("2-2", "o2", "psp1"),
        ];
        match ledger.apply(&batch).await {
            Err(LedgerError::Event {
                index: 2,
                failure: EventFailure::Refused(_),
            }) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            ledger.counts().await.unwrap().applied_events,
            3,
            "rolled back"
        );
        ledger.apply(&batch[..2]).await.unwrap();
        assert_eq!(
            ledger.order_state("o2").await.unwrap().as_deref(),
            Some("pending_payment")
        );
    }
}
