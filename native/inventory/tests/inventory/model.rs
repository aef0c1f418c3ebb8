//! Property test: random interleavings of reserve / release / order / pay / cancel / refund
//! and replays with the same idempotency key, against real Redis. After every step the
//! books balance per segment, no level is negative, and the levels equal what a simple
//! model of the same history predicts.

use std::collections::BTreeMap;

use flashcart_core::Rejection;
use flashcart_core::ids::{Currency, OrderId, PspEventId, ReservationId};
use flashcart_core::inventory::{
    CancelOutcome, CancelReason, Now, OrderRequest, PaymentNotice, PaymentOutcome, ReleaseOutcome,
    ReleaseReason,
};
use flashcart_core::order::OrderState;
use flashcart_inventory::NativeInventory;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::support::{Deployment, T0, buyer, key, reserve_req, spec, unique_sku};

#[derive(Debug, Clone)]
enum Op {
    Reserve {
        buyer: u8,
        qty: u8,
        key: u8,
    },
    Order {
        pick: usize,
        key: u8,
    },
    Pay {
        pick: usize,
        event: u8,
        right_amount: bool,
    },
    Cancel {
        pick: usize,
        deadline: bool,
    },
    Release {
        pick: usize,
        expired: bool,
    },
    Refund {
        pick: usize,
        complete: bool,
    },
    Wait {
        ms: u32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6, 1u8..4, 0u8..10).prop_map(|(buyer, qty, key)| Op::Reserve { buyer, qty, key }),
        2 => (any::<usize>(), 0u8..4).prop_map(|(pick, key)| Op::Order { pick, key }),
        2 => (any::<usize>(), 0u8..6, prop::bool::weighted(0.8))
            .prop_map(|(pick, event, right_amount)| Op::Pay { pick, event, right_amount }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, deadline)| Op::Cancel { pick, deadline }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, expired)| Op::Release { pick, expired }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, complete)| Op::Refund { pick, complete }),
        1 => (1u32..90_000).prop_map(|ms| Op::Wait { ms }),
    ]
}

