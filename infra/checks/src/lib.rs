//! Helpers for the tests that check `infra/`: where the repository is, what `docs/metrics.md`
//! documents ([`MetricsDoc`]), and the external tools
//! (promtool, kubernetes-validate, check-jsonschema) that `scripts/test.sh` installs.
//!
//! A missing tool fails the test with what to run; it never skips it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's root (this crate lives in `infra/checks`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("infra/checks has two parents")
        .to_path_buf()
}

/// The path of `name` on `PATH`, or a panic that says how to get it.
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not on PATH: ./scripts/test.sh installs it \
                 (or source scripts/lib.sh and run ensure_promtool / ensure_python_tools)"
            )
        })
}

/// Runs `name args…` from the repository root and returns its output; panics with the
/// tool's own output when it exits unsuccessfully.
pub fn run_ok(name: &str, args: &[&str]) -> Output {
    let output = run(name, args);
    assert!(
        output.status.success(),
        "`{name} {}` failed ({}):\n{}\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs `name args…` from the repository root, whatever its exit status.
pub fn run(name: &str, args: &[&str]) -> Output {
    Command::new(tool(name))
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{name}`: {e}"))
}

/// One metric of `docs/metrics.md`: a row of a table headed `| metric | type | …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentedMetric {
    /// The metric's name, e.g. `flashcart_requests_total`.
    pub name: String,
    /// Its Prometheus type: `counter`, `gauge` or `histogram`.
    pub kind: String,
    /// Its label names, in the order the table lists them.
    pub labels: Vec<String>,
}

/// What `docs/metrics.md` promises: the metrics, and those exported only once something has
/// gone wrong (the list under the heading `### Exported only once it happens`).
#[derive(Debug, Clone, Default)]
pub struct MetricsDoc {
    /// Every documented metric, in the page's order.
    pub metrics: Vec<DocumentedMetric>,
    /// Names that a healthy process does not export.
    pub error_only: Vec<String>,
}

/// The heading of the list of metrics exported only once their event happens.
const ERROR_ONLY_HEADING: &str = "### Exported only once it happens";

impl MetricsDoc {
    /// Reads `docs/metrics.md` of this repository.
    ///
    /// # Panics
    /// When the page cannot be read.
    pub fn read() -> Self {
        let path = repo_root().join("docs/metrics.md");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        Self::parse(&text)
    }

    /// Parses the page's text.
    pub fn parse(text: &str) -> Self {
        let mut doc = Self::default();
        let mut in_table = false;
        let mut in_error_only = false;
        for line in text.lines() {
            if line.starts_with('#') {
                in_error_only = line.trim() == ERROR_ONLY_HEADING;
            }
            if line.starts_with("| metric | type |") {
                in_table = true;
                continue;
            }
            if !line.starts_with('|') {
                in_table = false;
            }
            if in_table {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                // ["", name, type, unit, labels, meaning, action, ""]
                if let (Some(name), Some(kind), Some(labels)) = (
                    cells.get(1).and_then(|c| code(c)),
                    cells.get(2),
                    cells.get(4),
                ) {
                    doc.metrics.push(DocumentedMetric {
                        name: name.to_owned(),
                        kind: (*kind).to_owned(),
                        labels: codes(labels),
                    });
                }
            }
            if in_error_only && let Some(name) = line.strip_prefix("- ").and_then(code) {
                doc.error_only.push(name.to_owned());
            }
        }
        doc
    }

    /// The documented metric named `name`.
    pub fn get(&self, name: &str) -> Option<&DocumentedMetric> {
        self.metrics.iter().find(|m| m.name == name)
    }

    /// The documented metric a series name belongs to: itself, or the histogram whose
    /// `_bucket`, `_sum` or `_count` it is.
    pub fn metric_of(&self, series: &str) -> Option<&DocumentedMetric> {
        self.get(series).or_else(|| {
            ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
                let base = series.strip_suffix(suffix)?;
                self.get(base).filter(|m| m.kind == "histogram")
            })
        })
    }
}

/// The text between the first pair of backticks of `cell`.
fn code(cell: &str) -> Option<&str> {
    let rest = cell.trim().strip_prefix('`')?;
    rest.split('`').next()
}

/// Every backticked word of `cell`.
fn codes(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// Every `flashcart_…` metric or series name in `text` (lower-case letters, digits and
/// underscores after the prefix), once each.
pub fn metric_names_in(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("flashcart_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        // Part of a longer identifier (`x_flashcart_…`) is not a name of ours.
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end.max(1)..];
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_page_parses_into_rows_and_the_error_only_list() {
        let doc = MetricsDoc::parse(
            "## Edge\n\n| metric | type | unit | labels | what | when |\n| --- | --- |\n\
             | `flashcart_a_total` | counter | x | `component`, `status` | a | b |\n\
             | `flashcart_b_seconds` | histogram | s | — | a | b |\n\n\
             ### Exported only once it happens\n\n- `flashcart_a_total`\n\n## Renamed\n\n\
             | before | after |\n| `flashcart_old` | `flashcart_b_seconds` |\n",
        );
        assert_eq!(doc.metrics.len(), 2, "{doc:?}");
        assert_eq!(doc.metrics[0].labels, ["component", "status"]);
        assert!(doc.metrics[1].labels.is_empty());
        assert_eq!(doc.error_only, ["flashcart_a_total"]);
        assert_eq!(
            doc.metric_of("flashcart_b_seconds_bucket")
                .map(|m| m.name.as_str()),
            Some("flashcart_b_seconds")
        );
        assert!(doc.metric_of("flashcart_a_total_count").is_none());
        assert!(
            doc.get("flashcart_old").is_none(),
            "only metric tables count"
        );
    }

    #[test]
    fn names_are_found_whole() {
        let names = metric_names_in(
            "rate(flashcart_requests_total{status=~\"5..\"}[5m]) / x_flashcart_not \
             flashcart_settle_lag>3",
        );
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(names, ["flashcart_requests_total", "flashcart_settle_lag"]);
    }
}
