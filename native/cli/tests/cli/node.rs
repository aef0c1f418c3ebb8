//! An edge node for the fault tests: `flashcart up` serving the repo's `spin.toml` with the
//! built components and the settlement inside it, on a private redis-server, its ledger in a
//! temporary data dir; plain HTTP/1.1 requests against it; `flashcart reconcile`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flashcart_testkit::RedisServer;

use crate::{free_port, get, target_dir};

/// The admin token the node is started with.
pub(crate) const ADMIN: &str = "fault-admin";

pub(crate) fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Asserts the edge components are built (`scripts/build-component.sh flashcart-fn-…`).
pub(crate) fn assert_components_built() {
    assert!(
        repo_root().join("build/flashcart_fn_deduct.wasm").exists(),
        "build the components first (scripts/build-component.sh flashcart-fn-…)"
    );
}

/// A started `flashcart up`, killed when the test ends, passed or failed: a failed assertion
/// (or a node that never became healthy) must not leave a node running on the machine. It
/// derefs to its [`Child`] for a test that signals or reaps it itself.
pub(crate) struct Running(Child);

impl Running {
    /// Owns `child` from now on.
    pub(crate) fn new(child: Child) -> Self {
        Self(child)
    }
}

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How a node is started beyond the defaults.
#[derive(Default)]
pub(crate) struct NodeOptions<'a> {
    /// More `flashcart up` arguments.
    pub(crate) args: &'a [&'a str],
    /// The process's open-files limit (soft and hard), as `ulimit -n` sets it.
    pub(crate) open_files: Option<u32>,
    /// Where the node's stderr goes (discarded when `None`).
    pub(crate) log: Option<&'a Path>,
    /// Environment set after the defaults (e.g. other `SPIN_VARIABLE_*` secrets).
    pub(crate) env: &'a [(&'a str, &'a str)],
}

/// Starts a node and waits until it answers its health check.
pub(crate) fn up(redis: &RedisServer, data: &Path, options: &NodeOptions) -> (Running, SocketAddr) {
    let address: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let flashcart = env!("CARGO_BIN_EXE_flashcart");
    let mut command = match options.open_files {
        // `exec` keeps the pid: killing the child kills flashcart itself.
        Some(limit) => {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                .arg(flashcart);
            sh
        }
        None => Command::new(flashcart),
    };
    command
        .args(["up", "--from"])
        .arg(repo_root().join("spin.toml"))
        .args(["--listen", &address.to_string(), "--cache-dir"])
        .arg(target_dir().join("flashcart-test-compiled"))
        .args(["--redis-url", &redis.url(), "--data-dir"])
        .arg(data)
        .args(options.args)
        .env(
            "SPIN_VARIABLE_REDIS_ADDRESS",
            format!("127.0.0.1:{}", redis.port()),
        )
        .env("SPIN_VARIABLE_ADMIN_TOKEN", ADMIN)
        .env("SPIN_VARIABLE_PSP_SIGNING_SECRETS", "whsec_fault")
        .env("SPIN_VARIABLE_BUYER_RATE_PER_SECOND", "0")
        .envs(options.env.iter().copied())
        .stdout(Stdio::null());
    match options.log {
        Some(path) => command.stderr(std::fs::File::create(path).expect("node log")),
        None => command.stderr(Stdio::null()),
    };
    let node = Running::new(command.spawn().expect("spawn flashcart up"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(address, "/.well-known/flashcart/health").is_none() {
        assert!(Instant::now() < deadline, "flashcart up did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (node, address)
}

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    Status(u16),
    /// No connection: the request was never sent.
    NotSent,
    /// Sent, never answered: it may or may not have taken effect.
    Unanswered,
}

/// The bytes of one HTTP/1.1 request with a JSON body, the admin token and a key.
pub(crate) fn request(method: &str, path: &str, key: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
         authorization: Bearer {ADMIN}\r\nidempotency-key: {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The status of a raw HTTP/1.1 answer.
pub(crate) fn status_of(raw: &str) -> Option<u16> {
    raw.split(' ').nth(1)?.parse().ok()
}

/// One request on a new connection.
pub(crate) fn send(address: SocketAddr, method: &str, path: &str, key: &str, body: &str) -> Answer {
    let Ok(mut s) = TcpStream::connect(address) else {
        return Answer::NotSent;
    };
    exchange(&mut s, &request(method, path, key, body)).map_or(Answer::Unanswered, Answer::Status)
}

/// One raw request (`request`'s bytes) on a new connection: the whole raw answer.
pub(crate) fn exchange_raw(address: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(address).expect("connect to the node");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    s.write_all(request.as_bytes()).expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the answer");
    raw
}

/// One raw request (`request`'s bytes) on a new connection: the status and the body.
pub(crate) fn call(address: SocketAddr, request: &str) -> (u16, String) {
    let raw = exchange_raw(address, request);
    let status = status_of(&raw).unwrap_or_else(|| panic!("no HTTP answer: {raw:?}"));
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

fn exchange(s: &mut TcpStream, request: &str) -> Option<u16> {
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    status_of(&raw)
}

/// Loads SKU `sku` with `stock` units over 16 segments, on sale for an hour.
pub(crate) fn load_sku(address: SocketAddr, sku: &str, stock: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let load = format!(
        "{{\"stock\":{stock},\"segments\":16,\"price\":100,\"currency\":\"EUR\",\
         \"sale_start\":{},\"sale_end\":{},\"per_buyer_limit\":2}}",
        now - 1_000,
        now + 3_600_000
    );
    // A 503 is the node's "retry shortly" (a partition fenced while settlement starts beside
    // the edge, Redis slow to answer the first connection): one was seen here once, on a busy
    // machine, from the very first load. Retry as a client should, within a deadline.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = send(
            address,
            "PUT",
            &format!("/v1/admin/skus/{sku}"),
            "load",
            &load,
        );
        if answer != Answer::Status(503) || Instant::now() > deadline {
            assert_eq!(answer, Answer::Status(201));
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A deduct of one unit of `sku` for buyer `b{id}` with key `k{id}`.
pub(crate) fn deduct_request(sku: &str, id: u64) -> String {
    request(
        "POST",
        &format!("/v1/stock/{sku}/reservations"),
        &format!("k{id}"),
        &format!("{{\"buyer_id\":\"b{id}\",\"quantity\":1}}"),
    )
}

/// The units of `sku` taken so far, after asserting the stock invariant holds.
pub(crate) fn units_taken(address: SocketAddr, sku: &str, stock: u64) -> u64 {
    let (status, body) = crate::get_authorized(address, &format!("/v1/admin/skus/{sku}"), ADMIN)
        .expect("admin state");
    assert_eq!(status, 200, "{body}");
    let state: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(state["invariant_holds"], true, "{state}");
    stock - state["totals"]["available"].as_u64().expect("available")
}

/// Waits until `flashcart reconcile` finds the ledger equal to Redis (settlement caught up).
pub(crate) fn wait_until_reconciled(redis: &RedisServer, data: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let reconcile = Command::new(env!("CARGO_BIN_EXE_flashcart"))
            .args(["reconcile", "--redis-url", &redis.url(), "--data-dir"])
            .arg(data)
            .output()
            .expect("run flashcart reconcile");
        if reconcile.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the ledger never matched Redis:\n{}",
            String::from_utf8_lossy(&reconcile.stdout)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
