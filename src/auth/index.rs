//! The in-memory index of keys: digest → record and public id → record, in one
//! immutable snapshot swapped atomically. Readers never lock; writers (admin
//! actions, the periodic reload) build a new snapshot. Local changes are
//! announced on a channel so other replicas can reload them ([`crate::replicas`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::mpsc;

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

/// A key or project whose stored state changed on this replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Key(PublicId),
    Project(String),
}

#[derive(Default)]
pub struct KeyIndex {
    snapshot: ArcSwap<Snapshot>,
    changes: OnceLock<mpsc::Sender<Change>>,
    /// Counts record-level writes, so a reconcile can tell that its read of
    /// the store may predate one of them.
    generation: AtomicU64,
    /// Serialises writers (rare); readers never take it.
    writer: Mutex<()>,
}

fn project_map(projects: Vec<Project>) -> HashMap<String, Arc<Project>> {
    projects.into_iter().map(|p| (p.id.clone(), Arc::new(p))).collect()
}

impl KeyIndex {
    pub fn new(records: Vec<KeyRecord>, projects: Vec<Project>) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(Snapshot::build(records.into_iter().map(Arc::new), project_map(projects))),
            changes: OnceLock::new(),
            generation: AtomicU64::new(0),
            writer: Mutex::new(()),
        }
    }

    /// The write count a reconcile notes before it reads the store.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Starts announcing local changes (once; later calls get `None`). A full
    /// channel drops announcements: the periodic reconcile heals peers.
    pub fn announce_changes(&self, capacity: usize) -> Option<mpsc::Receiver<Change>> {
        let (tx, rx) = mpsc::channel(capacity);
        self.changes.set(tx).ok().map(|()| rx)
    }

    fn announce(&self, change: Change) {
        if let Some(tx) = self.changes.get() {
            if tx.try_send(change).is_err() {
                metrics::counter!("keygate_index_changes_dropped_total").increment(1);
            }
        }
    }

    /// Replaces the whole index with a read of the store that began at
    /// `generation`, unless a record was written since: that read may predate
    /// a revocation, which must not come back to life. `false` when skipped
    /// (the next reconcile tries again).
    pub fn replace_all(&self, generation: u64, records: Vec<KeyRecord>, projects: Vec<Project>) -> bool {
        let _writer = self.writer.lock();
        if self.generation() != generation {
            return false;
        }
        self.snapshot.store(Arc::new(Snapshot::build(records.into_iter().map(Arc::new), project_map(projects))));
        true
    }

    /// Inserts or replaces keys changed here, dropping digests they no longer
    /// have, and announces them to peers.
    pub fn upsert(&self, records: impl IntoIterator<Item = KeyRecord>) {
        let records: Vec<KeyRecord> = records.into_iter().collect();
        let ids: Vec<PublicId> = records.iter().map(|r| r.id.clone()).collect();
        self.refresh(records);
        for id in ids {
            self.announce(Change::Key(id));
        }
    }

    /// Inserts or replaces keys a peer changed (not announced again).
    pub fn refresh(&self, records: impl IntoIterator<Item = KeyRecord>) {
        let records: Vec<Arc<KeyRecord>> = records.into_iter().map(Arc::new).collect();
        let _writer = self.writer.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.snapshot.rcu(|current| {
            let others = current.by_id.values().filter(|r| !records.iter().any(|n| n.id == r.id)).cloned();
            Snapshot::build(others.chain(records.iter().cloned()), current.projects.clone())
        });
    }

    /// Inserts or replaces a project's policy (archive, allow-lists) changed
    /// here, and announces it to peers.
    pub fn upsert_project(&self, project: Project) {
        let id = project.id.clone();
        self.refresh_project(project);
        self.announce(Change::Project(id));
    }

    /// Inserts or replaces a project a peer changed (not announced again).
    pub fn refresh_project(&self, project: Project) {
        let project = Arc::new(project);
        let _writer = self.writer.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
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
