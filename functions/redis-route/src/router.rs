//! [`Router`]: the core's [`RedisExecutor`] over single-node connections, sending each command
//! to the node that serves its key's slot.
//!
//! Modes, decided lazily so a single Redis costs what it cost before routing existed:
//! - one seed, nothing known yet: commands go to the seed; a `MOVED` answer says it is a
//!   cluster node (the map is then read and the command retried). No extra round trip.
//! - several seeds: the map is read before the first command — from the node's key-value
//!   store when another instance put it there lately, else with `CLUSTER NODES` from the
//!   first seed that answers. A seed that is not a cluster node is a configuration error.
//! - cluster: commands go to their slot's master; `MOVED` re-reads the map and retries,
//!   `ASK` sends `ASKING` and the command to the node named, `TRYAGAIN` (a partition being
//!   migrated) backs off and retries, a failure re-reads the map once and retries once.
//!
//! Every edge operation is idempotent (an Idempotency-Key, a PSP event id, a load's terms), so
//! running a command again after a failure whose outcome is unknown is safe.
//!
//! With [`Durability::Replicated`], every `FCALL` is followed by `WAIT 1 <ms>` on the
//! connection that ran it; no replica in time is [`FailureKind::NotReplicated`], not retried
//! here (the wait was the retry's worth of time): the buyer's retry replays the decision.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;

use flashcart_core::exec::{ExecError, FailureKind, RedisExecutor, Value};
use flashcart_edge_cache::{Clock, KvStore};

use crate::durability::{Durability, is_no_replicas};
use crate::redirect::{Redirect, is_not_a_cluster};
use crate::seeds::{Node, Seeds};
use crate::target::Target;
use crate::topology::Topology;

/// Why a node could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// Refused before dialling: the address is not in the component's
    /// `allowed_outbound_hosts`.
    NotAllowed,
    /// The connection could not be made (the runtime's message).
    Unreachable(String),
}

/// Single-node Redis connections: `spin:redis` in a component, a `redis` crate connection in
/// tests.
pub trait Connector {
    /// An open connection.
    type Connection;
    /// Opens `url` (`redis://host:port`).
    fn open(&self, url: &str) -> impl Future<Output = Result<Self::Connection, OpenError>>;
    /// Runs one command; a failure is the runtime's message (see [`crate::redirect`]).
    fn execute(
        &self,
        conn: &Self::Connection,
        command: &str,
        args: &[String],
    ) -> impl Future<Output = Result<Vec<Value>, String>>;
    /// Waits `ms` milliseconds (a back-off before retrying `TRYAGAIN`).
    fn pause(&self, ms: u64) -> impl Future<Output = ()>;
}

/// Where the slot map is shared between the instances of one node, and for how long.
pub struct MapCache<S, K> {
    /// The node's key-value store.
    pub store: S,
    /// The clock that ages entries.
    pub clock: K,
    /// How long a map written there is used without asking the cluster, ms.
    pub ttl_ms: u64,
}

const CACHE_KEY: &str = "flashcart:redis-topology:v1";
/// Redirects and retries one command may take before it is given up.
const MAX_HOPS: usize = 6;
/// `TRYAGAIN` back-offs: 25, 50, 100 ms.
const TRY_AGAIN_PAUSES: [u64; 3] = [25, 50, 100];

#[derive(Debug, Clone)]
enum Mode {
    Unknown,
    Single,
    Cluster(Topology),
}

/// How a command failed on one node.
enum NodeFailure {
    NotAllowed,
    Unreachable,
    Failed(String),
    /// The write ran, but no replica confirmed it within this many ms (0: the master refused
    /// to write without replicas, `NOREPLICAS`).
    NotReplicated(u64),
}

/// The executor: see the module docs.
pub struct Router<C: Connector, S, K> {
    seeds: Seeds,
    connector: C,
    cache: Option<MapCache<S, K>>,
    mode: RefCell<Mode>,
    connections: RefCell<HashMap<String, Rc<C::Connection>>>,
    durability: Durability,
}

