//! A private PostgreSQL for tests: `initdb` into a temp dir, `pg_ctl start` on a free
//! loopback port with its socket in that dir, one fresh database; stopped and removed on drop.
//!
//! When `FLASHCART_TEST_POSTGRES_URL` is set (e.g. `postgres://postgres@127.0.0.1:5432/postgres`),
//! no cluster is started: a uniquely named database is created on that server instead and
//! dropped again on drop, so tests stay isolated from each other either way.
//!
//! `initdb` refuses to run as root, and tests run as root on CI machines: then the cluster is
//! created and run as the `postgres` system user (via `runuser`), which owns the temp dir.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The environment variable naming an existing server to use instead of a private cluster.
pub const URL_ENV: &str = "FLASHCART_TEST_POSTGRES_URL";

/// A PostgreSQL database private to one test (group). See the module docs.
#[derive(Debug)]
pub struct PostgresServer {
    url: String,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// A cluster we started: stop it and remove its directory on drop.
    Private {
        bin: PathBuf,
        data: PathBuf,
        run_as_postgres: bool,
        _dir: tempfile::TempDir,
    },
    /// A database we created on a given server: drop it on drop.
    External { admin_url: String, database: String },
}

static NEXT_DB: AtomicU32 = AtomicU32::new(0);

impl PostgresServer {
    /// Starts a private cluster (or creates a database on `FLASHCART_TEST_POSTGRES_URL`).
    ///
    /// # Errors
    /// When the PostgreSQL binaries are missing or the server does not come up.
    pub fn start() -> Result<Self> {
        match std::env::var(URL_ENV) {
            Ok(url) if !url.is_empty() => Self::on_external(&url),
            _ => Self::private(false),
        }
    }

    /// Like [`PostgresServer::start`], but a private cluster keeps `fsync` on, as a production
    /// server would (for benchmarks; tests run faster without it).
    ///
    /// # Errors
    /// As [`PostgresServer::start`].
    pub fn start_durable() -> Result<Self> {
        match std::env::var(URL_ENV) {
            Ok(url) if !url.is_empty() => Self::on_external(&url),
            _ => Self::private(true),
        }
    }

    /// A `postgres://` URL for the test's database.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn on_external(admin_url: &str) -> Result<Self> {
        let database = format!(
            "flashcart_test_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        let out = Command::new("psql")
            .args([
                admin_url,
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                &format!("CREATE DATABASE {database}"),
            ])
            .output()
            .context("running psql (needed with FLASHCART_TEST_POSTGRES_URL)")?;
        check(&out, "psql CREATE DATABASE")?;
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url, |(base, _)| base);
        Ok(Self {
            url: format!("{base}/{database}"),
            kind: Kind::External {
                admin_url: admin_url.to_owned(),
                database,
            },
        })
    }

    fn private(durable: bool) -> Result<Self> {
        let bin = find_bin_dir()?;
        let dir = tempfile::Builder::new().prefix("flashcart-pg-").tempdir()?;
        let data = dir.path().join("data");
        let run_as_postgres = is_root();
        if run_as_postgres {
            let out = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .output()
                .context("chown of the cluster dir to postgres")?;
            check(&out, "chown")?;
        }
        let initdb = bin.join("initdb");
        let out = run(
            run_as_postgres,
            &initdb,
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth=trust".as_ref(),
                "--no-sync".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
            ],
        )?;
        check(&out, "initdb")?;

        let port = free_port()?;
        let fsync = if durable { "on" } else { "off" };
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync={fsync} -c max_connections=50",
            dir.path().display()
        );
        let log = dir.path().join("postgres.log");
        let out = run(
            run_as_postgres,
            &bin.join("pg_ctl"),
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                "30".as_ref(),
                "start".as_ref(),
            ],
        )?;
        if !out.status.success() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            bail!(
                "pg_ctl start failed: {}\n{log}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let server = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/flashcart"),
            kind: Kind::Private {
                bin: bin.clone(),
                data,
                run_as_postgres,
                _dir: dir,
            },
        };
        // The server accepts connections once `pg_ctl -w` returns; create the test database.
        let createdb = bin.join("createdb");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new(&createdb)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    "postgres",
                    "flashcart",
                ])
                .output()
                .context("running createdb")?;
            if out.status.success() {
                break;
            }
            if Instant::now() > deadline {
                check(&out, "createdb")?;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        match &self.kind {
            Kind::Private {
                bin,
                data,
                run_as_postgres,
                ..
            } => {
                let _ = run(
                    *run_as_postgres,
                    &bin.join("pg_ctl"),
                    &[
                        "-D".as_ref(),
                        data.as_os_str(),
                        "-m".as_ref(),
                        "immediate".as_ref(),
                        "stop".as_ref(),
                    ],
                );
            }
            Kind::External {
                admin_url,
                database,
            } => {
                let _ = Command::new("psql")
                    .args([
                        admin_url.as_str(),
                        "-c",
                        &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
                    ])
                    .output();
            }
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs `program` directly, or as the `postgres` user when we are root.
fn run(as_postgres: bool, program: &Path, args: &[&std::ffi::OsStr]) -> Result<Output> {
    let mut cmd = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args)
        // The temp dir is ours; postgres must not try to cd into root's home.
        .current_dir("/")
        .output()
        .with_context(|| format!("running {}", program.display()))
}

fn check(out: &Output, what: &str) -> Result<()> {
    if out.status.success() {
        Ok(())
    } else {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

/// The directory with `initdb`, `pg_ctl` and `createdb`: Debian's versioned directory (newest
/// first), else wherever `PATH` has them.
fn find_bin_dir() -> Result<PathBuf> {
    let mut versioned: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versioned.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(bin) = versioned.pop() {
        return Ok(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
        .context("PostgreSQL binaries (initdb, pg_ctl) not found: install postgresql")
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_and_accepts_connections() -> Result<()> {
        let pg = PostgresServer::start()?;
        let out = Command::new("psql")
            .args([pg.url(), "-tAc", "SELECT 1 + 1"])
            .output()?;
        check(&out, "psql")?;
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
        Ok(())
    }
}
