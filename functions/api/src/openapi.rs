//! The edge API's OpenAPI 3.1 document, generated from the code (feature `openapi`).
//!
//! The body schemas are the JSON Schemas (`schemars`) of the very types the handlers parse
//! and render — `DeductBody`, `OrderBody`, `SkuSpec`, `Order`, … — whose validated fields
//! (`SkuId`, `BuyerId`, `Quantity`, …) build their schemas from the limits and character sets
//! their validation reads. The refusals each operation documents are [`Rejection`] values:
//! status, problem type and extension members come from the same code that answers them.
//! What is left here is the routing (paths, methods, parameters, headers) and the prose.
//!
//! `docs/openapi.json` is [`render`]'s output, committed and compiled into the stock-check
//! component (`crate::document`); `flashcart-contract`'s test fails when they differ, and
//! says how to regenerate it:
//!
//! ```text
//! cargo run --locked -p flashcart-api --features openapi --example openapi > docs/openapi.json
//! ```

use std::collections::{BTreeMap, BTreeSet};

use flashcart_core::Rejection;
use flashcart_core::ids::{IdempotencyKey, OrderId, RequestId, SkuId, ValidationError};
use flashcart_core::inventory::Order;
use flashcart_core::problem::PROBLEM_JSON;
use flashcart_core::signature;
use flashcart_core::sku::SkuSpec;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use crate::admin::{LoadResult, SkuState};
use crate::deduct::{DeductBody, ReservationView};
use crate::orders::{CancelBody, OrderBody};
use crate::payments::{PaymentBody, Receipt};
use crate::stock::StockView;

/// Problems only the host writes (the request never reached a component, or the component
/// failed): type slug, status, when. `native/host` answers them; `flashcart-contract`
/// checks the list against it.
pub const HOST_PROBLEMS: [(&str, u16, &str); 6] = [
    ("unreadable-body", 400, "the body could not be read"),
    (
        "body-timeout",
        408,
        "the body did not arrive within the body read timeout",
    ),
    (
        "component-timeout",
        504,
        "the component ran past its deadline and was stopped",
    ),
    ("component-failed", 500, "the component trapped"),
    (
        "component-error",
        500,
        "the component answered with an error",
    ),
    (
        "instance-unavailable",
        503,
        "no instance of the component could be created; retry",
    ),
];

const IDEMPOTENCY: &str = "Required on mutating buyer calls. Same key + same body replays the \
     first answer (header `Idempotent-Replayed: true`); same key + another body is 422; while \
     the first is still in flight, 409. Keys are remembered for 24 h. A request refused \
     before any decision (invalid, unknown, not on sale, rate limited) stores nothing.";

/// The SKU the examples name.
pub const EXAMPLE_SKU: &str = "sneaker-42";

const UNAVAILABLE: &str = "Redis unreachable; retry.";

const WRITE_UNAVAILABLE: &str = "Redis unreachable, or the partition this request writes is \
     fenced after a Redis restart or failover until settlement has checked it against the \
     ledger (`Retry-After: 1`); retry. Nothing was written. With `durability = replicated`, \
     also: no replica confirmed the write in time, or the master has no replica in sync \
     (`Retry-After: 1`) — the request may have been decided: retry with the same \
     Idempotency-Key to get the stored answer.";

/// One value of each rejection kind a document lists (the payloads do not matter: status,
/// type and extension members do).
mod sample {
    use super::{Rejection, ValidationError};

    pub(super) fn invalid() -> Rejection {
        Rejection::Invalid(ValidationError::new("body", ""))
    }
    pub(super) fn inconsistent() -> Rejection {
        Rejection::Inconsistent(ValidationError::new("body", ""))
    }
    pub(super) fn not_allowed() -> Rejection {
        Rejection::MethodNotAllowed { allow: "" }
    }
    pub(super) fn unavailable() -> Rejection {
        Rejection::Unavailable(String::new())
    }
    pub(super) fn write_unavailable() -> [Rejection; 3] {
        [
            Rejection::Unavailable(String::new()),
            Rejection::Fenced,
            Rejection::NotReplicated(String::new()),
        ]
    }
}

