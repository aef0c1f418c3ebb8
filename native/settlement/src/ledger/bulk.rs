//! The fast path of [`super::Ledger::apply`]: fold the batch's events over the current rows
//! in memory, then write each table with a few multi-row statements.
//!
//! Per-event statements cost a round trip each (a channel hop to SQLite's worker thread, a
//! network round trip to PostgreSQL); a batch of 1 000 events would need ~3 000 of them. Here
//! the batch needs one read per table (the rows its events touch, locked: `FOR UPDATE` on
//! PostgreSQL; SQLite's single writer lock is already held after the first insert) and one
//! upsert or insert per table. The fold enforces the same rules as the per-event path
//! (`apply_one`), and reports the first event that breaks one; a constraint the database
//! enforces on its own (a payment id seen before) makes the caller fall back to the
//! per-event path, which names the event.

use std::collections::HashMap;

use sqlx::{AssertSqlSafe, Row};

use super::{Applicable, Backend, EventFailure, Failure, Tx};
use crate::event::Body;

/// One bound value.
#[derive(Debug, Clone)]
enum Arg {
    Int(i64),
    Text(String),
    OptInt(Option<i64>),
    OptText(Option<String>),
}

fn int(v: i64) -> Arg {
    Arg::Int(v)
}

fn text(v: &str) -> Arg {
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
        for (i, _) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
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
        for row in chunk {
            for arg in row {
                q = match arg {
                    Arg::Int(v) => q.bind(*v),
                    Arg::Text(v) => q.bind(v.clone()),
                    Arg::OptInt(v) => q.bind(*v),
                    Arg::OptText(v) => q.bind(v.clone()),
                };
            }
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// `SELECT columns FROM table WHERE key IN (ids)`, locked on PostgreSQL.
async fn read_rows(
    tx: &mut Tx<'_>,
    backend: Backend,
    columns: &str,
    table: &str,
    key: &str,
    ids: &[String],
) -> Result<Vec<sqlx::any::AnyRow>, sqlx::Error> {
    let mut out = Vec::new();
    for chunk in ids.chunks(500) {
        let mut marks = String::new();
        for i in 1..=chunk.len() {
            if i > 1 {
                marks.push(',');
            }
            super::push_mark(&mut marks, backend, i);
        }
        let lock = if backend == Backend::Postgres {
            " FOR UPDATE"
        } else {
            ""
        };
        let sql = format!("SELECT {columns} FROM {table} WHERE {key} IN ({marks}){lock}");
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for id in chunk {
            q = q.bind(id.as_str());
        }
        out.extend(q.fetch_all(&mut **tx).await?);
    }
    Ok(out)
}

#[derive(Debug, Clone)]
struct Rsv {
    sku: String,
    segment: i64,
    qty: i64,
    buyer: String,
    expires_at: i64,
    state: String,
    created_at: i64,
    closed_at: Option<i64>,
    dirty: bool,
    /// Read from the database (else created by this batch).
    existed: bool,
}

#[derive(Debug, Clone)]
struct Ord {
    rsv: String,
    sku: String,
    segment: i64,
    qty: i64,
    buyer: String,
    amount: i64,
    currency: String,
    deadline_at: i64,
    state: String,
    sold_qty: i64,
    created_at: i64,
    updated_at: i64,
    dirty: bool,
    /// Read from the database (else created by this batch).
    existed: bool,
}

#[derive(Debug, Clone)]
struct Refund {
    /// Read from the database (else created by this batch).
    existed: bool,
    psp_event: Option<String>,
    amount: Option<i64>,
    currency: Option<String>,
    state: String,
    created_at: i64,
    updated_at: i64,
}

/// The outcome of the fast path for the events at `fresh` (indices into `events`).
pub(super) enum Bulk {
    /// Applied.
    Done,
    /// Event `index` breaks a rule: nothing is written.
    Event { index: usize, failure: EventFailure },
    /// The database failed or refused: the caller decides (retry or per-event path).
    Db(sqlx::Error),
}

impl From<sqlx::Error> for Bulk {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e)
    }
}

