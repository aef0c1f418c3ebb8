//! HTTP targets: one hyper http1 connection per virtual user, kept alive, spread over the
//! edge nodes round-robin by user.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::driver::{Failure, Outcome, Target};

/// What each request is.
#[derive(Debug, Clone)]
pub enum Request {
    /// A deduct of one unit of `sku` by a new buyer with a new Idempotency-Key: request `i`
    /// of a run is buyer and key `<prefix>-<i>`.
    Deduct {
        /// The SKU.
        sku: String,
        /// Unique per run, so no two runs share a buyer or key.
        prefix: String,
    },
    /// `GET path` (the hello baseline).
    Get {
        /// The path.
        path: String,
    },
}

/// An HTTP target: the edge nodes (or the hello app) and what to send.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    nodes: Vec<SocketAddr>,
    request: Request,
}

impl HttpTarget {
    /// Requests `request` spread over `nodes` (user `k` talks to node `k mod n`).
    ///
    /// # Panics
    /// When `nodes` is empty.
    pub fn new(nodes: Vec<SocketAddr>, request: Request) -> Self {
        assert!(!nodes.is_empty(), "an HTTP target needs a node");
        Self { nodes, request }
    }
}

/// One user's connection.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

/// Opens a keep-alive http1 connection to `address`.
///
/// # Errors
/// When the TCP connection or the HTTP handshake fails.
pub async fn connect(address: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(address))
        .await
        .with_context(|| format!("connecting to http://{address}: timed out"))?
        .with_context(|| format!("connecting to http://{address}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP handshake with {address}"))?;
    tokio::spawn(async move {
        // Ends when the sender is dropped or the server closes; either way the user
        // notices on its next request and reconnects.
        let _ = conn.await;
    });
    Ok(sender)
}

impl Target for HttpTarget {
    type User = Connection;

    async fn connect(&self, index: usize) -> anyhow::Result<Connection> {
        let address = self.nodes[index % self.nodes.len()];
        Ok(Connection {
            sender: connect(address).await?,
            host: address.to_string(),
        })
    }

    async fn call(&self, user: &mut Connection, i: u64) -> Outcome {
        let request = match &self.request {
            Request::Deduct { sku, prefix } => {
                let id = format!("{prefix}-{i}");
                hyper::Request::post(format!("/v1/stock/{sku}/reservations"))
                    .header(http::header::HOST, &user.host)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .header("idempotency-key", &id)
                    .body(Full::new(Bytes::from(format!(
                        "{{\"buyer_id\":\"{id}\",\"quantity\":1}}"
                    ))))
            }
            Request::Get { path } => hyper::Request::get(path.as_str())
                .header(http::header::HOST, &user.host)
                .body(Full::new(Bytes::new())),
        };
        let Ok(request) = request else {
            return Outcome::Failed(Failure::Transport);
        };
        if user.sender.ready().await.is_err() {
            return Outcome::Failed(Failure::Transport);
        }
        let Ok(response) = user.sender.send_request(request).await else {
            return Outcome::Failed(Failure::Transport);
        };
        let status = response.status().as_u16();
        let from_edge_flag = response
            .headers()
            .get("flashcart-cache")
            .is_some_and(|v| v.as_bytes() == b"sold-out");
        // The body must be read for the connection to be reused; a 409's says which one.
        let Ok(body) = response.into_body().collect().await else {
            return Outcome::Failed(Failure::Transport);
        };
        let sold_out = status == 409 && is_sold_out(&body.to_bytes());
        Outcome::Answer {
            status,
            sold_out,
            from_edge_flag,
        }
    }
}

/// Whether a problem+json body is the sold-out problem.
fn is_sold_out(body: &[u8]) -> bool {
    const TYPE: &[u8] = b"urn:flashcart:problem:sold-out";
    body.windows(TYPE.len()).any(|w| w == TYPE)
}

/// A simple request for set-up and checks: method, path, optional bearer token and JSON
/// body; answers the status and the body parsed as JSON (`Null` when it is not JSON).
///
/// # Errors
/// When the node cannot be reached or does not answer within 30 s.
pub async fn exchange(
    address: SocketAddr,
    method: http::Method,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, address.to_string());
    if let Some(token) = token {
        builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let payload = match body {
        Some(json) => {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
            Bytes::from(json.to_string())
        }
        None => Bytes::new(),
    };
    let (status, body) = send(address, builder.body(Full::new(payload))?).await?;
    Ok((status, serde_json::from_slice(&body).unwrap_or_default()))
}

/// `GET path`: the status and the body as text (a metrics scrape).
///
/// # Errors
/// As [`exchange`].
pub async fn get_text(address: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let request = hyper::Request::get(path)
        .header(http::header::HOST, address.to_string())
        .body(Full::new(Bytes::new()))?;
    let (status, body) = send(address, request).await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Sends `request` on a new connection to `address`: the status and the whole body, within
/// 30 s.
async fn send(
    address: SocketAddr,
    request: hyper::Request<Full<Bytes>>,
) -> anyhow::Result<(u16, Bytes)> {
    let what = format!("{} http://{address}{}", request.method(), request.uri());
    let mut sender = connect(address).await?;
    let exchange = async {
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .with_context(|| format!("{what}: no answer within 30 s"))?
        .with_context(|| what.clone())
}

/// Waits until `GET path` on `address` answers 200, checking `alive` between tries.
///
/// # Errors
/// When `alive` fails (the process died) or `within` passes.
pub async fn wait_ready(
    address: SocketAddr,
    path: &str,
    within: Duration,
    mut alive: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        alive()?;
        if let Ok(Ok((200, _))) = tokio::time::timeout(
            Duration::from_secs(5),
            exchange(address, http::Method::GET, path, None, None),
        )
        .await
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("http://{address}{path} did not answer 200 within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sold_out_is_read_from_the_problem_type() {
        assert!(is_sold_out(
            br#"{"type":"urn:flashcart:problem:sold-out","status":409}"#
        ));
        assert!(!is_sold_out(
            br#"{"type":"urn:flashcart:problem:insufficient-stock","status":409}"#
        ));
    }
}
