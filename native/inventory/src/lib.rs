//! flashcart-inventory: the domain core's inventory operations over the `redis` crate.
//!
//! - [`RedisConn`]: one shared, multiplexed connection (a reconnecting connection manager for a
//!   single node, or a cluster-aware connection for Redis Cluster); cheap to clone, so every
//!   task of a process shares it.
//! - [`open`]: connects, loads the function library where it is missing or stale, and returns
//!   a ready [`NativeInventory`].
#![deny(missing_docs)]

use std::time::Duration;

use flashcart_core::exec::{ExecError, FailureKind, RedisExecutor, Value};
use flashcart_core::{Inventory, KeySchema, Settings};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

/// Errors of connecting and loading the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address could not be parsed.
    #[error("bad redis address {address:?}: {source}")]
    Address {
        /// The address given.
        address: String,
        /// Why.
        source: redis::RedisError,
    },
    /// Redis could not be reached.
    #[error("cannot connect to redis at {address}: {source}")]
    Connect {
        /// The address.
        address: String,
        /// Why.
        source: redis::RedisError,
    },
    /// The function library could not be loaded.
    #[error("cannot load the flashcart function library: {0}")]
    Library(#[from] ExecError),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the inventory lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One Redis server, e.g. `redis://127.0.0.1:6379`.
    Single(String),
    /// A Redis Cluster, given by one or more of its nodes.
    Cluster(Vec<String>),
}

/// A shared connection to a single node or a cluster.
#[derive(Clone)]
pub enum RedisConn {
    /// A single node, reconnecting on failure.
    Single(ConnectionManager),
    /// A Redis Cluster; commands are routed by their first key's slot.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisConn::Single(_) => "RedisConn::Single",
            RedisConn::Cluster(_) => "RedisConn::Cluster",
        })
    }
}

/// Either connection as one: code written against redis-rs's `ConnectionLike` (settlement's
/// consumer, the dead-letter commands) takes a `RedisConn` without caring which it is.
impl redis::aio::ConnectionLike for RedisConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// The inventory over native connections.
pub type NativeInventory = Inventory<RedisConn>;

/// How long a client waits for Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// For an answer to a command.
    pub response: Duration,
    /// For a connection to be made.
    pub connection: Duration,
}

impl Default for Timeouts {
    /// 5 s for an answer, 2 s to connect: a service answers 503 rather than hang.
    fn default() -> Self {
        Self {
            response: Duration::from_secs(5),
            connection: Duration::from_secs(2),
        }
    }
}

/// `redis://host:port` for a node given as `host:port` (a URL is kept as it is), so
/// `--redis-cluster` and `--redis-url` take either.
pub fn node_url(node: &str) -> String {
    let node = node.trim();
    if node.contains("://") {
        node.to_owned()
    } else {
        format!("redis://{node}")
    }
}

impl RedisConn {
    /// Connects to `target` with the default [`Timeouts`].
    ///
    /// # Errors
    /// When an address is malformed or no connection can be made.
    pub async fn connect(target: &Target) -> Result<Self> {
        Self::connect_with(target, Timeouts::default()).await
    }

    /// Connects to `target`, waiting as long as `timeouts` say.
    ///
    /// # Errors
    /// When an address is malformed or no connection can be made.
    pub async fn connect_with(target: &Target, timeouts: Timeouts) -> Result<Self> {
        match target {
            Target::Single(address) => {
                let client =
                    redis::Client::open(node_url(address)).map_err(|source| Error::Address {
                        address: address.clone(),
                        source,
                    })?;
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(timeouts.response))
                    .set_connection_timeout(Some(timeouts.connection));
                let conn = client
                    .get_connection_manager_with_config(config)
                    .await
                    .map_err(|source| Error::Connect {
                        address: address.clone(),
                        source,
                    })?;
                Ok(RedisConn::Single(conn))
            }
            Target::Cluster(nodes) => {
                let joined = nodes.join(",");
                let client = ClusterClient::builder(nodes.iter().map(|n| node_url(n)))
                    .response_timeout(timeouts.response)
                    .connection_timeout(timeouts.connection)
                    .build()
                    .map_err(|source| Error::Address {
                        address: joined.clone(),
                        source,
                    })?;
                let conn =
                    client
                        .get_async_connection()
                        .await
                        .map_err(|source| Error::Connect {
                            address: joined,
                            source,
                        })?;
                Ok(RedisConn::Cluster(conn))
            }
        }
    }

    /// Runs a prepared command and returns the raw reply.
    ///
    /// # Errors
    /// The client's error.
    pub async fn query(&self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        match self {
            RedisConn::Single(c) => cmd.query_async(&mut c.clone()).await,
            RedisConn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
    }

    /// One section of `INFO` (`persistence`, `server`, `commandstats`, …) as its text; read
    /// its fields with [`info_field`].
    ///
    /// # Errors
    /// The client's error.
    pub async fn info(&self, section: &str) -> redis::RedisResult<String> {
        Ok(match self.query(redis::cmd("INFO").arg(section)).await? {
            redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            redis::Value::VerbatimString { text, .. } => text,
            redis::Value::SimpleString(s) => s,
            _ => String::new(),
        })
    }
}

