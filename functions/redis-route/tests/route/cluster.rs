//! On a private 3-master cluster: partitions spread, every operation reaches its master, the
//! map is shared through the key-value store, MOVED and ASK are followed.

use flashcart_core::KeySchema;
use flashcart_redis_route::slot::key_slot;
use flashcart_testkit::{RedisCluster, RedisServer};

use crate::support::{
    MemoryKv, NativeConnector, addresses, calls, inventory, key_count, now, reserve, router, spec,
    unique_sku,
};

#[tokio::test]
async fn partitions_spread_over_the_masters_and_each_call_reaches_its_own() {
    let cluster = RedisCluster::start(3).expect("cluster");
    let kv = MemoryKv::default();
    let seeds = addresses(&cluster).join(",");
    let inv = inventory(router(&seeds, NativeConnector::default(), &kv));
    assert!(inv.ensure_library().await.expect("library"), "loaded");
    assert!(
        !inv.ensure_library().await.expect("library"),
        "every master has it now"
    );
    for node in cluster.nodes() {
        let libs: redis::Value = redis::cmd("FUNCTION")
            .arg(&["LIST", "LIBRARYNAME", "flashcart"][..])
            .query(&mut node.connection().expect("conn"))
            .expect("list");
        assert!(
            matches!(libs, redis::Value::Array(ref l) if l.len() == 1),
            "{libs:?}"
        );
    }

    let sku = unique_sku("spread");
    inv.load_sku(&spec(&sku, 64), now()).await.expect("load");
    for node in cluster.nodes() {
        assert!(
            key_count(node) > 0,
            "every master holds some of the SKU's partitions"
        );
    }
    for i in 0..24 {
        inv.reserve(&reserve(&sku, &format!("buyer-{i}")), now())
            .await
            .expect("reserve");
    }
    let levels = inv.stock(&sku).await.expect("stock");
    assert_eq!((levels.available(), levels.reserved()), (40, 24));
    assert!(levels.invariant_holds(), "{levels:#?}");

    // A second instance on the node reads the map from the key-value store, not the cluster.
    let asked = calls(cluster.nodes(), "cluster|nodes");
    let second = inventory(router(&seeds, NativeConnector::default(), &kv));
    second.stock(&sku).await.expect("stock");
    assert_eq!(calls(cluster.nodes(), "cluster|nodes"), asked);
    assert!(second.executor().topology().is_some());
}

#[tokio::test]
async fn a_partition_moved_to_another_master_is_followed() {
    let cluster = RedisCluster::start(3).expect("cluster");
    let seeds = addresses(&cluster);
    // One seed: commands go straight to it until a MOVED says it is a cluster.
    let inv = inventory(router(
        &seeds[0],
        NativeConnector::default(),
        &MemoryKv::default(),
    ));
    assert!(inv.ensure_library().await.expect("library"));
    let sku = unique_sku("moved");
    inv.load_sku(&spec(&sku, 32), now()).await.expect("load");
    let before = inv
        .executor()
        .topology()
        .expect("a cluster, learned from MOVED");

    let schema = KeySchema::default();
    let partition = schema.sku_partitions(&sku, 16)[3];
    let slot = key_slot(schema.sku(partition, &sku).as_bytes());
    let to = (cluster.owner_of(slot).expect("owner") + 1) % 3;
    cluster.move_slot(slot, to).expect("move the slot");
    assert_ne!(before.master_of(slot), Some(seeds[to].as_str()));

    let levels = inv.stock(&sku).await.expect("stock after the move");
    assert_eq!(levels.available(), 32);
    for i in 0..16 {
        inv.reserve(&reserve(&sku, &format!("buyer-{i}")), now())
            .await
            .expect("reserve after the move");
    }
    assert_eq!(
        inv.executor().topology().expect("map").master_of(slot),
        Some(seeds[to].as_str()),
        "the map follows the MOVED"
    );
    let levels = inv.stock(&sku).await.expect("stock");
    assert_eq!((levels.available(), levels.reserved()), (16, 16));
    assert!(levels.invariant_holds());
}

#[tokio::test]
async fn an_ask_during_a_migration_is_followed() {
    let cluster = RedisCluster::start(3).expect("cluster");
    let seeds = addresses(&cluster).join(",");
    let inv = inventory(router(
        &seeds,
        NativeConnector::default(),
        &MemoryKv::default(),
    ));
    inv.ensure_library().await.expect("library");
    let sku = unique_sku("ask");
    inv.load_sku(&spec(&sku, 32), now()).await.expect("load");
    let schema = KeySchema::default();
    let partition = schema.sku_partitions(&sku, 16)[5];
    let slot = key_slot(schema.sku(partition, &sku).as_bytes());
    let to = (cluster.owner_of(slot).expect("owner") + 2) % 3;
    let asks_before = calls(cluster.nodes(), "asking");

    // The keys are on the importing node, the slot still on the migrating one: ASK.
    cluster.start_slot_move(slot, to).expect("start the move");
    let levels = inv.stock(&sku).await.expect("stock during the migration");
    assert_eq!(levels.available(), 32);
    assert!(
        calls(cluster.nodes(), "asking") > asks_before,
        "ASKING was sent"
    );

    cluster.finish_slot_move(slot, to).expect("finish the move");
    for i in 0..8 {
        inv.reserve(&reserve(&sku, &format!("buyer-{i}")), now())
            .await
            .expect("reserve after the migration");
    }
    assert!(inv.stock(&sku).await.expect("stock").invariant_holds());
}

#[tokio::test]
async fn a_single_redis_costs_no_call_more_than_before() {
    let redis = RedisServer::start().expect("redis");
    let servers = std::slice::from_ref(&redis);
    let seed = format!("127.0.0.1:{}", redis.port());
    let connector = NativeConnector::default();
    let inv = inventory(router(&seed, connector, &MemoryKv::default()));
    // Loading the library asks once whether this is a cluster (the admin path).
    assert!(inv.ensure_library().await.expect("library"));
    let sku = unique_sku("single");
    inv.load_sku(&spec(&sku, 160), now()).await.expect("load");
    let (fcalls, asked) = (calls(servers, "fcall"), calls(servers, "cluster|nodes"));
    let opens = inv.executor().connector().opens.get();
    for i in 0..10 {
        inv.reserve(&reserve(&sku, &format!("buyer-{i}")), now())
            .await
            .expect("reserve");
    }
    assert_eq!(
        calls(servers, "cluster|nodes"),
        asked,
        "no discovery on the hot path"
    );
    assert_eq!(
        calls(servers, "fcall") - fcalls,
        10,
        "one FCALL per reserve, as before"
    );
    assert!(inv.executor().topology().is_none());
    assert_eq!(
        inv.executor().connector().opens.get(),
        opens,
        "the reserves reuse the instance's connection"
    );

    // A fresh instance that only reserves never asks what the server is.
    let fresh = inventory(router(
        &seed,
        NativeConnector::default(),
        &MemoryKv::default(),
    ));
    let asked = calls(servers, "cluster|nodes");
    fresh
        .reserve(&reserve(&sku, "late-buyer"), now())
        .await
        .expect("reserve");
    assert_eq!(calls(servers, "cluster|nodes"), asked);
}
