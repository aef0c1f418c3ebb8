//! Stream entries as settlement reads them: where an entry sits in its partition's stream and
//! which identity the ledger keys it by. The event an entry carries is the core's
//! ([`flashcart_core::event::Event`]); this module knows only the transport around it.

use std::fmt;
use std::str::FromStr;

use flashcart_core::event::{Event, EventError};
use flashcart_core::keys::Partition;

/// A stream entry id that is not `<ms>-<seq>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid stream entry id {0:?}")]
pub struct EntryIdError(String);

/// A stream entry id, `<ms>-<seq>`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence part.
    pub seq: u64,
}

impl EntryId {
    /// The smallest id greater than this one: what `XTRIM MINID` takes to keep everything
    /// after `self`.
    pub fn next(self) -> Self {
        match self.seq.checked_add(1) {
            Some(seq) => Self { ms: self.ms, seq },
            None => Self {
                ms: self.ms + 1,
                seq: 0,
            },
        }
    }

    /// `ms` as a SQL integer (stream ids are far below `i64::MAX`).
    pub(crate) fn ms_sql(self) -> i64 {
        i64::try_from(self.ms).unwrap_or(i64::MAX)
    }

    /// `seq` as a SQL integer.
    pub(crate) fn seq_sql(self) -> i64 {
        i64::try_from(self.seq).unwrap_or(i64::MAX)
    }
}

impl FromStr for EntryId {
    type Err = EntryIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || EntryIdError(s.to_owned());
        let (ms, seq) = s.split_once('-').ok_or_else(bad)?;
        Ok(Self {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// The field a re-queued (dead-letter retried) entry carries: the id it first had, which
/// stays its identity so a retry can never apply twice.
pub const ORIGIN_FIELD: &str = "origin";

/// One stream entry as read from a partition stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The partition whose stream holds it.
    pub partition: Partition,
    /// Its id in that stream (what `XACK` takes).
    pub id: EntryId,
    /// Its fields, in stream order.
    pub fields: Vec<(String, String)>,
}

impl Entry {
    /// The event's identity for idempotent apply: (partition, first stream id). A dead-letter
    /// retry re-adds the entry with its first id in [`ORIGIN_FIELD`].
    pub fn identity(&self) -> EntryId {
        self.field(ORIGIN_FIELD)
            .and_then(|o| o.parse().ok())
            .unwrap_or(self.id)
    }

    /// The event it carries, parsed by the core.
    ///
    /// # Errors
    /// When it is not a valid event (see [`EventError`]).
    pub fn event(&self) -> Result<Event, EventError> {
        Event::parse(self.fields.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// A field's value.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn entry_ids_order_and_step() {
        let a: EntryId = "1700000000000-5".parse().unwrap();
        assert_eq!(a.to_string(), "1700000000000-5");
        assert_eq!(
            a.next(),
            EntryId {
                ms: 1_700_000_000_000,
                seq: 6
            }
        );
        assert!(a < "1700000000001-0".parse().unwrap());
        assert_eq!(
            EntryId {
                ms: 1,
                seq: u64::MAX
            }
            .next(),
            EntryId { ms: 2, seq: 0 }
        );
        assert!("17".parse::<EntryId>().is_err());
        assert!("a-b".parse::<EntryId>().is_err());
    }

    #[test]
    fn identity_prefers_origin() {
        let mut e = Entry {
            partition: Partition::new(3),
            id: "5-0".parse().unwrap(),
            fields: fields(&[("type", "order.refunded")]),
        };
        assert_eq!(e.identity(), "5-0".parse().unwrap());
        e.fields.push((ORIGIN_FIELD.into(), "2-1".into()));
        assert_eq!(e.identity(), "2-1".parse().unwrap());
    }
}
