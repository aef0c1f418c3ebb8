//! Settlement over a real 3-master Redis Cluster: every command it sends names keys of one
//! partition (one slot), including the dead-letter `MULTI`, so nothing is CROSSSLOT.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use flashcart_core::{KeySchema, Partition, Settings};
use flashcart_inventory::{RedisConn, Target, Timeouts};
use flashcart_settlement::reconcile::reconcile;
use flashcart_settlement::{Consumer, Ledger, Metrics, dlq};
use flashcart_testkit::RedisCluster;

use crate::support::{assert_ledger_matches, drain, story, unique_sku};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settles_from_a_three_master_cluster() -> Result<()> {
    let cluster = RedisCluster::start(3)?;
    // Plain `host:port` nodes, as `--redis-cluster 127.0.0.1:7001,…` gives them.
    let target = Target::Cluster(
        cluster
            .nodes()
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect(),
    );
    let schema = KeySchema::default();
    // Patient clients: a busy 2-core machine can keep a node from answering for seconds.
    let patient = Timeouts {
        response: Duration::from_secs(60),
        connection: Duration::from_secs(20),
    };
    let inv = flashcart_inventory::open_with(&target, schema, Settings::default(), patient).await?;
    let sku = unique_sku("cluster");
    let s = story(&inv, &sku, 300, 4).await?;
    let RedisConn::Cluster(mut conn) = RedisConn::connect_with(&target, patient).await? else {
        bail!("a cluster connection")
    };
    let mut ids = BTreeSet::new();
    for p in schema.partitions() {
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(schema.events(p))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await?;
        ids.extend(
            entries
                .into_iter()
                .map(|(id, _)| (i64::from(p.index()), id)),
        );
    }
    // A poison entry in partition 5.
    let _: String = redis::cmd("XADD")
        .arg(schema.events(Partition::new(5)))
        .arg("*")
        .arg(&[("type", "order.teleported"), ("at", "1"), ("sku", "x")])
        .query_async(&mut conn)
        .await?;

    let dir = tempfile::tempdir()?;
    let ledger = Ledger::open(&dir.path().join("ledger.sqlite").display().to_string()).await?;
    let config = flashcart_settlement::ConsumerConfig {
        consumer: "cluster-1".into(),
        batch_size: 200,
        retry_base: Duration::from_millis(10),
        max_failures: 2,
        ..Default::default()
    };
    let mut consumer = Consumer::new(
        conn.clone(),
        ledger.clone(),
        schema,
        config,
        Arc::new(Metrics::default()),
    )
    .await?;
    drain(&mut consumer).await?;
    assert_ledger_matches(&ledger, &ids, &s).await?;

    let deadline = Instant::now() + Duration::from_secs(10);
    while dlq::list(&mut conn, &schema, 10).await?.is_empty() {
        assert!(Instant::now() < deadline, "dead-lettered in time");
        consumer.recover().await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Everything acknowledged and committed goes. The dead letter is the newest entry of its
    // partition, above the ledger's highest applied id there, so it stays until a later
    // event of that partition is committed (the ledger witness is conservative by design).
    assert_eq!(consumer.trim().await?, ids.len() as u64);
    let left: i64 = redis::cmd("XLEN")
        .arg(schema.events(Partition::new(5)))
        .query_async(&mut conn)
        .await?;
    assert_eq!(left, 1);
    let report = reconcile(&inv, &ledger, "settlement", false).await?;
    assert!(!report.has_drift(), "{}", report.render());
    assert_eq!((report.in_flight, report.dead_letters), (0, 1));
    Ok(())
}

/// Fails every `fc_load` after the first `loads` with a connection error, as a master that
/// went away midway would.
struct CutShort {
    conn: RedisConn,
    loads: std::sync::atomic::AtomicUsize,
}

impl flashcart_core::exec::RedisExecutor for CutShort {
    async fn execute(
        &self,
        command: &str,
        args: Vec<String>,
    ) -> Result<Vec<flashcart_core::exec::Value>, flashcart_core::exec::ExecError> {
        use std::sync::atomic::Ordering;
        if args.first().map(String::as_str) == Some("fc_load")
            && self
                .loads
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err()
        {
            return Err(flashcart_core::exec::ExecError {
                kind: flashcart_core::exec::FailureKind::Connection,
                message: "the master went away".into(),
            });
        }
        self.conn.execute(command, args).await
    }
}

/// A SKU load that stops after 5 of 16 partitions (on a cluster no one call can write them
/// all) answers "send the same load again"; sending it again loads the rest, and once
/// settled the ledger and Redis agree: reconciliation is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_cut_short_converges_when_sent_again() -> Result<()> {
    use flashcart_core::Rejection;
    use flashcart_core::inventory::{LoadOutcome, Now};

    let cluster = RedisCluster::start(3)?;
    let target = Target::Cluster(cluster.urls());
    let schema = KeySchema::default();
    let patient = Timeouts {
        response: Duration::from_secs(60),
        connection: Duration::from_secs(20),
    };
    let inv = flashcart_inventory::open_with(&target, schema, Settings::default(), patient).await?;
    let cut = flashcart_core::Inventory::new(
        CutShort {
            conn: inv.executor().clone(),
            loads: 5.into(),
        },
        schema,
        Settings::default(),
    );
    let sku = unique_sku("cut");
    let mut terms = crate::support::spec(&sku, 160, 600_000, 900_000);
    terms.segments = Some(16);
    match cut.load_sku(&terms, Now::At(crate::support::T0)).await {
        Err(Rejection::Unavailable(why)) => {
            assert!(why.contains("send the same load again"), "{why}");
        }
        other => bail!("expected a load cut short, got {other:?}"),
    }
    assert!(
        inv.stock(&sku)
            .await
            .map_or(true, |levels| levels.segments.len() < 16),
        "only part of the SKU is loaded"
    );

    let RedisConn::Cluster(conn) = RedisConn::connect_with(&target, patient).await? else {
        bail!("a cluster connection")
    };
    let dir = tempfile::tempdir()?;
    let ledger = Ledger::open(&dir.path().join("ledger.sqlite").display().to_string()).await?;
    let mut consumer = Consumer::new(
        conn,
        ledger.clone(),
        schema,
        flashcart_settlement::ConsumerConfig::default(),
        Arc::new(Metrics::default()),
    )
    .await?;
    drain(&mut consumer).await?;

    assert_eq!(
        inv.load_sku(&terms, Now::At(crate::support::T0)).await?,
        LoadOutcome::Loaded,
        "the rest of the partitions"
    );
    assert_eq!(
        inv.load_sku(&terms, Now::At(crate::support::T0)).await?,
        LoadOutcome::Unchanged
    );
    drain(&mut consumer).await?;
    let levels = inv.stock(&sku).await?;
    assert_eq!((levels.segments.len(), levels.available()), (16, 160));
    assert!(levels.invariant_holds());
    let report = reconcile(&inv, &ledger, "settlement", false).await?;
    assert!(
        !report.has_drift() && report.missing_in_redis.is_empty(),
        "{}",
        report.render()
    );
    Ok(())
}

