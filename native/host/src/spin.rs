//! The host side of the Spin interfaces a flashcart function may import:
//! `spin:variables/variables@3.0.0`, `spin:key-value/key-value@3.0.0` and
//! `spin:redis/redis@3.0.0` (WIT vendored under `wit/deps/`).
//!
//! Trap vs. guest error: a failure the guest can handle (unknown variable, Redis
//! error, store not allowed) is returned as the interface's `error` variant; only a
//! broken host invariant (a resource handle that is not in the table) traps.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use redis::AsyncCommands;
use wasmtime::component::{Accessor, FutureReader, HasData, Linker, Resource, StreamReader};

use crate::instance::{ComponentContext, RequestState};
use crate::key_value::KeyValueStore;
use crate::redis_pool::FailureKind;

mod generated {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "flashcart:host/spin-imports",
        // Trappable: a host invariant broken (a handle not in the table) traps the
        // instance; guest-visible failures are the interfaces' own `error` values.
        imports: { default: trappable },
        with: {
            "spin:redis/redis.connection": crate::spin::RedisConnection,
            "spin:key-value/key-value.store": crate::spin::KvStore,
        },
    });
}

use generated::spin::key_value::key_value as kv3;
use generated::spin::redis::redis as redis3;
use generated::spin::variables::variables as variables3;

/// An open `spin:redis` connection: a handle on the node's shared client.
pub struct RedisConnection {
    client: redis::aio::ConnectionManager,
}

/// An open `spin:key-value` store.
pub struct KvStore {
    store: KeyValueStore,
}

/// Marks the Spin interfaces' host data: the request's own state.
struct Spin;

impl HasData for Spin {
    type Data<'a> = &'a mut RequestState;
}

/// Adds the Spin interfaces to `linker`.
///
/// # Errors
/// When an interface is already defined in the linker.
pub fn add_to_linker(linker: &mut Linker<RequestState>) -> wasmtime::Result<()> {
    variables3::add_to_linker::<_, Spin>(linker, |s| s)?;
    kv3::add_to_linker::<_, Spin>(linker, |s| s)?;
    redis3::add_to_linker::<_, Spin>(linker, |s| s)?;
    Ok(())
}

fn component<T>(accessor: &Accessor<T, Spin>) -> Arc<ComponentContext> {
    accessor.with(|mut access| Arc::clone(&access.get().component))
}

// ---- spin:variables ------------------------------------------------------------

impl variables3::Host for RequestState {}

impl<T> variables3::HostWithStore<T> for Spin {
    async fn get(
        accessor: &Accessor<T, Self>,
        name: String,
    ) -> wasmtime::Result<Result<String, variables3::Error>> {
        let component = component(accessor);
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Ok(Err(variables3::Error::InvalidName(name)));
        }
        Ok(match component.variables.get(&name) {
            Some(value) => Ok(value.expose().to_owned()),
            None => Err(variables3::Error::Undefined(format!(
                "no variable `{name}` for component `{}`",
                component.id
            ))),
        })
    }
}

// ---- spin:key-value -------------------------------------------------------------

impl kv3::Host for RequestState {}

impl kv3::HostStore for RequestState {
    fn drop(&mut self, store: Resource<KvStore>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        Ok(())
    }
}

fn kv_error(e: crate::key_value::StoreError) -> kv3::Error {
    kv3::Error::Other(e.to_string())
}

fn open_store<T>(
    accessor: &Accessor<T, Spin>,
    store: &Resource<KvStore>,
) -> wasmtime::Result<KeyValueStore> {
    accessor.with(|mut access| Ok(access.get().table.get(store)?.store.clone()))
}

impl<T> kv3::HostStoreWithStore<T> for Spin {
    async fn open(
        accessor: &Accessor<T, Self>,
        label: String,
    ) -> wasmtime::Result<Result<Resource<KvStore>, kv3::Error>> {
        let component = component(accessor);
        if label != "default" {
            return Ok(Err(kv3::Error::NoSuchStore));
        }
        let Some(store) = component.key_value.clone() else {
            return Ok(Err(kv3::Error::AccessDenied));
        };
        let handle = accessor.with(|mut access| access.get().table.push(KvStore { store }))?;
        Ok(Ok(handle))
    }

