//! The report: what a sale benchmark measured and checked, as JSON (`sale.json`) and as the
//! table printed on stdout.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::baseline::{AofGrowth, RedisStall};
use crate::checks::{LedgerCheck, SkuCheck};
use crate::cpu;
use crate::driver::{Failure, Finished, Level, Sample};

/// What was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    /// Deducts through the edge, huge stock, every request a new buyer and key.
    Sustained,
    /// Deducts through the edge, many buyers for few units, through sell-out and beyond.
    Drop,
    /// Baseline: `HGET`/`HINCRBY`/`XADD` as a Redis Function, through redis-rs.
    MinimalDeduct,
    /// Baseline: flashcart's `fc_reserve` through `flashcart-inventory` (redis-rs).
    FcReserve,
    /// Baseline: the `hello` test component through flashcart's host.
    HelloHost,
    /// Baseline: the `hello` test component under `wasmtime serve`.
    HelloWasmtime,
}

impl Subject {
    /// Every baseline, in table order.
    pub const BASELINES: [Subject; 4] = [
        Subject::MinimalDeduct,
        Subject::FcReserve,
        Subject::HelloHost,
        Subject::HelloWasmtime,
    ];

    /// The name in tables and the plot.
    pub fn label(self) -> &'static str {
        match self {
            Subject::Sustained => "flashcart sustained",
            Subject::Drop => "flashcart drop",
            Subject::MinimalDeduct => "minimal deduct (redis-rs)",
            Subject::FcReserve => "fc_reserve (redis-rs)",
            Subject::HelloHost => "hello (flashcart host)",
            Subject::HelloWasmtime => "hello (wasmtime serve)",
        }
    }
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
#[expect(missing_docs, reason = "percentiles, named as they are")]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    /// From a histogram in µs.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// One second of a run: the requests sent in it (open loop: due in it) and their latency.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Second {
    /// The second of the run, from 0.
    pub second: u32,
    /// Requests sent in it.
    pub requests: u64,
    /// Of those, how many got no answer.
    pub failed: u64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Slowest request, ms.
    pub max_ms: f64,
}

/// The run second by second, so a burst of slow requests shows when it happened; seconds in
/// which nothing was sent are left out.
pub fn timeline(samples: &[Sample]) -> Vec<Second> {
    let mut by_second: BTreeMap<u32, (Vec<u32>, u64)> = BTreeMap::new();
    for s in samples {
        let (latencies, failed) = by_second.entry(s.second).or_default();
        latencies.push(s.latency_us);
        *failed += u64::from(s.failed);
    }
    by_second
        .into_iter()
        .map(|(second, (mut latencies, failed))| {
            latencies.sort_unstable();
            // Nearest rank: the smallest latency at or above the fraction q of the requests.
            let rank = |q: f64| {
                let n = latencies.len();
                let index = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
                f64::from(latencies[index]) / 1000.0
            };
            Second {
                second,
                requests: latencies.len() as u64,
                failed,
                p50_ms: rank(0.50),
                p99_ms: rank(0.99),
                max_ms: rank(1.0),
            }
        })
        .collect()
}

/// A Redis stall during a run, placed in the run's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedisStallInRun {
    /// The second of the run its latest stall happened in (Redis gives whole seconds: ±1).
    pub second: u64,
    /// What Redis reported.
    #[serde(flatten)]
    pub stall: RedisStall,
}

/// The drop regime's story.
#[derive(Debug, Clone, Serialize)]
pub struct DropStory {
    /// The SKU.
    pub sku: String,
    /// Units on sale.
    pub stock: u64,
    /// Buyers (one request each).
    pub buyers: u64,
    /// 201 answers (units reserved).
    pub created: u64,
    /// 409 sold-out answers.
    pub sold_out: u64,
    /// Of those, answered by the edge from its sold-out flag (no Redis call).
    pub sold_out_from_edge_flag: u64,
    /// When the last unit was taken (the last 201), ms since the run's start.
    pub sell_out_ms: Option<f64>,
    /// The first sold-out answer, ms since the start.
    pub first_sold_out_ms: Option<f64>,
    /// Sold-out answers per second, from the first one to the end of the run.
    pub sold_out_per_second: Option<f64>,
}

