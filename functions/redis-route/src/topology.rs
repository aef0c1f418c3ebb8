//! The slot → master map, read from `CLUSTER NODES`.
//!
//! `CLUSTER NODES` answers one bulk string, which survives Spin's `execute` (it flattens
//! nested replies, which would lose `CLUSTER SHARDS`' structure). One line per node:
//! `<id> <ip:port@bus[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>…`.

use crate::slot::SLOTS;

/// A node's address, `host:port`.
pub type NodeAddress = String;

/// Which master serves which slots. Only masters that are not failed and have an address
/// serve slots; replicas and failed nodes are still listed in [`Topology::members`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Slot ranges (inclusive) and the index of their master in `masters`, sorted by start.
    ranges: Vec<(u16, u16, usize)>,
    masters: Vec<NodeAddress>,
}

/// Why a `CLUSTER NODES` answer could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// A line did not have the fields every node line has.
    #[error("unreadable CLUSTER NODES line: {0:?}")]
    Line(String),
    /// No master serves any slot (the cluster is not set up).
    #[error("no master serves any slot")]
    NoSlots,
}

impl Topology {
    /// Parses a `CLUSTER NODES` answer from the node at `asked` (a node whose address is
    /// empty, as a lone node reports itself, is `asked`).
    ///
    /// # Errors
    /// When a line is malformed or no master serves a slot.
    pub fn parse_nodes(text: &str, asked: &str) -> Result<Self, TopologyError> {
        let mut topology = Topology {
            ranges: Vec::new(),
            masters: Vec::new(),
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return Err(TopologyError::Line(line.to_owned()));
            }
            let flags: Vec<&str> = fields[2].split(',').collect();
            let serving = flags.contains(&"master")
                && !flags
                    .iter()
                    .any(|f| matches!(*f, "fail" | "noaddr" | "handshake"));
            if !serving || fields.len() == 8 {
                continue;
            }
            let address = node_address(fields[1], asked)
                .ok_or_else(|| TopologyError::Line(line.to_owned()))?;
            let index = topology.master_index(address);
            for slots in &fields[8..] {
                // `[slot->-id]` / `[slot-<-id]`: a migration in progress, not ownership.
                if slots.starts_with('[') {
                    continue;
                }
                let (start, end) = slots.split_once('-').unwrap_or((slots, slots));
                match (start.parse::<u16>(), end.parse::<u16>()) {
                    (Ok(s), Ok(e)) if s <= e && e < SLOTS => topology.ranges.push((s, e, index)),
                    _ => return Err(TopologyError::Line(line.to_owned())),
                }
            }
        }
        if topology.ranges.is_empty() {
            return Err(TopologyError::NoSlots);
        }
        topology.ranges.sort_unstable();
        Ok(topology)
    }

    fn master_index(&mut self, address: NodeAddress) -> usize {
        match self.masters.iter().position(|m| *m == address) {
            Some(i) => i,
            None => {
                self.masters.push(address);
                self.masters.len() - 1
            }
        }
    }

    /// The master serving `slot`, if any does.
    pub fn master_of(&self, slot: u16) -> Option<&str> {
        let at = self.ranges.partition_point(|&(start, _, _)| start <= slot);
        let &(_, end, index) = self.ranges.get(at.checked_sub(1)?)?;
        (slot <= end).then(|| self.masters[index].as_str())
    }

    /// The masters that serve slots, in the order they were listed.
    pub fn masters(&self) -> &[NodeAddress] {
        &self.masters
    }

    /// Records that `slot` moved to `address` (a `MOVED` answer the map did not know yet).
    pub fn assign(&mut self, slot: u16, address: &str) {
        let index = self.master_index(address.to_owned());
        let mut ranges = Vec::with_capacity(self.ranges.len() + 2);
        for &(start, end, owner) in &self.ranges {
            if slot < start || slot > end {
                ranges.push((start, end, owner));
                continue;
            }
            if start < slot {
                ranges.push((start, slot - 1, owner));
            }
            if slot < end {
                ranges.push((slot + 1, end, owner));
            }
        }
        ranges.push((slot, slot, index));
        ranges.sort_unstable();
        self.ranges = ranges;
    }

    /// The map as text for the node's key-value store: one `start end host:port` per line.
    pub fn encode(&self) -> String {
        self.ranges
            .iter()
            .map(|&(s, e, i)| format!("{s} {e} {}\n", self.masters[i]))
            .collect()
    }

    /// A map written by [`Topology::encode`]; `None` when the text is not one.
    pub fn decode(text: &str) -> Option<Self> {
        let mut topology = Topology {
            ranges: Vec::new(),
            masters: Vec::new(),
        };
        for line in text.lines() {
            let mut fields = line.split(' ');
            let start = fields.next()?.parse().ok()?;
            let end = fields.next()?.parse().ok()?;
            let address = fields.next()?;
            if fields.next().is_some() || start > end || end >= SLOTS || address.is_empty() {
                return None;
            }
            let index = topology.master_index(address.to_owned());
            topology.ranges.push((start, end, index));
        }
        topology.ranges.sort_unstable();
        (!topology.ranges.is_empty()).then_some(topology)
    }
}

