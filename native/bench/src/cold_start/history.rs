//! The cold-start history: one record per (component, digest of its `.wasm`), so each build
//! of a component is measured once and compared with the build before it.
//!
//! A JSON file (`{"format": 1, "records": [...]}`), records in the order their builds were
//! last measured. Measuring a digest again replaces that record's figures (the latest
//! measurement of a build is the one kept, so a run on a quieter machine can correct a noisy
//! one), counts the run in `runs`, keeps `first_measured_at`, and moves the record to the
//! end: the record before it of the same component is always the previous build.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The file format this code reads and writes.
pub const FORMAT: u32 = 1;

/// Where the history is kept unless `--history` says otherwise:
/// `$XDG_CACHE_HOME/flashcart/cold-start-history.json`, else
/// `$HOME/.cache/flashcart/cold-start-history.json` — outside the source tree, beside the
/// compiled-code cache `flashcart up` uses.
pub fn default_path() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| std::env::temp_dir().join("flashcart-cache"));
    base.join("flashcart").join("cold-start-history.json")
}

/// SHA-256 of a file, in hex: the key of a build.
///
/// # Errors
/// When the file cannot be read.
pub fn digest_of(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    Ok(hex::encode(digest))
}

/// What was measured for one build of a component.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Compile with an empty compiled-code cache, ms.
    pub compile_ms: f64,
    /// Load from the warm cache in a new engine, ms (median of the starts).
    pub cache_load_ms: f64,
    /// The first request after a cached start, over HTTP, ms (median of the starts).
    pub first_request_ms: f64,
    /// New instance from the pre-instance, pooling allocator: median, µs.
    pub instantiate_p50_us: f64,
    /// The same, 99th percentile, µs.
    pub instantiate_p99_us: f64,
    /// Linear memory of one instance after its first request, KiB.
    pub memory_kib: f64,
    /// Table elements of that instance.
    pub table_elements: u64,
}

impl Figures {
    /// The figures compared between builds: name, value, unit.
    pub fn named(&self) -> [(&'static str, f64, &'static str); 6] {
        [
            ("compile", self.compile_ms, "ms"),
            ("cache load", self.cache_load_ms, "ms"),
            ("first request", self.first_request_ms, "ms"),
            ("instantiate p50", self.instantiate_p50_us, "µs"),
            ("instantiate p99", self.instantiate_p99_us, "µs"),
            ("memory", self.memory_kib, "KiB"),
        ]
    }
}

/// One build of one component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The component's id in the manifest (or the file's stem for `--component`).
    pub component: String,
    /// SHA-256 of the `.wasm`, hex.
    pub digest: String,
    /// The file measured.
    pub source: String,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// The figures of the latest measurement of this digest.
    pub figures: Figures,
    /// Timed instantiations behind the percentiles.
    pub instantiations: usize,
    /// Cached starts behind the medians.
    pub starts: usize,
    /// The host that measured: flashcart's and wasmtime's versions.
    pub host: String,
    /// The machine: host name, CPU model, cores.
    pub machine: String,
    /// Load averages (1, 5, 15 min) when the measurement started.
    pub load: Option<[f64; 3]>,
    /// When the latest measurement ran (RFC 3339, UTC).
    pub measured_at: String,
    /// When this digest was first measured.
    pub first_measured_at: String,
    /// How many runs measured this digest.
    pub runs: u32,
}

impl Record {
    /// The digest's first 12 hex digits, as reports show it.
    pub fn short_digest(&self) -> &str {
        &self.digest[..self.digest.len().min(12)]
    }
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct History {
    format: u32,
    /// Every build measured, oldest first.
    pub records: Vec<Record>,
}

impl Default for History {
    fn default() -> Self {
        Self {
            format: FORMAT,
            records: Vec::new(),
        }
    }
}

/// What recording a measurement did.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// The record as it is now.
    pub record: Record,
    /// The previous build of the same component (another digest), if any.
    pub previous: Option<Record>,
    /// Whether this digest had been measured before (its record was replaced, not added).
    pub seen_before: bool,
}

impl History {
    /// Reads the history at `path`; a missing file is an empty history.
    ///
    /// # Errors
    /// When the file cannot be read or is not a history of this format.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let history: Self = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a cold-start history", path.display()))?;
        anyhow::ensure!(
            history.format == FORMAT,
            "{}: history format {}, this flashcart reads format {FORMAT}",
            path.display(),
            history.format
        );
        Ok(history)
    }

    /// Writes the history to `path` (through a temporary file renamed over it, so a crash
    /// never leaves half a history), creating its directory.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let temporary = path.with_extension("json.tmp");
        std::fs::write(&temporary, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", temporary.display()))?;
        std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))
    }

    /// Records a measurement: a new record for a new digest, or the digest's record replaced
    /// (figures, time, host, machine; `runs` + 1) and moved to the end.
    pub fn record(&mut self, mut record: Record) -> Recorded {
        let same = |r: &Record| r.component == record.component && r.digest == record.digest;
        let seen_before = match self.records.iter().position(same) {
            Some(at) => {
                let earlier = self.records.remove(at);
                record.first_measured_at = earlier.first_measured_at;
                record.runs = earlier.runs + 1;
                true
            }
            None => false,
        };
        let previous = self
            .records
            .iter()
            .rev()
            .find(|r| r.component == record.component)
            .cloned();
        self.records.push(record.clone());
        Recorded {
            record,
            previous,
            seen_before,
        }
    }

    /// The records of each component, oldest build first, components in name order.
    pub fn by_component(&self) -> Vec<(&str, Vec<&Record>)> {
        let mut names: Vec<&str> = self.records.iter().map(|r| r.component.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names
            .into_iter()
            .map(|name| {
                let builds = self
                    .records
                    .iter()
                    .filter(|r| r.component == name)
                    .collect();
                (name, builds)
            })
            .collect()
    }
}

