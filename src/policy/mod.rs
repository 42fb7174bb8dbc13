//! Policy as data: what a key or a project may do, as plain values decided
//! at creation and carried by every layer above (the store keeps them, `auth`
//! checks permissions and model patterns, `limits` enforces rates and budgets).
//!
//! Owns: permissions and the scope each route needs, the `*` glob of model
//! patterns, rate limits and budgets, and what a request exceeded. Part of the
//! ground floor with `time`, `clock` and `ids`: it imports nothing else of
//! keygate's, so it can be read and tested alone.

mod glob;
mod limits;
mod scope;

pub use glob::glob_match;
pub use limits::{Budget, BudgetScope, Dimension, Exceeded, ModelLimits, RateLimits};
pub use scope::{admin_scope, data_plane_scope, Permissions, PermissionsError, Scope, KNOWN_SCOPES};