/// The field `name` of an `INFO` text (`name:value` lines), parsed as `T`.
pub fn info_field<T: std::str::FromStr>(info: &str, name: &str) -> Option<T> {
    info.lines().find_map(|l| {
        let (k, v) = l.trim().split_once(':')?;
        (k == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Classifies a client error with the client's own predicates.
fn classify(e: &redis::RedisError) -> FailureKind {
    if e.is_timeout() {
        FailureKind::Timeout
    } else if e.is_connection_dropped() || e.is_connection_refusal() || e.is_io_error() {
        FailureKind::Connection
    } else {
        FailureKind::Server
    }
}

/// Flattens a reply the way Spin's `execute` does, so native and edge code see one shape.
fn flatten(value: redis::Value, out: &mut Vec<Value>) -> Result<(), ExecError> {
    match value {
        redis::Value::Nil => out.push(Value::Nil),
        redis::Value::Int(i) => out.push(Value::Int(i)),
        redis::Value::BulkString(b) => out.push(Value::Bytes(b)),
        redis::Value::SimpleString(s) => out.push(Value::Status(s)),
        redis::Value::Okay => out.push(Value::Status("OK".into())),
        redis::Value::Boolean(b) => out.push(Value::Int(i64::from(b))),
        redis::Value::Double(d) => out.push(Value::Bytes(d.to_string().into_bytes())),
        redis::Value::VerbatimString { text, .. } => out.push(Value::Bytes(text.into_bytes())),
        redis::Value::Array(items) | redis::Value::Set(items) => {
            for item in items {
                flatten(item, out)?;
            }
        }
        redis::Value::Map(pairs) => {
            for (k, v) in pairs {
                flatten(k, out)?;
                flatten(v, out)?;
            }
        }
        redis::Value::Attribute { data, .. } => flatten(*data, out)?,
        redis::Value::ServerError(e) => {
            return Err(ExecError {
                kind: FailureKind::Server,
                message: format!("{e:?}"),
            });
        }
        other => out.push(Value::Bytes(format!("{other:?}").into_bytes())),
    }
    Ok(())
}

impl RedisExecutor for RedisConn {
    async fn execute(&self, command: &str, args: Vec<String>) -> Result<Vec<Value>, ExecError> {
        let mut cmd = redis::cmd(command);
        for a in args {
            cmd.arg(a);
        }
        let value = self.query(&cmd).await.map_err(|e| ExecError {
            kind: classify(&e),
            message: e.to_string(),
        })?;
        flat_reply(value)
    }
}

/// A `redis` reply flattened the way Spin's `execute` does (nested arrays become one list, a
/// server error inside the reply an error): the one shape the core reads on every host.
///
/// # Errors
/// When the reply holds a server error.
pub fn flat_reply(value: redis::Value) -> Result<Vec<Value>, ExecError> {
    let mut out = Vec::new();
    flatten(value, &mut out)?;
    Ok(out)
}

/// Connects to `target` and makes sure the current function library is loaded (on every
/// master of a cluster).
///
/// # Errors
/// When Redis cannot be reached or refuses the library.
pub async fn open(
    target: &Target,
    schema: KeySchema,
    settings: Settings,
) -> Result<NativeInventory> {
    open_with(target, schema, settings, Timeouts::default()).await
}

/// [`open`] with other [`Timeouts`] (tests on a busy machine give Redis longer).
///
/// # Errors
/// When Redis cannot be reached or refuses the library.
pub async fn open_with(
    target: &Target,
    schema: KeySchema,
    settings: Settings,
    timeouts: Timeouts,
) -> Result<NativeInventory> {
    let conn = RedisConn::connect_with(target, timeouts).await?;
    let inventory = Inventory::new(conn, schema, settings);
    match inventory.executor() {
        RedisConn::Single(_) => {
            if inventory.ensure_library().await? {
                tracing::info!(
                    version = flashcart_core::library::version(),
                    "loaded the function library"
                );
            }
        }
        RedisConn::Cluster(_) => {
            // A cluster routes FUNCTION LOAD to every master; a version check would reach only
            // one of them, so load unconditionally (REPLACE of the same code is cheap).
            inventory
                .executor()
                .execute(
                    "FUNCTION",
                    vec![
                        "LOAD".into(),
                        "REPLACE".into(),
                        flashcart_core::library::source().into(),
                    ],
                )
                .await?;
        }
    }
    Ok(inventory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_may_be_host_port_or_urls() {
        assert_eq!(node_url("127.0.0.1:7001"), "redis://127.0.0.1:7001");
        assert_eq!(node_url(" redis://a:1 "), "redis://a:1");
        assert_eq!(node_url("rediss://u:p@a:1"), "rediss://u:p@a:1");
        assert!(ClusterClient::new(vec![node_url("127.0.0.1:7001")]).is_ok());
        assert!(
            ClusterClient::new(vec!["127.0.0.1:7001"]).is_err(),
            "the bug this fixes"
        );
    }
}