/// An operation being described.
struct Operation {
    method: &'static str,
    path: &'static str,
    body: Value,
}

impl Operation {
    fn new(method: &'static str, path: &'static str, id: &str, summary: &str) -> Self {
        Self {
            method,
            path,
            body: json!({ "operationId": id, "summary": summary, "responses": {} }),
        }
    }

    fn describe(mut self, text: &str) -> Self {
        self.body["description"] = text.into();
        self
    }

    fn param(mut self, name: &str, place: &str, schema: Value, text: Option<&str>) -> Self {
        let mut param = json!({ "name": name, "in": place, "required": true, "schema": schema });
        if let Some(text) = text {
            param["description"] = text.into();
        }
        push(&mut self.body, "parameters", param);
        self
    }

    fn request(mut self, schema: Value) -> Self {
        self.body["requestBody"] = json!({
            "required": true,
            "content": { "application/json": { "schema": schema } },
        });
        self
    }

    fn example(mut self, body: Value) -> Self {
        self.body["requestBody"]["content"]["application/json"]["example"] = body;
        self
    }

    fn admin(mut self) -> Self {
        self.body["security"] = json!([{ "bearer": [] }]);
        self
    }

    fn answer(mut self, status: u16, text: &str, schema: Value, headers: Value) -> Self {
        let mut response = json!({
            "description": text,
            "content": { "application/json": { "schema": schema } },
        });
        if headers.as_object().is_some_and(|h| !h.is_empty()) {
            response["headers"] = headers;
        }
        self.body["responses"][status.to_string()] = response;
        self
    }

    /// An OpenAPI link from the `status` answer (given before it): the operation a client
    /// calls next with values from this exchange. schemathesis' stateful phase follows them,
    /// so the contract test reaches the success paths that need an earlier answer's ids.
    fn link(mut self, status: u16, name: &str, link: Value) -> Self {
        let response = &mut self.body["responses"][status.to_string()];
        assert!(
            response.is_object(),
            "{name}: link from an undescribed {status}"
        );
        response["links"][name] = link;
        self
    }

    /// Refusals with one status; a second group with the same status joins the first.
    fn refuse(mut self, text: &str, rejections: &[Rejection]) -> Self {
        let status = rejections[0].status();
        assert!(
            rejections.iter().all(|r| r.status() == status),
            "{text}: one status per group"
        );
        let response = &mut self.body["responses"][status.to_string()];
        let why = match response["x-why"].as_str() {
            Some(before) => format!("{before} {text}"),
            None => text.to_owned(),
        };
        response["x-why"] = why.into();
        for r in rejections {
            let kind = format!("urn:flashcart:problem:{}", r.slug());
            push(response, "x-types", kind.into());
        }
        for (name, value) in headers_of(rejections) {
            response["headers"][name] = value;
        }
        self
    }

    /// The answers every operation of this kind can give besides its own.
    fn routed(self) -> Self {
        self.refuse("No such route.", &[Rejection::NotFound])
            .refuse(
                "Method not allowed (see `Allow`).",
                &[sample::not_allowed()],
            )
    }

    /// An answer that is a page, not JSON.
    fn html(mut self, status: u16, text: &str) -> Self {
        self.body["responses"][status.to_string()] = json!({
            "description": text,
            "content": { "text/html": { "schema": { "type": "string" } } },
        });
        self
    }

    fn with_body(self) -> Self {
        self.refuse("Body over 16 KiB.", &[Rejection::PayloadTooLarge])
            .refuse("Body is not JSON.", &[Rejection::UnsupportedMediaType])
    }
}

