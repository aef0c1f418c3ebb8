//! The deduct and a reservation's release: `fc_reserve` (in the buyer's home partition),
//! `fc_reserve_at` (one partition of a fallback search), `fc_reserve_finish` (closes a
//! search at home) and `fc_release`.
//!
//! `fc_reserve` is the hot path: its keys and arguments are built straight into the command
//! line, each formatted once.

use super::{Access, Function, Reply, Result, Spec, request_arg};
use crate::ids::{HoldToken, ReservationId};
use crate::inventory::{
    HomeStep, Now, ReleaseOutcome, ReleaseReason, Reservation, ReserveRequest, Search, Settings,
};
use crate::keys::{KeySchema, Partition};
use crate::problem::Rejection;

/// `fc_reserve`: idempotency, sale window, the buyer's token bucket and limit, and the local
/// segments, in the buyer's home partition H.
pub const RESERVE: Spec = Spec {
    name: "fc_reserve",
    access: Access::Write,
    keys: &[
        "sku",
        "purchases",
        "record",
        "events",
        "expiries",
        "bucket",
        "guard",
    ],
    args: &[
        "sku",
        "buyer",
        "fingerprint",
        "qty",
        "now",
        "rid",
        "idem_ttl",
        "lease_ms",
        "affinity",
        "rate_capacity",
        "rate_step_us",
        "skip",
        "guess",
        "request",
    ],
};

/// `fc_reserve_at`: one step of a fallback search, in a partition B of the SKU.
pub const RESERVE_AT: Spec = Spec {
    name: "fc_reserve_at",
    access: Access::Write,
    keys: &["sku", "reservation", "skip", "events", "expiries", "guard"],
    args: &[
        "sku", "buyer", "qty", "now", "rid", "skip_ttl", "affinity", "guess", "request",
    ],
};

/// `fc_reserve_finish`: records a search's outcome in the request's record at home.
pub const RESERVE_FINISH: Spec = Spec {
    name: "fc_reserve_finish",
    access: Access::Write,
    keys: &["record", "purchases", "guard"],
    args: &["code", "rid", "seg", "expires", "idem_ttl"],
};

/// `fc_release`: gives a reservation's units back.
pub const RELEASE: Spec = Spec {
    name: "fc_release",
    access: Access::Write,
    keys: &["sku", "reservation", "events", "expiries", "guard"],
    args: &["rid", "reason", "now", "keep_ms"],
};

/// Where a reserve request's records go, hashed once per request: each of these is a
/// SHA-256, and one reserve names them in up to three calls (home, another partition,
/// the closing call) and their keys and arguments.
#[derive(Debug, Clone)]
pub(crate) struct Placement {
    /// The buyer's home partition: the request's record, purchase counter and rate bucket.
    pub(crate) home: Partition,
    /// The SKU's home partition, where its segment 0 lives.
    pub(crate) sku_home: Partition,
    /// The token of the reservation the request makes, wherever it makes it.
    pub(crate) token: HoldToken,
    /// Which of a partition's segments the buyer tries first (spreads buyers over them).
    pub(crate) affinity: u32,
}

impl Placement {
    pub(crate) fn of(schema: &KeySchema, req: &ReserveRequest) -> Self {
        let d = crate::digest(&[b"affinity", req.buyer.as_str().as_bytes()]);
        Self {
            home: schema.home_of_buyer(&req.buyer),
            sku_home: schema.home_of_sku(&req.sku),
            token: HoldToken::derive(&req.buyer, &req.key),
            affinity: u32::from(u16::from_be_bytes([d[0], d[1]])),
        }
    }

    /// The id of the reservation the request makes in partition `p`. In the buyer's home
    /// partition its key holds the request's record whatever the request decided (see
    /// `fc_reserve`).
    pub(crate) fn record_in(&self, p: Partition, req: &ReserveRequest) -> ReservationId {
        ReservationId::new(p, self.token.clone(), req.sku.clone())
    }
}

/// A call of `fc_reserve`.
pub(crate) struct Reserve<'a> {
    pub(crate) req: &'a ReserveRequest,
    pub(crate) place: &'a Placement,
    /// The request's record, in the buyer's home partition.
    pub(crate) record: &'a ReservationId,
    /// The partitions to skip, as [`parse_skip`] reads them (`*`: every one but home).
    pub(crate) skip: &'a str,
    pub(crate) now: Now,
    pub(crate) settings: &'a Settings,
}