    async fn get(
        accessor: &Accessor<T, Self>,
        self_: Resource<KvStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, kv3::Error>> {
        let store = open_store(accessor, &self_)?;
        Ok(store.get(key).await.map_err(kv_error))
    }

    async fn set(
        accessor: &Accessor<T, Self>,
        self_: Resource<KvStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), kv3::Error>> {
        let store = open_store(accessor, &self_)?;
        Ok(store.set(key, value).await.map_err(kv_error))
    }

    async fn delete(
        accessor: &Accessor<T, Self>,
        self_: Resource<KvStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), kv3::Error>> {
        let store = open_store(accessor, &self_)?;
        Ok(store.delete(key).await.map_err(kv_error))
    }

    async fn exists(
        accessor: &Accessor<T, Self>,
        self_: Resource<KvStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, kv3::Error>> {
        let store = open_store(accessor, &self_)?;
        Ok(store.exists(key).await.map_err(kv_error))
    }

    async fn get_keys(
        accessor: &Accessor<T, Self>,
        self_: Resource<KvStore>,
    ) -> wasmtime::Result<(StreamReader<String>, FutureReader<Result<(), kv3::Error>>)> {
        let store = open_store(accessor, &self_)?;
        let (keys, result) = match store.keys().await {
            Ok(keys) => (keys, Ok(())),
            Err(e) => (Vec::new(), Err(kv_error(e))),
        };
        accessor.with(|mut access| {
            let stream = StreamReader::new(&mut access, keys)?;
            let future =
                FutureReader::new(&mut access, async move { Ok::<_, wasmtime::Error>(result) })?;
            Ok((stream, future))
        })
    }
}

// ---- spin:redis -----------------------------------------------------------------

impl redis3::Host for RequestState {}

impl redis3::HostConnection for RequestState {
    fn drop(&mut self, conn: Resource<RedisConnection>) -> wasmtime::Result<()> {
        self.table.delete(conn)?;
        Ok(())
    }
}

fn redis_error(err: &redis::RedisError) -> redis3::Error {
    let kind = FailureKind::of(err);
    metrics::counter!("flashcart_redis_errors_total", "kind" => kind.as_str()).increment(1);
    match (kind, err.kind()) {
        (_, redis::ErrorKind::UnexpectedReturnType) => redis3::Error::TypeError,
        (FailureKind::Server, _) if err.code() == Some("WRONGTYPE") => redis3::Error::TypeError,
        _ => redis3::Error::Other(err.to_string()),
    }
}

fn connection<T>(
    accessor: &Accessor<T, Spin>,
    conn: &Resource<RedisConnection>,
) -> wasmtime::Result<redis::aio::ConnectionManager> {
    accessor.with(|mut access| Ok(access.get().table.get(conn)?.client.clone()))
}

/// The `spin:redis` commands, as `redis_command_seconds` labels them.
const COMMANDS: [&str; 9] = [
    "publish", "get", "set", "incr", "del", "sadd", "smembers", "srem", "execute",
];

/// Times one Redis command (one of [`COMMANDS`]) for the metrics. Each command's histogram
/// is looked up once per process, not per call.
async fn timed<F: Future<Output = redis::RedisResult<V>>, V>(
    command: &'static str,
    f: F,
) -> Result<V, redis3::Error> {
    static HISTOGRAMS: OnceLock<Vec<metrics::Histogram>> = OnceLock::new();
    let started = Instant::now();
    let result = f.await;
    let histograms = HISTOGRAMS.get_or_init(|| {
        COMMANDS
            .iter()
            .map(|&c| metrics::histogram!("flashcart_redis_command_seconds", "command" => c))
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    match COMMANDS.iter().position(|&c| c == command) {
        Some(i) => histograms[i].record(seconds),
        None => metrics::histogram!("flashcart_redis_command_seconds", "command" => command)
            .record(seconds),
    }
    result.map_err(|e| redis_error(&e))
}

fn to_results(
    value: redis::Value,
    out: &mut Vec<redis3::RedisResult>,
) -> Result<(), redis3::Error> {
    use redis::Value as V;
    use redis3::RedisResult as R;
    match value {
        V::Nil => out.push(R::Nil),
        V::Int(n) => out.push(R::Int64(n)),
        V::BulkString(bytes) => out.push(R::Binary(bytes)),
        V::SimpleString(s) => out.push(R::Status(s)),
        V::Okay => out.push(R::Status("OK".to_owned())),
        V::Double(d) => out.push(R::Binary(d.to_string().into_bytes())),
        V::Boolean(b) => out.push(R::Int64(i64::from(b))),
        V::VerbatimString { text, .. } => out.push(R::Binary(text.into_bytes())),
        // Spin flattens nested replies; so do we, so functions behave the same on both.
        V::Array(items) | V::Set(items) => {
            for item in items {
                to_results(item, out)?;
            }
        }
        V::Map(pairs) => {
            for (k, v) in pairs {
                to_results(k, out)?;
                to_results(v, out)?;
            }
        }
        V::Attribute { data, .. } => to_results(*data, out)?,
        V::ServerError(e) => return Err(redis3::Error::Other(format!("{e:?}"))),
        other => return Err(redis3::Error::Other(format!("unsupported reply {other:?}"))),
    }
    Ok(())
}

impl<T> redis3::HostConnectionWithStore<T> for Spin {
    async fn open(
        accessor: &Accessor<T, Self>,
        address: String,
    ) -> wasmtime::Result<Result<Resource<RedisConnection>, redis3::Error>> {
        let component = component(accessor);
        if !component.allowed_hosts.allows(&address) {
            // As Spin does: an address outside allowed_outbound_hosts is an invalid
            // address for this component; nothing is dialled.
            tracing::warn!(
                component = %component.id,
                address = %address,
                "redis address refused: not in allowed_outbound_hosts"
            );
            metrics::counter!("flashcart_redis_refused_total", "component" => component.id.clone())
                .increment(1);
            return Ok(Err(redis3::Error::InvalidAddress));
        }
        let client = match component.redis.client(&address).await {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(component = %component.id, error = %e, "redis connect failed");
                return Ok(Err(redis_error(&e)));
            }
        };
        let handle =
            accessor.with(|mut access| access.get().table.push(RedisConnection { client }))?;
        Ok(Ok(handle))
    }

    async fn publish(
        accessor: &Accessor<T, Self>,
        self_: Resource<RedisConnection>,
        channel: String,
        payload: Vec<u8>,
    ) -> wasmtime::Result<Result<(), redis3::Error>> {
        let mut conn = connection(accessor, &self_)?;
        Ok(
            timed("publish", conn.publish::<_, _, i64>(channel, payload))
                .await
                .map(drop),
        )
    }

    async fn get(
        accessor: &Accessor<T, Self>,
        self_: Resource<RedisConnection>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, redis3::Error>> {
        let mut conn = connection(accessor, &self_)?;
        Ok(timed("get", conn.get::<_, Option<Vec<u8>>>(key)).await)
    }

    async fn set(
        accessor: &Accessor<T, Self>,
        self_: Resource<RedisConnection>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), redis3::Error>> {
        let mut conn = connection(accessor, &self_)?;
        Ok(timed("set", conn.set::<_, _, ()>(key, value)).await)
    }

    async fn incr(
        accessor: &Accessor<T, Self>,
        self_: Resource<RedisConnection>,
        key: String,
    ) -> wasmtime::Result<Result<i64, redis3::Error>> {
        let mut conn = connection(accessor, &self_)?;
        Ok(timed("incr", conn.incr::<_, _, i64>(key, 1)).await)
    }

    async fn del(
        accessor: &Accessor<T, Self>,
        self_: Resource<RedisConnection>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<u32, redis3::Error>> {
        let mut conn = connection(accessor, &self_)?;
        Ok(timed("del", conn.del::<_, u32>(keys)).await)
    }

    async fn sadd(
        accessor: &Accessor<T, Self>,
        self_: Resource<RedisConnection>,
        key: String,
        values: Vec<String>,
    ) -> wasmtime::Result<Result<u32, redis3::Error>> {
        let mut conn = connection(accessor, &self_)?;
        Ok(timed("sadd", conn.sadd::<_, _, u32>(key, values)).await)
    }

    async fn smembers(
        accessor: &Accessor<T, Self>,
        self_: Resource<RedisConnection>,
        key: String,
    ) -> wasmtime::Result<Result<Vec<String>, redis3::Error>> {
        let mut conn = connection(accessor, &self_)?;
        Ok(timed("smembers", conn.smembers::<_, Vec<String>>(key)).await)
    }

    async fn srem(
        accessor: &Accessor<T, Self>,
        self_: Resource<RedisConnection>,
        key: String,
        values: Vec<String>,
    ) -> wasmtime::Result<Result<u32, redis3::Error>> {
        let mut conn = connection(accessor, &self_)?;
        Ok(timed("srem", conn.srem::<_, _, u32>(key, values)).await)
    }

    async fn execute(
        accessor: &Accessor<T, Self>,
        self_: Resource<RedisConnection>,
        command: String,
        arguments: Vec<redis3::RedisParameter>,
    ) -> wasmtime::Result<Result<Vec<redis3::RedisResult>, redis3::Error>> {
        let mut conn = connection(accessor, &self_)?;
        let mut cmd = redis::cmd(&command);
        for arg in arguments {
            match arg {
                redis3::RedisParameter::Int64(n) => cmd.arg(n),
                redis3::RedisParameter::Binary(bytes) => cmd.arg(bytes),
            };
        }
        let value = match timed("execute", cmd.query_async::<redis::Value>(&mut conn)).await {
            Ok(value) => value,
            Err(e) => return Ok(Err(e)),
        };
        let mut out = Vec::new();
        Ok(to_results(value, &mut out).map(|()| out))
    }
}