/// Headers a refusal carries ([`crate::ApiResponse::problem`] and the handlers set them).
fn headers_of(rejections: &[Rejection]) -> Vec<(&'static str, Value)> {
    let mut headers = Vec::new();
    for r in rejections {
        match r {
            Rejection::MethodNotAllowed { .. } => headers.push((
                "Allow",
                json!({ "schema": { "type": "string" }, "required": true,
                        "description": "The methods this path takes." }),
            )),
            Rejection::Unauthorized => headers.push((
                "WWW-Authenticate",
                json!({ "schema": { "type": "string", "const": "Bearer" }, "required": true }),
            )),
            Rejection::Fenced | Rejection::NotReplicated(_) => headers.push((
                "Retry-After",
                json!({ "schema": { "type": "string", "pattern": "^[0-9]+$" },
                        "description": "Seconds; set when the partition is fenced or a replica did not confirm." }),
            )),
            Rejection::RateLimited { .. } => {
                headers.push((
                    "Retry-After",
                    json!({ "schema": { "type": "string", "pattern": "^[0-9]+$" }, "required": true }),
                ));
                headers.push((
                    "RateLimit",
                    json!({ "schema": { "type": "string" }, "required": true,
                            "description": "`\"buyer\";r=<remaining>;t=<seconds>`" }),
                ));
            }
            _ => {}
        }
    }
    headers
}

fn push(object: &mut Value, key: &str, value: Value) {
    match object[key].as_array_mut() {
        Some(list) => list.push(value),
        None => object[key] = json!([value]),
    }
}

/// Sets `maximum` on unsigned integers from their `format` (serde refuses a number beyond
/// its Rust type with a 400, so the schema must not allow one).
fn bounded(schema: &mut Schema) {
    let max = match schema.get("format").and_then(Value::as_str) {
        Some("uint8") => Some(u64::from(u8::MAX)),
        Some("uint16") => Some(u64::from(u16::MAX)),
        Some("uint32") => Some(u64::from(u32::MAX)),
        Some("uint64" | "uint") => Some(u64::MAX),
        _ => None,
    };
    if let Some(max) = max
        && schema.get("maximum").is_none()
    {
        schema.insert("maximum".into(), max.into());
    }
    schemars::transform::transform_subschemas(&mut bounded, schema);
}

fn reference<T: JsonSchema>(generator: &mut SchemaGenerator) -> Value {
    generator.subschema_for::<T>().to_value()
}

