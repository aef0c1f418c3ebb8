//! `spin:redis` against a private redis-server, and `allowed_outbound_hosts`.

use flashcart_testkit::RedisServer;

use crate::support::TestServer;

/// Runs a command on the private server, over the `redis` crate.
fn query<T: redis::FromRedisValue>(redis: &RedisServer, args: &[&str]) -> T {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut redis.connection().expect("connect"))
        .expect("query")
}

const REDIS: &str = r#"
spin_manifest_version = 2
[application]
name = "redis"
[variables]
redis_address = { required = true }
[[trigger.http]]
route = "/redis/..."
component = "redis"
[[trigger.http]]
route = "/redis-execute/..."
component = "redis"
[[trigger.http]]
route = "/elsewhere/..."
component = "elsewhere"
[component.redis]
source = "{wasm:redis}"
allowed_outbound_hosts = ["redis://{{ redis_address }}"]
[component.redis.variables]
redis_address = "{{ redis_address }}"
# Same code, same variable, but not allowed to connect anywhere.
[component.elsewhere]
source = "{wasm:redis}"
allowed_outbound_hosts = ["redis://127.0.0.1:1"]
[component.elsewhere.variables]
redis_address = "{{ redis_address }}"
"#;

#[tokio::test]
async fn set_get_and_execute_against_a_real_redis() {
    let redis = RedisServer::start().expect("redis-server");
    let address = format!("127.0.0.1:{}", redis.port());
    let server = TestServer::start(REDIS, |c| {
        c.providers
            .cli
            .insert("redis_address".into(), address.clone());
    })
    .await;

    assert_eq!(server.get("/redis/stock").await.status, 404);
    assert_eq!(
        server.request("PUT", "/redis/stock", b"10").await.status,
        201
    );
    let got = server.get("/redis/stock").await;
    assert_eq!((got.status, got.body.as_str()), (200, "10"), "{}", got.body);
    // The value really is in the server, not in some host-side cache.
    assert_eq!(query::<String>(&redis, &["GET", "stock"]), "10");

    let executed = server.request("POST", "/redis-execute/stock", b"").await;
    assert_eq!(executed.status, 200, "{}", executed.body);
    assert_eq!(executed.body, "int:15|bin:15");
    assert_eq!(query::<String>(&redis, &["GET", "stock"]), "15");

    // A wrong-type error comes back to the component as an error, not a trap.
    query::<i64>(&redis, &["LPUSH", "alist", "x"]);
    let wrong = server.request("POST", "/redis-execute/alist", b"").await;
    assert_eq!(wrong.status, 502, "{}", wrong.body);

    // Many requests share one pooled connection.
    for i in 0..20 {
        let path = format!("/redis/k{i}");
        assert_eq!(server.request("PUT", &path, b"v").await.status, 201);
    }
    let clients: String = query(&redis, &["CLIENT", "LIST"]);
    let connections = clients.lines().filter(|l| l.contains("addr=")).count();
    // One pooled connection from the host, plus the one this query just opened.
    assert!(
        connections <= 2,
        "expected one pooled connection, saw:\n{clients}"
    );
}

#[tokio::test]
async fn an_address_outside_allowed_outbound_hosts_is_refused() {
    let redis = RedisServer::start().expect("redis-server");
    let address = format!("127.0.0.1:{}", redis.port());
    let server = TestServer::start(REDIS, |c| {
        c.providers
            .cli
            .insert("redis_address".into(), address.clone());
    })
    .await;
    let refused = server.request("PUT", "/elsewhere/stock", b"1").await;
    assert_eq!(refused.status, 502, "{}", refused.body);
    assert_eq!(
        refused.body,
        format!("open redis://{address}: Error::InvalidAddress")
    );
    // Nothing reached the server.
    assert_eq!(query::<i64>(&redis, &["EXISTS", "stock"]), 0);
}
