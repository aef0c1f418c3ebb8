//! `infra/observability/`: the scrape config, the alert rules and their unit tests pass
//! `promtool`; a broken copy fails it (so the check can fail); every alert has the shape an
//! operator relies on; and every metric the rules and the dashboard use is one
//! `docs/metrics.md` documents. (That the documented metrics are really exported is checked
//! against a running node: `native/cli/tests/cli/metrics.rs`.)

use std::path::Path;

use flashcart_infra_checks::{MetricsDoc, metric_names_in, repo_root, run, run_ok};

const CONFIG: &str = "infra/observability/prometheus.yml";
const RULES: &str = "infra/observability/alerts.yml";
const RULE_TESTS: &str = "infra/observability/alerts.test.yml";
const DASHBOARD: &str = "infra/observability/grafana/flashcart.json";

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Each alert's block of `alerts.yml`, by name.
fn alerts(rules: &str) -> Vec<(String, String)> {
    rules
        .split("- alert: ")
        .skip(1)
        .map(|block| {
            let name = block.lines().next().unwrap_or_default().trim().to_owned();
            (name, block.to_owned())
        })
        .collect()
}

#[test]
fn the_scrape_config_and_its_rule_file_pass_promtool() {
    let out = run_ok("promtool", &["check", "config", CONFIG]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("SUCCESS: 1 rule files found"), "{said}");
    let config = read(CONFIG);
    for job in ["job_name: flashcart-edge", "job_name: flashcart-settlement"] {
        assert!(config.contains(job), "{job} missing from {CONFIG}");
    }
}

#[test]
fn the_alert_rules_pass_promtool() {
    let out = run_ok("promtool", &["check", "rules", RULES]);
    let said = String::from_utf8_lossy(&out.stdout);
    let count = alerts(&read(RULES)).len();
    assert!(
        said.contains(&format!("SUCCESS: {count} rules found")),
        "{said}"
    );
}

#[test]
fn every_alert_passes_its_unit_tests() {
    run_ok("promtool", &["test", "rules", RULE_TESTS]);
}

#[test]
fn every_alert_is_tested_firing_and_silent() {
    // The unit tests name each alert in an `alert_rule_test`; a test that expects it and
    // one that expects nothing (or a series it leaves out) must both exist. A fire-only test
    // cannot tell a rule that fires on everything from a right one.
    let tests = read(RULE_TESTS);
    let blocks: Vec<&str> = tests.split("\n- name: ").skip(1).collect();
    for (alert, _) in alerts(&read(RULES)) {
        let mine: Vec<&&str> = blocks
            .iter()
            .filter(|b| b.contains(&format!("alertname: {alert}\n")))
            .collect();
        assert!(
            mine.iter().any(|b| b.contains("exp_labels:")),
            "{alert}: no test expects it to fire"
        );
        // Silent: a test expecting no alert, or a firing test fed more series than fire
        // (each expected alert names one instance, component or partition).
        let silent = mine.iter().any(|b| {
            b.contains("exp_alerts: []")
                || b.matches("- series:").count() > b.matches("- exp_labels:").count()
        });
        assert!(silent, "{alert}: no test shows it silent");
    }
}

#[test]
fn every_alert_has_a_for_a_severity_annotations_and_a_runbook_link() {
    let rules = read(RULES);
    let alerts = alerts(&rules);
    assert!(alerts.len() >= 8, "{} alerts", alerts.len());
    for (alert, block) in &alerts {
        for needed in [
            "for: ",
            "summary: ",
            "description: ",
            "runbook_url: \"docs/runbook.md#",
        ] {
            assert!(block.contains(needed), "{alert}: no `{needed}`");
        }
        assert!(
            block.contains("severity: critical") || block.contains("severity: warning"),
            "{alert}: severity must be critical or warning"
        );
    }
    // What the issue asks the rules to watch, each by at least one alert.
    for topic in [
        "FlashcartSoldOutStorm",
        "FlashcartHigh5xxRate",
        "FlashcartRedisErrors",
        "FlashcartRedisSlow",
        "FlashcartStreamLag",
        "FlashcartDeadLettersGrowing",
        "FlashcartPartitionsFenced",
        "FlashcartSettlementDown",
    ] {
        assert!(
            alerts.iter().any(|(name, _)| name == topic),
            "no alert {topic}"
        );
    }
}

/// Copies the rules and their tests into `dir`, with `from` replaced by `to` in the rules.
fn broken_copy(dir: &Path, from: &str, to: &str) {
    let rules = read(RULES);
    assert!(rules.contains(from), "`{from}` is not in {RULES}");
    std::fs::write(dir.join("alerts.yml"), rules.replacen(from, to, 1)).expect("write rules");
    std::fs::write(dir.join("alerts.test.yml"), read(RULE_TESTS)).expect("write tests");
}

#[test]
fn promtool_fails_a_broken_copy() {
    // A copy in a temporary directory, never the source tree.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name).display().to_string();

    // A rule that does not parse.
    broken_copy(
        dir.path(),
        "expr: max(flashcart_settle_fenced_partitions) > 0",
        "expr: max(flashcart_settle_fenced_partitions > 0",
    );
    let check = run("promtool", &["check", "rules", &path("alerts.yml")]);
    assert!(!check.status.success(), "a rule that does not parse passed");

    // A rule that parses but sums what every settlement process reports alike: its
    // "stays silent" test must fail.
    broken_copy(
        dir.path(),
        "sum(max by (partition) (flashcart_settle_lag))",
        "sum(flashcart_settle_lag)",
    );
    run_ok("promtool", &["check", "rules", &path("alerts.yml")]);
    let tested = run("promtool", &["test", "rules", &path("alerts.test.yml")]);
    assert!(!tested.status.success(), "a wrong rule passed its tests");
    let said = String::from_utf8_lossy(&tested.stdout).into_owned()
        + &String::from_utf8_lossy(&tested.stderr);
    assert!(said.contains("FlashcartStreamLag"), "{said}");
}

#[test]
fn every_metric_the_rules_and_the_dashboard_use_is_documented() {
    let doc = MetricsDoc::read();
    assert!(doc.metrics.len() > 20, "{doc:?}");
    for path in [RULES, RULE_TESTS, DASHBOARD] {
        let names = metric_names_in(&read(path));
        assert!(!names.is_empty(), "{path} names no metric");
        for name in names {
            assert!(
                doc.metric_of(&name).is_some(),
                "{path} uses {name}, which docs/metrics.md does not list"
            );
        }
    }
}

#[test]
fn the_dashboard_is_json_whose_every_panel_queries_documented_metrics() {
    let doc = MetricsDoc::read();
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "flashcart");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut shown = std::collections::BTreeSet::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap_or("?");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title} has no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            let names = metric_names_in(expr);
            assert!(!names.is_empty(), "panel {title}: {expr} names no metric");
            shown.extend(
                names
                    .iter()
                    .filter_map(|n| doc.metric_of(n))
                    .map(|m| m.name.clone()),
            );
        }
    }
    // What the dashboard is for: each of these on some panel.
    for needed in [
        "flashcart_requests_total",
        "flashcart_request_duration_seconds",
        "flashcart_redis_errors_total",
        "flashcart_redis_command_seconds",
        "flashcart_settle_lag",
        "flashcart_settle_pending",
        "flashcart_settle_dead_letters",
        "flashcart_settle_fenced_partitions",
        "flashcart_settle_batch_seconds",
        "flashcart_settle_events_applied_total",
    ] {
        assert!(shown.contains(needed), "no panel shows {needed}");
    }
}
