//! The text documents of a folder: all of them in the store, in memory only while used.
//!
//! A folder of 100k files would hold 100k Automerge documents (and their text) in memory if
//! they were all loaded at start, and starting would read every one of them. Instead a
//! document is read from the store the first time it is needed and dropped again once it
//! has been idle for [`IDLE`], or when more than [`MAX_LOADED`] are in memory. Only a
//! document whose every change is persisted may be dropped: reading it back gives the same
//! document. What the replica needs of all documents (their heads, for the summary and for
//! finding files behind their documents) is `Replica::saved`, read from the store's heads
//! table at start.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use automerge::{ActorId, ChangeHash};
use teatime_crdt::{DocId, FileDoc};
use tracing::warn;

use crate::store::Store;

/// A document unused for this long is dropped from memory (it stays in the store).
const IDLE: Duration = Duration::from_secs(30);

/// At most this many documents stay in memory between flushes, however recently used
/// (an import or a join touches every document once).
const MAX_LOADED: usize = 256;

/// Text documents in memory, loaded on demand from the store.
pub(super) struct FileDocs {
    /// The actor our changes are written with (set on every loaded document).
    actor: ActorId,
    /// The folder document's id: stored like the others, never one of these.
    folder: DocId,
    loaded: HashMap<DocId, (FileDoc, Instant)>,
}

impl FileDocs {
    pub(super) fn new(actor: ActorId, folder: DocId) -> FileDocs {
        FileDocs { actor, folder, loaded: HashMap::new() }
    }

    /// The document `id`, read from `store` if it is not in memory; `None` if there is no
    /// such text document (or it does not load, which is logged).
    pub(super) fn get(&mut self, store: &Store, id: DocId) -> Option<&mut FileDoc> {
        if id == self.folder {
            return None;
        }
        if !self.loaded.contains_key(&id) {
            let doc =
                match store.load_doc(id).and_then(|d| d.map(|d| d.load_file(self.actor.clone())).transpose())
                {
                    Ok(Some(doc)) => doc,
                    Ok(None) => return None,
                    Err(e) => {
                        warn!(doc = %id.short(), "a stored document does not load: {e:#}");
                        return None;
                    }
                };
            self.loaded.insert(id, (doc, Instant::now()));
        }
        let (doc, used) = self.loaded.get_mut(&id)?;
        *used = Instant::now();
        Some(doc)
    }

    /// The document `id`, or a new empty one (a document a peer is about to send). Not
    /// for the folder document.
    pub(super) fn get_or_new(&mut self, store: &Store, id: DocId) -> &mut FileDoc {
        debug_assert_ne!(id, self.folder, "the folder document is not a text document");
        if self.get(store, id).is_none() {
            let doc = automerge::AutoCommit::new().with_actor(self.actor.clone());
            self.loaded.insert(id, (FileDoc::from_doc(doc), Instant::now()));
        }
        &mut self.loaded.get_mut(&id).expect("just inserted").0
    }

    /// Adds a document built here (a new file).
    pub(super) fn insert(&mut self, id: DocId, doc: FileDoc) {
        self.loaded.insert(id, (doc, Instant::now()));
    }

    /// The document `id` if it is in memory (never reads the store).
    pub(super) fn in_memory(&mut self, id: DocId) -> Option<&mut FileDoc> {
        self.loaded.get_mut(&id).map(|(doc, _)| doc)
    }

    /// How many documents are in memory.
    pub(super) fn len(&self) -> usize {
        self.loaded.len()
    }

    /// The documents in memory, with their ids.
    pub(super) fn loaded_mut(&mut self) -> impl Iterator<Item = (&DocId, &mut FileDoc)> {
        self.loaded.iter_mut().map(|(id, (doc, _))| (id, doc))
    }

    /// Drops documents idle for [`IDLE`], then the least recently used beyond
    /// [`MAX_LOADED`], among those whose heads are the persisted ones (`saved`) and that hold no change
    /// waiting for its dependencies.
    /// Returns how many were dropped.
    pub(super) fn drop_idle(&mut self, saved: &HashMap<DocId, Vec<ChangeHash>>) -> usize {
        self.drop_unused(saved, IDLE)
    }

    /// Drops every document whose heads are persisted and that holds no change waiting
    /// for its dependencies (a replica going to rest).
    pub(super) fn drop_persisted(&mut self, saved: &HashMap<DocId, Vec<ChangeHash>>) {
        self.drop_unused(saved, Duration::ZERO);
        self.loaded.shrink_to_fit();
    }

    fn drop_unused(&mut self, saved: &HashMap<DocId, Vec<ChangeHash>>, idle: Duration) -> usize {
        let now = Instant::now();
        let mut clean: Vec<(Instant, DocId)> = self
            .loaded
            .iter_mut()
            // Changes waiting for their dependencies live only in memory: kept.
            .filter_map(|(id, (doc, used))| {
                let clean = saved.get(id).is_some_and(|s| *s == doc.heads()) && !doc.has_waiting_changes();
                clean.then_some((*used, *id))
            })
            .collect();
        clean.sort_unstable();
        let excess = self.loaded.len().saturating_sub(MAX_LOADED);
        let before = self.loaded.len();
        for (k, (used, id)) in clean.into_iter().enumerate() {
            if k < excess || now.duration_since(used) >= idle {
                self.loaded.remove(&id);
            }
        }
        before - self.loaded.len()
    }

    /// When the least recently used document in memory becomes idle (a flush then drops
    /// it): an idle replica must not keep the last documents it used for good.
    /// (Only future times: a document that stays for another reason must not wake the
    /// replica again and again.)
    pub(super) fn next_idle(&self) -> Option<Instant> {
        let now = Instant::now();
        self.loaded.values().map(|(_, used)| *used + IDLE).filter(|at| *at > now).min()
    }
}
