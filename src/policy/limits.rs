//! Rate limits and budgets as values: what a key or a project is allowed, and
//! what a request exceeded. The limiter that enforces them is `crate::limits`;
//! a refusal's wording is `dialect`'s.

use serde::{Deserialize, Serialize};

use crate::ids::PublicId;
use crate::time::Timestamp;

/// Limits of a key, or of a project for one model pattern (`*` = all models
/// together). Field names follow OpenAI's project rate limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    pub max_requests_per_1_minute: Option<u64>,
    pub max_tokens_per_1_minute: Option<u64>,
    pub max_requests_per_1_day: Option<u64>,
    pub max_tokens_per_1_day: Option<u64>,
    /// Ours: requests in flight at once (a stream counts until it ends).
    pub max_concurrent_requests: Option<u64>,
}

impl RateLimits {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub fn has_tokens(&self) -> bool {
        self.max_tokens_per_1_minute.is_some() || self.max_tokens_per_1_day.is_some()
    }
}

/// A project's limits for the models matching `model` (`*` for all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelLimits {
    pub model: String,
    pub limits: RateLimits,
}

/// A spend limit: requests are refused once `monthly_nanos` is spent in the
/// calendar month (UTC); an alert fires at `alert_percent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Budget {
    pub monthly_nanos: i64,
    pub alert_percent: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BudgetScope {
    Key(PublicId),
    Project(String),
}

impl BudgetScope {
    /// The name of its spend counter for the month starting at `month`.
    pub fn counter(&self, month: Timestamp) -> String {
        match self {
            Self::Key(id) => format!("spend:k:{}:{month}", id.as_str()),
            Self::Project(id) => format!("spend:p:{id}:{month}"),
        }
    }
}

/// What a bucket counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    RequestsPerMinute,
    RequestsPerDay,
    TokensPerMinute,
    TokensPerDay,
    FailedAuthPerMinute,
}

impl Dimension {
    pub fn is_tokens(self) -> bool {
        matches!(self, Self::TokensPerMinute | Self::TokensPerDay)
    }
}

/// Why a request was held back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exceeded {
    Rate {
        dimension: Dimension,
        limit: u64,
        used: u64,
        requested: u64,
        retry_after_ms: i64,
        owner: String,
    },
    /// The request alone needs more than the whole limit: waiting cannot help.
    TooLarge {
        dimension: Dimension,
        limit: u64,
        requested: u64,
        owner: String,
    },
    Concurrency {
        limit: u64,
        owner: String,
    },
    Budget {
        scope: BudgetScope,
        budget_nanos: i64,
        spent_nanos: i64,
    },
    /// The shared limiter (Redis) could not be reached and the configured
    /// failure policy is to refuse rather than admit unmetered.
    Unavailable,
}
