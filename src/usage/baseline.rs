//! What "normal" is for a key, and whether a window departs from it.
//!
//! A key's baseline comes from its own history: its requests in each window
//! of the baseline period (`anomaly.baseline_days`) in which it was used. The
//! watcher keeps that history in memory and rebuilds it from the usage
//! rollups whenever it is not in step with the windows examined (a restart,
//! an election, another replica having examined some), so a baseline never
//! starts from zero. A key with no history is judged against its project's,
//! else the organization's, typical key, and against an absolute ceiling.

use std::collections::{HashMap, VecDeque};

use serde_json::json;

use crate::ids::PublicId;
use crate::time::Timestamp;

/// Requests per key in each busy window of the baseline period.
pub struct History {
    width: i64,
    /// The baseline period, a whole number of windows.
    span: i64,
    /// The end of the last window folded in; `None` until built.
    until: Option<Timestamp>,
    /// (window start, requests) of the windows with traffic, oldest first.
    keys: HashMap<PublicId, VecDeque<(Timestamp, i64)>>,
}

/// A key's usual traffic, from its busy windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Baseline {
    /// Mean requests per busy window.
    pub mean: f64,
    /// The busiest window.
    pub peak: i64,
    /// The end of its last busy window.
    pub last_active: Timestamp,
}

impl History {
    pub fn new(width: i64, span: i64) -> Self {
        let width = width.max(60);
        Self { width, span: (span / width).max(1) * width, until: None, keys: HashMap::new() }
    }

    pub fn span(&self) -> i64 {
        self.span
    }

    /// Whether the history ends where the next window to examine starts.
    pub fn in_step(&self, position: Timestamp) -> bool {
        self.until == Some(position)
    }

    /// Replaces the history with `(key, window start, requests)` rows of the
    /// baseline period that ends at `until`.
    pub fn rebuild(&mut self, rows: impl IntoIterator<Item = (PublicId, Timestamp, i64)>, until: Timestamp) {
        self.keys.clear();
        let mut rows: Vec<_> = rows.into_iter().filter(|(_, _, n)| *n > 0).collect();
        rows.sort_by_key(|(_, start, _)| *start);
        for (key, start, requests) in rows {
            self.keys.entry(key).or_default().push_back((start, requests));
        }
        self.until = Some(until);
        self.evict();
    }

    /// Folds in the window `[start, start + width)` just examined.
    pub fn push(&mut self, start: Timestamp, counts: &HashMap<PublicId, i64>) {
        for (key, requests) in counts.iter().filter(|(_, n)| **n > 0) {
            self.keys.entry(*key).or_default().push_back((start, *requests));
        }
        self.until = Some(start + self.width);
        self.evict();
    }

    fn evict(&mut self) {
        let Some(until) = self.until else { return };
        let oldest = until - self.span;
        self.keys.retain(|_, windows| {
            while windows.front().is_some_and(|(start, _)| *start < oldest) {
                windows.pop_front();
            }
            !windows.is_empty()
        });
    }

    pub fn baseline(&self, key: &PublicId) -> Option<Baseline> {
        let windows = self.keys.get(key)?;
        let total: i64 = windows.iter().map(|(_, n)| n).sum();
        Some(Baseline {
            mean: total as f64 / windows.len().max(1) as f64,
            peak: windows.iter().map(|(_, n)| *n).max().unwrap_or(0),
            last_active: windows.back().map_or(0, |(start, _)| start + self.width),
        })
    }

    /// The median of the busy-window means of the keys `belongs` picks:
    /// what a typical key of that group does when it is used.
    pub fn typical(&self, belongs: impl Fn(&PublicId) -> bool) -> Option<f64> {
        let mut means: Vec<f64> =
            self.keys.keys().filter(|k| belongs(k)).filter_map(|k| self.baseline(k)).map(|b| b.mean).collect();
        if means.is_empty() {
            return None;
        }
        means.sort_by(f64::total_cmp);
        let mid = means.len() / 2;
        Some(if means.len() % 2 == 0 { (means[mid - 1] + means[mid]) / 2.0 } else { means[mid] })
    }
}

/// What a key's traffic in one window is measured against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reference {
    /// The key's own history.
    Key(Baseline),
    /// A key with no history: the typical key of its project, or of the
    /// organization (`from_project` false), where there is one.
    Peers { typical: Option<f64>, from_project: bool },
}

/// The thresholds of `[anomaly]` that a spike is judged by.
#[derive(Debug, Clone, Copy)]
pub struct SpikeRule {
    pub factor: f64,
    pub min_requests: i64,
    /// For a key with no history: at most this many requests in a window.
    pub new_key_ceiling: i64,
}

/// A window judged a spike.
#[derive(Debug, Clone, PartialEq)]
pub struct Spike {
    pub severity: &'static str,
    pub message: String,
    pub details: serde_json::Value,
}

