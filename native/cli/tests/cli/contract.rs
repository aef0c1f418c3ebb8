//! The API contract, checked against a running node: `schemathesis` (PyPI, pinned in
//! `scripts/python-tools.txt`; `scripts/test.sh` puts it on `PATH`) reads the OpenAPI
//! document the node itself serves at `/v1/openapi.json` and drives every operation with
//! paths, headers and bodies generated from it: schema-valid ones, which must be accepted or
//! refused for a reason the document lists (`schemathesis/schemathesis.toml`), and invalid
//! ones, which must be refused. Every answer is checked against the document: no 5xx, a
//! documented status, content type, headers and body schema. The admin token is sent, so
//! the admin operations get past the token; payment callbacks are signed as the provider
//! signs them (`schemathesis/flashcart_hooks.py`). Its stateful phase follows the
//! document's links: a reservation ordered, the order read, cancelled and paid. Bounded and
//! deterministic: the same requests every run.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use flashcart_testkit::RedisServer;

use crate::node::{self, ADMIN, NodeOptions};

/// The payment signing secret `node::up` configures.
const PSP_SECRET: &str = "whsec_fault";
/// Test cases per operation and phase: enough to reach every documented status of the
/// simple operations, few enough for a minute or two on a busy 2-core machine.
const MAX_EXAMPLES: &str = "25";
/// Fixed, so a failure is reproduced by running the test again.
const SEED: &str = "20261206";

/// `name` on `PATH`, or a panic that says how to get it (never a skip).
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not on PATH: ./scripts/test.sh installs it \
                 (or `source scripts/lib.sh; ensure_python_tools`)"
            )
        })
}

#[test]
fn the_running_node_keeps_the_contract_it_serves() {
    node::assert_components_built();
    let schemathesis = tool("schemathesis");
    let redis = RedisServer::start().expect("redis-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut edge, address) = node::up(&redis, &dir.path().join("data"), &NodeOptions::default());
    // Some requests succeed: deducts of a SKU on sale (the document's example SKU).
    node::load_sku(address, flashcart_api::openapi::EXAMPLE_SKU, 1_000);

    // Schemathesis runs in the temporary directory (whatever it writes stays there), with
    // the hooks and the configuration copied next to it.
    let here = node::repo_root().join("native/cli/tests/cli/schemathesis");
    for file in ["flashcart_hooks.py", "schemathesis.toml"] {
        std::fs::copy(here.join(file), dir.path().join(file)).expect("copy schemathesis files");
    }
    let started = Instant::now();
    let output = Command::new(schemathesis)
        .current_dir(dir.path())
        .env("SCHEMATHESIS_HOOKS", "flashcart_hooks")
        .env("PYTHONPATH", dir.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("FLASHCART_PSP_SECRET", PSP_SECRET)
        .args(["--config-file", "schemathesis.toml", "run"])
        .arg(format!("http://{address}/v1/openapi.json"))
        .args([
            "--checks",
            "all",
            // A cancel names the order's buyer in its body, and to anyone else the order does
            // not exist (404, as documented). The stateful phase sends another buyer now and
            // then on purpose, and this check counts only the path's id as taken from the
            // link, so it calls that 404 a lost order (it cannot be switched off for one
            // operation in the stateful phase).
            "--exclude-checks",
            "ensure_resource_availability",
            // Stateful: sequences that follow the document's links (deduct → order → read,
            // cancel, pay), so the success paths that need an earlier answer's ids are reached.
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            MAX_EXAMPLES,
            "--seed",
            SEED,
            // Implies no example database: nothing is kept between runs.
            "--generation-deterministic",
            "--workers",
            "1",
            "--request-timeout",
            "60",
            "--no-shrink",
            "--no-color",
            "--header",
        ])
        .arg(format!("Authorization: Bearer {ADMIN}"))
        .output()
        .expect("run schemathesis");
    let took = started.elapsed();
    let (_, metrics) =
        crate::get(address, "/.well-known/flashcart/metrics").expect("the node's metrics");
    let _ = edge.kill();
    let _ = edge.wait();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("schemathesis ran {took:.1?}:\n{stdout}");
    assert!(
        output.status.success(),
        "schemathesis found the node answering other than its document says ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    // The links took the run past the refusals: reservations became orders, and orders were
    // read or cancelled and paid, each answered as the document says.
    for (component, status) in [
        ("deduct", "201"),
        ("order-create", "201"),
        ("order-create", "200"),
        ("payment-callback", "200"),
    ] {
        let answered = answered(&metrics, component, status);
        assert!(
            answered > 0.0,
            "no {component} request answered {status} in the run\n{metrics}"
        );
    }
}

/// `flashcart_requests_total{component,status}` in a scrape, 0 when absent.
fn answered(metrics: &str, component: &str, status: &str) -> f64 {
    let series =
        format!("flashcart_requests_total{{component=\"{component}\",status=\"{status}\"}}");
    flashcart_telemetry::series_value(metrics, &series).unwrap_or(0.0)
}
