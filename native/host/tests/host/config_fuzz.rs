//! The manifest and the runtime config, fuzzed (proptest: the toolchain is stable, so no
//! `cargo fuzz`): the repo's own `spin.toml` and `infra/spin/runtime-config.toml`, mutated line
//! by line, and arbitrary text. Every input is either accepted or refused with an error —
//! never a panic — and an accepted manifest can be served: its routes compile and name
//! declared components.
//!
//! 256 cases each in `./scripts/test.sh`; `FLASHCART_FUZZ_CASES` for longer local runs.

use std::path::Path;

use flashcart_host::manifest::Manifest;
use flashcart_host::runtime_config::RuntimeConfigFile;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn repo_file(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// One edit of a line-oriented text.
#[derive(Debug, Clone)]
enum Edit {
    Delete(usize),
    Duplicate(usize),
    /// Replace what follows the line's first `=` (a TOML value).
    Value(usize, String),
    Insert(usize, String),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let junk = prop_oneof![
        Just("\"\"".to_owned()),
        Just("\"/...\"".to_owned()),
        Just("\"/a/.../b\"".to_owned()),
        Just("\"{{ missing }}\"".to_owned()),
        Just("\"redis://{{ redis_address\"".to_owned()),
        Just("[]".to_owned()),
        Just("{ }".to_owned()),
        Just("3".to_owned()),
        Just("-1".to_owned()),
        Just("true".to_owned()),
        "\"[ -~]{0,30}\"",
        "[ -~]{0,30}",
    ];
    let line = prop_oneof![
        Just("[component.x]".to_owned()),
        Just("[[trigger.http]]".to_owned()),
        Just("route = \"/dup\"".to_owned()),
        Just("component = \"nope\"".to_owned()),
        Just("source = \"missing.wasm\"".to_owned()),
        Just("spin_manifest_version = 3".to_owned()),
        "[ -~]{0,40}",
    ];
    prop_oneof![
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Duplicate),
        (any::<usize>(), junk).prop_map(|(i, v)| Edit::Value(i, v)),
        (any::<usize>(), line).prop_map(|(i, l)| Edit::Insert(i, l)),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for e in edits {
        if lines.is_empty() {
            break;
        }
        let at = |i: &usize| i % lines.len();
        match e {
            Edit::Delete(i) => {
                let i = at(i);
                lines.remove(i);
            }
            Edit::Duplicate(i) => {
                let i = at(i);
                lines.insert(i, lines[i].clone());
            }
            Edit::Value(i, v) => {
                let i = at(i);
                if let Some((key, _)) = lines[i].split_once('=') {
                    lines[i] = format!("{key}= {v}");
                }
            }
            Edit::Insert(i, l) => {
                let i = at(i);
                lines.insert(i, l.clone());
            }
            Edit::Truncate(i) => {
                let i = at(i);
                let cut = lines[i].len() / 2;
                let cut = (0..=cut)
                    .rev()
                    .find(|c| lines[i].is_char_boundary(*c))
                    .unwrap_or(0);
                lines[i].truncate(cut);
            }
        }
    }
    lines.join("\n")
}

fn runner() -> TestRunner {
    let cases = flashcart_testkit::fuzz_cases(256);
    TestRunner::new(Config {
        cases,
        // Never write regression files into the source tree.
        failure_persistence: None,
        ..Config::default()
    })
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,200}",
        proptest::collection::vec(any::<u8>(), 0..200)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

#[test]
fn mutated_manifests_parse_or_are_refused() {
    let original = repo_file("spin.toml");
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let parsed = Manifest::parse(&original, &base).expect("the repo's spin.toml parses");
    assert!(!parsed.http_triggers.is_empty());
    let inputs = prop_oneof![
        4 => proptest::collection::vec(edit(), 1..6).prop_map(move |e| apply(&original, &e)),
        1 => text(),
    ];
    let outcome = runner().run(&inputs, |text| {
        // Accepted means servable: every route compiles and names a declared component.
        if let Ok(manifest) = Manifest::parse(&text, &base) {
            prop_assert!(manifest.router().is_ok(), "{text}");
            for trigger in &manifest.http_triggers {
                prop_assert!(
                    manifest.components.contains_key(&trigger.component),
                    "{trigger:?}"
                );
            }
        }
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

#[test]
fn mutated_runtime_configs_load_or_are_refused() {
    let original = repo_file("infra/spin/runtime-config.toml");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("runtime-config.toml");
    let inputs = prop_oneof![
        4 => proptest::collection::vec(edit(), 1..6).prop_map(move |e| apply(&original, &e)),
        1 => text(),
    ];
    let outcome = runner().run(&inputs, |text| {
        std::fs::write(&path, &text).expect("write");
        let _ = RuntimeConfigFile::load(&path);
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}
