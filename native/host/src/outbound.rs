//! `allowed_outbound_hosts`: where a component may connect.
//!
//! Entries are `scheme://host[:port]`, as in Spin. `*` stands for any scheme, any host
//! or any port; `*.example.com` for any subdomain; `10.0.0.0/24` for any address in that
//! network (CIDR); `7000..7006` for the ports 7000 to 7005 (the end is excluded, as in
//! Spin); a missing port means the scheme's default port (6379 for `redis`, 6380 for
//! `rediss`). A component may connect to an address only if one entry allows its scheme,
//! host and port; anything else is refused before a socket is opened, the way Spin refuses
//! it. A Redis Cluster's nodes are covered by one entry such as
//! `redis://10.0.0.0/24:7000..7006`.

use std::net::IpAddr;

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

/// An entry whose host is a network, `10.0.0.0/24:7000`: the `/` is not a path.
fn split_entry(text: &str) -> Result<Parts, AddressError> {
    if let Some((scheme, rest)) = text.split_once("://")
        && let Some((host, port)) = rest.rsplit_once(':')
        && network(host).is_some()
        && !scheme.is_empty()
        && !port.is_empty()
    {
        return Ok(Parts {
            scheme: scheme.to_ascii_lowercase(),
            host: host.to_owned(),
            port: Some(port.to_owned()),
        });
    }
    split(text)
}

/// `ip/prefix` as a network address and prefix length.
fn network(host: &str) -> Option<(IpAddr, u32)> {
    let (ip, bits) = host.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let bits: u32 = bits.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some((ip, bits))
}

fn in_network(host: &str, (net, bits): (IpAddr, u32)) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match (host.parse::<IpAddr>(), net) {
        (Ok(IpAddr::V4(a)), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (Ok(IpAddr::V6(a)), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Whether `port` is in `lo..hi` (end excluded, as Spin reads it).
fn in_range(range: &str, port: Option<&str>) -> bool {
    let Some((lo, hi)) = range.split_once("..") else {
        return false;
    };
    match (
        lo.parse::<u16>(),
        hi.parse::<u16>(),
        port.map(str::parse::<u16>),
    ) {
        (Ok(lo), Ok(hi), Some(Ok(port))) => (lo..hi).contains(&port),
        _ => false,
    }
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
            parts: split_entry(raw)?,
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
                .is_some_and(|suffix| address.host.ends_with(&format!(".{suffix}")))
            || network(&p.host).is_some_and(|net| in_network(&address.host, net));
        let want_port = address
            .port
            .as_deref()
            .or_else(|| default_port(&address.scheme));
        let port_ok = match p.port.as_deref() {
            Some("*") => true,
            Some(range) if range.contains("..") => in_range(range, want_port),
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

        let cluster = hosts(&["redis://10.0.0.0/24:7000..7006", "redis://[fd00::]:1"]);
        assert!(cluster.allows("redis://10.0.0.17:7000"));
        assert!(cluster.allows("redis://10.0.0.255:7005"));
        assert!(!cluster.allows("redis://10.0.0.17:7006"));
        assert!(!cluster.allows("redis://10.0.1.17:7000"));
        assert!(!cluster.allows("redis://db.internal:7000"));
        let v6 = hosts(&["redis://fd00::/8:*", "redis://127.0.0.1/32:6379"]);
        assert!(v6.allows("redis://[fd12::1]:7000"));
        assert!(!v6.allows("redis://[fe80::1]:7000"));
        assert!(v6.allows("redis://127.0.0.1:6379"));
        assert!(!v6.allows("redis://127.0.0.2:6379"));
        // A seed list rendered into one entry allows none of its nodes (see spin.toml).
        let list = hosts(&["redis://10.0.0.1:7000,10.0.0.2:7000"]);
        assert!(!list.allows("redis://10.0.0.1:7000"));
        assert!(!list.allows("redis://10.0.0.2:7000"));

        let any = hosts(&["*://*:*"]);
        assert!(any.allows("redis://anything:1"));
        assert!(!AllowedHosts::default().allows("redis://127.0.0.1:6379"));
    }
}
