//! Outbound Redis through `spin:redis`: the address comes from the `redis_address`
//! variable, as in flashcart's real functions.
//!
//! - `PUT /redis/<key>` sets the key to the body, `GET /redis/<key>` reads it;
//! - `POST /redis-execute/<key>` runs `INCRBY <key> 5` then `GET <key>` through `execute`
//!   and answers the replies;
//! - any error opening the connection (e.g. an address outside
//!   `allowed_outbound_hosts`) answers 502 with the error.
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{IntoResponse, Method, Request, StatusCode};
use spin_sdk::redis::{Connection, RedisParameter, RedisResult};
use spin_sdk::{http_service, variables};

#[http_service]
async fn redis(req: Request) -> impl IntoResponse {
    let address = match variables::get("redis_address").await {
        Ok(address) => format!("redis://{address}"),
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("variable: {e:?}"),
            );
        }
    };
    let conn = match Connection::open(&address).await {
        Ok(conn) => conn,
        Err(e) => return (StatusCode::BAD_GATEWAY, format!("open {address}: {e:?}")),
    };
    let path = req.uri().path().to_owned();
    let key = path.rsplit('/').next().unwrap_or_default().to_owned();
    let method = req.method().clone();
    if path.starts_with("/redis-execute/") {
        let replies = conn
            .execute(
                "INCRBY",
                vec![
                    RedisParameter::Binary(key.clone().into_bytes()),
                    RedisParameter::Int64(5),
                ],
            )
            .await;
        let value = conn
            .execute("GET", vec![RedisParameter::Binary(key.into_bytes())])
            .await;
        return match (replies, value) {
            (Ok(incr), Ok(get)) => (
                StatusCode::OK,
                format!("{}|{}", render(&incr), render(&get)),
            ),
            (Err(e), _) | (_, Err(e)) => (StatusCode::BAD_GATEWAY, format!("execute: {e:?}")),
        };
    }
    match method {
        Method::PUT => {
            let body = match req.into_body().bytes().await {
                Ok(body) => body,
                Err(e) => return (StatusCode::BAD_REQUEST, format!("body: {e:?}")),
            };
            match conn.set(&key, &body).await {
                Ok(()) => (StatusCode::CREATED, String::new()),
                Err(e) => (StatusCode::BAD_GATEWAY, format!("set: {e:?}")),
            }
        }
        Method::GET => match conn.get(&key).await {
            Ok(Some(value)) => (StatusCode::OK, String::from_utf8_lossy(&value).into_owned()),
            Ok(None) => (StatusCode::NOT_FOUND, format!("no key {key}")),
            Err(e) => (StatusCode::BAD_GATEWAY, format!("get: {e:?}")),
        },
        _ => (StatusCode::METHOD_NOT_ALLOWED, String::new()),
    }
}

fn render(results: &[RedisResult]) -> String {
    let parts: Vec<String> = results
        .iter()
        .map(|r| match r {
            RedisResult::Nil => "nil".to_owned(),
            RedisResult::Status(s) => format!("status:{s}"),
            RedisResult::Int64(n) => format!("int:{n}"),
            RedisResult::Binary(b) => format!("bin:{}", String::from_utf8_lossy(b)),
        })
        .collect();
    parts.join(",")
}
