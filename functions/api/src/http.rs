//! Requests and responses as plain data, so the contract is host-independent: a component
//! converts from and to spin-sdk's types, a test builds them directly.

use flashcart_core::ids::RequestId;
use flashcart_core::problem::{PROBLEM_JSON, Rejection};
use serde::Serialize;

/// An HTTP request as the contract sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, without query.
    pub path: String,
    /// Headers; names compared case-insensitively.
    pub headers: Vec<(String, String)>,
    /// The raw body.
    pub body: Vec<u8>,
}

impl ApiRequest {
    /// A request without headers or body.
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets header `name` to `value`, replacing every value it had.
    pub fn set_header(&mut self, name: &str, value: &str) {
        set_header(&mut self.headers, name, value);
    }

    /// Sets a JSON body.
    #[must_use]
    pub fn json(mut self, body: &serde_json::Value) -> Self {
        self.body = body.to_string().into_bytes();
        self.header("content-type", "application/json")
    }

    /// The first value of header `name`.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The request's id (`x-request-id`) when it carries a valid one: the host and the glue
    /// set it on every request, so the events a request's decision appends name it.
    pub fn request_id(&self) -> Option<RequestId> {
        self.header_value(RequestId::HEADER)
            .and_then(|value| RequestId::parse(value).ok())
    }

    /// The path's segments after a prefix, e.g. `["drop-1", "reservations"]`.
    pub fn segments_after(&self, prefix: &str) -> Option<Vec<&str>> {
        let rest = self.path.strip_prefix(prefix)?;
        Some(rest.split('/').filter(|s| !s.is_empty()).collect())
    }
}

/// An HTTP response as the contract produces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl ApiResponse {
    /// A JSON response.
    pub fn json<T: Serialize>(status: u16, value: &T) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(value).unwrap_or_default(),
        }
    }

    /// A problem+json response for a rejection, with the headers its kind calls for.
    pub fn problem(rejection: &Rejection) -> Self {
        if let Rejection::Unavailable(cause) = rejection {
            // The body says only "retry"; the cause goes to the component's stderr, which
            // both flashcart's host and Spin write to their logs.
            eprintln!("flashcart: inventory unavailable: {cause}");
        }
        let mut response = Self {
            status: rejection.status(),
            headers: vec![("content-type".into(), PROBLEM_JSON.into())],
            body: rejection.problem().to_json(),
        };
        if let Rejection::MethodNotAllowed { allow } = rejection {
            response.headers.push(("allow".into(), (*allow).into()));
        }
        if let Rejection::Fenced | Rejection::NotReplicated(_) = rejection {
            // Settlement checks a fenced partition every maintenance pass (1 s by default); a
            // replica lagging or being replaced takes about as long.
            response.headers.push(("retry-after".into(), "1".into()));
        }
        if let Rejection::Unauthorized = rejection {
            response
                .headers
                .push(("www-authenticate".into(), "Bearer".into()));
        }
        response
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// Sets header `name` to `value`, replacing every value it had.
    pub fn set_header(&mut self, name: &str, value: &str) {
        set_header(&mut self.headers, name, value);
    }

    /// The first value of header `name`.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (tests and clients).
    pub fn json_body(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Replaces every `name` header (compared case-insensitively) with one `name: value`.
fn set_header(headers: &mut Vec<(String, String)>, name: &str, value: &str) {
    headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    headers.push((name.to_owned(), value.to_owned()));
}

/// Checks a JSON body's media type and size before it is parsed.
///
/// # Errors
/// 415 when a content type other than JSON is declared, 413 past `max_bytes`.
pub fn check_json_body(req: &ApiRequest, max_bytes: usize) -> Result<(), Rejection> {
    if req.body.len() > max_bytes {
        return Err(Rejection::PayloadTooLarge);
    }
    match req.header_value("content-type") {
        None => Ok(()),
        Some(ct)
            if ct
                .split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")) =>
        {
            Ok(())
        }
        Some(_) => Err(Rejection::UnsupportedMediaType),
    }
}

/// Parses a JSON body into `T`, naming the problem in a 400.
///
/// A number written with a fraction of zero (`4.0`) is the integer it equals: JSON Schema's
/// `integer` (and so the OpenAPI document) includes it, serde's integers do not. Only a body
/// that fails as written is read a second time, so the common body costs one parse.
///
/// # Errors
/// 400 `invalid-request` with serde's message.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Rejection> {
    let invalid = |e: serde_json::Error| {
        Rejection::Invalid(flashcart_core::ids::ValidationError::new(
            "body",
            format!("{e}"),
        ))
    };
    let first = match serde_json::from_slice(body) {
        Ok(parsed) => return Ok(parsed),
        Err(e) => e,
    };
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Err(invalid(first));
    };
    if !integral_numbers(&mut value) {
        return Err(invalid(first));
    }
    serde_json::from_value(value).map_err(invalid)
}

