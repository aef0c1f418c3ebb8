//! The `flashcart` binary end to end: `up` serves and stops cleanly on Ctrl-C
//! (SIGINT) and SIGTERM; `build` runs the manifest's build commands; `bench sale` runs a
//! small sale and reports it clean; `bench cold-start` measures the five components as
//! deployed and keeps their history (`cold_start`); the live sale page shows a sale in headless
//! Chromium; the docs' commands run as written; `metrics` holds a node's scrape to
//! docs/metrics.md; the API contract is checked by schemathesis against the document the node
//! serves (`contract`); a request id leads from the answer to its ledger rows (`trace`); the fault scenarios that need a whole node (`crash`, `crowd`) run the
//! repo's `spin.toml` through [`node`].

mod cold_start;
mod contract;
mod crash;
mod crowd;
mod docs;
mod metrics;
mod node;
mod page;
mod sale;
mod trace;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flashcart_testkit::{RedisServer, target_dir};

fn hello_wasm() -> PathBuf {
    let path = target_dir().join("wasm32-wasip2/release/fc_test_hello.wasm");
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-test-components.sh first",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn get(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    get_with(address, path, "")
}

/// `GET path` with a bearer token.
fn get_authorized(address: SocketAddr, path: &str, token: &str) -> Option<(u16, String)> {
    get_with(address, path, &format!("authorization: Bearer {token}\r\n"))
}

/// `GET path` with `headers` (each line ending in CRLF); the status and the body.
fn get_with(address: SocketAddr, path: &str, headers: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(address).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{headers}\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.split(' ').nth(1)?.parse().ok()?;
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Some((status, body))
}

/// Writes `<dir>/spin.toml`: one catch-all route to the hello test component.
fn hello_manifest(dir: &std::path::Path) -> std::path::PathBuf {
    let manifest = dir.join("spin.toml");
    std::fs::write(
        &manifest,
        format!(
            "spin_manifest_version = 2\n[application]\nname = \"cli\"\n\
             [[trigger.http]]\nroute = \"/...\"\ncomponent = \"hello\"\n\
             [component.hello]\nsource = \"{}\"\n",
            hello_wasm().display()
        ),
    )
    .expect("write manifest");
    manifest
}

/// Starts `flashcart up` serving the hello component, with settlement on a private
/// redis-server and its ledger in `dir`: a test never talks to a server on a default
/// port nor writes into the source tree.
fn start_up(
    dir: &tempfile::TempDir,
    redis: &RedisServer,
    extra: &[&str],
) -> (node::Running, SocketAddr) {
    let manifest = hello_manifest(dir.path());
    let address: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let child = Command::new(env!("CARGO_BIN_EXE_flashcart"))
        .args(["up", "--from"])
        .arg(&manifest)
        .args(["--listen", &address.to_string(), "--cache-dir"])
        .arg(dir.path().join("cache"))
        .args(["--redis-url", &redis.url(), "--data-dir"])
        .arg(dir.path().join("data"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flashcart");
    let child = node::Running::new(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(address, "/.well-known/flashcart/health").is_none() {
        assert!(
            Instant::now() < deadline,
            "flashcart up did not start serving"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, address)
}

fn stop_with(mut child: node::Running, signal: &str) -> String {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "flashcart up did not stop on {signal}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert!(
        exit.success(),
        "exit {exit:?} after {signal}; stderr:\n{stderr}"
    );
    stderr
}

#[test]
fn up_serves_and_stops_cleanly_on_ctrl_c() {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let redis = RedisServer::start().expect("redis-server");
    // The instance stays idle past the stop, so stopping drops a live one.
    let (child, address) = start_up(
        &dir,
        &redis,
        &[
            "--metrics-listen",
            &metrics.to_string(),
            "--idle-instance-timeout",
            "10m",
        ],
    );
    let (status, body) = get(address, "/anything").expect("answer");
    assert_eq!(status, 200);
    assert!(body.starts_with("hello from flashcart"), "{body}");
    let (status, body) = get(metrics, "/metrics").expect("metrics answer");
    assert_eq!(status, 200);
    assert!(
        body.contains("flashcart_requests_total{component=\"hello\",status=\"200\"} 1"),
        "{body}"
    );
    let stderr = stop_with(child, "-INT");
    assert!(
        dir.path().join("data").join("ledger.sqlite").exists(),
        "settlement wrote its ledger elsewhere; stderr:\n{stderr}"
    );
    assert!(stderr.contains("Ctrl-C: stopping"), "{stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");
    // An idle instance dropped with the server is no failure: no warning, no "panicked".
    assert!(
        !stderr.contains("WARN") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[test]
fn up_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = RedisServer::start().expect("redis-server");
    let (child, address) = start_up(&dir, &redis, &[]);
    assert_eq!(get(address, "/").map(|r| r.0), Some(200));
    let stderr = stop_with(child, "-TERM");
    assert!(stderr.contains("SIGTERM: stopping"), "{stderr}");
}

#[test]
fn build_runs_each_components_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("a")).expect("mkdir");
    let manifest = dir.path().join("spin.toml");
    std::fs::write(
        &manifest,
        "spin_manifest_version = 2\n[application]\nname = \"b\"\n\
         [[trigger.http]]\nroute = \"/...\"\ncomponent = \"a\"\n\
         [component.a]\nsource = \"a.wasm\"\n\
         [component.a.build]\ncommand = [\"echo one > built.txt\", \"echo two >> built.txt\"]\nworkdir = \"a\"\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_flashcart"))
        .args(["build", "--from"])
        .arg(&manifest)
        .output()
        .expect("run flashcart build");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built = std::fs::read_to_string(dir.path().join("a/built.txt")).expect("built.txt");
    assert_eq!(built, "one\ntwo\n");

    std::fs::write(
        &manifest,
        "spin_manifest_version = 2\n[application]\nname = \"b\"\n\
         [component.a]\nsource = \"a.wasm\"\n[component.a.build]\ncommand = \"exit 3\"\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_flashcart"))
        .args(["build", "--from"])
        .arg(&manifest)
        .output()
        .expect("run flashcart build");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("component `a`: `exit 3` failed"),
        "{stderr}"
    );
}

#[test]
fn up_stops_with_settlements_error_when_settlement_cannot_run() {
    // A cluster list whose only node is not there: settlement cannot start, and a node that
    // served on without it would pile up unsettled events. `up` stops and says why.
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = hello_manifest(dir.path());
    let mut child = node::Running::new(
        Command::new(env!("CARGO_BIN_EXE_flashcart"))
            .args(["up", "--from"])
            .arg(&manifest)
            .args([
                "--listen",
                &format!("127.0.0.1:{}", free_port()),
                "--cache-dir",
            ])
            .arg(dir.path().join("cache"))
            .args(["--redis-cluster", &format!("127.0.0.1:{}", free_port())])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn flashcart"),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit;
        }
        // (Running kills it when the panic unwinds.)
        assert!(
            Instant::now() <= deadline,
            "flashcart up kept running without its settlement"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert!(!exit.success(), "exit {exit:?}; stderr:\n{stderr}");
    assert!(
        stderr.contains("settlement stopped"),
        "the cause is not named:\n{stderr}"
    );
}
