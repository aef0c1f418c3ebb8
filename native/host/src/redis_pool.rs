//! Outbound Redis shared by every instance on the node.
//!
//! Spin opens a connection per instance; a flash sale makes thousands of short-lived
//! instances per second, so flashcart keeps one multiplexed, self-reconnecting
//! `ConnectionManager` per address for the life of the process and hands clones of it
//! (a reference count) to instances. Opening a "connection" from a component is then a
//! map look-up, and every instance's commands are pipelined on the same socket.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{Mutex, OnceCell};

/// How a Redis call failed, classified with the client's own predicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No answer in time.
    Timeout,
    /// The connection went away or was refused.
    Connection,
    /// The server answered with an error (wrong type, script error, …).
    Server,
    /// Anything else (parse errors, client misuse).
    Other,
}

impl FailureKind {
    /// Classifies `err`.
    pub fn of(err: &redis::RedisError) -> Self {
        if err.is_timeout() {
            Self::Timeout
        } else if err.is_connection_dropped() || err.is_connection_refusal() || err.is_io_error() {
            Self::Connection
        } else if matches!(err.kind(), redis::ErrorKind::Server(_)) {
            Self::Server
        } else {
            Self::Other
        }
    }

    /// Label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connection => "connection",
            Self::Server => "server",
            Self::Other => "other",
        }
    }
}

/// The node's Redis clients, one per address.
#[derive(Debug, Default)]
pub struct RedisPool {
    clients: Mutex<HashMap<String, Arc<OnceCell<ConnectionManager>>>>,
}

impl RedisPool {
    /// An empty pool; clients are made on first use of each address.
    pub fn new() -> Self {
        Self::default()
    }

    /// The shared client for `address` (`redis://host:port[/db]`), connecting on first use.
    ///
    /// # Errors
    /// When the address is invalid or the first connection fails.
    pub async fn client(&self, address: &str) -> redis::RedisResult<ConnectionManager> {
        let cell = {
            let mut clients = self.clients.lock().await;
            Arc::clone(clients.entry(address.to_owned()).or_default())
        };
        // The map lock is not held while connecting: one slow address must not stall
        // requests for another. The cell makes concurrent first users share one connect.
        let manager = cell
            .get_or_try_init(|| async {
                let started = Instant::now();
                let client = redis::Client::open(address)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(5)))
                    .set_number_of_retries(2);
                let manager = client.get_connection_manager_with_config(config).await?;
                metrics::counter!("flashcart_redis_connects_total").increment(1);
                metrics::histogram!("flashcart_redis_connect_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::gauge!("flashcart_redis_clients").increment(1.0);
                Ok::<_, redis::RedisError>(manager)
            })
            .await?;
        Ok(manager.clone())
    }
}
