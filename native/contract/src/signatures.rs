//! The payment callback's signature checks: the right outcome, and nothing written on
//! rejection.

use flashcart_api::ApiRequest;

use crate::node::{
    Kind, Node, NodeOptions, PSP_SECRET, deduct_req, load, now_ms, order_req, payment_req,
    problem_type,
};

/// Expired, future, wrong secret, tampered, missing and malformed signatures are refused
/// and write nothing; a rotated secret verifies; a replayed event answers the same; another
/// event for a paid order is a recorded duplicate.
pub async fn signature_outcomes(kind: Kind) {
    let n = &Node::start(kind, NodeOptions::default()).await;
    assert_eq!(load(n, "tee", 4, 2, -1_000).await.status, 201);
    let rid = n.send(deduct_req("tee", "pat", 1, "p1")).await.json_body()["reservation_id"]
        .as_str()
        .expect("rid")
        .to_owned();
    let oid = n.send(order_req(&rid, "pat", "po1")).await.json_body()["id"]
        .as_str()
        .expect("oid")
        .to_owned();
    let body = serde_json::json!({ "event_id": "evt_sig", "order_id": oid, "amount": 1999, "currency": "EUR" });
    let now = now_ms() / 1000;

    let before = n.redis().snapshot();
    let refused = [
        // Far outside the 300 s tolerance: one second past it made the test depend on
        // how long the request took (a busy machine crossed a second boundary and the
        // "future" signature became valid).
        ("expired", payment_req(&body, PSP_SECRET, now - 3_600)),
        (
            "from the future",
            payment_req(&body, PSP_SECRET, now + 3_600),
        ),
        ("wrong secret", payment_req(&body, "whsec_wrong", now)),
        ("tampered body", {
            let mut r = payment_req(&body, PSP_SECRET, now);
            r.body = r
                .body
                .iter()
                .map(|b| if *b == b'9' { b'8' } else { *b })
                .collect();
            r
        }),
        ("missing header", {
            let mut r = payment_req(&body, PSP_SECRET, now);
            r.headers.retain(|(n, _)| n != "flashcart-signature");
            r
        }),
        ("malformed header", {
            let mut r = payment_req(&body, PSP_SECRET, now);
            r.headers.retain(|(n, _)| n != "flashcart-signature");
            r.header("flashcart-signature", "v1=zz")
        }),
    ];
    for (what, req) in refused {
        let resp = n.send(req).await;
        assert_eq!(
            (resp.status, problem_type(&resp).as_str()),
            (400, "invalid-signature"),
            "{what}: {resp:?}"
        );
    }
    assert_eq!(
        n.redis().snapshot(),
        before,
        "a refused callback wrote something"
    );

    // The previous secret still verifies during rotation.
    let rotated = n.send(payment_req(&body, "whsec_previous", now)).await;
    assert_eq!(
        (rotated.status, rotated.json_body()["outcome"].as_str()),
        (200, Some("paid"))
    );
    // The provider retries the same event: recorded once, answered the same.
    let replay = n.send(payment_req(&body, PSP_SECRET, now)).await;
    assert_eq!(replay.status, 200);
    assert_eq!(
        (
            replay.json_body()["outcome"].as_str(),
            replay.json_body()["replayed"].as_bool()
        ),
        (Some("paid"), Some(true))
    );
    // A different event for the paid order is recorded as a duplicate, still 200.
    let other = serde_json::json!({ "event_id": "evt_other", "order_id": oid, "amount": 1999, "currency": "EUR" });
    let dup = n.send(payment_req(&other, PSP_SECRET, now)).await;
    assert_eq!(
        (dup.status, dup.json_body()["outcome"].as_str()),
        (200, Some("duplicate_payment"))
    );
    let order = n
        .send(ApiRequest::new("GET", &format!("/v1/orders/{oid}")))
        .await;
    assert_eq!(order.json_body()["state"], "paid");
}
