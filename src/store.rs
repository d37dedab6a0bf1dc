//! A folder's persistent state: one redb file at `DIR/.teatime/state.redb`.
//!
//! Tables (all keys and values are bytes or strings; layouts documented per table):
//!
//! | table          | key                           | value                                    |
//! |----------------|-------------------------------|------------------------------------------|
//! | `meta_v1`      | name (`folder_id`, `secret`, `actor`) | raw bytes                        |
//! | `docs_v1`      | doc id (16 bytes)             | Automerge `save()` snapshot              |
//! | `changes_v1`   | doc id (16) ‖ seq (u64 BE)    | Automerge changes saved after the snapshot |
//! | `index_v1`     | relative path (`/`-joined)    | postcard [`IndexEntry`]: what teatime last saw or wrote there |
//! | `peers_v1`     | endpoint id (string)          | postcard `EndpointAddr`: where it was last reachable |
//! | `signatures_v1`| change hash (32 bytes)        | its author's ed25519 signature (64 bytes), to relay with it |
//! | `writes_v1`    | relative path                 | postcard [`WriteIntent`]: a file write under way (see below) |
//! | `heads_v1`     | doc id (16 bytes)             | the document's heads as committed (32 bytes each) |
//!
//! A document is its snapshot plus its changes in `seq` order; after
//! [`MAX_CHANGE_CHUNKS`] chunks it is compacted back into one snapshot. Documents are read
//! one by one when used ([`Store::load_doc`]); what a replica needs of all of them at
//! startup is their heads, kept in `heads_v1` by the same commit that saves the document
//! (a store written before that table existed gets it once, at its first load).
//! redb refuses to open a file twice, so the database doubles as the folder's
//! single-instance lock. Every commit is `Durability::Immediate`: a change is on disk
//! before it is sent to any peer.
//!
//! Index rows are committed in the same transaction as the documents they were recorded
//! with (a crash never leaves a recorded creation unknown to the index). A file write by
//! materialisation commits a [`WriteIntent`] before its rename: on the next open the disk
//! says which version it holds ([`crate::apply::resolve_intents`]), so the index row is
//! durable with the write. Any later commit of that path's index row removes the intent.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, Result};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use teatime_crdt::creation::Creation;
use teatime_crdt::{DocId, EntryKind, FileDoc};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta_v1");
const DOCS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("docs_v1");
const CHANGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("changes_v1");
const INDEX: TableDefinition<&str, &[u8]> = TableDefinition::new("index_v1");
const PEERS: TableDefinition<&str, &[u8]> = TableDefinition::new("peers_v1");
const SIGNATURES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("signatures_v1");
const WRITES: TableDefinition<&str, &[u8]> = TableDefinition::new("writes_v1");
const HEADS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("heads_v1");

/// Meta key set once `heads_v1` holds every document's heads.
const META_HEADS_COMPLETE: &str = "heads_complete";

/// After this many incremental chunks a document is rewritten as one snapshot, so that
/// loading never replays a long tail of small changes.
pub const MAX_CHANGE_CHUNKS: u64 = 256;

/// File metadata used to tell "unchanged" without reading the file. Any difference means
/// "maybe changed, read it"; nothing is inferred from one value being newer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Stat {
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i128,
    /// Status change time, ns since the epoch (catches same-size edits within one mtime tick).
    pub ctime_ns: i128,
    /// Permission bits.
    pub mode: u32,
}

impl Stat {
    /// Whether any executable bit is set.
    pub fn is_exec(&self) -> bool {
        self.mode & 0o111 != 0
    }
}

/// What teatime last saw (or wrote) at a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The folder entry living at that path.
    pub id: DocId,
    /// File or directory.
    pub kind: EntryKind,
    /// Metadata when last seen.
    pub stat: Stat,
    /// BLAKE3 of the content when last seen (files only).
    pub hash: [u8; 32],
    /// Heads of the file's document whose text is that content (files only): the base
    /// a local edit is made against, so it merges with changes that arrived meanwhile.
    pub heads: Vec<[u8; 32]>,
    /// The modification time was within [`RACY_WINDOW`] of the moment it was recorded: a
    /// same-size write in the same timestamp tick would look unchanged, so the content is
    /// compared even when the metadata matches (git's "racily clean" entries).
    pub racy: bool,
    /// The file is binary (content is a blob, `heads` is empty). Sticky: a binary file
    /// stays binary even if it later holds text, so its kind never flips back and forth.
    pub binary: bool,
}

