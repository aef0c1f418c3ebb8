//! The seed list: where a component first reaches Redis.

/// A node a component may open: the URL it opens (`redis://[user:pass@]host:port`) and the
/// `host:port` the cluster calls it by.
#[derive(Clone, PartialEq, Eq)]
pub struct Node {
    url: String,
    address: String,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: only the address is printed.
        f.write_str(&self.address)
    }
}

impl Node {
    /// The URL to open.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `host:port`.
    pub fn address(&self) -> &str {
        &self.address
    }
}

/// An entry of the seed list that is not `[redis://][user:pass@]host[:port][/db]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("redis_address: {0:?} is not host:port or redis://host:port")]
pub struct SeedError(pub String);

/// The seed nodes, from `redis_address` (comma-separated), and how to open nodes the cluster
/// names (with the first seed's scheme and credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seeds {
    nodes: Vec<Node>,
    /// `scheme://[userinfo@]` of the first seed.
    prefix: String,
}

impl Seeds {
    /// Parses a comma-separated list of `host:port` or `redis://…` entries. A missing port is
    /// 6379, as in Spin.
    ///
    /// # Errors
    /// When the list is empty or an entry has no host or a bad port.
    pub fn parse(list: &str) -> Result<Self, SeedError> {
        let mut nodes = Vec::new();
        let mut prefix = None;
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let url = if entry.contains("://") {
                entry.to_owned()
            } else {
                format!("redis://{entry}")
            };
            let (scheme, rest) = url.split_once("://").unwrap_or_default();
            let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
            let (userinfo, host_port) = match authority.rsplit_once('@') {
                Some((user, hp)) => (format!("{user}@"), hp),
                None => (String::new(), authority),
            };
            let address = match host_port.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                    host_port.to_owned()
                }
                None if !host_port.is_empty() => format!("{host_port}:6379"),
                _ => return Err(SeedError(entry.to_owned())),
            };
            prefix.get_or_insert_with(|| format!("{scheme}://{userinfo}"));
            nodes.push(Node { url, address });
        }
        let prefix = prefix.ok_or_else(|| SeedError(list.to_owned()))?;
        Ok(Self { nodes, prefix })
    }

    /// The seeds, in the order given.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node the cluster calls `address` (`host:port`): a seed's URL when it is one, else
    /// the first seed's scheme and credentials with that address.
    pub fn node(&self, address: &str) -> Node {
        self.nodes
            .iter()
            .find(|n| n.address == address)
            .cloned()
            .unwrap_or_else(|| Node {
                url: format!("{}{address}", self.prefix),
                address: address.to_owned(),
            })
    }

    /// Whether the list names one node only.
    pub fn is_single(&self) -> bool {
        self.nodes.len() == 1
    }

    /// The list as given, normalised (to tell a cached map's seeds from ours).
    pub fn fingerprint(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.address.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_addresses_and_urls() {
        let seeds = Seeds::parse(" 10.0.0.1:7000, redis://u:p@10.0.0.2:7001/0 ,db.internal")
            .expect("parses");
        let got: Vec<(&str, &str)> = seeds
            .nodes()
            .iter()
            .map(|n| (n.url(), n.address()))
            .collect();
        assert_eq!(
            got,
            [
                ("redis://10.0.0.1:7000", "10.0.0.1:7000"),
                ("redis://u:p@10.0.0.2:7001/0", "10.0.0.2:7001"),
                ("redis://db.internal", "db.internal:6379"),
            ]
        );
        assert_eq!(
            seeds.node("10.0.0.2:7001").url(),
            "redis://u:p@10.0.0.2:7001/0"
        );
        assert_eq!(seeds.node("10.0.0.9:7005").url(), "redis://10.0.0.9:7005");
        let creds = Seeds::parse("rediss://u:p@a:1").expect("parses");
        assert_eq!(creds.node("b:2").url(), "rediss://u:p@b:2");
        assert_eq!(format!("{:?}", creds.nodes()[0]), "a:1");
        assert!(Seeds::parse("127.0.0.1:6379").expect("parses").is_single());
    }

    #[test]
    fn refuses_what_is_not_an_address() {
        for bad in ["", " , ", "host:port", ":7000", "a:1,b:99999"] {
            assert!(Seeds::parse(bad).is_err(), "{bad:?}");
        }
    }
}
