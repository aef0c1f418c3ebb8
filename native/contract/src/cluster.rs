//! The edge on a Redis Cluster, over HTTP through flashcart's host and the built
//! components: each component routes its calls to the partition's master itself.

use flashcart_core::KeySchema;
use flashcart_core::ids::{BuyerId, SkuId};
use flashcart_testkit::{RedisCluster, RedisServer};

use crate::node::{
    Kind, Node, NodeOptions, Redis, admin_state_req, deduct_req, load, problem_detail, problem_type,
};

/// The slot of `key`, as the cluster computes it.
fn slot_of(cluster: &RedisCluster, key: &str) -> u16 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(&mut cluster.nodes()[0].connection().expect("conn"))
        .expect("keyslot")
}

fn keys_on(server: &RedisServer) -> u64 {
    redis::cmd("DBSIZE")
        .query(&mut server.connection().expect("conn"))
        .expect("dbsize")
}

/// `MOVED` answers the masters gave so far (`INFO errorstats`).
fn moved_answers(cluster: &RedisCluster) -> u64 {
    cluster
        .nodes()
        .iter()
        .map(|s| {
            let info: String = redis::cmd("INFO")
                .arg("errorstats")
                .query(&mut s.connection().expect("conn"))
                .expect("info");
            info.lines()
                .filter_map(|l| l.strip_prefix("errorstat_MOVED:count="))
                .filter_map(|n| n.trim().parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// A SKU in 16 segments (one per partition) lands on all three masters; buyers reserve; one
/// partition's slot moves to another master between two deducts (`SETSLOT` IMPORTING and
/// MIGRATING, `MIGRATE`, `SETSLOT NODE`); the next deducts into it follow the `MOVED` and
/// every buyer gets an answer from the contract, none a 5xx.
pub async fn segments_spread_and_a_moved_partition_is_followed() {
    let n = &Node::start(Kind::HttpCluster, NodeOptions::default()).await;
    let Redis::Cluster(cluster) = n.redis() else {
        unreachable!("a cluster node")
    };
    let loaded = load(n, "spread", 160, 16, -1_000).await;
    assert_eq!(loaded.status, 201, "{loaded:?}");
    for (i, server) in n.redis().servers().iter().enumerate() {
        assert!(
            keys_on(server) > 0,
            "master {i} holds some of the SKU's partitions"
        );
    }
    for i in 0..20 {
        let r = n
            .send(deduct_req(
                "spread",
                &format!("early-{i}"),
                1,
                &format!("e-{i}"),
            ))
            .await;
        assert_eq!(r.status, 201, "{r:?}");
    }

    // The partition that is home to buyer "mover" moves to the next master.
    let schema = KeySchema::default();
    let home = schema.home_of_buyer(&BuyerId::parse("mover").expect("buyer"));
    let sku = SkuId::parse("spread").expect("sku");
    let slot = slot_of(cluster, &schema.sku(home, &sku));
    let to = (cluster.owner_of(slot).expect("owner") + 1) % 3;
    let moved_before = moved_answers(cluster);
    cluster.move_slot(slot, to).expect("move the slot");

    // The deduct component's instance (or the map it left in the key-value store) still
    // sends this partition to the old master, which answers MOVED.
    let moved = n.send(deduct_req("spread", "mover", 1, "m-1")).await;
    assert_eq!(moved.status, 201, "the MOVED is followed: {moved:?}");
    assert!(
        moved_answers(cluster) > moved_before,
        "a MOVED was answered and followed"
    );
    for i in 0..20 {
        let r = n
            .send(deduct_req(
                "spread",
                &format!("late-{i}"),
                1,
                &format!("l-{i}"),
            ))
            .await;
        assert_eq!(r.status, 201, "{r:?}");
    }
    let state = n.send(admin_state_req("spread")).await;
    assert_eq!(state.status, 200, "{state:?}");
    let body = state.json_body();
    assert_eq!(body["totals"]["available"], 160 - 41, "{body}");
    assert_eq!(body["invariant_holds"], true);
    assert_eq!(cluster.owner_of(slot).expect("owner"), to);
}

/// `allowed_outbound_hosts` that leave out one master: every call that needs it answers 503
/// problem+json naming that node and the setting, and nothing is written on it.
pub async fn a_node_outside_the_allowed_hosts_is_named() {
    let redis = Redis::start(Kind::HttpCluster);
    let mut ports: Vec<u16> = redis.servers().iter().map(|s| s.port()).collect();
    ports.sort_unstable();
    // `lo..hi` excludes `hi`: the master on the highest port is not allowed.
    let options = NodeOptions {
        variables: vec![(
            "redis_cluster_hosts".to_owned(),
            format!("127.0.0.1:{}..{}", ports[0], ports[2]),
        )],
        ..NodeOptions::default()
    };
    let n = &Node::start_on(Kind::HttpCluster, options, redis).await;
    let refused = n
        .redis()
        .servers()
        .into_iter()
        .find(|s| s.port() == ports[2])
        .expect("node");
    let answer = load(n, "fenced", 160, 16, -1_000).await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(problem_type(&answer), "inventory-unavailable");
    let detail = problem_detail(&answer);
    assert!(
        detail.contains(&format!("127.0.0.1:{}", ports[2]))
            && detail.contains("allowed_outbound_hosts"),
        "{detail}"
    );
    assert_eq!(keys_on(refused), 0, "nothing reached the refused node");
}

/// A seed list naming a plain Redis, or only nodes nobody listens on: 503 problem+json naming
/// the node, at once, and nothing written.
pub async fn bad_seed_lists_are_named() {
    let plain = RedisServer::start().expect("redis-server");
    let plain_address = format!("127.0.0.1:{}", plain.port());
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").to_string()
    };
    for plain_first in [true, false] {
        let redis = Redis::start(Kind::HttpCluster);
        let (seeds, named, why) = if plain_first {
            let seeds = format!("{plain_address},{}", redis.seeds());
            (seeds, plain_address.clone(), "not a cluster node")
        } else {
            (dead.clone(), dead.clone(), "cannot be reached")
        };
        let options = NodeOptions {
            variables: vec![("redis_address".to_owned(), seeds)],
            ..NodeOptions::default()
        };
        let n = &Node::start_on(Kind::HttpCluster, options, redis).await;
        for answer in [
            load(n, "seeded", 16, 4, -1_000).await,
            n.send(deduct_req("seeded", "b", 1, "k")).await,
        ] {
            assert_eq!(answer.status, 503, "{answer:?}");
            assert_eq!(problem_type(&answer), "inventory-unavailable");
            let detail = problem_detail(&answer);
            assert!(detail.contains(&named) && detail.contains(why), "{detail}");
        }
        for server in n.redis().servers() {
            assert_eq!(keys_on(server), 0, "nothing written");
        }
    }
    assert_eq!(keys_on(&plain), 0, "nothing written on the plain Redis");
}
