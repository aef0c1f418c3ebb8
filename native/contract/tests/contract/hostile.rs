//! Hostile input, generated (proptest as the fuzzer: the toolchain is stable, so no
//! `cargo fuzz`): whatever a client sends to any route — odd methods, paths, ids, keys,
//! signatures and bodies, valid or not — the edge answers 2xx or a 4xx problem+json, never a
//! 5xx, and every refusal but a stored decision leaves Redis byte-for-byte unchanged.
//!
//! 512 cases in `./scripts/test.sh`; `FLASHCART_FUZZ_CASES=100000` for a long local run.

use flashcart_api::{ApiRequest, ApiResponse};
use flashcart_contract::node::{ADMIN, PSP_SECRET, deduct_req, load, now_ms, order_req};
use flashcart_contract::{Kind, Node, NodeOptions};
use flashcart_core::signature::{self, SigningSecret};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Refusals that are decisions: stored for replay under the request's key, so they write.
const DECISIONS: [&str; 3] = ["sold-out", "insufficient-stock", "purchase-limit-reached"];

/// Ids, keys and names: valid ones, near misses and junk.
fn word(known: Vec<String>) -> impl Strategy<Value = String> {
    prop_oneof![
        8 => proptest::sample::select(known),
        2 => "[a-z0-9_.-]{0,12}",
        2 => "[!-~]{0,40}",
        1 => Just(".".to_owned()),
        1 => Just("..".to_owned()),
        1 => "[a-z]{200,300}",
        1 => "\\PC{0,16}",
    ]
}

