//! A component that grows its linear memory on request, to test the host's memory cap:
//! `/grow/<MiB>` tries to allocate that many MiB and writes every page of it. It answers
//! 200 `grew=<MiB>` when the memory grew, and 507 when the host refused to grow it (the
//! allocation fails gracefully: `try_reserve`, not an abort).
use spin_sdk::http::{IntoResponse, Request, StatusCode};
use spin_sdk::http_service;

const PAGE: usize = 64 << 10;

#[http_service]
async fn grow(req: Request) -> impl IntoResponse {
    let Some(mib) = req
        .uri()
        .path()
        .rsplit_once("/grow/")
        .and_then(|(_, mib)| mib.parse::<usize>().ok())
    else {
        return (StatusCode::BAD_REQUEST, "want /grow/<MiB>\n".to_owned());
    };
    let bytes = mib << 20;
    let mut block: Vec<u8> = Vec::new();
    if block.try_reserve_exact(bytes).is_err() {
        return (
            StatusCode::INSUFFICIENT_STORAGE,
            format!("refused={mib}\n"),
        );
    }
    block.resize(bytes, 0);
    for page in block.chunks_mut(PAGE) {
        page[0] = 1;
    }
    let touched: usize = block.iter().step_by(PAGE).map(|b| usize::from(*b)).sum();
    (StatusCode::OK, format!("grew={mib} pages={touched}\n"))
}
