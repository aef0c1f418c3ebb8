use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

fn redis_server_binary() -> String {
    std::env::var("FLASHCART_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// A port that was free a moment ago (and, for a cluster node, whose bus port +10000 too).
fn free_port(with_bus: bool) -> Result<u16> {
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if !with_bus {
            return Ok(port);
        }
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port pair found")
}

/// A private `redis-server`, killed and its directory removed on drop.
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: TempDir,
    cluster: bool,
}

impl RedisServer {
    /// Starts a single server with AOF on, in a fresh temp dir, on a free port.
    ///
    /// # Errors
    /// When `redis-server` cannot be started or does not answer within 10 s.
    pub fn start() -> Result<Self> {
        Self::spawn(false)
    }

    fn spawn(cluster: bool) -> Result<Self> {
        let mut last_err = None;
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("flashcart-redis-")
                .tempdir()?;
            let port = free_port(cluster)?;
            let child = Self::launch(port, dir.path(), cluster)?;
            let mut server = Self {
                child,
                port,
                dir,
                cluster,
            };
            match server.wait_ready() {
                Ok(()) => return Ok(server),
                Err(e) => {
                    last_err = Some(e);
                    let _ = server.child.kill();
                    let _ = server.child.wait();
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    fn launch(port: u16, dir: &Path, cluster: bool) -> Result<Child> {
        let mut cmd = Command::new(redis_server_binary());
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "yes", "--appendfsync", "everysec"])
        .arg("--dir")
        .arg(dir)
        .args(["--logfile", "redis.log", "--daemonize", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args(["--cluster-node-timeout", "5000"]);
        }
        cmd.spawn().with_context(|| {
            format!(
                "starting {} (install it: apt-get install redis-server)",
                redis_server_binary()
            )
        })
    }

    /// Pauses the server with SIGSTOP: connections stay open, nothing is answered — a
    /// server stalled by the OS, a long fork or a stuck disk. [`Self::resume`] continues it.
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn pause(&self) -> Result<()> {
        self.signal("-STOP")
    }

    /// Continues a paused server (SIGCONT): what reached it meanwhile runs now.
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn resume(&self) -> Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, signal: &str) -> Result<()> {
        let status = std::process::Command::new("kill")
            .arg(signal)
            .arg(self.child.id().to_string())
            .status()
            .context("run kill")?;
        anyhow::ensure!(status.success(), "kill {signal} redis-server: {status}");
        Ok(())
    }

    /// Kills the server with SIGKILL: no shutdown, no final fsync — what a crash does to the
    /// process (the kernel still holds what it wrote; [`Self::cut_aof`] takes that away too).
    ///
    /// # Errors
    /// When the process cannot be killed.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill().context("SIGKILL redis-server")?;
        self.child.wait()?;
        Ok(())
    }

    /// The AOF file that takes new writes and its size now: the last incremental file the
    /// manifest of Redis 7's multi-part AOF names. Record it before the writes a simulated
    /// power cut should lose; a rewrite (`BGREWRITEAOF`) starts a new file.
    ///
    /// # Errors
    /// When the manifest or the file cannot be read.
    pub fn aof_tail(&self) -> Result<(PathBuf, u64)> {
        let dir = self.dir.path().join("appendonlydir");
        let manifest = std::fs::read_to_string(dir.join("appendonly.aof.manifest"))
            .context("reading the AOF manifest")?;
        let name = manifest
            .lines()
            .rev()
            .filter(|l| l.ends_with("type i"))
            .find_map(|l| l.split_whitespace().nth(1))
            .context("no incremental AOF file in the manifest")?;
        let path = dir.join(name);
        let len = std::fs::metadata(&path)?.len();
        Ok((path, len))
    }

    /// Cuts `file` (an [`Self::aof_tail`] of a killed server) back to `len` bytes: the writes
    /// after that point never reached the disk, as on a power cut with `appendfsync everysec`.
    ///
    /// # Errors
    /// When the server still runs, the file is not this server's tail any more, or it cannot
    /// be cut.
    pub fn cut_aof(&mut self, file: &Path, len: u64) -> Result<()> {
        if self.child.try_wait()?.is_none() {
            bail!("cut the AOF of a killed server only");
        }
        let (tail, now) = self.aof_tail()?;
        if tail != file {
            bail!(
                "the AOF moved on to {} (a rewrite) since {} was recorded",
                tail.display(),
                file.display()
            );
        }
        if len > now {
            bail!("cannot cut {} ({now} bytes) to {len} bytes", file.display());
        }
        std::fs::OpenOptions::new()
            .write(true)
            .open(file)?
            .set_len(len)?;
        Ok(())
    }

    /// Deletes a killed server's AOF: it restarts empty, as a server whose disk was lost.
    ///
    /// # Errors
    /// When the server still runs or the files cannot be removed.
    pub fn lose_data(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_none() {
            bail!("lose the data of a killed server only");
        }
        std::fs::remove_dir_all(self.dir.path().join("appendonlydir"))?;
        Ok(())
    }

    /// Starts a killed server again on the same port and directory: it loads its AOF.
    ///
    /// # Errors
    /// When it does not start or answer within 10 s.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_none() {
            bail!("restart a killed server only");
        }
        self.child = Self::launch(self.port, self.dir.path(), self.cluster)?;
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "redis-server on port {} exited with {status}; log: {}",
                    self.port,
                    self.log()
                );
            }
            if let Ok(mut conn) = redis::Client::open(self.url()).and_then(|c| c.get_connection())
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "redis-server on port {} did not answer PING within 10 s",
                    self.port
                );
            }
            sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A blocking connection, for assertions.
    ///
    /// # Errors
    /// When the server cannot be reached.
    pub fn connection(&self) -> Result<redis::Connection> {
        Ok(redis::Client::open(self.url())?.get_connection()?)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private 3-master Redis Cluster.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` cluster-enabled servers and joins them (no replicas).
    ///
    /// # Errors
    /// When a node does not start or the cluster does not reach `cluster_state:ok` in 30 s.
    pub fn start(masters: usize) -> Result<Self> {
        let nodes = (0..masters)
            .map(|_| RedisServer::spawn(true))
            .collect::<Result<Vec<_>>>()?;
        let cli = std::env::var("FLASHCART_REDIS_CLI").unwrap_or_else(|_| "redis-cli".into());
        let out = Command::new(&cli)
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .with_context(|| {
                format!("running {cli} --cluster create (apt-get install redis-tools)")
            })?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let cluster = Self { nodes };
        cluster.wait_ok()?;
        Ok(cluster)
    }

    fn wait_ok(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        'retry: loop {
            if Instant::now() > deadline {
                bail!("cluster did not reach cluster_state:ok within 30 s");
            }
            sleep(Duration::from_millis(100));
            for node in &self.nodes {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut node.connection()?)?;
                if !info.contains("cluster_state:ok") {
                    continue 'retry;
                }
                // Every node must know every slot's owner before clients route by it.
                let slots: redis::Value = redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query(&mut node.connection()?)?;
                match slots {
                    redis::Value::Array(ranges) if ranges.len() == self.nodes.len() => {}
                    _ => continue 'retry,
                }
            }
            return Ok(());
        }
    }

    /// The nodes' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The index of the node that serves `slot`, as the first node sees it.
    ///
    /// # Errors
    /// When the node cannot be asked or no node serves the slot.
    pub fn owner_of(&self, slot: u16) -> Result<usize> {
        let mut conn = self.nodes[0].connection()?;
        let ranges: Vec<(u16, u16, (String, u16))> = {
            let raw: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut conn)?;
            let redis::Value::Array(ranges) = raw else {
                bail!("CLUSTER SLOTS answered {raw:?}")
            };
            let mut out = Vec::new();
            for range in ranges {
                let redis::Value::Array(r) = range else {
                    bail!("a slot range that is not an array")
                };
                let master = match r.get(2) {
                    Some(redis::Value::Array(m)) if m.len() >= 2 => (
                        redis::from_redis_value(m[0].clone())?,
                        redis::from_redis_value(m[1].clone())?,
                    ),
                    _ => bail!("a slot range without its master"),
                };
                out.push((
                    redis::from_redis_value(r[0].clone())?,
                    redis::from_redis_value(r[1].clone())?,
                    master,
                ));
            }
            out
        };
        let port = ranges
            .into_iter()
            .find(|(start, end, _)| (*start..=*end).contains(&slot))
            .map(|(_, _, (_, port))| port)
            .with_context(|| format!("no node serves slot {slot}"))?;
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .with_context(|| format!("slot {slot} is served by port {port}, not ours"))
    }

    fn node_id(&self, index: usize) -> Result<String> {
        Ok(redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut self.nodes[index].connection()?)?)
    }

    /// Starts moving `slot` from its owner to node `to`, the way `redis-cli --cluster
    /// reshard` does: `SETSLOT … IMPORTING` on `to`, `MIGRATING` on the owner, then every key
    /// of the slot `MIGRATE`d in one call. The slot is not handed over yet: the owner answers
    /// `ASK` for the keys it no longer has (see [`RedisCluster::finish_slot_move`]).
    ///
    /// # Errors
    /// When a node refuses a step.
    pub fn start_slot_move(&self, slot: u16, to: usize) -> Result<()> {
        let from = self.owner_of(slot)?;
        let (from_id, to_id) = (self.node_id(from)?, self.node_id(to)?);
        let slot_arg = slot.to_string();
        let mut src = self.nodes[from].connection()?;
        let mut dst = self.nodes[to].connection()?;
        redis::cmd("CLUSTER")
            .arg(&["SETSLOT", &slot_arg, "IMPORTING", &from_id][..])
            .query::<()>(&mut dst)?;
        redis::cmd("CLUSTER")
            .arg(&["SETSLOT", &slot_arg, "MIGRATING", &to_id][..])
            .query::<()>(&mut src)?;
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg(&["GETKEYSINSLOT", &slot_arg, "1000000"][..])
            .query(&mut src)?;
        if !keys.is_empty() {
            let port = self.nodes[to].port.to_string();
            redis::cmd("MIGRATE")
                .arg(&["127.0.0.1", &port, "", "0", "60000", "KEYS"][..])
                .arg(&keys)
                .query::<()>(&mut src)?;
        }
        Ok(())
    }

    /// Hands `slot` over to node `to` on every node (`CLUSTER SETSLOT … NODE`).
    ///
    /// # Errors
    /// When a node refuses.
    pub fn finish_slot_move(&self, slot: u16, to: usize) -> Result<()> {
        let to_id = self.node_id(to)?;
        for node in &self.nodes {
            redis::cmd("CLUSTER")
                .arg(&["SETSLOT", &slot.to_string(), "NODE", &to_id][..])
                .query::<()>(&mut node.connection()?)?;
        }
        Ok(())
    }

    /// Moves `slot` to node `to`: [`RedisCluster::start_slot_move`], then
    /// [`RedisCluster::finish_slot_move`].
    ///
    /// # Errors
    /// When a node refuses a step.
    pub fn move_slot(&self, slot: u16, to: usize) -> Result<()> {
        self.start_slot_move(slot, to)?;
        self.finish_slot_move(slot, to)
    }
}

/// Every key of a server: its `DUMP` and whether it has a TTL.
pub type Snapshot = BTreeMap<Vec<u8>, (Vec<u8>, bool)>;

/// Every key on the server with its `DUMP` (value, type and encoding) and its TTL state
/// (present or not), sorted by key: equal snapshots mean nothing changed.
///
/// # Errors
/// When the server cannot be reached.
pub fn snapshot(server: &RedisServer) -> Result<Snapshot> {
    let mut conn = server.connection()?;
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query(&mut conn)?;
    let mut out = BTreeMap::new();
    for key in keys {
        let dump: Vec<u8> = redis::cmd("DUMP").arg(&key).query(&mut conn)?;
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut conn)?;
        out.insert(key, (dump, ttl >= 0));
    }
    Ok(out)
}

/// The cargo target dir the test components were built into and compiled modules are cached
/// in: `CARGO_TARGET_DIR`, else the scripts' default `~/.cache/flashcart/target`
/// (`scripts/lib.sh`). Never a path relative to the working directory: cargo runs each test
/// binary in its package's directory, inside the source tree.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/flashcart/target"))
        })
        .unwrap_or_else(|| std::env::temp_dir().join("flashcart-target"))
}
