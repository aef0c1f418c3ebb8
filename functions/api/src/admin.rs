//! `PUT /v1/admin/skus/{sku}` (load, preheat), `GET /v1/admin/skus/{sku}` (full state) and
//! `GET /v1/admin/skus/{sku}/live` (the sale page's view), behind the admin bearer token; and
//! `GET /`, the sale page itself (no data in it, so no token).

use flashcart_core::ids::{SkuId, ValidationError};
use flashcart_core::inventory::{LoadOutcome, SegmentLevel, SkuTerms};
use flashcart_core::sku::SkuSpec;
use flashcart_core::{Now, RedisExecutor, Rejection};
use flashcart_edge_cache::{Clock, KvStore};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::{ApiRequest, ApiResponse, Edge, StockView, http, respond};

/// The admin token, in `secrecy`'s box: its `Debug` is redacted and it is zeroed when
/// dropped. Built from the text the deployment gives (a Spin variable).
#[derive(Clone, Debug)]
pub struct Secret(SecretString);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }
}

impl ExposeSecret<str> for Secret {
    fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

/// What a load did (201 loaded, 200 unchanged).
#[derive(Serialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub(crate) struct LoadResult<'a> {
    /// The SKU.
    sku: &'a SkuId,
    /// `loaded`, or `unchanged` when the same terms were loaded already.
    outcome: LoadOutcome,
}

/// A SKU's full state, read from Redis.
#[derive(Serialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub(crate) struct SkuState<'a> {
    /// The SKU.
    sku: &'a SkuId,
    /// Its terms as loaded.
    terms: &'a SkuTerms,
    /// The sums over its segments.
    totals: StockView,
    /// Every segment's levels.
    segments: &'a [SegmentLevel],
    /// Whether `initial = available + reserved + ordered + sold` in every segment.
    invariant_holds: bool,
}

/// Compares two secrets in constant time (HMAC both under a fixed key, then verify).
fn same_secret(given: &str, expected: &Secret) -> bool {
    let tag = |v: &str| {
        let mut m = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(b"flashcart-admin")
            .expect("any key length");
        m.update(v.as_bytes());
        m
    };
    tag(expected.expose_secret())
        .verify_slice(&tag(given).finalize().into_bytes())
        .is_ok()
}

impl<E: RedisExecutor, S: KvStore, C: Clock + Clone> Edge<E, S, C> {
    /// `PUT /v1/admin/skus/{sku}` (load, preheat) and `GET /v1/admin/skus/{sku}` (full state).
    /// Bearer token required; nothing changes without it.
    pub async fn admin(&self, req: &ApiRequest) -> ApiResponse {
        respond(self.admin_inner(req).await)
    }

    async fn admin_inner(&self, req: &ApiRequest) -> Result<ApiResponse, Rejection> {
        if req.path == "/" {
            // The sale page holds no data: it asks for the token and reads the live view.
            return crate::sale::page(req);
        }
        let segs = req
            .segments_after("/v1/admin/skus/")
            .ok_or(Rejection::NotFound)?;
        let (sku, live) = match segs.as_slice() {
            [sku] => (*sku, false),
            [sku, "live"] => (*sku, true),
            _ => return Err(Rejection::NotFound),
        };
        let token = req
            .header_value("authorization")
            .and_then(|v| v.strip_prefix("Bearer "));
        match (&self.config.admin_token, token) {
            (Some(expected), Some(given)) if same_secret(given, expected) => {}
            _ => return Err(Rejection::Unauthorized),
        }
        let sku = SkuId::parse(sku)?;
        match (req.method.as_str(), live) {
            ("GET", true) => self.sale_live(&sku).await,
            (_, true) => Err(Rejection::MethodNotAllowed { allow: "GET" }),
            ("PUT", false) => self.load_sku(req, &sku).await,
            ("GET", false) => self.sku_state(&sku).await,
            _ => Err(Rejection::MethodNotAllowed { allow: "GET, PUT" }),
        }
    }

    /// `PUT`: loads the SKU's terms (the path names the SKU; a body naming another is refused).
    async fn load_sku(&self, req: &ApiRequest, sku: &SkuId) -> Result<ApiResponse, Rejection> {
        http::check_json_body(req, self.config.max_body_bytes)?;
        let mut body: serde_json::Map<String, serde_json::Value> = http::parse_json(&req.body)?;
        match body.get("sku") {
            Some(v) if v.as_str() != Some(sku.as_str()) => {
                return Err(Rejection::Inconsistent(ValidationError::new(
                    "sku",
                    "differs from the SKU in the path",
                )));
            }
            _ => {}
        }
        body.insert("sku".into(), sku.as_str().into());
        let spec: SkuSpec = http::parse_json(&serde_json::to_vec(&body).unwrap_or_default())?;
        let outcome = self
            .inventory
            .load_sku_for(&spec, Now::Server, req.request_id().as_ref())
            .await?;
        let _ = self.cache.invalidate(sku.as_str()).await;
        let status = match outcome {
            LoadOutcome::Loaded => 201,
            LoadOutcome::Unchanged => 200,
        };
        Ok(ApiResponse::json(status, &LoadResult { sku, outcome }))
    }

    /// `GET`: the SKU's terms, totals and every segment's levels, read from Redis.
    async fn sku_state(&self, sku: &SkuId) -> Result<ApiResponse, Rejection> {
        let levels = self.inventory.stock(sku).await?;
        Ok(ApiResponse::json(
            200,
            &SkuState {
                sku,
                terms: &levels.terms,
                totals: StockView::of(sku, &levels),
                segments: &levels.segments,
                invariant_holds: levels.invariant_holds(),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_token_never_prints_itself() {
        let token = Secret::new("tok-3f9a");
        let config = crate::EdgeConfig {
            admin_token: Some(token.clone()),
            ..crate::EdgeConfig::default()
        };
        for shown in [format!("{token:?}"), format!("{config:?}")] {
            assert!(!shown.contains("tok-3f9a"), "{shown}");
        }
    }

    #[test]
    fn only_the_same_token_passes() {
        let token = Secret::new("tok-3f9a");
        assert!(same_secret("tok-3f9a", &token));
        for wrong in ["", "tok-3f9", "tok-3f9ab", "TOK-3F9A"] {
            assert!(!same_secret(wrong, &token), "{wrong:?}");
        }
    }
}
