//! A partition's settlement backlog, as an operator watches it during a drop: how many events
//! its stream holds, how far the settlement groups are behind, and how many events were
//! dead-lettered. Read with plain stream commands (`XLEN`, `XINFO GROUPS`), one partition at a
//! time; nothing here writes.

use serde::Serialize;

use crate::exec::{RedisExecutor, Value};
use crate::keys::Partition;

use super::{Inventory, Result};

/// One partition's backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PartitionBacklog {
    /// The partition.
    pub partition: u16,
    /// Events in the partition's stream (settled ones stay until they are trimmed).
    pub events: u64,
    /// Events not yet delivered to the slowest settlement group; `None` when no group reads
    /// the stream yet (settlement never ran) or Redis cannot tell (after a trim or a delete).
    pub settlement_lag: Option<u64>,
    /// Events delivered to a settlement group and not yet acknowledged, summed over groups.
    pub pending: u64,
    /// Events settlement gave up on, waiting in the partition's dead-letter stream.
    pub dead_letters: u64,
}

/// What `XINFO GROUPS` says about the groups reading a stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Groups {
    count: u64,
    /// The largest lag; `None` if any group's lag is unknown (or there is no group).
    lag: Option<u64>,
    pending: u64,
}

/// Reads the flattened reply of `XINFO GROUPS`: each group is a map of (field, value) pairs,
/// so fields sit at even positions. A group's `lag` is nil when Redis cannot compute it.
fn groups(reply: &[Value]) -> Groups {
    let mut groups = Groups::default();
    let mut lag_known = true;
    let mut lag = 0;
    for pair in reply.chunks_exact(2) {
        let field = pair[0].text().unwrap_or_default();
        match field.as_str() {
            "name" => groups.count += 1,
            "pending" => groups.pending += non_negative(&pair[1]).unwrap_or(0),
            "lag" => match non_negative(&pair[1]) {
                Some(n) => lag = lag.max(n),
                None => lag_known = false,
            },
            _ => {}
        }
    }
    groups.lag = (groups.count > 0 && lag_known).then_some(lag);
    groups
}

fn non_negative(value: &Value) -> Option<u64> {
    value.int().and_then(|n| u64::try_from(n).ok())
}

impl<E: RedisExecutor> Inventory<E> {
    /// Partition `p`'s backlog: three reads on the partition's node (four when its stream
    /// is empty).
    ///
    /// # Errors
    /// When Redis cannot be reached or refuses a read.
    pub async fn backlog(&self, p: Partition) -> Result<PartitionBacklog> {
        let stream = self.schema.events(p);
        let count = |values: Vec<Value>| values.first().and_then(non_negative).unwrap_or(0);
        let events = count(self.exec.execute("XLEN", vec![stream.clone()]).await?);
        // A stream that does not exist has no groups (XINFO answers an error for it); an
        // empty one may have a group, caught up.
        let exists =
            events > 0 || count(self.exec.execute("EXISTS", vec![stream.clone()]).await?) > 0;
        let groups = if !exists {
            Groups::default()
        } else {
            groups(
                &self
                    .exec
                    .execute("XINFO", vec!["GROUPS".into(), stream])
                    .await?,
            )
        };
        let dead_letters = count(
            self.exec
                .execute("XLEN", vec![self.schema.dead_letters(p)])
                .await?,
        );
        Ok(PartitionBacklog {
            partition: p.index(),
            events,
            settlement_lag: groups.lag,
            pending: groups.pending,
            dead_letters,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }

    fn group(name: &str, pending: i64, lag: Value) -> Vec<Value> {
        vec![
            text("name"),
            text(name),
            text("consumers"),
            Value::Int(1),
            text("pending"),
            Value::Int(pending),
            text("last-delivered-id"),
            text("1-0"),
            text("entries-read"),
            Value::Int(7),
            text("lag"),
            lag,
        ]
    }

    #[test]
    fn the_slowest_group_is_the_lag_and_pending_adds_up() {
        let mut reply = group("settlement", 2, Value::Int(5));
        reply.extend(group("audit", 1, Value::Int(9)));
        assert_eq!(
            groups(&reply),
            Groups {
                count: 2,
                lag: Some(9),
                pending: 3
            }
        );
    }

    #[test]
    fn an_unknown_lag_or_no_group_is_not_a_zero_lag() {
        assert_eq!(groups(&group("settlement", 0, Value::Nil)).lag, None);
        assert_eq!(groups(&[]).lag, None);
        // A group called "lag" is a name, not the field.
        assert_eq!(groups(&group("lag", 0, Value::Int(4))).lag, Some(4));
    }
}
