//! The load driver: virtual users taking numbered tickets from one schedule, closed or open
//! loop, against any [`Target`].
//!
//! Every target — the edge over HTTP, a Redis function over redis-rs, the hello component —
//! runs through this one driver, so a ratio between two of them compares the targets, not
//! two measuring codes.
//!
//! - **Closed loop** ([`Level::Closed`]): `concurrency` users, each sending its next request
//!   when the last one is answered; latency runs from the actual send.
//! - **Open loop** ([`Level::Open`]): request `i` is due at `start + i / rate`, whoever is
//!   free takes it; latency runs from that *intended* time, so a stalled server is charged
//!   for the requests it kept waiting (no coordinated omission). When every user is busy,
//!   tickets are taken late and the lateness counts as latency.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

/// How load is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Level {
    /// `concurrency` users, each with one request in flight.
    Closed {
        /// Users (connections).
        concurrency: usize,
    },
    /// A fixed schedule of `rate` requests per second.
    Open {
        /// Requests per second offered.
        rate: u64,
    },
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Level::Closed { concurrency } => write!(f, "c={concurrency}"),
            Level::Open { rate } => write!(f, "r={rate}/s"),
        }
    }
}

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// After this many requests.
    Requests(u64),
    /// After this long (closed loop), or after `rate × duration` requests (open loop).
    Duration(Duration),
}

impl Bound {
    /// How many requests a run at `level` sends: known unless it is a closed loop bounded
    /// by time (an open loop sends `rate × duration`, at least one).
    pub fn requests(self, level: Level) -> Option<u64> {
        match (self, level) {
            (Bound::Requests(n), _) => Some(n),
            (Bound::Duration(d), Level::Open { rate }) => {
                Some(((d.as_secs_f64() * rate.max(1) as f64).round() as u64).max(1))
            }
            (Bound::Duration(_), Level::Closed { .. }) => None,
        }
    }
}

/// One run's plan.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// How load is offered.
    pub level: Level,
    /// When it ends.
    pub bound: Bound,
    /// Users of an open-loop run (a closed loop has `concurrency`).
    pub open_users: usize,
    /// A request unanswered this long counts as a failure (and its connection is replaced).
    pub timeout: Duration,
}

impl Plan {
    fn users(&self) -> usize {
        match self.level {
            Level::Closed { concurrency } => concurrency.max(1),
            Level::Open { .. } => self.open_users.max(1),
        }
    }
}

/// What a target answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer.
    Answer {
        /// Its HTTP status (a redis-rs baseline maps its reply to the status the edge would give).
        status: u16,
        /// Whether it said "sold out".
        sold_out: bool,
        /// Whether the edge answered from its sold-out flag, without Redis.
        from_edge_flag: bool,
    },
    /// No usable answer; the user's connection is replaced before its next request.
    Failed(Failure),
}

impl Outcome {
    /// An answer that is neither sold out nor from the edge flag.
    pub fn status(status: u16) -> Self {
        Outcome::Answer {
            status,
            sold_out: false,
            from_edge_flag: false,
        }
    }
}

/// Why a request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The connection could not be (re)opened.
    Connect,
    /// The request or its answer failed on the wire.
    Transport,
    /// No answer within the plan's timeout.
    Timeout,
}

/// Something the driver sends requests to.
pub trait Target: Send + Sync + 'static {
    /// One virtual user's connection.
    type User: Send + 'static;
    /// Opens user `index`'s connection.
    fn connect(&self, index: usize) -> impl Future<Output = anyhow::Result<Self::User>> + Send;
    /// Sends request number `i` (unique within the run) and classifies the answer.
    fn call(&self, user: &mut Self::User, i: u64) -> impl Future<Output = Outcome> + Send;
}

/// The shared ticket dispenser.
struct Schedule {
    start: Instant,
    next: AtomicU64,
    limit: u64,
    deadline: Option<Instant>,
    interval: Option<Duration>,
}

struct Ticket {
    i: u64,
    due: Option<Instant>,
}

