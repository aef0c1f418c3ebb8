//! A master killed (SIGKILL) mid-sale on a Redis Cluster of 3 masters with a replica each,
//! over HTTP through flashcart's host and the built components, with settlement running
//! beside them as `flashcart up` runs it; and `durability = replicated` answering 503 when no
//! replica confirms a write.
//!
//! What a failover does, step by step: the master dies; for `cluster-node-timeout` (5 s here)
//! plus the replica's election its partitions have no master, and the components answer 503
//! problem+json at once (the node refuses connections); the replica is promoted; its
//! partitions are *fenced* (the promoted process has not been checked against the ledger: its
//! Lua `checked` table is empty, see docs/reliability.md) and answer 503
//! `inventory-recovering` until settlement's next maintenance pass verifies them, restoring
//! from the ledger whatever the replica never received; then sales go on. With `replicated`
//! the promoted master has no replica of its own until the killed node comes back (a
//! supervisor restarts it; here the test does), so its writes answer 503
//! `inventory-not-replicated` until then — that is the profile's promise.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flashcart_api::{ApiRequest, ApiResponse};
use flashcart_contract::node::{
    ADMIN, CLUSTER_NODE_TIMEOUT, admin_state_req, deduct_req, problem_detail, problem_type,
};
use flashcart_contract::{Kind, Node, NodeOptions, Redis};
use flashcart_core::exec::{RedisExecutor, Value};
use flashcart_core::ids::{BuyerId, ReservationId};
use flashcart_core::{KeySchema, Partition};
use flashcart_testkit::RedisCluster;

/// Enough that nothing sells out during the test: every partition keeps units for the probe.
const STOCK: u64 = 3_200;
const BUYERS: usize = 4;
/// Reservations answered before the master is killed.
const BEFORE_KILL: u64 = 60;
/// Reservations answered after the service recovered, before the buyers stop.
const AFTER_RECOVERY: u64 = 40;
/// What a retrying buyer waits between attempts (shorter than `Retry-After: 1`, so the
/// recovery is seen when it happens).
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// A client's patience for one answer: the host answers every request within its 10 s
/// deadline (a 504 would fail the test), this only keeps a broken host from hanging it.
const ANSWER_WITHIN: Duration = Duration::from_secs(60);
/// The 503 problem types a buyer may see during a failover.
const FAILOVER_PROBLEMS: [&str; 3] = [
    "inventory-unavailable",
    "inventory-recovering",
    "inventory-not-replicated",
];

/// What the buyers were told.
#[derive(Default)]
struct Sale {
    /// Reservation ids answered 201.
    reserved: Mutex<Vec<String>>,
    acknowledged: AtomicU64,
    /// 503 problem types seen, and how often.
    refused: Mutex<BTreeMap<String, u64>>,
    stop: AtomicBool,
}

impl Sale {
    fn acknowledged(&self) -> u64 {
        self.acknowledged.load(Ordering::SeqCst)
    }
}

async fn answered(n: &Node, req: ApiRequest) -> ApiResponse {
    tokio::time::timeout(ANSWER_WITHIN, n.send(req))
        .await
        .expect("every request is answered")
}

/// Sends one buyer's deduct, retrying the same request (same Idempotency-Key) on 503 until
/// it is decided; the reservation id, or `None` when sold out.
async fn reserve(n: &Node, sale: &Sale, sku: &str, buyer: &str, key: &str) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let resp = answered(n, deduct_req(sku, buyer, 1, key)).await;
        match resp.status {
            201 => {
                let id = resp.json_body()["reservation_id"]
                    .as_str()
                    .expect("reservation id")
                    .to_owned();
                sale.reserved.lock().expect("lock").push(id.clone());
                sale.acknowledged.fetch_add(1, Ordering::SeqCst);
                return Some(id);
            }
            409 if problem_type(&resp) == "sold-out" => return None,
            503 => {
                let kind = problem_type(&resp);
                assert!(FAILOVER_PROBLEMS.contains(&kind.as_str()), "{resp:?}");
                assert!(
                    Instant::now() < deadline,
                    "{buyer} still refused after 120 s: {resp:?}"
                );
                *sale.refused.lock().expect("lock").entry(kind).or_default() += 1;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            _ => panic!("a buyer got an answer outside the contract: {resp:?}"),
        }
    }
}

