//! The HTTP server, the top of the request path: it composes the routers of
//! the Administration API (`admin`), the Azure front door (`route`) and the
//! OpenAPI document (`openapi`), and none of them imports it back.
//!
//! Owns: the router (`router`), what every request gets around its handler
//! (`context`: request id, panic guard, denial records, metrics), the
//! authentication layers (`authenticate`), the data-plane handler as its
//! phases (`data_plane`), keygate's own `/v1/keygate/*` routes
//! (`introspect`), and the listener with TLS, the connection cap and
//! timeouts (`listener`, `connection`) and graceful shutdown. Leaves the
//! state it serves with to `state`, the client address and body reading to
//! `request`, and every error's wire shape to `dialect`.

mod authenticate;
mod connection;
mod context;
mod data_plane;
mod introspect;
mod listener;
mod router;

pub use connection::ConnectionLimits;
pub use context::catch_panic;
pub use listener::{serve, tls_acceptor};
pub use router::{metrics_router, router};
