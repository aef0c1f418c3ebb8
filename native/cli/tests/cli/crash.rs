//! `flashcart up` killed with SIGKILL mid-sale (the edge host and the settlement inside it),
//! then started again on the same Redis and data dir: nothing oversold, the invariant holds,
//! every 201 a buyer saw is a unit taken, and once settlement has caught up the ledger
//! matches Redis (`flashcart reconcile` exits 0).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flashcart_testkit::RedisServer;

use crate::node::{self, Answer, NodeOptions};

const STOCK: u64 = 400;

fn deduct(address: std::net::SocketAddr, id: u64) -> Answer {
    node::send(
        address,
        "POST",
        "/v1/stock/crash/reservations",
        &format!("k{id}"),
        &format!("{{\"buyer_id\":\"b{id}\",\"quantity\":1}}"),
    )
}

#[test]
fn a_killed_edge_node_loses_and_doubles_nothing() {
    node::assert_components_built();
    let redis = RedisServer::start().expect("redis-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (mut node, address) = node::up(&redis, &data, &NodeOptions::default());
    node::load_sku(address, "crash", STOCK);

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
    let (mut node, address) = node::up(&redis, &data, &NodeOptions::default());
    let after = next.load(Ordering::Relaxed) + 1;
    for id in after..after + 20 {
        assert_eq!(
            deduct(address, id),
            Answer::Status(201),
            "after the restart"
        );
    }
    let seen = reserved.load(Ordering::Relaxed) + 20;
    node::wait_until_reconciled(&redis, &data);
    let taken = node::units_taken(address, "crash", STOCK);
    let unknown = unknown.load(Ordering::Relaxed);
    assert!(
        (seen..=seen + unknown).contains(&taken),
        "{taken} units taken for {seen} reservations answered and {unknown} unanswered"
    );
    node.kill().expect("stop");
    node.wait().expect("reap");
}