impl Schedule {
    fn new(plan: &Plan, start: Instant) -> Self {
        let (limit, deadline, interval) = match (plan.level, plan.bound) {
            (Level::Closed { .. }, Bound::Requests(n)) => (n, None, None),
            (Level::Closed { .. }, Bound::Duration(d)) => (u64::MAX, Some(start + d), None),
            (Level::Open { rate }, bound) => (
                bound.requests(plan.level).unwrap_or(1),
                None,
                Some(Duration::from_secs_f64(1.0 / rate.max(1) as f64)),
            ),
        };
        Self {
            start,
            next: AtomicU64::new(0),
            limit,
            deadline,
            interval,
        }
    }

    fn take(&self) -> Option<Ticket> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.limit).then(|| Ticket {
            i,
            // Computed from the start each time (not accumulated), so rounding never drifts.
            due: self.interval.map(|d| self.start + d.mul_f64(i as f64)),
        })
    }

    fn taken(&self) -> u64 {
        self.next.load(Ordering::Relaxed).min(self.limit)
    }
}

/// Latency histogram in microseconds, 1 µs to 10 minutes, 3 significant figures.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static histogram bounds are valid")
}

/// What the users saw, merged.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Latency of every request, answered or not, in µs.
    pub latency: Histogram<u64>,
    /// Answers by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests without an answer, by reason.
    pub failures: BTreeMap<Failure, u64>,
    /// Answers that said sold out.
    pub sold_out: u64,
    /// Sold-out answers the edge gave from its flag.
    pub from_edge_flag: u64,
    /// When the first sold-out answer arrived, since the start.
    pub first_sold_out: Option<Duration>,
    /// When the last 2xx answer arrived, since the start.
    pub last_success: Option<Duration>,
    /// When the last answer (or failure) arrived, since the start.
    pub last_done: Duration,
    /// Open loop: how late requests were sent after their due time, in µs.
    pub send_lag: Histogram<u64>,
    /// Every request, by the second it was sent (open loop: due), for the per-second view.
    pub samples: Vec<Sample>,
}

/// One request's place in the run's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// The second of the run it was sent in (open loop: due in), from 0.
    pub second: u32,
    /// Its latency in µs (saturating at `u32::MAX`, about 71 minutes).
    pub latency_us: u32,
    /// Whether it got no answer.
    pub failed: bool,
}

impl Tally {
    fn new() -> Self {
        Self {
            latency: histogram(),
            statuses: BTreeMap::new(),
            failures: BTreeMap::new(),
            sold_out: 0,
            from_edge_flag: 0,
            first_sold_out: None,
            last_success: None,
            last_done: Duration::ZERO,
            send_lag: histogram(),
            samples: Vec::new(),
        }
    }

    /// A tally whose memory is already in place: its histograms' pages touched, room for a
    /// few thousand samples, so recording in a run costs no page fault at its start.
    fn ready() -> Self {
        let mut tally = Self::new();
        for h in [&mut tally.latency, &mut tally.send_lag] {
            let _ = h.record(1);
            h.reset();
        }
        tally.samples.reserve(4096);
        tally
    }

    fn record(&mut self, outcome: Outcome, sent: Duration, latency: Duration, done: Duration) {
        let latency_us = latency.as_micros() as u64;
        let _ = self.latency.record(latency_us.clamp(1, 600_000_000));
        self.samples.push(Sample {
            second: u32::try_from(sent.as_secs()).unwrap_or(u32::MAX),
            latency_us: u32::try_from(latency_us).unwrap_or(u32::MAX),
            failed: matches!(outcome, Outcome::Failed(_)),
        });
        self.last_done = self.last_done.max(done);
        match outcome {
            Outcome::Answer {
                status,
                sold_out,
                from_edge_flag,
            } => {
                *self.statuses.entry(status).or_default() += 1;
                if (200..300).contains(&status) {
                    self.last_success = Some(self.last_success.map_or(done, |t| t.max(done)));
                }
                if sold_out {
                    self.sold_out += 1;
                    self.from_edge_flag += u64::from(from_edge_flag);
                    self.first_sold_out = Some(self.first_sold_out.map_or(done, |t| t.min(done)));
                }
            }
            Outcome::Failed(why) => *self.failures.entry(why).or_default() += 1,
        }
    }

