//! What the `flashcart` CLI embeds: `settle` takes [`crate::Config`] (flattened) and calls
//! [`crate::run`]; `reconcile` and `dlq` take [`ReconcileArgs`] and [`DlqArgs`] and call
//! [`reconcile`] and [`dlq`] here, which print their results; `trace` takes [`TraceArgs`].

use anyhow::Context as _;

use crate::Config;
use crate::dlq::{self as dead_letters, DeadLetterId};
use crate::ledger::{Ledger, TrailEntry};

/// `flashcart reconcile [--repair]`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReconcileArgs {
    /// Where Redis and the ledger are.
    #[command(flatten)]
    pub config: Config,
    /// Check partitions fenced after a Redis restart (restoring them from the ledger when
    /// Redis lost writes the ledger has), then rewrite Redis segment levels from the ledger
    /// where that is provably safe (see the settlement design notes); other drift is only
    /// reported.
    #[arg(long)]
    pub repair: bool,
}

/// Runs a reconciliation and prints its table to stdout (with `--repair`, first a recovery
/// pass over partitions fenced after a Redis restart). Returns whether drift was found (the
/// command exits non-zero then).
///
/// # Errors
/// When Redis or the ledger cannot be reached.
pub async fn reconcile(args: &ReconcileArgs) -> anyhow::Result<bool> {
    let ledger = args.config.open_ledger().await?;
    let inventory = args.config.open_inventory().await?;
    if args.repair {
        // A partition fenced after a Redis restart is checked, and restored from the ledger
        // if Redis lost writes the ledger has, before the levels are compared.
        let recovery = crate::recovery::Recovery::new(
            inventory.clone(),
            ledger.clone(),
            std::sync::Arc::new(crate::Metrics::default()),
            &args.config.group,
        );
        let pass = recovery
            .pass()
            .await
            .context("recovering fenced partitions")?;
        for p in &pass.restored {
            println!(
                "partition {p}: restored from the ledger after Redis lost writes; fence lifted"
            );
        }
        for p in &pass.lifted {
            println!("partition {p}: fenced after a Redis restart, nothing lost; fence lifted");
        }
        for (p, why) in &pass.fenced {
            println!("partition {p}: still fenced: {why}");
        }
    }
    let report = crate::reconcile::reconcile(&inventory, &ledger, &args.config.group, args.repair)
        .await
        .context("reconciling")?;
    print!("{}", report.render());
    ledger.close().await;
    Ok(report.has_drift())
}

/// `flashcart trace <request-id>`.
#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// Where the ledger is (only `--ledger-url` and `--data-dir` matter here).
    #[command(flatten)]
    pub config: Config,
    /// The request's id: the `x-request-id` its answer carried.
    pub request_id: String,
    /// Wait up to this long for its events to be settled (right after the request, settlement
    /// may not have applied them yet); by default look once.
    #[arg(long, default_value = "0s", value_parser = crate::parse_duration)]
    pub wait: std::time::Duration,
}

/// Prints the settled events HTTP request `request_id` decided (waiting up to `--wait` for
/// the first), one line each, oldest first:
/// its decision time (unix ms), the partition and stream entry, the event's type, the SKU and
/// the reservation or order it is about. Returns whether any was found (the command exits 1
/// when none: the id is unknown, or settlement has not applied its events yet).
///
/// # Errors
/// When the id is not a request id, or the ledger cannot be opened or read.
pub async fn trace(args: &TraceArgs) -> anyhow::Result<bool> {
    let request = flashcart_core::ids::RequestId::parse(&args.request_id)?;
    if args.config.ledger_url.is_none() {
        let path = std::path::PathBuf::from(args.config.ledger_url());
        anyhow::ensure!(
            path.exists(),
            "no ledger at {} (pass the --data-dir settlement uses, or --ledger-url)",
            path.display()
        );
    }
    let ledger = args.config.open_ledger().await?;
    let trail = settled_trail(&ledger, request.as_str(), args.wait).await;
    ledger.close().await;
    let trail = trail?;
    if trail.is_empty() {
        eprintln!(
            "no settled event names request {request}: unknown, refused before any decision, \
             or not settled yet"
        );
        return Ok(false);
    }
    print!("{}", render_trail(&trail));
    Ok(true)
}