/// A file write under way, committed before the new content is renamed into place: the
/// row the path had, and the row it gets if the rename happens. `new.stat` is the temp
/// file's, so its inode is the one the target has once the rename is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteIntent {
    /// The index row before the write (`None`: a new file).
    pub old: Option<IndexEntry>,
    /// The index row after it.
    pub new: IndexEntry,
    /// Where the new content waits until the rename (relative to the folder root).
    pub temp: String,
}

/// File system timestamps are coarse (a kernel tick, a few ms): a write this close to
/// the moment of recording may not change the recorded mtime.
pub const RACY_WINDOW_NS: i128 = 50_000_000;

impl IndexEntry {
    /// A file seen (or written) with this metadata, content hash and document heads.
    pub fn file(id: DocId, stat: Stat, hash: [u8; 32], heads: Vec<[u8; 32]>) -> Self {
        IndexEntry { id, kind: EntryKind::File, stat, hash, heads, racy: stat.is_recent(), binary: false }
    }

    /// A binary file seen (or written) with this metadata and content hash.
    pub fn binary(id: DocId, stat: Stat, hash: [u8; 32]) -> Self {
        IndexEntry { binary: true, ..IndexEntry::file(id, stat, hash, vec![]) }
    }

    /// A directory.
    pub fn dir(id: DocId, stat: Stat) -> Self {
        IndexEntry {
            id,
            kind: EntryKind::Dir,
            stat,
            hash: [0; 32],
            heads: vec![],
            racy: false,
            binary: false,
        }
    }
}

impl Stat {
    /// Whether the modification time is within [`RACY_WINDOW_NS`] of now (or in the future).
    pub fn is_recent(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        now - self.mtime_ns < RACY_WINDOW_NS
    }
}

/// The local index: path -> what is there, as teatime last recorded it.
pub type Index = BTreeMap<String, IndexEntry>;

/// One folder's database.
pub struct Store {
    db: Database,
    /// Where it lives (to open it again after an I/O error).
    path: std::path::PathBuf,
    /// Set when reopening failed: the handle is a stand-in and every write is refused.
    unavailable: bool,
    /// Next change sequence number, and chunks since the last snapshot, per document
    /// (learnt when a document is read or first saved).
    chunks: RefCell<HashMap<DocId, (u64, u64)>>,
    /// `flock` on the lock file beside the database, held as long as the store: redb's own
    /// lock goes with its handle, which [`Store::reopen`] closes for a moment.
    _lock: std::fs::File,
}

/// A document as stored: a snapshot and the changes saved after it, in order (together,
/// a valid input to Automerge's `load`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDoc {
    pub snapshot: Vec<u8>,
    pub changes: Vec<Vec<u8>>,
}

impl StoredDoc {
    /// The document, loaded (with its changes) and written by `actor` from now on.
    pub fn load(&self, actor: automerge::ActorId) -> Result<automerge::AutoCommit> {
        let mut doc = automerge::AutoCommit::load(&self.snapshot)?.with_actor(actor);
        if !self.changes.is_empty() {
            // All in one call: Automerge applies a batch of changes with one walk of each
            // object they touch, so chunk by chunk a document with many appended chunks
            // (up to `MAX_CHANGE_CHUNKS`) was walked whole once per chunk.
            doc.load_incremental(&self.changes.concat())?;
        }
        Ok(doc)
    }