fn json_value(known: Vec<String>) -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![
            Just(0i64),
            Just(1),
            Just(2),
            Just(-1),
            Just(i64::MAX),
            any::<i64>()
        ]
        .prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        word(known).prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A body: mostly shaped like the one the route reads (`shape`: 0 deduct, 1 order,
/// 2 payment, 3 SKU load, 4 none), sometimes like another's, sometimes not JSON at all.
fn body(known: Vec<String>, shape: usize) -> impl Strategy<Value = Vec<u8>> {
    const FIELDS: [&str; 16] = [
        "buyer_id",
        "quantity",
        "reservation_id",
        "event_id",
        "type",
        "order_id",
        "amount",
        "currency",
        "stock",
        "segments",
        "price",
        "sale_start",
        "sale_end",
        "per_buyer_limit",
        "reservation_ttl_ms",
        "payment_window_ms",
    ];
    let now = now_ms();
    // Mostly the fields an operation reads, with plausible values, then up to four fields
    // of any kind on top (overriding or added).
    let templates = vec![
        (word(known.clone()), 0u64..3)
            .prop_map(|(b, q)| {
                serde_json::json!({
                    "buyer_id": b, "quantity": q
                })
            })
            .boxed(),
        (word(known.clone()), word(known.clone()))
            .prop_map(|(r, b)| {
                serde_json::json!({
                    "reservation_id": r, "buyer_id": b
                })
            })
            .boxed(),
        (word(known.clone()), word(known.clone()), 0u64..5_000)
            .prop_map(|(e, o, a)| {
                serde_json::json!({
                    "event_id": e, "type": "payment.succeeded", "order_id": o, "amount": a,
                    "currency": "EUR"
                })
            })
            .boxed(),
        (0u64..100, 0u16..20, 0u64..5_000, any::<bool>())
            .prop_map(move |(st, sg, p, open)| {
                let start = if open { now - 1_000 } else { now + 3_600_000 };
                serde_json::json!({
                    "stock": st, "segments": sg, "price": p, "currency": "EUR",
                    "sale_start": start, "sale_end": start + 3_600_000, "per_buyer_limit": 2
                })
            })
            .boxed(),
        Just(serde_json::json!({})).boxed(),
    ];
    let weighted = templates
        .into_iter()
        .enumerate()
        .map(|(i, t)| (if i == shape { 12 } else { 1 }, t))
        .collect();
    let base = proptest::strategy::Union::new_weighted(weighted);
    let extra = prop_oneof![
        3 => Just(std::collections::BTreeMap::new()),
        1 => proptest::collection::btree_map(
            proptest::sample::select(FIELDS.to_vec()),
            json_value(known),
            1..4,
        ),
    ];
    let object = (base, extra).prop_map(|(mut base, extra)| {
        if let Some(fields) = base.as_object_mut() {
            fields.extend(extra.into_iter().map(|(k, v)| (k.to_owned(), v)));
        }
        serde_json::to_vec(&base).unwrap_or_default()
    });
    prop_oneof![
        4 => object,
        1 => proptest::collection::vec(any::<u8>(), 0..300),
        1 => Just(Vec::new()),
    ]
}

fn request(known: Vec<String>) -> impl Strategy<Value = ApiRequest> {
    // Mostly the route's own method and body, sometimes any.
    let known_bodies = known.clone();
    let route = (
        proptest::sample::select(vec![
            ("/v1/stock/{}", "GET", 4),
            ("/v1/stock/{}/reservations", "POST", 0),
            ("/v1/orders", "POST", 1),
            ("/v1/orders/{}", "GET", 4),
            ("/v1/payments/callback", "POST", 2),
            ("/v1/admin/skus/{}", "PUT", 3),
            ("/v1/admin/skus/{}", "GET", 4),
            ("/v1/stock/{}/reservations", "POST", 0),
            ("/v1/stock/{}/reservations", "POST", 0),
            ("/v1/orders", "POST", 1),
            ("/{}", "GET", 4),
        ]),
        proptest::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH"]),
        0u8..6,
        word(known.clone()),
    )
        .prop_flat_map(move |((pattern, own, shape), any, dice, w)| {
            let method = if dice == 0 { any } else { own };
            (
                Just(method),
                Just(pattern.replace("{}", &w)),
                body(known_bodies.clone(), shape),
            )
        });
    let key = proptest::option::of(word(known.clone()));
    let content_type = proptest::sample::select(vec![
        Some("application/json"),
        Some("application/json"),
        Some("application/json"),
        Some("application/json; charset=utf-8"),
        Some("text/plain"),
        None,
    ]);
    let auth = proptest::sample::select(vec![
        Some(format!("Bearer {ADMIN}")),
        Some("Bearer nope".to_owned()),
        Some(ADMIN.to_owned()),
        None,
    ]);
    // 0: unsigned, 1: signed with the right secret now, 2: junk header.
    let signature = (0u8..3, "[!-~]{0,80}");
    let key = prop_oneof![3 => key, 1 => Just(Some("k1".to_owned()))];
    (route, key, content_type, auth, signature).prop_map(
        |((method, path, body), key, content_type, auth, (sig, junk))| {
            let mut req = ApiRequest::new(method, &path);
            match sig {
                1 => {
                    let secret = SigningSecret::new(PSP_SECRET.as_bytes());
                    let header = signature::sign(&secret, now_ms() / 1000, &body);
                    req = req.header(signature::HEADER, &header);
                }
                2 => req = req.header(signature::HEADER, &junk),
                _ => {}
            }
            for (name, value) in [
                ("idempotency-key", key),
                ("content-type", content_type.map(str::to_owned)),
                ("authorization", auth),
            ] {
                if let Some(v) = value {
                    req.headers.push((name.into(), v));
                }
            }
            req.body = body;
            req
        },
    )
}

fn check(resp: &ApiResponse) -> Result<Option<String>, TestCaseError> {
    prop_assert!(resp.status < 500, "server error: {resp:?}");
    let content_type = resp.header_value("content-type").unwrap_or_default();
    if resp.status < 400 {
        prop_assert_eq!(content_type, "application/json", "{:?}", resp);
        return Ok(None);
    }
    prop_assert_eq!(content_type, "application/problem+json", "{:?}", resp);
    let body = resp.json_body();
    prop_assert_eq!(&body["status"], &serde_json::Value::from(resp.status));
    let kind = body["type"].as_str().unwrap_or_default();
    prop_assert!(kind.starts_with("urn:flashcart:problem:"), "{resp:?}");
    Ok(Some(
        kind.trim_start_matches("urn:flashcart:problem:").to_owned(),
    ))
}

#[test]
fn hostile_requests_get_a_4xx_and_change_nothing() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let node = rt.block_on(Node::start(Kind::InProcess, NodeOptions::default()));
    // Something real to aim at: a SKU on sale, one reserved, one ordered.
    let mut known = vec!["fz".to_owned(), "fz-later".to_owned()];
    let (rsv, oid) = rt.block_on(async {
        assert_eq!(load(&node, "fz", 40, 4, -1_000).await.status, 201);
        assert_eq!(load(&node, "fz-later", 5, 1, 3_600_000).await.status, 201);
        let rsv = node.send(deduct_req("fz", "b1", 1, "k1")).await.json_body()["reservation_id"]
            .as_str()
            .expect("rsv")
            .to_owned();
        let held = node.send(deduct_req("fz", "b2", 1, "k2")).await.json_body()["reservation_id"]
            .as_str()
            .expect("rsv")
            .to_owned();
        let order = node.send(order_req(&held, "b2", "o2")).await.json_body()["id"]
            .as_str()
            .expect("order")
            .to_owned();
        (rsv, order)
    });
    known.extend([
        rsv,
        oid,
        "b1".into(),
        "b2".into(),
        "k1".into(),
        "EUR".into(),
    ]);

    let cases = flashcart_testkit::fuzz_cases(512);
    let mut runner = TestRunner::new(Config {
        cases,
        // Never write regression files into the source tree.
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run(&request(known), |req| {
        let before = node.redis().snapshot();
        let resp = rt.block_on(node.send(req.clone()));
        let refused = check(&resp)?;
        if let Some(kind) = refused
            && !DECISIONS.contains(&kind.as_str())
        {
            let after = node.redis().snapshot();
            prop_assert!(after == before, "{kind} changed Redis: {req:?}");
        }
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}
