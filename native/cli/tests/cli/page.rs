//! The live sale page, as an operator sees it: `flashcart up` serves the repo's `spin.toml`,
//! a small sale runs (reservations, orders, payments, then the sell-out), and headless
//! Chromium (Debian's `chromium`, installed by `scripts/test.sh`) loads `GET /` and runs its
//! script against the node. What the page shows is read from the DOM Chromium dumps; a
//! phone-sized screenshot is written to the target dir (`CARGO_TARGET_TMPDIR`) as an artifact.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use flashcart_core::signature::{SigningSecret, sign};
use flashcart_testkit::RedisServer;

use crate::node::{self, ADMIN, NodeOptions};

const SKU: &str = "page-sneaker";
const STOCK: u64 = 20;

/// Headless Chromium with the flags this machine's closed network needs, a fresh profile,
/// and virtual time: the page's timers run `budget_ms` of page time, waiting for every fetch.
fn chromium(profile: &Path, budget_ms: u32, output: &[&str], url: &str) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .args(output)
        .arg(url)
        .output()
        .expect("run chromium (scripts/test.sh installs Debian's chromium)");
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 DOM")
}

/// The page's DOM after `budget_ms` of page time.
fn dom(profile: &Path, url: &str) -> String {
    chromium(profile, 4_000, &["--dump-dom"], url)
}

