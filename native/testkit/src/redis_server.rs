use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

/// The Redis settings flashcart ships (`infra/redis/flashcart.conf`): every private server
/// runs them, so tests and `flashcart bench` see what `./scripts/up.sh` and the cluster run.
const FLASHCART_CONF: &str = include_str!("../../../infra/redis/flashcart.conf");

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
    /// `cluster-node-timeout` in ms, for a cluster node.
    cluster: Option<u64>,
    running: bool,
}

impl RedisServer {
    /// Starts a single server with AOF on, in a fresh temp dir, on a free port.
    ///
    /// # Errors
    /// When `redis-server` cannot be started or does not answer within 10 s.
    pub fn start() -> Result<Self> {
        Self::spawn(None)
    }

    fn spawn(cluster: Option<u64>) -> Result<Self> {
        let mut last_err = None;
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("flashcart-redis-")
                .tempdir()?;
            let port = free_port(cluster.is_some())?;
            let child = Self::launch(port, dir.path(), cluster)?;
            let mut server = Self {
                child,
                port,
                dir,
                cluster,
                running: true,
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

    fn launch(port: u16, dir: &Path, cluster: Option<u64>) -> Result<Child> {
        let conf = dir.join("flashcart.conf");
        std::fs::write(&conf, FLASHCART_CONF).context("write flashcart.conf")?;
        let mut cmd = Command::new(redis_server_binary());
        cmd.arg(&conf)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(dir)
            .args(["--logfile", "redis.log", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(node_timeout_ms) = cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args(["--cluster-node-timeout", &node_timeout_ms.to_string()])
            // Partitions are independent: the others serve on while one master is failed
            // over (the default stops the whole cluster until every slot has a master).
            .args(["--cluster-require-full-coverage", "no"])
            // A replica's first sync starts at once (the default waits 5 s for more replicas).
            .args(["--repl-diskless-sync-delay", "0"]);
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
        self.running = false;
        Ok(())
    }

    /// Whether the server runs (it was not [`Self::kill`]ed, or was restarted since).
    pub fn is_running(&self) -> bool {
        self.running
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
        self.running = true;
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

/// A private Redis Cluster: masters, and optionally replicas for each.
pub struct RedisCluster {
    /// Masters first (as started), then replicas: `nodes[masters + i]` replicates
    /// `nodes[i % masters]` at the start.
    nodes: Vec<RedisServer>,
    masters: usize,
}

/// How often a condition is looked at while waiting for the cluster.
const POLL: Duration = Duration::from_millis(50);

fn redis_cli() -> String {
    std::env::var("FLASHCART_REDIS_CLI").unwrap_or_else(|_| "redis-cli".into())
}

/// A node's `INFO <section>` field, e.g. `role` of `replication`.
fn info_field(node: &RedisServer, section: &str, field: &str) -> Result<Option<String>> {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query(&mut node.connection()?)?;
    Ok(info.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
    }))
}

impl RedisCluster {
    /// Starts `masters` cluster-enabled servers and joins them (no replicas),
    /// `cluster-node-timeout` 5 s.
    ///
    /// # Errors
    /// When a node does not start or the cluster does not reach `cluster_state:ok` in 30 s.
    pub fn start(masters: usize) -> Result<Self> {
        Self::start_with_replicas(masters, 0, Duration::from_secs(5))
    }

    /// Starts `masters` masters and `replicas` replicas for each (`CLUSTER MEET`, then
    /// `CLUSTER REPLICATE`, so which replica follows which master is known:
    /// `nodes()[masters + i]` follows `nodes()[i % masters]`), every node with AOF on and
    /// `cluster-node-timeout` = `node_timeout`, and waits until every replica is in sync.
    ///
    /// # Errors
    /// When a node does not start, or the cluster is not whole within 30 s.
    pub fn start_with_replicas(
        masters: usize,
        replicas: usize,
        node_timeout: Duration,
    ) -> Result<Self> {
        let timeout_ms = u64::try_from(node_timeout.as_millis()).unwrap_or(u64::MAX);
        let nodes = (0..masters * (1 + replicas))
            .map(|_| RedisServer::spawn(Some(timeout_ms)))
            .collect::<Result<Vec<_>>>()?;
        let cli = redis_cli();
        let out = Command::new(&cli)
            .arg("--cluster")
            .arg("create")
            .args(
                nodes[..masters]
                    .iter()
                    .map(|n| format!("127.0.0.1:{}", n.port)),
            )
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
        let cluster = Self { nodes, masters };
        for replica in masters..cluster.nodes.len() {
            cluster.attach_replica(replica, replica % masters)?;
        }
        cluster.wait_ok()?;
        Ok(cluster)
    }

    /// Joins node `replica` to the cluster and makes it a replica of node `master`.
    fn attach_replica(&self, replica: usize, master: usize) -> Result<()> {
        let master_id = self.node_id(master)?;
        let mut conn = self.nodes[replica].connection()?;
        redis::cmd("CLUSTER")
            .arg("MEET")
            .arg("127.0.0.1")
            .arg(self.nodes[master].port)
            .query::<()>(&mut conn)?;
        // `CLUSTER REPLICATE` needs the master known to the new node (gossip, a moment).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let known: redis::RedisResult<()> = redis::cmd("CLUSTER")
                .arg("REPLICATE")
                .arg(&master_id)
                .query(&mut conn);
            match known {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    bail!("node {replica} cannot replicate node {master}: {e}")
                }
                Err(_) => sleep(POLL),
            }
        }
    }

    /// Waits until every running node sees the cluster whole: `cluster_state:ok`, every
    /// node known and none in a handshake, each master's slots, and every replica in sync.
    fn wait_ok(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.is_whole()? {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("cluster was not whole within 30 s (cluster_state, slots, replica sync)");
            }
            sleep(POLL);
        }
    }

    fn is_whole(&self) -> Result<bool> {
        for node in self.nodes.iter().filter(|n| n.running) {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(&mut node.connection()?)?;
            if !info.contains("cluster_state:ok") {
                return Ok(false);
            }
            // Every node must know every slot's owner before clients route by it.
            let slots: redis::Value = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query(&mut node.connection()?)?;
            match slots {
                redis::Value::Array(ranges) if ranges.len() == self.masters => {}
                _ => return Ok(false),
            }
            let known: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query(&mut node.connection()?)?;
            if known.lines().count() != self.nodes.len() || known.contains("handshake") {
                return Ok(false);
            }
            if info_field(node, "replication", "role")?.as_deref() == Some("slave")
                && info_field(node, "replication", "master_link_status")?.as_deref() != Some("up")
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The nodes' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Every node, masters first as started, then replicas (see
    /// [`RedisCluster::start_with_replicas`]); a failover changes roles, not this order.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The nodes started as masters (a failover changes roles: [`RedisCluster::masters`]
    /// asks the nodes). Asks nothing, so counters read from them stay undisturbed.
    pub fn first_masters(&self) -> &[RedisServer] {
        &self.nodes[..self.masters]
    }

    /// The nodes that are running masters now (`ROLE`), by index into [`RedisCluster::nodes`].
    ///
    /// # Errors
    /// When a running node cannot be asked.
    pub fn masters(&self) -> Result<Vec<usize>> {
        let mut out = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.running && info_field(node, "replication", "role")?.as_deref() == Some("master")
            {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// Kills node `index` with SIGKILL (a crashed master or replica); the others notice after
    /// `cluster-node-timeout`.
    ///
    /// # Errors
    /// When the process cannot be killed.
    pub fn kill(&mut self, index: usize) -> Result<()> {
        self.nodes[index].kill()
    }

    /// Starts killed node `index` again on its port, directory and `nodes.conf`: a former
    /// master whose slots were taken over rejoins as a replica of the new master (full sync).
    /// Returns once the cluster is whole again.
    ///
    /// # Errors
    /// When it does not start, or the cluster is not whole within 30 s.
    pub fn restart(&mut self, index: usize) -> Result<()> {
        self.nodes[index].restart()?;
        self.wait_ok()
    }

    /// Waits until node `replica` has been promoted (after its master died) and every
    /// running node sees the cluster whole again; returns how long that took from the call.
    ///
    /// # Errors
    /// When that does not happen within `within`.
    pub fn wait_promoted(&self, replica: usize, within: Duration) -> Result<Duration> {
        let started = Instant::now();
        let node = &self.nodes[replica];
        loop {
            let promoted = info_field(node, "replication", "role")?.as_deref() == Some("master");
            if promoted && self.is_whole()? {
                return Ok(started.elapsed());
            }
            if started.elapsed() > within {
                bail!("node {replica} was not promoted within {within:?}");
            }
            sleep(POLL);
        }
    }

    /// The index of the node that serves `slot`, as the first running node sees it.
    ///
    /// # Errors
    /// When the node cannot be asked or no node serves the slot.
    pub fn owner_of(&self, slot: u16) -> Result<usize> {
        let asked = self
            .nodes
            .iter()
            .find(|n| n.running)
            .context("no node of the cluster runs")?;
        let mut conn = asked.connection()?;
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

    /// Hands `slot` over to node `to` on every master (`CLUSTER SETSLOT … NODE`; replicas
    /// refuse `SETSLOT` and learn it from their masters).
    ///
    /// # Errors
    /// When a node refuses.
    pub fn finish_slot_move(&self, slot: u16, to: usize) -> Result<()> {
        let to_id = self.node_id(to)?;
        for master in self.masters()? {
            redis::cmd("CLUSTER")
                .arg(&["SETSLOT", &slot.to_string(), "NODE", &to_id][..])
                .query::<()>(&mut self.nodes[master].connection()?)?;
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
