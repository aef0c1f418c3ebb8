//! `docs/openapi.json`, `spin.toml` and the code agree: the document is the one the code
//! generates, and lists every route and problem type.

use std::collections::BTreeSet;
use std::path::Path;

use flashcart_contract::{HOST_PROBLEM_TYPES, PROBLEM_TYPES, REPLICATED_PROBLEM_TYPES};

fn repo_file(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn spec() -> serde_json::Value {
    serde_json::from_str(&repo_file("docs/openapi.json")).expect("openapi.json is JSON")
}

/// The command that regenerates `docs/openapi.json` (tests never write the source tree).
const REGENERATE: &str =
    "cargo run --locked -p flashcart-api --features openapi --example openapi > docs/openapi.json";

#[test]
fn the_committed_document_is_the_one_the_code_generates() {
    let committed = repo_file("docs/openapi.json");
    let generated = flashcart_api::openapi::render();
    if committed != generated {
        let (line, (was, now)) = committed
            .lines()
            .zip(generated.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .unwrap_or((
                committed.lines().count().min(generated.lines().count()),
                ("<end>", "<end>"),
            ));
        panic!(
            "docs/openapi.json is not what the code generates (first difference at line {}:\n\
             committed: {was}\ngenerated: {now})\nregenerate it with:\n  {REGENERATE}",
            line + 1
        );
    }
    // What the stock-check component serves at /v1/openapi.json is that file, compiled in.
    assert_eq!(flashcart_api::document::JSON, generated);
}

#[test]
fn problem_types_in_the_spec_are_the_ones_the_edge_emits() {
    let spec = spec();
    let listed: BTreeSet<String> =
        spec["components"]["schemas"]["Problem"]["properties"]["type"]["enum"]
            .as_array()
            .expect("enum")
            .iter()
            .map(|v| {
                v.as_str()
                    .expect("str")
                    .trim_start_matches("urn:flashcart:problem:")
                    .to_owned()
            })
            .collect();
    let emitted: BTreeSet<String> = PROBLEM_TYPES
        .iter()
        .chain(&REPLICATED_PROBLEM_TYPES)
        .map(|s| (*s).to_owned())
        .collect();
    let host: BTreeSet<String> = HOST_PROBLEM_TYPES.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(listed, emitted.union(&host).cloned().collect());
    let info = spec["info"]["description"].as_str().expect("description");
    for t in &host {
        assert!(
            info.contains(&format!("urn:flashcart:problem:{t}`")),
            "host problem {t} is described"
        );
    }
    // Every problem a response documents is a listed type, and every listed type is documented.
    let text = spec["paths"].to_string();
    let documented: BTreeSet<String> = text
        .match_indices("urn:flashcart:problem:")
        .map(|(i, m)| {
            text[i + m.len()..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                .collect()
        })
        .collect();
    assert_eq!(documented, emitted);
}

#[test]
fn every_spin_route_is_in_the_spec_and_back() {
    let manifest: toml::Table = toml::from_str(&repo_file("spin.toml")).expect("spin.toml");
    let triggers = manifest["trigger"]["http"].as_array().expect("triggers");
    // The catch-all answers 404 problem+json for unknown paths; it is not an API path.
    let catch_all = triggers
        .iter()
        .filter(|t| t["route"].as_str() == Some("/..."));
    assert_eq!(catch_all.count(), 1, "spin.toml has one catch-all route");
    let routes: BTreeSet<String> = triggers
        .iter()
        .filter(|t| t["route"].as_str() != Some("/..."))
        .map(|t| {
            let route = t["route"].as_str().expect("route");
            route
                .split('/')
                .map(|s| {
                    s.strip_prefix(':')
                        .map_or_else(|| s.to_owned(), |p| format!("{{{p}}}"))
                })
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect();
    let paths: BTreeSet<String> = spec()["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .cloned()
        .collect();
    assert_eq!(routes, paths);
}

#[test]
fn every_component_reaches_redis_only_through_its_variables() {
    let manifest: toml::Table = toml::from_str(&repo_file("spin.toml")).expect("spin.toml");
    for (name, component) in manifest["component"].as_table().expect("components") {
        let hosts: Vec<&str> = component["allowed_outbound_hosts"]
            .as_array()
            .expect("hosts")
            .iter()
            .filter_map(toml::Value::as_str)
            .collect();
        assert_eq!(
            hosts,
            [
                "redis://{{ redis_address }}",
                "redis://{{ redis_cluster_hosts }}"
            ],
            "{name}: a single Redis, and every node of a cluster"
        );
    }
}
