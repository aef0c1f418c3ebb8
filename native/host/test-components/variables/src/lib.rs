//! Echoes an application variable: `GET /vars/<name>` answers the variable's value.
use spin_sdk::http::{IntoResponse, Request, StatusCode};
use spin_sdk::{http_service, variables};

#[http_service]
async fn echo(req: Request) -> impl IntoResponse {
    let name = req
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    match variables::get(&name).await {
        Ok(value) => (StatusCode::OK, value),
        Err(e) => (StatusCode::NOT_FOUND, format!("variable {name}: {e:?}")),
    }
}
