//! The API contract, checked against a running node: `schemathesis` (PyPI, pinned in
//! `scripts/python-tools.txt`; `scripts/test.sh` puts it on `PATH`) reads the OpenAPI
//! document the node itself serves at `/v1/openapi.json` and drives every operation with
//! paths, headers and bodies generated from it: schema-valid ones, which must be accepted or
//! refused for a reason the document lists (`schemathesis/schemathesis.toml`), and invalid
//! ones, which must be refused. Every answer is checked against the document: no 5xx, a
//! documented status, content type, headers and body schema. The admin token is sent, so
//! the admin operations get past the token; payment callbacks are signed as the provider
//! signs them (`schemathesis/flashcart_hooks.py`). Bounded and seeded: the same requests
//! every run.

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
            // Stateful checks need links between operations, which the document has none of.
            "--exclude-checks",
            "use_after_free,ensure_resource_availability",
            "--phases",
            "examples,coverage,fuzzing",
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
}