    fn merge(&mut self, other: Tally) {
        let _ = self.latency.add(&other.latency);
        let _ = self.send_lag.add(&other.send_lag);
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in other.failures {
            *self.failures.entry(k).or_default() += v;
        }
        self.samples.extend(other.samples);
        self.sold_out += other.sold_out;
        self.from_edge_flag += other.from_edge_flag;
        self.first_sold_out = match (self.first_sold_out, other.first_sold_out) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_success = self.last_success.max(other.last_success);
        self.last_done = self.last_done.max(other.last_done);
    }

    /// Requests sent: answers plus failures.
    pub fn requests(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.failures.values().sum::<u64>()
    }

    /// Answers with a 2xx status.
    pub fn successes(&self) -> u64 {
        self.statuses.range(200..300).map(|(_, n)| *n).sum::<u64>()
    }
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct Finished {
    /// What the users saw.
    pub tally: Tally,
    /// From the start until the last user finished.
    pub elapsed: Duration,
}

/// Something that watches a run's progress (the progress bar).
pub trait Progress: Send + Sync {
    /// Requests handed out so far.
    fn at(&self, requests: u64);
}

impl Progress for () {
    fn at(&self, _: u64) {}
}

/// Runs `plan` against `target`: connects every user first, then starts the clock.
///
/// # Errors
/// When a user's first connection cannot be opened (the target is unreachable).
pub async fn run<T: Target>(
    target: Arc<T>,
    plan: Plan,
    progress: &dyn Progress,
) -> anyhow::Result<Finished> {
    let users = plan.users();
    let mut connected = Vec::with_capacity(users);
    for index in 0..users {
        connected.push(
            target
                .connect(index)
                .await
                .with_context(|| format!("connecting virtual user {index}"))?,
        );
    }
    // Each user's histograms (~300 KB) are allocated and touched before the clock starts:
    // allocated by 256 users in their first moments, they held the open loop's first
    // requests back by 15-30 ms, a cost of the generator charged to the target.
    let tallies: Vec<Tally> = (0..users).map(|_| Tally::ready()).collect();
    let start = Instant::now();
    let schedule = Arc::new(Schedule::new(&plan, start));
    let mut tasks = tokio::task::JoinSet::new();
    for ((index, conn), tally) in connected.into_iter().enumerate().zip(tallies) {
        let target = Arc::clone(&target);
        let schedule = Arc::clone(&schedule);
        tasks.spawn(user(target, index, conn, tally, schedule, plan.timeout));
    }
    let mut tally = Tally::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(done) => tally.merge(done.context("a virtual user panicked")?),
                None => break,
            },
            _ = ticker.tick() => progress.at(schedule.taken()),
        }
    }
    progress.at(schedule.taken());
    Ok(Finished {
        tally,
        elapsed: start.elapsed(),
    })
}

