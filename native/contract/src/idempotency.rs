//! One Idempotency-Key, one effect, whatever partition the request's target lives in: a key
//! reused for another SKU, another reservation or another order is refused (422), a replay
//! gets the first answer, and a request refused before any decision leaves its key free.

use flashcart_api::{ApiRequest, ApiResponse};
use flashcart_core::KeySchema;
use flashcart_core::ids::{BuyerId, SkuId};

use crate::node::{
    Kind, Node, NodeOptions, PSP_SECRET, deduct_req, load, now_ms, order_req, payment_req,
    problem_type,
};

/// A one-segment SKU named `<prefix>-<n>` whose only partition is `partition`.
fn sku_in(schema: &KeySchema, prefix: &str, partition: u16) -> String {
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .find(|s| schema.home_of_sku(&SkuId::parse(s).expect("sku")).index() == partition)
        .expect("a SKU name for every partition")
}

fn reused(resp: &ApiResponse) {
    assert_eq!(
        (resp.status, problem_type(resp).as_str()),
        (422, "idempotency-key-reused"),
        "{resp:?}"
    );
}

fn field(resp: &ApiResponse, name: &str) -> String {
    assert!(matches!(resp.status, 200 | 201), "{resp:?}");
    resp.json_body()[name].as_str().expect(name).to_owned()
}

/// Deducts, orders and payments, each with one key reused across partitions.
pub async fn one_key_one_effect_across_partitions(kind: Kind) {
    let n = &Node::start(kind, NodeOptions::default()).await;
    let schema = KeySchema::default();
    let buyer = "ida";
    let home = schema
        .home_of_buyer(&BuyerId::parse(buyer).expect("buyer"))
        .index();
    // Four SKUs: three in partitions other than the buyer's home, one at home.
    let elsewhere: Vec<u16> = (0..16).filter(|p| *p != home).take(3).collect();
    let mut skus: Vec<String> = elsewhere
        .iter()
        .map(|p| sku_in(&schema, "far", *p))
        .collect();
    skus.push(sku_in(&schema, "near", home));
    for sku in &skus {
        assert_eq!(load(n, sku, 5, 1, -1_000).await.status, 201);
    }

    // Deduct: the same key and body for another SKU is another request.
    let first = n.send(deduct_req(&skus[0], buyer, 1, "d-key")).await;
    let rsv0 = field(&first, "reservation_id");
    reused(&n.send(deduct_req(&skus[1], buyer, 1, "d-key")).await);
    let replay = n.send(deduct_req(&skus[0], buyer, 1, "d-key")).await;
    assert_eq!(field(&replay, "reservation_id"), rsv0);
    assert_eq!(replay.header_value("idempotent-replayed"), Some("true"));

    // One reservation per SKU, each in its SKU's partition.
    let mut rsvs = vec![rsv0];
    for (i, sku) in skus.iter().enumerate().skip(1) {
        let r = n.send(deduct_req(sku, buyer, 1, &format!("d-{i}"))).await;
        rsvs.push(field(&r, "reservation_id"));
    }

    // Order: a refusal before any decision leaves the key free for the fixed request...
    let ghost = format!("rsv_{:02}_0123456789abcdef_{}", elsewhere[2], skus[2]);
    let gone = n.send(order_req(&ghost, buyer, "o-key")).await;
    assert_eq!(problem_type(&gone), "unknown-reservation");
    let order = n.send(order_req(&rsvs[0], buyer, "o-key")).await;
    assert_eq!(order.status, 201, "{order:?}");
    let oid = field(&order, "id");
    // ...then the key belongs to that order: other reservations, in other partitions or at
    // home, are refused and stay unordered.
    for rsv in &rsvs[1..] {
        reused(&n.send(order_req(rsv, buyer, "o-key")).await);
    }
    let replay = n.send(order_req(&rsvs[0], buyer, "o-key")).await;
    assert_eq!(field(&replay, "id"), oid);
    assert_eq!(replay.header_value("idempotent-replayed"), Some("true"));
    for (i, rsv) in rsvs.iter().enumerate().skip(1) {
        let other = n.send(order_req(rsv, buyer, &format!("o-{i}"))).await;
        assert_eq!(other.status, 201, "still orderable: {other:?}");
    }
    let second = field(&n.send(order_req(&rsvs[1], buyer, "o-1")).await, "id");

    // Payment: an event id pays one order; the same id for another order is refused.
    let pay = |order: &str| {
        payment_req(
            &serde_json::json!({
                "event_id": "evt_once", "type": "payment.succeeded", "order_id": order,
                "amount": 1999, "currency": "EUR"
            }),
            PSP_SECRET,
            now_ms() / 1000,
        )
    };
    let paid = n.send(pay(&oid)).await;
    assert_eq!(field(&paid, "outcome"), "paid");
    reused(&n.send(pay(&second)).await);
    let replay = n.send(pay(&oid)).await;
    assert_eq!(field(&replay, "outcome"), "paid");
    let state = |id: String| ApiRequest::new("GET", &format!("/v1/orders/{id}"));
    assert_eq!(
        field(&n.send(state(second)).await, "state"),
        "pending_payment"
    );
    assert_eq!(field(&n.send(state(oid)).await, "state"), "paid");
}
