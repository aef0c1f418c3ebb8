//! Serving a component's requests on reused instances, as Spin 4.1 and `wasmtime serve` do.
//!
//! A WASI 0.3 handler is an async export: one instance can take several requests at
//! once (they interleave at await points) and many one after another. Instantiating
//! once per request costs a store, an instance's memory and its start-up code every
//! time; reusing an instance for up to [`Reuse::max_requests`] requests, up to
//! [`Reuse::max_concurrent`] at a time, removes that from the hot path. The dispatch is
//! wasmtime-wasi-http's own [`ProxyHandler`]: a request goes to an instance that can
//! take it, or a new one is started; an instance idle for [`Reuse::idle_timeout`] is
//! dropped.
//!
//! **The isolation trade-off.** Requests served by one instance share its linear
//! memory: a component's statics (caches, a Redis connection opened once) outlive a
//! request, and a bug that leaks one request's data into a global could show it to a
//! later one. flashcart's components keep nothing per request in statics and are tested
//! under reuse; `--max-instance-reuse 1` restores one fresh instance per request.
//!
//! **Deadlines.** A request's deadline is enforced three ways, because a guest can
//! stall in three ways: its own expiration future inside the instance's event loop
//! (a guest awaiting too long), the epoch callback (a guest burning CPU: the whole
//! instance traps, and every request it holds is answered 504), and a wall-clock
//! timeout around the whole call here (a host call that never returns).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime::component::GuestTaskId;
use wasmtime::{Store, StoreContextMut, Trap, UpdateDeadline};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::handler::{
    ExpirationError, HandlerState, Instance, InstantiationError, Proxy, ProxyHandler, ShouldAccept,
    WorkerExpiration, WorkerState, WorkerStatus,
};
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;

use crate::instance::{self, Answer, ComponentContext, Failure, RequestState};
use crate::runtime::EPOCH_TICK;

/// How instances are reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reuse {
    /// Requests one instance serves before it is dropped (1 = a fresh instance per
    /// request).
    pub max_requests: usize,
    /// Requests one instance serves at the same time.
    pub max_concurrent: usize,
    /// How long an idle instance is kept for the next request.
    pub idle_timeout: Duration,
}

impl Default for Reuse {
    /// Spin 4.1's and `wasmtime serve`'s defaults for WASI 0.3 components.
    fn default() -> Self {
        Self {
            max_requests: 128,
            max_concurrent: 16,
            idle_timeout: Duration::from_secs(1),
        }
    }
}

/// How many epoch ticks a guest runs between deadline checks.
const CHECK_TICKS: u64 = 2;

/// Serves one component's requests.
pub struct ComponentHandler {
    proxy: ProxyHandler<Instances>,
    timeout: Duration,
}

impl std::fmt::Debug for ComponentHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentHandler")
            .field("component", &self.proxy.state().context.id)
            .field("reuse", &self.proxy.state().reuse)
            .finish_non_exhaustive()
    }
}

impl ComponentHandler {
    /// A handler for the component `pre`, with `timeout` per request.
    pub fn new(
        pre: ServicePre<RequestState>,
        context: Arc<ComponentContext>,
        reuse: Reuse,
        timeout: Duration,
    ) -> Self {
        let reuse = Reuse {
            max_requests: reuse.max_requests.max(1),
            max_concurrent: reuse.max_concurrent.max(1),
            idle_timeout: reuse.idle_timeout,
        };
        Self {
            proxy: ProxyHandler::new(Instances {
                pre,
                context,
                reuse,
                timeout,
            }),
            timeout,
        }
    }

    /// Runs `request` on an instance and collects the whole response.
    ///
    /// # Errors
    /// [`Failure`] when the guest ran past the deadline, trapped, answered an error code
    /// or no instance could be created.
    pub async fn handle(&self, request: http::Request<Full<Bytes>>) -> Result<Answer, Failure> {
        let verdict = Arc::new(Verdict::default());
        let request = request.map(|body| body.map_err(|never| match never {}).boxed_unsync());
        let work = async {
            let response = self
                .proxy
                .handle(Arc::clone(&verdict), request)
                .await
                .map_err(|e| classify(e, &verdict, self.timeout))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| Failure::Trap(format!("response body: {e:?}")))?
                .to_bytes();
            Ok(Answer {
                parts,
                body,
                instantiate: Duration::ZERO,
            })
        };
        // The instance's own deadlines normally answer first; this covers a host call
        // that never returns. A little slack lets the named causes win the race.
        match tokio::time::timeout(self.timeout + 4 * EPOCH_TICK, work).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Timeout(self.timeout)),
        }
    }
}

fn classify(err: wasmtime::Error, verdict: &Verdict, timeout: Duration) -> Failure {
    if verdict.timed_out() || err.downcast_ref::<ExpirationError>().is_some() {
        return Failure::Timeout(timeout);
    }
    if err.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return Failure::Timeout(timeout);
    }
    if let Some(code) = err.downcast_ref::<ErrorCode>() {
        return Failure::ErrorCode(format!("{code:?}"));
    }
    if let Some(e) = err.downcast_ref::<InstantiationError<Arc<Verdict>>>() {
        return Failure::Unavailable(format!("{:#}", e.error));
    }
    Failure::Trap(format!("{err:#}"))
}

/// What the instance learnt about one request that the caller cannot see from the
/// error alone: an instance trapped by its epoch callback fails all its requests with
/// the same error, and those past their deadline must be answered 504, not 500.
#[derive(Debug, Default)]
struct Verdict {
    timed_out: std::sync::atomic::AtomicBool,
}

