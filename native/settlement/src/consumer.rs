//! The stream consumer: one consumer group over every partition stream, batches applied to
//! the ledger in one transaction, then acknowledged; recovery of dead consumers' entries,
//! retries with exponential backoff, dead-lettering, and trimming.
//!
//! Exactly once in effect: an entry is acknowledged only after the transaction holding its
//! effects committed, so a crash anywhere leaves it pending (at least once), and the ledger's
//! unique key on the event's identity turns every redelivery into a no-op (at most once).
//!
//! Failures are per event, never per batch: when an event cannot be applied the batch is
//! applied again without it, and the event's failure is counted in the partition's failure
//! hash (`{fc:pNN}:settle:failures`, fields `<id>:n` and `<id>:err`) so every settlement
//! process sees the same count. It is retried after `retry_base · 2^(n-1)` of idle time; at
//! `max_failures` it moves, atomically with its `XACK`, to `{fc:pNN}:dlq`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashcart_core::keys::{KeySchema, Partition};
use redis::aio::ConnectionLike;

use crate::entry::{Entry, EntryId};
use crate::ledger::{Applicable, Ledger, LedgerError};
use crate::metrics::{Metrics, PartitionGauges, now_ms};
use crate::reply;
use crate::{Error, Result};

/// A hook run after a batch committed and before it is acknowledged. Tests use it to kill
/// the process exactly there; production leaves it unset.
pub type AfterCommit = Arc<dyn Fn() + Send + Sync>;

/// How a consumer reads, retries and gives up.
#[derive(Clone)]
pub struct ConsumerConfig {
    /// The consumer group (one for all settlement processes).
    pub group: String,
    /// This process's consumer name: unique among live processes, and stable across a
    /// restart so the process first takes back what it held when it died.
    pub consumer: String,
    /// Most entries applied in one transaction.
    pub batch_size: usize,
    /// How long an entry must sit unacknowledged in a consumer before another may claim it.
    pub claim_idle: Duration,
    /// Failures after which an entry goes to the dead-letter stream.
    pub max_failures: u32,
    /// First retry delay; doubles with each failure.
    pub retry_base: Duration,
    /// Run after commit, before `XACK` (fault injection in tests).
    pub after_commit: Option<AfterCommit>,
}

impl std::fmt::Debug for ConsumerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerConfig")
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .field("batch_size", &self.batch_size)
            .field("claim_idle", &self.claim_idle)
            .field("max_failures", &self.max_failures)
            .field("retry_base", &self.retry_base)
            .field("after_commit", &self.after_commit.is_some())
            .finish()
    }
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            group: "settlement".to_owned(),
            consumer: "settle-1".to_owned(),
            batch_size: 1000,
            claim_idle: Duration::from_secs(10),
            max_failures: 5,
            retry_base: Duration::from_secs(1),
            after_commit: None,
        }
    }
}

impl ConsumerConfig {
    /// How long an event keeps being retried before it is dead-lettered: the sum of the
    /// backoffs before its last try. It must exceed `claim_idle`: a payment whose order is
    /// pending in a dead consumer fails ("order not in the ledger") until that order is
    /// claimed and applied.
    pub fn patience(&self) -> Duration {
        (1..self.max_failures).map(|n| self.backoff(n)).sum()
    }

    /// The idle time a failed entry waits before its next try: `retry_base · 2^(failures-1)`,
    /// at most ten minutes.
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(20);
        self.retry_base
            .saturating_mul(factor)
            .min(Duration::from_secs(600))
    }
}

/// What one [`Consumer::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Entries were read and settled (applied, skipped as duplicates, or failed and left
    /// for retry); the count is of entries acknowledged.
    Applied(usize),
    /// Nothing new to read.
    Idle,
}

/// What one [`Consumer::recover`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Entries claimed (from dead consumers, or failed ones due for a retry).
    pub claimed: usize,
    /// Of those, entries now acknowledged.
    pub settled: usize,
    /// Entries moved to the dead-letter stream.
    pub dead_lettered: usize,
}

/// The failure hash of a partition.
pub fn failures_key(p: Partition) -> String {
    format!("{}:settle:failures", p.tag())
}

/// The dead-letter stream of a partition.
pub fn dead_letter_key(p: Partition) -> String {
    flashcart_core::keys::dead_letters(p)
}