/// A buyer task: new buyers one after another until told to stop or sold out.
async fn buyers(n: Arc<Node>, sale: Arc<Sale>, sku: String, task: usize) {
    let mut i = 0;
    while !sale.stop.load(Ordering::SeqCst) {
        let (buyer, key) = (format!("b{task}-{i}"), format!("k{task}-{i}"));
        i += 1;
        if reserve(&n, &sale, &sku, &buyer, &key).await.is_none() {
            return;
        }
    }
}

/// The partitions a node serves now.
fn partitions_on(cluster: &RedisCluster, node: usize) -> Vec<Partition> {
    let mut conn = cluster.nodes()[node].connection().expect("conn");
    KeySchema::default()
        .partitions()
        .filter(|p| {
            let slot: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(p.tag())
                .query(&mut conn)
                .expect("keyslot");
            cluster.owner_of(slot).expect("owner") == node
        })
        .collect()
}

/// A buyer whose home partition is one of `partitions`.
fn buyer_at_home_in(partitions: &[Partition], prefix: &str) -> String {
    let schema = KeySchema::default();
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|b| partitions.contains(&schema.home_of_buyer(&BuyerId::parse(b).expect("buyer"))))
        .expect("a buyer")
}

/// `PUT /v1/admin/skus/{sku}` with fixed terms, sent until decided: settlement's start
/// reloads the library on every master, which fences guarded partitions until its first
/// pass, and a load is safe to repeat with the same terms.
async fn load_sku(n: &Node, sku: &str, stock: u64) {
    let start = flashcart_contract::node::now_ms() - 1_000;
    let body = serde_json::json!({
        "stock": stock, "segments": 16, "price": 1999, "currency": "EUR",
        "sale_start": start, "sale_end": start + 3_600_000, "per_buyer_limit": 2,
    });
    loop {
        let req = ApiRequest::new("PUT", &format!("/v1/admin/skus/{sku}"))
            .header("authorization", &format!("Bearer {ADMIN}"))
            .json(&body);
        let resp = answered(n, req).await;
        match resp.status {
            200 | 201 => return,
            503 => tokio::time::sleep(RETRY_PAUSE).await,
            _ => panic!("load: {resp:?}"),
        }
    }
}

async fn admin_state(n: &Node, sku: &str) -> serde_json::Value {
    let resp = answered(n, admin_state_req(sku)).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    resp.json_body()
}

/// Settlement as `flashcart up` runs it, over the cluster, with its SQLite ledger in `dir`.
fn settlement(
    seeds: &str,
    dir: &std::path::Path,
) -> (
    tokio::task::JoinHandle<anyhow::Result<()>>,
    tokio::sync::oneshot::Sender<()>,
) {
    let ledger = dir.join("ledger.sqlite").display().to_string();
    let mut config = flashcart_settlement::Config::new("redis://cluster.invalid:6379", &ledger);
    config.redis_cluster = seeds.split(',').map(str::to_owned).collect();
    config.data_dir = dir.to_owned();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(flashcart_settlement::run(config, async {
        let _ = stopped.await;
    }));
    (task, stop)
}

