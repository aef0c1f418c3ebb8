//! `flashcart bench sale` end to end with tiny numbers: two edge nodes it starts itself,
//! every baseline it can run here, both regimes; the JSON report must show a clean sale.

use std::path::PathBuf;
use std::process::Command;

use crate::{hello_wasm, target_dir};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn count(map: &serde_json::Value) -> u64 {
    map.as_object()
        .map(|m| m.values().filter_map(serde_json::Value::as_u64).sum())
        .unwrap_or(0)
}

#[test]
fn bench_sale_reports_a_clean_sale() {
    let root = repo_root();
    for c in [
        "stock_check",
        "deduct",
        "order_create",
        "payment_callback",
        "admin",
    ] {
        let wasm = root.join(format!("build/flashcart_fn_{c}.wasm"));
        assert!(
            wasm.exists(),
            "{} is missing: build the components first (scripts/build-component.sh flashcart-fn-…)",
            wasm.display()
        );
    }
    let out = tempfile::tempdir().expect("tempdir");
    let (requests, stock, buyers) = (150, 20, 120);
    let run = Command::new(env!("CARGO_BIN_EXE_flashcart"))
        .args(["bench", "sale", "--from"])
        .arg(root.join("spin.toml"))
        .args(["--nodes", "2", "--concurrency", "4", "--rate", "200"])
        .args(["--requests", &requests.to_string()])
        .args(["--drop-stock", &stock.to_string()])
        .args(["--drop-buyers", &buyers.to_string()])
        .args(["--open-users", "16", "--timeout", "60s"])
        .arg("--hello-component")
        .arg(hello_wasm())
        .arg("--cache-dir")
        .arg(target_dir().join("flashcart-test-compiled"))
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("run flashcart bench sale");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        run.status
    );
    assert!(stdout.contains("checks: oversold 0"), "{stdout}");

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("sale.json")).expect("sale.json"))
            .expect("report is JSON");
    let checks = &report["checks"];
    assert_eq!(checks["passed"], true, "{checks:#}");
    assert_eq!(checks["oversold"], 0);
    assert_eq!(checks["invariant_holds"], true);
    let ledger = &checks["ledger"];
    assert_eq!(ledger["drift"], false, "{ledger:#}");
    assert_eq!(ledger["in_flight"], 0);
    assert_eq!(ledger["missing_in_ledger"], serde_json::json!([]));
    for sku in checks["skus"].as_array().expect("skus") {
        assert_eq!(sku["oversold"], 0, "{sku:#}");
        assert_eq!(sku["redis_invariant_holds"], true, "{sku:#}");
        assert_eq!(sku["admin_invariant_holds"], true, "{sku:#}");
        assert_eq!(sku["answers_match_levels"], true, "{sku:#}");
    }

    assert_eq!(
        report["setup"]["key_value"], "sqlite",
        "{:#}",
        report["setup"]
    );
    let runs = report["runs"].as_array().expect("runs");
    let subjects: Vec<&str> = runs.iter().filter_map(|r| r["subject"].as_str()).collect();
    for (subject, n) in [
        ("sustained", 2),
        ("drop", 2),
        ("minimal_deduct", 2),
        ("fc_reserve", 2),
        ("hello_host", 2),
    ] {
        assert_eq!(
            subjects.iter().filter(|s| **s == subject).count(),
            n,
            "{subjects:?}"
        );
    }
    for run in runs {
        let sent = run["requests"].as_u64().expect("requests");
        assert_eq!(
            count(&run["statuses"]) + count(&run["failures"]),
            sent,
            "{run:#}"
        );
        assert_eq!(count(&run["failures"]), 0, "{run:#}");
        let expected = if run["subject"] == "drop" {
            buyers
        } else {
            requests
        };
        assert_eq!(sent, expected, "{run:#}");
        // The per-second timeline accounts for every request, once.
        let timeline = run["timeline"].as_array().expect("timeline");
        assert!(!timeline.is_empty(), "{run:#}");
        let in_timeline: u64 = timeline
            .iter()
            .map(|s| s["requests"].as_u64().expect("requests of a second"))
            .sum();
        assert_eq!(in_timeline, sent, "{run:#}");
        // The bench started Redis, so it watched Redis's own stalls in every run.
        assert!(run["redis_stalls"].is_array(), "{run:#}");
        // Every reservation is written to the AOF: a sustained or drop run appends to it. No
        // run sees a rewrite: the bench waits out settlement's start-up rewrite (Redis before
        // 7.2), and a test sale is far below `auto-aof-rewrite-min-size`.
        if run["subject"] == "sustained" || run["subject"] == "drop" {
            let aof = &run["aof"];
            assert!(
                aof["appended_bytes"].as_u64().is_some_and(|b| b > 0),
                "{run:#}"
            );
            assert_eq!(aof["rewrites"], 0, "{run:#}");
        }
        if run["subject"] == "drop" {
            let drop = &run["drop"];
            assert_eq!(run["statuses"]["201"], stock, "{run:#}");
            assert_eq!(drop["created"], stock, "{run:#}");
            assert_eq!(drop["sold_out"], buyers - stock, "{run:#}");
            assert_eq!(run["statuses"]["409"], buyers - stock, "{run:#}");
            assert!(drop["sell_out_ms"].is_number(), "{run:#}");
            // The nodes' edge cache is the SQLite store ./scripts/up.sh uses, and it works:
            // once sold out, some answers come from the node's flag without Redis.
            assert!(
                drop["sold_out_from_edge_flag"].as_u64().unwrap_or(0) > 0,
                "{run:#}"
            );
        } else if run["subject"] == "sustained" {
            assert_eq!(run["statuses"]["201"], requests, "{run:#}");
            // Both nodes, the hello host, Redis and the bench itself are watched.
            assert!(run["cpu"].as_array().map_or(0, Vec::len) >= 4, "{run:#}");
        }
    }
    assert!(
        report["notes"]
            .as_array()
            .expect("notes")
            .iter()
            .any(|n| n.as_str().is_some_and(|n| n.contains("not scale-out"))),
        "{:#}",
        report["notes"]
    );
    let svg = std::fs::read_to_string(out.path().join("sale.svg")).expect("sale.svg");
    assert!(svg.contains("<svg"), "{svg}");
}