/// One run: one subject at one load level.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// What was measured.
    pub subject: Subject,
    /// How load was offered.
    pub level: Level,
    /// Requests sent (answered + failed).
    pub requests: u64,
    /// From the start until the last answer, seconds.
    pub elapsed_seconds: f64,
    /// Answers (and failures) per second.
    pub requests_per_second: f64,
    /// Latency of every request; open loop: from its intended send time.
    pub latency_ms: Latency,
    /// Answers by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests without an answer, by reason.
    pub failures: BTreeMap<Failure, u64>,
    /// Open loop: how late requests left after their due time — every user was busy (the
    /// server is behind; `--open-users` more would only queue elsewhere) or the generator
    /// itself was slow. Already part of the latency.
    pub send_lag_ms: Option<Latency>,
    /// CPU per process over the run.
    pub cpu: Vec<cpu::Use>,
    /// Redis `FCALL`/`FCALL_RO` calls per request (from `INFO commandstats`; includes
    /// settlement's timer calls made meanwhile).
    pub fcalls_per_request: Option<f64>,
    /// The drop regime's sell-out story.
    pub drop: Option<DropStory>,
    /// Second by second.
    pub timeline: Vec<Second>,
    /// Stalls Redis's latency monitor saw during the run (`None`: not watched — a Redis the
    /// bench did not start).
    pub redis_stalls: Option<Vec<RedisStallInRun>>,
    /// What the run appended to Redis's AOF (`None`: no Redis connection, or no AOF).
    pub aof: Option<AofGrowth>,
}

impl Run {
    /// Summarises a finished run.
    pub fn new(subject: Subject, level: Level, finished: &Finished) -> Self {
        let t = &finished.tally;
        let elapsed = finished.elapsed.max(Duration::from_micros(1));
        Self {
            subject,
            level,
            requests: t.requests(),
            elapsed_seconds: elapsed.as_secs_f64(),
            requests_per_second: t.requests() as f64 / elapsed.as_secs_f64(),
            latency_ms: Latency::of(&t.latency),
            statuses: t.statuses.clone(),
            failures: t.failures.clone(),
            send_lag_ms: matches!(level, Level::Open { .. }).then(|| Latency::of(&t.send_lag)),
            cpu: Vec::new(),
            fcalls_per_request: None,
            drop: None,
            timeline: timeline(&t.samples),
            redis_stalls: None,
            aof: None,
        }
    }

    /// 2xx answers.
    pub fn successes(&self) -> u64 {
        self.statuses.range(200..300).map(|(_, n)| n).sum()
    }

    fn count(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }
}

/// A run's AOF growth, for the per-second line.
fn aof_column(aof: AofGrowth) -> String {
    match (aof.appended_bytes, aof.bytes_per_request) {
        (Some(bytes), Some(per_request)) => format!(
            " | AOF +{:.1} MB, {per_request:.0} B/request",
            bytes as f64 / 1e6
        ),
        _ => format!(" | AOF rewritten ({} rewrite(s))", aof.rewrites),
    }
}

/// flashcart against one baseline at one level.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// The level.
    pub level: Level,
    /// The baseline.
    pub baseline: Subject,
    /// flashcart's requests/s divided by the baseline's.
    pub throughput: f64,
    /// flashcart's p50 latency divided by the baseline's.
    pub p50: f64,
    /// flashcart's p99 latency divided by the baseline's.
    pub p99: f64,
}

/// The machine, around the run.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Cores this process may use.
    pub cores: usize,
    /// Load averages (1, 5, 15 min) before the first run.
    pub load_before: Option<[f64; 3]>,
    /// Load averages after the last run.
    pub load_after: Option<[f64; 3]>,
    /// The Redis server's version.
    pub redis_version: Option<String>,
}

/// How the bench was set up.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    /// `self-started` (the bench started `flashcart up` and Redis) or `external` (`--url`).
    pub mode: String,
    /// The edge nodes' base URLs.
    pub nodes: Vec<String>,
    /// The flashcart version that ran the bench.
    pub bench_version: String,
    /// Each sustained run's bound: `N requests` or a duration.
    pub bound: String,
    /// Open-loop virtual users (connections).
    pub open_users: usize,
    /// The node log filter (`FLASHCART_LOG`) of self-started nodes.
    pub node_log: Option<String>,
    /// The key-value store of self-started nodes: `sqlite` or `memory`.
    pub key_value: Option<String>,
}

