//! keygate: a self-hosted, OpenAI-compatible API-key gateway.
//!
//! A request flows one way, in phases (`server::data_plane`): route
//! (`route`), authenticate (`auth`, from the in-memory key index), authorise
//! the model, admit (`limits`), rewrite, forward (`proxy`), tap and meter
//! (`usage`); refusals are `auth::Denial` values rendered by `dialect`. Keys
//! are `key`, persistence is `store`, the Administration API is `admin`,
//! configuration is `config`, and plain values everyone shares are `time`,
//! `ids`, `clock` and `policy`. Layers only look down: `docs/architecture.md`
//! is the map.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod clock;
pub mod config;
pub mod dashboard;
pub mod diagnose;
pub mod dialect;
/// Invariant checks shared by the fuzz targets (`fuzz/`) and the corpus
/// replay test; not an API.
#[doc(hidden)]
pub mod fuzzing;
pub mod ids;
pub mod jobs;
pub mod key;
pub mod limits;
pub mod mock;
pub mod openapi;
pub mod policy;
pub mod proxy;
pub mod replicas;
pub mod request;
pub mod route;
pub mod server;
pub mod session;
pub mod state;
pub mod store;
pub mod time;
pub mod usage;