/// The document.
///
/// # Panics
/// When an operation's refusals mix statuses in one group (a bug in this module).
pub fn document() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .with_transform(bounded)
        .into_generator();
    let g = &mut generator;
    let mut sku = reference::<SkuId>(g);
    // The SKU the contract test loads, so that examples reach a SKU on sale.
    sku["examples"] = json!([EXAMPLE_SKU]);
    let order_id = reference::<OrderId>(g);
    let key = reference::<IdempotencyKey>(g);
    let problem = json!({ "$ref": "#/components/schemas/Problem" });
    let replayed = json!({
        "Idempotent-Replayed": {
            "schema": { "type": "string", "const": "true" },
            "description": "Present when this answer replays an earlier decision.",
        }
    });
    let rate_policy = json!({
        "schema": { "type": "string" },
        "description": "`\"buyer\";q=<burst>;w=<seconds>`, when the per-buyer limiter is on.",
    });

    let operations = vec![
        Operation::new("get", "/v1/stock/{sku}", "stockCheck", "Read a SKU's stock (edge-cached).")
            .describe(
                "Served from the node's cache while fresh (250 ms plus jitter), stale while one \
                 request refreshes (up to 5 s), from Redis otherwise. `Cache-Control` says how \
                 stale it may be; `Flashcart-Cache` says where it came from (`hit`, `miss`, \
                 `stale-on-error`).",
            )
            .param("sku", "path", sku.clone(), None)
            .answer(
                200,
                "Stock.",
                reference::<StockView>(g),
                json!({
                    "Cache-Control": { "schema": { "type": "string" }, "required": true,
                        "description": "`public, max-age=0, stale-while-revalidate=<s>`" },
                    "Age": { "schema": { "type": "string", "pattern": "^[0-9]+$" }, "required": true },
                    "Flashcart-Cache": { "schema": { "enum": ["hit", "miss", "stale-on-error"] }, "required": true },
                    "Flashcart-Max-Staleness-Ms": { "schema": { "type": "string", "pattern": "^[0-9]+$" }, "required": true },
                }),
            )
            .refuse("Invalid SKU; nothing changed.", &[sample::invalid()])
            .refuse("Unknown SKU (cached briefly).", &[Rejection::UnknownSku])
            .routed()
            .refuse(UNAVAILABLE, &[sample::unavailable()]),
        Operation::new(
            "post",
            "/v1/stock/{sku}/reservations",
            "deduct",
            "Reserve units (the deduct).",
        )
        .param("sku", "path", sku.clone(), None)
        .param("Idempotency-Key", "header", key.clone(), Some(IDEMPOTENCY))
        .request(reference::<DeductBody>(g))
        .example(json!({ "buyer_id": "buyer-1", "quantity": 1 }))
        .answer(
            201,
            "Reserved until `expires_at`.",
            reference::<ReservationView<'_>>(g),
            json!({ "Idempotent-Replayed": replayed["Idempotent-Replayed"], "RateLimit-Policy": rate_policy }),
        )
        .link(
            201,
            "OrderIt",
            json!({
                "operationId": "createOrder",
                "description": "The buyer orders the units held.",
                "requestBody": {
                    "reservation_id": "$response.body#/reservation_id",
                    "buyer_id": "$request.body#/buyer_id",
                },
            }),
        )
        .refuse(
            "Invalid input or missing key; nothing changed.",
            &[sample::invalid(), Rejection::MissingIdempotencyKey],
        )
        .refuse("Unknown SKU.", &[Rejection::UnknownSku])
        .refuse(
            "Sold out (also answered from the node's stock map without a Redis call once every \
             partition of the SKU is known empty; header `Flashcart-Cache: sold-out`), fewer \
             units than asked, the buyer's limit, the sale not started, or the key still in \
             flight.",
            &[
                Rejection::SoldOut,
                Rejection::Insufficient,
                Rejection::LimitReached { remaining: 0 },
                Rejection::NotOnSale { starts_at: 0 },
                Rejection::IdempotencyInFlight,
            ],
        )
        .refuse("The sale has ended.", &[Rejection::SaleEnded])
        .refuse(
            "Idempotency-Key reused with another request: another body, or the same body for \
             another SKU.",
            &[Rejection::IdempotencyMismatch],
        )
        .refuse(
            "The buyer's token bucket is empty (20 burst, 10/s by default; applied in Redis \
             with the reserve itself: a replay, or a request refused before a decision, takes \
             no token). Nothing changed.",
            &[Rejection::RateLimited { retry_after_ms: 0 }],
        )
        .routed()
        .with_body()
        .refuse(WRITE_UNAVAILABLE, &sample::write_unavailable()),
        Operation::new(
            "post",
            "/v1/orders",
            "createOrder",
            "Turn a reservation into an order awaiting payment.",
        )
        .param("Idempotency-Key", "header", key.clone(), Some(IDEMPOTENCY))
        .request(reference::<OrderBody>(g))
        .answer(
            201,
            "Order created (or replayed).",
            reference::<Order>(g),
            json!({
                "Location": { "schema": { "type": "string" }, "required": true,
                    "description": "`/v1/orders/{id}`" },
                "Idempotent-Replayed": replayed["Idempotent-Replayed"],
            }),
        )
        .link(
            201,
            "ReadIt",
            json!({ "operationId": "getOrder", "parameters": { "id": "$response.body#/id" } }),
        )
        .link(
            201,
            "CancelIt",
            json!({
                "operationId": "cancelOrder",
                "description": "The buyer cancels it.",
                "parameters": { "id": "$response.body#/id" },
                "requestBody": { "buyer_id": "$response.body#/buyer" },
            }),
        )
        .link(
            201,
            "PayIt",
            json!({
                "operationId": "paymentCallback",
                "description": "The payment provider reports it paid, in full.",
                "requestBody": {
                    "order_id": "$response.body#/id",
                    "amount": "$response.body#/amount",
                    "currency": "$response.body#/currency",
                    "type": "payment.succeeded",
                },
            }),
        )
        .refuse(
            "Invalid input or missing key; nothing changed.",
            &[sample::invalid(), Rejection::MissingIdempotencyKey],
        )
        .refuse(
            "No such reservation for this buyer (also: one naming a partition this deployment \
             does not have).",
            &[Rejection::UnknownReservation],
        )
        .refuse(
            "An order was already created from this reservation (`order_id` says which).",
            &[Rejection::AlreadyOrdered {
                order_id: String::new(),
            }],
        )
        .refuse(
            "The reservation expired or was released.",
            &[Rejection::ReservationGone],
        )
        .refuse(
            "Idempotency-Key reused with another body (another reservation), wherever that \
             reservation lives: the key is bound in the buyer's home partition.",
            &[Rejection::IdempotencyMismatch],
        )
        .routed()
        .with_body()
        .refuse(WRITE_UNAVAILABLE, &sample::write_unavailable()),
        Operation::new("get", "/v1/orders/{id}", "getOrder", "Read an order.")
            .param("id", "path", order_id.clone(), None)
            .answer(200, "The order.", reference::<Order>(g), json!({}))
            .refuse("Invalid order id.", &[sample::invalid()])
            .refuse(
                "Unknown order (also: one naming a partition this deployment does not have).",
                &[Rejection::UnknownOrder],
            )
            .routed()
            .refuse(UNAVAILABLE, &[sample::unavailable()]),
        Operation::new(
            "post",
            "/v1/orders/{id}/cancel",
            "cancelOrder",
            "The buyer cancels an order awaiting payment; its units go back on sale.",
        )
        .describe(
            "Idempotent without a key: an order cancelled already (by an earlier call, or by \
             its payment deadline) answers the same 200 with `Idempotent-Replayed: true`. To \
             anyone but the order's buyer the order does not exist (404). The ledger hears of \
             it as `order.cancelled` with reason `buyer`.",
        )
        .param("id", "path", order_id.clone(), None)
        .request(reference::<CancelBody>(g))
        .answer(
            200,
            "Cancelled (or cancelled already).",
            reference::<Order>(g),
            replayed.clone(),
        )
        .refuse("Invalid input.", &[sample::invalid()])
        .refuse(
            "Unknown order, or not this buyer's.",
            &[Rejection::UnknownOrder],
        )
        .refuse(
            "The order is past awaiting payment (paid, refunded, …): `state` in the problem \
             says which.",
            &[Rejection::IllegalTransition {
                state: String::new(),
            }],
        )
        .routed()
        .with_body()
        .refuse(
            "Redis unreachable, or the order's partition is fenced after a Redis restart or \
             failover until settlement has checked it (`Retry-After: 1`); with `durability = \
             replicated`, also: no replica confirmed the write in time. Retry: a cancel is \
             idempotent.",
            &sample::write_unavailable(),
        ),
        Operation::new(
            "post",
            "/v1/payments/callback",
            "paymentCallback",
            "The payment provider's signed webhook.",
        )
        .describe(
            "The signature (`Flashcart-Signature: t=<unix s>,v1=<hex>`, HMAC-SHA256 of \
             `{t}.{raw body}`, several `v1` accepted, 300 s tolerance) is checked over the raw \
             body before anything is parsed. 200 once the event is recorded (replays answer \
             the same, `replayed: true`), so the provider stops retrying; an event id is bound \
             to the first order, amount and currency it carried, and the same id for another \
             payment is refused with 422 wherever that order lives; 503 when it could not be \
             recorded, so it retries.",
        )
        .param(
            signature::HEADER,
            "header",
            json!({ "type": "string" }),
            Some("`t=<unix s>,v1=<hex HMAC-SHA256 of {t}.{raw body}>`; 400 when it does not verify."),
        )
        .request(reference::<PaymentBody>(g))
        .answer(200, "Recorded.", reference::<Receipt>(g), replayed.clone())
        .refuse(
            "Bad or missing signature, or invalid body; nothing written.",
            &[Rejection::InvalidSignature(String::new()), sample::invalid()],
        )
        .refuse(
            "Unknown order (also: one naming a partition this deployment does not have).",
            &[Rejection::UnknownOrder],
        )
        .refuse(
            "The event id was already used for another payment (other order, amount or \
             currency); nothing written.",
            &[Rejection::IdempotencyMismatch],
        )
        .routed()
        .with_body()
        .refuse(WRITE_UNAVAILABLE, &sample::write_unavailable()),
        Operation::new("put", "/v1/admin/skus/{sku}", "loadSku", "Load (preheat) a SKU.")
            .describe(
                "The path names the SKU; the body may name it too (`sku`), and then the same one. \
                 Loading the same terms again changes nothing (200).",
            )
            .admin()
            .param("sku", "path", sku.clone(), None)
            .request(reference::<SkuSpec>(g))
            .answer(201, "Loaded.", reference::<LoadResult<'_>>(g), json!({}))
            .answer(
                200,
                "The same terms were already loaded; nothing changed.",
                reference::<LoadResult<'_>>(g),
                json!({}),
            )
            .refuse("Invalid input; nothing changed.", &[sample::invalid()])
            .refuse(
                "Missing or wrong bearer token; nothing changed.",
                &[Rejection::Unauthorized],
            )
            .refuse(
                "The SKU exists with other terms.",
                &[Rejection::SkuConflict],
            )
            .refuse(
                "The fields disagree: more segments than units, a sale that ends before it \
                 starts, or a body naming another SKU than the path; nothing changed.",
                &[sample::inconsistent()],
            )
            .routed()
            .with_body()
            .refuse(WRITE_UNAVAILABLE, &sample::write_unavailable()),
        Operation::new(
            "get",
            "/v1/admin/skus/{sku}",
            "getSku",
            "A SKU's full state: terms, totals, every segment.",
        )
        .admin()
        .param("sku", "path", sku.clone(), None)
        .answer(200, "State.", reference::<SkuState<'_>>(g), json!({}))
        .refuse("Invalid SKU.", &[sample::invalid()])
        .refuse(
            "Missing or wrong bearer token.",
            &[Rejection::Unauthorized],
        )
        .refuse("Unknown SKU.", &[Rejection::UnknownSku])
        .routed()
        .refuse(UNAVAILABLE, &[sample::unavailable()]),
        Operation::new(
            "get",
            "/v1/admin/skus/{sku}/live",
            "saleLive",
            "What the live sale page polls: the SKU's state and the settlement backlog of each \
             partition holding one of its segments.",
        )
        .admin()
        .param("sku", "path", sku.clone(), None)
        .answer(200, "The live view.", live_view_schema(), json!({}))
        .refuse("Invalid SKU.", &[sample::invalid()])
        .refuse(
            "Missing or wrong bearer token.",
            &[Rejection::Unauthorized],
        )
        .refuse("Unknown SKU.", &[Rejection::UnknownSku])
        .routed()
        .refuse(UNAVAILABLE, &[sample::unavailable()]),
        Operation::new(
            "get",
            "/",
            "salePage",
            "The live sale page: HTML that holds no data; it asks for the SKU and the admin \
             token and polls `/v1/admin/skus/{sku}/live`.",
        )
        .html(200, "The page.")
        .routed(),
        Operation::new(
            "get",
            crate::document::PATH,
            "openApi",
            "This document (generated from the code; `docs/openapi.json`).",
        )
        .answer(
            200,
            "The OpenAPI document.",
            json!({ "type": "object", "required": ["openapi", "paths"] }),
            json!({}),
        )
        .routed(),
    ];

    // Every answer, the component's or the host's, carries the request's id (the glue sets
    // it on the component's answer, the host on its own; `info` says what it is).
    let request_id = json!({ "schema": reference::<RequestId>(g), "required": true });
    let mut paths = Map::new();
    let mut kinds = BTreeSet::new();
    for op in operations {
        let mut body = op.body;
        let responses = body["responses"].as_object_mut().expect("responses");
        for response in responses.values_mut() {
            response["headers"]["X-Request-Id"] = request_id.clone();
            let Some(why) = response.get("x-why").cloned() else {
                continue;
            };
            let types: Vec<String> = response["x-types"]
                .as_array()
                .expect("types")
                .iter()
                .map(|t| format!("`{}`", t.as_str().unwrap_or_default()))
                .collect();
            for t in response["x-types"].as_array().expect("types") {
                kinds.insert(t.as_str().unwrap_or_default().to_owned());
            }
            let object = response.as_object_mut().expect("response");
            object.remove("x-why");
            object.remove("x-types");
            object.insert(
                "description".into(),
                format!(
                    "{} Types: {}.",
                    why.as_str().unwrap_or_default(),
                    types.join(", ")
                )
                .into(),
            );
            let mut content = Map::new();
            content.insert(PROBLEM_JSON.into(), json!({ "schema": problem }));
            object.insert("content".into(), content.into());
        }
        let sorted: BTreeMap<String, Value> = std::mem::take(responses).into_iter().collect();
        body["responses"] = json!(sorted);
        paths
            .entry(op.path)
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("path item")
            .insert(op.method.into(), body);
    }

    let mut schemas = generator.take_definitions(true);
    // The path names the SKU a load is for: the body need not (and may only name the same).
    if let Some(load) = schemas.get_mut("SkuTerms") {
        if let Some(required) = load["required"].as_array_mut() {
            required.retain(|f| f != "sku");
        }
        load["properties"]["sku"] = json!({
            "$ref": "#/components/schemas/SkuId",
            "description": "Optional: the path names the SKU; if given, the same one (422 otherwise).",
        });
    }
    schemas.insert(
        "Problem".into(),
        problem_schema(kinds.into_iter().collect()),
    );
    let schemas: BTreeMap<String, Value> = schemas.into_iter().collect();

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "flashcart edge API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": info(),
        },
        "servers": [{ "url": "http://127.0.0.1:3000" }],
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas,
        },
    })
}