/// `--redis-cluster` lists that cannot work — only nodes nobody listens on, or a plain Redis
/// — stop settlement's start with an error naming the list, within seconds, never a hang; a
/// list with one dead node among cluster nodes starts (any node answering is enough).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_cluster_list_is_a_start_up_error_naming_it() -> Result<()> {
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.to_string()
    };
    let plain = flashcart_testkit::RedisServer::start()?;
    let plain = format!("127.0.0.1:{}", plain.port());
    let cluster = RedisCluster::start(3)?;
    let live = format!("127.0.0.1:{}", cluster.nodes()[1].port());
    let config = |nodes: &[&str], dir: &std::path::Path| {
        let ledger = dir.join("ledger.sqlite").display().to_string();
        let mut config = flashcart_settlement::Config::new("redis://cluster.invalid:6379", &ledger);
        config.redis_cluster = nodes.iter().map(|n| (*n).to_owned()).collect();
        config.data_dir = dir.to_owned();
        config
    };
    for bad in [vec![dead.as_str()], vec![plain.as_str()]] {
        let dir = tempfile::tempdir()?;
        let started = tokio::time::timeout(
            Duration::from_secs(60),
            flashcart_settlement::run(config(&bad, dir.path()), std::future::pending()),
        )
        .await;
        let Ok(Err(e)) = started else {
            bail!("settlement on {bad:?} did not stop with an error: {started:?}")
        };
        let text = format!("{e:#}");
        assert!(text.contains(bad[0]), "{text}");
    }
    let dir = tempfile::tempdir()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(flashcart_settlement::run(
        config(&[dead.as_str(), live.as_str()], dir.path()),
        async {
            let _ = stopped.await;
        },
    ));
    // Started: it guarded every partition (through the live node's cluster).
    wait_guarded(&cluster, &running).await?;
    let _ = stop.send(());
    running.await??;
    Ok(())
}