/// `ip:port` from `ip:port@bus[,hostname]`; an empty ip is the node that was asked.
fn node_address(field: &str, asked: &str) -> Option<NodeAddress> {
    let address = field.split(['@', ',']).next()?;
    let (host, port) = address.rsplit_once(':')?;
    port.parse::<u16>().ok().filter(|p| *p != 0)?;
    if host.is_empty() {
        Some(asked.to_owned())
    } else {
        Some(address.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Three masters, one replica, one failed master, a migration in progress (abridged ids).
    const NODES: &str = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460 [5461->-b2]
b2 127.0.0.1:7002@17002,node-b master - 0 1426238316232 2 connected 5461-10922 [5461-<-a1]
c3 127.0.0.1:7003@17003 master - 0 1426238317239 3 connected 10923-16383
d4 127.0.0.1:7004@17004 slave c3 0 1426238317239 3 connected
e5 127.0.0.1:7005@17005 master,fail - 0 1426238317239 5 disconnected
";

    #[test]
    fn reads_masters_and_their_slots() {
        let t = Topology::parse_nodes(NODES, "127.0.0.1:7001").expect("parses");
        assert_eq!(
            t.masters(),
            ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
        );
        assert_eq!(t.master_of(0), Some("127.0.0.1:7001"));
        assert_eq!(t.master_of(5460), Some("127.0.0.1:7001"));
        assert_eq!(t.master_of(5461), Some("127.0.0.1:7002"));
        assert_eq!(t.master_of(16383), Some("127.0.0.1:7003"));
        assert_eq!(t.master_of(16384), None);
    }

    #[test]
    fn a_lone_node_is_the_one_asked_and_gaps_have_no_master() {
        let t = Topology::parse_nodes(
            "f1 :0@10000 myself,master - 0 0 0 connected 100-200\n",
            "10.0.0.9:6379",
        );
        assert_eq!(
            t,
            Err(TopologyError::Line(
                "f1 :0@10000 myself,master - 0 0 0 connected 100-200".into()
            ))
        );
        let t = Topology::parse_nodes(
            "f1 :7000@17000 myself,master - 0 0 0 connected 100-200 300\n",
            "10.0.0.9:7000",
        )
        .expect("parses");
        assert_eq!(t.master_of(150), Some("10.0.0.9:7000"));
        assert_eq!(t.master_of(300), Some("10.0.0.9:7000"));
        assert_eq!(t.master_of(99), None);
        assert_eq!(t.master_of(250), None);
        assert_eq!(
            Topology::parse_nodes("f1 :0@10000 myself,master - 0 0 0 connected\n", "x:1"),
            Err(TopologyError::NoSlots)
        );
        assert!(Topology::parse_nodes("garbage\n", "x:1").is_err());
    }

    #[test]
    fn a_moved_slot_is_reassigned_and_the_map_round_trips() {
        let mut t = Topology::parse_nodes(NODES, "127.0.0.1:7001").expect("parses");
        t.assign(5461, "127.0.0.1:7001");
        t.assign(100, "127.0.0.1:7009");
        assert_eq!(t.master_of(5461), Some("127.0.0.1:7001"));
        assert_eq!(t.master_of(5462), Some("127.0.0.1:7002"));
        assert_eq!(t.master_of(99), Some("127.0.0.1:7001"));
        assert_eq!(t.master_of(100), Some("127.0.0.1:7009"));
        assert_eq!(t.master_of(101), Some("127.0.0.1:7001"));
        let decoded = Topology::decode(&t.encode()).expect("decodes");
        for slot in [0, 99, 100, 101, 5460, 5461, 5462, 10922, 16383] {
            assert_eq!(decoded.master_of(slot), t.master_of(slot), "slot {slot}");
        }
        assert_eq!(Topology::decode(""), None);
        assert_eq!(Topology::decode("1 2"), None);
        assert_eq!(Topology::decode("5 2 a:1"), None);
    }
}
