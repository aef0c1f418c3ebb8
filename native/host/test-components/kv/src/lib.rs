//! Key-value round trip on the `default` store: `PUT /kv/<key>` stores the body,
//! `GET /kv/<key>` reads it back, `DELETE /kv/<key>` removes it, `GET /kv` lists keys.
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{IntoResponse, Method, Request, StatusCode};
use spin_sdk::http_service;
use spin_sdk::key_value::Store;

#[http_service]
async fn kv(req: Request) -> impl IntoResponse {
    let store = match Store::open_default().await {
        Ok(store) => store,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("open: {e:?}")),
    };
    let key = req
        .uri()
        .path()
        .strip_prefix("/kv")
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_owned();
    let method = req.method().clone();
    match (method, key.is_empty()) {
        (Method::GET, true) => match store.get_keys().await.collect().await {
            Ok(mut keys) => {
                keys.sort();
                (StatusCode::OK, keys.join(","))
            }
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("keys: {e:?}")),
        },
        (Method::GET, false) => match store.get(&key).await {
            Ok(Some(value)) => (StatusCode::OK, String::from_utf8_lossy(&value).into_owned()),
            Ok(None) => (StatusCode::NOT_FOUND, format!("no key {key}")),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("get: {e:?}")),
        },
        (Method::PUT, false) => {
            let body = match req.into_body().bytes().await {
                Ok(body) => body,
                Err(e) => return (StatusCode::BAD_REQUEST, format!("body: {e:?}")),
            };
            match store.set(&key, &body).await {
                Ok(()) => (StatusCode::CREATED, String::new()),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("set: {e:?}")),
            }
        }
        (Method::DELETE, false) => match store.delete(&key).await {
            Ok(()) => (StatusCode::NO_CONTENT, String::new()),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("delete: {e:?}")),
        },
        _ => (StatusCode::METHOD_NOT_ALLOWED, String::new()),
    }
}
