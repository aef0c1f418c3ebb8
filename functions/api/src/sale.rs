//! The live sale page: `GET /` serves one self-contained HTML file (no build step, no
//! external asset), and `GET /v1/admin/skus/{sku}/live` the view it polls with the admin
//! token: the SKU's levels by segment and partition, and each partition's settlement backlog.
//!
//! The page adds what the node's host knows when it serves `/.well-known/flashcart/metrics`
//! (flashcart's host does; Spin does not): deduct answers per second, latency percentiles,
//! Redis errors. Where that is missing the page says so instead of showing zeros.

use std::collections::BTreeSet;

use flashcart_core::ids::SkuId;
use flashcart_core::keys::Partition;
use flashcart_core::{RedisExecutor, Rejection};
use flashcart_edge_cache::{Clock, KvStore};

use crate::{ApiRequest, ApiResponse, Edge, StockView};

/// The page, compiled into the component.
const PAGE: &str = include_str!("sale_page.html");

/// What the page may do: run its own inline script and style, and fetch from this origin.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// `GET /`: the sale page.
pub(crate) fn page(req: &ApiRequest) -> Result<ApiResponse, Rejection> {
    if req.method != "GET" {
        return Err(Rejection::MethodNotAllowed { allow: "GET" });
    }
    Ok(ApiResponse {
        status: 200,
        headers: vec![
            ("content-type".into(), "text/html; charset=utf-8".into()),
            ("cache-control".into(), "no-store".into()),
            ("content-security-policy".into(), PAGE_POLICY.into()),
            ("x-content-type-options".into(), "nosniff".into()),
            ("referrer-policy".into(), "no-referrer".into()),
        ],
        body: PAGE.as_bytes().to_vec(),
    })
}

impl<E: RedisExecutor, S: KvStore, C: Clock + Clone> Edge<E, S, C> {
    /// `GET /v1/admin/skus/{sku}/live`: the SKU's levels (as the admin state shows them) and
    /// the backlog of every partition holding one of its segments, read from Redis now.
    pub(crate) async fn sale_live(&self, sku: &SkuId) -> Result<ApiResponse, Rejection> {
        let levels = self.inventory.stock(sku).await?;
        let partitions: BTreeSet<u16> = levels.segments.iter().map(|s| s.partition).collect();
        let mut backlog = Vec::with_capacity(partitions.len());
        for p in partitions {
            backlog.push(self.inventory.backlog(Partition::new(p)).await?);
        }
        Ok(ApiResponse::json(
            200,
            &serde_json::json!({
                "sku": sku.as_str(),
                "now": self.clock.now_ms(),
                "terms": levels.terms,
                "totals": StockView::of(sku, &levels),
                "segments": levels.segments,
                "invariant_holds": levels.invariant_holds(),
                "partitions": backlog,
            }),
        )
        .with_header("cache-control", "no-store"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> ApiRequest {
        ApiRequest {
            method: "GET".into(),
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    #[test]
    fn the_page_is_html_that_may_only_talk_to_its_own_origin() {
        let page = page(&get("/")).expect("page");
        assert_eq!(page.status, 200);
        assert_eq!(
            page.header_value("content-type"),
            Some("text/html; charset=utf-8")
        );
        let policy = page.header_value("content-security-policy").expect("csp");
        assert!(policy.contains("connect-src 'self'"), "{policy}");
        let html = String::from_utf8(page.body).expect("utf-8");
        assert!(
            html.contains("/v1/admin/skus/"),
            "the page reads the live view"
        );
        assert!(!html.contains("http://") && !html.contains("https://"));
    }

    #[test]
    fn the_page_only_answers_get() {
        let mut post = get("/");
        post.method = "POST".into();
        assert_eq!(
            page(&post).unwrap_err(),
            Rejection::MethodNotAllowed { allow: "GET" }
        );
    }
}
