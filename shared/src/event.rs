//! The events the library appends to each partition's stream, in the same atomic call as
//! the decision they record. Settlement reads them; tests count them.

use std::collections::BTreeMap;

use crate::keys::Partition;

/// The kinds of event, with their wire names (the `type` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// `sku.loaded`: a partition received the SKU's terms (and its segments there).
    SkuLoaded,
    /// `reservation.created`.
    ReservationCreated,
    /// `reservation.released` (reason `expired` or `cancelled`).
    ReservationReleased,
    /// `order.created`.
    OrderCreated,
    /// `order.paid`.
    OrderPaid,
    /// `order.cancelled` (reason `deadline` or `buyer`).
    OrderCancelled,
    /// `order.paid_after_cancel`: a refund must be requested.
    OrderPaidAfterCancel,
    /// `order.refund_requested`.
    OrderRefundRequested,
    /// `order.refunded`.
    OrderRefunded,
    /// `payment.rejected` (reason `amount_mismatch` or `duplicate_payment`).
    PaymentRejected,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 10] = [
        EventKind::SkuLoaded,
        EventKind::ReservationCreated,
        EventKind::ReservationReleased,
        EventKind::OrderCreated,
        EventKind::OrderPaid,
        EventKind::OrderCancelled,
        EventKind::OrderPaidAfterCancel,
        EventKind::OrderRefundRequested,
        EventKind::OrderRefunded,
        EventKind::PaymentRejected,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::SkuLoaded => "sku.loaded",
            EventKind::ReservationCreated => "reservation.created",
            EventKind::ReservationReleased => "reservation.released",
            EventKind::OrderCreated => "order.created",
            EventKind::OrderPaid => "order.paid",
            EventKind::OrderCancelled => "order.cancelled",
            EventKind::OrderPaidAfterCancel => "order.paid_after_cancel",
            EventKind::OrderRefundRequested => "order.refund_requested",
            EventKind::OrderRefunded => "order.refunded",
            EventKind::PaymentRejected => "payment.rejected",
        }
    }

    /// Parses a wire name.
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == value)
    }
}

/// Why a stream entry is not a valid event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// No `type` field, or an unknown one.
    #[error("unknown event type {0:?}")]
    UnknownType(Option<String>),
    /// A field the kind requires is missing or malformed.
    #[error("{kind} event: field {field} missing or malformed")]
    Field {
        /// The kind.
        kind: &'static str,
        /// The field.
        field: &'static str,
    },
}

/// One stream entry, parsed: its identity (partition, entry id), kind and fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The partition whose stream holds it.
    pub partition: Partition,
    /// The stream entry id, e.g. `1700000000000-0`.
    pub entry_id: String,
    /// The kind.
    pub kind: EventKind,
    /// Every field, including `type`.
    pub fields: BTreeMap<String, String>,
}

impl Event {
    /// Parses a stream entry's fields.
    ///
    /// # Errors
    /// When the type is missing or unknown, or `at`/`sku` are missing.
    pub fn parse(
        partition: Partition,
        entry_id: impl Into<String>,
        fields: BTreeMap<String, String>,
    ) -> Result<Self, EventError> {
        let kind = fields
            .get("type")
            .and_then(|t| EventKind::parse(t))
            .ok_or_else(|| EventError::UnknownType(fields.get("type").cloned()))?;
        let event = Self {
            partition,
            entry_id: entry_id.into(),
            kind,
            fields,
        };
        event.number("at")?;
        event.text("sku")?;
        Ok(event)
    }

    /// A text field.
    ///
    /// # Errors
    /// When it is missing.
    pub fn text(&self, field: &'static str) -> Result<&str, EventError> {
        self.fields
            .get(field)
            .map(String::as_str)
            .ok_or(EventError::Field {
                kind: self.kind.as_str(),
                field,
            })
    }

    /// A numeric field.
    ///
    /// # Errors
    /// When it is missing or not a whole number.
    pub fn number(&self, field: &'static str) -> Result<u64, EventError> {
        self.text(field)?.parse().map_err(|_| EventError::Field {
            kind: self.kind.as_str(),
            field,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
    }

    #[test]
    fn parse_requires_type_at_and_sku() {
        let mut f = BTreeMap::new();
        assert!(matches!(
            Event::parse(Partition::new(0), "1-0", f.clone()),
            Err(EventError::UnknownType(None))
        ));
        f.insert("type".to_owned(), "reservation.created".to_owned());
        assert!(Event::parse(Partition::new(0), "1-0", f.clone()).is_err());
        f.insert("at".to_owned(), "12".to_owned());
        f.insert("sku".to_owned(), "a".to_owned());
        let e = Event::parse(Partition::new(0), "1-0", f).unwrap();
        assert_eq!(e.number("at"), Ok(12));
        assert!(e.number("qty").is_err());
    }
}
