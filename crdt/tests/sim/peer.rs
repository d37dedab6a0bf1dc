//! One simulated peer: what the real replica (`src/replica`) does, at the documents level.
//!
//! - `disk`: the user's files (path → inode, kind, text). It survives a crash.
//! - `index`: what the replica last wrote or recorded at each path (entry id, inode, the
//!   text and the document heads that text corresponds to). Persisted with the documents,
//!   and after materialising (each written row durable with its write).
//! - documents: the folder document and the file documents, persisted at flush as
//!   incremental chunks (`save_after`), like the real store.
//!
//! A flush is the replica's: scan (disk vs index → document operations), record
//! duplicates, persist documents and index, materialise (tree → disk and index, durable
//! with the writes), push changes to every session. Nothing leaves the peer before it is
//! persisted.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use automerge::{ActorId, AutoCommit, Change, ChangeHash};
use teatime_crdt::{DocId, EntryKind, FileDoc, FileFacts, FolderDoc, FolderView, Stamp, Tree, render};

/// The folder document's id.
pub const FOLDER: DocId = DocId([0xf0; 16]);

/// A file or directory on a peer's disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub inode: u64,
    pub kind: EntryKind,
    /// File content (empty for directories).
    pub text: String,
}

/// One index row: what the replica knows about the file at a path.
#[derive(Clone, Debug)]
pub struct Row {
    pub id: DocId,
    pub kind: EntryKind,
    pub inode: u64,
    /// The text written or recorded (the disk held exactly this).
    pub text: String,
    /// The file document's heads that text corresponds to.
    pub base: Vec<ChangeHash>,
}

/// What survives a crash besides the disk.
#[derive(Clone, Default)]
pub struct Store {
    /// Per document: the heads persisted and the chunks that load them.
    pub docs: BTreeMap<DocId, (Vec<ChangeHash>, Vec<Vec<u8>>)>,
    pub index: BTreeMap<String, Row>,
}

/// Which heads a deletion names as seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteSees {
    /// The heads of the version on disk (the index row): what the user deleted.
    IndexBase,
    /// The document's current heads (the node before the fix: a peer's edit that had
    /// arrived but was not on disk counted as seen).
    DocHeads,
}

/// A batch of changes of one document, as the replica sends them.
#[derive(Clone, Debug)]
pub struct Changes {
    pub doc: DocId,
    pub changes: Vec<Vec<u8>>,
}

pub struct Peer {
    /// The member id (hex), as stamps and the member map name it.
    pub me: String,
    pub actor: ActorId,
    pub folder: FolderDoc,
    pub files: RefCell<BTreeMap<DocId, FileDoc>>,
    pub disk: BTreeMap<String, Node>,
    pub index: BTreeMap<String, Row>,
    pub store: Store,
    pub up: bool,
    pub next_inode: u64,
    /// Per session peer: the heads of each document it is known to have.
    pub known: BTreeMap<usize, BTreeMap<DocId, Vec<ChangeHash>>>,
}

struct Facts<'a>(&'a RefCell<BTreeMap<DocId, FileDoc>>);

impl FileFacts for Facts<'_> {
    fn edited_since(&self, id: DocId, seen: &[ChangeHash]) -> bool {
        self.0.borrow_mut().get_mut(&id).is_some_and(|f| f.edited_since(seen))
    }
    fn content(&self, id: DocId) -> Option<[u8; 32]> {
        let text = self.0.borrow_mut().get_mut(&id)?.text()?;
        Some(fingerprint(&text))
    }
}

/// Equal text, equal fingerprint (FNV-1a, spread over 32 bytes with the length).
pub fn fingerprint(text: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for lane in 0..4u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ lane;
        for b in text.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        out[lane as usize * 8..lane as usize * 8 + 8].copy_from_slice(&h.to_le_bytes());
    }
    out[31] ^= text.len() as u8;
    out
}

fn later() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

pub fn parent_of(path: &str) -> Option<&str> {
    path.rfind('/').map(|i| &path[..i])
}

pub fn name_of(path: &str) -> &str {
    path.rfind('/').map_or(path, |i| &path[i + 1..])
}