    /// A text file's document, written by `actor` from now on. One that holds only its
    /// first change is not built into Automerge (see [`Creation`]); one with later changes
    /// is built from it, which is faster than Automerge reading the change.
    pub fn load_file(&self, actor: automerge::ActorId) -> Result<FileDoc> {
        let Some(creation) = Creation::parse(&self.snapshot) else {
            return Ok(FileDoc::from_doc(self.load(actor)?));
        };
        if self.changes.is_empty() {
            return Ok(FileDoc::from_creation(creation, actor));
        }
        let mut doc = creation.to_doc(actor)?;
        doc.load_incremental(&self.changes.concat())?;
        Ok(FileDoc::from_doc(doc))
    }
}

/// Everything read at startup: no text document, only their heads.
pub struct Loaded {
    /// The folder document, once stored.
    pub folder: Option<StoredDoc>,
    /// Every stored document's heads as committed (the folder document's too).
    pub heads: HashMap<DocId, Vec<[u8; 32]>>,
    /// The local index.
    pub index: Index,
    /// File writes that were under way when the process stopped, by path.
    pub intents: Vec<(String, WriteIntent)>,
}

/// A batch of writes committed together.
#[derive(Default)]
pub struct Batch {
    /// Documents saved whole (replaces snapshot, drops changes).
    pub snapshots: Vec<(DocId, Vec<u8>)>,
    /// Incremental changes appended to a document.
    pub changes: Vec<(DocId, Vec<u8>)>,
    /// Index rows written (Some) or removed (None).
    pub index: Vec<(String, Option<IndexEntry>)>,
    /// Other members' signatures of changes received (change hash, signature).
    pub signatures: Vec<([u8; 32], [u8; 64])>,
    /// The heads of every document saved in this batch, after it.
    pub heads: Vec<(DocId, Vec<[u8; 32]>)>,
}

impl Batch {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.snapshots.is_empty()
            && self.changes.is_empty()
            && self.index.is_empty()
            && self.signatures.is_empty()
            && self.heads.is_empty()
    }
}

fn heads_bytes<'a>(heads: impl Iterator<Item = &'a [u8; 32]>) -> Vec<u8> {
    heads.flat_map(|h| h.iter().copied()).collect()
}

fn change_key(id: DocId, seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&id.0);
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn doc_id(bytes: &[u8]) -> Result<DocId> {
    let arr: [u8; 16] = bytes.get(..16).context("short document key")?.try_into()?;
    Ok(DocId(arr))
}

/// Takes the lock file beside the database at `path` (`state.lock` for `state.redb`):
/// one process per folder, for as long as its store lives.
fn lock(path: &Path) -> Result<std::fs::File> {
    let lock_path = path.with_extension("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(InUse(path.to_path_buf()).into()),
        Err(e) => Err(e).with_context(|| format!("locking {}", lock_path.display())),
    }
}

