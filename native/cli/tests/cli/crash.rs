//! `flashcart up` killed with SIGKILL mid-sale (the edge host and the settlement inside it),
//! then started again on the same Redis and data dir: nothing oversold, the invariant holds,
//! every 201 a buyer saw is a unit taken, and once settlement has caught up the ledger
//! matches Redis (`flashcart reconcile` exits 0).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flashcart_testkit::RedisServer;

use crate::{free_port, get, target_dir};

const ADMIN: &str = "crash-admin";
const STOCK: u64 = 400;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Status(u16),
    /// No connection: the request was never sent.
    NotSent,
    /// Sent, never answered: it may or may not have taken effect.
    Unanswered,
}

/// One HTTP/1.1 request with a JSON body.
fn send(address: SocketAddr, method: &str, path: &str, key: &str, body: &str) -> Answer {
    let Ok(mut s) = TcpStream::connect(address) else {
        return Answer::NotSent;
    };
    exchange(&mut s, method, path, key, body).map_or(Answer::Unanswered, Answer::Status)
}

fn exchange(s: &mut TcpStream, method: &str, path: &str, key: &str, body: &str) -> Option<u16> {
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
         authorization: Bearer {ADMIN}\r\nidempotency-key: {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    raw.split(' ').nth(1)?.parse().ok()
}

fn up(redis: &RedisServer, data: &std::path::Path) -> (Child, SocketAddr) {
    let address: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let child = Command::new(env!("CARGO_BIN_EXE_flashcart"))
        .args(["up", "--from"])
        .arg(repo_root().join("spin.toml"))
        .args(["--listen", &address.to_string(), "--cache-dir"])
        .arg(target_dir().join("flashcart-test-compiled"))
        .args(["--redis-url", &redis.url(), "--data-dir"])
        .arg(data)
        .env(
            "SPIN_VARIABLE_REDIS_ADDRESS",
            format!("127.0.0.1:{}", redis.port()),
        )
        .env("SPIN_VARIABLE_ADMIN_TOKEN", ADMIN)
        .env("SPIN_VARIABLE_PSP_SIGNING_SECRETS", "whsec_crash")
        .env("SPIN_VARIABLE_BUYER_RATE_PER_SECOND", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn flashcart up");
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(address, "/.well-known/flashcart/health").is_none() {
        assert!(Instant::now() < deadline, "flashcart up did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, address)
}

fn deduct(address: SocketAddr, id: u64) -> Answer {
    send(
        address,
        "POST",
        "/v1/stock/crash/reservations",
        &format!("k{id}"),
        &format!("{{\"buyer_id\":\"b{id}\",\"quantity\":1}}"),
    )
}

#[test]
fn a_killed_edge_node_loses_and_doubles_nothing() {
    let root = repo_root();
    assert!(
        root.join("build/flashcart_fn_deduct.wasm").exists(),
        "build the components first (scripts/build-component.sh flashcart-fn-…)"
    );
    let redis = RedisServer::start().expect("redis-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (mut node, address) = up(&redis, &data);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let load = format!(
        "{{\"stock\":{STOCK},\"segments\":16,\"price\":100,\"currency\":\"EUR\",\
         \"sale_start\":{},\"sale_end\":{},\"per_buyer_limit\":2}}",
        now - 1_000,
        now + 3_600_000
    );
    assert_eq!(
        send(address, "PUT", "/v1/admin/skus/crash", "load", &load),
        Answer::Status(201)
    );

    // Buyers keep coming; the node is killed once some have been answered.
    let reserved = Arc::new(AtomicU64::new(0));
    let unknown = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let buyers: Vec<_> = (0..4)
        .map(|_| {
            let (reserved, unknown, next, stop) = (
                Arc::clone(&reserved),
                Arc::clone(&unknown),
                Arc::clone(&next),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match deduct(address, next.fetch_add(1, Ordering::Relaxed)) {
                        Answer::Status(201) => reserved.fetch_add(1, Ordering::Relaxed),
                        Answer::Status(s) => panic!("deduct answered {s}"),
                        Answer::Unanswered => unknown.fetch_add(1, Ordering::Relaxed),
                        // The node is gone: this buyer stops.
                        Answer::NotSent => break,
                    };
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while reserved.load(Ordering::Relaxed) < 60 {
        assert!(Instant::now() < deadline, "no sale before the kill");
        std::thread::sleep(Duration::from_millis(5));
    }
    node.kill().expect("SIGKILL flashcart up");
    node.wait().expect("reap");
    stop.store(true, Ordering::Relaxed);
    for b in buyers {
        b.join().expect("buyer thread");
    }

    // Started again on the same Redis and ledger: it sells on, and settles what it had not.
    let (mut node, address) = up(&redis, &data);
    let after = next.load(Ordering::Relaxed) + 1;
    for id in after..after + 20 {
        assert_eq!(
            deduct(address, id),
            Answer::Status(201),
            "after the restart"
        );
    }
    let seen = reserved.load(Ordering::Relaxed) + 20;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let reconcile = Command::new(env!("CARGO_BIN_EXE_flashcart"))
            .args(["reconcile", "--redis-url", &redis.url(), "--data-dir"])
            .arg(&data)
            .output()
            .expect("run flashcart reconcile");
        if reconcile.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ledger never matched Redis:\n{}",
            String::from_utf8_lossy(&reconcile.stdout)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (status, body) =
        crate::get_authorized(address, "/v1/admin/skus/crash", ADMIN).expect("admin state");
    assert_eq!(status, 200, "{body}");
    let state: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(state["invariant_holds"], true, "{state}");
    let taken = STOCK - state["totals"]["available"].as_u64().expect("available");
    let unknown = unknown.load(Ordering::Relaxed);
    assert!(
        (seen..=seen + unknown).contains(&taken),
        "{taken} units taken for {seen} reservations answered and {unknown} unanswered"
    );
    node.kill().expect("stop");
    node.wait().expect("reap");
}
