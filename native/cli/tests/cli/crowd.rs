//! A crowd at the door: 1 100 clients that send half a request header and wait, then 1 100
//! buyers at once, against `flashcart up` running with an open-files limit of 1 024 (the
//! common default). The node caps its connections below that limit, so it never runs out of
//! file descriptors; the slow clients are cut off by the header-read timeout; every buyer is
//! answered (201 or 409 sold out), exactly the stock is sold, the invariant holds and the
//! ledger matches Redis once settlement has caught up.

use std::net::SocketAddr;
use std::time::Duration;

use flashcart_testkit::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::node::{self, NodeOptions};

const STOCK: u64 = 500;
const SLOW_CLIENTS: u64 = 1_100;
const BUYERS: u64 = 1_100;
/// Generous bound for anything that must happen by itself on a busy machine.
const PATIENCE: Duration = Duration::from_secs(180);

/// A client that opens a connection, sends half a header and waits for the server to close
/// it; what the server sent before closing.
async fn slow_client(address: SocketAddr, connected: &Semaphore) -> String {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream
        .write_all(b"POST /v1/stock/crowd/reservations HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .expect("write half a header");
    connected.add_permits(1);
    let mut seen = Vec::new();
    // A reset instead of a clean close is also the server letting go.
    let _ = stream.read_to_end(&mut seen).await;
    String::from_utf8_lossy(&seen).into_owned()
}

/// A buyer's deduct; the answer's status.
async fn buyer(address: SocketAddr, id: u64) -> Option<u16> {
    let mut stream = TcpStream::connect(address).await.ok()?;
    stream
        .write_all(node::deduct_request("crowd", id).as_bytes())
        .await
        .ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.ok()?;
    node::status_of(&String::from_utf8_lossy(&raw))
}

#[test]
fn a_crowd_of_slow_clients_and_buyers_cannot_exhaust_the_node() {
    node::assert_components_built();
    // This process holds 2 200 connections; the node under test gets the common 1 024.
    rlimit::increase_nofile_limit(8_192).expect("raise the test's open-files limit");
    let redis = RedisServer::start().expect("redis-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let log = dir.path().join("node.log");
    let (mut edge, address) = node::up(
        &redis,
        &data,
        &NodeOptions {
            args: &["--header-read-timeout", "2s"],
            open_files: Some(1_024),
            log: Some(&log),
            env: &[],
        },
    );
    node::load_sku(address, "crowd", STOCK);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (statuses, slow_answers) = runtime.block_on(async {
        let connected = std::sync::Arc::new(Semaphore::new(0));
        let slow: Vec<_> = (0..SLOW_CLIENTS)
            .map(|_| {
                let connected = std::sync::Arc::clone(&connected);
                tokio::spawn(async move { slow_client(address, &connected).await })
            })
            .collect();
        // The buyers arrive once the slow clients hold the node's connection slots.
        tokio::time::timeout(PATIENCE, connected.acquire_many(800))
            .await
            .expect("the slow clients never connected")
            .expect("semaphore")
            .forget();
        let buyers: Vec<_> = (0..BUYERS)
            .map(|id| tokio::spawn(buyer(address, id)))
            .collect();
        let mut statuses = Vec::new();
        for b in buyers {
            let answer = tokio::time::timeout(PATIENCE, b)
                .await
                .expect("a buyer waited forever")
                .expect("buyer task");
            statuses.push(answer);
        }
        let mut slow_answers = Vec::new();
        for s in slow {
            let answer = tokio::time::timeout(PATIENCE, s)
                .await
                .expect("a slow client was never cut off")
                .expect("slow client task");
            slow_answers.push(answer);
        }
        (statuses, slow_answers)
    });

    let reserved = statuses.iter().filter(|s| **s == Some(201)).count() as u64;
    let sold_out = statuses.iter().filter(|s| **s == Some(409)).count() as u64;
    let other: Vec<_> = statuses
        .iter()
        .filter(|s| !matches!(s, Some(201 | 409)))
        .collect();
    assert!(other.is_empty(), "buyers not answered 201/409: {other:?}");
    assert_eq!(reserved, STOCK, "every unit sold, none twice");
    assert_eq!(sold_out, BUYERS - STOCK);
    for answer in &slow_answers {
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "a half-sent header was answered: {answer}"
        );
    }
    assert_eq!(node::units_taken(address, "crowd", STOCK), STOCK);
    node::wait_until_reconciled(&redis, &data);

    edge.kill().expect("stop");
    edge.wait().expect("reap");
    let log = std::fs::read_to_string(&log).expect("node log");
    assert!(
        log.contains("at most 896 client connections"),
        "the node did not cap its connections below its open-files limit:\n{log}"
    );
    assert!(
        !log.contains("Too many open files"),
        "the node ran out of file descriptors:\n{log}"
    );
}
