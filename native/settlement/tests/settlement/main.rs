//! Settlement's integration tests: real redis-server and real SQLite / PostgreSQL, all
//! private to the tests. Suites marked `on_both!` run once per ledger backend.

mod support;

mod callbacks;
mod cluster;
mod crash;
mod flow;
mod parallel;
mod poison;
mod powercut;
mod service;
mod timers;
