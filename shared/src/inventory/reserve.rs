//! The deduct: a reserve in the buyer's home partition, the fallback search of the SKU's
//! other partitions when home is short, the closing call; and a reservation's release.

use std::collections::BTreeSet;

use serde::Serialize;

use super::{Inventory, Now, Result};
use crate::exec::RedisExecutor;
use crate::functions::reserve::{Placement, Release, Reserve, ReserveAt, ReserveFinish, Sighting};
use crate::ids::{BuyerId, IdempotencyKey, Quantity, RequestId, ReservationId, SkuId};
use crate::keys::Partition;
use crate::problem::Rejection;

/// A deduct: reserve `quantity` of `sku` for `buyer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveRequest {
    /// The SKU.
    pub sku: SkuId,
    /// The buyer.
    pub buyer: BuyerId,
    /// Units.
    pub quantity: Quantity,
    /// The request's idempotency key.
    pub key: IdempotencyKey,
    /// A digest of the request body (see [`crate::fingerprint`]).
    pub fingerprint: String,
    /// The HTTP request making it (`x-request-id`), named in the reservation's event.
    pub request: Option<RequestId>,
}

/// A reservation that holds stock until it expires or becomes an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reservation {
    /// Its id.
    pub id: ReservationId,
    /// The segment the units came from.
    pub segment: u16,
    /// When it expires, unix ms.
    pub expires_at: u64,
    /// Whether this answer replays an earlier decision.
    pub replayed: bool,
}

/// Why a reservation is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseReason {
    /// Its time ran out (refused before then).
    Expired,
    /// The buyer let it go.
    Cancelled,
}

/// What a release did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// The units went back to their segment.
    Released {
        /// Units returned.
        quantity: u64,
    },
    /// Not expired yet.
    NotDue {
        /// When it expires.
        expires_at: u64,
    },
    /// Already ordered, released or expired: nothing to do.
    NotActive {
        /// Its state.
        state: String,
    },
}

/// What the first step of a reserve decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HomeStep {
    /// Done: reserved at home, or a replay of an earlier decision.
    Decided(Reservation),
    /// The home partition is short: look in the SKU's other partitions (the buyer's limit is
    /// held meanwhile). Also the answer to a retry of a reserve that stopped midway.
    LookElsewhere {
        /// The SKU's segment count, to list its partitions.
        segments: u16,
        /// Partitions not to visit: the ones the caller believed empty (kept with the request,
        /// so a resumed search skips the same ones).
        skip: Vec<Partition>,
    },
}

/// What a caller believes about a SKU's partitions before a reserve: those it saw empty
/// lately. The reserve does not visit them, and when they are every partition of the SKU
/// but the buyer's home, the home partition decides alone. A wrong belief costs stock that is
/// not offered (until the caller learns better), never stock taken twice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StockHint {
    /// The SKU's segment count, when known (needed to tell "every partition").
    pub segments: Option<u16>,
    /// Partitions believed to have no units left.
    pub empty: BTreeSet<Partition>,
}

/// A reserve's outcome, and what it saw of the SKU on the way (for the caller's hints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    /// The outcome.
    pub result: Result<Reservation>,
    /// The SKU's segment count, when a reply told it.
    pub segments: Option<u16>,
    /// Units left in each partition a reply reported on, after this reserve.
    pub seen: Vec<(Partition, u64)>,
}

/// What one partition of a fallback search answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Search {
    /// Reserved there (or reserved there before, for this token).
    Found(Reservation),
    /// Some units there, fewer than asked.
    Insufficient,
    /// None there.
    SoldOut,
}

impl<E: RedisExecutor> Inventory<E> {
    /// Reserves stock: the deduct. Replays with the same key answer the first decision.
    ///
    /// # Errors
    /// The rejections of the deduct contract: sold out, insufficient, limit reached, rate
    /// limited, unknown SKU, not on sale, sale ended, idempotency mismatch or in flight,
    /// unavailable.
    pub async fn reserve(&self, req: &ReserveRequest, now: Now) -> Result<Reservation> {
        self.reserve_hinted(req, &StockHint::default(), now)
            .await
            .result
    }

    /// [`Self::reserve`] with the caller's belief about empty partitions, reporting what it
    /// saw. One call when the home partition has the units or (with a hint that every other
    /// partition is empty) decides alone; else one more per partition visited, and a last one
    /// at home unless the search found units with no lease (see
    /// [`Settings::fallback_lease_ms`]).
    pub async fn reserve_hinted(
        &self,
        req: &ReserveRequest,
        hint: &StockHint,
        now: Now,
    ) -> Reserved {
        let mut seen = Vec::new();
        let mut segments = hint.segments;
        let result = self
            .reserve_seeing(req, hint, now, &mut seen, &mut segments)
            .await;
        Reserved {
            result,
            segments,
            seen,
        }
    }