impl Peer {
    pub fn new(member: [u8; 32], actor: ActorId, folder: Option<&[u8]>) -> Peer {
        let me = teatime_crdt::ids::to_hex(&member);
        let mut peer = Peer {
            me,
            actor: actor.clone(),
            folder: FolderDoc::from_doc(AutoCommit::new().with_actor(actor)),
            files: RefCell::new(BTreeMap::new()),
            disk: BTreeMap::new(),
            index: BTreeMap::new(),
            store: Store::default(),
            up: true,
            next_inode: 1,
            known: BTreeMap::new(),
        };
        if let Some(bytes) = folder {
            peer.folder.doc_mut().load_incremental(bytes).expect("owner's folder loads");
            peer.persist_docs();
        }
        peer
    }

    pub fn tree(&self) -> Tree {
        let entries = self.folder.entries();
        let members = self.folder.members();
        render(
            &FolderView { entries: &entries, strategy: self.folder.strategy(), members: &members },
            &Facts(&self.files),
        )
    }

    pub fn inode(&mut self) -> u64 {
        self.next_inode += 1;
        self.next_inode
    }

    /// Every document this peer holds (the folder only once it has arrived).
    pub fn doc_ids(&self) -> Vec<DocId> {
        let mut ids = Vec::new();
        if self.folder.is_ready() {
            ids.push(FOLDER);
        }
        ids.extend(self.files.borrow().keys().copied());
        ids
    }

    pub fn doc_mut(&mut self, id: DocId) -> &mut AutoCommit {
        if id == FOLDER {
            return self.folder.doc_mut();
        }
        let actor = self.actor.clone();
        self.files
            .get_mut()
            .entry(id)
            .or_insert_with(|| FileDoc::from_doc(AutoCommit::new().with_actor(actor)))
            .doc_mut()
    }

    pub fn heads(&mut self, id: DocId) -> Vec<ChangeHash> {
        self.doc_mut(id).get_heads()
    }

    /// The replica's scan and record: the disk compared with the index, by inode.
    /// `disk_base`: an edit's base is its own change (else the merged document's heads).
    pub fn scan(
        &mut self,
        now: u64,
        sees: DeleteSees,
        disk_base: bool,
        new_id: &mut dyn FnMut() -> DocId,
    ) -> Vec<String> {
        let mut log = Vec::new();
        if !self.folder.is_ready() {
            return log; // a joiner records nothing before the folder document arrives
        }
        let stamp = Stamp::new(now, &self.me);
        let tree = self.tree();
        let by_inode: BTreeMap<u64, (String, Row)> =
            self.index.iter().map(|(p, r)| (r.inode, (p.clone(), r.clone()))).collect();
        let indexed: BTreeSet<DocId> = self.index.values().map(|r| r.id).collect();
        let mut id_of_inode: BTreeMap<u64, DocId> = self.index.values().map(|r| (r.inode, r.id)).collect();
        let on_disk: BTreeSet<u64> = self.disk.values().map(|n| n.inode).collect();
        let mut new_index = BTreeMap::new();
        let disk = self.disk.clone();
        for (path, node) in &disk {
            let parent_inode = parent_of(path).map(|p| disk[p].inode);
            let parent_id = parent_inode.map(|i| id_of_inode[&i]);
            let name = name_of(path);
            // The heads the disk's text corresponds to (`None`: the document's own).
            let mut base: Option<Vec<ChangeHash>> = None;
            let id = match by_inode.get(&node.inode) {
                Some((old_path, row)) if row.kind == node.kind => {
                    base = Some(row.base.clone());
                    let old_parent = parent_of(old_path).map(|p| self.index[p].inode);
                    if old_parent != parent_inode || name_of(old_path) != name {
                        log.push(format!("move {old_path:?} -> {path:?}"));
                        self.folder.move_entry(row.id, parent_id, name, &stamp).unwrap();
                    }
                    if node.kind == EntryKind::File && node.text != row.text {
                        let files = self.files.get_mut();
                        let f = files.get_mut(&row.id).expect("an indexed file has its document");
                        if f.text().as_deref() == Some(node.text.as_str()) {
                            base = None;
                        } else {
                            log.push(format!("edit {path:?}"));
                            let before = f.heads();
                            if f.ingest_from(&node.text, &row.base, later(), now as i64).unwrap() {
                                // The disk holds exactly the new change (made on `row.base`),
                                // not the merge with what arrived meanwhile.
                                let new: Vec<ChangeHash> = f
                                    .heads()
                                    .into_iter()
                                    .filter(|h| !disk_base || !before.contains(h))
                                    .collect();
                                base = Some(new);
                            }
                        }
                        if self.folder.entry(row.id).is_some_and(|e| !e.deletions.is_empty()) {
                            self.folder.undelete(row.id).unwrap();
                        }
                    }
                    row.id
                }
                _ => {
                    // An untracked file where the folder shows an entry nobody indexed, with
                    // the same content, is that entry (written, then a crash before the index).
                    let adopt = tree.by_path.get(path).filter(|(id, k)| {
                        *k == node.kind
                            && !indexed.contains(id)
                            && (node.kind == EntryKind::Dir
                                || self.files.borrow_mut().get_mut(id).and_then(|f| f.text()).as_deref()
                                    == Some(node.text.as_str()))
                    });
                    if let Some((id, _)) = adopt {
                        log.push(format!("adopt {path:?}"));
                        *id
                    } else {
                        let id = new_id();
                        log.push(format!("create {path:?} {:?} as {}", node.kind, id.short()));
                        if node.kind == EntryKind::File {
                            let f = FileDoc::create(self.actor.clone(), &node.text, now as i64).unwrap();
                            self.files.get_mut().insert(id, f);
                        }
                        self.folder.create_entry(id, parent_id, name, node.kind, &stamp).unwrap();
                        id
                    }
                }
            };
            id_of_inode.insert(node.inode, id);
            let base = match (node.kind, base) {
                (EntryKind::Dir, _) => Vec::new(),
                (EntryKind::File, Some(b)) => b,
                (EntryKind::File, None) => self.heads(id),
            };
            new_index.insert(
                path.clone(),
                Row { id, kind: node.kind, inode: node.inode, text: node.text.clone(), base },
            );
        }
        // Gone from disk (or replaced by another kind): deleted, children first.
        for (path, row) in self.index.clone().iter().rev() {
            let replaced = disk.get(path).is_some_and(|n| n.inode == row.inode && n.kind != row.kind);
            if on_disk.contains(&row.inode) && !replaced {
                continue;
            }
            let seen = match (row.kind, sees) {
                (EntryKind::Dir, _) => Vec::new(),
                (EntryKind::File, DeleteSees::IndexBase) => row.base.clone(),
                (EntryKind::File, DeleteSees::DocHeads) => self.heads(row.id),
            };
            log.push(format!("delete {path:?}"));
            self.folder.delete_entry(row.id, &stamp, seen).unwrap();
        }
        self.folder.commit_at(now as i64);
        self.index = new_index;
        log
    }

