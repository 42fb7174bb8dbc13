//! Integration tests: one binary, topic modules, shared helpers in `util`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // test code: panics are failures

mod util;

/// Admin API shapes, pagination and validation.
mod admin;
/// The Azure front door and Azure upstreams.
mod azure;
/// The `keygate` binary itself: bootstrap, restart, SIGTERM.
mod binary;
/// The CLI against a running gateway.
mod cli;
/// Slow, idle and surplus client connections.
mod connections;
/// The dashboard's sign-in, sessions and roles.
mod dashboard;
/// `keygate doctor` against real misconfigurations.
mod doctor;
/// OpenAI-shaped errors keygate produces itself.
mod errors;
/// Store write failures: what the background writer keeps and retries.
mod faults;
/// The fuzz corpus, replayed through the fuzz targets' invariant checks.
mod fuzz_corpus;
/// The module floors of `docs/architecture.md`, held against the source.
mod layers;
/// Leaked-key reports (`POST /v1/keys/leaked`) and the scanner pattern.
mod leaks;
/// Rotation, expiry, suspension, explain, audit.
mod lifecycle;
/// Rate limits, budgets, concurrency, failed-auth throttle.
mod limits;
/// Upstream pools: failover, member health, the record of who served.
mod pools;
/// Issue #18 proved from outside: no key oracle, no secret at rest, durable writes.
mod proof;
/// Forwarding: credentials, headers, routing, streaming, cancellation.
mod proxy;
/// Limits shared by replicas through Redis, and its failure policies.
mod redis;
/// `keygate serve` replicas on PostgreSQL and Redis; moving SQLite to PostgreSQL.
mod replicas;
/// Attacks from outside: ways around a key's limits, oracles, floods.
mod security;
/// Administration API objects against OpenAI's examples.
mod shapes;
/// Metering, the Usage API.
mod usage;
/// The usage watcher: durable baselines, takeover, signed webhook deliveries.
mod watcher;
