//! `durability = replicated`: a write is confirmed by `WAIT` on the connection that made it;
//! no replica in time is a 503 whose retry replays the stored decision.

use std::time::Duration;

use flashcart_core::Rejection;
use flashcart_redis_route::Durability;
use flashcart_testkit::{RedisCluster, RedisServer};

use crate::support::{
    MemoryKv, NativeConnector, TestRouter, addresses, calls, inventory, now, reserve, router, spec,
    unique_sku,
};

const REPLICATED: Durability = Durability::Replicated { timeout_ms: 200 };

/// A 3 + 3 cluster, an inventory routed over it with `durability = replicated`, and a SKU
/// loaded in 16 segments (one per partition, so every master holds some).
async fn replicated_sale(
    name: &str,
) -> (
    RedisCluster,
    flashcart_core::Inventory<TestRouter>,
    flashcart_core::ids::SkuId,
) {
    let cluster = RedisCluster::start_with_replicas(3, 1, Duration::from_secs(5)).expect("cluster");
    let seeds = addresses(&cluster)[..3].join(",");
    let inv = inventory(
        router(&seeds, NativeConnector::default(), &MemoryKv::default())
            .with_durability(REPLICATED),
    );
    inv.ensure_library().await.expect("library");
    let sku = unique_sku(name);
    inv.load_sku(&spec(&sku, 16), now()).await.expect("load");
    (cluster, inv, sku)
}

#[tokio::test]
async fn every_write_waits_for_a_replica_and_reads_do_not() {
    let (cluster, inv, sku) = replicated_sale("confirmed").await;
    let (fcalls, waits) = (
        calls(cluster.nodes(), "fcall"),
        calls(cluster.nodes(), "wait"),
    );
    for b in 0..5 {
        inv.reserve(&reserve(&sku, &format!("b{b}")), now())
            .await
            .expect("reserve");
    }
    inv.stock(&sku).await.expect("stock");
    let written = calls(cluster.nodes(), "fcall") - fcalls;
    assert!(written >= 5, "{written} writes");
    assert_eq!(
        calls(cluster.nodes(), "wait") - waits,
        written,
        "one WAIT per FCALL, none per FCALL_RO"
    );
}

#[tokio::test]
async fn no_replica_in_time_is_not_replicated_and_the_retry_replays() {
    let (cluster, inv, sku) = replicated_sale("stopped").await;

    // Every replica stopped: whichever master the reserve lands on, none confirms it.
    let replicas = &cluster.nodes()[3..];
    replicas
        .iter()
        .try_for_each(RedisServer::pause)
        .expect("SIGSTOP");
    let first = inv.reserve(&reserve(&sku, "waiting"), now()).await;
    replicas
        .iter()
        .try_for_each(RedisServer::resume)
        .expect("SIGCONT");
    let Err(Rejection::NotReplicated(why)) = first else {
        panic!("expected not replicated, got {first:?}")
    };
    assert!(why.contains("within 200 ms"), "{why}");

    let retry = inv
        .reserve(&reserve(&sku, "waiting"), now())
        .await
        .expect("the retry is confirmed");
    assert!(
        retry.replayed,
        "the retry replays the stored decision: {retry:?}"
    );
    let stock = inv.stock(&sku).await.expect("stock");
    assert_eq!(stock.available(), 15, "one unit taken");
}

#[tokio::test]
async fn a_single_redis_without_a_replica_never_confirms() {
    let single = RedisServer::start().expect("redis");
    let inv = inventory(
        router(
            &format!("127.0.0.1:{}", single.port()),
            NativeConnector::default(),
            &MemoryKv::default(),
        )
        .with_durability(REPLICATED),
    );
    inv.ensure_library()
        .await
        .expect("library: FUNCTION LOAD is not a decision");
    let sku = unique_sku("alone");
    let loaded = inv.load_sku(&spec(&sku, 16), now()).await;
    assert!(
        matches!(loaded, Err(Rejection::NotReplicated(_))),
        "{loaded:?}"
    );
    // Reads are not confirmed: they answer whatever the master has (here: the load stopped
    // after its first partition, so the SKU is not whole).
    let read = inv.stock(&sku).await;
    assert!(
        !matches!(read, Err(Rejection::NotReplicated(_))),
        "{read:?}"
    );
}
