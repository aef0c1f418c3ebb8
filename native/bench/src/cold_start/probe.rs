//! The real request the bench sends each component, chosen by the route the manifest gives
//! it, and what has to exist in Redis first (a reservation for an order, an order for a
//! payment), prepared through the inventory so that every request is a first: a new buyer,
//! a new Idempotency-Key, a new PSP event.

use anyhow::Context as _;
use flashcart_core::Now;
use flashcart_core::ids::{BuyerId, IdempotencyKey, Quantity, ReservationId, SkuId};
use flashcart_core::inventory::{OrderRequest, ReserveRequest};
use flashcart_core::signature::{self, SigningSecret};
use flashcart_host::bench::Probe;
use flashcart_host::manifest::Manifest;
use flashcart_inventory::NativeInventory;
use http::Method;

/// The operation behind a route of flashcart's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `GET /v1/stock/{sku}`: 200.
    StockCheck,
    /// `POST /v1/stock/{sku}/reservations`: 201.
    Deduct,
    /// `POST /v1/orders`: 201.
    OrderCreate,
    /// `POST /v1/payments/callback`, signed: 200.
    PaymentCallback,
    /// `PUT /v1/admin/skus/{sku}` of a new SKU: 201.
    Admin,
}

impl Operation {
    /// The operation a manifest route serves, if it is one of flashcart's.
    pub fn of_route(route: &str) -> Option<Self> {
        match route {
            "/v1/stock/:sku" => Some(Self::StockCheck),
            "/v1/stock/:sku/reservations" => Some(Self::Deduct),
            "/v1/orders" => Some(Self::OrderCreate),
            "/v1/payments/callback" => Some(Self::PaymentCallback),
            "/v1/admin/skus/:sku" => Some(Self::Admin),
            _ => None,
        }
    }

    /// What a component of `manifest` serves: its first route that is one of flashcart's.
    ///
    /// # Errors
    /// When it serves none (the message lists its routes).
    pub fn of_component(manifest: &Manifest, component: &str) -> anyhow::Result<Self> {
        let routes: Vec<&str> = manifest
            .http_triggers
            .iter()
            .filter(|t| t.component == component)
            .filter_map(|t| t.route.as_deref())
            .collect();
        routes
            .iter()
            .find_map(|r| Self::of_route(r))
            .with_context(|| {
                format!(
                    "component `{component}` serves no route the bench has a request for \
                     (its routes: {}; known: /v1/stock/:sku, /v1/stock/:sku/reservations, \
                     /v1/orders, /v1/payments/callback, /v1/admin/skus/:sku); measure its \
                     .wasm alone with --component",
                    if routes.is_empty() {
                        "none".to_owned()
                    } else {
                        routes.join(", ")
                    }
                )
            })
    }

    /// The status a success is.
    pub fn success(self) -> u16 {
        match self {
            Self::StockCheck | Self::PaymentCallback => 200,
            Self::Deduct | Self::OrderCreate | Self::Admin => 201,
        }
    }
}

/// What the probes need to know of the deployment.
pub struct Setup<'a> {
    /// The inventory on the bench's Redis (the library and the SKU loaded).
    pub inventory: &'a NativeInventory,
    /// The SKU on sale.
    pub sku: &'a SkuId,
    /// The SKU's body for `PUT /v1/admin/skus/…` (another SKU name per request).
    pub sku_body: &'a serde_json::Value,
    /// The admin token the components were given.
    pub admin_token: &'a str,
    /// The PSP signing secrets the components were given (comma-separated, newest first).
    pub psp_signing_secrets: &'a str,
    /// Unique to this run, so ids never collide with an earlier run's.
    pub run: &'a str,
}

