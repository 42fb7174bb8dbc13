//! Requests in flight per key or project. A slot is held by a guard that frees
//! it on drop, so a client hanging up mid-stream gives its slot back.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::Owner;

#[derive(Default)]
pub struct Inflight(Arc<Mutex<HashMap<Owner, u64>>>);

#[derive(Debug)]
pub struct InflightGuard {
    counts: Arc<Mutex<HashMap<Owner, u64>>>,
    owner: Owner,
}

impl Inflight {
    /// Takes a slot if fewer than `max` are held.
    pub fn acquire(&self, owner: Owner, max: u64) -> Option<InflightGuard> {
        let mut counts = self.0.lock();
        let count = counts.entry(owner.clone()).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(InflightGuard { counts: Arc::clone(&self.0), owner })
    }

    pub fn held(&self, owner: &Owner) -> u64 {
        self.0.lock().get(owner).copied().unwrap_or(0)
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        if let Some(count) = counts.get_mut(&self.owner) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.owner);
            }
        }
    }
}