/// The live view (`sale.rs` renders it): the admin state plus each partition's backlog.
fn live_view_schema() -> Value {
    let count = json!({ "type": "integer", "minimum": 0 });
    json!({
        "type": "object",
        "required": ["sku", "now", "terms", "totals", "segments", "invariant_holds", "partitions"],
        "properties": {
            "sku": { "type": "string" },
            "now": { "type": "integer", "description": "The node's clock, unix ms." },
            "terms": { "type": "object" },
            "totals": { "type": "object" },
            "segments": { "type": "array", "items": { "type": "object" } },
            "invariant_holds": { "type": "boolean" },
            "partitions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["partition", "events", "settlement_lag", "pending", "dead_letters"],
                    "properties": {
                        "partition": count,
                        "events": count,
                        "settlement_lag": {
                            "type": ["integer", "null"],
                            "minimum": 0,
                            "description": "Events not yet delivered to the slowest settlement group; null when no group reads the stream or Redis cannot tell.",
                        },
                        "pending": count,
                        "dead_letters": count,
                    },
                },
            },
        },
    })
}

fn info() -> String {
    let host: Vec<String> = HOST_PROBLEMS
        .iter()
        .map(|(slug, status, why)| format!("`urn:flashcart:problem:{slug}` ({status}, {why})"))
        .collect();
    format!(
        "Flash sales that never oversell. Generated from the code that parses and renders the \
         bodies (`flashcart_api::openapi`): a body valid by its schema is accepted, or refused \
         for a reason a response lists (unknown, sold out, conflicting, not signed, …). Errors \
         are RFC 9457 problem details with a stable `type` URN. Times are unix milliseconds; \
         amounts are minor units. Besides the operations' own problems, the host may answer \
         any route with: {}; `not-found` and `payload-too-large` keep their meaning. Every \
         problem carries `request_id` when the host wrote it. Every answer carries \
         `x-request-id`: the caller's own when it sent a valid one (1-64 of `A-Za-z0-9._:-`; \
         an invalid one is replaced, never refused), else one the node made; the events a \
         request's decision appends name it, and `flashcart trace <id>` lists them once \
         settled. A path no operation serves is \
         answered 404 `urn:flashcart:problem:not-found` by the app itself (spin.toml's \
         catch-all route `/...`), on Spin as on flashcart's host. A 503 \
         `inventory-unavailable` says only to retry: its cause is in the component's log, \
         never in the body.",
        host.join(", ")
    )
}

