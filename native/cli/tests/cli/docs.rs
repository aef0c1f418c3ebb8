//! The docs people follow, run as written: README's curl walk-through, `docs/quickstart.md`
//! (zero to a drop) and `docs/runbook.md`, against a real node (`flashcart up` with the
//! repo's `spin.toml`, settlement inside, a private redis-server) started with the secrets
//! `./scripts/up.sh` uses. Every `sh` block of a document runs, in order, in one `bash` with
//! `set -euo pipefail`; only the addresses differ, through the variables the docs themselves
//! read (`FC`, `REDIS`, `DATA`). A `text` block must say why it is not run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use flashcart_testkit::RedisServer;

use crate::node::{self, NodeOptions};

/// One fenced block: its info string (`sh`, `text`) and its lines.
struct Block {
    info: String,
    code: String,
    /// The document's text from the block's end to the next block.
    after: String,
}

fn blocks(markdown: &str) -> Vec<Block> {
    let mut out: Vec<Block> = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in markdown.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => open = Some((info.trim().to_owned(), String::new())),
            (Some(_), Some(_)) => {
                let (info, code) = open.take().expect("open block");
                out.push(Block {
                    info,
                    code,
                    after: String::new(),
                });
            }
            (Some((_, code)), None) => {
                code.push_str(line);
                code.push('\n');
            }
            (None, None) => {
                if let Some(last) = out.last_mut() {
                    last.after.push_str(line);
                    last.after.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "a code block is never closed");
    out
}

/// The `sh` blocks of `doc` as one script; every other block must say why it is not run.
fn script(doc: &str, markdown: &str) -> String {
    let mut script = String::from("set -euo pipefail\n");
    for block in blocks(markdown) {
        match block.info.as_str() {
            "sh" => script.push_str(&block.code),
            "text" => assert!(
                block.after.to_lowercase().contains("not run")
                    || block.after.contains("The docs test starts the same node"),
                "{doc}: a `text` block must say why the docs test does not run it:\n{}",
                block.code
            ),
            other => panic!("{doc}: a `{other}` block; use `sh` (run) or `text` (explained)"),
        }
    }
    script
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(node::repo_root().join(path)).expect("read the doc")
}

/// README's "Try it with curl" section.
fn readme_walkthrough() -> String {
    let readme = repo_file("README.md");
    let start = readme
        .find("## Try it with curl")
        .expect("the curl section");
    let end = readme[start + 3..]
        .find("\n## ")
        .map_or(readme.len(), |i| start + 3 + i);
    readme[start..end].to_owned()
}

struct Env<'a> {
    node: SocketAddr,
    redis: &'a RedisServer,
    data: &'a Path,
    cwd: &'a Path,
}

/// Runs `doc`'s script; its stdout, after asserting it exited 0.
fn run(doc: &str, markdown: &str, env: &Env) -> String {
    let flashcart = PathBuf::from(env!("CARGO_BIN_EXE_flashcart"));
    // The docs put `$CARGO_TARGET_DIR/debug` on PATH: the binary under test.
    let target = flashcart
        .parent()
        .and_then(Path::parent)
        .expect("target/debug/flashcart");
    let out = Command::new("bash")
        .arg("-c")
        .arg(script(doc, markdown))
        .current_dir(env.cwd)
        .env("CARGO_TARGET_DIR", target)
        .env("FC", format!("http://{}", env.node))
        .env("REDIS", env.redis.url())
        .env("DATA", env.data)
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{doc} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Appends an event settlement can never apply (an unknown type) to partition 3's stream.
fn poison(redis: &RedisServer) {
    let out = Command::new("redis-cli")
        .args(["-p", &redis.port().to_string()])
        .args(["XADD", "{fc:p03}:events", "*", "type", "order.teleported"])
        .args(["at", "5", "sku", "docs"])
        .output()
        .expect("redis-cli");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until `flashcart dlq list` shows a dead letter.
fn wait_for_dead_letter(redis: &RedisServer) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = Command::new(env!("CARGO_BIN_EXE_flashcart"))
            .args(["dlq", "--redis-url", &redis.url(), "list"])
            .output()
            .expect("flashcart dlq list");
        let listed = String::from_utf8_lossy(&out.stdout);
        if listed.starts_with("1 dead-lettered") {
            return;
        }
        assert!(Instant::now() < deadline, "never dead-lettered: {listed}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_walkthrough_quickstart_and_runbook_run_as_written() {
    node::assert_components_built();
    let redis = RedisServer::start().expect("redis-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (_node, address) = node::up(
        &redis,
        &data,
        &NodeOptions {
            // A poison event reaches the dead-letter stream after one quick failure.
            args: &["--max-failures", "1", "--retry-base", "100ms"],
            env: &[
                ("SPIN_VARIABLE_ADMIN_TOKEN", "dev-admin-token"),
                ("SPIN_VARIABLE_PSP_SIGNING_SECRETS", "whsec_dev"),
                // up.sh keeps the limiter's default; the docs' buyers ask once each.
                ("SPIN_VARIABLE_BUYER_RATE_PER_SECOND", "10"),
            ],
            ..NodeOptions::default()
        },
    );
    let cwd = dir.path().join("cwd");
    std::fs::create_dir(&cwd).expect("working dir");
    let env = Env {
        node: address,
        redis: &redis,
        data: &data,
        cwd: &cwd,
    };

    let walkthrough = run("README.md", &readme_walkthrough(), &env);
    let lines: Vec<&str> = walkthrough.lines().collect();
    assert!(lines.contains(&"paid"), "{walkthrough}");
    assert!(lines.contains(&"cancelled"), "{walkthrough}");

    let quickstart = run("docs/quickstart.md", &repo_file("docs/quickstart.md"), &env);
    let answers: Vec<String> = quickstart
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert!(answers.contains(&"100 201".to_owned()), "{quickstart}");
    assert!(answers.contains(&"200 409".to_owned()), "{quickstart}");
    assert!(
        quickstart.contains("\"invariant_holds\":true"),
        "{quickstart}"
    );

    poison(&redis);
    wait_for_dead_letter(&redis);
    let runbook = run("docs/runbook.md", &repo_file("docs/runbook.md"), &env);
    assert!(runbook.contains("1 dead-lettered"), "{runbook}");
    assert!(runbook.contains("back on its stream as"), "{runbook}");
    assert!(runbook.contains("\"available\":0"), "{runbook}");
    assert!(runbook.contains("request ticket-4711"), "{runbook}");
    assert!(
        runbook
            .lines()
            .any(|l| l.contains("reservation.created") && l.contains("sneaker-42")),
        "flashcart trace printed no reservation: {runbook}"
    );
    let left: Vec<_> = std::fs::read_dir(&cwd).expect("cwd").collect();
    assert!(left.is_empty(), "the docs' commands wrote files: {left:?}");
}
