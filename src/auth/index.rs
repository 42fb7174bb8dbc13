//! The in-memory index of keys: digest → record and public id → record, in one
//! immutable snapshot swapped atomically. Readers never lock; writers (admin
//! actions, the periodic reload) build a new snapshot.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::key::{KeyDigest, PublicId};
use crate::store::{KeyRecord, Project};

#[derive(Default)]
struct Snapshot {
    by_digest: HashMap<KeyDigest, Arc<KeyRecord>>,
    by_id: HashMap<PublicId, Arc<KeyRecord>>,
    projects: HashMap<String, Arc<Project>>,
}

impl Snapshot {
    fn build(records: impl IntoIterator<Item = Arc<KeyRecord>>, projects: HashMap<String, Arc<Project>>) -> Self {
        let mut snapshot = Self { projects, ..Self::default() };
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

fn project_map(projects: Vec<Project>) -> HashMap<String, Arc<Project>> {
    projects.into_iter().map(|p| (p.id.clone(), Arc::new(p))).collect()
}

impl KeyIndex {
    pub fn new(records: Vec<KeyRecord>, projects: Vec<Project>) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(Snapshot::build(records.into_iter().map(Arc::new), project_map(projects))),
        }
    }

    /// Replaces the whole index (start-up and periodic reconcile).
    pub fn replace_all(&self, records: Vec<KeyRecord>, projects: Vec<Project>) {
        self.snapshot.store(Arc::new(Snapshot::build(records.into_iter().map(Arc::new), project_map(projects))));
    }

    /// Inserts or replaces keys, dropping digests they no longer have.
    pub fn upsert(&self, records: impl IntoIterator<Item = KeyRecord>) {
        let records: Vec<Arc<KeyRecord>> = records.into_iter().map(Arc::new).collect();
        self.snapshot.rcu(|current| {
            let others = current.by_id.values().filter(|r| !records.iter().any(|n| n.id == r.id)).cloned();
            Snapshot::build(others.chain(records.iter().cloned()), current.projects.clone())
        });
    }

    /// Inserts or replaces a project's policy (archive, allow-lists).
    pub fn upsert_project(&self, project: Project) {
        let project = Arc::new(project);
        self.snapshot.rcu(|current| {
            let mut projects = current.projects.clone();
            projects.insert(project.id.clone(), Arc::clone(&project));
            Snapshot { by_digest: current.by_digest.clone(), by_id: current.by_id.clone(), projects }
        });
    }

    pub fn project(&self, id: &str) -> Option<Arc<Project>> {
        self.snapshot.load().projects.get(id).cloned()
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