impl Verdict {
    fn mark_timed_out(&self) {
        self.timed_out
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn timed_out(&self) -> bool {
        self.timed_out.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The requests an instance holds, with their start times: read by the epoch callback.
#[derive(Debug, Default)]
struct InFlight {
    next: u64,
    requests: Vec<(u64, Instant, Arc<Verdict>)>,
}

/// Removes a request from [`InFlight`] when its expiration future is dropped, that is
/// when it answered or expired.
struct Leave {
    in_flight: Arc<Mutex<InFlight>>,
    id: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        if let Ok(mut in_flight) = self.in_flight.lock() {
            in_flight.requests.retain(|(id, _, _)| *id != self.id);
        }
    }
}

/// The application state behind the [`ProxyHandler`]: how to make an instance.
struct Instances {
    pre: ServicePre<RequestState>,
    context: Arc<ComponentContext>,
    reuse: Reuse,
    timeout: Duration,
}

impl HandlerState for Instances {
    type StoreData = RequestState;
    type WorkerExpiration = Expiration;
    type WorkerState = Worker;

    async fn instantiate(&self) -> wasmtime::Result<Instance<RequestState, Expiration, Worker>> {
        let started = Instant::now();
        let mut store = instance::new_store(self.pre.engine(), Arc::clone(&self.context));
        let in_flight = Arc::new(Mutex::new(InFlight::default()));
        let timeout = self.timeout;
        store.set_epoch_deadline(CHECK_TICKS);
        let watched = Arc::clone(&in_flight);
        store.epoch_deadline_callback(move |_| {
            // A guest that burns CPU past a request's deadline stops the instance: the
            // requests past it are answered 504, the others fail with it.
            let in_flight = watched.lock().map_err(|_| Trap::Interrupt)?;
            let late: Vec<_> = in_flight
                .requests
                .iter()
                .filter(|(_, start, _)| start.elapsed() >= timeout)
                .collect();
            if late.is_empty() {
                return Ok(UpdateDeadline::Continue(CHECK_TICKS));
            }
            for (_, _, verdict) in late {
                verdict.mark_timed_out();
            }
            Err(Trap::Interrupt.into())
        });
        let service = self.pre.instantiate_async(&mut store).await?;
        metrics::histogram!("flashcart_instantiate_seconds", "component" => self.context.id.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("flashcart_instances_total", "component" => self.context.id.clone())
            .increment(1);
        Ok(Instance {
            store,
            proxy: Proxy::P3(service),
            view: <RequestState as WasiHttpView>::http,
            expiration: Expiration::new(self.reuse.idle_timeout, timeout),
            state: Worker {
                reuse: self.reuse,
                timeout,
                in_flight,
                component: self.context.id.clone(),
            },
        })
    }
}

/// One instance's request accounting.
struct Worker {
    reuse: Reuse,
    timeout: Duration,
    in_flight: Arc<Mutex<InFlight>>,
    component: String,
}

impl WorkerState for Worker {
    type StoreData = RequestState;
    type RequestData = Arc<Verdict>;

    fn should_accept_request(&self, concurrent: usize, total: usize) -> ShouldAccept {
        if total >= self.reuse.max_requests {
            ShouldAccept::Never
        } else if concurrent >= self.reuse.max_concurrent {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        _store: StoreContextMut<'_, RequestState>,
        verdict: Arc<Verdict>,
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
        let id = match self.in_flight.lock() {
            Ok(mut in_flight) => {
                let id = in_flight.next;
                in_flight.next += 1;
                in_flight
                    .requests
                    .push((id, Instant::now(), Arc::clone(&verdict)));
                id
            }
            Err(_) => u64::MAX,
        };
        let leave = Leave {
            in_flight: Arc::clone(&self.in_flight),
            id,
        };
        let timeout = self.timeout;
        Box::pin(async move {
            let _leave = leave;
            tokio::time::sleep(timeout).await;
            verdict.mark_timed_out();
        })
    }

    fn drop(&self, store: Store<RequestState>, result: wasmtime::Result<()>) {
        match result {
            Ok(()) => {}
            Err(e) if dropped_unfinished(&e) => {
                tracing::debug!(component = %self.component, "instance dropped with the server");
            }
            Err(e) => {
                tracing::warn!(component = %self.component, error = %format!("{e:#}"), "instance stopped");
            }
        }
        drop(store);
    }
}

/// Whether `error` is how wasmtime-wasi-http reports a worker whose task was dropped before
/// it finished, and no panic is the cause: the runtime dropping its tasks as the server stops
/// (an idle instance still waiting for its next request), which is no failure to warn about.
///
/// wasmtime-wasi-http 48 (`handler.rs`, `Dropper`) passes "worker panicked" from the `Drop`
/// of a guard the worker holds, both when a panic unwinds through the worker and when the
/// worker's future is dropped. A panic runs that `Drop` on the unwinding thread, so
/// `thread::panicking()` tells the two apart; if the message ever changes, we warn as before.
fn dropped_unfinished(error: &wasmtime::Error) -> bool {
    !std::thread::panicking() && error.to_string() == "worker panicked"
}

/// When an instance is dropped: idle past the idle timeout, or busy past a deadline
/// (the second line of defence when a guest blocks its own event loop).
struct Expiration {
    idle: Duration,
    busy: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Expiration {
    fn new(idle: Duration, timeout: Duration) -> Self {
        Self {
            idle,
            busy: timeout + 4 * EPOCH_TICK,
            timer: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl WorkerExpiration for Expiration {
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        status: WorkerStatus,
        start: Instant,
    ) -> Poll<()> {
        let limit = match status {
            WorkerStatus::Idle => self.idle,
            WorkerStatus::Requests | WorkerStatus::PostReturn => self.busy,
        };
        let deadline = tokio::time::Instant::from_std(start + limit);
        if tokio::time::Instant::now() >= deadline {
            return Poll::Ready(());
        }
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        self.timer.as_mut().poll(cx)
    }
}
