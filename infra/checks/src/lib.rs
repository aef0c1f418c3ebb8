//! Helpers for the tests that check `infra/`: where the repository is, and the external tools
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
