//! The events the library appends to each partition's stream, in the same atomic call as
//! the decision they record: the one typed definition of the stream's contract.
//!
//! The table in [`events!`] below is that contract, written once: each kind's wire name and
//! its fields, named as on the stream, with their Rust type and how they are read and
//! written. [`Event::parse`] (what settlement reads the streams with) and [`Event::fields`]
//! (the fields as the Lua library writes them) are both generated from it. The inventory
//! tests drive every `XADD` of the library against a real redis-server and check that each
//! entry parses and writes back to exactly the fields the Lua wrote, so a field the Lua adds,
//! drops or renames fails there, not in a ledger.
//!
//! Parsing ignores fields it does not know: a stream entry can carry transport fields beside
//! the event (settlement's `origin` on a dead letter put back), and an older reader keeps
//! working while a newer library adds an optional field.

use std::fmt;

use crate::inventory::{CancelReason, ReleaseReason};
use crate::order::{OrderEvent, OrderState};
use crate::recovery::ReservationState;

/// Why a stream entry is not a valid event. Settlement retries such an entry and finally
/// dead-letters it; it never stops the events behind it.
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
    /// The `type` is not a kind of [`EventKind`].
    #[error("unknown event type {0:?}")]
    UnknownType(String),
}

/// Why a payment provider's event was rejected (recorded, never applied to the order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Amount or currency differ from the order's.
    AmountMismatch,
    /// The order was already paid (or beyond).
    DuplicatePayment,
}

/// The wire names of a reason an event carries.
trait WireName: Copy + PartialEq + 'static {
    const NAMES: &'static [(Self, &'static str)];
}

impl WireName for ReleaseReason {
    const NAMES: &'static [(Self, &'static str)] = &[
        (ReleaseReason::Expired, "expired"),
        (ReleaseReason::Cancelled, "cancelled"),
    ];
}

impl WireName for CancelReason {
    const NAMES: &'static [(Self, &'static str)] = &[
        (CancelReason::Deadline, "deadline"),
        (CancelReason::Buyer, "buyer"),
    ];
}

impl WireName for RejectReason {
    const NAMES: &'static [(Self, &'static str)] = &[
        (RejectReason::AmountMismatch, "amount_mismatch"),
        (RejectReason::DuplicatePayment, "duplicate_payment"),
    ];
}

fn wire_name<T: WireName>(value: T) -> &'static str {
    T::NAMES
        .iter()
        .find(|(v, _)| *v == value)
        .map_or("", |(_, name)| name)
}

/// The wire name of a release reason, as `reservation.released` carries it.
pub fn release_reason_name(reason: ReleaseReason) -> &'static str {
    wire_name(reason)
}

/// The wire name of a cancel reason, as `order.cancelled` carries it.
pub fn cancel_reason_name(reason: CancelReason) -> &'static str {
    wire_name(reason)
}

impl RejectReason {
    /// The wire name, as `payment.rejected` carries it.
    pub fn as_str(self) -> &'static str {
        wire_name(self)
    }
}

