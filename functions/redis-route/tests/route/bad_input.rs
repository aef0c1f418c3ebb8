//! Bad deployments answer a clear error naming the cause, never hang, never write half.

use flashcart_core::Rejection;
use flashcart_core::inventory::LoadOutcome;
use flashcart_testkit::{RedisCluster, RedisServer};

use crate::support::{
    MemoryKv, NativeConnector, addresses, inventory, key_count, now, reserve, router, spec,
    unique_sku,
};

/// The detail of a deployment error: the problem body shows it, so it names the cause.
fn unavailable(result: Result<impl std::fmt::Debug, Rejection>) -> String {
    match result {
        Err(e @ Rejection::Unreachable(_)) => {
            let detail = e.problem().detail.unwrap_or_default();
            assert_eq!(detail, e.to_string(), "the answer shows the cause");
            detail
        }
        other => panic!("expected unreachable, got {other:?}"),
    }
}

/// A port nothing listens on.
fn dead_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    drop(listener);
    address.to_string()
}

#[tokio::test]
async fn a_plain_redis_in_a_cluster_seed_list_is_named() {
    let cluster = RedisCluster::start(3).expect("cluster");
    let single = RedisServer::start().expect("redis");
    let plain = format!("127.0.0.1:{}", single.port());
    let seeds = format!("{plain},{}", addresses(&cluster)[0]);
    let inv = inventory(router(
        &seeds,
        NativeConnector::default(),
        &MemoryKv::default(),
    ));
    let sku = unique_sku("mixed");
    let detail = unavailable(inv.load_sku(&spec(&sku, 16), now()).await);
    assert!(
        detail.contains(&plain) && detail.contains("not a cluster node"),
        "{detail}"
    );
    let detail = unavailable(inv.reserve(&reserve(&sku, "b"), now()).await);
    assert!(detail.contains("not a cluster node"), "{detail}");
    assert_eq!(key_count(&single), 0, "nothing written");
    for node in cluster.nodes() {
        assert_eq!(key_count(node), 0, "nothing written");
    }
}

#[tokio::test]
async fn unreachable_seeds_are_skipped_and_named_when_none_answers() {
    let cluster = RedisCluster::start(3).expect("cluster");
    let (dead_1, dead_2) = (dead_address(), dead_address());
    let seeds = format!("{dead_1},{}", addresses(&cluster)[1]);
    let inv = inventory(router(
        &seeds,
        NativeConnector::default(),
        &MemoryKv::default(),
    ));
    inv.ensure_library().await.expect("the second seed answers");
    let sku = unique_sku("seeds");
    inv.load_sku(&spec(&sku, 16), now()).await.expect("load");

    let none = inventory(router(
        &format!("{dead_1},{dead_2}"),
        NativeConnector::default(),
        &MemoryKv::default(),
    ));
    let detail = unavailable(none.stock(&sku).await);
    assert!(
        detail.contains(&format!("{dead_1} cannot be reached"))
            && detail.contains(&format!("{dead_2} cannot be reached")),
        "{detail}"
    );
    // One unreachable single Redis: named, as before routing existed.
    let lone = inventory(router(
        &dead_1,
        NativeConnector::default(),
        &MemoryKv::default(),
    ));
    let detail = unavailable(lone.stock(&sku).await);
    assert!(
        detail.contains(&format!("redis node {dead_1} cannot be reached")),
        "{detail}"
    );
}

#[tokio::test]
async fn a_master_outside_the_allowed_hosts_is_named_and_a_retried_load_converges() {
    let cluster = RedisCluster::start(3).expect("cluster");
    let all = addresses(&cluster);
    let seeds = all.join(",");
    let inv = inventory(router(
        &seeds,
        NativeConnector::default(),
        &MemoryKv::default(),
    ));
    inv.ensure_library().await.expect("library");

    // allowed_outbound_hosts that forgot the third master.
    let partial = NativeConnector {
        allowed: Some(all[..2].to_vec()),
        ..NativeConnector::default()
    };
    let fenced = inventory(router(&seeds, partial, &MemoryKv::default()));
    let sku = unique_sku("fenced");
    let detail = unavailable(fenced.load_sku(&spec(&sku, 64), now()).await);
    assert!(
        detail.contains(&format!("redis node {} is not in", all[2]))
            && detail.contains("allowed_outbound_hosts"),
        "{detail}"
    );

    assert!(
        detail.contains("send the same load again"),
        "the answer says how to finish: {detail}"
    );
    let written: u64 = cluster.nodes()[..2].iter().map(key_count).sum();
    assert!(
        written > 0,
        "the load wrote some partitions before it stopped"
    );

    // The load stopped midway: retrying it with every master allowed finishes it.
    assert_eq!(
        inv.load_sku(&spec(&sku, 64), now()).await.expect("retry"),
        LoadOutcome::Loaded
    );
    assert_eq!(
        inv.load_sku(&spec(&sku, 64), now()).await.expect("again"),
        LoadOutcome::Unchanged
    );
    let levels = inv.stock(&sku).await.expect("stock");
    assert_eq!((levels.terms.stock, levels.available()), (64, 64));
    assert_eq!(levels.segments.len(), 16);
    assert!(levels.invariant_holds(), "{levels:#?}");
}
