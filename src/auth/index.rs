//! The in-memory index of keys: digest → key and public id → key, in one
//! immutable snapshot swapped atomically. Readers never lock; writers (admin
//! actions, the periodic reload) build a new snapshot. Local changes are
//! announced on a channel so other replicas can reload them ([`crate::replicas`]).
//!
//! The index holds an [`IndexedKey`] per key, not the store's `KeyRecord`:
//! only what a request needs, with the parts many keys share (policies,
//! prefixes, projects, owners) held once. At 100k keys this is the difference
//! between a few tens of MiB and a few hundred.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::ids::PublicId;
use crate::key::KeyDigest;
use crate::policy::{Budget, Permissions, RateLimits};
use crate::store::{Access, KeyKind, KeyRecord, KeyState, Owner, Project, Revocation};
use crate::time::Timestamp;

/// What keys with the same settings share: who may use them for what.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct KeyPolicy {
    pub permissions: Permissions,
    pub access: Access,
    pub limits: RateLimits,
    pub budget: Option<Budget>,
}

/// A key as the request path sees it. The admin views read the full
/// `KeyRecord` from the store.
#[derive(Debug, PartialEq, Eq)]
pub struct IndexedKey {
    pub id: PublicId,
    pub kind: KeyKind,
    pub state: KeyState,
    /// How many secret versions lead to this key (a store record with another
    /// number differs from this entry, even when every digest it lists is here).
    pub secrets: u16,
    pub name: Box<str>,
    pub placement: Arc<Placement>,
    pub policy: Arc<KeyPolicy>,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    /// When the newest secret was made: creation, or the last rotation.
    pub secret_created_at: Timestamp,
    pub revocation: Option<Box<Revocation>>,
}

/// Where a key belongs. Keys share it (a project's keys under one prefix, a
/// service account's keys), so the index holds one copy for many keys.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Placement {
    pub prefix: Box<str>,
    pub project_id: Option<Box<str>>,
    /// The owning service account's or user's id.
    pub owner_id: Option<Box<str>>,
}

impl IndexedKey {
    pub fn prefix(&self) -> &str {
        &self.placement.prefix
    }

    pub fn project_id(&self) -> Option<&str> {
        self.placement.project_id.as_deref()
    }

    pub fn owner_id(&self) -> Option<&str> {
        self.placement.owner_id.as_deref()
    }
}

/// What a digest finds: the key, and when that secret version stops working
/// (the end of its rotation grace; `None` for the current secret).
#[derive(Debug, Clone)]
pub struct Found {
    pub key: Arc<IndexedKey>,
    pub secret_expires_at: Option<Timestamp>,
}

/// Digests are SHA-256 outputs of keys this gateway generated (or imported),
/// so their first bytes are already a uniform hash; hashing them again would
/// only cost time. Lookups of unknown digests cannot crowd a bucket: only
/// stored keys are ever inserted.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(word);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type DigestMap = HashMap<KeyDigest, Found, BuildHasherDefault<DigestHasher>>;

/// The keys, swapped as a whole; projects are swapped on their own.
#[derive(Default, Clone)]
struct Snapshot {
    by_digest: DigestMap,
    by_id: HashMap<PublicId, Arc<IndexedKey>>,
}

/// Looked up on every request by a key's project id: foldhash, not SipHash
/// (the ids are ours, not an attacker's choice of map keys).
type Projects = HashMap<String, Arc<Project>, foldhash::fast::RandomState>;

fn project_map(projects: Vec<Project>) -> Projects {
    projects.into_iter().map(|p| (p.id.clone(), Arc::new(p))).collect()
}

impl Snapshot {
    fn insert(&mut self, indexed: Indexed) {
        for (digest, secret_expires_at) in indexed.secrets {
            self.by_digest.insert(digest, Found { key: Arc::clone(&indexed.key), secret_expires_at });
        }
        self.by_id.insert(indexed.key.id, indexed.key);
    }

    /// Removes keys with these ids, and every digest that leads to them.
    fn remove(&mut self, ids: &HashSet<PublicId>) {
        let mut held = false;
        for id in ids {
            held |= self.by_id.remove(id).is_some();
        }
        if held {
            self.by_digest.retain(|_, found| !ids.contains(&found.key.id));
        }
    }
}

/// One key ready for the index: the key and its secrets' digests.
struct Indexed {
    key: Arc<IndexedKey>,
    secrets: Vec<(KeyDigest, Option<Timestamp>)>,
}