fn unavailable(kind: FailureKind, message: String) -> ExecError {
    ExecError { kind, message }
}

impl<C: Connector, S: KvStore, K: Clock> Router<C, S, K> {
    /// A router over `connector`, starting from `seeds`; nothing is opened yet.
    pub fn new(seeds: Seeds, connector: C, cache: Option<MapCache<S, K>>) -> Self {
        Self {
            seeds,
            connector,
            cache,
            mode: RefCell::new(Mode::Unknown),
            connections: RefCell::new(HashMap::new()),
            durability: Durability::Local,
        }
    }

    /// The same router, confirming every write as `durability` says.
    #[must_use]
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// The durability profile in force.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// The connector.
    pub fn connector(&self) -> &C {
        &self.connector
    }

    /// The seeds.
    pub fn seeds(&self) -> &Seeds {
        &self.seeds
    }

    /// The slot map in use, when this is known to be a cluster.
    pub fn topology(&self) -> Option<Topology> {
        match &*self.mode.borrow() {
            Mode::Cluster(t) => Some(t.clone()),
            Mode::Unknown | Mode::Single => None,
        }
    }

    async fn connection(&self, node: &Node) -> Result<Rc<C::Connection>, OpenError> {
        if let Some(conn) = self.connections.borrow().get(node.url()) {
            return Ok(Rc::clone(conn));
        }
        let opened = Rc::new(self.connector.open(node.url()).await?);
        // Another request of this instance may have opened one meanwhile: keep the first.
        Ok(Rc::clone(
            self.connections
                .borrow_mut()
                .entry(node.url().to_owned())
                .or_insert(opened),
        ))
    }

    fn forget(&self, node: &Node, conn: &Rc<C::Connection>) {
        let mut connections = self.connections.borrow_mut();
        if connections
            .get(node.url())
            .is_some_and(|c| Rc::ptr_eq(c, conn))
        {
            connections.remove(node.url());
        }
    }

    /// Runs one command on `node` (after `ASKING` when `asking`), then, for a write under
    /// [`Durability::Replicated`], `WAIT`s for a replica on the same connection. A failed
    /// command that is not a redirect drops the connection: the runtime does not say whether
    /// it survived.
    async fn run(
        &self,
        node: &Node,
        asking: bool,
        command: &str,
        args: &[String],
    ) -> Result<Vec<Value>, NodeFailure> {
        let conn = self.connection(node).await.map_err(|e| match e {
            OpenError::NotAllowed => NodeFailure::NotAllowed,
            OpenError::Unreachable(_) => NodeFailure::Unreachable,
        })?;
        let mut result = Ok(Vec::new());
        if asking {
            result = self.connector.execute(&conn, "ASKING", &[]).await;
        }
        if result.is_ok() {
            result = self.connector.execute(&conn, command, args).await;
        }
        let values = result.map_err(|message| {
            if is_no_replicas(&message) {
                return NodeFailure::NotReplicated(0);
            }
            // Redirects and "not a cluster" are answers: the connection is fine.
            if Redirect::parse(&message).is_none() && !is_not_a_cluster(&message) {
                self.forget(node, &conn);
            }
            NodeFailure::Failed(message)
        })?;
        match self.durability.waits_after(command) {
            Some(ms) => self.confirm(node, &conn, ms).await.map(|()| values),
            None => Ok(values),
        }
    }