    async fn reserve_seeing(
        &self,
        req: &ReserveRequest,
        hint: &StockHint,
        now: Now,
        seen: &mut Vec<(Partition, u64)>,
        segments_seen: &mut Option<u16>,
    ) -> Result<Reservation> {
        let place = Placement::of(&self.schema, req);
        let home = place.home;
        let skip = self.skip_arg(hint, &place);
        let (step, at_home) = self.home_step(req, &place, &skip, now).await;
        if let Some(left) = at_home.left {
            seen.push((home, left));
        }
        *segments_seen = at_home.segments.or(*segments_seen);
        let (segments, skip) = match step? {
            HomeStep::Decided(reservation) => return Ok(reservation),
            HomeStep::LookElsewhere { segments, skip } => (segments, skip),
        };
        let mut search = Search::SoldOut;
        for p in self.schema.fallback_order(place.sku_home, segments, home) {
            if skip.contains(&p) {
                continue;
            }
            let (found, left) = self.search_in(req, &place, p, now).await?;
            if let Some(left) = left {
                seen.push((p, left));
            }
            match found {
                found @ Search::Found(_) => {
                    search = found;
                    break;
                }
                Search::Insufficient => search = Search::Insufficient,
                Search::SoldOut => {}
            }
        }
        match search {
            // No lease: a retry resumes the search and finds this reservation itself.
            Search::Found(reservation) if self.settings.fallback_lease_ms == 0 => Ok(reservation),
            search => self.finish(req, &place, &search).await,
        }
    }

    /// The `skip` argument of `fc_reserve`: the SKU's partitions (but home) believed empty,
    /// or `*` when that is all of them.
    fn skip_arg(&self, hint: &StockHint, place: &Placement) -> String {
        let Some(segments) = hint.segments else {
            return String::new();
        };
        let others = self
            .schema
            .fallback_order(place.sku_home, segments, place.home);
        let empty: Vec<String> = others
            .iter()
            .filter(|p| hint.empty.contains(p))
            .map(|p| p.index().to_string())
            .collect();
        if !others.is_empty() && empty.len() == others.len() {
            "*".into()
        } else {
            empty.join(",")
        }
    }

    /// Step 1 of a reserve, in the buyer's home partition: idempotency, sale window, rate,
    /// limit, and the local segments, in one call. Exposed so tests can stop a reserve midway.
    ///
    /// # Errors
    /// As [`Self::reserve`].
    pub async fn reserve_at_home(&self, req: &ReserveRequest, now: Now) -> Result<HomeStep> {
        let place = Placement::of(&self.schema, req);
        self.home_step(req, &place, "", now).await.0
    }

    async fn home_step(
        &self,
        req: &ReserveRequest,
        place: &Placement,
        skip: &str,
        now: Now,
    ) -> (Result<HomeStep>, Sighting) {
        let record = place.record_in(place.home, req);
        let call = Reserve {
            req,
            place,
            record: &record,
            skip,
            now,
            settings: &self.settings,
        };
        match self.call(&call).await {
            Ok(decided) => decided,
            Err(e) => (Err(e), Sighting::default()),
        }
    }

    /// Step 2 of a reserve whose home was short: try partition `p`. The outcome for this
    /// request's token in `p` is final, so repeating the step answers the same.
    ///
    /// # Errors
    /// Unavailable.
    pub async fn reserve_in(&self, req: &ReserveRequest, p: Partition, now: Now) -> Result<Search> {
        let place = Placement::of(&self.schema, req);
        Ok(self.search_in(req, &place, p, now).await?.0)
    }

    async fn search_in(
        &self,
        req: &ReserveRequest,
        place: &Placement,
        p: Partition,
        now: Now,
    ) -> Result<(Search, Option<u64>)> {
        let record = place.record_in(p, req);
        self.call(&ReserveAt {
            req,
            place,
            record: &record,
            now,
            idempotency_ttl_ms: self.settings.idempotency_ttl_ms,
        })
        .await
    }

    /// Step 3: record the search's outcome in the buyer's home partition (a failed search
    /// gives the held limit back). The first finish decides; later ones replay it.
    ///
    /// # Errors
    /// As [`Self::reserve`].
    pub async fn reserve_finish(
        &self,
        req: &ReserveRequest,
        search: &Search,
    ) -> Result<Reservation> {
        let place = Placement::of(&self.schema, req);
        self.finish(req, &place, search).await
    }

    async fn finish(
        &self,
        req: &ReserveRequest,
        place: &Placement,
        search: &Search,
    ) -> Result<Reservation> {
        let record = place.record_in(place.home, req);
        self.call(&ReserveFinish {
            req,
            record: &record,
            search,
            idempotency_ttl_ms: self.settings.idempotency_ttl_ms,
        })
        .await
    }

    /// Gives a reservation's units back.
    ///
    /// # Errors
    /// [`Rejection::UnknownReservation`], or unavailable.
    pub async fn release(
        &self,
        id: &ReservationId,
        reason: ReleaseReason,
        now: Now,
    ) -> Result<ReleaseOutcome> {
        self.check_partition(id.partition(), Rejection::UnknownReservation)?;
        self.call(&Release {
            id,
            reason,
            now,
            keep_ms: self.settings.released_keep_ms,
        })
        .await
    }
}