/// Everything the checks found.
#[derive(Debug, Clone, Serialize)]
pub struct Checks {
    /// Units sold beyond stock, over every SKU (must be 0).
    pub oversold: u64,
    /// Whether `initial = available + reserved + ordered + sold` held for every SKU.
    pub invariant_holds: bool,
    /// Per SKU.
    pub skus: Vec<SkuCheck>,
    /// The ledger against Redis; `None` when it could not be checked (see the notes).
    pub ledger: Option<LedgerCheck>,
    /// Whether every check that ran passed.
    pub passed: bool,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Unix ms at the start.
    pub started_at_unix_ms: u64,
    /// The machine.
    pub machine: Machine,
    /// The set-up.
    pub setup: Setup,
    /// Every run, in the order run.
    pub runs: Vec<Run>,
    /// flashcart (sustained) against each baseline measured at the same level.
    pub ratios: Vec<Ratio>,
    /// The checks.
    pub checks: Checks,
    /// What the reader must know: skipped baselines, what a machine this size can show.
    pub notes: Vec<String>,
}

/// The ratios of the sustained runs to the baselines at the same level.
pub fn ratios(runs: &[Run]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for run in runs.iter().filter(|r| r.subject == Subject::Sustained) {
        for base in runs
            .iter()
            .filter(|b| b.level == run.level && Subject::BASELINES.contains(&b.subject))
        {
            let div = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
            out.push(Ratio {
                level: run.level,
                baseline: base.subject,
                throughput: div(run.requests_per_second, base.requests_per_second),
                p50: div(run.latency_ms.p50, base.latency_ms.p50),
                p99: div(run.latency_ms.p99, base.latency_ms.p99),
            });
        }
    }
    out
}

