//! The I/O of an apply: read the rows a batch touches, then write what the fold made of them
//! with a few multi-row statements.
//!
//! Per-event statements cost a round trip each (a channel hop to SQLite's worker thread, a
//! network round trip to PostgreSQL); a batch of 1 000 events would need ~3 000 of them. Here
//! the batch needs one read per table (the rows its events touch, locked: `FOR UPDATE` on
//! PostgreSQL; SQLite's single writer lock is already held after the claim) and one insert or
//! upsert per table.

use std::collections::HashMap;

use flashcart_core::event::Body;
use sqlx::{AssertSqlSafe, Row};

use super::fold::{Folded, Rows, Tracked};
use super::rows::Record;
use super::{Applicable, Backend, Tx};

/// One bound value.
#[derive(Debug, Clone)]
pub(super) enum Arg {
    Int(i64),
    Text(String),
    OptInt(Option<i64>),
    OptText(Option<String>),
}

pub(super) fn int(v: i64) -> Arg {
    Arg::Int(v)
}

pub(super) fn text(v: &str) -> Arg {
    Arg::Text(v.to_owned())
}

/// Runs `head VALUES (…),(…) tail` for `rows`, chunked under the parameter limits.
async fn write_rows(
    tx: &mut Tx<'_>,
    backend: Backend,
    head: &str,
    tail: &str,
    rows: &[Vec<Arg>],
) -> Result<(), sqlx::Error> {
    let Some(width) = rows.first().map(Vec::len) else {
        return Ok(());
    };
    // SQLite allows 32 766 parameters per statement, PostgreSQL 65 535.
    let per = (30_000 / width).clamp(1, 1_000);
    for chunk in rows.chunks(per) {
        let mut sql = String::with_capacity(head.len() + tail.len() + chunk.len() * width * 5);
        sql.push_str(head);
        sql.push_str(" VALUES ");
        let mut n = 0;
        for i in 0..chunk.len() {
            sql.push_str(if i > 0 { ",(" } else { "(" });
            for c in 0..width {
                n += 1;
                if c > 0 {
                    sql.push(',');
                }
                super::push_mark(&mut sql, backend, n);
            }
            sql.push(')');
        }
        sql.push(' ');
        sql.push_str(tail);
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for arg in chunk.iter().flatten() {
            q = match arg {
                Arg::Int(v) => q.bind(*v),
                Arg::Text(v) => q.bind(v.clone()),
                Arg::OptInt(v) => q.bind(*v),
                Arg::OptText(v) => q.bind(v.clone()),
            };
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// The rows of `T`'s table whose key is one of `ids`, locked on PostgreSQL, by key.
async fn read_rows<T: Record>(
    tx: &mut Tx<'_>,
    backend: Backend,
    ids: &[String],
) -> Result<HashMap<String, Tracked<T>>, sqlx::Error> {
    let mut out = HashMap::with_capacity(ids.len());
    let lock = if backend == Backend::Postgres {
        " FOR UPDATE"
    } else {
        ""
    };
    for chunk in ids.chunks(500) {
        let mut marks = String::new();
        for i in 1..=chunk.len() {
            if i > 1 {
                marks.push(',');
            }
            super::push_mark(&mut marks, backend, i);
        }
        let (columns, table, key) = (T::COLUMNS, T::TABLE, T::KEY);
        let sql = format!("SELECT {columns} FROM {table} WHERE {key} IN ({marks}){lock}");
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for id in chunk {
            q = q.bind(id.as_str());
        }
        for r in q.fetch_all(&mut **tx).await? {
            out.insert(r.try_get(0)?, Tracked::read(T::from_row(&r)?));
        }
    }
    Ok(out)
}

/// The ids of the reservations, orders and refunds the events at `fresh` touch, sorted.
fn touched(events: &[Applicable], fresh: &[usize]) -> [Vec<String>; 3] {
    let [mut rsvs, mut ords, mut refunds] = [Vec::new(), Vec::new(), Vec::new()];
    for &i in fresh {
        let body = &events[i].event.body;
        if let Body::ReservationCreated { rsv, .. } = body {
            rsvs.push(rsv.clone());
        }
        if let Some((rsv, _)) = body.reservation_end() {
            rsvs.push(rsv.to_owned());
        }
        if let Body::OrderCreated { ord, .. } = body {
            ords.push(ord.clone());
        }
        if let Some(change) = body.order_change() {
            ords.push(change.ord.to_owned());
        }
        if let Body::OrderPaidAfterCancel { ord, .. }
        | Body::OrderRefundRequested { ord }
        | Body::OrderRefunded { ord } = body
        {
            refunds.push(ord.clone());
        }
    }
    for ids in [&mut rsvs, &mut ords, &mut refunds] {
        ids.sort_unstable();
        ids.dedup();
    }
    [rsvs, ords, refunds]
}

/// Reads (and on PostgreSQL locks) the rows the events at `fresh` touch.
pub(super) async fn read(
    tx: &mut Tx<'_>,
    backend: Backend,
    events: &[Applicable],
    fresh: &[usize],
) -> Result<Rows, sqlx::Error> {
    let [rsvs, ords, refunds] = touched(events, fresh);
    Ok(Rows {
        reservations: read_rows(tx, backend, &rsvs).await?,
        orders: read_rows(tx, backend, &ords).await?,
        refunds: read_rows(tx, backend, &refunds).await?,
    })
}

/// Writes what the fold changed: SKU loads (rare) one by one, then one statement per table.
pub(super) async fn write(
    tx: &mut Tx<'_>,
    backend: Backend,
    events: &[Applicable],
    folded: &Folded,
) -> Result<(), sqlx::Error> {
    for &index in &folded.sku_loads {
        write_sku_load(tx, &events[index]).await?;
    }
    write_tracked(tx, backend, &folded.rows.reservations).await?;
    write_tracked(tx, backend, &folded.rows.orders).await?;
    write_appended(tx, backend, events, folded).await?;
    write_tracked(tx, backend, &folded.rows.refunds).await
}

/// Writes the dirty rows of one table: rows this batch created are plainly inserted, so a
/// row that appeared meanwhile (another event creating the same id) is a unique-key error,
/// never a silent merge; rows read (and locked) before are upserted.
async fn write_tracked<T: Record>(
    tx: &mut Tx<'_>,
    backend: Backend,
    rows: &HashMap<String, Tracked<T>>,
) -> Result<(), sqlx::Error> {
    let (new, old): (Vec<_>, Vec<_>) = rows.values().filter(|t| t.dirty).partition(|t| !t.existed);
    let head = format!("INSERT INTO {} ({})", T::TABLE, T::COLUMNS);
    let new: Vec<_> = new.iter().map(|t| t.row.args()).collect();
    write_rows(tx, backend, &head, "", &new).await?;
    let old: Vec<_> = old.iter().map(|t| t.row.args()).collect();
    let tail = format!("ON CONFLICT ({}) DO UPDATE SET {}", T::KEY, T::UPDATE);
    write_rows(tx, backend, &head, &tail, &old).await
}

/// The append-only tables: `order_events` (keyed by the event that caused each transition)
/// and `payments`.
async fn write_appended(
    tx: &mut Tx<'_>,
    backend: Backend,
    events: &[Applicable],
    folded: &Folded,
) -> Result<(), sqlx::Error> {
    let order_events: Vec<Vec<Arg>> = folded
        .order_events
        .iter()
        .map(|o| {
            let e = &events[o.event];
            vec![
                int(i64::from(e.partition.index())),
                int(e.identity.ms_sql()),
                int(e.identity.seq_sql()),
                text(&o.ord),
                text(e.event.body.kind().as_str()),
                Arg::OptText(o.from.map(|s| s.as_str().to_owned())),
                text(o.to.as_str()),
                int(e.event.at),
                text(&o.detail),
            ]
        })
        .collect();
    write_rows(
        tx,
        backend,
        "INSERT INTO order_events (part, entry_ms, entry_seq, ord, type, from_state, to_state, at, detail)",
        "",
        &order_events,
    )
    .await?;
    let payments: Vec<Vec<Arg>> = folded
        .payments
        .iter()
        .map(|p| {
            vec![
                text(&p.psp_event),
                text(&p.ord),
                int(p.amount),
                text(&p.currency),
                text(p.outcome),
                int(p.at),
            ]
        })
        .collect();
    write_rows(
        tx,
        backend,
        "INSERT INTO payments (psp_event, ord, amount, currency, outcome, at)",
        "",
        &payments,
    )
    .await
}

/// A `sku.loaded`: every partition sends its own copy of the terms, the newest load wins;
/// the segments living in the event's partition are placed there.
async fn write_sku_load(tx: &mut Tx<'_>, e: &Applicable) -> Result<(), sqlx::Error> {
    let Body::SkuLoaded {
        stock,
        segs,
        segments,
        price,
        currency,
        start,
        end,
        limit,
        ttl,
        paywin,
        fp,
    } = &e.event.body
    else {
        return Ok(());
    };
    let sku = e.event.sku.as_str();
    sqlx::query(
        "INSERT INTO skus (sku, stock, segments, price, currency, starts_at, ends_at, buyer_limit,
                           ttl_ms, paywin_ms, loaded_at, fingerprint)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (sku) DO UPDATE SET stock = excluded.stock, segments = excluded.segments,
            price = excluded.price, currency = excluded.currency, starts_at = excluded.starts_at,
            ends_at = excluded.ends_at, buyer_limit = excluded.buyer_limit, ttl_ms = excluded.ttl_ms,
            paywin_ms = excluded.paywin_ms, loaded_at = excluded.loaded_at,
            fingerprint = COALESCE(excluded.fingerprint, skus.fingerprint)
         WHERE excluded.loaded_at >= skus.loaded_at",
    )
    .bind(sku)
    .bind(*stock)
    .bind(*segs)
    .bind(*price)
    .bind(currency.as_str())
    .bind(*start)
    .bind(*end)
    .bind(*limit)
    .bind(*ttl)
    .bind(*paywin)
    .bind(e.event.at)
    .bind(fp.as_deref())
    .execute(&mut **tx)
    .await?;
    for (segment, initial) in segments {
        sqlx::query(
            "INSERT INTO sku_segments (sku, segment, part, initial) VALUES ($1, $2, $3, $4)
             ON CONFLICT (sku, segment) DO UPDATE SET part = excluded.part, initial = excluded.initial",
        )
        .bind(sku)
        .bind(*segment)
        .bind(i64::from(e.partition.index()))
        .bind(*initial)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