    /// `WAIT 1 ms` on the connection that just wrote: `WAIT` counts the replicas that have
    /// everything this connection wrote so far, which includes our write. On flashcart's host
    /// the connection is the node's shared multiplexed one, so its other commands queue behind
    /// the wait (a replica that is slow or gone costs every request to that master up to `ms`).
    async fn confirm(
        &self,
        node: &Node,
        conn: &Rc<C::Connection>,
        ms: u64,
    ) -> Result<(), NodeFailure> {
        let args = ["1".to_owned(), ms.to_string()];
        match self.connector.execute(conn, "WAIT", &args).await {
            Ok(values) if values.first().and_then(Value::int).unwrap_or(0) >= 1 => Ok(()),
            Ok(_) => Err(NodeFailure::NotReplicated(ms)),
            Err(message) => {
                // The write's fate is known (it ran); whether it reached a replica is not.
                self.forget(node, conn);
                Err(NodeFailure::Failed(message))
            }
        }
    }

    fn not_replicated(node: &Node, ms: u64) -> ExecError {
        unavailable(
            FailureKind::NotReplicated,
            match ms {
                0 => format!(
                    "redis node {} refused to write without a replica (min-replicas-to-write)",
                    node.address()
                ),
                ms => format!(
                    "no replica of redis node {} confirmed the write within {ms} ms (durability = replicated)",
                    node.address()
                ),
            },
        )
    }

    fn refused(node: &Node) -> ExecError {
        unavailable(
            FailureKind::Unreachable,
            format!(
                "redis node {} is not in this component's allowed_outbound_hosts",
                node.address()
            ),
        )
    }

    fn unreachable(node: &Node) -> ExecError {
        unavailable(
            FailureKind::Unreachable,
            format!("redis node {} cannot be reached", node.address()),
        )
    }

    /// The node for `target` now, reading the map first when that is needed.
    async fn node_for(&self, slot: Option<u16>) -> Result<Node, ExecError> {
        if matches!(*self.mode.borrow(), Mode::Unknown) && !self.seeds.is_single() {
            self.discover(false, None, None).await?;
        }
        match &*self.mode.borrow() {
            Mode::Unknown | Mode::Single => Ok(self.seeds.nodes()[0].clone()),
            Mode::Cluster(t) => {
                let master = match slot {
                    Some(slot) => t.master_of(slot).ok_or_else(|| {
                        unavailable(
                            FailureKind::Server,
                            format!("no redis master serves slot {slot} (the cluster is down or being resharded)"),
                        )
                    })?,
                    None => &t.masters()[0],
                };
                Ok(self.seeds.node(master))
            }
        }
    }

    fn is_cluster(&self) -> bool {
        matches!(*self.mode.borrow(), Mode::Cluster(_))
    }

    /// Reads the slot map: from the node's store unless `fresh`, else with `CLUSTER NODES`
    /// from `first`, the known masters, then the seeds, until one answers — never from
    /// `failed`, the node a command just failed on (a dead master is asked once per command,
    /// not twice: each attempt can cost a connect timeout).
    async fn discover(
        &self,
        fresh: bool,
        first: Option<Node>,
        failed: Option<&Node>,
    ) -> Result<(), ExecError> {
        if !fresh && let Some(mode) = self.cached().await {
            *self.mode.borrow_mut() = mode;
            return Ok(());
        }
        let mut candidates: Vec<Node> = first.into_iter().collect();
        if let Mode::Cluster(t) = &*self.mode.borrow() {
            candidates.extend(t.masters().iter().map(|m| self.seeds.node(m)));
        }
        candidates.extend(self.seeds.nodes().iter().cloned());
        let mut failures: Vec<String> = Vec::new();
        let mut asked: Vec<String> = failed.map(|n| n.address().to_owned()).into_iter().collect();
        for node in candidates {
            if asked.contains(&node.address().to_owned()) {
                continue;
            }
            asked.push(node.address().to_owned());
            let args = ["NODES".to_owned()];
            let failure = match self.run(&node, false, "CLUSTER", &args).await {
                Ok(values) => {
                    let text = values.first().and_then(Value::text).unwrap_or_default();
                    match Topology::parse_nodes(&text, node.address()) {
                        Ok(t) => return self.adopt(Mode::Cluster(t)).await,
                        Err(e) => format!("{} answered an unusable map ({e})", node.address()),
                    }
                }
                Err(NodeFailure::Failed(m)) if is_not_a_cluster(&m) => {
                    if !self.seeds.is_single() {
                        return Err(unavailable(
                            FailureKind::Unreachable,
                            format!(
                                "redis node {} is not a cluster node, but redis_address lists {} nodes",
                                node.address(),
                                self.seeds.nodes().len()
                            ),
                        ));
                    }
                    return self.adopt(Mode::Single).await;
                }
                Err(NodeFailure::Failed(_) | NodeFailure::NotReplicated(_)) => {
                    format!("{} refused CLUSTER NODES", node.address())
                }
                Err(NodeFailure::NotAllowed) => {
                    format!("{} is not in allowed_outbound_hosts", node.address())
                }
                Err(NodeFailure::Unreachable) => format!("{} cannot be reached", node.address()),
            };
            failures.push(failure);
        }
        Err(unavailable(
            FailureKind::Unreachable,
            format!("no redis node answered: {}", failures.join("; ")),
        ))
    }