/// RFC 9457 problem details: the members every rejection has, and the extension members
/// the listed ones add (read from [`Rejection::problem`] itself).
fn problem_schema(mut kinds: Vec<String>) -> Value {
    for (slug, _, _) in HOST_PROBLEMS {
        kinds.push(format!("urn:flashcart:problem:{slug}"));
    }
    kinds.sort();
    kinds.dedup();
    let mut properties = json!({
        "type": { "type": "string", "enum": kinds },
        "title": { "type": "string" },
        "status": { "type": "integer", "minimum": 400, "maximum": 599 },
        "detail": { "type": "string" },
        "request_id": { "type": "string", "description": "Set when the host wrote the problem." },
    });
    let samples = [
        sample::invalid(),
        Rejection::NotOnSale { starts_at: 0 },
        Rejection::LimitReached { remaining: 0 },
        Rejection::AlreadyOrdered {
            order_id: String::new(),
        },
        Rejection::IllegalTransition {
            state: String::new(),
        },
        Rejection::RateLimited { retry_after_ms: 0 },
    ];
    for r in samples {
        for (name, value) in r.problem().extensions {
            let kind = if value.is_u64() { "integer" } else { "string" };
            properties[name] = json!({ "type": kind });
        }
    }
    json!({
        "type": "object",
        "required": ["type", "title", "status"],
        "properties": properties,
    })
}