/// Hands out one shared copy of each equal string and policy.
#[derive(Default)]
struct Interner {
    placements: HashSet<Arc<Placement>>,
    policies: HashSet<Arc<KeyPolicy>>,
    /// A project key with a legacy secret (no checksum) was indexed.
    legacy: bool,
}

impl Interner {
    fn placement(&mut self, placement: Placement) -> Arc<Placement> {
        if let Some(shared) = self.placements.get(&placement) {
            return Arc::clone(shared);
        }
        let shared = Arc::new(placement);
        self.placements.insert(Arc::clone(&shared));
        shared
    }

    fn policy(&mut self, policy: KeyPolicy) -> Arc<KeyPolicy> {
        if let Some(shared) = self.policies.get(&policy) {
            return Arc::clone(shared);
        }
        let shared = Arc::new(policy);
        self.policies.insert(Arc::clone(&shared));
        shared
    }

    /// Forgets what only the interner still holds (policies and placements
    /// no key uses any more).
    fn prune(&mut self) {
        self.placements.retain(|p| Arc::strong_count(p) > 1);
        self.policies.retain(|p| Arc::strong_count(p) > 1);
    }

    fn index(&mut self, record: &KeyRecord) -> Indexed {
        // Project keys only: a bootstrap admin key is stored legacy too, and
        // says nothing of how a client's mistyped key should be explained.
        self.legacy |= record.kind == KeyKind::Project && record.secrets.iter().any(|s| s.legacy);
        let owner_id = record.owner.as_ref().map(|owner| match owner {
            Owner::ServiceAccount(sa) => sa.id.as_str().into(),
            Owner::User(user) => user.id.as_str().into(),
        });
        let placement = self.placement(Placement {
            prefix: record.prefix.as_str().into(),
            project_id: record.project_id.as_deref().map(Into::into),
            owner_id,
        });
        let key = IndexedKey {
            id: record.id,
            kind: record.kind,
            state: record.state,
            secrets: u16::try_from(record.secrets.len()).unwrap_or(u16::MAX),
            name: record.name.as_str().into(),
            placement,
            secret_created_at: record.secret_created_at(),
            policy: self.policy(KeyPolicy {
                permissions: record.permissions.clone(),
                access: record.access.clone(),
                limits: record.limits,
                budget: record.budget,
            }),
            created_at: record.created_at,
            expires_at: record.expires_at,
            revocation: record.revocation.clone().map(Box::new),
        };
        Indexed { key: Arc::new(key), secrets: record.secrets.iter().map(|s| (s.digest, s.expires_at)).collect() }
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
    projects: ArcSwap<Projects>,
    changes: OnceLock<mpsc::Sender<Change>>,
    /// Counts record-level writes, so a reconcile can tell that its read of
    /// the store may predate one of them.
    generation: AtomicU64,
    /// Serialises writers (rare) and keeps what they share; readers never take it.
    writer: Mutex<Interner>,
    /// Whether any key here has (or had) a legacy secret, so a refused key
    /// without checksum may be a mistyped legacy key.
    holds_legacy: AtomicBool,
}

/// A whole new set of keys, built a page of store records at a time (start,
/// reconcile), so the full records of every key never sit in memory at once:
/// the allocator would keep what they took long after they were dropped.
#[derive(Default)]
pub struct IndexBuilder {
    interner: Interner,
    snapshot: Snapshot,
}

impl IndexBuilder {
    pub fn add(&mut self, records: impl IntoIterator<Item = KeyRecord>) {
        for record in records {
            self.snapshot.insert(self.interner.index(&record));
        }
    }

    pub fn len(&self) -> usize {
        self.snapshot.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl KeyIndex {
    pub fn new(records: Vec<KeyRecord>, projects: Vec<Project>) -> Self {
        let mut keys = IndexBuilder::default();
        keys.add(records);
        Self::build(keys, projects)
    }

    pub fn build(keys: IndexBuilder, projects: Vec<Project>) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(keys.snapshot),
            projects: ArcSwap::from_pointee(project_map(projects)),
            changes: OnceLock::new(),
            generation: AtomicU64::new(0),
            holds_legacy: AtomicBool::new(keys.interner.legacy),
            writer: Mutex::new(keys.interner),
        }
    }

