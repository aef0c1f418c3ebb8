//! A poison event is retried with backoff, lands in the dead-letter stream after K tries with
//! its error, and never holds up the events around it; `dlq retry` and `dlq drop` work.

use anyhow::Result;
use flashcart_settlement::{cli, dlq};

use crate::support::{Env, drain, on_both};

fn rsv(id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("type", "reservation.created".into()),
        ("at", "5".into()),
        ("sku", "p".into()),
        ("rsv", id.into()),
        ("seg", "0".into()),
        ("qty", "1".into()),
        ("buyer", "b".into()),
        ("expires", "99".into()),
    ]
}

fn released(id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("type", "reservation.released".into()),
        ("at", "6".into()),
        ("sku", "p".into()),
        ("rsv", id.into()),
        ("seg", "0".into()),
        ("qty", "1".into()),
        ("buyer", "b".into()),
        ("reason", "cancelled".into()),
    ]
}

async fn add(env: &Env, p: u16, fields: &[(&'static str, String)]) -> Result<String> {
    let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.xadd(p, &pairs).await
}

async fn poison_goes_to_the_dead_letter_stream_and_the_rest_flows(env: Env) -> Result<()> {
    let mut consumer = env.consumer(env.config("c1")).await?;
    for i in 0..50 {
        add(&env, 3, &rsv(&format!("good{i}"))).await?;
        if i == 20 {
            // Unknown type: can never apply.
            env.xadd(
                3,
                &[("type", "order.teleported"), ("at", "5"), ("sku", "p")],
            )
            .await?;
            // Releases a reservation the ledger does not have (yet): fails until it exists.
            add(&env, 3, &released("late")).await?;
        }
    }
    assert_eq!(
        drain(&mut consumer).await?,
        50,
        "the good events all settled in the first pass"
    );
    let ledger = consumer.ledger().clone();
    assert_eq!(ledger.counts().await?.reservations, 50);

    // Retries with backoff until K = 3 failures, then the dead-letter stream.
    let mut conn = env.conn().await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let letters = loop {
        consumer.recover().await?;
        let letters = dlq::list(&mut conn, &env.schema, 100).await?;
        if letters.len() == 2 {
            break letters;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dead-lettered in time: {letters:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let m = consumer.metrics();
    assert_eq!(m.value("flashcart_settle_dead_lettered_total"), Some(2.0));
    assert_eq!(
        m.value("flashcart_settle_event_failures_total"),
        Some(6.0),
        "K tries each"
    );
    let unknown = letters
        .iter()
        .find(|l| l.event_type() == "order.teleported")
        .expect("unknown type");
    assert!(
        unknown.error.contains("unknown event type"),
        "{}",
        unknown.error
    );
    assert_eq!(unknown.failures, 3);
    let late = letters
        .iter()
        .find(|l| l.event_type() == "reservation.released")
        .expect("late release");
    assert!(late.error.contains("not in the ledger"), "{}", late.error);

    // Nothing is left pending: the dead letters were acknowledged with their move.
    assert_eq!(consumer.trim().await?, 52);

    // The missing reservation arrives; retrying the dead letter now settles it, once.
    add(&env, 3, &rsv("late")).await?;
    drain(&mut consumer).await?;
    dlq::retry(&mut conn, &env.schema, late.id).await?;
    drain(&mut consumer).await?;
    assert_eq!(
        ledger.reservation_state("late").await?.as_deref(),
        Some("cancelled")
    );
    assert!(
        ledger
            .is_applied(late.id.partition, late.entry.parse()?)
            .await?,
        "applied under its first id"
    );

    // The CLI's view of it; then the unknown type is dropped for good.
    let config = flashcart_settlement::Config::new(&env.redis.url(), &env.ledger_url);
    let list = |command| cli::DlqArgs {
        config: config.clone(),
        command,
    };
    let listed = cli::dlq(&list(cli::DlqCommand::List { limit: 10 })).await?;
    assert!(
        listed.starts_with("1 dead-lettered") && listed.contains("order.teleported"),
        "{listed}"
    );
    assert!(listed.contains(&unknown.id.to_string()), "{listed}");
    let dropped = cli::dlq(&list(cli::DlqCommand::Drop { id: unknown.id })).await?;
    assert!(dropped.ends_with("dropped\n"), "{dropped}");
    assert!(dlq::list(&mut conn, &env.schema, 100).await?.is_empty());
    assert!(!dlq::drop(&mut conn, unknown.id).await?, "gone");
    Ok(())
}
on_both!(poison_goes_to_the_dead_letter_stream_and_the_rest_flows);