/// A change between two values: `1.03× (+12.2 ms)`.
fn change(before: f64, now: f64, unit: &str) -> String {
    let ratio = if before > 0.0 {
        format!("{:.2}×", now / before)
    } else {
        "-".to_owned()
    };
    let delta = now - before;
    let precision = if unit == "KiB" { 0 } else { 2 };
    format!("{ratio} ({delta:+.precision$} {unit})")
}

impl Recorded {
    /// One line for the report: what this build changed against the previous one.
    pub fn change_line(&self) -> String {
        let now = &self.record;
        let mut line = format!("- {} ", now.component);
        match &self.previous {
            Some(previous) => line.push_str(&format!(
                "{} → {}",
                previous.short_digest(),
                now.short_digest()
            )),
            None => line.push_str(now.short_digest()),
        }
        if self.seen_before {
            line.push_str(&format!(
                ": same digest as measured before (first {}); its figures replaced, {} runs",
                now.first_measured_at, now.runs
            ));
        }
        match &self.previous {
            None if !self.seen_before => line.push_str(": first build recorded"),
            None => line.push_str("; no earlier build"),
            Some(previous) => {
                line.push_str(if self.seen_before {
                    "; against the previous build: "
                } else {
                    ": "
                });
                let changes: Vec<String> = previous
                    .figures
                    .named()
                    .iter()
                    .zip(now.figures.named())
                    .map(|((name, before, unit), (_, value, _))| {
                        format!("{name} {}", change(*before, value, unit))
                    })
                    .collect();
                line.push_str(&changes.join(", "));
            }
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(component: &str, digest: &str, compile_ms: f64, at: &str) -> Record {
        Record {
            component: component.into(),
            digest: digest.into(),
            source: format!("{component}.wasm"),
            size_bytes: 1,
            figures: Figures {
                compile_ms,
                cache_load_ms: 2.0,
                first_request_ms: 1.0,
                instantiate_p50_us: 20.0,
                instantiate_p99_us: 50.0,
                memory_kib: 1088.0,
                table_elements: 10,
            },
            instantiations: 10,
            starts: 1,
            host: "h".into(),
            machine: "m".into(),
            load: None,
            measured_at: at.into(),
            first_measured_at: at.into(),
            runs: 1,
        }
    }

    #[test]
    fn a_digest_measured_again_replaces_its_record_and_moves_to_the_end() {
        let mut history = History::default();
        let first = history.record(record("deduct", "aaaa", 400.0, "t1"));
        assert!(!first.seen_before && first.previous.is_none());
        assert!(first.change_line().ends_with("first build recorded"));
        history.record(record("admin", "cccc", 300.0, "t1"));
        let second = history.record(record("deduct", "bbbb", 440.0, "t2"));
        assert_eq!(
            second.previous.as_ref().map(|r| r.digest.as_str()),
            Some("aaaa")
        );
        assert!(
            second
                .change_line()
                .starts_with("- deduct aaaa → bbbb: compile 1.10× (+40.00 ms)"),
            "{}",
            second.change_line()
        );

        // The first build again (a revert): replaced, not added, and now the latest build.
        let again = history.record(record("deduct", "aaaa", 410.0, "t3"));
        assert!(again.seen_before);
        assert_eq!(again.record.runs, 2);
        assert_eq!(again.record.first_measured_at, "t1");
        assert_eq!(
            again.previous.as_ref().map(|r| r.digest.as_str()),
            Some("bbbb")
        );
        let digests: Vec<&str> = history.records.iter().map(|r| r.digest.as_str()).collect();
        assert_eq!(digests, ["cccc", "bbbb", "aaaa"]);
        assert_eq!(history.by_component()[1].1.len(), 2);
    }

    #[test]
    fn the_file_round_trips_and_a_missing_file_is_empty() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("sub/history.json");
        assert!(History::load(&path)?.records.is_empty());
        let mut history = History::load(&path)?;
        history.record(record("admin", "cccc", 300.0, "t1"));
        history.save(&path)?;
        assert_eq!(History::load(&path)?, history);
        std::fs::write(&path, "{\"format\": 2, \"records\": []}")?;
        let refused = History::load(&path).expect_err("another format");
        assert!(format!("{refused:#}").contains("format 2"), "{refused:#}");
        Ok(())
    }
}
