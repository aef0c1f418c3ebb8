//! Integration tests of the inventory against real Redis: a private single server per test,
//! and a private 3-master Redis Cluster running the same scenarios.

mod cluster;
mod concurrency;
mod events;
mod model;
mod scenarios;
mod support;
