//! `GET /v1/openapi.json`: the API's OpenAPI document, compiled in. It is
//! `docs/openapi.json`, which [`crate::openapi::document`] generates from the types that parse
//! and render the bodies (feature `openapi`; a test fails when the file differs from it).
//! Served without Redis or variables: no instance state is needed.

use flashcart_core::Rejection;

use crate::{ApiRequest, ApiResponse};

/// Where the document is served.
pub const PATH: &str = "/v1/openapi.json";

/// The document, as committed in `docs/openapi.json`.
pub const JSON: &str = include_str!("../../../docs/openapi.json");

/// Answers `GET /v1/openapi.json`: the document as `application/json`; 405 for other methods.
pub fn serve(req: &ApiRequest) -> ApiResponse {
    if req.path != PATH {
        return ApiResponse::problem(&Rejection::NotFound);
    }
    if req.method != "GET" {
        return ApiResponse::problem(&Rejection::MethodNotAllowed { allow: "GET" });
    }
    ApiResponse {
        status: 200,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            // The document changes only with a new build of the component.
            ("cache-control".into(), "public, max-age=300".into()),
        ],
        body: JSON.as_bytes().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_json_and_only_read() {
        let ok = serve(&ApiRequest::new("GET", PATH));
        assert_eq!(
            (ok.status, ok.header_value("content-type")),
            (200, Some("application/json"))
        );
        assert_eq!(ok.json_body()["openapi"], "3.1.0");
        let put = serve(&ApiRequest::new("PUT", PATH));
        assert_eq!((put.status, put.header_value("allow")), (405, Some("GET")));
    }
}
