//! CPU time of processes, from `/proc/<pid>/stat` (user + system time, every thread), so a
//! run can say which process spent the machine's cores.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

/// A process whose CPU time a run watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// Its name in reports (`node1`, `redis`, `bench`).
    pub name: String,
    /// Its pid.
    pub pid: u32,
}

/// CPU time of the watched processes at one moment (`None` where unreadable).
#[derive(Debug, Clone)]
pub struct Sample(Vec<Option<u64>>);

/// One process's CPU use over a run.
#[derive(Debug, Clone, Serialize)]
pub struct Use {
    /// Its name.
    pub name: String,
    /// Its pid.
    pub pid: u32,
    /// CPU seconds (user + system) spent during the run.
    pub cpu_seconds: f64,
    /// Percent of one core over the run's wall time (200 = two cores busy).
    pub percent_of_one_core: f64,
    /// CPU microseconds per request of the run.
    pub us_per_request: f64,
}

/// Reads CPU times; knows the kernel's clock tick.
#[derive(Debug, Clone)]
pub struct Meter {
    ticks_per_second: f64,
    watched: Vec<Watched>,
}

impl Meter {
    /// A meter for `watched`.
    pub fn new(watched: Vec<Watched>) -> Self {
        Self {
            ticks_per_second: clock_ticks(),
            watched,
        }
    }

    /// What each watched process has spent so far.
    pub fn sample(&self) -> Sample {
        Sample(
            self.watched
                .iter()
                .map(|w| ticks(&Path::new("/proc").join(w.pid.to_string()).join("stat")))
                .collect(),
        )
    }

    /// What each process spent between `before` and `after`, over `wall` and `requests`.
    pub fn used(&self, before: &Sample, after: &Sample, wall: Duration, requests: u64) -> Vec<Use> {
        self.watched
            .iter()
            .zip(before.0.iter().zip(&after.0))
            .filter_map(|(w, (b, a))| {
                let spent = a.zip(*b).map(|(a, b)| a.saturating_sub(b))?;
                let cpu_seconds = spent as f64 / self.ticks_per_second;
                Some(Use {
                    name: w.name.clone(),
                    pid: w.pid,
                    cpu_seconds,
                    percent_of_one_core: 100.0 * cpu_seconds / wall.as_secs_f64().max(1e-9),
                    us_per_request: 1e6 * cpu_seconds / (requests.max(1) as f64),
                })
            })
            .collect()
    }
}

/// `utime + stime` of a `/proc/<pid>/stat` file, in clock ticks.
fn ticks(path: &Path) -> Option<u64> {
    parse_stat(&std::fs::read_to_string(path).ok()?)
}

fn parse_stat(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces or ')': fields are
    // counted from the last ')'. After it come field 3 (state) … 14 (utime), 15 (stime).
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The kernel's clock tick (`getconf CLK_TCK`); 100 on every Linux we know of, used when
/// `getconf` is missing.
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_count_from_the_last_parenthesis() {
        let stat = "4242 (flash cart) (x)) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    1234 567 0 0 20 0 9 0 100 1000 200 18446744073709551615";
        assert_eq!(parse_stat(stat), Some(1234 + 567));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_has_spent_some_cpu() {
        let meter = Meter::new(vec![Watched {
            name: "self".into(),
            pid: std::process::id(),
        }]);
        let before = meter.sample();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let after = meter.sample();
        let used = meter.used(&before, &after, Duration::from_secs(1), 10);
        assert_eq!(used.len(), 1);
        assert!(used[0].cpu_seconds >= 0.0);
        assert!(load_average().is_some());
    }
}