/// Applies the events at `fresh` (already claimed in `applied_events` by this transaction).
pub(super) async fn apply(
    tx: &mut Tx<'_>,
    backend: Backend,
    events: &[Applicable],
    fresh: &[usize],
) -> Bulk {
    match fold_and_write(tx, backend, events, fresh).await {
        Ok(()) => Bulk::Done,
        Err(b) => b,
    }
}

async fn fold_and_write(
    tx: &mut Tx<'_>,
    backend: Backend,
    events: &[Applicable],
    fresh: &[usize],
) -> Result<(), Bulk> {
    // Which rows the batch touches.
    let mut rsv_ids = Vec::new();
    let mut ord_ids = Vec::new();
    let mut refund_ids = Vec::new();
    for &i in fresh {
        match &events[i].event.body {
            Body::ReservationCreated { rsv, .. } | Body::ReservationReleased { rsv, .. } => {
                rsv_ids.push(rsv.clone())
            }
            Body::OrderCreated { ord, rsv, .. } => {
                rsv_ids.push(rsv.clone());
                ord_ids.push(ord.clone());
            }
            Body::OrderPaid { ord, .. } | Body::OrderCancelled { ord, .. } => {
                ord_ids.push(ord.clone())
            }
            Body::OrderPaidAfterCancel { ord, .. }
            | Body::OrderRefundRequested { ord }
            | Body::OrderRefunded { ord } => {
                ord_ids.push(ord.clone());
                refund_ids.push(ord.clone());
            }
            Body::SkuLoaded { .. } | Body::PaymentRejected { .. } => {}
        }
    }
    for ids in [&mut rsv_ids, &mut ord_ids, &mut refund_ids] {
        ids.sort_unstable();
        ids.dedup();
    }

    let mut rsvs: HashMap<String, Rsv> = HashMap::new();
    for r in read_rows(
        tx,
        backend,
        "rsv, sku, segment, qty, buyer, expires_at, state, created_at, closed_at",
        "reservations",
        "rsv",
        &rsv_ids,
    )
    .await?
    {
        rsvs.insert(
            r.try_get(0)?,
            Rsv {
                sku: r.try_get(1)?,
                segment: r.try_get(2)?,
                qty: r.try_get(3)?,
                buyer: r.try_get(4)?,
                expires_at: r.try_get(5)?,
                state: r.try_get(6)?,
                created_at: r.try_get(7)?,
                closed_at: r.try_get(8)?,
                dirty: false,
                existed: true,
            },
        );
    }
    let mut ords: HashMap<String, Ord> = HashMap::new();
    for r in read_rows(
        tx,
        backend,
        "ord, rsv, sku, segment, qty, buyer, amount, currency, deadline_at, state, sold_qty, created_at, updated_at",
        "orders",
        "ord",
        &ord_ids,
    )
    .await?
    {
        ords.insert(
            r.try_get(0)?,
            Ord {
                rsv: r.try_get(1)?,
                sku: r.try_get(2)?,
                segment: r.try_get(3)?,
                qty: r.try_get(4)?,
                buyer: r.try_get(5)?,
                amount: r.try_get(6)?,
                currency: r.try_get(7)?,
                deadline_at: r.try_get(8)?,
                state: r.try_get(9)?,
                sold_qty: r.try_get(10)?,
                created_at: r.try_get(11)?,
                updated_at: r.try_get(12)?,
                dirty: false,
                existed: true,
            },
        );
    }
    let mut refunds: HashMap<String, (Refund, bool)> = HashMap::new();
    for r in read_rows(
        tx,
        backend,
        "ord, psp_event, amount, currency, state, created_at, updated_at",
        "refunds",
        "ord",
        &refund_ids,
    )
    .await?
    {
        refunds.insert(
            r.try_get(0)?,
            (
                Refund {
                    existed: true,
                    psp_event: r.try_get(1)?,
                    amount: r.try_get(2)?,
                    currency: r.try_get(3)?,
                    state: r.try_get(4)?,
                    created_at: r.try_get(5)?,
                    updated_at: r.try_get(6)?,
                },
                false,
            ),
        );
    }

    let mut order_events: Vec<Vec<Arg>> = Vec::new();
    let mut payments: Vec<Vec<Arg>> = Vec::new();
    let mut sku_loads: Vec<usize> = Vec::new();
    for &index in fresh {
        let e = &events[index];
        let at = e.event.at;
        let fail = |failure: EventFailure| Bulk::Event { index, failure };
        let event = e.event.body.type_name();
        let ledger_row = |ord: &str, from: Option<&str>, to: &str, detail: &str| {
            vec![
                int(i64::from(e.partition.index())),
                int(e.identity.ms_sql()),
                int(e.identity.seq_sql()),
                text(ord),
                text(event),
                Arg::OptText(from.map(str::to_owned)),
                text(to),
                int(at),
                text(detail),
            ]
        };
        let payment = |psp: &str, ord: &str, amount: i64, currency: &str, outcome: &str| {
            vec![
                text(psp),
                text(ord),
                int(amount),
                text(currency),
                text(outcome),
                int(at),
            ]
        };
        // Moves an order between states as `transition` does in the per-event path.
        let mut transition =
            |ord: &str, from: &[&str], to: &str, sold: Option<i64>, detail: &str| {
                let Some(o) = ords.get_mut(ord) else {
                    return Err(fail(EventFailure::Missing {
                        what: "order",
                        id: ord.to_owned(),
                    }));
                };
                if !from.contains(&o.state.as_str()) {
                    return Err(fail(EventFailure::IllegalTransition {
                        event,
                        what: "order",
                        id: ord.to_owned(),
                        state: o.state.clone(),
                    }));
                }
                order_events.push(ledger_row(ord, Some(&o.state), to, detail));
                o.state = to.to_owned();
                if let Some(sold) = sold {
                    o.sold_qty = sold;
                }
                o.updated_at = at;
                o.dirty = true;
                Ok(())
            };
        let close = |rsv: &str, to: &str, rsvs: &mut HashMap<String, Rsv>| match rsvs.get_mut(rsv) {
            None => Err(fail(EventFailure::Missing {
                what: "reservation",
                id: rsv.to_owned(),
            })),
            Some(r) if r.state != "held" => Err(fail(EventFailure::IllegalTransition {
                event,
                what: "reservation",
                id: rsv.to_owned(),
                state: r.state.clone(),
            })),
            Some(r) => {
                r.state = to.to_owned();
                r.closed_at = Some(at);
                r.dirty = true;
                Ok(())
            }
        };
        match &e.event.body {
            Body::SkuLoaded { .. } => sku_loads.push(index),
            Body::ReservationCreated {
                rsv,
                seg,
                qty,
                buyer,
                expires,
            } => {
                if rsvs.contains_key(rsv) {
                    return Err(fail(EventFailure::Duplicate {
                        what: "reservation",
                        id: rsv.clone(),
                    }));
                }
                rsvs.insert(
                    rsv.clone(),
                    Rsv {
                        sku: e.event.sku.clone(),
                        segment: *seg,
                        qty: *qty,
                        buyer: buyer.clone(),
                        expires_at: *expires,
                        state: "held".to_owned(),
                        created_at: at,
                        closed_at: None,
                        dirty: true,
                        existed: false,
                    },
                );
            }
            Body::ReservationReleased { rsv, reason, .. } => close(rsv, reason.state(), &mut rsvs)?,
            Body::OrderCreated {
                ord,
                rsv,
                seg,
                qty,
                buyer,
                amount,
                currency,
                deadline,
            } => {
                if ords.contains_key(ord) {
                    return Err(fail(EventFailure::Duplicate {
                        what: "order",
                        id: ord.clone(),
                    }));
                }
                close(rsv, "ordered", &mut rsvs)?;
                ords.insert(
                    ord.clone(),
                    Ord {
                        rsv: rsv.clone(),
                        sku: e.event.sku.clone(),
                        segment: *seg,
                        qty: *qty,
                        buyer: buyer.clone(),
                        amount: *amount,
                        currency: currency.clone(),
                        deadline_at: *deadline,
                        state: "pending_payment".to_owned(),
                        sold_qty: 0,
                        created_at: at,
                        updated_at: at,
                        dirty: true,
                        existed: false,
                    },
                );
                order_events.push(ledger_row(ord, None, "pending_payment", ""));
            }
            Body::OrderPaid {
                ord,
                qty,
                psp_event,
                amount,
                currency,
                ..
            } => {
                transition(ord, &["pending_payment"], "paid", Some(*qty), psp_event)?;
                payments.push(payment(psp_event, ord, *amount, currency, "captured"));
            }
            Body::OrderCancelled { ord, reason, .. } => {
                transition(ord, &["pending_payment"], "cancelled", None, reason)?;
            }
            Body::OrderPaidAfterCancel {
                ord,
                psp_event,
                amount,
                currency,
                ..
            } => {
                transition(ord, &["cancelled"], "paid_after_cancel", None, psp_event)?;
                payments.push(payment(psp_event, ord, *amount, currency, "after_cancel"));
                if refunds.contains_key(ord) {
                    return Err(fail(EventFailure::Duplicate {
                        what: "refund",
                        id: ord.clone(),
                    }));
                }
                refunds.insert(
                    ord.clone(),
                    (
                        Refund {
                            existed: false,
                            psp_event: Some(psp_event.clone()),
                            amount: Some(*amount),
                            currency: Some(currency.clone()),
                            state: "to_request".to_owned(),
                            created_at: at,
                            updated_at: at,
                        },
                        true,
                    ),
                );
            }
            Body::OrderRefundRequested { ord } | Body::OrderRefunded { ord } => {
                let (from, to, refund): (&[&str], _, _) = match &e.event.body {
                    Body::OrderRefunded { .. } => (&["refund_pending"], "refunded", "refunded"),
                    _ => (
                        &["paid", "paid_after_cancel"],
                        "refund_pending",
                        "requested",
                    ),
                };
                transition(ord, from, to, None, "")?;
                let entry = refunds.entry(ord.clone()).or_insert_with(|| {
                    (
                        Refund {
                            existed: false,
                            psp_event: None,
                            amount: None,
                            currency: None,
                            state: refund.to_owned(),
                            created_at: at,
                            updated_at: at,
                        },
                        true,
                    )
                });
                entry.0.state = refund.to_owned();
                entry.0.updated_at = at;
                entry.1 = true;
            }
            Body::PaymentRejected {
                ord,
                psp_event,
                reason,
                amount,
                currency,
            } => {
                payments.push(payment(
                    psp_event,
                    ord,
                    *amount,
                    currency,
                    &format!("rejected_{reason}"),
                ));
            }
        }
    }

    // Writes: SKU loads (rare) one by one, then one statement per table.
    for index in sku_loads {
        match super::apply_one(tx, &events[index]).await {
            Ok(()) => {}
            Err(Failure::Storage(e) | Failure::Event(EventFailure::Refused(e))) => {
                return Err(Bulk::Db(e));
            }
            Err(Failure::Event(failure)) => return Err(Bulk::Event { index, failure }),
        }
    }
    // Rows this batch created are plainly inserted, so a row that appeared meanwhile (another
    // event creating the same id) is a unique-key error, never a silent merge; rows read
    // (and locked) above are upserted.
    let (new, old): (Vec<_>, Vec<_>) = rsvs
        .iter()
        .filter(|(_, r)| r.dirty)
        .partition(|(_, r)| !r.existed);
    let reservation_row = |(id, r): &(&String, &Rsv)| {
        vec![
            text(id),
            text(&r.sku),
            int(r.segment),
            int(r.qty),
            text(&r.buyer),
            int(r.expires_at),
            text(&r.state),
            int(r.created_at),
            Arg::OptInt(r.closed_at),
        ]
    };
    const RESERVATIONS: &str = "INSERT INTO reservations (rsv, sku, segment, qty, buyer, expires_at, state, created_at, closed_at)";
    write_rows(
        tx,
        backend,
        RESERVATIONS,
        "",
        &new.iter().map(reservation_row).collect::<Vec<_>>(),
    )
    .await?;
    write_rows(
        tx,
        backend,
        RESERVATIONS,
        "ON CONFLICT (rsv) DO UPDATE SET state = excluded.state, closed_at = excluded.closed_at",
        &old.iter().map(reservation_row).collect::<Vec<_>>(),
    )
    .await?;
    let (new, old): (Vec<_>, Vec<_>) = ords
        .iter()
        .filter(|(_, o)| o.dirty)
        .partition(|(_, o)| !o.existed);
    let order_row = |(id, o): &(&String, &Ord)| {
        vec![
            text(id),
            text(&o.rsv),
            text(&o.sku),
            int(o.segment),
            int(o.qty),
            text(&o.buyer),
            int(o.amount),
            text(&o.currency),
            int(o.deadline_at),
            text(&o.state),
            int(o.sold_qty),
            int(o.created_at),
            int(o.updated_at),
        ]
    };
    const ORDERS: &str = "INSERT INTO orders (ord, rsv, sku, segment, qty, buyer, amount, currency, deadline_at, \
                          state, sold_qty, created_at, updated_at)";
    write_rows(
        tx,
        backend,
        ORDERS,
        "",
        &new.iter().map(order_row).collect::<Vec<_>>(),
    )
    .await?;
    write_rows(
        tx,
        backend,
        ORDERS,
        "ON CONFLICT (ord) DO UPDATE SET state = excluded.state, sold_qty = excluded.sold_qty, \
         updated_at = excluded.updated_at",
        &old.iter().map(order_row).collect::<Vec<_>>(),
    )
    .await?;
    write_rows(
        tx,
        backend,
        "INSERT INTO order_events (part, entry_ms, entry_seq, ord, type, from_state, to_state, at, detail)",
        "",
        &order_events,
    )
    .await?;
    write_rows(
        tx,
        backend,
        "INSERT INTO payments (psp_event, ord, amount, currency, outcome, at)",
        "",
        &payments,
    )
    .await?;
    let (new, old): (Vec<_>, Vec<_>) = refunds
        .iter()
        .filter(|(_, (_, dirty))| *dirty)
        .partition(|(_, (r, _))| !r.existed);
    let refund_row = |(id, (r, _)): &(&String, &(Refund, bool))| {
        vec![
            text(id),
            Arg::OptText(r.psp_event.clone()),
            Arg::OptInt(r.amount),
            Arg::OptText(r.currency.clone()),
            text(&r.state),
            int(r.created_at),
            int(r.updated_at),
        ]
    };
    const REFUNDS: &str =
        "INSERT INTO refunds (ord, psp_event, amount, currency, state, created_at, updated_at)";
    write_rows(
        tx,
        backend,
        REFUNDS,
        "",
        &new.iter().map(refund_row).collect::<Vec<_>>(),
    )
    .await?;
    write_rows(
        tx,
        backend,
        REFUNDS,
        "ON CONFLICT (ord) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
        &old.iter().map(refund_row).collect::<Vec<_>>(),
    )
    .await?;
    Ok(())
}
