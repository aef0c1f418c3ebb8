//! The host serving real components: routing, Spin headers, variables, key-value,
//! deadlines, body limits, imports outside the world, health and metrics.

use std::time::{Duration, Instant};

use flashcart_host::runtime::Allocator;
use flashcart_host::variables::Providers;
use flashcart_host::{App, AppConfig};

use crate::support::{TestServer, expand};

/// The hello component on a parameter route and a wildcard route (shared by other tests).
pub(crate) const HELLO: &str = r#"
spin_manifest_version = 2
[application]
name = "hello-app"
[[trigger.http]]
route = "/v1/stock/:sku"
component = "hello"
[[trigger.http]]
route = "/static/..."
component = "hello"
[component.hello]
source = "{wasm:hello}"
"#;

#[tokio::test]
async fn hello_answers_with_spin_route_headers() {
    let server = TestServer::start(HELLO, |_| {}).await;

    let reply = server.get("/v1/stock/sku-42").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply.body.starts_with("hello from flashcart\n"),
        "{}",
        reply.body
    );
    assert!(reply.body.contains("method=GET\n"), "{}", reply.body);
    assert!(
        reply.body.contains("matched-route=/v1/stock/:sku\n"),
        "{}",
        reply.body
    );
    assert!(reply.body.contains("param-sku=sku-42\n"), "{}", reply.body);
    assert!(
        reply
            .header("x-request-id")
            .is_some_and(|id| !id.is_empty())
    );

    let reply = server.get("/static/css/site.css").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.body.contains("path-info=/css/site.css\n"),
        "{}",
        reply.body
    );

    let reply = server.get("/nowhere").await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    let problem: serde_json::Value = serde_json::from_str(&reply.body).expect("json");
    assert_eq!(problem["status"], 404);
    assert_eq!(problem["request_id"].as_str(), reply.header("x-request-id"));

    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn health_and_metrics() {
    let server = TestServer::start(HELLO, |_| {}).await;
    let health = server.get("/.well-known/flashcart/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.body, r#"{"status":"ok","app":"hello-app"}"#);

    for _ in 0..3 {
        assert_eq!(server.get("/v1/stock/a").await.status, 200);
    }
    let metrics = server.get("/.well-known/flashcart/metrics").await;
    assert_eq!(metrics.status, 200);
    for name in [
        "flashcart_requests_total{component=\"hello\",status=\"200\"}",
        "flashcart_instantiate_seconds_bucket{component=\"hello\"",
        "flashcart_request_duration_seconds_count{component=\"hello\"}",
    ] {
        assert!(
            metrics.body.contains(name),
            "no {name} in:\n{}",
            metrics.body
        );
    }
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_413() {
    let server = TestServer::start(HELLO, |c| c.max_body_bytes = 1024).await;
    let small = server.request("POST", "/v1/stock/a", &[b'x'; 1024]).await;
    assert_eq!(small.status, 200);
    let big = server.request("POST", "/v1/stock/a", &[b'x'; 1025]).await;
    assert_eq!(big.status, 413, "{}", big.body);
    assert_eq!(big.header("content-type"), Some("application/problem+json"));
    assert!(big.body.contains("limited to 1024 bytes"), "{}", big.body);
}

const VARIABLES: &str = r#"
spin_manifest_version = 2
[application]
name = "vars"
[variables]
greeting = { default = "hello" }
api_token = { required = true, secret = true }
[[trigger.http]]
route = "/vars/..."
component = "vars"
[component.vars]
source = "{wasm:variables}"
[component.vars.variables]
greeting = "{{ greeting }}"
message = "{{ greeting }}, buyer"
token = "{{ api_token }}"
"#;

#[tokio::test]
async fn variables_follow_spins_provider_order() {
    // Default, then the environment provider overriding it.
    let server = TestServer::start(VARIABLES, |c| {
        c.providers = Providers::default();
        c.providers
            .env
            .insert("SPIN_VARIABLE_API_TOKEN".into(), "t0ken".into());
    })
    .await;
    assert_eq!(server.get("/vars/greeting").await.body, "hello");
    assert_eq!(server.get("/vars/message").await.body, "hello, buyer");
    assert_eq!(server.get("/vars/token").await.body, "t0ken");
    let undefined = server.get("/vars/nope").await;
    assert_eq!(undefined.status, 404);
    assert!(undefined.body.contains("Undefined"), "{}", undefined.body);

    let server = TestServer::start(VARIABLES, |c| {
        c.providers = Providers::default();
        c.providers
            .env
            .insert("SPIN_VARIABLE_GREETING".into(), "from-env".into());
        c.providers
            .env
            .insert("SPIN_VARIABLE_API_TOKEN".into(), "env-token".into());
        c.providers
            .cli
            .insert("api_token".into(), "cli-token".into());
    })
    .await;
    assert_eq!(server.get("/vars/message").await.body, "from-env, buyer");
    assert_eq!(server.get("/vars/token").await.body, "cli-token");
}

#[tokio::test]
async fn a_missing_required_variable_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("spin.toml");
    std::fs::write(&path, expand(VARIABLES)).expect("write");
    let mut config = AppConfig::new(&path);
    config.providers = Providers::default();
    let err = App::load(&config).expect_err("api_token is required");
    assert_eq!(
        err.to_string(),
        "variable `api_token` is required: set SPIN_VARIABLE_API_TOKEN or give it in the runtime config"
    );
}

const KV: &str = r#"
spin_manifest_version = 2
[application]
name = "kv"
[[trigger.http]]
route = "/kv/..."
component = "kv"
[[trigger.http]]
route = "/nokv/..."
component = "nokv"
[component.kv]
source = "{wasm:kv}"
key_value_stores = ["default"]
[component.nokv]
source = "{wasm:kv}"
"#;

async fn kv_round_trip(server: &TestServer) {
    assert_eq!(server.get("/kv/cart-1").await.status, 404);
    assert_eq!(
        server.request("PUT", "/kv/cart-1", b"3 items").await.status,
        201
    );
    assert_eq!(
        server.request("PUT", "/kv/cart-2", b"1 item").await.status,
        201
    );
    // Each request is a fresh instance: the store outlives them.
    let got = server.get("/kv/cart-1").await;
    assert_eq!((got.status, got.body.as_str()), (200, "3 items"));
    assert_eq!(server.get("/kv").await.body, "cart-1,cart-2");
    assert_eq!(
        server.request("DELETE", "/kv/cart-1", b"").await.status,
        204
    );
    assert_eq!(server.get("/kv/cart-1").await.status, 404);
}

#[tokio::test]
async fn key_value_round_trip_in_memory() {
    let server = TestServer::start(KV, |_| {}).await;
    kv_round_trip(&server).await;
    // A component without `key_value_stores = ["default"]` is denied, as on Spin.
    let denied = server.get("/nokv/x").await;
    assert_eq!(denied.status, 500);
    assert!(denied.body.contains("AccessDenied"), "{}", denied.body);
}

#[tokio::test]
async fn key_value_in_sqlite_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime_config = dir.path().join("runtime-config.toml");
    std::fs::write(
        &runtime_config,
        "[key_value_store.default]\ntype = \"spin\"\npath = \"kv.db\"\n",
    )
    .expect("write");
    let server = TestServer::start(KV, |c| c.runtime_config = Some(runtime_config.clone())).await;
    kv_round_trip(&server).await;
    server.stop().await.expect("clean stop");
    assert!(dir.path().join("kv.db").exists());

    let server = TestServer::start(KV, |c| c.runtime_config = Some(runtime_config.clone())).await;
    assert_eq!(server.get("/kv/cart-2").await.body, "1 item");
}

