//! `docs/metrics.md` against a real node: `flashcart up` (the host and settlement in one
//! process, on a private Redis) after a small sale, scraped on its `--metrics-listen`
//! operator listener. Every documented metric is exported with its documented type and
//! labels, and nothing undocumented is — except the series documented as appearing only once
//! something has gone wrong, which may be absent.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use flashcart_infra_checks::MetricsDoc;
use flashcart_testkit::RedisServer;

use crate::node::{self, NodeOptions};
use crate::{free_port, get};

/// One scrape: each metric's type (`# TYPE`) and the label names of each of its series.
#[derive(Debug, Default)]
struct Scrape {
    types: BTreeMap<String, String>,
    labels: BTreeMap<String, BTreeSet<Vec<String>>>,
}

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut scrape = Self::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                    scrape.types.insert(name.to_owned(), kind.to_owned());
                }
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let names: Vec<String> = labels
                .split("\",")
                .filter_map(|pair| pair.split_once('=').map(|(k, _)| k.trim().to_owned()))
                .filter(|k| k != "le" && k != "quantile")
                .collect();
            let metric = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|base| scrape.types.get(*base).is_some_and(|k| k == "histogram"))
                .unwrap_or(name);
            scrape
                .labels
                .entry(metric.to_owned())
                .or_default()
                .insert(names);
        }
        scrape
    }
}

/// A small sale through the node: a SKU of 16 units, 20 buyers (16 reserve, 4 are told it
/// is sold out), a stock read. Returns how many sold-out answers came with
/// `Flashcart-Cache: sold-out` (from the node's stock map, without Redis).
fn small_sale(address: SocketAddr) -> usize {
    node::load_sku(address, "metrics", 16);
    let mut answers = BTreeMap::new();
    let mut sold_out_here = 0;
    for id in 0..20 {
        let raw = node::exchange_raw(
            address,
            &node::request(
                "POST",
                "/v1/stock/metrics/reservations",
                &format!("k{id}"),
                &format!("{{\"buyer_id\":\"b{id}\",\"quantity\":1}}"),
            ),
        );
        *answers.entry(node::status_of(&raw)).or_insert(0) += 1;
        let head = raw.split("\r\n\r\n").next().unwrap_or_default();
        sold_out_here += usize::from(
            head.lines()
                .any(|l| l.eq_ignore_ascii_case("flashcart-cache: sold-out")),
        );
    }
    assert_eq!(answers.get(&Some(201)), Some(&16), "{answers:?}");
    assert_eq!(answers.get(&Some(409)), Some(&4), "{answers:?}");
    assert_eq!(get(address, "/v1/stock/metrics").map(|r| r.0), Some(200));
    sold_out_here
}

#[test]
fn the_documented_metrics_are_exactly_what_a_node_exports() {
    node::assert_components_built();
    let doc = MetricsDoc::read();
    let documented: BTreeSet<&str> = doc.metrics.iter().map(|m| m.name.as_str()).collect();
    for name in &doc.error_only {
        assert!(
            documented.contains(name.as_str()),
            "{name} is listed as error-only but not documented"
        );
    }
    let expected: BTreeSet<&str> = documented
        .iter()
        .copied()
        .filter(|n| !doc.error_only.iter().any(|e| e == n))
        .collect();

    let redis = RedisServer::start().expect("redis-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let listen = metrics.to_string();
    let (mut child, address) = node::up(
        &redis,
        &dir.path().join("data"),
        &NodeOptions {
            args: &["--metrics-listen", &listen],
            ..NodeOptions::default()
        },
    );
    let sold_out_here = small_sale(address);

    // Settlement applies the sale's events and its maintenance pass measures the
    // partitions: wait until every metric that a healthy node has is there.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (scrape, body) = loop {
        let (status, body) = get(metrics, "/metrics").expect("metrics answer");
        assert_eq!(status, 200, "{body}");
        let scrape = Scrape::parse(&body);
        let applied = body
            .lines()
            .any(|l| l.starts_with("flashcart_settle_events_applied_total ") && !l.ends_with(" 0"));
        if applied && expected.iter().all(|n| scrape.types.contains_key(*n)) {
            break (scrape, body);
        }
        let missing: Vec<_> = expected
            .iter()
            .filter(|n| !scrape.types.contains_key(**n))
            .collect();
        assert!(
            Instant::now() < deadline,
            "documented but never exported: {missing:?}\n{body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();

    let undocumented: Vec<_> = scrape
        .types
        .keys()
        .filter(|n| !documented.contains(n.as_str()))
        .collect();
    assert!(
        undocumented.is_empty(),
        "exported but not in docs/metrics.md: {undocumented:?}"
    );
    for (name, kind) in &scrape.types {
        let listed = doc.get(name).expect("documented");
        assert_eq!(
            &listed.kind, kind,
            "{name}: docs/metrics.md says {}",
            listed.kind
        );
        let mut want = listed.labels.clone();
        want.sort();
        for labels in scrape.labels.get(name).into_iter().flatten() {
            let mut got = labels.clone();
            got.sort();
            assert_eq!(
                got, want,
                "{name}: labels {got:?}, docs/metrics.md lists {want:?}"
            );
        }
    }
    // The sale itself is in the host's counters: 16 deducts answered 201, 4 sold out.
    for (status, n) in [("201", 16), ("409", 4)] {
        let series =
            format!("flashcart_requests_total{{component=\"deduct\",status=\"{status}\"}} {n}\n");
        assert!(body.contains(&series), "no `{series}` in\n{body}");
    }
    // Where the answers came from: the one stock read missed the node's cache (the deducts do
    // not fill it), and the sold-out answers the client saw marked as the node's own are the
    // ones counted (a series appears only once counted).
    let miss = "flashcart_edge_cache_answers_total{component=\"stock-check\",cache=\"miss\"} 1\n";
    assert!(body.contains(miss), "no `{miss}` in\n{body}");
    let sold_out = "flashcart_edge_cache_answers_total{component=\"deduct\",cache=\"sold-out\"}";
    match sold_out_here {
        0 => assert!(
            !body.contains(sold_out),
            "{sold_out} counted, none seen\n{body}"
        ),
        n => {
            let series = format!("{sold_out} {n}\n");
            assert!(body.contains(&series), "no `{series}` in\n{body}");
        }
    }
}