/// The document as `docs/openapi.json` holds it: pretty-printed, one final newline.
pub fn render() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use flashcart_core::ids::BuyerId;

    use super::*;

    #[test]
    fn every_body_type_is_described_with_its_limits() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        assert_eq!(schemas["DeductRequest"]["additionalProperties"], false);
        assert_eq!(
            schemas["Quantity"]["maximum"],
            flashcart_core::ids::Quantity::MAX
        );
        assert_eq!(schemas["SkuId"]["maxLength"], SkuId::MAX_LEN);
        assert_eq!(schemas["BuyerId"]["maxLength"], BuyerId::MAX_LEN);
        assert_eq!(
            schemas["SkuTerms"]["properties"]["stock"]["maximum"],
            SkuSpec::MAX_STOCK
        );
        assert!(
            !schemas["SkuTerms"]["required"]
                .as_array()
                .expect("required")
                .contains(&json!("sku"))
        );
    }

    #[test]
    fn every_answer_names_its_request_id() {
        let doc = document();
        let mut answers = 0;
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                for (status, response) in op["responses"].as_object().expect("responses") {
                    let header = &response["headers"]["X-Request-Id"];
                    assert_eq!(header["required"], true, "{method} {path} {status}");
                    assert_eq!(
                        header["schema"]["$ref"], "#/components/schemas/RequestId",
                        "{method} {path} {status}"
                    );
                    answers += 1;
                }
            }
        }
        // Every operation answers at least 404 and 405 besides its own answers.
        assert!(answers > 2 * doc["paths"].as_object().map_or(0, Map::len));
    }
}