const LOOP: &str = r#"
spin_manifest_version = 2
[application]
name = "loop"
[[trigger.http]]
route = "/loop"
component = "spin-loop"
[[trigger.http]]
route = "/hello"
component = "hello"
[component.spin-loop]
source = "{wasm:spin-loop}"
[component.hello]
source = "{wasm:hello}"
"#;

#[tokio::test]
async fn a_looping_component_is_cut_off_with_504() {
    let server = TestServer::start(LOOP, |c| c.request_timeout = Duration::from_millis(300)).await;
    let started = Instant::now();
    let reply = server.get("/loop").await;
    let took = started.elapsed();
    assert_eq!(reply.status, 504, "{}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    assert!(
        reply
            .body
            .contains("component `spin-loop` ran past its 300ms deadline"),
        "{}",
        reply.body
    );
    assert!(took < Duration::from_secs(5), "cut off only after {took:?}");
    // The worker is free again: the next request is served.
    assert_eq!(server.get("/hello").await.status, 200);
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_component_outside_the_world_is_refused_at_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("spin.toml");
    std::fs::write(
        &path,
        expand(
            r#"
spin_manifest_version = 2
[application]
name = "forbidden"
[[trigger.http]]
route = "/..."
component = "reader"
[component.reader]
source = "{wasm:forbidden}"
"#,
        ),
    )
    .expect("write");
    let err = App::load(&AppConfig::new(&path)).expect_err("imports wasi:filesystem");
    let message = err.to_string();
    assert!(
        message.starts_with("component `reader` imports `wasi:filesystem/"),
        "{message}"
    );
    assert!(message.contains("not in the flashcart world"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_beyond_the_pool_size_all_succeed() {
    // 4 instance slots, 48 concurrent requests: the excess waits for a slot instead of
    // failing to allocate one.
    let server =
        std::sync::Arc::new(TestServer::start(HELLO, |c| c.runtime.max_instances = 4).await);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..48 {
        let server = std::sync::Arc::clone(&server);
        tasks.spawn(async move { server.get(&format!("/v1/stock/s{i}")).await });
    }
    let mut ok = 0;
    while let Some(reply) = tasks.join_next().await {
        let reply = reply.expect("task");
        assert_eq!(reply.status, 200, "{}", reply.body);
        ok += 1;
    }
    assert_eq!(ok, 48);
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let server = TestServer::start(HELLO, |_| {}).await;
    let address = server.address;
    let in_flight = tokio::spawn(async move {
        flashcart_host::bench::http_request(address, "GET", "/static/sleep/400", b"").await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    server.stop().await.expect("clean stop");
    let (status, _, body) = in_flight
        .await
        .expect("task")
        .expect("answered during shutdown");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "stop did not wait"
    );
    // And nothing new is accepted after it.
    assert!(
        flashcart_host::bench::http_request(address, "GET", "/v1/stock/a", b"")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_component_waiting_past_its_deadline_gets_504() {
    // Not a busy loop (the epoch deadline's case) but an await that outlives the
    // deadline: the wall-clock timeout answers.
    let server = TestServer::start(HELLO, |c| c.request_timeout = Duration::from_millis(300)).await;
    let started = Instant::now();
    let reply = server.get("/static/sleep/5000").await;
    assert_eq!(reply.status, 504, "{}", reply.body);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(server.get("/static/sleep/10").await.status, 200);
}

/// The `instance-requests=` counter of each of `n` sequential hello requests.
async fn served_counts(server: &TestServer, n: usize) -> Vec<u64> {
    let mut counts = Vec::new();
    for i in 0..n {
        let reply = server.get(&format!("/v1/stock/reuse-{i}")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let count = reply
            .body
            .lines()
            .find_map(|l| l.strip_prefix("instance-requests="))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter in {}", reply.body));
        counts.push(count);
    }
    counts
}

fn reuse(max_requests: usize) -> impl FnOnce(&mut AppConfig) {
    move |c| {
        c.reuse = flashcart_host::Reuse {
            max_requests,
            max_concurrent: 16,
            // Long enough that a slow machine never drops the idle instance between two
            // requests of the test: what is asserted is the reuse limit, not timing.
            idle_timeout: Duration::from_secs(60),
        };
    }
}

#[tokio::test]
async fn instances_are_reused_up_to_the_limit() {
    let server = TestServer::start(HELLO, reuse(3)).await;
    let counts = served_counts(&server, 9).await;
    assert!(
        counts.iter().any(|&n| n > 1),
        "no request was served by a reused instance: {counts:?}"
    );
    assert!(
        counts.iter().all(|&n| (1..=3).contains(&n)),
        "an instance served more than 3 requests: {counts:?}"
    );
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn reuse_one_gives_every_request_a_fresh_instance() {
    let server = TestServer::start(HELLO, reuse(1)).await;
    let counts = served_counts(&server, 5).await;
    assert_eq!(counts, vec![1; 5]);
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_instances() {
    // 24 requests that each wait 300 ms inside the guest, at once, 8 per instance at
    // most: every one is answered, and no instance holds more than it may.
    let server = std::sync::Arc::new(
        TestServer::start(HELLO, |c| {
            c.reuse.max_concurrent = 8;
            c.reuse.idle_timeout = Duration::from_secs(60);
        })
        .await,
    );
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..24 {
        let server = std::sync::Arc::clone(&server);
        tasks.spawn(async move { server.get("/static/sleep/300").await });
    }
    let mut answered = 0;
    while let Some(reply) = tasks.join_next().await {
        let reply = reply.expect("task");
        assert_eq!(reply.status, 200, "{}", reply.body);
        answered += 1;
    }
    assert_eq!(answered, 24);
}

const MEMORY: &str = r#"
spin_manifest_version = 2
[application]
name = "memory"
[[trigger.http]]
route = "/..."
component = "memory"
[component.memory]
source = "{wasm:memory}"
"#;

/// `--max-memory-mb` holds with either allocator: growing within it succeeds, growing past
/// it is refused to the guest (its allocation fails) and the node goes on serving.
async fn memory_is_capped(allocator: Allocator) {
    let server = TestServer::start(MEMORY, |c| {
        c.runtime.allocator = allocator;
        c.runtime.max_memory_bytes = 24 << 20;
    })
    .await;
    let within = server.get("/grow/8").await;
    assert_eq!(within.status, 200, "{allocator:?}: {}", within.body);
    assert_eq!(within.body, "grew=8 pages=128\n", "{allocator:?}");
    let past = server.get("/grow/64").await;
    assert_eq!(past.status, 507, "{allocator:?}: {}", past.body);
    assert_eq!(past.body, "refused=64\n", "{allocator:?}");
    assert_eq!(server.get("/grow/8").await.status, 200, "{allocator:?}");
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn memory_is_capped_with_the_pooling_allocator() {
    memory_is_capped(Allocator::Pooling).await;
}

#[tokio::test]
async fn memory_is_capped_with_the_on_demand_allocator() {
    memory_is_capped(Allocator::OnDemand).await;
}
