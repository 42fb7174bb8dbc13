//! Monthly spend per key and per project, kept in memory (loaded from the
//! usage rollups at start, added to as requests settle), checked on admission.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::policy::BudgetScope;
use crate::time::Timestamp;

/// Spend this month per scope.
#[derive(Default)]
pub struct Budgets(Mutex<HashMap<BudgetScope, (Timestamp, i64)>>);

/// The first second of `at`'s calendar month (UTC).
pub fn month_start(at: Timestamp) -> Timestamp {
    let day = at.div_euclid(86_400);
    let date = crate::time::rfc3339(day * 86_400);
    let dom: i64 = date[8..10].parse().unwrap_or(1);
    (day - (dom - 1)) * 86_400
}

impl Budgets {
    /// Spend of `scope` in the month of `now`.
    pub fn spent(&self, scope: &BudgetScope, now: Timestamp) -> i64 {
        let month = month_start(now);
        self.0.lock().get(scope).filter(|(m, _)| *m == month).map_or(0, |(_, nanos)| *nanos)
    }

    /// Raises the month's spend to `total` (a shared counter's answer, which
    /// includes other replicas' spend); a lower total changes nothing.
    pub fn observe(&self, scope: &BudgetScope, total: i64, now: Timestamp) {
        let month = month_start(now);
        let mut map = self.0.lock();
        let entry = map.entry(scope.clone()).or_insert((month, 0));
        if entry.0 != month {
            *entry = (month, 0);
        }
        entry.1 = entry.1.max(total);
    }

    /// Adds spend; returns the new total for the month.
    pub fn add(&self, scope: &BudgetScope, nanos: i64, now: Timestamp) -> i64 {
        let month = month_start(now);
        let mut map = self.0.lock();
        let entry = map.entry(scope.clone()).or_insert((month, 0));
        if entry.0 != month {
            *entry = (month, 0);
        }
        entry.1 = entry.1.saturating_add(nanos);
        entry.1
    }
}