/// Rewrites every float with a zero fraction that a double holds exactly (|x| <= 2^53) as
/// an integer; whether any was.
fn integral_numbers(value: &mut serde_json::Value) -> bool {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match value {
        serde_json::Value::Number(n) if n.is_f64() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() <= EXACT => {
                *value = if f >= 0.0 {
                    (f as u64).into()
                } else {
                    (f as i64).into()
                };
                true
            }
            _ => false,
        },
        serde_json::Value::Array(items) => items
            .iter_mut()
            .fold(false, |any, v| integral_numbers(v) | any),
        serde_json::Value::Object(fields) => fields
            .values_mut()
            .fold(false, |any, v| integral_numbers(v) | any),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fenced_partition_is_a_503_with_retry_after() {
        let r = ApiResponse::problem(&Rejection::Fenced);
        assert_eq!(r.status, 503);
        assert!(
            r.headers
                .iter()
                .any(|(n, v)| n == "retry-after" && v == "1")
        );
        assert!(
            r.headers
                .iter()
                .any(|(n, v)| n == "content-type" && v == PROBLEM_JSON)
        );
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["type"], "urn:flashcart:problem:inventory-recovering");
    }

    #[test]
    fn an_integral_float_is_its_integer() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Body {
            quantity: u64,
        }
        assert_eq!(
            parse_json::<Body>(br#"{"quantity": 4.0}"#),
            Ok(Body { quantity: 4 })
        );
        for refused in [&br#"{"quantity": 4.5}"#[..], br#"{"quantity": -1.0}"#, b"{"] {
            assert!(parse_json::<Body>(refused).is_err(), "{refused:?}");
        }
    }

    #[test]
    fn setting_a_header_replaces_every_value_it_had_whatever_its_case() {
        let mut req = ApiRequest::new("GET", "/")
            .header("X-Request-Id", "a")
            .header("accept", "*/*")
            .header("x-request-id", "b");
        req.set_header("x-request-id", "c");
        assert_eq!(
            req.headers,
            [
                ("accept".to_owned(), "*/*".to_owned()),
                ("x-request-id".to_owned(), "c".to_owned())
            ]
        );
        let mut resp = ApiResponse::problem(&Rejection::NotFound).with_header("X-Request-Id", "a");
        resp.set_header("x-request-id", "b");
        assert_eq!(resp.header_value("x-request-id"), Some("b"));
        assert_eq!(
            resp.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("x-request-id"))
                .count(),
            1
        );
    }

    #[test]
    fn an_unconfirmed_write_is_a_503_with_retry_after() {
        let r = ApiResponse::problem(&Rejection::NotReplicated("no replica confirmed".into()));
        assert_eq!((r.status, r.header_value("retry-after")), (503, Some("1")));
        assert_eq!(
            r.json_body()["type"],
            "urn:flashcart:problem:inventory-not-replicated"
        );
    }
}
