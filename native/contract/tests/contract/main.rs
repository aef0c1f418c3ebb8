//! The edge contract, run two ways: against the handlers in-process, and over HTTP through
//! flashcart's host serving the repo's spin.toml with the built components (the same
//! serving code as `flashcart up`).

mod failover;
mod hostile;
mod openapi;
mod paused;

use flashcart_contract::{Kind, cluster, contract, flash_sale, idempotency, sell_out, signatures};

macro_rules! both_ways {
    ($($module:ident :: $scenario:ident),* $(,)?) => {
        mod in_process {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    super::$module::$scenario(super::Kind::InProcess).await;
                }
            )*
        }
        mod over_http {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    super::$module::$scenario(super::Kind::Http).await;
                }
            )*
        }
        /// The same components, against a 3-master Redis Cluster they route over themselves.
        mod over_http_on_a_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    super::$module::$scenario(super::Kind::HttpCluster).await;
                }
            )*
        }
    };
}

both_ways!(
    contract::admin_load_stock_deduct_order_pay,
    contract::every_problem_type_of_the_contract,
    contract::the_buyer_cancels_an_unpaid_order,
    signatures::signature_outcomes,
    idempotency::one_key_one_effect_across_partitions,
    flash_sale::two_thousand_buyers_fifty_units_then_no_redis_calls,
    sell_out::last_units_cost_two_calls_per_deduct,
);

/// In-process only: the test moves the edge cache's clock, and its bursts run as one task so
/// the re-check lease (write, then read back: the key-value store has no compare-and-set) is
/// decided by the code, not by thread timing.
#[tokio::test(flavor = "current_thread")]
async fn sold_out_costs_one_call_per_period() {
    sell_out::sold_out_costs_one_call_per_period(Kind::InProcess).await;
}

/// Over HTTP on a cluster only: the partitions spread, a partition moves mid-sale, bad
/// deployments are named.
mod on_a_cluster {
    use super::cluster;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn segments_spread_and_a_moved_partition_is_followed() {
        cluster::segments_spread_and_a_moved_partition_is_followed().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_node_outside_the_allowed_hosts_is_named() {
        cluster::a_node_outside_the_allowed_hosts_is_named().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn bad_seed_lists_are_named() {
        cluster::bad_seed_lists_are_named().await;
    }
}
