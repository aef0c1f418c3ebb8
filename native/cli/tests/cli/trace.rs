//! A request id carried edge → Redis event → ledger row: a deduct through `flashcart up`
//! answers the id it was sent (or one the node made when it sent none or an invalid one),
//! and once settlement has applied the event (`--wait` polls for it), `flashcart trace <id>`
//! prints the reservation it made; an id no decision carried exits 1.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use flashcart_testkit::RedisServer;

use crate::node::{self, NodeOptions};

/// A deduct of one unit for `buyer`, with `x-request-id: request_id` when given: the status,
/// the `x-request-id` the answer carried, and the body.
fn deduct(address: SocketAddr, buyer: &str, request_id: Option<&str>) -> (u16, String, String) {
    let body = format!("{{\"buyer_id\":\"{buyer}\",\"quantity\":1}}");
    let id_header = request_id.map_or(String::new(), |id| format!("x-request-id: {id}\r\n"));
    let request = format!(
        "POST /v1/stock/traced/reservations HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
         idempotency-key: k-{buyer}\r\n{id_header}content-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    let raw = node::exchange_raw(address, &request);
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = node::status_of(head).expect("status");
    let answered = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("x-request-id")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no x-request-id in the answer:\n{head}"));
    (status, answered, body.to_owned())
}

/// `flashcart trace <id> --wait <wait>` on the node's data dir: whether it succeeded, and its
/// stdout.
fn trace(data: &Path, request_id: &str, wait: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flashcart"))
        .args(["trace", request_id, "--wait", wait, "--data-dir"])
        .arg(data)
        .output()
        .expect("run flashcart trace");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn reservation_of(body: &str) -> String {
    let answer: serde_json::Value = serde_json::from_str(body).expect("json");
    answer["reservation_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no reservation id in {answer}"))
        .to_owned()
}

#[test]
fn a_request_id_leads_from_the_answer_to_the_ledger_rows() {
    node::assert_components_built();
    let redis = RedisServer::start().expect("redis-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (_node, address) = node::up(&redis, &data, &NodeOptions::default());
    node::load_sku(address, "traced", 64);

    // The caller's id is kept and answered.
    let (status, kept, body) = deduct(address, "ann", Some("gateway-7f3a:1"));
    assert_eq!(status, 201, "{body}");
    assert_eq!(kept, "gateway-7f3a:1");
    let ann = reservation_of(&body);
    // An invalid one is replaced, not refused; none gets one made by the node.
    let (status, replaced, body) = deduct(address, "bob", Some("not/valid"));
    assert_eq!(status, 201, "{body}");
    assert_ne!(replaced, "not/valid");
    let bob = reservation_of(&body);
    let (status, made, body) = deduct(address, "cyd", None);
    assert_eq!(status, 201, "{body}");
    assert!(!made.is_empty() && made != replaced && made != kept);
    let cyd = reservation_of(&body);

    // Settlement applies the events within moments; on a busy machine, give it a minute.
    for (id, reservation) in [(&kept, &ann), (&replaced, &bob), (&made, &cyd)] {
        let (found, out) = trace(&data, id, "60s");
        assert!(found, "flashcart trace {id} found nothing:\n{out}");
        let rows: Vec<&str> = out.lines().skip(1).collect();
        assert_eq!(rows.len(), 1, "one event per deduct:\n{out}");
        assert!(
            rows[0].contains("reservation.created")
                && rows[0].contains("traced")
                && rows[0].ends_with(reservation.as_str()),
            "{out}"
        );
    }
    // An id no decision carried: exit 1, nothing printed.
    node::wait_until_reconciled(&redis, &data);
    let (found, out) = trace(&data, "never-sent", "0s");
    assert!(!found && out.is_empty(), "{out}");
}
