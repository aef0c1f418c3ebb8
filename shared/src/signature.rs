//! The payment provider's webhook signature, Stripe-compatible: the header
//! `Flashcart-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>…]` where each `v1` is the
//! HMAC-SHA256 of `"{t}.{raw body}"` under a signing secret. Several `v1` values and several
//! secrets are accepted, so secrets can be rotated without downtime. Verified over the raw
//! body before anything is parsed; compared in constant time.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header that carries the signature.
pub const HEADER: &str = "Flashcart-Signature";

/// How far the signed timestamp may be from now, in seconds (either way).
pub const DEFAULT_TOLERANCE_S: u64 = 300;

/// A signing secret. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(Vec<u8>);

impl SigningSecret {
    /// A secret from its bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// Secrets from a comma-separated list (the form a Spin variable holds), newest first.
    pub fn list(value: &str) -> Vec<SigningSecret> {
        value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| Self::new(s.as_bytes()))
            .collect()
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(<redacted>)")
    }
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature header.
    #[error("the Flashcart-Signature header is missing")]
    Missing,
    /// The header is not `t=…,v1=…`.
    #[error("the Flashcart-Signature header is malformed")]
    Malformed,
    /// The timestamp is outside the tolerance.
    #[error("the signature timestamp is outside the {tolerance_s} s tolerance")]
    Expired {
        /// The tolerance.
        tolerance_s: u64,
    },
    /// No `v1` matches any secret.
    #[error("no signature matches")]
    Mismatch,
    /// No secret is configured.
    #[error("no signing secret is configured")]
    NoSecret,
}

fn mac(secret: &SigningSecret, timestamp: u64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&secret.0)
        .expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Signs `body` at `timestamp`: the header value a provider would send.
pub fn sign(secret: &SigningSecret, timestamp: u64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// Verifies a header value against the raw body, returning the signed timestamp.
///
/// # Errors
/// Missing, malformed, expired (outside `tolerance_s` of `now_s`), mismatch, or no secret.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secrets: &[SigningSecret],
    now_s: u64,
    tolerance_s: u64,
) -> Result<u64, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    if secrets.is_empty() {
        return Err(SignatureError::NoSecret);
    }
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => {
                timestamp = Some(t.parse::<u64>().map_err(|_| SignatureError::Malformed)?)
            }
            Some(("v1", sig)) => {
                candidates.push(hex::decode(sig).map_err(|_| SignatureError::Malformed)?)
            }
            Some(_) => {} // other schemes (e.g. v0) are ignored, as Stripe does
            None => return Err(SignatureError::Malformed),
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now_s.abs_diff(timestamp) > tolerance_s {
        return Err(SignatureError::Expired { tolerance_s });
    }
    let matched = secrets.iter().any(|secret| {
        candidates
            .iter()
            .any(|sig| mac(secret, timestamp, body).verify_slice(sig).is_ok())
    });
    if matched {
        Ok(timestamp)
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn secret(s: &str) -> SigningSecret {
        SigningSecret::new(s.as_bytes())
    }

    #[test]
    fn valid_signature_verifies() {
        let body = br#"{"event_id":"evt_1"}"#;
        let header = sign(&secret("whsec_a"), NOW, body);
        assert_eq!(
            verify(Some(&header), body, &[secret("whsec_a")], NOW + 10, 300),
            Ok(NOW)
        );
    }

    #[test]
    fn known_vector() {
        // HMAC-SHA256(key = "key", message = "1.{}"), computed independently with Python's hmac.
        assert_eq!(
            sign(&secret("key"), 1, b"{}"),
            "t=1,v1=1ba6b8171186efc613e8bcc0cbdab2748f24984d7c5a84faa2637afa0e40d224"
        );
    }

    #[test]
    fn refusals() {
        let body = b"payload";
        let good = sign(&secret("s1"), NOW, body);
        let secrets = [secret("s1")];
        assert_eq!(
            verify(None, body, &secrets, NOW, 300),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(Some("garbage"), body, &secrets, NOW, 300),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(Some("t=1"), body, &secrets, NOW, 300),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(Some("t=x,v1=00"), body, &secrets, NOW, 300),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(Some(&good), body, &secrets, NOW + 301, 300),
            Err(SignatureError::Expired { tolerance_s: 300 })
        );
        assert_eq!(
            verify(Some(&good), body, &secrets, NOW - 301, 300),
            Err(SignatureError::Expired { tolerance_s: 300 })
        );
        assert_eq!(
            verify(Some(&good), b"payloaD", &secrets, NOW, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&good), body, &[secret("s2")], NOW, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&good), body, &[], NOW, 300),
            Err(SignatureError::NoSecret)
        );
    }

    #[test]
    fn rotation_accepts_any_secret_and_any_v1() {
        let body = b"payload";
        let old = sign(&secret("old"), NOW, body);
        let new = sign(&secret("new"), NOW, body);
        let both = format!("{new},v1={}", &old[old.find("v1=").unwrap() + 3..]);
        let rotated = SigningSecret::list("new, old");
        assert_eq!(verify(Some(&old), body, &rotated, NOW, 300), Ok(NOW));
        assert_eq!(verify(Some(&new), body, &rotated, NOW, 300), Ok(NOW));
        assert_eq!(
            verify(Some(&both), body, &[secret("old")], NOW, 300),
            Ok(NOW)
        );
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(
            format!("{:?}", secret("hunter2")),
            "SigningSecret(<redacted>)"
        );
    }
}