/// The request's settled events, polled until there is one or `wait` has passed.
async fn settled_trail(
    ledger: &Ledger,
    request: &str,
    wait: std::time::Duration,
) -> anyhow::Result<Vec<TrailEntry>> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let trail = ledger
            .request_trail(request)
            .await
            .context("reading the ledger")?;
        if !trail.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(trail);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The trail as `flashcart trace` prints it: a header, then one line per event.
fn render_trail(trail: &[TrailEntry]) -> String {
    let mut out = format!(
        "{:<15} {:>9} {:<24} {:<24} {:<20} subject\n",
        "at_ms", "partition", "entry", "type", "sku"
    );
    for e in trail {
        out += &format!(
            "{:<15} {:>9} {:<24} {:<24} {:<20} {}\n",
            e.at,
            e.partition.index(),
            e.identity.to_string(),
            e.kind,
            e.sku,
            e.subject.as_deref().unwrap_or("-")
        );
    }
    out
}

/// `flashcart dlq list|retry|drop`.
#[derive(Debug, Clone, clap::Args)]
pub struct DlqArgs {
    /// Where Redis is (only `--redis-url` and `--partitions` matter here).
    #[command(flatten)]
    pub config: Config,
    /// What to do.
    #[command(subcommand)]
    pub command: DlqCommand,
}

/// The dead-letter commands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DlqCommand {
    /// Lists dead-lettered events with their error and failure count.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Puts a dead-lettered event back on its stream (it keeps its identity, so it can never
    /// apply twice).
    Retry {
        /// The dead letter, as listed: `p07/1700000000000-0`.
        id: DeadLetterId,
    },
    /// Deletes a dead-lettered event for good.
    Drop {
        /// The dead letter, as listed: `p07/1700000000000-0`.
        id: DeadLetterId,
    },
}

/// Runs a dead-letter command, printing what it did; returns the printed text too.
///
/// # Errors
/// When Redis fails, or `retry` names no dead letter.
pub async fn dlq(args: &DlqArgs) -> anyhow::Result<String> {
    let mut conn = args.config.connect_redis().await?;
    let out = dlq_on(&mut conn, args).await?;
    print!("{out}");
    Ok(out)
}

async fn dlq_on<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    args: &DlqArgs,
) -> anyhow::Result<String> {
    let conn = &mut *conn;
    let schema = args.config.schema()?;
    let out = match &args.command {
        DlqCommand::List { limit } => {
            let letters = dead_letters::list(conn, &schema, *limit).await?;
            let mut out = format!("{} dead-lettered\n", letters.len());
            for l in letters {
                out.push_str(&format!(
                    "{}  {}  entry {}  failures {}  {}\n",
                    l.id,
                    l.event_type(),
                    l.entry,
                    l.failures,
                    l.error
                ));
            }
            out
        }
        DlqCommand::Retry { id } => {
            let new_id = dead_letters::retry(conn, &schema, *id).await?;
            format!("{id} back on its stream as {new_id}\n")
        }
        DlqCommand::Drop { id } => {
            if dead_letters::drop(conn, *id).await? {
                format!("{id} dropped\n")
            } else {
                format!("{id}: no such dead letter\n")
            }
        }
    };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashcart_core::keys::Partition;

    #[test]
    fn a_trail_prints_one_aligned_line_per_event_under_its_header() {
        let entry = |kind: &str, subject: Option<&str>| TrailEntry {
            partition: Partition::new(3),
            identity: "1733500000000-7".parse().expect("an entry id"),
            kind: kind.to_owned(),
            sku: "drop-1".to_owned(),
            at: 1_733_500_000_000,
            subject: subject.map(str::to_owned),
        };
        let printed = render_trail(&[
            entry("reservation.created", Some("r-1")),
            entry("sku.loaded", None),
        ]);
        let lines: Vec<&str> = printed.lines().collect();
        assert_eq!(lines.len(), 3, "{printed}");
        assert!(lines[0].starts_with("at_ms") && lines[0].ends_with("subject"));
        let fields: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            fields,
            [
                "1733500000000",
                "3",
                "1733500000000-7",
                "reservation.created",
                "drop-1",
                "r-1"
            ]
        );
        assert!(lines[2].ends_with(" -"), "no subject prints '-': {printed}");
        // The columns line up: every field starts where the header's does.
        assert_eq!(lines[0].find("type"), lines[1].find("reservation.created"));
    }
}