    async fn adopt(&self, mode: Mode) -> Result<(), ExecError> {
        self.store(&mode).await;
        *self.mode.borrow_mut() = mode;
        Ok(())
    }

    /// The map another instance of this node read lately, if any (and made from our seeds).
    async fn cached(&self) -> Option<Mode> {
        let cache = self.cache.as_ref()?;
        let bytes = cache.store.get(CACHE_KEY).await.ok()??;
        let text = String::from_utf8(bytes).ok()?;
        let mut parts = text.splitn(3, '\n');
        let expires: u64 = parts.next()?.parse().ok()?;
        if expires <= cache.clock.now_ms() || parts.next()? != self.seeds.fingerprint() {
            return None;
        }
        match parts.next()? {
            "single" => Some(Mode::Single),
            map => Topology::decode(map).map(Mode::Cluster),
        }
    }

    async fn store(&self, mode: &Mode) {
        let Some(cache) = &self.cache else { return };
        let body = match mode {
            Mode::Unknown => return,
            Mode::Single => "single".to_owned(),
            Mode::Cluster(t) => t.encode(),
        };
        let expires = cache.clock.now_ms() + cache.ttl_ms;
        let text = format!("{expires}\n{}\n{body}", self.seeds.fingerprint());
        // A failed write costs the next instance one CLUSTER NODES, nothing more.
        let _ = cache.store.set(CACHE_KEY, text.as_bytes()).await;
    }

    /// A `MOVED` answer: re-read the map (from the node named first, which is up), and trust
    /// the answer for its slot if the map does not say so yet.
    async fn follow_moved(&self, slot: u16, address: &str) -> Result<(), ExecError> {
        self.discover(true, Some(self.seeds.node(address)), None)
            .await?;
        let updated = {
            let mut mode = self.mode.borrow_mut();
            let Mode::Cluster(t) = &mut *mode else {
                return Err(unavailable(
                    FailureKind::Server,
                    format!("redis answered MOVED for slot {slot} but is not a cluster"),
                ));
            };
            if t.master_of(slot) == Some(address) {
                None
            } else {
                t.assign(slot, address);
                Some(t.clone())
            }
        };
        if let Some(t) = updated {
            self.store(&Mode::Cluster(t)).await;
        }
        Ok(())
    }