/// Waits until settlement has applied everything and the ledger agrees with Redis.
async fn reconciled(n: &Node, dir: &std::path::Path) {
    let ledger =
        flashcart_settlement::Ledger::open(&dir.join("ledger.sqlite").display().to_string())
            .await
            .expect("ledger");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let report =
            flashcart_settlement::reconcile::reconcile(&n.inventory, &ledger, "settlement", false)
                .await;
        match report {
            Ok(r) if r.in_flight == 0 && r.dead_letters == 0 && !r.has_drift() => {
                ledger.close().await;
                return;
            }
            Ok(r) if Instant::now() > deadline => panic!("never reconciled:\n{}", r.render()),
            Err(e) if Instant::now() > deadline => panic!("never reconciled: {e}"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Reservation ids answered 201 that Redis does not hold any more.
async fn missing(n: &Node, reserved: &[String]) -> Vec<String> {
    let schema = KeySchema::default();
    let mut gone = Vec::new();
    for id in reserved {
        let rid = ReservationId::parse(id).expect("reservation id");
        let state = n
            .inventory
            .executor()
            .execute("HGET", vec![schema.reservation(&rid), "state".into()])
            .await
            .expect("HGET");
        if state.first().is_none_or(|v| *v == Value::Nil) {
            gone.push(id.clone());
        }
    }
    gone
}

/// What one failover did.
#[derive(Debug)]
struct Failover {
    /// From the kill until every node saw the replica promoted.
    promoted_after: Duration,
    /// From the kill until a buyer whose home is on the killed master was served (201).
    recovered_after: Duration,
    /// Acknowledged reservations.
    acknowledged: usize,
    /// Acknowledged reservations Redis no longer holds once settlement recovered.
    lost: usize,
    /// 503s buyers were answered, by problem type.
    refused: BTreeMap<String, u64>,
}

/// Sells with `durability`, kills the master of 5 or 6 partitions once `BEFORE_KILL` units are
/// reserved, and sells on; checks nothing is oversold, the invariant, and reconciliation.
async fn a_master_killed_mid_sale(durability: &str) -> Failover {
    // Settlement runs in this process: its warnings (fenced partitions, failed recovery
    // passes) are what explains a failover that does not recover; shown when a test fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn,flashcart_settlement=info")
        .with_test_writer()
        .try_init();
    // One failover at a time: each measures how long its cluster takes to recover, and two
    // clusters electing at once on a 2-core machine would measure each other.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = RedisCluster::start_with_replicas(3, 1, CLUSTER_NODE_TIMEOUT)
        .expect("a redis cluster of 3 masters with a replica each");
    let redis = Redis::Cluster(cluster);
    let seeds = redis.seeds();
    let options = NodeOptions {
        variables: vec![("durability".to_owned(), durability.to_owned())],
        ..NodeOptions::default()
    };
    let n = Arc::new(Node::start_beside(Kind::HttpCluster, options, &redis).await);
    let Redis::Cluster(mut cluster) = redis else {
        unreachable!("a cluster")
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (settling, stop_settling) = settlement(&seeds, dir.path());
    let sku = format!("failover-{durability}");
    load_sku(&n, &sku, STOCK).await;
    assert!(
        !settling.is_finished(),
        "settlement stopped: {:?}",
        settling.await
    );

    let sale = Arc::new(Sale::default());
    let tasks: Vec<_> = (0..BUYERS)
        .map(|t| tokio::spawn(buyers(Arc::clone(&n), Arc::clone(&sale), sku.clone(), t)))
        .collect();
    while sale.acknowledged() < BEFORE_KILL {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Node 0 is a master; node 3 its replica (the test kit's order).
    let doomed = partitions_on(&cluster, 0);
    let probe = buyer_at_home_in(&doomed, "probe");
    let killed_at = Instant::now();
    let replicated = durability == "replicated";
    let supervisor = tokio::task::spawn_blocking(move || {
        cluster.kill(0).expect("SIGKILL the master");
        let promoted = cluster
            .wait_promoted(3, Duration::from_secs(90))
            .expect("the replica is promoted");
        if replicated {
            // The promoted master has no replica until the killed node is back (its
            // supervisor restarts it; it rejoins as the new master's replica).
            cluster.restart(0).expect("the killed node rejoins");
        }
        (cluster, promoted)
    });
    // A buyer whose home partition was on the killed master, retrying until served.
    let refused_before = sale.refused.lock().expect("lock").values().sum::<u64>();
    let served = reserve(&n, &sale, &sku, &probe, "probe-key").await;
    let recovered_after = killed_at.elapsed();
    assert!(
        served.is_some(),
        "the probe buyer is served after the failover"
    );
    let (cluster, promoted_after) = supervisor.await.expect("supervisor");
    assert!(
        sale.refused.lock().expect("lock").values().sum::<u64>() > refused_before,
        "requests during the election were answered 503"
    );

    let recovered_at = sale.acknowledged();
    while sale.acknowledged() < recovered_at + AFTER_RECOVERY
        && !tasks.iter().all(tokio::task::JoinHandle::is_finished)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sale.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.expect("buyer task");
    }

    reconciled(&n, dir.path()).await;
    let reserved = sale.reserved.lock().expect("lock").clone();
    let lost = missing(&n, &reserved).await;
    let state = admin_state(&n, &sku).await;
    assert_eq!(state["invariant_holds"], true, "{state}");
    let available = state["totals"]["available"].as_u64().expect("available");
    let taken = STOCK - available;
    // Every request was retried until decided, so every unit taken is an answered 201,
    // except the units of reservations the failover lost (their stock came back with them).
    assert_eq!(
        taken,
        (reserved.len() - lost.len()) as u64,
        "units taken = reservations acknowledged and kept: {state}"
    );
    assert!(taken <= STOCK, "nothing oversold");
    let _ = stop_settling.send(());
    settling
        .await
        .expect("settlement task")
        .expect("settlement");
    drop(cluster);
    let failover = Failover {
        promoted_after,
        recovered_after,
        acknowledged: reserved.len(),
        lost: lost.len(),
        refused: sale.refused.lock().expect("lock").clone(),
    };
    eprintln!(
        "durability = {durability}: replica promoted {:.1} s after the kill, a buyer at home \
         there served {:.1} s after it; {} reservations acknowledged, {} lost; 503s: {:?}",
        failover.promoted_after.as_secs_f64(),
        failover.recovered_after.as_secs_f64(),
        failover.acknowledged,
        failover.lost,
        failover.refused,
    );
    failover
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_killed_mid_sale_oversells_nothing_with_local_durability() {
    let failover = a_master_killed_mid_sale("local").await;
    assert!(failover.acknowledged as u64 >= BEFORE_KILL + AFTER_RECOVERY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_killed_mid_sale_loses_no_acknowledged_reservation_with_replicated_durability() {
    let failover = a_master_killed_mid_sale("replicated").await;
    assert_eq!(failover.lost, 0, "{failover:?}");
    assert!(failover.acknowledged as u64 >= BEFORE_KILL + AFTER_RECOVERY);
}

/// `durability = replicated` with the replica of the buyer's home master stopped (SIGSTOP):
/// the reserve is made on the master but not confirmed, so the answer is 503
/// `inventory-not-replicated` with `Retry-After`; once the replica runs again the buyer's
/// retry with the same key is answered the stored reservation — the same id, one unit taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unconfirmed_write_is_a_503_and_the_retry_gets_the_stored_decision() {
    let redis = Redis::start(Kind::HttpCluster);
    let options = NodeOptions {
        variables: vec![
            ("durability".to_owned(), "replicated".to_owned()),
            ("durability_wait_ms".to_owned(), "200".to_owned()),
        ],
        ..NodeOptions::default()
    };
    let n = &Node::start_on(Kind::HttpCluster, options, redis).await;
    load_sku(n, "confirmed", 16).await;
    let Redis::Cluster(cluster) = n.redis() else {
        unreachable!("a cluster")
    };
    let home = KeySchema::default().home_of_buyer(&BuyerId::parse("patient").expect("buyer"));
    let master = (0..3)
        .find(|m| partitions_on(cluster, *m).contains(&home))
        .expect("the home partition's master");
    let replica = &cluster.nodes()[master + 3];

    replica.pause().expect("SIGSTOP the replica");
    let unconfirmed = n.send(deduct_req("confirmed", "patient", 1, "p-1")).await;
    replica.resume().expect("SIGCONT the replica");
    assert_eq!(
        (unconfirmed.status, unconfirmed.header_value("retry-after")),
        (503, Some("1")),
        "{unconfirmed:?}"
    );
    assert_eq!(problem_type(&unconfirmed), "inventory-not-replicated");
    let detail = problem_detail(&unconfirmed);
    assert!(
        detail.contains("durability = replicated") && detail.contains("Idempotency-Key"),
        "{detail}"
    );

    let retry = n.send(deduct_req("confirmed", "patient", 1, "p-1")).await;
    assert_eq!(
        (retry.status, retry.header_value("idempotent-replayed")),
        (201, Some("true")),
        "the retry replays the decision the first attempt stored: {retry:?}"
    );
    let state = admin_state(n, "confirmed").await;
    assert_eq!(state["totals"]["available"], 15, "one unit taken: {state}");
    assert_eq!(state["invariant_holds"], true);
}

/// A `durability` that is not a profile: every writing component answers 503 problem+json
/// naming the variable (a typo must not quietly mean `local`), and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_durability_is_named() {
    for (name, value) in [("durability", "replica"), ("durability_wait_ms", "0")] {
        let options = NodeOptions {
            variables: vec![
                ("durability".to_owned(), "replicated".to_owned()),
                (name.to_owned(), value.to_owned()),
            ],
            ..NodeOptions::default()
        };
        let n = &Node::start(Kind::Http, options).await;
        let answer = n.send(deduct_req("any", "b", 1, "k")).await;
        assert_eq!(answer.status, 503, "{answer:?}");
        assert_eq!(problem_type(&answer), "inventory-unavailable");
        let detail = problem_detail(&answer);
        assert!(detail.contains(&format!("variable {name}")), "{detail}");
        let keys: u64 = redis::cmd("DBSIZE")
            .query(&mut n.redis().servers()[0].connection().expect("conn"))
            .expect("dbsize");
        assert_eq!(keys, 0, "nothing written");
    }
}