async fn user<T: Target>(
    target: Arc<T>,
    index: usize,
    conn: T::User,
    mut tally: Tally,
    schedule: Arc<Schedule>,
    timeout: Duration,
) -> Tally {
    let mut conn = Some(conn);
    while let Some(ticket) = schedule.take() {
        let sent_from = match ticket.due {
            Some(due) => {
                tokio::time::sleep_until(due).await;
                let lag = Instant::now().saturating_duration_since(due);
                let _ = tally
                    .send_lag
                    .record((lag.as_micros() as u64).clamp(1, 600_000_000));
                due
            }
            None => Instant::now(),
        };
        if conn.is_none() {
            conn = target.connect(index).await.ok();
        }
        let outcome = match conn.as_mut() {
            None => Outcome::Failed(Failure::Connect),
            Some(c) => tokio::time::timeout(timeout, target.call(c, ticket.i))
                .await
                .unwrap_or(Outcome::Failed(Failure::Timeout)),
        };
        if matches!(outcome, Outcome::Failed(_)) {
            conn = None;
        }
        let now = Instant::now();
        tally.record(
            outcome,
            sent_from.saturating_duration_since(schedule.start),
            now.saturating_duration_since(sent_from),
            now.saturating_duration_since(schedule.start),
        );
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers 201 for even requests and a sold-out 409 for odd ones after a short await.
    struct Fake;

    impl Target for Fake {
        type User = ();
        async fn connect(&self, _: usize) -> anyhow::Result<()> {
            Ok(())
        }
        async fn call(&self, _: &mut (), i: u64) -> Outcome {
            tokio::task::yield_now().await;
            if i.is_multiple_of(2) {
                Outcome::status(201)
            } else {
                Outcome::Answer {
                    status: 409,
                    sold_out: true,
                    from_edge_flag: i % 4 == 1,
                }
            }
        }
    }

    fn plan(level: Level, bound: Bound) -> Plan {
        Plan {
            level,
            bound,
            open_users: 4,
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn closed_loop_sends_exactly_the_requests_asked() -> anyhow::Result<()> {
        let done = run(
            Arc::new(Fake),
            plan(Level::Closed { concurrency: 3 }, Bound::Requests(101)),
            &(),
        )
        .await?;
        let t = &done.tally;
        assert_eq!(t.requests(), 101);
        assert_eq!(t.latency.len(), 101);
        assert_eq!(t.statuses.get(&201), Some(&51));
        assert_eq!(t.statuses.get(&409), Some(&50));
        assert_eq!(t.sold_out, 50);
        assert_eq!(t.from_edge_flag, 25);
        assert!(t.failures.is_empty());
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_follows_the_schedule_and_charges_lateness() -> anyhow::Result<()> {
        // A target that takes 100 ms: two users cannot keep up with 100/s, so requests wait
        // for a free user and that wait is part of their latency.
        struct Slow;
        impl Target for Slow {
            type User = ();
            async fn connect(&self, _: usize) -> anyhow::Result<()> {
                Ok(())
            }
            async fn call(&self, _: &mut (), _: u64) -> Outcome {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Outcome::status(200)
            }
        }
        let mut p = plan(
            Level::Open { rate: 100 },
            Bound::Duration(Duration::from_secs(1)),
        );
        p.open_users = 2;
        let done = run(Arc::new(Slow), p, &()).await?;
        assert_eq!(done.tally.requests(), 100);
        // 100 requests × 100 ms over 2 users: about 5 s in all; the last request was due
        // at 0.99 s, so it waited ~4 s: the tail shows the backlog, not 100 ms.
        assert!(done.elapsed >= Duration::from_secs(5));
        assert!(done.tally.latency.max() >= 3_900_000);
        // The first requests were sent on time: their latency is the call's own 100 ms
        // (within the histogram's 3 significant figures).
        assert!(
            done.tally
                .latency
                .equivalent(done.tally.latency.min(), 100_000)
        );
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_by_duration_stops_and_counts_timeouts() -> anyhow::Result<()> {
        struct Stuck;
        impl Target for Stuck {
            type User = ();
            async fn connect(&self, _: usize) -> anyhow::Result<()> {
                Ok(())
            }
            async fn call(&self, _: &mut (), _: u64) -> Outcome {
                std::future::pending().await
            }
        }
        let mut p = plan(
            Level::Closed { concurrency: 2 },
            Bound::Duration(Duration::from_secs(3)),
        );
        p.timeout = Duration::from_secs(1);
        let done = run(Arc::new(Stuck), p, &()).await?;
        // Each user: requests at 0 s, 1 s, 2 s, each timing out after 1 s.
        assert_eq!(done.tally.failures.get(&Failure::Timeout), Some(&6));
        assert_eq!(done.tally.requests(), 6);
        Ok(())
    }
}