    /// The same file created twice (same path, same content) is one: the duplicate is
    /// recorded deleted (`Replica::record_duplicates`).
    pub fn record_duplicates(&mut self, now: u64) {
        if !self.folder.is_ready() {
            return;
        }
        let dups = self.tree().duplicates;
        for dup in dups {
            let seen = self.heads(dup);
            self.folder.delete_entry(dup, &Stamp::new(now, &self.me), seen).unwrap();
        }
        self.folder.commit_at(now as i64);
    }

    pub fn persist_docs(&mut self) {
        for id in self.doc_ids() {
            let doc = self.doc_mut(id);
            let heads = doc.get_heads();
            let prev = self.store.docs.get(&id).map(|(h, _)| h.clone()).unwrap_or_default();
            if prev == heads {
                continue;
            }
            let chunk = self.doc_mut(id).save_after(&prev);
            let entry = self.store.docs.entry(id).or_default();
            entry.0 = heads;
            entry.1.push(chunk);
        }
    }

    /// The tree written to disk; the index follows. Unscanned local changes were recorded
    /// by the scan that precedes this in every flush, so nothing of the user's is lost.
    pub fn materialize(&mut self) {
        if !self.folder.is_ready() {
            return;
        }
        let tree = self.tree();
        let inode_of: BTreeMap<DocId, u64> = self.index.values().map(|r| (r.id, r.inode)).collect();
        let mut disk = BTreeMap::new();
        let mut index = BTreeMap::new();
        for (path, (id, kind)) in &tree.by_path {
            if parent_of(path).is_some_and(|p| !disk.contains_key(p)) {
                continue;
            }
            let (text, base) = match kind {
                EntryKind::Dir => (String::new(), Vec::new()),
                EntryKind::File => {
                    let files = self.files.get_mut();
                    let Some(f) = files.get_mut(id) else { continue };
                    let Some(text) = f.text() else { continue };
                    (text, f.heads())
                }
            };
            let inode = match inode_of.get(id) {
                Some(i) => *i,
                None => self.inode(),
            };
            disk.insert(path.clone(), Node { inode, kind: *kind, text: text.clone() });
            index.insert(path.clone(), Row { id: *id, kind: *kind, inode, text, base });
        }
        self.disk = disk;
        self.index = index;
    }