/// A settlement consumer over every partition stream.
pub struct Consumer<C> {
    redis: C,
    ledger: Ledger,
    schema: KeySchema,
    config: ConsumerConfig,
    metrics: Arc<Metrics>,
    /// Next partition to read first (round robin, for fairness under load).
    cursor: usize,
    /// Per partition: while `Some(id)`, this consumer is re-reading its own pending entries
    /// after `id` (at start, and after a storage failure) before reading new ones.
    replay: Vec<Option<String>>,
    /// Per partition: the `XAUTOCLAIM` cursor.
    claim_cursor: Vec<String>,
    /// Entries this consumer moved to a dead-letter stream (what `recover` reports).
    dead_lettered: usize,
}

fn partition_of(schema: &KeySchema, index: usize) -> Partition {
    schema.partitions().nth(index).unwrap_or(Partition::new(0))
}

impl<C: ConnectionLike + Send> Consumer<C> {
    /// A consumer; creates the group on every partition stream (from the start of each stream,
    /// so events written before settlement first ran are settled too).
    ///
    /// # Errors
    /// When Redis fails.
    pub async fn new(
        mut redis: C,
        ledger: Ledger,
        schema: KeySchema,
        config: ConsumerConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        for p in schema.partitions() {
            let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(schema.events(p))
                .arg(&config.group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut redis)
                .await;
            match created {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e.into()),
            }
        }
        let n = usize::from(schema.partition_count());
        Ok(Self {
            redis,
            ledger,
            schema,
            config,
            metrics,
            cursor: 0,
            replay: vec![Some("0".to_owned()); n],
            claim_cursor: vec!["0-0".to_owned(); n],
            dead_lettered: 0,
        })
    }

    /// This consumer's name in the group.
    pub fn name(&self) -> &str {
        &self.config.consumer
    }

    /// The metrics this consumer updates.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The ledger it writes.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Reads one batch (this consumer's own pending entries first, then new ones), applies it
    /// in one transaction and acknowledges it.
    ///
    /// # Errors
    /// When Redis or the ledger's database fails; nothing unapplied was acknowledged, and the
    /// same entries are read again by the next step.
    pub async fn step(&mut self) -> Result<Step> {
        let entries = match self.read_batch().await {
            Ok(entries) => entries,
            Err(e) => {
                // Some partitions may have been read (and so are pending with us) before the
                // failure: read our pending entries again from the start next time.
                self.replay_all();
                return Err(e);
            }
        };
        if entries.is_empty() {
            self.metrics.alive();
            return Ok(Step::Idle);
        }
        let settled = match self.settle(entries, false).await {
            Ok(settled) => settled,
            Err(e) => {
                self.replay_all();
                return Err(e);
            }
        };
        self.metrics.alive();
        Ok(Step::Applied(settled))
    }

    /// Makes the next steps re-read this consumer's pending entries from the start.
    fn replay_all(&mut self) {
        self.replay
            .iter_mut()
            .for_each(|r| *r = Some("0".to_owned()));
    }

    async fn read_batch(&mut self) -> Result<Vec<Entry>> {
        let n = self.replay.len();
        let mut batch = Vec::new();
        for k in 0..n {
            if batch.len() >= self.config.batch_size {
                break;
            }
            let index = (self.cursor + k) % n;
            let p = partition_of(&self.schema, index);
            // Own pending entries first (after a restart they are the oldest), then new ones.
            if let Some(after) = self.replay[index].clone() {
                let own = self
                    .read(p, &after, self.config.batch_size - batch.len())
                    .await?;
                match own.last() {
                    None => self.replay[index] = None,
                    Some(last) => {
                        self.replay[index] = Some(last.id.to_string());
                        // Entries that failed before wait for their backoff in `recover`.
                        let failed = self.failure_counts(p, &own).await?;
                        batch.extend(
                            own.into_iter()
                                .zip(failed)
                                .filter(|(_, n)| *n == 0)
                                .map(|(e, _)| e),
                        );
                        continue;
                    }
                }
            }
            let fresh = self
                .read(p, ">", self.config.batch_size - batch.len())
                .await?;
            batch.extend(fresh);
        }
        self.cursor = (self.cursor + 1) % n;
        Ok(batch)
    }

    /// `XREADGROUP` of up to `count` entries of partition `p` after `after` (`>` for new).
    async fn read(&mut self, p: Partition, after: &str, count: usize) -> Result<Vec<Entry>> {
        let key = self.schema.events(p);
        let value: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.config.group)
            .arg(&self.config.consumer)
            .arg("COUNT")
            .arg(count.max(1))
            .arg("STREAMS")
            .arg(&key)
            .arg(after)
            .query_async(&mut self.redis)
            .await?;
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (_, entries) in reply::read_streams(&value)? {
            for (id, fields) in entries {
                match fields {
                    Some(fields) => out.push(Entry {
                        partition: p,
                        id: id.parse()?,
                        fields,
                    }),
                    // Deleted while pending (only an operator's XDEL does that): nothing to apply.
                    None => gone.push(id),
                }
            }
        }
        if !gone.is_empty() {
            redis::cmd("XACK")
                .arg(&key)
                .arg(&self.config.group)
                .arg(&gone)
                .query_async::<()>(&mut self.redis)
                .await?;
        }
        Ok(out)
    }

    /// Failure counts of `entries` (all of partition `p`), in order.
    async fn failure_counts(&mut self, p: Partition, entries: &[Entry]) -> Result<Vec<u32>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let fields: Vec<String> = entries.iter().map(|e| format!("{}:n", e.id)).collect();
        let counts: Vec<Option<u32>> = redis::cmd("HMGET")
            .arg(failures_key(p))
            .arg(&fields)
            .query_async(&mut self.redis)
            .await?;
        Ok(counts.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// Applies `entries` (one transaction, without the events that fail), acknowledges what
    /// was applied or skipped, and counts failures. Returns the number acknowledged.
    async fn settle(&mut self, entries: Vec<Entry>, retried: bool) -> Result<usize> {
        let started = Instant::now();
        let mut failed: Vec<(Entry, String)> = Vec::new();
        let mut ok: Vec<Entry> = Vec::new();
        let mut events: Vec<Applicable> = Vec::new();
        for entry in entries {
            match entry.event() {
                Ok(event) => {
                    events.push(Applicable {
                        partition: entry.partition,
                        identity: entry.identity(),
                        event,
                    });
                    ok.push(entry);
                }
                Err(e) => failed.push((entry, e.to_string())),
            }
        }
        let applied = loop {
            match self.ledger.apply(&events).await {
                Ok(applied) => break applied,
                Err(LedgerError::Event { index, failure }) => {
                    events.remove(index);
                    failed.push((ok.remove(index), failure.to_string()));
                }
                Err(other) => return Err(other.into()),
            }
        };
        if let Some(hook) = self.config.after_commit.as_ref().filter(|_| !ok.is_empty()) {
            hook();
        }
        let mut by_partition: BTreeMap<Partition, Vec<String>> = BTreeMap::new();
        for e in &ok {
            by_partition
                .entry(e.partition)
                .or_default()
                .push(e.id.to_string());
        }
        for (p, ids) in &by_partition {
            let mut pipe = redis::pipe();
            pipe.cmd("XACK")
                .arg(self.schema.events(*p))
                .arg(&self.config.group)
                .arg(ids)
                .ignore();
            if retried {
                let fields: Vec<String> = ids
                    .iter()
                    .flat_map(|id| [format!("{id}:n"), format!("{id}:err")])
                    .collect();
                pipe.cmd("HDEL").arg(failures_key(*p)).arg(fields).ignore();
            }
            pipe.query_async::<()>(&mut self.redis).await?;
        }
        if !ok.is_empty() {
            self.metrics
                .batch(applied.new, applied.duplicates, started.elapsed());
        }
        for (entry, error) in failed {
            self.record_failure(entry, &error).await?;
        }
        Ok(ok.len())
    }

    /// Counts a failure of `entry`; at `max_failures` moves it to the dead-letter stream.
    async fn record_failure(&mut self, entry: Entry, error: &str) -> Result<()> {
        self.metrics.event_failed();
        let key = failures_key(entry.partition);
        let (n, ()): (u32, ()) = redis::pipe()
            .cmd("HINCRBY")
            .arg(&key)
            .arg(format!("{}:n", entry.id))
            .arg(1)
            .cmd("HSET")
            .arg(&key)
            .arg(format!("{}:err", entry.id))
            .arg(error)
            .ignore()
            .query_async(&mut self.redis)
            .await
            .map(|(n,): (u32,)| (n, ()))?;
        // A first failure is routine when several processes share a stream (a payment whose
        // order is still in the other's batch); repeated ones are worth a look.
        if n == 1 {
            tracing::debug!(partition = %entry.partition, entry = %entry.id, error, "event failed once; will retry");
        } else {
            tracing::warn!(partition = %entry.partition, entry = %entry.id, error, failures = n, "event failed again");
        }
        if n >= self.config.max_failures {
            self.dead_letter(&entry, n, error).await?;
        }
        Ok(())
    }

    /// Moves `entry` to its partition's dead-letter stream: `XADD` there, `XACK` here and the
    /// failure record's removal in one `MULTI` (one partition, one slot).
    async fn dead_letter(&mut self, entry: &Entry, failures: u32, error: &str) -> Result<()> {
        let p = entry.partition;
        let mut fields: Vec<(String, String)> = entry
            .fields
            .iter()
            .filter(|(k, _)| !k.starts_with("dlq."))
            .cloned()
            .collect();
        fields.push(("dlq.entry".to_owned(), entry.id.to_string()));
        fields.push(("dlq.error".to_owned(), error.to_owned()));
        fields.push(("dlq.failures".to_owned(), failures.to_string()));
        fields.push(("dlq.consumer".to_owned(), self.config.consumer.clone()));
        fields.push(("dlq.at".to_owned(), now_ms().to_string()));
        let id = entry.id.to_string();
        redis::pipe()
            .atomic()
            .cmd("XADD")
            .arg(dead_letter_key(p))
            .arg("*")
            .arg(&fields)
            .ignore()
            .cmd("XACK")
            .arg(self.schema.events(p))
            .arg(&self.config.group)
            .arg(&id)
            .ignore()
            .cmd("HDEL")
            .arg(failures_key(p))
            .arg(format!("{id}:n"))
            .arg(format!("{id}:err"))
            .ignore()
            .query_async::<()>(&mut self.redis)
            .await?;
        self.metrics.dead_lettered();
        self.dead_lettered += 1;
        tracing::error!(partition = %p, entry = %id, failures, error, "event dead-lettered");
        Ok(())
    }

    /// Claims what dead consumers left pending for longer than `claim_idle` (`XAUTOCLAIM`),
    /// retries failed entries whose backoff has passed (`XCLAIM` with that idle time, so only
    /// one process wins each), and settles them.
    ///
    /// # Errors
    /// When Redis or the ledger's database fails.
    pub async fn recover(&mut self) -> Result<Recovered> {
        let outcome = self.claim_and_retry().await;
        if outcome.is_err() {
            // Claimed entries are pending with us now: the next steps read them again.
            self.replay_all();
        }
        outcome
    }

    async fn claim_and_retry(&mut self) -> Result<Recovered> {
        let mut done = Recovered::default();
        for index in 0..self.replay.len() {
            let p = partition_of(&self.schema, index);
            let key = self.schema.events(p);
            // Orphans of dead consumers.
            let value: redis::Value = redis::cmd("XAUTOCLAIM")
                .arg(&key)
                .arg(&self.config.group)
                .arg(&self.config.consumer)
                .arg(u64::try_from(self.config.claim_idle.as_millis()).unwrap_or(u64::MAX))
                .arg(&self.claim_cursor[index])
                .arg("COUNT")
                .arg(self.config.batch_size)
                .query_async(&mut self.redis)
                .await?;
            let (next, claimed) = reply::autoclaim(&value)?;
            self.claim_cursor[index] = next;
            let claimed: Vec<Entry> = claimed
                .into_iter()
                .filter_map(|(id, fields)| {
                    Some(Entry {
                        partition: p,
                        id: id.parse().ok()?,
                        fields: fields?,
                    })
                })
                .collect();
            if !claimed.is_empty() {
                done.claimed += claimed.len();
                self.metrics.claimed(claimed.len());
                done.settled += self.settle(claimed, true).await?;
            }
            // Failed entries due for another try.
            let failures: HashMap<String, String> = redis::cmd("HGETALL")
                .arg(failures_key(p))
                .query_async(&mut self.redis)
                .await?;
            let mut due = Vec::new();
            for (field, count) in &failures {
                let Some(id) = field.strip_suffix(":n") else {
                    continue;
                };
                let n: u32 = count.parse().unwrap_or(0);
                let idle = u64::try_from(self.config.backoff(n).as_millis()).unwrap_or(u64::MAX);
                let value: redis::Value = redis::cmd("XCLAIM")
                    .arg(&key)
                    .arg(&self.config.group)
                    .arg(&self.config.consumer)
                    .arg(idle)
                    .arg(id)
                    .query_async(&mut self.redis)
                    .await?;
                let claimed = reply::entries("XCLAIM", &value)?;
                match claimed.into_iter().next() {
                    Some((id, Some(fields))) => due.push(Entry {
                        partition: p,
                        id: id.parse()?,
                        fields,
                    }),
                    _ => {
                        // Not claimable: still backing off, or no longer pending at all (settled
                        // by someone else, or acknowledged just before a crash): then forget it.
                        let pending: redis::Value = redis::cmd("XPENDING")
                            .arg(&key)
                            .arg(&self.config.group)
                            .arg(id)
                            .arg(id)
                            .arg(1)
                            .query_async(&mut self.redis)
                            .await?;
                        if reply::items(&pending).is_empty() {
                            redis::cmd("HDEL")
                                .arg(failures_key(p))
                                .arg(format!("{id}:n"))
                                .arg(format!("{id}:err"))
                                .query_async::<()>(&mut self.redis)
                                .await?;
                        }
                    }
                }
            }
            // One at a time: each has failed before, and must not fail the others again.
            for entry in due {
                done.claimed += 1;
                self.metrics.claimed(1);
                let before = self.dead_lettered;
                done.settled += self.settle(vec![entry], true).await?;
                done.dead_lettered += self.dead_lettered - before;
            }
        }
        Ok(done)
    }

    /// Trims every partition stream below the lowest id that is both acknowledged (below the
    /// group's lowest pending id, or up to its last delivered id when nothing is pending) and
    /// committed (at most one past the highest id the ledger applied). Refreshes the lag,
    /// pending and dead-letter gauges on the way. Returns the entries trimmed.
    ///
    /// # Errors
    /// When Redis or the ledger's database fails.
    pub async fn trim(&mut self) -> Result<u64> {
        let mut trimmed = 0;
        for p in self.schema.partitions() {
            let key = self.schema.events(p);
            let groups: redis::Value = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&key)
                .query_async(&mut self.redis)
                .await?;
            let Some(info) = reply::group_info(&groups, &self.config.group) else {
                continue;
            };
            let dead_letters: i64 = redis::cmd("XLEN")
                .arg(dead_letter_key(p))
                .query_async(&mut self.redis)
                .await?;
            self.metrics.partition(
                p.index(),
                PartitionGauges {
                    lag: info.lag,
                    pending: info.pending,
                    dead_letters,
                },
            );
            let acknowledged: EntryId = if info.pending > 0 {
                let summary: redis::Value = redis::cmd("XPENDING")
                    .arg(&key)
                    .arg(&self.config.group)
                    .query_async(&mut self.redis)
                    .await?;
                match reply::lowest_pending(&summary) {
                    Some(id) => id.parse()?,
                    None => continue,
                }
            } else {
                info.last_delivered.parse::<EntryId>()?.next()
            };
            let Some(committed) = self.ledger.highest_applied(p).await? else {
                continue;
            };
            let below = acknowledged.min(committed.next());
            if below <= (EntryId { ms: 0, seq: 1 }) {
                continue;
            }
            let n: u64 = redis::cmd("XTRIM")
                .arg(&key)
                .arg("MINID")
                .arg(below.to_string())
                .query_async(&mut self.redis)
                .await?;
            trimmed += n;
        }
        self.metrics.trimmed(trimmed);
        Ok(trimmed)
    }
}

impl From<crate::entry::EntryIdError> for Error {
    fn from(e: crate::entry::EntryIdError) -> Self {
        Error::Reply(reply::ReplyError {
            command: "stream id",
            detail: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let c = ConsumerConfig {
            retry_base: Duration::from_millis(100),
            ..ConsumerConfig::default()
        };
        assert_eq!(c.backoff(1), Duration::from_millis(100));
        assert_eq!(c.backoff(2), Duration::from_millis(200));
        assert_eq!(c.backoff(4), Duration::from_millis(800));
        assert_eq!(c.backoff(40), Duration::from_secs(600));
        // Defaults: 1 + 2 + 4 + 8 s of retries outlast the 10 s claim idle time.
        let d = ConsumerConfig::default();
        assert_eq!(d.patience(), Duration::from_secs(15));
        assert!(d.patience() > d.claim_idle);
    }
}
