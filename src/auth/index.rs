//! The in-memory index of keys: digest → record and public id → record, in one
//! immutable snapshot swapped atomically. Readers never lock; writers (admin
//! actions, the periodic reload) build a new snapshot.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::key::{KeyDigest, PublicId};
use crate::store::KeyRecord;

#[derive(Default)]
struct Snapshot {
    by_digest: HashMap<KeyDigest, Arc<KeyRecord>>,
    by_id: HashMap<PublicId, Arc<KeyRecord>>,
}

impl Snapshot {
    fn build(records: impl IntoIterator<Item = Arc<KeyRecord>>) -> Self {
        let mut snapshot = Self::default();
        for record in records {
            snapshot.insert(record);
        }
        snapshot
    }

    fn insert(&mut self, record: Arc<KeyRecord>) {
        for secret in &record.secrets {
            self.by_digest.insert(secret.digest, Arc::clone(&record));
        }
        self.by_id.insert(record.id.clone(), record);
    }
}

#[derive(Default)]
pub struct KeyIndex {
    snapshot: ArcSwap<Snapshot>,
}

impl KeyIndex {
    pub fn new(records: Vec<KeyRecord>) -> Self {
        Self { snapshot: ArcSwap::from_pointee(Snapshot::build(records.into_iter().map(Arc::new))) }
    }

    /// Replaces the whole index (start-up and periodic reconcile).
    pub fn replace_all(&self, records: Vec<KeyRecord>) {
        self.snapshot.store(Arc::new(Snapshot::build(records.into_iter().map(Arc::new))));
    }

    /// Inserts or replaces one key, dropping digests it no longer has.
    pub fn upsert(&self, record: KeyRecord) {
        let record = Arc::new(record);
        self.snapshot.rcu(|current| {
            let others = current.by_id.values().filter(|r| r.id != record.id).cloned();
            Snapshot::build(others.chain(std::iter::once(Arc::clone(&record))))
        });
    }

    pub fn lookup(&self, digest: &KeyDigest) -> Option<Arc<KeyRecord>> {
        self.snapshot.load().by_digest.get(digest).cloned()
    }

    pub fn by_id(&self, id: &PublicId) -> Option<Arc<KeyRecord>> {
        self.snapshot.load().by_id.get(id).cloned()
    }

    pub fn len(&self) -> usize {
        self.snapshot.load().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