/// The `data-value` of the element with id `id` (what the page rendered there).
fn shown(dom: &str, id: &str) -> String {
    let tag_start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element #{id} in the page:\n{dom}"));
    let tag = &dom[tag_start..tag_start + dom[tag_start..].find('>').expect("tag end")];
    let value = tag
        .split_once("data-value=\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(value, _)| value)
        .unwrap_or_else(|| panic!("#{id} shows nothing yet: {tag}"));
    value.replace("&quot;", "\"")
}

fn post(address: SocketAddr, path: &str, key: &str, body: &str) -> serde_json::Value {
    let (status, answer) = node::call(address, &node::request("POST", path, key, body));
    assert!(
        (200..300).contains(&status),
        "POST {path} answered {status}: {answer}"
    );
    serde_json::from_str(&answer).expect("json answer")
}

fn reserve(address: SocketAddr, buyer: u64) -> String {
    let answer = post(
        address,
        &format!("/v1/stock/{SKU}/reservations"),
        &format!("k{buyer}"),
        &format!("{{\"buyer_id\":\"b{buyer}\",\"quantity\":1}}"),
    );
    answer["reservation_id"].as_str().expect("id").to_owned()
}

fn order(address: SocketAddr, buyer: u64, reservation: &str) -> String {
    let answer = post(
        address,
        "/v1/orders",
        &format!("o{buyer}"),
        &format!("{{\"reservation_id\":\"{reservation}\",\"buyer_id\":\"b{buyer}\"}}"),
    );
    answer["id"].as_str().expect("order id").to_owned()
}

fn pay(address: SocketAddr, order: &str) {
    let body = format!(
        "{{\"event_id\":\"evt-{order}\",\"type\":\"payment.succeeded\",\"order_id\":\"{order}\",\
         \"amount\":100,\"currency\":\"EUR\"}}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let signature = sign(&SigningSecret::new("whsec_fault"), now, body.as_bytes());
    let request = format!(
        "POST /v1/payments/callback HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
         flashcart-signature: {signature}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, answer) = node::call(address, &request);
    assert_eq!(status, 200, "payment callback: {answer}");
}

/// Waits until the live view shows every partition's events delivered and acknowledged
/// (the ledger can hold an event a moment before its acknowledgement reaches Redis).
fn wait_until_settled(address: SocketAddr) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (status, body) =
            crate::get_authorized(address, &format!("/v1/admin/skus/{SKU}/live"), ADMIN)
                .expect("live view");
        assert_eq!(status, 200, "{body}");
        let view: serde_json::Value = serde_json::from_str(&body).expect("json");
        let partitions = view["partitions"].as_array().expect("partitions");
        let settled = |p: &serde_json::Value| p["settlement_lag"] == 0 && p["pending"] == 0;
        if partitions.len() == 16 && partitions.iter().all(settled) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "settlement never caught up: {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The Redis errors the node counted (`flashcart_redis_errors_total`, every kind): the first
/// load's call before the function library is loaded is one.
fn node_redis_errors(address: SocketAddr) -> u64 {
    let (status, metrics) =
        crate::get(address, "/.well-known/flashcart/metrics").expect("node metrics");
    assert_eq!(status, 200);
    metrics
        .lines()
        .filter(|l| l.starts_with("flashcart_redis_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn artifact(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

#[test]
fn the_sale_page_shows_a_running_sale_and_its_sell_out() {
    node::assert_components_built();
    let redis = RedisServer::start().expect("redis-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (_node, address) = node::up(&redis, &data, &NodeOptions::default());
    node::load_sku(address, SKU, STOCK);

    // 12 reservations; 5 of them ordered; 2 of those paid.
    let reservations: Vec<String> = (0..12).map(|b| reserve(address, b)).collect();
    let orders: Vec<String> = (0..5)
        .map(|b| order(address, b, &reservations[b as usize]))
        .collect();
    for o in &orders[..2] {
        pay(address, o);
    }
    node::wait_until_reconciled(&redis, &data);
    wait_until_settled(address);

    // The live view is the admin's: no token, no data.
    let (status, body) =
        crate::get(address, &format!("/v1/admin/skus/{SKU}/live")).expect("live view answers");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"status\":401"), "problem+json: {body}");

    let profile = dir.path().join("chromium");
    let page = format!("http://{address}/?sku={SKU}&every=500");
    let watched = dom(&profile, &format!("{page}#token={ADMIN}"));
    for (id, want) in [
        ("sku", SKU),
        ("state", "on sale"),
        ("stock", "20"),
        ("available", "8"),
        ("reserved", "7"),
        ("ordered", "3"),
        ("sold", "2"),
        ("invariant", "true"),
        ("lag", "0"),
        ("pending", "0"),
        ("dead-letters", "0"),
        ("redis-errors", &node_redis_errors(address).to_string()),
    ] {
        assert_eq!(shown(&watched, id), want, "#{id}");
    }
    let answers: serde_json::Value =
        serde_json::from_str(&shown(&watched, "answers")).expect("deduct answers");
    assert_eq!(
        answers["201"], 12,
        "deduct answers counted by the node: {answers}"
    );
    let p99: f64 = shown(&watched, "p99").parse().expect("p99 in seconds");
    assert!(p99 > 0.0, "a latency from the node's histogram: {p99}");
    // Rendered segments (the script's own text holds the template once, without a number).
    let segments = watched
        .match_indices("class=\"segment\" data-segment=\"")
        .filter(|(i, m)| watched[i + m.len()..].starts_with(|c: char| c.is_ascii_digit()))
        .count();
    assert_eq!(segments, 16);
    assert_eq!(
        watched.matches("<tr><td>p").count(),
        16,
        "a backlog row per partition"
    );

    // The sell-out: the last 8 units, then a buyer too many.
    for buyer in 100..108 {
        reserve(address, buyer);
    }
    let (status, body) = node::call(address, &node::deduct_request(SKU, 200));
    assert_eq!(status, 409, "after the last unit: {body}");
    let sold_out = dom(&profile, &format!("{page}#token={ADMIN}"));
    assert_eq!(shown(&sold_out, "state"), "sold out");
    assert_eq!(shown(&sold_out, "available"), "0");
    assert!(
        !shown(&sold_out, "sold-out-at").is_empty(),
        "the page says when it saw the sell-out"
    );

    // A phone-sized screenshot, kept as an artifact of the run.
    let screenshot = artifact("sale-page.png");
    let _ = std::fs::remove_file(&screenshot);
    chromium(
        &profile,
        4_000,
        &[
            &format!("--screenshot={}", screenshot.display()),
            "--window-size=412,1600",
        ],
        &format!("{page}#token={ADMIN}"),
    );
    let png = std::fs::read(&screenshot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    eprintln!("sale page screenshot: {}", screenshot.display());

    // A wrong token shows the sign-in form and no figures.
    let refused = dom(
        &dir.path().join("chromium-2"),
        &format!("{page}#token=wrong"),
    );
    assert!(
        refused.contains("The admin token was refused."),
        "{refused}"
    );
    assert!(
        refused.contains("<main id=\"board\" hidden"),
        "no figures without the token"
    );
}
