//! What the ledger knows, read whole for a restore of Redis (see `crate::recovery`): SKUs with
//! their segments' levels, every reservation and order, payment outcomes and purchase counts.

use sqlx::Row;

use super::{Ledger, Result, SegmentLevels};

/// A SKU's terms and its segments (with the partition each lives in) as the ledger has them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(missing_docs, reason = "the columns of `skus`, named as there")]
pub struct SkuRow {
    pub sku: String,
    pub stock: i64,
    pub segments: i64,
    pub price: i64,
    pub currency: String,
    pub starts_at: i64,
    pub ends_at: i64,
    pub buyer_limit: i64,
    pub ttl_ms: i64,
    pub paywin_ms: i64,
    /// The fingerprint of the terms as loaded; `None` for SKUs loaded before events
    /// carried it.
    pub fingerprint: Option<String>,
    /// `(partition, levels)` of every segment.
    pub levels: Vec<(i64, SegmentLevels)>,
}

/// A reservation row.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(missing_docs, reason = "the columns of `reservations`, named as there")]
pub struct ReservationRow {
    pub rsv: String,
    pub segment: i64,
    pub qty: i64,
    pub buyer: String,
    pub expires_at: i64,
    /// `held`, `ordered`, `expired` or `cancelled`.
    pub state: String,
    pub created_at: i64,
    pub closed_at: Option<i64>,
}

/// An order row, with the payment that paid it (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(missing_docs, reason = "the columns of `orders`, named as there")]
pub struct OrderRow {
    pub ord: String,
    pub rsv: String,
    pub segment: i64,
    pub qty: i64,
    pub buyer: String,
    pub amount: i64,
    pub currency: String,
    pub deadline_at: i64,
    pub state: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// The provider event that captured the payment (in time or after cancellation), and when.
    pub paid: Option<(String, i64)>,
}

/// A payment provider event's recorded outcome, with its order's state now.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(missing_docs, reason = "the columns of `payments`, named as there")]
pub struct PaymentRow {
    pub psp_event: String,
    pub ord: String,
    /// `captured`, `after_cancel`, `rejected_amount_mismatch`, `rejected_duplicate_payment`.
    pub outcome: String,
    pub at: i64,
    pub order_state: String,
}

impl Ledger {
    /// Every SKU with its terms and segment levels.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn sku_rows(&self) -> Result<Vec<SkuRow>> {
        let rows = sqlx::query(
            "SELECT sku, stock, segments, price, currency, starts_at, ends_at, buyer_limit, ttl_ms,
                    paywin_ms, fingerprint FROM skus ORDER BY sku",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let sku: String = r.try_get(0)?;
            let parts = sqlx::query("SELECT segment, part FROM sku_segments WHERE sku = $1")
                .bind(&sku)
                .fetch_all(&self.pool)
                .await?;
            let levels = self.levels(&sku).await?;
            let mut placed = Vec::with_capacity(levels.len());
            for l in levels {
                let part = parts
                    .iter()
                    .find(|p| p.try_get::<i64, _>(0).ok() == Some(l.segment))
                    .map(|p| p.try_get::<i64, _>(1))
                    .transpose()?
                    .unwrap_or(-1);
                placed.push((part, l));
            }
            out.push(SkuRow {
                stock: r.try_get(1)?,
                segments: r.try_get(2)?,
                price: r.try_get(3)?,
                currency: r.try_get(4)?,
                starts_at: r.try_get(5)?,
                ends_at: r.try_get(6)?,
                buyer_limit: r.try_get(7)?,
                ttl_ms: r.try_get(8)?,
                paywin_ms: r.try_get(9)?,
                fingerprint: r.try_get(10)?,
                levels: placed,
                sku,
            });
        }
        Ok(out)
    }

    /// Every reservation.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn reservation_rows(&self) -> Result<Vec<ReservationRow>> {
        let rows = sqlx::query(
            "SELECT rsv, segment, qty, buyer, expires_at, state, created_at, closed_at FROM reservations",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ReservationRow {
                    rsv: r.try_get(0)?,
                    segment: r.try_get(1)?,
                    qty: r.try_get(2)?,
                    buyer: r.try_get(3)?,
                    expires_at: r.try_get(4)?,
                    state: r.try_get(5)?,
                    created_at: r.try_get(6)?,
                    closed_at: r.try_get(7)?,
                })
            })
            .collect()
    }

    /// Every order, with the payment that paid it.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn order_rows(&self) -> Result<Vec<OrderRow>> {
        let rows = sqlx::query(
            "SELECT o.ord, o.rsv, o.segment, o.qty, o.buyer, o.amount, o.currency, o.deadline_at,
                    o.state, o.created_at, o.updated_at, p.psp_event, p.at
             FROM orders o LEFT JOIN payments p
               ON p.ord = o.ord AND p.outcome IN ('captured', 'after_cancel')",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let psp: Option<String> = r.try_get(11)?;
                let at: Option<i64> = r.try_get(12)?;
                Ok(OrderRow {
                    ord: r.try_get(0)?,
                    rsv: r.try_get(1)?,
                    segment: r.try_get(2)?,
                    qty: r.try_get(3)?,
                    buyer: r.try_get(4)?,
                    amount: r.try_get(5)?,
                    currency: r.try_get(6)?,
                    deadline_at: r.try_get(7)?,
                    state: r.try_get(8)?,
                    created_at: r.try_get(9)?,
                    updated_at: r.try_get(10)?,
                    paid: psp.zip(at),
                })
            })
            .collect()
    }

    /// Every payment provider event's outcome.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn payment_rows(&self) -> Result<Vec<PaymentRow>> {
        let rows = sqlx::query(
            "SELECT p.psp_event, p.ord, p.outcome, p.at, o.state
             FROM payments p JOIN orders o ON o.ord = p.ord",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PaymentRow {
                    psp_event: r.try_get(0)?,
                    ord: r.try_get(1)?,
                    outcome: r.try_get(2)?,
                    at: r.try_get(3)?,
                    order_state: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// Units every buyer took of every SKU with a per-buyer limit, `(sku, buyer, units)`: the
    /// sum over all their reservations, whatever became of them (the core never gives a
    /// limit back for an expired reservation or a cancelled order).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn purchase_counts(&self) -> Result<Vec<(String, String, i64)>> {
        let rows = sqlx::query(
            "SELECT r.sku, r.buyer, CAST(SUM(r.qty) AS BIGINT) FROM reservations r
             JOIN skus s ON s.sku = r.sku WHERE s.buyer_limit > 0 GROUP BY r.sku, r.buyer",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }
}
