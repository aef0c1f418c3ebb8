//! Processes the bench starts: `flashcart up` edge nodes (the `flashcart` binary itself, as
//! a child) and `wasmtime serve`; each on a free loopback port, its output in a log file,
//! stopped with SIGTERM (`wasmtime serve`: SIGINT) (and killed if it will not stop, or when the bench fails midway).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

/// How long a started process may take to answer its health check (a cold compile of five
/// components on a busy 2-core machine takes a while).
const READY_WITHIN: Duration = Duration::from_secs(300);
/// How long settlement may take to start: its own start-up patience
/// (`flashcart_settlement::START_PATIENCE`) plus the AOF rewrite that makes new ledger
/// guards durable (up to 120 s), with room to spare.
const SETTLEMENT_WITHIN: Duration = Duration::from_secs(180);
/// How long a process may take to drain and exit after its stop signal.
const STOP_WITHIN: Duration = Duration::from_secs(30);

/// A port on 127.0.0.1 that was free a moment ago.
///
/// # Errors
/// When no port can be bound.
pub fn free_address() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

/// A child process the bench started.
#[derive(Debug)]
pub struct Process {
    /// What it is, for reports: `node1`, `hello-host`, `wasmtime`.
    pub name: String,
    /// Where it serves.
    pub address: SocketAddr,
    child: Child,
    pid: u32,
    log: PathBuf,
    /// The signal that asks it to drain and exit: `TERM` for `flashcart up`; `INT` for
    /// `wasmtime serve`, which drains on Ctrl-C and dies on SIGTERM.
    stop_signal: &'static str,
}

