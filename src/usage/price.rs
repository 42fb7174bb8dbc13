//! Prices per model, in nano-dollars per million tokens (integers: a per-token
//! price is below a micro-dollar), with defaults for current OpenAI models.

use std::collections::BTreeMap;

use crate::store::Tokens;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    /// Nano-dollars per million input tokens (uncached).
    pub input: i64,
    /// Nano-dollars per million cached input tokens.
    pub cached_input: i64,
    /// Nano-dollars per million output tokens.
    pub output: i64,
}

impl Price {
    /// From US dollars per million tokens, as price lists quote them.
    pub fn usd_per_million(input: f64, cached_input: f64, output: f64) -> Self {
        let nanos = |usd: f64| (usd * 1e9).round() as i64;
        Self { input: nanos(input), cached_input: nanos(cached_input), output: nanos(output) }
    }
}

/// USD per 1M tokens (input, cached input, output), from OpenAI's price list.
const DEFAULTS: &[(&str, f64, f64, f64)] = &[
    ("gpt-5", 1.25, 0.125, 10.0),
    ("gpt-5-mini", 0.25, 0.025, 2.0),
    ("gpt-5-nano", 0.05, 0.005, 0.40),
    ("gpt-4.1", 2.0, 0.50, 8.0),
    ("gpt-4.1-mini", 0.40, 0.10, 1.60),
    ("gpt-4.1-nano", 0.10, 0.025, 0.40),
    ("gpt-4o", 2.50, 1.25, 10.0),
    ("gpt-4o-mini", 0.15, 0.075, 0.60),
    ("gpt-4-turbo", 10.0, 10.0, 30.0),
    ("gpt-3.5-turbo", 0.50, 0.50, 1.50),
    ("o1", 15.0, 7.50, 60.0),
    ("o1-mini", 1.10, 0.55, 4.40),
    ("o3", 2.0, 0.50, 8.0),
    ("o3-mini", 1.10, 0.55, 4.40),
    ("o4-mini", 1.10, 0.275, 4.40),
    ("text-embedding-3-small", 0.02, 0.02, 0.0),
    ("text-embedding-3-large", 0.13, 0.13, 0.0),
    ("text-embedding-ada-002", 0.10, 0.10, 0.0),
];

/// Model → price; a model matches its exact name or a dated/suffixed variant
/// (`gpt-4o-2024-08-06`), the longest name winning (`gpt-4o-mini` over `gpt-4o`).
#[derive(Debug, Clone)]
pub struct PriceTable(BTreeMap<String, Price>);

impl Default for PriceTable {
    fn default() -> Self {
        Self(DEFAULTS.iter().map(|&(m, i, c, o)| (m.to_owned(), Price::usd_per_million(i, c, o))).collect())
    }
}

impl PriceTable {
    /// The defaults with `overrides` on top.
    pub fn with(overrides: impl IntoIterator<Item = (String, Price)>) -> Self {
        let mut table = Self::default();
        table.0.extend(overrides);
        table
    }

    pub fn price(&self, model: &str) -> Option<Price> {
        // The exact name is the longest that can match.
        if let Some(price) = self.0.get(model) {
            return Some(*price);
        }
        self.0
            .iter()
            .filter(|(name, _)| model.strip_prefix(name.as_str()).is_some_and(|rest| rest.starts_with('-')))
            .max_by_key(|(name, _)| name.len())
            .map(|(_, price)| *price)
    }

    /// The cost of `tokens` on `model` in nano-dollars (0 for an unpriced model).
    pub fn cost_nanos(&self, model: &str, tokens: &Tokens) -> i64 {
        let Some(price) = self.price(model) else { return 0 };
        let cached = tokens.cached.clamp(0, tokens.input.max(0));
        let uncached = tokens.input.max(0) - cached;
        let total = i128::from(uncached) * i128::from(price.input)
            + i128::from(cached) * i128::from(price.cached_input)
            + i128::from(tokens.output.max(0)) * i128::from(price.output);
        i64::try_from(total / 1_000_000).unwrap_or(i64::MAX)
    }
}