/// Waits until every partition's guard exists on the master serving it, failing if
/// settlement (`running`) stops first.
async fn wait_guarded(
    cluster: &RedisCluster,
    running: &tokio::task::JoinHandle<anyhow::Result<()>>,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let schema = KeySchema::default();
    loop {
        let mut guarded = 0;
        for p in schema.partitions() {
            let master = cluster.nodes()[master_of(cluster, &schema.guard(p))?].connection();
            let exists: bool = redis::cmd("EXISTS")
                .arg(schema.guard(p))
                .query(&mut master?)?;
            guarded += usize::from(exists);
        }
        if guarded == usize::from(schema.partition_count()) {
            return Ok(());
        }
        assert!(!running.is_finished(), "settlement stopped: {running:?}");
        assert!(
            Instant::now() < deadline,
            "settlement never guarded the partitions"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The index of the node serving `key`'s slot now.
fn master_of(cluster: &RedisCluster, key: &str) -> Result<usize> {
    let live = cluster
        .masters()?
        .first()
        .copied()
        .ok_or_else(|| anyhow::anyhow!("no master"))?;
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(&mut cluster.nodes()[live].connection()?)?;
    cluster.owner_of(slot)
}

/// A master dies just as settlement starts, so its first commands meet the election: it keeps
/// retrying its start-up (consumer groups, guards) instead of ending, runs once the replica is
/// promoted, and lifts the promoted partitions' fences by itself — no one restarts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlement_started_into_a_failover_runs_once_a_replica_is_promoted() -> Result<()> {
    let mut cluster = RedisCluster::start_with_replicas(3, 1, Duration::from_secs(5))?;
    let nodes: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port()))
        .collect();
    let dir = tempfile::tempdir()?;
    let config = || {
        let ledger = dir.path().join("ledger.sqlite").display().to_string();
        let mut config = flashcart_settlement::Config::new("redis://cluster.invalid:6379", &ledger);
        config.redis_cluster = nodes.clone();
        config.data_dir = dir.path().to_owned();
        config
    };
    let start = |config: flashcart_settlement::Config| {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(flashcart_settlement::run(config, async {
            let _ = stopped.await;
        }));
        (stop, running)
    };
    // A first run guards every partition, so the replica's partitions start fenced when it
    // is promoted.
    let (stop, running) = start(config());
    wait_guarded(&cluster, &running).await?;
    let _ = stop.send(());
    running.await??;
    // The test kit's order: node 0 is a master, node 3 its replica.
    let schema = KeySchema::default();
    let mut doomed = Vec::new();
    for p in schema.partitions() {
        if master_of(&cluster, &schema.guard(p))? == 0 {
            doomed.push(p);
        }
    }
    assert!(!doomed.is_empty(), "master 0 serves some partitions");

    cluster.kill(0)?;
    let (stop, running) = start(config());
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.wait_promoted(3, Duration::from_secs(90))?;
        anyhow::Ok(cluster)
    })
    .await??;
    let live: Vec<String> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 0)
        .map(|(_, n)| n.clone())
        .collect();
    let patient = Timeouts {
        response: Duration::from_secs(60),
        connection: Duration::from_secs(20),
    };
    let inv = flashcart_inventory::open_with(
        &Target::Cluster(live),
        schema,
        Settings::default(),
        patient,
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut fenced = Vec::new();
        for p in &doomed {
            // A read may still meet the election's last moments: ask again.
            if inv.is_fenced(*p).await.unwrap_or(true) {
                fenced.push(*p);
            }
        }
        if fenced.is_empty() {
            break;
        }
        assert!(!running.is_finished(), "settlement stopped: {running:?}");
        assert!(
            Instant::now() < deadline,
            "partitions {fenced:?} still fenced 90 s after the promotion"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    running.await??;
    drop(cluster);
    Ok(())
}