impl Function<7, 14> for Reserve<'_> {
    const SPEC: Spec = RESERVE;
    /// The outcome, and what the reply told of the home partition (also of a refusal).
    type Output = (Result<HomeStep>, Sighting);

    fn keys(&self, schema: &KeySchema) -> [String; 7] {
        let (req, home) = (self.req, self.place.home);
        [
            schema.sku(home, &req.sku),
            schema.purchase_count(home, &req.sku, &req.buyer),
            schema.reservation(self.record),
            schema.events(home),
            schema.expiries(home),
            schema.buyer_bucket(home, &req.buyer),
            schema.guard(home),
        ]
    }

    fn args(&self, schema: &KeySchema) -> [String; 14] {
        let (req, settings) = (self.req, self.settings);
        let (capacity, step_us) = settings
            .buyer_rate
            .map_or((0, 0), |r| (r.capacity, r.step_us()));
        [
            req.sku.to_string(),
            req.buyer.to_string(),
            req.fingerprint.clone(),
            req.quantity.get().to_string(),
            self.now.arg(),
            self.record.to_string(),
            settings.idempotency_ttl_ms.to_string(),
            settings.fallback_lease_ms.to_string(),
            self.place.affinity.to_string(),
            capacity.to_string(),
            step_us.to_string(),
            self.skip.to_owned(),
            schema
                .first_segment_in(self.place.sku_home, self.place.home)
                .to_string(),
            request_arg(req.request.as_ref()),
        ]
    }

    fn decode(&self, reply: Reply) -> Result<Self::Output> {
        Ok((home_outcome(&reply, self.skip), Sighting::of_home(&reply)))
    }
}

/// What a home step's reply told about the home partition.
#[derive(Debug, Default)]
pub(crate) struct Sighting {
    /// Units left there afterwards (fresh decisions only: a replay tells nothing of now).
    pub(crate) left: Option<u64>,
    /// The SKU's segment count.
    pub(crate) segments: Option<u16>,
}

impl Sighting {
    fn of_home(reply: &Reply) -> Self {
        let segments = |i: usize| reply.optional_uint(i).and_then(|n| u16::try_from(n).ok());
        match reply.code.as_str() {
            // ok(rid seg expires left segs); a replay carries the first three only.
            "ok" => Self {
                left: reply.optional_uint(3),
                segments: segments(4),
            },
            // fallback(segs left), resume(segs skip)
            "fallback" => Self {
                left: reply.optional_uint(1),
                segments: segments(0),
            },
            "resume" => Self {
                left: None,
                segments: segments(0),
            },
            // A decision without stock at home: sold_out(left), insufficient(left).
            "sold_out" | "insufficient" if !reply.replayed => Self {
                left: reply.optional_uint(0),
                segments: None,
            },
            _ => Self::default(),
        }
    }
}

/// The outcome of `fc_reserve`'s reply. `skip` is the argument the call was made with.
fn home_outcome(reply: &Reply, skip: &str) -> Result<HomeStep> {
    match reply.code.as_str() {
        "fallback" => Ok(HomeStep::LookElsewhere {
            segments: reply.u16(0)?,
            skip: parse_skip(skip).ok_or_else(|| reply.unexpected())?,
        }),
        "resume" => Ok(HomeStep::LookElsewhere {
            segments: reply.u16(0)?,
            skip: parse_skip(&reply.optional_text(1).unwrap_or_default())
                .ok_or_else(|| reply.unexpected())?,
        }),
        _ => reservation_from(reply).map(HomeStep::Decided),
    }
}

/// A `skip` list as `fc_reserve` keeps it: partition numbers joined by commas.
fn parse_skip(skip: &str) -> Option<Vec<Partition>> {
    skip.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().ok().map(Partition::new))
        .collect()
}

/// A reserve's decision, as `fc_reserve`, `fc_reserve_at` and `fc_reserve_finish` answer it.
fn reservation_from(reply: &Reply) -> Result<Reservation> {
    match reply.code.as_str() {
        "ok" => Ok(Reservation {
            id: ReservationId::parse(&reply.text(0)?).map_err(|_| reply.unexpected())?,
            segment: reply.u16(1)?,
            expires_at: reply.uint(2)?,
            replayed: reply.replayed,
        }),
        "sold_out" => Err(Rejection::SoldOut),
        "insufficient" => Err(Rejection::Insufficient),
        "limit_reached" => Err(Rejection::LimitReached {
            remaining: reply.uint(0)?,
        }),
        "unknown_sku" => Err(Rejection::UnknownSku),
        "not_on_sale" => Err(Rejection::NotOnSale {
            starts_at: reply.uint(0)?,
        }),
        "sale_ended" => Err(Rejection::SaleEnded),
        "idem_mismatch" => Err(Rejection::IdempotencyMismatch),
        "in_flight" => Err(Rejection::IdempotencyInFlight),
        // rate_limited(remaining retry_after_ms): a refusal finds less than one token, so
        // `remaining` is 0 with a cost of 1.
        "rate_limited" => Err(Rejection::RateLimited {
            retry_after_ms: reply.uint(1)?,
        }),
        _ => Err(reply.unexpected()),
    }
}