    pub fn persist_index(&mut self) {
        self.store.index = self.index.clone();
    }

    /// A crash: memory is gone; the disk and the store stay.
    pub fn crash(&mut self) {
        self.up = false;
        self.known.clear();
        self.folder = FolderDoc::from_doc(AutoCommit::new());
        self.files.get_mut().clear();
        self.index.clear();
    }

    /// A restart from the store, writing as `actor`.
    pub fn restart(&mut self, actor: ActorId) {
        self.actor = actor.clone();
        let load = |chunks: &[Vec<u8>]| {
            let mut doc = AutoCommit::new().with_actor(actor.clone());
            for c in chunks {
                doc.load_incremental(c).expect("persisted chunks load");
            }
            doc
        };
        self.folder = FolderDoc::from_doc(match self.store.docs.get(&FOLDER) {
            Some((_, chunks)) => load(chunks),
            None => AutoCommit::new().with_actor(actor.clone()),
        });
        let files = self
            .store
            .docs
            .iter()
            .filter(|(id, _)| **id != FOLDER)
            .map(|(id, (_, chunks))| (*id, FileDoc::from_doc(load(chunks))))
            .collect();
        *self.files.get_mut() = files;
        self.index = self.store.index.clone();
        self.up = true;
    }

    /// Every document's heads, for a new session.
    pub fn summary(&mut self) -> Vec<(DocId, Vec<ChangeHash>)> {
        self.doc_ids().into_iter().map(|id| (id, self.heads(id))).collect()
    }

    /// A peer's summary: what it has of each of our documents; send what it lacks.
    pub fn on_summary(&mut self, from: usize, theirs: &[(DocId, Vec<ChangeHash>)]) -> Vec<Changes> {
        let theirs: BTreeMap<DocId, Vec<ChangeHash>> = theirs.iter().cloned().collect();
        let known = self.known.entry(from).or_default();
        known.clear();
        known.extend(theirs);
        self.doc_ids().into_iter().filter_map(|doc| self.push(from, doc)).collect()
    }

    /// What `to` lacks of `doc`, past the heads it is known to have (`Replica::push`).
    pub fn push(&mut self, to: usize, doc: DocId) -> Option<Changes> {
        let known = self.known.get(&to)?.get(&doc).cloned();
        let d = self.doc_mut(doc);
        let heads = d.get_heads();
        if known.as_ref() == Some(&heads) {
            return None;
        }
        let base: Vec<ChangeHash> = match known {
            Some(k) => k.into_iter().filter(|h| d.get_change_by_hash(h).is_some()).collect(),
            None => Vec::new(),
        };
        let changes: Vec<Vec<u8>> = d.get_changes(&base).iter().map(|c| c.raw_bytes().to_vec()).collect();
        self.known.get_mut(&to).expect("checked").insert(doc, heads);
        (!changes.is_empty()).then_some(Changes { doc, changes })
    }

    /// A peer's changes (`Replica::receive_changes`): applied, and the peer is taken to
    /// have what we now have.
    pub fn receive(&mut self, from: usize, msg: &Changes) -> Result<(), String> {
        let mut changes = Vec::new();
        for bytes in &msg.changes {
            changes.push(Change::from_bytes(bytes.clone()).map_err(|e| format!("undecodable change: {e}"))?);
        }
        let d = self.doc_mut(msg.doc);
        d.apply_changes(changes).map_err(|e| format!("apply_changes on {}: {e}", msg.doc.short()))?;
        let after = d.get_heads();
        if let Some(k) = self.known.get_mut(&from) {
            k.insert(msg.doc, after);
        }
        Ok(())
    }

    /// Whether the document holds changes queued for missing dependencies.
    pub fn has_queued(&mut self, id: DocId) -> bool {
        !self.doc_mut(id).get_missing_deps(&[]).is_empty()
    }

    /// The actors of every change in `doc`.
    pub fn actors(&mut self, id: DocId) -> BTreeSet<ActorId> {
        self.doc_mut(id).get_changes(&[]).iter().map(|c| c.actor_id().clone()).collect()
    }

    /// Number of changes in every document (for statistics).
    pub fn change_count(&mut self) -> usize {
        self.doc_ids().into_iter().map(|id| self.doc_mut(id).get_changes(&[]).len()).sum()
    }
}