    /// Runs a command on its slot's master (or any node), following the cluster's answers.
    async fn routed(
        &self,
        slot: Option<u16>,
        command: &str,
        args: &[String],
    ) -> Result<Vec<Value>, ExecError> {
        let mut ask: Option<Node> = None;
        let mut retried = false;
        let mut pauses = TRY_AGAIN_PAUSES.iter();
        for _ in 0..MAX_HOPS {
            let asking = ask.is_some();
            let node = match ask.take() {
                Some(node) => node,
                None => match self.node_for(slot).await {
                    Ok(node) => node,
                    // The map has no master for the slot (it was read while a failed master's
                    // replica was not promoted yet): read it again once, it may have one now.
                    Err(_) if self.is_cluster() && !retried => {
                        retried = true;
                        self.discover(true, None, None).await?;
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            let message = match self.run(&node, asking, command, args).await {
                Ok(values) => return Ok(values),
                Err(NodeFailure::NotAllowed) => return Err(Self::refused(&node)),
                Err(NodeFailure::NotReplicated(ms)) => return Err(Self::not_replicated(&node, ms)),
                Err(NodeFailure::Unreachable) if self.is_cluster() && !retried => {
                    retried = true;
                    self.discover(true, None, Some(&node)).await?;
                    continue;
                }
                Err(NodeFailure::Unreachable) => return Err(Self::unreachable(&node)),
                Err(NodeFailure::Failed(message)) => message,
            };
            match Redirect::parse(&message) {
                Some(Redirect::Moved { slot, address }) => {
                    self.follow_moved(slot, &address).await?
                }
                Some(Redirect::Ask { address, .. }) => ask = Some(self.seeds.node(&address)),
                Some(Redirect::TryAgain) => match pauses.next() {
                    Some(&ms) => self.connector.pause(ms).await,
                    None => break,
                },
                Some(Redirect::ClusterDown) => {
                    return Err(unavailable(
                        FailureKind::Server,
                        "the redis cluster is down (CLUSTERDOWN)".to_owned(),
                    ));
                }
                None if self.is_cluster() && !retried => {
                    retried = true;
                    self.discover(true, None, Some(&node)).await?;
                }
                None => {
                    return Err(unavailable(FailureKind::Server, message));
                }
            }
        }
        Err(unavailable(
            FailureKind::Server,
            format!(
                "slot {} kept moving between redis nodes; retry",
                slot.map_or_else(|| "-".to_owned(), |s| s.to_string())
            ),
        ))
    }

    /// Runs a command on every master (the same answer from each is the answer); on a single
    /// node, on that node.
    async fn on_every_master(
        &self,
        command: &str,
        args: &[String],
    ) -> Result<Vec<Value>, ExecError> {
        if matches!(*self.mode.borrow(), Mode::Unknown) {
            self.discover(false, None, None).await?;
        }
        let Some(topology) = self.topology() else {
            return self.routed(None, command, args).await;
        };
        let mut answers: Vec<Vec<Value>> = Vec::new();
        for master in topology.masters() {
            let node = self.seeds.node(master);
            match self.run(&node, false, command, args).await {
                Ok(values) => answers.push(values),
                Err(NodeFailure::NotAllowed) => return Err(Self::refused(&node)),
                Err(NodeFailure::Unreachable) => return Err(Self::unreachable(&node)),
                Err(NodeFailure::NotReplicated(ms)) => return Err(Self::not_replicated(&node, ms)),
                Err(NodeFailure::Failed(m)) => {
                    return Err(unavailable(
                        FailureKind::Server,
                        format!("{}: {m}", node.address()),
                    ));
                }
            }
        }
        let first = answers.first().cloned().unwrap_or_default();
        if answers.iter().any(|a| *a != first) {
            return Err(unavailable(
                FailureKind::Server,
                format!("the redis masters answer {command} differently"),
            ));
        }
        Ok(first)
    }
}

impl<C: Connector, S: KvStore, K: Clock> RedisExecutor for Router<C, S, K> {
    async fn execute(&self, command: &str, args: Vec<String>) -> Result<Vec<Value>, ExecError> {
        match Target::of(command, &args) {
            Target::AllMasters => self.on_every_master(command, &args).await,
            Target::Slot(slot) => self.routed(Some(slot), command, &args).await,
            Target::Any => self.routed(None, command, &args).await,
        }
    }
}
