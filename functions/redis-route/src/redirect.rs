//! What a failed command's message says about the cluster.
//!
//! Through `spin:redis` a server error reaches the component as `other(<message>)`, with no
//! code or kind to match (the client's own predicates stay on the host's side of the WIT
//! boundary). The redirect answers have a fixed shape in every client's rendering — Redis's
//! own `MOVED 15495 127.0.0.1:7413`, redis-rs 1.x `Moved: 15495 127.0.0.1:7413`, Spin 4.1's
//! `An error was signalled by the server - Moved: 15495 127.0.0.1:7413` — so they are read
//! from the message's words: the kind, then a slot number, then `host:port`.

/// A cluster's answer that the command belongs elsewhere, or cannot run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// `MOVED <slot> <host:port>`: the slot is served by that master now.
    Moved {
        /// The slot.
        slot: u16,
        /// Its master.
        address: String,
    },
    /// `ASK <slot> <host:port>`: this one command goes there, after `ASKING`.
    Ask {
        /// The slot.
        slot: u16,
        /// The importing node.
        address: String,
    },
    /// `TRYAGAIN`: the slot is being migrated and the command's keys are split.
    TryAgain,
    /// `CLUSTERDOWN`: the cluster cannot serve the slot now.
    ClusterDown,
}

impl Redirect {
    /// The redirect `message` carries, if any.
    pub fn parse(message: &str) -> Option<Self> {
        let words: Vec<&str> = message.split_whitespace().collect();
        for (i, word) in words.iter().enumerate() {
            let kind = word.trim_end_matches(':').to_ascii_uppercase();
            let target = || {
                let slot = words
                    .get(i + 1)?
                    .parse::<u16>()
                    .ok()
                    .filter(|s| *s < crate::slot::SLOTS)?;
                let address = words.get(i + 2)?.trim_end_matches([',', ')', '"']);
                address
                    .rsplit_once(':')
                    .filter(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())?;
                Some((slot, address.to_owned()))
            };
            match kind.as_str() {
                "MOVED" => {
                    if let Some((slot, address)) = target() {
                        return Some(Redirect::Moved { slot, address });
                    }
                }
                "ASK" => {
                    if let Some((slot, address)) = target() {
                        return Some(Redirect::Ask { slot, address });
                    }
                }
                "TRYAGAIN" => return Some(Redirect::TryAgain),
                "CLUSTERDOWN" => return Some(Redirect::ClusterDown),
                _ => {}
            }
        }
        None
    }
}

/// Whether `message` is a node's answer that it is not part of a cluster
/// (`ERR This instance has cluster support disabled`).
pub fn is_not_a_cluster(message: &str) -> bool {
    message
        .to_ascii_lowercase()
        .contains("cluster support disabled")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved(slot: u16, address: &str) -> Option<Redirect> {
        Some(Redirect::Moved {
            slot,
            address: address.into(),
        })
    }

    #[test]
    fn reads_every_client_rendering() {
        for message in [
            "MOVED 15495 127.0.0.1:7413",
            "Moved: 15495 127.0.0.1:7413",
            "An error was signalled by the server - Moved: 15495 127.0.0.1:7413",
            "Other(\"An error was signalled by the server - Moved: 15495 127.0.0.1:7413\")",
        ] {
            assert_eq!(
                Redirect::parse(message),
                moved(15495, "127.0.0.1:7413"),
                "{message}"
            );
        }
        assert_eq!(
            Redirect::parse("Ask: 3999 10.0.0.2:6380"),
            Some(Redirect::Ask {
                slot: 3999,
                address: "10.0.0.2:6380".into()
            })
        );
        assert_eq!(
            Redirect::parse(
                "An error was signalled by the server - TryAgain: Multiple keys request during rehashing of slot"
            ),
            Some(Redirect::TryAgain)
        );
        assert_eq!(
            Redirect::parse("CLUSTERDOWN The cluster is down"),
            Some(Redirect::ClusterDown)
        );
        assert_eq!(
            Redirect::parse("ClusterDown: Hash slot not served"),
            Some(Redirect::ClusterDown)
        );
    }

    #[test]
    fn other_errors_are_not_redirects() {
        for message in [
            "ERR Function not found",
            "ResponseError: ask the admin",
            "moved: not a slot",
            "Broken pipe (os error 32)",
            "ask 12",
            "MOVED 99999 127.0.0.1:1",
            "MOVED 1 nowhere",
        ] {
            assert_eq!(Redirect::parse(message), None, "{message}");
        }
        assert!(is_not_a_cluster(
            "An error was signalled by the server - ResponseError: This instance has cluster support disabled"
        ));
        assert!(!is_not_a_cluster("MOVED 1 a:1"));
    }
}
