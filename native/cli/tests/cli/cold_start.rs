//! `flashcart bench cold-start` end to end: the repo's five built components, each loaded as
//! `flashcart up` deploys it against a private redis-server the bench starts, sent a real
//! request over HTTP; the history (in a temp dir) gets one record per build, and the plot is
//! drawn from it. Outcomes only: no figure is asserted.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::hello_wasm;
use crate::node::{assert_components_built, repo_root};

/// Every component of spin.toml, the request the bench sends it and its success status.
const COMPONENTS: [(&str, &str, u16); 5] = [
    ("admin", "PUT /v1/admin/skus/", 201),
    ("deduct", "POST /v1/stock/", 201),
    ("order-create", "POST /v1/orders", 201),
    ("payment-callback", "POST /v1/payments/callback", 200),
    ("stock-check", "GET /v1/stock/", 200),
];

fn cold_start(args: &[&str], history: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flashcart"))
        .args(["bench", "cold-start", "--requests", "20", "--starts", "1"])
        .arg("--history")
        .arg(history)
        .args(args)
        .env_remove("FLASHCART_MANIFEST")
        .env_remove("FLASHCART_COLD_START_HISTORY")
        .output()
        .expect("run flashcart bench cold-start")
}

fn succeeded(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn records(history: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(history).expect("history written");
    let json: serde_json::Value = serde_json::from_str(&text).expect("history is JSON");
    assert_eq!(json["format"], 1, "{text}");
    json["records"].as_array().expect("records").clone()
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_owned()
}

/// `path` with a custom section appended: the same code, another digest (a custom section is
/// valid anywhere in a component, and wasmtime ignores one it does not know).
fn with_custom_section(path: &Path, into: &Path) {
    let mut bytes = std::fs::read(path).expect("read wasm");
    let name = b"flashcart-cold-start-test";
    let payload = b"another build";
    let content_len = 1 + name.len() + payload.len();
    assert!(
        content_len < 128 && name.len() < 128,
        "one-byte LEB128 sizes"
    );
    bytes.push(0); // custom section id
    bytes.push(content_len as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    std::fs::write(into, bytes).expect("write wasm");
}

/// A copy of spin.toml in `dir` whose sources are the repo's built files, but `deduct`'s,
/// which is `deduct`.
fn manifest_with_deduct(dir: &Path, deduct: &Path) -> PathBuf {
    let build = repo_root().join("build");
    let text = std::fs::read_to_string(repo_root().join("spin.toml")).expect("spin.toml");
    let text = text
        .replace(
            "source = \"build/flashcart_fn_deduct.wasm\"",
            &format!("source = \"{}\"", deduct.display()),
        )
        .replace(
            "source = \"build/",
            &format!("source = \"{}/", build.display()),
        );
    let manifest = dir.join("spin.toml");
    std::fs::write(&manifest, text).expect("write manifest");
    manifest
}

#[test]
fn cold_start_measures_every_component_as_deployed_and_records_each_build_once() {
    assert_components_built();
    let dir = tempfile::tempdir().expect("tempdir");
    let history = dir.path().join("history/cold-start.json");
    let spin_toml = repo_root().join("spin.toml");
    let from = ["--from", spin_toml.to_str().expect("utf-8 path")];

    // 1. Every component answers its success status to a real request.
    let first = succeeded(&cold_start(&from, &history));
    for (component, request, status) in COMPONENTS {
        let row = first
            .lines()
            .find(|l| l.starts_with(&format!("| {component} |")))
            .unwrap_or_else(|| panic!("no row for {component}:\n{first}"));
        assert!(
            row.contains(request) && row.contains(&format!("| {status} |")),
            "{row}"
        );
        assert!(
            first.contains(&format!("- {component} ")) && first.contains("first build recorded"),
            "{first}"
        );
    }
    let recorded = records(&history);
    assert_eq!(recorded.len(), 5, "{recorded:#?}");
    for (component, _, _) in COMPONENTS {
        let record = recorded
            .iter()
            .find(|r| r["component"] == component)
            .unwrap_or_else(|| panic!("no record for {component}"));
        let source = repo_root().join(format!(
            "build/flashcart_fn_{}.wasm",
            component.replace('-', "_")
        ));
        assert_eq!(record["digest"], sha256(&source), "{record:#}");
        assert_eq!(record["runs"], 1);
        assert!(
            record["figures"]["memory_kib"].as_f64() > Some(0.0),
            "{record:#}"
        );
    }

    // 2. The same builds again: no new record, each one's run counted.
    let second = succeeded(&cold_start(&from, &history));
    let again = records(&history);
    assert_eq!(again.len(), 5, "{again:#?}");
    assert!(again.iter().all(|r| r["runs"] == 2), "{again:#?}");
    assert_eq!(
        second.matches("same digest as measured before").count(),
        5,
        "{second}"
    );

    // 3. Another build of deduct: a new record and a change line against the previous one.
    let changed = dir.path().join("flashcart_fn_deduct.wasm");
    with_custom_section(
        &repo_root().join("build/flashcart_fn_deduct.wasm"),
        &changed,
    );
    let manifest = manifest_with_deduct(dir.path(), &changed);
    let third = succeeded(&cold_start(
        &[
            "--from",
            manifest.to_str().expect("utf-8 path"),
            "-c",
            "deduct",
        ],
        &history,
    ));
    let after = records(&history);
    assert_eq!(after.len(), 6, "{after:#?}");
    let (old, new) = (
        sha256(&repo_root().join("build/flashcart_fn_deduct.wasm")),
        sha256(&changed),
    );
    assert_ne!(old, new);
    assert_eq!(after[5]["component"], "deduct");
    assert_eq!(after[5]["digest"], new);
    let line = format!("- deduct {} → {}: compile ", &old[..12], &new[..12]);
    assert!(third.contains(&line), "no `{line}` in:\n{third}");
    assert!(
        !third.contains("| admin |"),
        "-c deduct measured others:\n{third}"
    );

    // 4. The plot of the history: an SVG with a row per component.
    let plot = dir.path().join("plots/cold-start.svg");
    let drawn = succeeded(&cold_start(
        &["--plot", plot.to_str().expect("utf-8 path"), "--plot-only"],
        &history,
    ));
    assert!(drawn.contains("plot: "), "{drawn}");
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for (component, _, _) in COMPONENTS {
        assert!(
            svg.contains(&format!("{component}: start-up")),
            "no panel for {component}"
        );
    }
    assert!(
        svg.contains(&new[..8]),
        "the new build is not on the x axis"
    );
    assert_eq!(records(&history).len(), 6, "--plot-only measured something");

    let png = cold_start(&["--plot", "cold.png", "--plot-only"], &history);
    assert!(!png.status.success());
    assert!(
        String::from_utf8_lossy(&png.stderr).contains("name it *.svg"),
        "{}",
        String::from_utf8_lossy(&png.stderr)
    );
}

#[test]
fn cold_start_names_the_component_request_and_answer_that_failed() {
    assert_components_built();
    let dir = tempfile::tempdir().expect("tempdir");
    let history = dir.path().join("history.json");
    let spin_toml = repo_root().join("spin.toml");
    // A typo in `durability` makes every writing component answer 503 naming the variable.
    let out = cold_start(
        &[
            "--from",
            spin_toml.to_str().expect("utf-8 path"),
            "-c",
            "deduct",
            "--variable",
            "durability=replica",
        ],
        &history,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for part in [
        "component `deduct`",
        "POST /v1/stock/",
        "answered 503, not 201",
        "durability",
    ] {
        assert!(stderr.contains(part), "no `{part}` in:\n{stderr}");
    }
    assert!(!history.exists(), "a failed run recorded figures");
}

#[test]
fn cold_start_of_one_wasm_records_it_under_its_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let history = dir.path().join("history.json");
    let hello = hello_wasm();
    let out = succeeded(&cold_start(
        &["--component", hello.to_str().expect("utf-8 path")],
        &history,
    ));
    assert!(out.contains("| instantiate p50"), "{out}");
    assert!(out.contains("- fc_test_hello "), "{out}");
    let recorded = records(&history);
    assert_eq!(recorded.len(), 1, "{recorded:#?}");
    assert_eq!(recorded[0]["component"], "fc_test_hello");
    assert_eq!(recorded[0]["digest"], sha256(&hello));
}