/// Opens (or creates) the database file and its tables.
fn open_db(path: &Path) -> Result<Database> {
    let db = match Database::create(path) {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(InUse(path.to_path_buf()).into()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let tx = db.begin_write()?;
    for t in [META, INDEX, PEERS, WRITES] {
        tx.open_table(t)?;
    }
    for t in [DOCS, CHANGES, SIGNATURES, HEADS] {
        tx.open_table(t)?;
    }
    tx.commit()?;
    Ok(db)
}

/// The store is open in another process (the one running the folder).
#[derive(Debug, thiserror::Error)]
#[error("{} is in use by another teatime process (one process per folder)", .0.display())]
pub struct InUse(pub std::path::PathBuf);

impl Store {
    /// Opens the database, waiting up to `patience` while another process holds it (a
    /// command run against a stopped folder holds it for a moment; a running folder
    /// holds it for good, and the error says so).
    pub fn open_patiently(path: &Path, patience: std::time::Duration) -> Result<Store> {
        let give_up = std::time::Instant::now() + patience;
        loop {
            match Store::open(path) {
                Err(e) if e.downcast_ref::<InUse>().is_some() && std::time::Instant::now() < give_up => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    /// Opens (or creates) the database. Fails with a clear message if another teatime
    /// process has it open.
    pub fn open(path: &Path) -> Result<Store> {
        let lock = lock(path)?;
        let db = open_db(path)?;
        Ok(Store {
            db,
            path: path.to_path_buf(),
            unavailable: false,
            chunks: RefCell::default(),
            _lock: lock,
        })
    }

    /// Closes the database and opens it again. After an I/O error (a full disk) redb
    /// refuses every operation until it is reopened; reopening finds the last committed
    /// transaction. Per-document chunk counts are forgotten, so each document's next save
    /// is a whole snapshot (which also drops changes a failed commit may have left).
    pub fn reopen(&mut self) -> Result<()> {
        // redb locks the file per handle, so the old one must close first; an empty
        // in-memory database stands in meanwhile, and writes are refused until the file
        // is open again (nothing may look saved that is not).
        self.unavailable = true;
        let stand_in = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?;
        drop(std::mem::replace(&mut self.db, stand_in));
        self.chunks.get_mut().clear();
        self.db = open_db(&self.path)?;
        self.unavailable = false;
        Ok(())
    }

    /// Closes the database and opens it again, keeping what it knows of each document, to
    /// let go of redb's page cache: redb keeps every page it reads or writes, up to a
    /// gigabyte, and has no other way to shrink it. After a 100,000-file share that cache
    /// held most of the state file (about 250 MB) in an idle peer's memory; a smaller cap
    /// made the join itself read every document back from disk (a 100k join took minutes
    /// longer). For a replica that rests.
    pub fn drop_cache(&mut self) -> Result<()> {
        let chunks = std::mem::take(self.chunks.get_mut());
        self.reopen()?;
        *self.chunks.get_mut() = chunks;
        Ok(())
    }

    fn writable(&self) -> Result<()> {
        if self.unavailable {
            anyhow::bail!("{} could not be opened again after an I/O error", self.path.display());
        }
        Ok(())
    }

    /// redb's own integrity check (page checksums); may repair an uncleanly closed file.
    pub fn check_integrity(&mut self) -> Result<bool> {
        Ok(self.db.check_integrity()?)
    }

    /// Reads a meta value.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(META)?;
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    /// Writes meta values in one commit.
    pub fn set_meta(&self, values: &[(&str, &[u8])]) -> Result<()> {
        self.writable()?;
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(META)?;
            for (k, v) in values {
                t.insert(*k, *v)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Reads what a replica needs at startup: the folder document (`folder` is its id),
    /// every document's heads, the index and the write intents. Text documents stay on
    /// disk until used.
    pub fn load(&mut self, folder: DocId) -> Result<Loaded> {
        if self.meta(META_HEADS_COMPLETE)?.is_none() {
            self.record_all_heads()?;
        }
        let tx = self.db.begin_read()?;
        let mut heads = HashMap::new();
        for row in tx.open_table(HEADS)?.iter()? {
            let (k, v) = row?;
            let hs = v.value().chunks_exact(32).map(|h| h.try_into().expect("32 bytes")).collect();
            heads.insert(doc_id(k.value())?, hs);
        }
        let mut index = Index::new();
        for row in tx.open_table(INDEX)?.iter()? {
            let (k, v) = row?;
            let entry: IndexEntry = postcard::from_bytes(v.value()).context("index row")?;
            index.insert(k.value().to_string(), entry);
        }
        let mut intents = Vec::new();
        for row in tx.open_table(WRITES)?.iter()? {
            let (k, v) = row?;
            let intent: WriteIntent = postcard::from_bytes(v.value()).context("write intent")?;
            intents.push((k.value().to_string(), intent));
        }
        drop(tx);
        let folder = self.load_doc(folder)?;
        Ok(Loaded { folder, heads, index, intents })
    }

    /// Fills `heads_v1` from the documents themselves: once, for a store written before
    /// the table existed (an empty store just gets the flag).
    fn record_all_heads(&mut self) -> Result<()> {
        self.writable()?;
        let docs = self.all_docs()?;
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(HEADS)?;
            for (id, stored) in docs {
                let heads = stored
                    .load(automerge::ActorId::random())
                    .with_context(|| format!("loading document {id}"))?
                    .get_heads();
                table.insert(id.0.as_slice(), heads_bytes(heads.iter().map(|h| &h.0)).as_slice())?;
            }
            tx.open_table(META)?.insert(META_HEADS_COMPLETE, [1u8].as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// One document as stored, if it is.
    pub fn load_doc(&self, id: DocId) -> Result<Option<StoredDoc>> {
        let tx = self.db.begin_read()?;
        let Some(snapshot) = tx.open_table(DOCS)?.get(id.0.as_slice())?.map(|v| v.value().to_vec()) else {
            return Ok(None);
        };
        let changes_t = tx.open_table(CHANGES)?;
        let mut changes = Vec::new();
        let mut next = 0;
        let (lo, hi) = (change_key(id, 0), change_key(id, u64::MAX));
        for c in changes_t.range(lo.as_slice()..=hi.as_slice())? {
            let (ck, cv) = c?;
            next = u64::from_be_bytes(ck.value()[16..24].try_into()?) + 1;
            changes.push(cv.value().to_vec());
        }
        self.chunks.borrow_mut().insert(id, (next, changes.len() as u64));
        Ok(Some(StoredDoc { snapshot, changes }))
    }

    /// Every stored document (for `teatime check`, and the one-time heads migration).
    pub fn all_docs(&self) -> Result<Vec<(DocId, StoredDoc)>> {
        let ids: Vec<DocId> = {
            let tx = self.db.begin_read()?;
            let docs = tx.open_table(DOCS)?;
            docs.iter()?.map(|row| doc_id(row?.0.value())).collect::<Result<_>>()?
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(doc) = self.load_doc(id)? {
                out.push((id, doc));
            }
        }
        Ok(out)
    }

    /// Whether `id` has grown enough incremental chunks to be rewritten as a snapshot
    /// (also when nothing is known of it: a document never read since the start is saved
    /// whole once, rather than counting its chunks here).
    pub fn wants_snapshot(&self, id: DocId) -> bool {
        self.chunks.borrow().get(&id).is_none_or(|(_, n)| *n >= MAX_CHANGE_CHUNKS)
    }

    /// Commits a batch durably.
    pub fn commit(&mut self, batch: Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.writable()?;
        let tx = self.db.begin_write()?;
        {
            let mut docs = tx.open_table(DOCS)?;
            let mut changes = tx.open_table(CHANGES)?;
            for (id, bytes) in &batch.snapshots {
                docs.insert(id.0.as_slice(), bytes.as_slice())?;
                let lo = change_key(*id, 0);
                let hi = change_key(*id, u64::MAX);
                changes.retain_in(lo.as_slice()..=hi.as_slice(), |_, _| false)?;
                self.chunks.get_mut().insert(*id, (0, 0));
            }
            for (id, bytes) in &batch.changes {
                // Appending needs the next sequence number: known once the document was
                // read or saved whole (`wants_snapshot` asks for a snapshot otherwise).
                let (next, count) = self
                    .chunks
                    .get_mut()
                    .get_mut(id)
                    .with_context(|| format!("appending to document {id} never read"))?;
                changes.insert(change_key(*id, *next).as_slice(), bytes.as_slice())?;
                *next += 1;
                *count += 1;
            }
            let mut heads = tx.open_table(HEADS)?;
            for (id, hs) in &batch.heads {
                heads.insert(id.0.as_slice(), heads_bytes(hs.iter()).as_slice())?;
            }
            let mut signatures = tx.open_table(SIGNATURES)?;
            for (hash, sig) in &batch.signatures {
                signatures.insert(hash.as_slice(), sig.as_slice())?;
            }
            let mut index = tx.open_table(INDEX)?;
            let mut writes = tx.open_table(WRITES)?;
            for (path, entry) in &batch.index {
                // The row is what the disk holds now: a write under way there is settled.
                writes.remove(path.as_str())?;
                match entry {
                    Some(e) => {
                        index.insert(path.as_str(), postcard::to_stdvec(e)?.as_slice())?;
                    }
                    None => {
                        index.remove(path.as_str())?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Commits, durably and in one transaction, that these paths are about to be replaced
    /// (see [`WriteIntent`]).
    pub fn begin_writes(&self, intents: &[(String, WriteIntent)]) -> Result<()> {
        self.writable()?;
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(WRITES)?;
            for (path, intent) in intents {
                table.insert(path.as_str(), postcard::to_stdvec(intent)?.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The stored signatures of these changes (`None` where there is none).
    pub fn signatures(&self, hashes: &[[u8; 32]]) -> Result<Vec<Option<[u8; 64]>>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(SIGNATURES)?;
        hashes.iter().map(|h| Ok(table.get(h.as_slice())?.and_then(|v| v.value().try_into().ok()))).collect()
    }

    /// Remembers where a peer was reachable.
    pub fn save_peer(&self, id: &str, addr: &[u8]) -> Result<()> {
        self.writable()?;
        let tx = self.db.begin_write()?;
        tx.open_table(PEERS)?.insert(id, addr)?;
        tx.commit()?;
        Ok(())
    }

    /// Every peer address remembered.
    pub fn peers(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(PEERS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_folder_stays_locked_while_the_store_drops_its_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let in_use = |r: Result<Store>| r.err().is_some_and(|e| e.downcast_ref::<InUse>().is_some());
        let mut s = Store::open(&path).unwrap();
        s.set_meta(&[("k", b"v".as_slice())]).unwrap();
        assert!(in_use(Store::open(&path)), "a second open is refused");
        // Between closing redb's handle and opening it again, redb's own lock is gone: ours
        // is not.
        let stand_in = std::mem::replace(
            &mut s.db,
            Database::builder().create_with_backend(redb::backends::InMemoryBackend::new()).unwrap(),
        );
        drop(stand_in);
        assert!(in_use(Store::open(&path)), "refused while redb's handle is closed");
        s.drop_cache().unwrap();
        assert!(in_use(Store::open(&path)), "refused after the cache is dropped");
        assert_eq!(s.meta("k").unwrap().as_deref(), Some(b"v".as_slice()));
        drop(s);
        assert!(Store::open(&path).is_ok(), "free once the store is gone");
    }

    #[test]
    fn snapshot_changes_and_index_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let id = DocId([7; 16]);
        {
            let mut s = Store::open(&path).unwrap();
            assert!(Store::open(&path).is_err(), "second open must be refused");
            let entry = IndexEntry::file(id, Stat::default(), [1; 32], vec![]);
            s.commit(Batch {
                snapshots: vec![(id, b"snap".to_vec())],
                changes: vec![(id, b"c0".to_vec()), (id, b"c1".to_vec())],
                index: vec![("a.md".into(), Some(entry))],
                signatures: vec![([3; 32], [4; 64])],
                heads: vec![(id, vec![[5; 32], [6; 32]])],
            })
            .unwrap();
            s.set_meta(&[(META_HEADS_COMPLETE, &[1])]).unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.signatures(&[[3; 32], [5; 32]]).unwrap(), vec![Some([4; 64]), None]);
        let loaded = s.load(id).unwrap();
        let stored = StoredDoc { snapshot: b"snap".to_vec(), changes: vec![b"c0".to_vec(), b"c1".to_vec()] };
        assert_eq!(loaded.folder, Some(stored));
        assert_eq!(loaded.heads[&id], vec![[5; 32], [6; 32]]);
        assert_eq!(loaded.index["a.md"].hash, [1; 32]);
        s.commit(Batch { snapshots: vec![(id, b"snap2".to_vec())], ..Default::default() }).unwrap();
        assert_eq!(s.load_doc(id).unwrap(), Some(StoredDoc { snapshot: b"snap2".to_vec(), changes: vec![] }));
        assert_eq!(s.load_doc(DocId([8; 16])).unwrap(), None);
    }

    #[test]
    fn a_store_without_heads_gets_them_from_its_documents_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("state.redb")).unwrap();
        let mut doc = automerge::AutoCommit::new();
        automerge::transaction::Transactable::put(&mut doc, automerge::ROOT, "k", 1).unwrap();
        let id = DocId([4; 16]);
        s.commit(Batch { snapshots: vec![(id, doc.save())], ..Default::default() }).unwrap();
        let heads: Vec<[u8; 32]> = doc.get_heads().iter().map(|h| h.0).collect();
        assert_eq!(s.load(DocId([0; 16])).unwrap().heads[&id], heads);
        assert!(s.meta(META_HEADS_COMPLETE).unwrap().is_some());
    }

    #[test]
    fn reopen_keeps_what_was_committed_and_takes_writes_again() {
        let dir = tempfile::tempdir().unwrap();
        let id = DocId([9; 16]);
        let mut s = Store::open(&dir.path().join("state.redb")).unwrap();
        s.commit(Batch { snapshots: vec![(id, b"snap".to_vec())], ..Default::default() }).unwrap();
        s.reopen().unwrap();
        assert!(s.wants_snapshot(id), "chunk counts are forgotten: the next save is whole");
        assert!(
            s.commit(Batch { changes: vec![(id, b"c0".to_vec())], ..Default::default() }).is_err(),
            "appending without knowing the next sequence number is refused"
        );
        s.load_doc(id).unwrap();
        assert!(!s.wants_snapshot(id), "reading the document counted its chunks");
        s.commit(Batch { changes: vec![(id, b"c0".to_vec())], ..Default::default() }).unwrap();
        assert_eq!(
            s.load_doc(id).unwrap(),
            Some(StoredDoc { snapshot: b"snap".to_vec(), changes: vec![b"c0".to_vec()] })
        );
    }

    #[test]
    fn a_stored_first_change_loads_as_it_is_and_with_later_changes_as_a_document() {
        use std::time::{Duration, Instant};
        let actor = automerge::ActorId::from([1; 16]);
        let me = automerge::ActorId::from([2; 16]);
        let mut file = FileDoc::create(actor, &"line\n".repeat(200), 7).unwrap();
        let first = file.save();
        let created_heads = file.heads();
        // The first change alone: read as it is, not built into Automerge.
        let only = StoredDoc { snapshot: first.clone(), changes: vec![] };
        let mut loaded = only.load_file(me.clone()).unwrap();
        assert!(loaded.creation().is_some());
        assert_eq!((loaded.heads(), loaded.text()), (created_heads.clone(), Some("line\n".repeat(200))));
        // With an edit appended: a document holding both, written by us from now on.
        file.ingest("line\nedited\n", Instant::now() + Duration::from_secs(5), 8).unwrap();
        let edit = file.doc_mut().save_after(&created_heads);
        let both = StoredDoc { snapshot: first, changes: vec![edit] };
        let mut loaded = both.load_file(me.clone()).unwrap();
        assert!(loaded.creation().is_none());
        assert_eq!((loaded.heads(), loaded.text()), (file.heads(), Some("line\nedited\n".into())));
        assert_eq!(loaded.doc_mut().get_actor(), &me);
        // An ordinary save loads as before.
        let saved = StoredDoc { snapshot: file.save(), changes: vec![] };
        assert_eq!(saved.load_file(me).unwrap().text(), Some("line\nedited\n".into()));
    }

    #[test]
    fn a_write_intent_lasts_until_the_path_row_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("state.redb")).unwrap();
        let new =
            IndexEntry::file(DocId([1; 16]), Stat { ino: 9, ..Stat::default() }, [2; 32], vec![[3; 32]]);
        let intent = WriteIntent { old: None, new: new.clone(), temp: ".teatime-tmp.1".into() };
        s.begin_writes(&[("a.md".to_string(), intent.clone())]).unwrap();
        assert_eq!(s.load(DocId([0; 16])).unwrap().intents, vec![("a.md".to_string(), intent)]);
        s.commit(Batch { index: vec![("a.md".into(), Some(new))], ..Default::default() }).unwrap();
        assert!(s.load(DocId([0; 16])).unwrap().intents.is_empty());
    }
}