fn cpu_column(cpu: &[cpu::Use]) -> String {
    cpu.iter()
        .map(|u| format!("{} {:.0}%", u.name, u.percent_of_one_core))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Report {
    /// The table printed on stdout.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let load = |l: Option<[f64; 3]>| {
            l.map_or("?".to_owned(), |l| {
                format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2])
            })
        };
        let _ = writeln!(
            out,
            "flashcart bench sale — {} node(s) ({}{}), {} cores, load before {} / after {}, redis {}",
            self.setup.nodes.len(),
            self.setup.mode,
            self.setup
                .key_value
                .as_deref()
                .map_or(String::new(), |kv| format!(", {kv} key-value store")),
            self.machine.cores,
            load(self.machine.load_before),
            load(self.machine.load_after),
            self.machine.redis_version.as_deref().unwrap_or("?"),
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<8} {:<26} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>6} {:>6}  cpu (% of one core)",
            "load",
            "subject",
            "requests",
            "req/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "2xx",
            "409",
            "other",
            "failed"
        );
        for r in &self.runs {
            let other = r.statuses.values().sum::<u64>() - r.successes() - r.count(409);
            let _ = writeln!(
                out,
                "{:<8} {:<26} {:>8} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>7} {:>6} {:>6}  {}",
                r.level.to_string(),
                r.subject.label(),
                r.requests,
                r.requests_per_second,
                r.latency_ms.p50,
                r.latency_ms.p90,
                r.latency_ms.p99,
                r.latency_ms.max,
                r.successes(),
                r.count(409),
                other,
                r.failures.values().sum::<u64>(),
                cpu_column(&r.cpu),
            );
        }
        let edge_runs: Vec<&Run> = self
            .runs
            .iter()
            .filter(|r| matches!(r.subject, Subject::Sustained | Subject::Drop))
            .filter(|r| r.timeline.len() > 1)
            .collect();
        if !edge_runs.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "{:<8} {:<26} p99 ms of each second (open loop: by due time) | Redis's own stalls",
                "load", "per second"
            );
            for r in edge_runs {
                let seconds: Vec<String> = r
                    .timeline
                    .iter()
                    .map(|s| format!("{:.1}", s.p99_ms))
                    .collect();
                let stalls: Vec<String> = r
                    .redis_stalls
                    .iter()
                    .flatten()
                    .map(|s| {
                        format!(
                            "{} {} ms (max {}) in second {}",
                            s.stall.event, s.stall.latest_ms, s.stall.max_ms, s.second
                        )
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "{:<8} {:<26} {}{}{}",
                    r.level.to_string(),
                    r.subject.label(),
                    seconds.join(" "),
                    if stalls.is_empty() {
                        String::new()
                    } else {
                        format!(" | redis stalls: {}", stalls.join(", "))
                    },
                    r.aof.map(aof_column).unwrap_or_default(),
                );
            }
        }
        if !self.ratios.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "{:<8} {:<26} {:>12} {:>10} {:>10}",
                "load", "flashcart sustained vs", "req/s ratio", "p50 ratio", "p99 ratio"
            );
            for r in &self.ratios {
                let _ = writeln!(
                    out,
                    "{:<8} {:<26} {:>11.2}× {:>9.2}× {:>9.2}×",
                    r.level.to_string(),
                    r.baseline.label(),
                    r.throughput,
                    r.p50,
                    r.p99
                );
            }
        }
        let drops: Vec<&Run> = self.runs.iter().filter(|r| r.drop.is_some()).collect();
        if !drops.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "{:<8} {:>6} {:>7} {:>6} {:>9} {:>10} {:>13} {:>15} {:>12}",
                "drop",
                "stock",
                "buyers",
                "201",
                "409 sold",
                "from flag",
                "sell-out (ms)",
                "1st sold (ms)",
                "sold-out/s"
            );
            for r in drops {
                let Some(d) = &r.drop else { continue };
                let opt =
                    |v: Option<f64>, p: usize| v.map_or("-".to_owned(), |v| format!("{v:.p$}"));
                let _ = writeln!(
                    out,
                    "{:<8} {:>6} {:>7} {:>6} {:>9} {:>10} {:>13} {:>15} {:>12}",
                    r.level.to_string(),
                    d.stock,
                    d.buyers,
                    d.created,
                    d.sold_out,
                    d.sold_out_from_edge_flag,
                    opt(d.sell_out_ms, 1),
                    opt(d.first_sold_out_ms, 1),
                    opt(d.sold_out_per_second, 0),
                );
            }
        }
        let _ = writeln!(out);
        let c = &self.checks;
        let _ = writeln!(
            out,
            "checks: oversold {} | invariant {} | ledger {} | {}",
            c.oversold,
            if c.invariant_holds { "holds" } else { "BROKEN" },
            match &c.ledger {
                None => "not checked".to_owned(),
                Some(l) if l.passed() => format!(
                    "matches Redis ({} SKUs, {} segments, {} records; drained in {:.1} s)",
                    l.skus, l.segments, l.records, l.drain_seconds
                ),
                Some(l) => format!("DRIFT or unsettled:\n{}", l.table),
            },
            if c.passed { "PASSED" } else { "FAILED" },
        );
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(subject: Subject, rps: f64, p50: f64) -> Run {
        Run {
            subject,
            level: Level::Closed { concurrency: 8 },
            requests: 100,
            elapsed_seconds: 1.0,
            requests_per_second: rps,
            latency_ms: Latency {
                p50,
                p90: p50,
                p99: 2.0 * p50,
                max: 3.0 * p50,
                mean: p50,
            },
            statuses: BTreeMap::from([(201, 100)]),
            failures: BTreeMap::new(),
            send_lag_ms: None,
            cpu: Vec::new(),
            fcalls_per_request: None,
            drop: None,
            timeline: Vec::new(),
            redis_stalls: None,
            aof: None,
        }
    }

    fn sample(second: u32, latency_ms: u32) -> Sample {
        Sample {
            second,
            latency_us: latency_ms * 1000,
            failed: false,
        }
    }

    #[test]
    fn the_timeline_shows_the_second_a_burst_happened_in() {
        // Second 0: 100 fast requests. Second 2: 98 fast, two slow ones and a failure.
        let mut samples: Vec<Sample> = (0..100).map(|_| sample(0, 2)).collect();
        samples.extend((0..98).map(|_| sample(2, 3)));
        samples.push(sample(2, 80));
        samples.push(Sample {
            failed: true,
            ..sample(2, 10_000)
        });
        let t = timeline(&samples);
        assert_eq!(t.len(), 2, "a second with no request is left out: {t:?}");
        assert_eq!((t[0].second, t[0].requests, t[0].failed), (0, 100, 0));
        assert_eq!((t[0].p50_ms, t[0].p99_ms, t[0].max_ms), (2.0, 2.0, 2.0));
        assert_eq!((t[1].second, t[1].requests, t[1].failed), (2, 100, 1));
        assert_eq!(
            (t[1].p50_ms, t[1].p99_ms, t[1].max_ms),
            (3.0, 80.0, 10_000.0)
        );
    }

    #[test]
    fn ratios_pair_sustained_runs_with_baselines_at_the_same_level() {
        let mut other_level = run(Subject::FcReserve, 1.0, 1.0);
        other_level.level = Level::Open { rate: 10 };
        let runs = vec![
            run(Subject::Sustained, 1000.0, 4.0),
            run(Subject::MinimalDeduct, 4000.0, 1.0),
            run(Subject::Drop, 1.0, 1.0),
            other_level,
        ];
        let r = ratios(&runs);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].baseline, Subject::MinimalDeduct);
        assert!((r[0].throughput - 0.25).abs() < 1e-9);
        assert!((r[0].p50 - 4.0).abs() < 1e-9);
    }
}