/// A call of `fc_reserve_at`.
pub(crate) struct ReserveAt<'a> {
    pub(crate) req: &'a ReserveRequest,
    pub(crate) place: &'a Placement,
    /// The reservation the request would make there (names the partition and the token).
    pub(crate) record: &'a ReservationId,
    pub(crate) now: Now,
    pub(crate) idempotency_ttl_ms: u64,
}

impl Function<6, 9> for ReserveAt<'_> {
    const SPEC: Spec = RESERVE_AT;
    /// The outcome there, and the units left there when the reply told.
    type Output = (Search, Option<u64>);

    fn keys(&self, schema: &KeySchema) -> [String; 6] {
        let (sku, p) = (&self.req.sku, self.record.partition());
        [
            schema.sku(p, sku),
            schema.reservation(self.record),
            schema.skip(p, self.record.token()),
            schema.events(p),
            schema.expiries(p),
            schema.guard(p),
        ]
    }

    fn args(&self, schema: &KeySchema) -> [String; 9] {
        let req = self.req;
        [
            req.sku.to_string(),
            req.buyer.to_string(),
            req.quantity.get().to_string(),
            self.now.arg(),
            self.record.to_string(),
            self.idempotency_ttl_ms.to_string(),
            self.place.affinity.to_string(),
            schema
                .first_segment_in(self.place.sku_home, self.record.partition())
                .to_string(),
            request_arg(req.request.as_ref()),
        ]
    }

    fn decode(&self, reply: Reply) -> Result<Self::Output> {
        match reply.code.as_str() {
            "ok" => Ok((
                Search::Found(reservation_from(&reply)?),
                reply.optional_uint(3),
            )),
            "insufficient" => Ok((Search::Insufficient, reply.optional_uint(0))),
            "sold_out" => Ok((Search::SoldOut, reply.optional_uint(0))),
            // A partition not loaded yet (a load under way) has nothing to give.
            "unknown_sku" => Ok((Search::SoldOut, None)),
            _ => Err(reply.unexpected()),
        }
    }
}

/// A call of `fc_reserve_finish`.
pub(crate) struct ReserveFinish<'a> {
    pub(crate) req: &'a ReserveRequest,
    /// The request's record at home ([`Placement::record_in`] the buyer's home).
    pub(crate) record: &'a ReservationId,
    pub(crate) search: &'a Search,
    pub(crate) idempotency_ttl_ms: u64,
}

impl Function<3, 5> for ReserveFinish<'_> {
    const SPEC: Spec = RESERVE_FINISH;
    type Output = Reservation;

    fn keys(&self, schema: &KeySchema) -> [String; 3] {
        [
            schema.reservation(self.record),
            schema.purchase_count(self.record.partition(), &self.req.sku, &self.req.buyer),
            schema.guard(self.record.partition()),
        ]
    }

    fn args(&self, _: &KeySchema) -> [String; 5] {
        let ttl = self.idempotency_ttl_ms.to_string();
        match self.search {
            Search::Found(r) => [
                "ok".into(),
                r.id.to_string(),
                r.segment.to_string(),
                r.expires_at.to_string(),
                ttl,
            ],
            Search::Insufficient => [
                "insufficient".into(),
                String::new(),
                String::new(),
                String::new(),
                ttl,
            ],
            Search::SoldOut => [
                "sold_out".into(),
                String::new(),
                String::new(),
                String::new(),
                ttl,
            ],
        }
    }

    fn decode(&self, reply: Reply) -> Result<Reservation> {
        reservation_from(&reply)
    }
}

/// A call of `fc_release`.
pub(crate) struct Release<'a> {
    pub(crate) id: &'a ReservationId,
    pub(crate) reason: ReleaseReason,
    pub(crate) now: Now,
    pub(crate) keep_ms: u64,
}

impl Function<5, 4> for Release<'_> {
    const SPEC: Spec = RELEASE;
    type Output = ReleaseOutcome;

    fn keys(&self, schema: &KeySchema) -> [String; 5] {
        let p = self.id.partition();
        [
            schema.sku(p, self.id.sku()),
            schema.reservation(self.id),
            schema.events(p),
            schema.expiries(p),
            schema.guard(p),
        ]
    }

    fn args(&self, _: &KeySchema) -> [String; 4] {
        [
            self.id.to_string(),
            // The name the event records, from the stream's one contract.
            crate::event::release_reason_name(self.reason).into(),
            self.now.arg(),
            self.keep_ms.to_string(),
        ]
    }

    fn decode(&self, reply: Reply) -> Result<ReleaseOutcome> {
        match reply.code.as_str() {
            "released" => Ok(ReleaseOutcome::Released {
                quantity: reply.uint(0)?,
            }),
            "not_due" => Ok(ReleaseOutcome::NotDue {
                expires_at: reply.uint(0)?,
            }),
            "not_active" => Ok(ReleaseOutcome::NotActive {
                state: reply.text(0)?,
            }),
            "unknown_reservation" => Err(Rejection::UnknownReservation),
            _ => Err(reply.unexpected()),
        }
    }
}