fn unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Setup<'_> {
    /// `count` fresh requests for `operation`, with whatever each needs in Redis created.
    ///
    /// # Errors
    /// When preparing a reservation or an order fails.
    pub async fn probes(&self, operation: Operation, count: usize) -> anyhow::Result<Vec<Probe>> {
        let mut probes = Vec::with_capacity(count);
        for i in 0..count {
            probes.push(self.probe(operation, i).await?);
        }
        Ok(probes)
    }

    async fn probe(&self, operation: Operation, i: usize) -> anyhow::Result<Probe> {
        let sku = self.sku.as_str();
        let buyer = format!("cold-{}-{}-{i}", self.run, operation_tag(operation));
        Ok(match operation {
            Operation::StockCheck => Probe::new(Method::GET, format!("/v1/stock/{sku}")),
            Operation::Deduct => Probe::new(Method::POST, format!("/v1/stock/{sku}/reservations"))
                .header("idempotency-key", format!("{buyer}-key"))
                .json(serde_json::to_vec(
                    &serde_json::json!({ "buyer_id": buyer, "quantity": 1 }),
                )?),
            Operation::OrderCreate => {
                let reservation = self.reserve(&buyer).await?;
                Probe::new(Method::POST, "/v1/orders")
                    .header("idempotency-key", format!("{buyer}-order"))
                    .json(serde_json::to_vec(&serde_json::json!({
                        "reservation_id": reservation.to_string(), "buyer_id": buyer,
                    }))?)
            }
            Operation::PaymentCallback => {
                let reservation = self.reserve(&buyer).await?;
                let order = self
                    .inventory
                    .create_order(
                        &OrderRequest {
                            request: None,
                            reservation,
                            buyer: BuyerId::parse(&buyer)?,
                            key: IdempotencyKey::parse(&format!("{buyer}-order"))?,
                            fingerprint: flashcart_core::fingerprint("", buyer.as_bytes()),
                        },
                        Now::Server,
                    )
                    .await
                    .with_context(|| format!("creating an order for {buyer}"))?;
                let body = serde_json::to_vec(&serde_json::json!({
                    "event_id": format!("evt_{buyer}"),
                    "type": "payment.succeeded",
                    "order_id": order.id.to_string(),
                    "amount": order.amount,
                    "currency": order.currency,
                }))?;
                let secret = SigningSecret::list(self.psp_signing_secrets)
                    .into_iter()
                    .next()
                    .context("psp_signing_secrets is empty")?;
                let signed = signature::sign(&secret, unix_s(), &body);
                Probe::new(Method::POST, "/v1/payments/callback")
                    .header(signature::HEADER, signed)
                    .json(body)
            }
            Operation::Admin => {
                let mut body = self.sku_body.clone();
                let name = format!("{sku}-admin-{}-{i}", self.run);
                body["sku"] = name.clone().into();
                Probe::new(Method::PUT, format!("/v1/admin/skus/{name}"))
                    .header("authorization", format!("Bearer {}", self.admin_token))
                    .json(serde_json::to_vec(&body)?)
            }
        })
    }

    /// One unit reserved for `buyer`; its reservation id.
    async fn reserve(&self, buyer: &str) -> anyhow::Result<ReservationId> {
        let request = ReserveRequest {
            request: None,
            sku: self.sku.clone(),
            buyer: BuyerId::parse(buyer)?,
            quantity: Quantity::new(1)?,
            key: IdempotencyKey::parse(&format!("{buyer}-rsv"))?,
            fingerprint: flashcart_core::fingerprint(self.sku.as_str(), buyer.as_bytes()),
        };
        let reservation = self
            .inventory
            .reserve(&request, Now::Server)
            .await
            .with_context(|| format!("reserving a unit for {buyer}"))?;
        Ok(reservation.id)
    }
}

fn operation_tag(operation: Operation) -> &'static str {
    match operation {
        Operation::StockCheck => "stock",
        Operation::Deduct => "deduct",
        Operation::OrderCreate => "order",
        Operation::PaymentCallback => "pay",
        Operation::Admin => "admin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_of_spin_toml_has_its_operation() -> anyhow::Result<()> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../spin.toml");
        let manifest = Manifest::load(&path)?;
        let mut found: Vec<(String, Operation)> = manifest
            .components
            .keys()
            .map(|id| Ok((id.clone(), Operation::of_component(&manifest, id)?)))
            .collect::<anyhow::Result<_>>()?;
        found.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            found,
            [
                ("admin".to_owned(), Operation::Admin),
                ("deduct".to_owned(), Operation::Deduct),
                ("order-create".to_owned(), Operation::OrderCreate),
                ("payment-callback".to_owned(), Operation::PaymentCallback),
                ("stock-check".to_owned(), Operation::StockCheck),
            ]
        );
        Ok(())
    }
}
