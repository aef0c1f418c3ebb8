//! `allowed_outbound_hosts`: where a component may connect.
//!
//! Entries are `scheme://host[:port]`, as in Spin. `*` stands for any scheme, any host
//! or any port; `*.example.com` for any subdomain; a missing port means the scheme's
//! default port (6379 for `redis`, 6380 for `rediss`). A component may connect to an
//! address only if one entry allows its scheme, host and port; anything else is
//! refused before a socket is opened, the way Spin refuses it.

use thiserror::Error;

/// An address or entry that cannot be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("`{0}` is not `scheme://host[:port]`")]
pub struct AddressError(pub String);

/// A parsed `scheme://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parts {
    scheme: String,
    host: String,
    port: Option<String>,
}

fn split(text: &str) -> Result<Parts, AddressError> {
    let err = || AddressError(text.to_owned());
    let (scheme, rest) = text.split_once("://").ok_or_else(err)?;
    // Drop a path, query or credentials: only the authority decides.
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    if scheme.is_empty() || authority.is_empty() {
        return Err(err());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, tail) = v6.split_once(']').ok_or_else(err)?;
        let port = tail.strip_prefix(':').map(str::to_owned);
        (format!("[{host}]"), port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port.to_owned())),
            None => (authority.to_owned(), None),
        }
    };
    if host.is_empty() || port.as_deref() == Some("") {
        return Err(err());
    }
    Ok(Parts {
        scheme: scheme.to_ascii_lowercase(),
        host: host.to_ascii_lowercase(),
        port,
    })
}

fn default_port(scheme: &str) -> Option<&'static str> {
    match scheme {
        "redis" => Some("6379"),
        "rediss" => Some("6380"),
        "http" => Some("80"),
        "https" => Some("443"),
        "postgres" => Some("5432"),
        "mysql" => Some("3306"),
        "mqtt" => Some("1883"),
        _ => None,
    }
}

/// One allowed entry, already rendered (no `{{ }}` left).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    raw: String,
    parts: Parts,
}

impl AllowedHost {
    /// Parses a rendered entry.
    ///
    /// # Errors
    /// When it is not `scheme://host[:port]`.
    pub fn parse(raw: &str) -> Result<Self, AddressError> {
        Ok(Self {
            raw: raw.to_owned(),
            parts: split(raw)?,
        })
    }

    /// The entry as written (after rendering).
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    fn allows(&self, address: &Parts) -> bool {
        let p = &self.parts;
        let scheme_ok = p.scheme == "*" || p.scheme == address.scheme;
        let host_ok = p.host == "*"
            || p.host == address.host
            || p.host
                .strip_prefix("*.")
                .is_some_and(|suffix| address.host.ends_with(&format!(".{suffix}")));
        let want_port = address
            .port
            .as_deref()
            .or_else(|| default_port(&address.scheme));
        let port_ok = match p.port.as_deref() {
            Some("*") => true,
            Some(port) => Some(port) == want_port,
            None => default_port(&address.scheme).is_some() && want_port == default_port(&p.scheme),
        };
        scheme_ok && host_ok && port_ok
    }
}

/// A component's allowed outbound hosts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    entries: Vec<AllowedHost>,
}

impl AllowedHosts {
    /// From rendered entries.
    pub fn new(entries: Vec<AllowedHost>) -> Self {
        Self { entries }
    }

    /// Whether `address` (e.g. `redis://127.0.0.1:6380`) may be connected to.
    pub fn allows(&self, address: &str) -> bool {
        match split(address) {
            Ok(parts) => self.entries.iter().any(|e| e.allows(&parts)),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(entries: &[&str]) -> AllowedHosts {
        AllowedHosts::new(
            entries
                .iter()
                .map(|e| AllowedHost::parse(e).expect("valid entry"))
                .collect(),
        )
    }

    #[test]
    fn matches_like_spin() {
        let allowed = hosts(&["redis://127.0.0.1:6380", "rediss://*.cache.example:*"]);
        assert!(allowed.allows("redis://127.0.0.1:6380"));
        assert!(allowed.allows("redis://127.0.0.1:6380/0"));
        assert!(allowed.allows("redis://user:pw@127.0.0.1:6380"));
        assert!(!allowed.allows("redis://127.0.0.1:6379"));
        assert!(!allowed.allows("redis://127.0.0.1"));
        assert!(!allowed.allows("redis://127.0.0.2:6380"));
        assert!(!allowed.allows("rediss://127.0.0.1:6380"));
        assert!(allowed.allows("rediss://eu.cache.example:7000"));
        assert!(!allowed.allows("rediss://cache.example:7000"));
        assert!(!allowed.allows("not an address"));

        let default_port = hosts(&["redis://db.internal"]);
        assert!(default_port.allows("redis://db.internal"));
        assert!(default_port.allows("redis://db.internal:6379"));
        assert!(!default_port.allows("redis://db.internal:6380"));

        let any = hosts(&["*://*:*"]);
        assert!(any.allows("redis://anything:1"));
        assert!(!AllowedHosts::default().allows("redis://127.0.0.1:6379"));
    }
}