impl Process {
    /// Spawns `command` (its output going to `log`) and waits until `health` answers 200.
    ///
    /// # Errors
    /// When it cannot be spawned, exits, or does not become ready in time; the message
    /// carries the end of its log.
    pub async fn start(
        name: &str,
        mut command: Command,
        address: SocketAddr,
        health: &str,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let out = std::fs::File::create(&log)
            .with_context(|| format!("creating log file {}", log.display()))?;
        let err = out.try_clone()?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}: {command:?}"))?;
        let pid = child.id().context("the child has no pid")?;
        let mut process = Self {
            name: name.to_owned(),
            address,
            child,
            pid,
            log,
            stop_signal: "TERM",
        };
        let ready = crate::http::wait_ready(address, health, READY_WITHIN, || {
            process_alive(&mut process.child, name, &process.log)
        })
        .await;
        if let Err(e) = ready {
            let _ = process.child.start_kill();
            return Err(e.context(format!(
                "{name} did not start; its log ({}) ends:\n{}",
                process.log.display(),
                tail(&process.log)
            )));
        }
        Ok(process)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits until the settlement running inside this node (`flashcart up` without
    /// `--no-settle`) has finished starting and succeeded once: its
    /// `flashcart_settle_last_success_timestamp_seconds` on the node's metrics is above 0.
    /// Its start-up makes the partitions' ledger guards durable — on Redis before 7.2 with an
    /// AOF rewrite — which must not land in the first measured run.
    ///
    /// # Errors
    /// When the node exits, or settlement has not succeeded within [`SETTLEMENT_WITHIN`].
    pub async fn wait_settlement_started(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + SETTLEMENT_WITHIN;
        loop {
            process_alive(&mut self.child, &self.name, &self.log)?;
            let scrape =
                crate::http::get_text(self.address, "/.well-known/flashcart/metrics").await;
            if let Ok((200, text)) = scrape
                && settlement_succeeded(&text)
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "settlement in {} has not succeeded within {SETTLEMENT_WITHIN:?}; its log ({}) ends:\n{}",
                    self.name,
                    self.log.display(),
                    tail(&self.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops it with its stop signal and waits for it to exit; kills it after 30 s.
    ///
    /// # Errors
    /// When it exited with a failure or had to be killed (the message carries its log's end).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .args([&format!("-{}", self.stop_signal), &self.pid.to_string()])
            .status()
            .await;
        let waited = tokio::time::timeout(STOP_WITHIN, self.child.wait()).await;
        match waited {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => bail!(
                "{} exited with {status} after SIG{}; its log ends:\n{}",
                self.name,
                self.stop_signal,
                tail(&self.log)
            ),
            Ok(Err(e)) => Err(e).with_context(|| format!("waiting for {}", self.name)),
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("{} did not stop within {STOP_WITHIN:?}; killed", self.name)
            }
        }
    }
}

fn process_alive(child: &mut Child, name: &str, log: &Path) -> anyhow::Result<()> {
    match child.try_wait()? {
        None => Ok(()),
        Some(status) => bail!("{name} exited with {status}; its log ends:\n{}", tail(log)),
    }
}

/// The last lines of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A `flashcart up` to start.
#[derive(Debug, Clone)]
pub struct Up {
    /// The `flashcart` binary.
    pub binary: PathBuf,
    /// The manifest to serve.
    pub manifest: PathBuf,
    /// `--variable name=value` pairs (not secret: they show in `ps`).
    pub variables: Vec<(String, String)>,
    /// Secret variables, passed as `SPIN_VARIABLE_<NAME>` in its environment.
    pub secrets: Vec<(String, String)>,
    /// Settlement inside this node: the Redis URL and the ledger's data dir; `None`: `--no-settle`.
    pub settle: Option<(String, PathBuf)>,
    /// `--cache-dir` (compiled components); `None`: `up`'s default.
    pub cache_dir: Option<PathBuf>,
    /// `FLASHCART_LOG` for the node.
    pub log_filter: String,
    /// Where each node keeps its SQLite key-value store (the edge cache), as
    /// `./scripts/up.sh` runs it: `<dir>/<name>-kv.db` through a runtime config file written
    /// beside it; `None`: `up`'s in-memory store.
    pub sqlite_key_value: Option<PathBuf>,
}

impl Up {
    /// Starts it on a free port as `name`, logging to `<log_dir>/<name>.log`.
    ///
    /// # Errors
    /// As [`Process::start`].
    pub async fn start(&self, name: &str, log_dir: &Path) -> anyhow::Result<Process> {
        let address = free_address()?;
        let mut command = Command::new(&self.binary);
        // Nothing from the caller's environment may redirect the node (another ledger,
        // another Redis): everything it needs is given here.
        for (key, _) in std::env::vars_os() {
            if let Some(key) = key.to_str()
                && (key.starts_with("FLASHCART_") || key.starts_with("SPIN_VARIABLE_"))
            {
                command.env_remove(key);
            }
        }
        command
            .arg("up")
            .arg("--from")
            .arg(&self.manifest)
            .args(["--listen", &address.to_string()])
            .env("FLASHCART_LOG", &self.log_filter);
        for (name, value) in &self.variables {
            command.arg("--variable").arg(format!("{name}={value}"));
        }
        for (name, value) in &self.secrets {
            command.env(format!("SPIN_VARIABLE_{}", name.to_uppercase()), value);
        }
        if let Some(dir) = &self.cache_dir {
            command.arg("--cache-dir").arg(dir);
        }
        if let Some(dir) = &self.sqlite_key_value {
            command
                .arg("--runtime-config-file")
                .arg(sqlite_runtime_config(dir, name)?);
        }
        match &self.settle {
            Some((redis_url, data_dir)) => {
                command
                    .args(["--redis-url", redis_url])
                    .arg("--data-dir")
                    .arg(data_dir)
                    .args(["--consumer", &format!("bench-{name}")]);
            }
            None => {
                command.arg("--no-settle");
            }
        }
        Process::start(
            name,
            command,
            address,
            "/.well-known/flashcart/health",
            log_dir.join(format!("{name}.log")),
        )
        .await
    }
}

/// Writes `<dir>/<name>-runtime-config.toml`: the `default` key-value store in
/// `<dir>/<name>-kv.db`, the same store type as `infra/spin/runtime-config.toml`.
fn sqlite_runtime_config(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{name}-runtime-config.toml"));
    std::fs::write(
        &path,
        format!("[key_value_store.default]\ntype = \"spin\"\npath = \"{name}-kv.db\"\n"),
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Writes a one-route manifest serving `component` on every path (the hello baseline).
///
/// # Errors
/// When the file cannot be written.
pub fn hello_manifest(dir: &Path, component: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("hello.toml");
    let source = component
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    std::fs::write(
        &path,
        format!(
            "spin_manifest_version = 2\n[application]\nname = \"bench-hello\"\n\
             [[trigger.http]]\nroute = \"/...\"\ncomponent = \"hello\"\n\
             [component.hello]\nsource = \"{source}\"\n"
        ),
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// `wasmtime` on `PATH`, if there is one.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}

/// Starts `wasmtime serve` with `component` on a free port.
///
/// # Errors
/// As [`Process::start`].
pub async fn start_wasmtime(
    wasmtime: &Path,
    extra_args: &[String],
    component: &Path,
    log_dir: &Path,
) -> anyhow::Result<Process> {
    let address = free_address()?;
    let mut command = Command::new(wasmtime);
    command
        .arg("serve")
        .arg(format!("--addr={address}"))
        .args(extra_args)
        .arg(component);
    let mut process = Process::start(
        "wasmtime",
        command,
        address,
        "/",
        log_dir.join("wasmtime.log"),
    )
    .await?;
    process.stop_signal = "INT";
    Ok(process)
}

/// Whether a metrics scrape shows settlement's worker loop has succeeded at least once.
fn settlement_succeeded(scrape: &str) -> bool {
    flashcart_telemetry::series_value(scrape, "flashcart_settle_last_success_timestamp_seconds")
        .is_some_and(|v| v > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settlement_has_succeeded_once_its_last_success_is_stamped() {
        let before = "# TYPE flashcart_settle_last_success_timestamp_seconds gauge\n\
                      flashcart_settle_last_success_timestamp_seconds 0\n";
        assert!(!settlement_succeeded(before));
        assert!(!settlement_succeeded("flashcart_requests_total 3\n"));
        let after = "flashcart_settle_lag{partition=\"p00\"} 0\n\
                     flashcart_settle_last_success_timestamp_seconds 1796659200.123\n";
        assert!(settlement_succeeded(after));
    }
}
