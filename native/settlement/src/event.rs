//! Stream entries and the events they carry: parsed from the string field maps the core's
//! Redis functions `XADD` to each partition stream.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use flashcart_core::keys::Partition;

/// Why a stream entry could not be read as an event. Such an entry is retried and finally
/// dead-lettered; it never stops the events behind it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// A field every event of this type carries is missing.
    #[error("field `{0}` is missing")]
    Missing(&'static str),
    /// A field is there but does not parse.
    #[error("field `{field}` is invalid: {value:?}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What it held.
        value: String,
    },
    /// The `type` is not one settlement knows.
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    /// A stream entry id that is not `<ms>-<seq>`.
    #[error("invalid stream entry id {0:?}")]
    EntryId(String),
}

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
    type Err = EventError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || EventError::EntryId(s.to_owned());
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

    /// A field's value.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed event: what every event carries, plus its typed body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Decision time, unix ms.
    pub at: i64,
    /// The SKU it concerns.
    pub sku: String,
    /// The typed body.
    pub body: Body,
}

/// Why a reservation ended without an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseReason {
    /// Its time ran out.
    Expired,
    /// The buyer let it go.
    Cancelled,
}

impl ReleaseReason {
    /// The reservation state it leads to.
    pub fn state(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The typed event bodies, one per event type of the core's contract.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    missing_docs,
    reason = "fields are named as the stream fields, documented in the core's contract"
)]
pub enum Body {
    SkuLoaded {
        stock: i64,
        segs: i64,
        /// `(segment, initial units)` for the segments living in this partition.
        segments: Vec<(i64, i64)>,
        price: i64,
        currency: String,
        start: i64,
        end: i64,
        limit: i64,
        ttl: i64,
        paywin: i64,
        /// The fingerprint of the terms as loaded (absent in events written before it was
        /// carried): what a restore writes back so a second load of the same terms stays
        /// `unchanged`.
        fp: Option<String>,
    },
    ReservationCreated {
        rsv: String,
        seg: i64,
        qty: i64,
        buyer: String,
        expires: i64,
    },
    ReservationReleased {
        rsv: String,
        seg: i64,
        qty: i64,
        buyer: String,
        reason: ReleaseReason,
    },
    OrderCreated {
        ord: String,
        rsv: String,
        seg: i64,
        qty: i64,
        buyer: String,
        amount: i64,
        currency: String,
        deadline: i64,
    },
    OrderPaid {
        ord: String,
        seg: i64,
        qty: i64,
        psp_event: String,
        amount: i64,
        currency: String,
    },
    OrderCancelled {
        ord: String,
        seg: i64,
        qty: i64,
        reason: String,
    },
    OrderPaidAfterCancel {
        ord: String,
        qty: i64,
        psp_event: String,
        amount: i64,
        currency: String,
    },
    OrderRefundRequested {
        ord: String,
    },
    OrderRefunded {
        ord: String,
    },
    PaymentRejected {
        ord: String,
        psp_event: String,
        reason: String,
        amount: i64,
        currency: String,
    },
}

impl Body {
    /// The event type as written in the stream.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::SkuLoaded { .. } => "sku.loaded",
            Self::ReservationCreated { .. } => "reservation.created",
            Self::ReservationReleased { .. } => "reservation.released",
            Self::OrderCreated { .. } => "order.created",
            Self::OrderPaid { .. } => "order.paid",
            Self::OrderCancelled { .. } => "order.cancelled",
            Self::OrderPaidAfterCancel { .. } => "order.paid_after_cancel",
            Self::OrderRefundRequested { .. } => "order.refund_requested",
            Self::OrderRefunded { .. } => "order.refunded",
            Self::PaymentRejected { .. } => "payment.rejected",
        }
    }
}

struct Fields<'a>(HashMap<&'a str, &'a str>);

impl<'a> Fields<'a> {
    fn text(&self, name: &'static str) -> Result<String, EventError> {
        self.0
            .get(name)
            .map(|v| (*v).to_owned())
            .ok_or(EventError::Missing(name))
    }

    fn int(&self, name: &'static str) -> Result<i64, EventError> {
        let v = self.0.get(name).ok_or(EventError::Missing(name))?;
        v.parse().map_err(|_| EventError::Invalid {
            field: name,
            value: (*v).to_owned(),
        })
    }

    fn nonempty(&self, name: &'static str) -> Result<String, EventError> {
        let v = self.text(name)?;
        if v.is_empty() {
            return Err(EventError::Invalid {
                field: name,
                value: v,
            });
        }
        Ok(v)
    }

    fn qty(&self) -> Result<i64, EventError> {
        let q = self.int("qty")?;
        if q <= 0 {
            return Err(EventError::Invalid {
                field: "qty",
                value: q.to_string(),
            });
        }
        Ok(q)
    }
}

fn parse_segments(value: &str) -> Result<Vec<(i64, i64)>, EventError> {
    if value.is_empty() {
        return Ok(Vec::new());
    }
    value
        .split(',')
        .map(|pair| {
            let bad = || EventError::Invalid {
                field: "segments",
                value: value.to_owned(),
            };
            let (seg, initial) = pair.split_once(':').ok_or_else(bad)?;
            Ok((
                seg.trim().parse().map_err(|_| bad())?,
                initial.trim().parse().map_err(|_| bad())?,
            ))
        })
        .collect()
}

