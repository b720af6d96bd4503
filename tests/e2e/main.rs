//! End-to-end tests: the real `weir` binary as a process, real sockets, real
//! TLS; test doubles only for the backends, speaking their wire protocol.
mod harness;

mod abuse;
mod agents;
mod backends;
mod cli;
mod delivery;
mod durability;
mod failover;
mod fleet;
mod fleet_more;
mod fleet_peers;
mod intake;
mod limits;
mod metrics;
mod mtls;
mod operations;
mod patterns;
mod plugins;
mod readme;
mod rules;
mod secrets;
mod syslog;
mod tail;
mod tls;