/// Two decimals: a baseline of `2.9999999999999996` reads as 3.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Judges `requests` in a window of `width` seconds. A key with history
/// spikes when the window is at least `factor` times its mean busy window
/// and busier than any window of its baseline period; a key without, when it
/// is `factor` times its peers' typical key, or over the ceiling. Below
/// `min_requests` nothing is a spike. Twice the threshold is critical.
pub fn judge(requests: i64, width: i64, reference: Reference, rule: SpikeRule) -> Option<Spike> {
    if requests < rule.min_requests {
        return None;
    }
    let critical = |threshold: f64| requests as f64 >= 2.0 * threshold;
    match reference {
        Reference::Key(b) => {
            let threshold = rule.factor * b.mean.max(1.0);
            if (requests as f64) < threshold || requests <= b.peak {
                return None;
            }
            Some(Spike {
                severity: if critical(threshold) { "critical" } else { "warning" },
                message: format!(
                    "{requests} requests in {width} s, {:.1}x the key's usual {} (its busiest window had {})",
                    requests as f64 / b.mean.max(1.0),
                    round2(b.mean),
                    b.peak
                ),
                details: json!({"requests": requests, "window_seconds": width, "baseline_from": "key",
                    "baseline": round2(b.mean), "peak": b.peak}),
            })
        }
        Reference::Peers { typical, from_project } => {
            let whose = if from_project { "project" } else { "organization" };
            let by_peers = typical.map(|t| rule.factor * t.max(1.0)).filter(|threshold| requests as f64 >= *threshold);
            let over_ceiling = requests > rule.new_key_ceiling;
            if by_peers.is_none() && !over_ceiling {
                return None;
            }
            let critical = by_peers.is_some_and(critical) || critical(rule.new_key_ceiling as f64);
            let message = match (by_peers, typical) {
                (Some(_), Some(t)) => format!(
                    "{requests} requests in {width} s on a key with no history, {:.1}x the {whose}'s typical key ({})",
                    requests as f64 / t.max(1.0),
                    round2(t)
                ),
                _ => format!(
                    "{requests} requests in {width} s on a key with no history, over the ceiling of {} for new keys",
                    rule.new_key_ceiling
                ),
            };
            Some(Spike {
                severity: if critical { "critical" } else { "warning" },
                message,
                details: json!({"requests": requests, "window_seconds": width,
                    "baseline_from": if by_peers.is_some() { whose } else { "ceiling" },
                    "baseline": typical.map(round2), "new_key_ceiling": rule.new_key_ceiling}),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: SpikeRule = SpikeRule { factor: 10.0, min_requests: 20, new_key_ceiling: 600 };

    fn key_with(windows: &[i64]) -> Reference {
        let mut h = History::new(300, 7 * 86_400);
        let id = PublicId::random();
        h.rebuild(windows.iter().enumerate().map(|(i, n)| (id, i as i64 * 300, *n)), windows.len() as i64 * 300);
        Reference::Key(h.baseline(&id).unwrap())
    }

    #[test]
    fn a_window_ten_times_the_usual_and_past_the_peak_is_a_spike() {
        let spike = judge(750, 300, key_with(&[3, 8, 5, 4]), RULE).unwrap();
        assert_eq!(spike.severity, "critical");
        assert_eq!(spike.details["baseline"], 5.0);
        assert!(judge(40, 300, key_with(&[3, 8, 5, 4]), RULE).is_none(), "under 10x");
        assert_eq!(judge(60, 300, key_with(&[3, 8, 5, 4]), RULE).unwrap().severity, "warning");
    }

    #[test]
    fn a_key_that_has_been_this_busy_before_is_not_spiking() {
        // An hourly batch job: busy windows of 100 among quiet ones.
        assert!(judge(100, 300, key_with(&[2, 100, 2, 2, 100, 2]), RULE).is_none());
        assert!(judge(101, 300, key_with(&[2, 100, 2]), RULE).is_none(), "under 10x the mean");
    }

    #[test]
    fn nothing_under_the_minimum_is_a_spike() {
        assert!(judge(19, 300, key_with(&[1]), RULE).is_none());
        assert!(judge(19, 300, Reference::Peers { typical: Some(0.5), from_project: true }, RULE).is_none());
    }

    #[test]
    fn a_key_without_history_is_judged_by_its_peers_then_the_ceiling() {
        let peers = |t| Reference::Peers { typical: Some(t), from_project: true };
        assert!(judge(150, 300, peers(20.0), RULE).is_none());
        let spike = judge(250, 300, peers(20.0), RULE).unwrap();
        assert_eq!(spike.details["baseline_from"], "project");
        assert_eq!(spike.severity, "warning");
        let alone = Reference::Peers { typical: None, from_project: false };
        assert!(judge(600, 300, alone, RULE).is_none());
        let spike = judge(601, 300, alone, RULE).unwrap();
        assert_eq!(spike.details["baseline_from"], "ceiling");
        assert_eq!(judge(1200, 300, alone, RULE).unwrap().severity, "critical");
    }

    #[test]
    fn the_history_slides_and_stays_in_step() {
        let mut h = History::new(300, 900);
        let (a, b) = (PublicId::random(), PublicId::random());
        h.rebuild([(a, 0, 10), (b, 300, 2)], 600);
        assert!(h.in_step(600) && !h.in_step(900));
        h.push(600, &HashMap::from([(a, 30)]));
        assert!(h.in_step(900));
        assert_eq!(h.baseline(&a).unwrap(), Baseline { mean: 20.0, peak: 30, last_active: 900 });
        h.push(900, &HashMap::new());
        h.push(1200, &HashMap::new());
        // The period is 900 s: by 1500 the windows at 0 and 300 are gone.
        assert_eq!(h.baseline(&a).unwrap().peak, 30);
        assert!(h.baseline(&b).is_none());
        assert_eq!(h.typical(|_| true), Some(30.0));
        assert_eq!(h.typical(|k| *k == b), None);
    }
}