impl Event {
    /// Parses an entry's fields.
    ///
    /// # Errors
    /// When `type` is unknown or a field of that type is missing or malformed.
    pub fn parse(fields: &[(String, String)]) -> Result<Self, EventError> {
        let f = Fields(
            fields
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
        );
        let kind = f.text("type")?;
        let at = f.int("at")?;
        let sku = f.nonempty("sku")?;
        let body = match kind.as_str() {
            "sku.loaded" => Body::SkuLoaded {
                stock: f.int("stock")?,
                segs: f.int("segs")?,
                segments: parse_segments(&f.text("segments")?)?,
                price: f.int("price")?,
                currency: f.text("currency")?,
                start: f.int("start")?,
                end: f.int("end")?,
                limit: f.int("limit")?,
                ttl: f.int("ttl")?,
                paywin: f.int("paywin")?,
                fp: f.0.get("fp").map(|v| (*v).to_owned()),
            },
            "reservation.created" => Body::ReservationCreated {
                rsv: f.nonempty("rsv")?,
                seg: f.int("seg")?,
                qty: f.qty()?,
                buyer: f.text("buyer")?,
                expires: f.int("expires")?,
            },
            "reservation.released" => Body::ReservationReleased {
                rsv: f.nonempty("rsv")?,
                seg: f.int("seg")?,
                qty: f.qty()?,
                buyer: f.text("buyer")?,
                reason: match f.text("reason")?.as_str() {
                    "expired" => ReleaseReason::Expired,
                    "cancelled" => ReleaseReason::Cancelled,
                    other => {
                        return Err(EventError::Invalid {
                            field: "reason",
                            value: other.to_owned(),
                        });
                    }
                },
            },
            "order.created" => Body::OrderCreated {
                ord: f.nonempty("ord")?,
                rsv: f.nonempty("rsv")?,
                seg: f.int("seg")?,
                qty: f.qty()?,
                buyer: f.text("buyer")?,
                amount: f.int("amount")?,
                currency: f.text("currency")?,
                deadline: f.int("deadline")?,
            },
            "order.paid" => Body::OrderPaid {
                ord: f.nonempty("ord")?,
                seg: f.int("seg")?,
                qty: f.qty()?,
                psp_event: f.nonempty("psp_event")?,
                amount: f.int("amount")?,
                currency: f.text("currency")?,
            },
            "order.cancelled" => Body::OrderCancelled {
                ord: f.nonempty("ord")?,
                seg: f.int("seg")?,
                qty: f.qty()?,
                reason: f.text("reason")?,
            },
            "order.paid_after_cancel" => Body::OrderPaidAfterCancel {
                ord: f.nonempty("ord")?,
                qty: f.qty()?,
                psp_event: f.nonempty("psp_event")?,
                amount: f.int("amount")?,
                currency: f.text("currency")?,
            },
            "order.refund_requested" => Body::OrderRefundRequested {
                ord: f.nonempty("ord")?,
            },
            "order.refunded" => Body::OrderRefunded {
                ord: f.nonempty("ord")?,
            },
            "payment.rejected" => Body::PaymentRejected {
                ord: f.nonempty("ord")?,
                psp_event: f.nonempty("psp_event")?,
                reason: f.text("reason")?,
                amount: f.int("amount")?,
                currency: f.text("currency")?,
            },
            _ => return Err(EventError::UnknownType(kind)),
        };
        Ok(Self { at, sku, body })
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
    fn parses_sku_loaded_with_segments() {
        let e = Event::parse(&fields(&[
            ("type", "sku.loaded"),
            ("at", "10"),
            ("sku", "drop-1"),
            ("stock", "100"),
            ("segs", "4"),
            ("segments", "0:25,4:25"),
            ("price", "1999"),
            ("currency", "EUR"),
            ("start", "0"),
            ("end", "99"),
            ("limit", "2"),
            ("ttl", "600000"),
            ("paywin", "900000"),
        ]))
        .unwrap();
        assert_eq!(e.sku, "drop-1");
        match e.body {
            Body::SkuLoaded {
                segments, stock, ..
            } => {
                assert_eq!(segments, vec![(0, 25), (4, 25)]);
                assert_eq!(stock, 100);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn config_only_copy_has_no_segments() {
        let e = Event::parse(&fields(&[
            ("type", "sku.loaded"),
            ("at", "10"),
            ("sku", "s"),
            ("stock", "1"),
            ("segs", "1"),
            ("segments", ""),
            ("price", "1"),
            ("currency", "EUR"),
            ("start", "0"),
            ("end", "9"),
            ("limit", "0"),
            ("ttl", "1"),
            ("paywin", "1"),
        ]))
        .unwrap();
        assert!(matches!(e.body, Body::SkuLoaded { ref segments, .. } if segments.is_empty()));
    }

    #[test]
    fn rejects_unknown_types_and_bad_fields() {
        let unknown = fields(&[("type", "order.teleported"), ("at", "1"), ("sku", "s")]);
        assert_eq!(
            Event::parse(&unknown),
            Err(EventError::UnknownType("order.teleported".into()))
        );
        let missing = fields(&[("type", "order.refunded"), ("at", "1"), ("sku", "s")]);
        assert_eq!(Event::parse(&missing), Err(EventError::Missing("ord")));
        let zero = fields(&[
            ("type", "reservation.created"),
            ("at", "1"),
            ("sku", "s"),
            ("rsv", "r"),
            ("seg", "0"),
            ("qty", "0"),
            ("buyer", "b"),
            ("expires", "5"),
        ]);
        assert!(matches!(
            Event::parse(&zero),
            Err(EventError::Invalid { field: "qty", .. })
        ));
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
