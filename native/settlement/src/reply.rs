//! Reading stream replies (`XREADGROUP`, `XAUTOCLAIM`, `XCLAIM`, `XRANGE`, `XINFO GROUPS`,
//! `XPENDING`) from raw values, in RESP2 and RESP3 shapes alike. Raw, because an entry that
//! was deleted while pending comes back with nil fields, which typed replies reject.

use redis::Value;

/// A reply of the wrong shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected reply to {command}: {detail}")]
pub struct ReplyError {
    /// The command.
    pub command: &'static str,
    /// What was wrong.
    pub detail: String,
}

fn err(command: &'static str, v: &Value) -> ReplyError {
    ReplyError {
        command,
        detail: format!("{v:?}"),
    }
}

/// A value as text (bulk, simple or verbatim string; integers in decimal).
pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Okay => Some("OK".to_owned()),
        _ => None,
    }
}

/// A value as an integer.
pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other).and_then(|t| t.parse().ok()),
    }
}

/// The elements of an array (or set / push); nil is empty.
pub(crate) fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        Value::Push { data, .. } => data,
        _ => &[],
    }
}

/// Key/value pairs of a map, or of a flat `[k, v, k, v]` array.
pub(crate) fn pairs(v: &Value) -> Vec<(String, &Value)> {
    match v {
        Value::Map(m) => m
            .iter()
            .filter_map(|(k, v)| text(k).map(|k| (k, v)))
            .collect(),
        other => items(other)
            .chunks(2)
            .filter_map(|c| match c {
                [k, v] => text(k).map(|k| (k, v)),
                _ => None,
            })
            .collect(),
    }
}

/// One stream entry: its id and fields; `None` fields when it was deleted while pending.
pub(crate) type RawEntry = (String, Option<Vec<(String, String)>>);

/// Entries of one stream: `[[id, [f, v, …] | nil], …]`.
pub(crate) fn entries(command: &'static str, v: &Value) -> Result<Vec<RawEntry>, ReplyError> {
    items(v)
        .iter()
        .map(|e| match items(e) {
            [id, fields] => {
                let id = text(id).ok_or_else(|| err(command, e))?;
                let fields = match fields {
                    Value::Nil => None,
                    f => Some(
                        pairs(f)
                            .into_iter()
                            .map(|(k, v)| (k, text(v).unwrap_or_default()))
                            .collect(),
                    ),
                };
                Ok((id, fields))
            }
            _ => Err(err(command, e)),
        })
        .collect()
}

/// `XREADGROUP`/`XREAD` over several streams: `(stream key, entries)`; nil means nothing.
pub(crate) fn read_streams(v: &Value) -> Result<Vec<(String, Vec<RawEntry>)>, ReplyError> {
    const CMD: &str = "XREADGROUP";
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Map(m) => m
            .iter()
            .map(|(k, e)| Ok((text(k).ok_or_else(|| err(CMD, k))?, entries(CMD, e)?)))
            .collect(),
        other => items(other)
            .iter()
            .map(|s| match items(s) {
                [k, e] => Ok((text(k).ok_or_else(|| err(CMD, k))?, entries(CMD, e)?)),
                _ => Err(err(CMD, s)),
            })
            .collect(),
    }
}

/// `XAUTOCLAIM`: `(next cursor, claimed entries)`.
pub(crate) fn autoclaim(v: &Value) -> Result<(String, Vec<RawEntry>), ReplyError> {
    const CMD: &str = "XAUTOCLAIM";
    match items(v) {
        [cursor, claimed, ..] => Ok((
            text(cursor).ok_or_else(|| err(CMD, v))?,
            entries(CMD, claimed)?,
        )),
        _ => Err(err(CMD, v)),
    }
}

/// Our group's row of `XINFO GROUPS`: pending count, last delivered id, lag (if known).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct GroupInfo {
    pub(crate) pending: i64,
    pub(crate) last_delivered: String,
    pub(crate) lag: Option<i64>,
}

pub(crate) fn group_info(v: &Value, group: &str) -> Option<GroupInfo> {
    items(v).iter().find_map(|g| {
        let fields = pairs(g);
        let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
        if get("name").and_then(text).as_deref() != Some(group) {
            return None;
        }
        Some(GroupInfo {
            pending: get("pending").and_then(int).unwrap_or(0),
            last_delivered: get("last-delivered-id")
                .and_then(text)
                .unwrap_or_else(|| "0-0".to_owned()),
            lag: get("lag").and_then(int),
        })
    })
}

/// `XPENDING key group` summary: the lowest pending id, if any is pending.
pub(crate) fn lowest_pending(v: &Value) -> Option<String> {
    match items(v) {
        [count, min, ..] if int(count).unwrap_or(0) > 0 => text(min),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn reads_resp2_streams_with_deleted_entries() {
        let v = Value::Array(vec![Value::Array(vec![
            bulk("{fc:p00}:events"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("type"), bulk("x")]),
                ]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let streams = read_streams(&v).unwrap();
        assert_eq!(streams.len(), 1);
        assert_eq!(
            streams[0].1[0],
            ("1-0".into(), Some(vec![("type".into(), "x".into())]))
        );
        assert_eq!(streams[0].1[1], ("2-0".into(), None));
        assert!(read_streams(&Value::Nil).unwrap().is_empty());
    }

    #[test]
    fn reads_group_info_flat_and_map() {
        let flat = Value::Array(vec![Value::Array(vec![
            bulk("name"),
            bulk("settlement"),
            bulk("pending"),
            Value::Int(3),
            bulk("last-delivered-id"),
            bulk("5-1"),
            bulk("lag"),
            Value::Nil,
        ])]);
        let info = group_info(&flat, "settlement").unwrap();
        assert_eq!(
            info,
            GroupInfo {
                pending: 3,
                last_delivered: "5-1".into(),
                lag: None
            }
        );
        assert!(group_info(&flat, "other").is_none());
        let map = Value::Array(vec![Value::Map(vec![
            (bulk("name"), bulk("g")),
            (bulk("lag"), Value::Int(7)),
        ])]);
        assert_eq!(group_info(&map, "g").unwrap().lag, Some(7));
    }

    #[test]
    fn lowest_pending_only_when_something_is() {
        let none = Value::Array(vec![Value::Int(0), Value::Nil, Value::Nil, Value::Nil]);
        assert_eq!(lowest_pending(&none), None);
        let some = Value::Array(vec![Value::Int(2), bulk("3-0"), bulk("9-0"), Value::Nil]);
        assert_eq!(lowest_pending(&some), Some("3-0".into()));
    }
}
