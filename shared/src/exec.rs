//! The one door to Redis: a command goes in, a flat list of values comes out.
//!
//! Spin's `spin:redis` `execute` flattens nested replies, so the library's functions only
//! return flat arrays, and this trait speaks the same shape on every host: a component
//! implements it with spin-sdk's redis connection, native code with the `redis` crate.

use std::future::Future;

/// One value of a (flattened) reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A nil reply or a missing hash field.
    Nil,
    /// An integer reply.
    Int(i64),
    /// A bulk string.
    Bytes(Vec<u8>),
    /// A simple-string status such as `OK`.
    Status(String),
}

impl Value {
    /// The value as text, for strings, statuses and integers.
    pub fn text(&self) -> Option<String> {
        match self {
            Value::Bytes(b) => String::from_utf8(b.clone()).ok(),
            Value::Status(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Nil => None,
        }
    }

    /// The value as an integer, for integers and numeric strings.
    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bytes(_) | Value::Status(_) => self.text()?.parse().ok(),
            Value::Nil => None,
        }
    }
}

/// How a Redis call failed, classified by the client that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// The connection dropped or could not be made: the call may not have run.
    Connection,
    /// No answer in time: the call may or may not have run.
    Timeout,
    /// The server answered with an error (e.g. the library is not loaded).
    Server,
    /// No node the call needs can be reached as deployed — none answers at the configured
    /// address, it is outside the allowed hosts, or a seed list names a plain Redis: nothing
    /// was run. The message is flashcart's own words naming the node and the cause (never a
    /// client's text), written for whoever runs the deployment, so an answer may show it.
    Unreachable,
    /// The write was made on the master but no replica confirmed it in time
    /// (`durability = replicated`), or the master refused it for want of replicas
    /// (`NOREPLICAS`). The decision may be stored: only a replay of the same request learns
    /// it. The message is flashcart's own words.
    NotReplicated,
}

/// A failed Redis call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("redis {kind:?}: {message}")]
pub struct ExecError {
    /// What kind of failure.
    pub kind: FailureKind,
    /// The client's message.
    pub message: String,
}

/// Runs Redis commands. Implemented by the edge (spin-sdk) and by native code.
pub trait RedisExecutor {
    /// Runs `command` with `args`, returning the flattened reply.
    ///
    /// # Errors
    /// When the call could not be made or the server answered with an error.
    fn execute(
        &self,
        command: &str,
        args: Vec<String>,
    ) -> impl Future<Output = Result<Vec<Value>, ExecError>>;
}