/// An entry's fields by name.
struct Fields<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a str> {
        self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    fn required(&self, name: &'static str) -> Result<&'a str, EventError> {
        self.get(name).ok_or(EventError::Missing(name))
    }
}

fn invalid(field: &'static str, value: &str) -> EventError {
    EventError::Invalid {
        field,
        value: value.to_owned(),
    }
}

/// How one field of type `T` is read from, and written to, the stream.
trait Codec<T> {
    fn decode(f: &Fields<'_>, name: &'static str) -> Result<T, EventError>;
    /// `None`: the field is not written.
    fn encode(value: &T) -> Option<String>;
}

/// A whole number.
struct Int;
/// A whole number above zero (units).
struct Qty;
/// A non-empty text (an id).
struct Id;
/// Any text.
struct Text;
/// Text that may be absent.
struct Optional;
/// `seg:initial,…` (may be empty).
struct Shares;
/// A reason, by its wire name.
struct Reason;

impl Codec<i64> for Int {
    fn decode(f: &Fields<'_>, name: &'static str) -> Result<i64, EventError> {
        let v = f.required(name)?;
        v.parse().map_err(|_| invalid(name, v))
    }
    fn encode(value: &i64) -> Option<String> {
        Some(value.to_string())
    }
}

impl Codec<i64> for Qty {
    fn decode(f: &Fields<'_>, name: &'static str) -> Result<i64, EventError> {
        let q = Int::decode(f, name)?;
        if q <= 0 {
            return Err(invalid(name, &q.to_string()));
        }
        Ok(q)
    }
    fn encode(value: &i64) -> Option<String> {
        Int::encode(value)
    }
}

impl Codec<String> for Id {
    fn decode(f: &Fields<'_>, name: &'static str) -> Result<String, EventError> {
        match f.required(name)? {
            "" => Err(invalid(name, "")),
            v => Ok(v.to_owned()),
        }
    }
    fn encode(value: &String) -> Option<String> {
        Some(value.clone())
    }
}

impl Codec<String> for Text {
    fn decode(f: &Fields<'_>, name: &'static str) -> Result<String, EventError> {
        f.required(name).map(str::to_owned)
    }
    fn encode(value: &String) -> Option<String> {
        Some(value.clone())
    }
}

impl Codec<Option<String>> for Optional {
    fn decode(f: &Fields<'_>, name: &'static str) -> Result<Option<String>, EventError> {
        Ok(f.get(name).map(str::to_owned))
    }
    fn encode(value: &Option<String>) -> Option<String> {
        value.clone()
    }
}

impl Codec<Vec<(i64, i64)>> for Shares {
    fn decode(f: &Fields<'_>, name: &'static str) -> Result<Vec<(i64, i64)>, EventError> {
        let value = f.required(name)?;
        if value.is_empty() {
            return Ok(Vec::new());
        }
        let bad = || invalid(name, value);
        value
            .split(',')
            .map(|pair| {
                let (seg, initial) = pair.split_once(':').ok_or_else(bad)?;
                Ok((
                    seg.trim().parse().map_err(|_| bad())?,
                    initial.trim().parse().map_err(|_| bad())?,
                ))
            })
            .collect()
    }
    fn encode(value: &Vec<(i64, i64)>) -> Option<String> {
        let shares: Vec<String> = value.iter().map(|(s, i)| format!("{s}:{i}")).collect();
        Some(shares.join(","))
    }
}

impl<T: WireName> Codec<T> for Reason {
    fn decode(f: &Fields<'_>, name: &'static str) -> Result<T, EventError> {
        let v = f.required(name)?;
        T::NAMES
            .iter()
            .find(|(_, n)| *n == v)
            .map(|(r, _)| *r)
            .ok_or_else(|| invalid(name, v))
    }
    fn encode(value: &T) -> Option<String> {
        Some(wire_name(*value).to_owned())
    }
}

/// Writes the contract's types from its one table: [`EventKind`] (the wire names), [`Body`]
/// (one variant per kind, fields named as on the stream) and the body's decoder and encoder.
macro_rules! events {
    ($(
        $(#[$doc:meta])*
        $kind:ident = $wire:literal {
            $( $(#[$field_doc:meta])* $field:ident: $ty:ty = $codec:ident, )*
        }
    )*) => {
        /// The kinds of event, with their wire names (the `type` field).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventKind {
            $( #[doc = concat!("`", $wire, "`.")] $(#[$doc])* $kind, )*
        }

        impl EventKind {
            /// Every kind.
            pub const ALL: [EventKind; [$($wire),*].len()] = [$(EventKind::$kind),*];

            /// The wire name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( EventKind::$kind => $wire, )*
                }
            }
        }

        /// The typed event bodies, one per [`EventKind`]; fields are named as on the stream.
        #[derive(Debug, Clone, PartialEq, Eq)]
        #[expect(missing_docs, reason = "fields are named as the stream fields")]
        pub enum Body {
            $( $(#[$doc])* $kind { $( $(#[$field_doc])* $field: $ty, )* }, )*
        }

        impl Body {
            /// The kind.
            pub fn kind(&self) -> EventKind {
                match self {
                    $( Body::$kind { .. } => EventKind::$kind, )*
                }
            }

            fn decode(kind: EventKind, f: &Fields<'_>) -> Result<Self, EventError> {
                Ok(match kind {
                    $( EventKind::$kind => Body::$kind {
                        $( $field: <$codec as Codec<$ty>>::decode(f, stringify!($field))?, )*
                    }, )*
                })
            }

            fn encode(&self, out: &mut Vec<(&'static str, String)>) {
                match self {
                    $( Body::$kind { $( $field, )* } => {
                        $(
                            if let Some(v) = <$codec as Codec<$ty>>::encode($field) {
                                out.push((stringify!($field), v));
                            }
                        )*
                    } )*
                }
            }
        }
    };
}

events! {
    /// A partition received the SKU's terms, and its segments there.
    SkuLoaded = "sku.loaded" {
        stock: i64 = Int,
        segs: i64 = Int,
        /// `(segment, initial units)` for the segments living in this partition (empty when
        /// the partition only keeps the terms).
        segments: Vec<(i64, i64)> = Shares,
        price: i64 = Int,
        currency: String = Text,
        start: i64 = Int,
        end: i64 = Int,
        limit: i64 = Int,
        ttl: i64 = Int,
        paywin: i64 = Int,
        /// The fingerprint of the terms as loaded (absent in events written before it was
        /// carried): what a restore writes back so a second load of the same terms stays
        /// `unchanged`.
        fp: Option<String> = Optional,
    }
    /// Units moved from available to reserved.
    ReservationCreated = "reservation.created" {
        rsv: String = Id,
        seg: i64 = Int,
        qty: i64 = Qty,
        buyer: String = Text,
        expires: i64 = Int,
    }
    /// A reservation's units went back to available (reason `expired` or `cancelled`).
    ReservationReleased = "reservation.released" {
        rsv: String = Id,
        seg: i64 = Int,
        qty: i64 = Qty,
        buyer: String = Text,
        reason: ReleaseReason = Reason,
    }
    /// A reservation became an order awaiting payment.
    OrderCreated = "order.created" {
        ord: String = Id,
        rsv: String = Id,
        seg: i64 = Int,
        qty: i64 = Qty,
        buyer: String = Text,
        amount: i64 = Int,
        currency: String = Text,
        deadline: i64 = Int,
    }
    /// Paid in time: the units are sold.
    OrderPaid = "order.paid" {
        ord: String = Id,
        seg: i64 = Int,
        qty: i64 = Qty,
        psp_event: String = Id,
        amount: i64 = Int,
        currency: String = Text,
    }
    /// Cancelled unpaid, the units back to available (reason `deadline` or `buyer`).
    OrderCancelled = "order.cancelled" {
        ord: String = Id,
        seg: i64 = Int,
        qty: i64 = Qty,
        reason: CancelReason = Reason,
    }
    /// Paid after cancellation: a refund must be requested.
    OrderPaidAfterCancel = "order.paid_after_cancel" {
        ord: String = Id,
        qty: i64 = Qty,
        psp_event: String = Id,
        amount: i64 = Int,
        currency: String = Text,
    }
    /// A refund was requested.
    OrderRefundRequested = "order.refund_requested" {
        ord: String = Id,
    }
    /// The refund completed.
    OrderRefunded = "order.refunded" {
        ord: String = Id,
    }
    /// A payment was rejected and recorded (reason `amount_mismatch` or `duplicate_payment`).
    PaymentRejected = "payment.rejected" {
        ord: String = Id,
        psp_event: String = Id,
        reason: RejectReason = Reason,
        amount: i64 = Int,
        currency: String = Text,
    }
}

impl EventKind {
    /// Parses a wire name.
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == value)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed event: what every event carries, plus its typed body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Decision time, unix ms (`at`).
    pub at: i64,
    /// The SKU it concerns (`sku`).
    pub sku: String,
    /// The HTTP request whose decision appended it (`request`, an `x-request-id`): `None`
    /// for what a timer or settlement decided, and in events written before it was carried
    /// (the field empty or absent).
    pub request: Option<String>,
    /// The typed body.
    pub body: Body,
}

/// An order's move through the state machine that an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderChange<'a> {
    /// The order.
    pub ord: &'a str,
    /// What happened to it.
    pub event: OrderEvent,
    /// The state the event says it reached: legal only where
    /// [`OrderState::next`]`(event)` leads there from the state it was in.
    pub to: OrderState,
}

impl Body {
    /// The order transition this event records, if it records one (`order.created` starts
    /// an order rather than moving one).
    pub fn order_change(&self) -> Option<OrderChange<'_>> {
        let (ord, event, to) = match self {
            Self::OrderPaid { ord, .. } => (ord, OrderEvent::Payment, OrderState::Paid),
            Self::OrderPaidAfterCancel { ord, .. } => {
                (ord, OrderEvent::Payment, OrderState::PaidAfterCancel)
            }
            Self::OrderCancelled { ord, .. } => (ord, OrderEvent::Cancel, OrderState::Cancelled),
            Self::OrderRefundRequested { ord } => {
                (ord, OrderEvent::RefundRequest, OrderState::RefundPending)
            }
            Self::OrderRefunded { ord } => (ord, OrderEvent::RefundComplete, OrderState::Refunded),
            Self::SkuLoaded { .. }
            | Self::ReservationCreated { .. }
            | Self::ReservationReleased { .. }
            | Self::OrderCreated { .. }
            | Self::PaymentRejected { .. } => return None,
        };
        Some(OrderChange { ord, event, to })
    }

    /// The reservation this event ends and the state it ends in: a release (expired or
    /// cancelled) or an order made from it. Only an active reservation can end.
    pub fn reservation_end(&self) -> Option<(&str, ReservationState)> {
        match self {
            Self::ReservationReleased { rsv, reason, .. } => Some((
                rsv,
                match reason {
                    ReleaseReason::Expired => ReservationState::Expired,
                    ReleaseReason::Cancelled => ReservationState::Cancelled,
                },
            )),
            Self::OrderCreated { rsv, .. } => Some((rsv, ReservationState::Ordered)),
            _ => None,
        }
    }
}

impl Body {
    /// The reservation or order the event is about (`None` for a SKU's terms): what a
    /// request's trail names beside each event.
    pub fn subject(&self) -> Option<&str> {
        match self {
            Self::SkuLoaded { .. } => None,
            Self::ReservationCreated { rsv, .. } | Self::ReservationReleased { rsv, .. } => {
                Some(rsv)
            }
            Self::OrderCreated { ord, .. }
            | Self::OrderPaid { ord, .. }
            | Self::OrderCancelled { ord, .. }
            | Self::OrderPaidAfterCancel { ord, .. }
            | Self::OrderRefundRequested { ord }
            | Self::OrderRefunded { ord }
            | Self::PaymentRejected { ord, .. } => Some(ord),
        }
    }
}

impl Event {
    /// Parses a stream entry's fields (`(name, value)` pairs, as `XRANGE` answers them).
    /// Fields the event's kind does not have are ignored (see the module's note).
    ///
    /// # Errors
    /// When `type` is missing or unknown, or a field of that type is missing or malformed.
    pub fn parse<'a>(
        fields: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, EventError> {
        let f = Fields(fields.into_iter().collect());
        let kind = f.required("type")?;
        let kind =
            EventKind::parse(kind).ok_or_else(|| EventError::UnknownType(kind.to_owned()))?;
        Ok(Self {
            at: Int::decode(&f, "at")?,
            sku: Id::decode(&f, "sku")?,
            request: f
                .get("request")
                .filter(|r| !r.is_empty())
                .map(str::to_owned),
            body: Body::decode(kind, &f)?,
        })
    }

    /// The stream fields of this event, in the order the library writes them: what
    /// [`Event::parse`] reads back to the same event.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            ("type", self.body.kind().as_str().to_owned()),
            ("at", self.at.to_string()),
            ("sku", self.sku.clone()),
            ("request", self.request.clone().unwrap_or_default()),
        ];
        self.body.encode(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Event, EventError> {
        Event::parse(pairs.iter().copied())
    }

    #[test]
    fn kinds_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
    }

    #[test]
    fn parses_sku_loaded_with_segments_and_writes_it_back() {
        let fields = [
            ("type", "sku.loaded"),
            ("at", "10"),
            ("sku", "drop-1"),
            ("request", ""),
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
        ];
        let e = parse(&fields).unwrap();
        assert_eq!(e.sku, "drop-1");
        match &e.body {
            Body::SkuLoaded {
                segments, stock, ..
            } => {
                assert_eq!(*segments, vec![(0, 25), (4, 25)]);
                assert_eq!(*stock, 100);
            }
            other => panic!("unexpected {other:?}"),
        }
        let back: Vec<(&str, String)> = e.fields();
        let expected: Vec<(&str, String)> =
            fields.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        assert_eq!(back, expected);
    }

    #[test]
    fn the_request_behind_an_event_round_trips_and_empty_means_none() {
        let fields = [
            ("type", "order.paid"),
            ("at", "7"),
            ("sku", "drop-1"),
            ("request", "req-42"),
            ("ord", "drop-1.0.o1"),
            ("seg", "0"),
            ("qty", "1"),
            ("psp_event", "evt-1"),
            ("amount", "1999"),
            ("currency", "EUR"),
        ];
        let e = parse(&fields).unwrap();
        assert_eq!(e.request.as_deref(), Some("req-42"));
        assert_eq!(e.body.subject(), Some("drop-1.0.o1"));
        let expected: Vec<(&str, String)> =
            fields.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        assert_eq!(e.fields(), expected);

        let timer = parse(&[
            ("type", "order.refunded"),
            ("at", "1"),
            ("sku", "s"),
            ("request", ""),
            ("ord", "o"),
        ])
        .unwrap();
        assert_eq!(timer.request, None);
        let older = parse(&[
            ("type", "order.refunded"),
            ("at", "1"),
            ("sku", "s"),
            ("ord", "o"),
        ])
        .unwrap();
        assert_eq!(older.request, None);
        assert_eq!(older.fields()[3], ("request", String::new()));
    }

    #[test]
    fn a_config_only_copy_has_no_segments() {
        let e = parse(&[
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
        ])
        .unwrap();
        assert!(matches!(e.body, Body::SkuLoaded { ref segments, .. } if segments.is_empty()));
    }

    #[test]
    fn rejects_unknown_types_and_bad_fields() {
        assert_eq!(parse(&[]), Err(EventError::Missing("type")));
        assert_eq!(
            parse(&[("type", "order.teleported"), ("at", "1"), ("sku", "s")]),
            Err(EventError::UnknownType("order.teleported".into()))
        );
        assert_eq!(
            parse(&[("type", "order.refunded"), ("at", "1"), ("sku", "s")]),
            Err(EventError::Missing("ord"))
        );
        let zero = [
            ("type", "reservation.created"),
            ("at", "1"),
            ("sku", "s"),
            ("rsv", "r"),
            ("seg", "0"),
            ("qty", "0"),
            ("buyer", "b"),
            ("expires", "5"),
        ];
        assert!(matches!(
            parse(&zero),
            Err(EventError::Invalid { field: "qty", .. })
        ));
        let odd_reason = [
            ("type", "order.cancelled"),
            ("at", "1"),
            ("sku", "s"),
            ("ord", "o"),
            ("seg", "0"),
            ("qty", "1"),
            ("reason", "whim"),
        ];
        assert!(matches!(
            parse(&odd_reason),
            Err(EventError::Invalid {
                field: "reason",
                ..
            })
        ));
    }

    #[test]
    fn order_changes_are_legal_moves_of_the_state_machine() {
        let e = parse(&[
            ("type", "order.paid_after_cancel"),
            ("at", "1"),
            ("sku", "s"),
            ("ord", "o"),
            ("qty", "1"),
            ("psp_event", "ev"),
            ("amount", "5"),
            ("currency", "EUR"),
            ("origin", "1-0"),
        ])
        .unwrap();
        let change = e.body.order_change().unwrap();
        assert_eq!(change.ord, "o");
        assert_eq!(
            OrderState::Cancelled.next(change.event),
            Some(change.to),
            "from cancelled"
        );
        assert_ne!(
            OrderState::PendingPayment.next(change.event),
            Some(change.to)
        );
        assert!(
            !e.fields().iter().any(|(k, _)| *k == "origin"),
            "transport fields are not the event's"
        );
    }

    #[test]
    fn reason_names_round_trip() {
        for (r, name) in ReleaseReason::NAMES {
            assert_eq!(release_reason_name(*r), *name);
        }
        for (r, name) in CancelReason::NAMES {
            assert_eq!(cancel_reason_name(*r), *name);
        }
        assert_eq!(RejectReason::AmountMismatch.as_str(), "amount_mismatch");
    }
}