    /// Whether legacy keys (imported, without checksum) are held here.
    pub fn holds_legacy(&self) -> bool {
        self.holds_legacy.load(Ordering::Relaxed)
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
    pub fn replace_all(&self, generation: u64, keys: IndexBuilder, projects: Vec<Project>) -> bool {
        let mut writer = self.writer.lock();
        if self.generation() != generation {
            return false;
        }
        // The builder's interner holds only what the new keys use.
        *writer = keys.interner;
        if writer.legacy {
            self.holds_legacy.store(true, Ordering::Relaxed);
        }
        self.snapshot.store(Arc::new(keys.snapshot));
        self.projects.store(Arc::new(project_map(projects)));
        true
    }

    /// Of a page of store records, those the index does not hold exactly so
    /// (changed elsewhere, or new). Building nothing for the rest keeps a
    /// reconcile that finds no change from allocating a second index.
    pub fn differing(&self, records: Vec<KeyRecord>) -> Vec<KeyRecord> {
        let mut writer = self.writer.lock();
        let snapshot = self.snapshot.load();
        records
            .into_iter()
            .filter(|record| {
                let fresh = writer.index(record);
                let same_key = snapshot.by_id.get(&record.id).is_some_and(|held| **held == *fresh.key);
                let same_secrets = fresh.secrets.iter().all(|(digest, expires_at)| {
                    snapshot
                        .by_digest
                        .get(digest)
                        .is_some_and(|found| found.key.id == record.id && found.secret_expires_at == *expires_at)
                });
                !(same_key && same_secrets)
            })
            .collect()
    }

    /// Applies what a reconcile that began at `generation` found different,
    /// unless a record was written since (see [`KeyIndex::replace_all`]).
    pub fn reconcile(&self, generation: u64, changed: Vec<KeyRecord>, projects: Vec<Project>) -> bool {
        let mut writer = self.writer.lock();
        if self.generation() != generation {
            return false;
        }
        self.apply(&mut writer, changed);
        writer.prune();
        let projects = project_map(projects);
        let held = self.projects.load();
        let same = projects.len() == held.len() && projects.iter().all(|(id, p)| held.get(id).is_some_and(|h| h == p));
        if !same {
            self.projects.store(Arc::new(projects));
        }
        true
    }

    /// Inserts or replaces keys changed here, dropping digests they no longer
    /// have, and announces them to peers.
    pub fn upsert(&self, records: impl IntoIterator<Item = KeyRecord>) {
        let records: Vec<KeyRecord> = records.into_iter().collect();
        let ids: Vec<PublicId> = records.iter().map(|r| r.id).collect();
        self.refresh(records);
        for id in ids {
            self.announce(Change::Key(id));
        }
    }

    /// Inserts or replaces keys a peer changed (not announced again).
    pub fn refresh(&self, records: impl IntoIterator<Item = KeyRecord>) {
        let mut writer = self.writer.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.apply(&mut writer, records);
    }

    /// Puts `records` in a new snapshot, in place of what it held for them.
    fn apply(&self, writer: &mut Interner, records: impl IntoIterator<Item = KeyRecord>) {
        let indexed: Vec<Indexed> = records.into_iter().map(|r| writer.index(&r)).collect();
        if indexed.is_empty() {
            return;
        }
        let ids: HashSet<PublicId> = indexed.iter().map(|i| i.key.id).collect();
        // Writers hold the lock, so nothing else replaces the snapshot meanwhile.
        let mut next = Snapshot::clone(&self.snapshot.load());
        next.remove(&ids);
        for one in indexed {
            next.insert(one);
        }
        self.snapshot.store(Arc::new(next));
        if writer.legacy {
            self.holds_legacy.store(true, Ordering::Relaxed);
        }
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
        let mut projects = Projects::clone(&self.projects.load());
        projects.insert(project.id.clone(), project);
        self.projects.store(Arc::new(projects));
    }

    pub fn project(&self, id: &str) -> Option<Arc<Project>> {
        self.projects.load().get(id).cloned()
    }

    pub fn lookup(&self, digest: &KeyDigest) -> Option<Found> {
        self.snapshot.load().by_digest.get(digest).cloned()
    }

    pub fn by_id(&self, id: &PublicId) -> Option<Arc<IndexedKey>> {
        self.snapshot.load().by_id.get(id).cloned()
    }

    pub fn len(&self) -> usize {
        self.snapshot.load().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
