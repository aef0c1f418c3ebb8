//! Invalid manifests as paired files: `tests/ui/invalid/<case>.toml` and the exact
//! error it must produce in `<case>.err`. `FLASHCART_BLESS=1` rewrites the `.err`
//! files from the current messages (review the diff before committing).

use std::path::Path;

use flashcart_host::manifest::Manifest;

#[test]
fn invalid_manifests_fail_with_the_expected_message() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/invalid");
    let bless = std::env::var_os("FLASHCART_BLESS").is_some();
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/ui/invalid exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 10,
        "expected the invalid-manifest cases in {}",
        dir.display()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let text = std::fs::read_to_string(case).expect("read case");
        let err = match Manifest::parse(&text, Path::new(".")) {
            Ok(_) => {
                failures.push(format!("{}: parsed, but must be refused", case.display()));
                continue;
            }
            Err(e) => e.to_string(),
        };
        let expected_path = case.with_extension("err");
        if bless {
            std::fs::write(&expected_path, format!("{}\n", err.trim_end())).expect("bless");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected.trim_end() != err.trim_end() {
            failures.push(format!(
                "{}:\n--- expected ---\n{}\n--- got ---\n{}",
                case.display(),
                expected.trim_end(),
                err.trim_end()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
