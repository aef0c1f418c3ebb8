//! The router against real redis-server processes (a private 3-master cluster, one with a
//! replica per master, and a single server from the test kit), through a `redis` crate connection per node standing in for
//! `spin:redis`: the same messages reach the router as reach a component on flashcart's host.

mod bad_input;
mod cluster;
mod durability;
mod support;
