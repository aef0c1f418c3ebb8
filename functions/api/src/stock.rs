//! `GET /v1/stock/{sku}`: a SKU's stock, from the edge cache while fresh (or stale while one
//! request refreshes it), from Redis otherwise.

use flashcart_core::ids::{RequestId, SkuId};
use flashcart_core::inventory::StockLevels;
use flashcart_core::{RedisExecutor, Rejection};
use flashcart_edge_cache::{Clock, KvStore, Lookup};
use serde::{Deserialize, Serialize};

use crate::{ApiRequest, ApiResponse, Edge, respond};

/// A stock read as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(schemars::JsonSchema),
    schemars(rename = "Stock")
)]
pub struct StockView {
    /// The SKU.
    #[cfg_attr(feature = "openapi", schemars(with = "SkuId"))]
    pub sku: String,
    /// Units loaded.
    pub stock: u64,
    /// Units free to reserve.
    pub available: u64,
    /// Units held by reservations.
    pub reserved: u64,
    /// Units in unpaid orders.
    pub ordered: u64,
    /// Units sold.
    pub sold: u64,
    /// Whether nothing is free.
    pub sold_out: bool,
    /// Price of one unit, minor units.
    pub price: u64,
    /// Currency.
    #[cfg_attr(feature = "openapi", schemars(with = "flashcart_core::ids::Currency"))]
    pub currency: String,
    /// Sale opens, unix ms.
    pub sale_start: u64,
    /// Sale closes, unix ms.
    pub sale_end: u64,
}

impl StockView {
    pub(crate) fn of(sku: &SkuId, levels: &StockLevels) -> Self {
        Self {
            sku: sku.to_string(),
            stock: levels.terms.stock,
            available: levels.available(),
            reserved: levels.reserved(),
            ordered: levels.ordered(),
            sold: levels.sold(),
            sold_out: levels.available() == 0,
            price: levels.terms.price,
            currency: levels.terms.currency.clone(),
            sale_start: levels.terms.sale_start,
            sale_end: levels.terms.sale_end,
        }
    }
}

impl<E: RedisExecutor, S: KvStore, C: Clock + Clone> Edge<E, S, C> {
    /// `GET /v1/stock/{sku}`: served from the edge cache while fresh (or stale while one
    /// request refreshes), from Redis otherwise. `request_id` names the request in the edge
    /// cache's refresh lease.
    pub async fn stock_check(&self, req: &ApiRequest, request_id: &RequestId) -> ApiResponse {
        respond(self.stock_check_inner(req, request_id).await)
    }

    async fn stock_check_inner(
        &self,
        req: &ApiRequest,
        request_id: &RequestId,
    ) -> Result<ApiResponse, Rejection> {
        let segs = req
            .segments_after("/v1/stock/")
            .ok_or(Rejection::NotFound)?;
        let [sku] = segs.as_slice() else {
            return Err(Rejection::NotFound);
        };
        if req.method != "GET" {
            return Err(Rejection::MethodNotAllowed { allow: "GET" });
        }
        let sku = SkuId::parse(sku)?;
        let lookup = self
            .cache
            .lookup::<StockView>(sku.as_str(), request_id.as_str())
            .await
            .unwrap_or(Lookup::Miss);
        let stale = match lookup {
            Lookup::Fresh { value, age_ms }
            | Lookup::Stale {
                value,
                age_ms,
                refresh: false,
            } => {
                return Ok(self.stock_response(&value, age_ms, "hit"));
            }
            Lookup::Unknown => return Err(Rejection::UnknownSku),
            Lookup::Stale {
                value,
                age_ms,
                refresh: true,
            } => Some((value, age_ms)),
            Lookup::Miss => None,
        };
        match self.inventory.stock(&sku).await {
            Ok(levels) => {
                let view = StockView::of(&sku, &levels);
                let _ = self.cache.put(sku.as_str(), &view).await;
                Ok(self.stock_response(&view, 0, "miss"))
            }
            Err(Rejection::UnknownSku) => {
                let _ = self.cache.put_unknown(sku.as_str()).await;
                Err(Rejection::UnknownSku)
            }
            // Redis unreachable: a stale answer beats none.
            Err(Rejection::Unavailable(_) | Rejection::Unreachable(_)) if stale.is_some() => {
                let (value, age_ms) = stale.unwrap_or_else(|| unreachable!());
                Ok(self.stock_response(&value, age_ms, "stale-on-error"))
            }
            Err(e) => Err(e),
        }
    }

    fn stock_response(&self, view: &StockView, age_ms: u64, cache: &str) -> ApiResponse {
        let c = self.cache.config();
        ApiResponse::json(200, view)
            .with_header(
                "cache-control",
                format!(
                    "public, max-age=0, stale-while-revalidate={}",
                    c.max_stale_ms.div_ceil(1000)
                ),
            )
            .with_header("age", (age_ms / 1000).to_string())
            .with_header("flashcart-cache", cache)
            .with_header(
                "flashcart-max-staleness-ms",
                (c.staleness_ms + c.jitter_ms).to_string(),
            )
    }
}