/// What the model expects of each reservation and order.
#[derive(Default)]
struct Model {
    reservations: BTreeMap<ReservationId, (u64, &'static str)>,
    holders: BTreeMap<ReservationId, String>,
    /// Order-create keys: (buyer, key, partition) → the reservation first ordered with it.
    /// (buyer, key) → the reservation the key ordered: one key, one order, in any partition.
    order_keys: BTreeMap<(String, u8), ReservationId>,
    /// PSP event id → the amount it first carried: the same id with another amount is refused.
    psp_events: BTreeMap<String, u64>,
    orders: BTreeMap<OrderId, (u64, OrderState, bool)>, // qty, state, counted as sold
    reservation_list: Vec<ReservationId>,
    order_list: Vec<OrderId>,
}

impl Model {
    fn expected(&self) -> (u64, u64, u64) {
        let reserved = self
            .reservations
            .values()
            .filter(|(_, s)| *s == "active")
            .map(|(q, _)| q)
            .sum();
        let ordered = self
            .orders
            .values()
            .filter(|(_, s, _)| *s == OrderState::PendingPayment)
            .map(|(q, ..)| q)
            .sum();
        let sold = self
            .orders
            .values()
            .filter(|(.., sold)| *sold)
            .map(|(q, ..)| q)
            .sum();
        (reserved, ordered, sold)
    }
}

async fn run_case(inv: &NativeInventory, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let sku = unique_sku("model");
    const STOCK: u64 = 12;
    inv.load_sku(&spec(&sku, STOCK, Some(4), 4), Now::At(T0))
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut model = Model::default();
    let mut now = T0 + 1;
    for op in ops {
        match op {
            Op::Reserve {
                buyer: b,
                qty,
                key: k,
            } => {
                let req = reserve_req(
                    &sku,
                    &format!("{sku}-b{b}"),
                    u64::from(qty),
                    &format!("k{b}-{k}"),
                );
                match inv.reserve(&req, Now::At(now)).await {
                    Ok(r) => {
                        if !model.reservations.contains_key(&r.id) {
                            prop_assert!(!r.replayed, "a new reservation is not a replay");
                            model
                                .reservations
                                .insert(r.id.clone(), (u64::from(qty), "active"));
                            model.holders.insert(r.id.clone(), format!("{sku}-b{b}"));
                            model.reservation_list.push(r.id);
                        }
                    }
                    Err(
                        Rejection::SoldOut
                        | Rejection::Insufficient
                        | Rejection::LimitReached { .. }
                        | Rejection::IdempotencyMismatch,
                    ) => {}
                    Err(e) => prop_assert!(false, "reserve: {e:?}"),
                }
            }
            Op::Order { pick, key: k } => {
                let Some(id) = pick_from(&model.reservation_list, pick) else {
                    continue;
                };
                let (qty, state) = model.reservations[&id];
                let holder = model.holders[&id].clone();
                let key_slot = (holder.clone(), k);
                let key_used_for = model.order_keys.get(&key_slot).cloned();
                let req = OrderRequest {
                    request: None,
                    reservation: id.clone(),
                    buyer: buyer(&holder),
                    key: key(&format!("o{k}")),
                    fingerprint: flashcart_core::fingerprint("", id.to_string().as_bytes()),
                };
                match inv.create_order(&req, Now::At(now)).await {
                    Ok(o) => {
                        prop_assert!(key_used_for.as_ref().is_none_or(|r| *r == id));
                        model.order_keys.insert(key_slot, id.clone());
                        if !model.orders.contains_key(&o.id) {
                            prop_assert_eq!(state, "active");
                            model.reservations.insert(id.clone(), (qty, "ordered"));
                            model
                                .orders
                                .insert(o.id.clone(), (qty, OrderState::PendingPayment, false));
                            model.order_list.push(o.id);
                        }
                    }
                    Err(Rejection::ReservationGone) => prop_assert!(state != "ordered"),
                    Err(Rejection::AlreadyOrdered { .. }) => prop_assert_eq!(state, "ordered"),
                    // The buyer used this key for another reservation, in any partition.
                    Err(Rejection::IdempotencyMismatch) => {
                        prop_assert!(key_used_for.is_some_and(|r| r != id))
                    }
                    Err(e) => prop_assert!(false, "order: {e:?}"),
                }
            }
            Op::Pay {
                pick,
                event,
                right_amount,
            } => {
                let Some(id) = pick_from(&model.order_list, pick) else {
                    continue;
                };
                let (qty, state, sold) = model.orders[&id];
                let amount = if right_amount { 2_500 * qty } else { 1 };
                let notice = PaymentNotice {
                    request: None,
                    order: id.clone(),
                    event_id: PspEventId::parse(&format!("evt-{id}-{event}")).expect("event"),
                    amount,
                    currency: Currency::parse("EUR").expect("eur"),
                };
                let first_amount = *model
                    .psp_events
                    .entry(notice.event_id.to_string())
                    .or_insert(amount);
                let (outcome, replayed) = match inv.apply_payment(&notice, Now::At(now)).await {
                    Err(Rejection::IdempotencyMismatch) => {
                        prop_assert_ne!(first_amount, amount);
                        continue;
                    }
                    other => other.map_err(|e| TestCaseError::fail(e.to_string()))?,
                };
                prop_assert_eq!(first_amount, amount, "a reused event id was applied");
                if replayed {
                    continue;
                }
                match outcome {
                    PaymentOutcome::Paid => {
                        prop_assert_eq!(state, OrderState::PendingPayment);
                        model.orders.insert(id, (qty, OrderState::Paid, true));
                    }
                    PaymentOutcome::PaidAfterCancel => {
                        prop_assert_eq!(state, OrderState::Cancelled);
                        model
                            .orders
                            .insert(id, (qty, OrderState::PaidAfterCancel, sold));
                    }
                    PaymentOutcome::AmountMismatch => prop_assert!(!right_amount),
                    PaymentOutcome::DuplicatePayment => {
                        prop_assert!(
                            state
                                .next(flashcart_core::order::OrderEvent::Payment)
                                .is_none()
                        )
                    }
                }
            }
            Op::Cancel { pick, deadline } => {
                let Some(id) = pick_from(&model.order_list, pick) else {
                    continue;
                };
                let (qty, state, sold) = model.orders[&id];
                let reason = if deadline {
                    CancelReason::Deadline
                } else {
                    CancelReason::Buyer
                };
                match inv.cancel_order(&id, reason, Now::At(now)).await {
                    Ok(CancelOutcome::Cancelled) => {
                        prop_assert_eq!(state, OrderState::PendingPayment);
                        model.orders.insert(id, (qty, OrderState::Cancelled, sold));
                    }
                    Ok(CancelOutcome::NotDue { deadline: d }) => prop_assert!(deadline && d > now),
                    Err(Rejection::IllegalTransition { .. }) => {
                        prop_assert!(state != OrderState::PendingPayment)
                    }
                    Err(e) => prop_assert!(false, "cancel: {e:?}"),
                }
            }
            Op::Release { pick, expired } => {
                let Some(id) = pick_from(&model.reservation_list, pick) else {
                    continue;
                };
                let (qty, state) = model.reservations[&id];
                let reason = if expired {
                    ReleaseReason::Expired
                } else {
                    ReleaseReason::Cancelled
                };
                match inv.release(&id, reason, Now::At(now)).await {
                    Ok(ReleaseOutcome::Released { quantity }) => {
                        prop_assert_eq!((state, quantity), ("active", qty));
                        model.reservations.insert(id, (qty, "released"));
                    }
                    Ok(ReleaseOutcome::NotDue { expires_at }) => {
                        prop_assert!(expired && expires_at > now)
                    }
                    Ok(ReleaseOutcome::NotActive { .. }) => prop_assert!(state != "active"),
                    Err(e) => prop_assert!(false, "release: {e:?}"),
                }
            }
            Op::Refund { pick, complete } => {
                let Some(id) = pick_from(&model.order_list, pick) else {
                    continue;
                };
                let (qty, _, sold) = model.orders[&id];
                let result = if complete {
                    inv.complete_refund(&id, Now::At(now)).await
                } else {
                    inv.request_refund(&id, Now::At(now)).await
                };
                match result {
                    Ok(next) => model
                        .orders
                        .insert(id, (qty, next, sold))
                        .map_or((), |_| ()),
                    Err(Rejection::IllegalTransition { .. }) => {}
                    Err(e) => prop_assert!(false, "refund: {e:?}"),
                }
            }
            Op::Wait { ms } => now += u64::from(ms),
        }
        let levels = inv
            .stock(&sku)
            .await
            .map_err(|e| TestCaseError::fail(format!("levels unreadable (negative?): {e}")))?;
        prop_assert!(levels.invariant_holds(), "invariant: {:?}", levels);
        let (reserved, ordered, sold) = model.expected();
        prop_assert_eq!(
            (levels.reserved(), levels.ordered(), levels.sold()),
            (reserved, ordered, sold)
        );
        prop_assert_eq!(levels.available(), STOCK - reserved - ordered - sold);
    }
    Ok(())
}

fn pick_from<T: Clone>(list: &[T], pick: usize) -> Option<T> {
    (!list.is_empty()).then(|| list[pick % list.len()].clone())
}

#[test]
fn random_interleavings_keep_the_books_balanced() {
    let d = Deployment::single();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let inv = rt.block_on(d.inventory());
    let mut runner = TestRunner::new(Config {
        cases: 128,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&prop::collection::vec(op(), 1..40), |ops| {
            rt.block_on(run_case(&inv, ops))
        })
        .expect("property holds");
}
