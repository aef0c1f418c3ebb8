//! Dead-lettered entries: list them, put them back on their stream, or drop them
//! (`flashcart dlq list|retry|drop`).
//!
//! A retried entry is re-added to its partition's event stream with its first id in the
//! `origin` field; settlement keys it by that id, so even a retry of an event that had been
//! applied after all can never apply twice.

use std::fmt;
use std::str::FromStr;

use flashcart_core::functions::{self, recovery::FenceState};
use flashcart_core::keys::{KeySchema, Partition};
use redis::aio::ConnectionLike;

use crate::consumer::dead_letter_key;
use crate::entry::{EntryId, ORIGIN_FIELD};
use crate::reply;
use crate::{Error, Result};

/// A dead-letter entry's address: partition and id in that partition's dead-letter stream,
/// written `p07/1700000000000-0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeadLetterId {
    /// The partition.
    pub partition: Partition,
    /// The id in `{fc:pNN}:dlq`.
    pub id: EntryId,
}

impl fmt::Display for DeadLetterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.partition, self.id)
    }
}

impl FromStr for DeadLetterId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Invalid(format!(
                "dead-letter id {s:?} must look like p07/1700000000000-0"
            ))
        };
        let (p, id) = s.split_once('/').ok_or_else(bad)?;
        let p: u16 = p
            .strip_prefix('p')
            .and_then(|p| p.parse().ok())
            .ok_or_else(bad)?;
        Ok(Self {
            partition: Partition::new(p),
            id: id.parse().map_err(|_| bad())?,
        })
    }
}

/// One dead-lettered entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Where it is.
    pub id: DeadLetterId,
    /// Its id in the event stream when it failed.
    pub entry: String,
    /// The last error.
    pub error: String,
    /// How often it failed.
    pub failures: u32,
    /// The event's own fields (without the `dlq.*` bookkeeping).
    pub fields: Vec<(String, String)>,
}

impl DeadLetter {
    /// The event type, if it has one.
    pub fn event_type(&self) -> &str {
        self.fields
            .iter()
            .find(|(k, _)| k == "type")
            .map_or("", |(_, v)| v.as_str())
    }
}

fn dead_letter(p: Partition, id: String, fields: Vec<(String, String)>) -> Result<DeadLetter> {
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    Ok(DeadLetter {
        id: DeadLetterId {
            partition: p,
            id: id.parse()?,
        },
        entry: get("dlq.entry"),
        error: get("dlq.error"),
        failures: get("dlq.failures").parse().unwrap_or(0),
        fields: fields
            .iter()
            .filter(|(k, _)| !k.starts_with("dlq."))
            .cloned()
            .collect(),
    })
}

/// Every dead-lettered entry of every partition, oldest first per partition, at most `limit`.
///
/// # Errors
/// When Redis fails.
pub async fn list<C: ConnectionLike + Send>(
    redis: &mut C,
    schema: &KeySchema,
    limit: usize,
) -> Result<Vec<DeadLetter>> {
    let mut out = Vec::new();
    for p in schema.partitions() {
        if out.len() >= limit {
            break;
        }
        let value: redis::Value = redis::cmd("XRANGE")
            .arg(dead_letter_key(p))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(limit - out.len())
            .query_async(redis)
            .await?;
        for (id, fields) in reply::entries("XRANGE", &value)? {
            out.push(dead_letter(p, id, fields.unwrap_or_default())?);
        }
    }
    Ok(out)
}

async fn get<C: ConnectionLike + Send>(redis: &mut C, id: DeadLetterId) -> Result<DeadLetter> {
    let key = dead_letter_key(id.partition);
    let value: redis::Value = redis::cmd("XRANGE")
        .arg(&key)
        .arg(id.id.to_string())
        .arg(id.id.to_string())
        .query_async(redis)
        .await?;
    match reply::entries("XRANGE", &value)?.into_iter().next() {
        Some((entry, Some(fields))) => dead_letter(id.partition, entry, fields),
        _ => Err(Error::Invalid(format!("no dead letter {id}"))),
    }
}

/// Puts a dead-lettered entry back on its event stream (keeping its identity in `origin`) and
/// removes it from the dead-letter stream, in one `MULTI`. Returns the new stream id.
///
/// # Errors
/// When there is no such entry or Redis fails.
pub async fn retry<C: ConnectionLike + Send>(
    redis: &mut C,
    schema: &KeySchema,
    id: DeadLetterId,
) -> Result<String> {
    // A new entry would move the stream's id past a loss the fence is waiting to check.
    // A state that cannot be read (no library loaded, say) does not refuse the retry.
    let check = FenceState {
        partition: id.partition,
    };
    let (command, line) = functions::command(&check, schema);
    let state: redis::RedisResult<redis::Value> =
        redis::cmd(command).arg(line).query_async(redis).await;
    let fenced = state
        .ok()
        .and_then(|v| flashcart_inventory::flat_reply(v).ok())
        .and_then(|values| functions::decode(&check, values).ok());
    if fenced == Some(true) {
        return Err(Error::Invalid(format!(
            "partition {} is fenced after a Redis restart: settlement must check it against \
             the ledger first (a restore waits for its dead letters to be dropped)",
            id.partition
        )));
    }
    let letter = get(redis, id).await?;
    let mut fields = letter.fields.clone();
    if !fields.iter().any(|(k, _)| k == ORIGIN_FIELD) {
        fields.push((ORIGIN_FIELD.to_owned(), letter.entry.clone()));
    }
    let (new_id, _): (String, i64) = redis::pipe()
        .atomic()
        .cmd("XADD")
        .arg(schema.events(id.partition))
        .arg("*")
        .arg(&fields)
        .cmd("XDEL")
        .arg(dead_letter_key(id.partition))
        .arg(id.id.to_string())
        .query_async(redis)
        .await?;
    Ok(new_id)
}

/// Deletes a dead-lettered entry for good. Returns whether it existed.
///
/// # Errors
/// When Redis fails.
pub async fn drop<C: ConnectionLike + Send>(redis: &mut C, id: DeadLetterId) -> Result<bool> {
    let n: i64 = redis::cmd("XDEL")
        .arg(dead_letter_key(id.partition))
        .arg(id.id.to_string())
        .query_async(redis)
        .await?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_ids_round_trip() {
        let id: DeadLetterId = "p07/1700000000000-3".parse().unwrap();
        assert_eq!(id.partition, Partition::new(7));
        assert_eq!(id.to_string(), "p07/1700000000000-3");
        assert!("07/1-0".parse::<DeadLetterId>().is_err());
        assert!("p07-1-0".parse::<DeadLetterId>().is_err());
    }
}
