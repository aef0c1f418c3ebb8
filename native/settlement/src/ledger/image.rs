//! What the ledger knows, read whole for a restore of Redis (see `crate::recovery`): SKUs with
//! their segments' levels, every reservation and order, payment outcomes and purchase counts.

use sqlx::{AssertSqlSafe, Row};

use flashcart_core::inventory::PaymentOutcome;

use super::rows::{OrderRow, Record, ReservationRow, payment_outcome_name};
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

/// An order row with the payment that paid it (in time or after cancellation), if any: the
/// provider's event id and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaidOrder {
    /// The order.
    pub order: OrderRow,
    /// The payment that captured it.
    pub paid: Option<(String, i64)>,
}

/// A payment provider event's recorded outcome, with its order's state now.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(missing_docs, reason = "the columns of `payments`, named as there")]
pub struct PaymentRow {
    pub psp_event: String,
    pub ord: String,
    /// A [`super::payment_outcome_name`].
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
        let sql = format!("SELECT {} FROM reservations", ReservationRow::COLUMNS);
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(ReservationRow::from_row)
            .collect::<Result<_, _>>()?)
    }

    /// Every order, with the payment that paid it.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn order_rows(&self) -> Result<Vec<PaidOrder>> {
        let sql = format!(
            "SELECT {}, paid_event, paid_at FROM orders LEFT JOIN
               (SELECT ord AS paid_ord, psp_event AS paid_event, at AS paid_at FROM payments
                WHERE outcome IN ($1, $2)) p ON p.paid_ord = orders.ord",
            OrderRow::COLUMNS
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(payment_outcome_name(&PaymentOutcome::Paid))
            .bind(payment_outcome_name(&PaymentOutcome::PaidAfterCancel))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let psp: Option<String> = r.try_get(13)?;
                let at: Option<i64> = r.try_get(14)?;
                Ok(PaidOrder {
                    order: OrderRow::from_row(r)?,
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
