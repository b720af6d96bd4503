//! End-to-end tests: the real `weir` binary as a process, real sockets, real
//! TLS; test doubles only for the backends, speaking their wire protocol.
mod harness;

mod backends;
mod cli;
mod delivery;
mod failover;
mod intake;
mod limits;
mod metrics;
mod plugins;
mod rules;
mod tls;
