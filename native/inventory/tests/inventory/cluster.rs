//! The scenarios again, on a private 3-master Redis Cluster: no CROSSSLOT, and the SKU's
//! segments really live on several nodes.

use flashcart_core::KeySchema;
use flashcart_core::inventory::Now;

use crate::scenarios;
use crate::support::{Deployment, T0, spec, unique_sku};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_pass_on_a_three_master_cluster() {
    let d = Deployment::cluster();
    let inv = d.inventory().await;

    // Segments spread over the nodes: each node owns some of the SKU's partitions.
    let sku = unique_sku("spread");
    inv.load_sku(&spec(&sku, 100, Some(16), 0), Now::At(T0))
        .await
        .expect("load");
    let schema = KeySchema::default();
    let mut nodes_with_segments = 0;
    for node in d.servers() {
        let mut conn = node.connection().expect("connect");
        let mut here = 0;
        for p in schema.sku_partitions(&sku, 16) {
            let key = schema.sku(p, &sku);
            if let Ok(fields) = redis::cmd("HGET")
                .arg(&key)
                .arg("here")
                .query::<Option<String>>(&mut conn)
            {
                here += fields.map_or(0, |f| f.split(',').filter(|s| !s.is_empty()).count());
            }
        }
        if here > 0 {
            nodes_with_segments += 1;
        }
    }
    assert_eq!(
        nodes_with_segments, 3,
        "16 segments should live on all 3 masters"
    );

    scenarios::flow(&d, &inv).await;
    scenarios::idempotency_and_limits(&d, &inv).await;
    scenarios::rejections_change_nothing(&d, &inv).await;
    scenarios::fallback_and_resume(&d, &inv).await;
    scenarios::crashed_fallback_resumes(&d, &inv).await;
    scenarios::lifecycle(&d, &inv).await;
    scenarios::rate_limit(&d, &inv).await;
    scenarios::hinted_reserve_goes_straight_to_stock(&d, &inv).await;
    crate::concurrency::ten_thousand_buyers_for_a_hundred_units(&d).await;
}
