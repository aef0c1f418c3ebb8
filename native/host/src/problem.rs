//! Host-generated error responses as `application/problem+json` (RFC 9457).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;

/// A problem details document.
#[derive(Debug, Serialize)]
pub struct Problem<'a> {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// Short summary, the same for every occurrence of the type.
    pub title: &'a str,
    /// The HTTP status.
    pub status: u16,
    /// This occurrence, for a human.
    pub detail: String,
    /// The request id, to find the logs.
    pub request_id: &'a str,
}

impl Problem<'_> {
    /// Renders the response (with `x-request-id`).
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Ok(id) = HeaderValue::from_str(self.request_id) {
            response.headers_mut().insert("x-request-id", id);
        }
        response
    }
}

/// A problem response of `status` with the given type slug, title and detail.
pub fn problem(
    status: StatusCode,
    slug: &str,
    title: &str,
    detail: impl Into<String>,
    request_id: &str,
) -> Response<Full<Bytes>> {
    // The same type URNs as the functions' own problems (flashcart-core), so a client sees
    // one vocabulary whether the host or a component answered.
    let kind = format!("urn:flashcart:problem:{slug}");
    Problem {
        kind: &kind,
        title,
        status: status.as_u16(),
        detail: detail.into(),
        request_id,
    }
    .into_response()
}
