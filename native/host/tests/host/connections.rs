//! Client connections: slow headers and bodies are cut off, a connection cap keeps
//! file descriptors for buyers, and none of it stops the server; what belongs to the
//! connection (a proxy credential) is not passed on to a component.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::components::HELLO;
use crate::support::TestServer;

/// Generous bound for anything the server must do by itself on a busy machine.
const PATIENCE: Duration = Duration::from_secs(60);

/// Reads until the server closes the connection; what it sent before closing.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut seen))
        .await
        .expect("the server never closed the connection")
        .ok();
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn a_half_sent_header_is_cut_off() {
    let server = TestServer::start(HELLO, |c| {
        c.connections.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    let mut slow = TcpStream::connect(server.address).await.expect("connect");
    slow.write_all(b"GET /static/a HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .expect("write");
    let answer = read_until_closed(&mut slow).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert_eq!(server.get("/static/after").await.status, 200);
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_body_that_never_arrives_gets_408() {
    let server = TestServer::start(HELLO, |c| {
        c.connections.body_read_timeout = Duration::from_millis(300);
    })
    .await;
    let mut slow = TcpStream::connect(server.address).await.expect("connect");
    slow.write_all(b"POST /static/a HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"buy")
        .await
        .expect("write");
    let mut seen = vec![0u8; 4096];
    let n = tokio::time::timeout(PATIENCE, slow.read(&mut seen))
        .await
        .expect("no answer")
        .expect("read");
    let answer = String::from_utf8_lossy(&seen[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("urn:flashcart:problem:body-timeout"),
        "{answer}"
    );
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_at_the_connection_cap_do_not_lock_buyers_out() {
    // Every connection slot is held by a client that sends half a header and waits.
    // A buyer arriving then waits in the backlog and is served once the header timeout
    // frees a slot; the server never stops accepting.
    let server = TestServer::start(HELLO, |c| {
        c.connections.max_connections = 8;
        c.connections.header_read_timeout = Duration::from_millis(500);
    })
    .await;
    let mut slow = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(server.address).await.expect("connect");
        stream
            .write_all(b"GET /static/a HTTP/1.1\r\nhost: x\r\n")
            .await
            .expect("write");
        slow.push(stream);
    }
    let buyers: Vec<_> = (0..10)
        .map(|i| {
            let address = server.address;
            tokio::spawn(async move {
                tokio::time::timeout(
                    PATIENCE,
                    flashcart_host::bench::http_request(
                        address,
                        "GET",
                        &format!("/static/b{i}"),
                        b"",
                    ),
                )
                .await
            })
        })
        .collect();
    for buyer in buyers {
        let (status, _, body) = buyer
            .await
            .expect("task")
            .expect("buyer waited forever")
            .expect("buyer answered");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    for mut stream in slow {
        read_until_closed(&mut stream).await;
    }
    server.stop().await.expect("clean stop");
}

/// Hop-by-hop and proxy credentials are the connection's, not the component's: the host
/// strips wasmtime-wasi-http's forbidden headers before a request reaches a guest.
#[tokio::test]
async fn a_proxy_credential_never_reaches_the_component() {
    let server = TestServer::start(HELLO, |_| {}).await;
    let mut client = TcpStream::connect(server.address).await.expect("connect");
    client
        .write_all(
            b"GET /static/a HTTP/1.1\r\nhost: x\r\nproxy-authorization: Basic c2VjcmV0\r\n\
              connection: close\r\n\r\n",
        )
        .await
        .expect("write");
    let answer = read_until_closed(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\nproxy-authorization=\n"), "{answer}");
    assert!(!answer.contains("c2VjcmV0"), "{answer}");
    server.stop().await.expect("clean stop");
}
