//! One shared folder on this node: the task that owns its documents, index and store.
//!
//! Everything that changes the folder's state goes through [`Replica`], one event at a
//! time, on a thread of its own (its work is file IO, redb commits and Automerge, all
//! blocking). Inputs are [`Event`]s: hints from the watcher, sessions coming and going,
//! frames from peers. After each batch of events, [`Replica::flush`]:
//!
//! 1. persists every changed document, with the index rows recorded with it, in one
//!    transaction (before anything leaves the node or reaches disk: a crash can lose a
//!    write to the folder, never a change already sent);
//! 2. writes remote changes to the folder ([`crate::apply`]), each file's index row made
//!    durable with its write (a write intent committed before the rename); paths the user
//!    edited meanwhile are ingested first and merged, then written;
//! 3. persists the index;
//! 4. sends each changed document to every peer as the changes that peer lacks.
//!
//! Sync protocol: per peer and document we keep the heads the peer is known to have.
//! On connect both sides exchange a summary of all heads; afterwards each change is pushed
//! as `save_after(known heads)` (or a whole `save()` for a document the peer lacks), which
//! QUIC delivers in order. One message per change, no round trips.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use automerge::{ActorId, AutoCommit, ChangeHash};
use iroh::endpoint::Connection;
use iroh::{EndpointAddr, EndpointId};
use serde_json::json;
use teatime_crdt::path::STATE_DIR;
use teatime_crdt::{
    BlobRef, Conflict, DocId, Entry, EntryKind, FileDoc, FileFacts, FolderDoc, FolderView, Stamp, Strategy,
    Tree, render,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

mod admission;
mod authorship;
mod binary;
mod commands;
mod docs;
mod guards;
mod history;
mod locking;
mod reach;
mod rest;
mod roles;
mod settled;
mod status;

pub use admission::{Admission, JOIN_APPROVAL};
use authorship::{Apply, Refusal};
pub use authorship::{Signed, sign_change};
use docs::FileDocs;
pub use guards::{MASS_DELETE_MIN, MASS_DELETE_PERCENT, MIN_DISK_FREE, MinFree};
pub use rest::REST_AFTER;
use rest::{Resident, Rest};
use settled::Settled;

use crate::apply::{self, Body, Content, materialize};
use crate::blob::{self, Fetches, Hash, Hashed, Next};
use crate::config::Tuning;
use crate::control::{Request, Response};
use crate::filter::Filter;
use crate::fsroot::Root;
use crate::intake;
use crate::local::{self, Mode};
use crate::locks::{self, Locks};
use crate::net::wire::{Frame, Heads};
use crate::parallel::on_every_core;
use crate::policy::{self, Role};
use crate::scan::{self, LocalOp, Scope, move_in_index, name_of, ns_to_ms, parent_of};
use crate::store::{Batch, Index, IndexEntry, Stat as Stat_, Store};

/// Events queued for the replica before senders wait.
pub const INBOX_CAPACITY: usize = 1024;
/// Longest a steady stream of hints can postpone a scan.
pub const MAX_DEBOUNCE: Duration = Duration::from_millis(250);
/// Budget for diffing one file's new content against its document.
const INGEST_BUDGET: Duration = Duration::from_millis(500);
/// Outbox slots kept free for small frames (summaries, peer lists) when pushing a backlog.
const OUTBOX_RESERVE: usize = 64;
/// How often a backlog is retried while an outbox is full.
const BACKLOG_POLL: Duration = Duration::from_millis(2);
/// Delay before retrying a remote change that could not be written.
const RETRY_DELAY: Duration = Duration::from_millis(300);
/// Folder setting: whether executable bits are synced (`on`/`off`).
pub const SYNC_EXEC_BIT: &str = "sync-exec-bit";
/// Folder setting: files larger than this many bytes are binary.
pub const TEXT_LIMIT: &str = "text-limit";
/// Folder setting: seconds a lock outlives its holder's last renewal.
pub const LOCK_LEASE: &str = "lock-lease";
/// How often transfers of binary content are checked for stalls.
const FETCH_POLL: Duration = Duration::from_secs(5);
/// Two sessions with one peer, one dialed by each side, that start this close together
/// are a simultaneous dial (one is dropped by a rule both sides agree on); further apart,
/// the newer one replaces a session the peer has already given up.
const SIMULTANEOUS_DIAL: Duration = Duration::from_secs(3);
/// How many events are handled before a flush, so a flood of frames is batched.
const MAX_EVENTS_PER_FLUSH: usize = 256;
/// Quiet time after the last event before memory freed meanwhile is handed back to the
/// system (see [`crate::memory`]).
const QUIET_BEFORE_TRIM: Duration = Duration::from_secs(5);
/// Introduced peers kept while they are not known as members yet.
const MAX_INTRODUCED: usize = 256;
/// Changes frames kept while their authors' admission is on its way.
const MAX_PARKED_FRAMES: usize = 1024;
/// Rounds of "write remote change, find a local edit, ingest it" before giving up for now.
const MAX_MATERIALIZE_ROUNDS: usize = 4;
/// How long a peer that sent hostile or broken data is refused after its first offence;
/// each further offence doubles it, up to [`MAX_QUARANTINE`].
pub const QUARANTINE_COOLDOWN: Duration = Duration::from_secs(60);
/// The longest a peer is refused.
pub const MAX_QUARANTINE: Duration = Duration::from_secs(3600);

/// The last time a peer sent data no honest peer sends (for `status`, and its cooldown).
struct Fault {
    /// Its display name (it may not be a member).
    name: String,
    /// What it sent.
    reason: String,
    /// When.
    at: std::time::SystemTime,
    /// Sessions with it are refused until then.
    until: Instant,
    /// The same, by the wall clock (for `status`).
    until_wall: std::time::SystemTime,
    /// Offences so far (the cooldown doubles with each).
    strikes: u32,
}

/// An authenticated session with a peer, as the replica sees it.
pub struct Session {
    /// The peer.
    pub peer: EndpointId,
    /// Its display name.
    pub name: String,
    /// Where it can be reached.
    pub addr: EndpointAddr,
    /// This session.
    pub conn_id: u64,
    /// Whether this node dialed.
    pub dialed_by_me: bool,
    /// Frames to send it.
    pub outbox: mpsc::Sender<Frame>,
    /// The connection (closed when a duplicate session is dropped).
    pub conn: Connection,
}

/// Input to the replica.
pub enum Event {
    /// The watcher saw something in this scope.
    Hint(Scope),
    /// A command from the command line, and where to send the answer.
    Control(Request, oneshot::Sender<Response>),
    /// A session with a peer is authenticated and running.
    PeerUp(Session),
    /// A session ended.
    PeerDown {
        /// The peer.
        peer: EndpointId,
        /// The session.
        conn_id: u64,
    },
    /// A session asks who may join (see [`Admission`]).
    Admission(Admission),
    /// A peer's session ended because it sent bytes no honest peer sends (an oversized
    /// or undecodable frame): the peer is quarantined.
    Misbehaved {
        /// The peer.
        peer: EndpointId,
        /// The session.
        conn_id: u64,
        /// What it sent.
        reason: String,
    },
    /// A frame from a peer.
    Frame {
        /// The peer.
        peer: EndpointId,
        /// The session it came on.
        conn_id: u64,
        /// The frame.
        frame: Frame,
    },
}

impl Event {
    /// What kind of event this is, for logs.
    fn kind(&self) -> &'static str {
        match self {
            Event::Hint(_) => "a file event",
            Event::Control(..) => "a command",
            Event::PeerUp(_) => "a session",
            Event::PeerDown { .. } => "a session's end",
            Event::Admission(_) => "a join",
            Event::Misbehaved { .. } => "a hostile peer",
            Event::Frame { .. } => "a peer's frame",
        }
    }
}

struct Link {
    /// The peer's display name.
    name: String,
    /// When the session started.
    since: Instant,
    /// The same, by the wall clock (for `status`).
    since_wall: std::time::SystemTime,
    conn_id: u64,
    dialed_by_me: bool,
    outbox: mpsc::Sender<Frame>,
    conn: Connection,
    addr: EndpointAddr,
    /// Heads the peer is known to have, per document.
    known: HashMap<DocId, Vec<ChangeHash>>,
    /// Documents to push once the outbox has room (a whole folder at first contact
    /// does not fit in it at once).
    backlog: BTreeSet<DocId>,
}

/// Identity of the folder and of this replica, as stored in the folder's meta table.
pub struct Identity {
    /// The folder (and folder document) id.
    pub folder: DocId,
    /// This replica's Automerge actor: this node's id and a nonce fresh for this process
    /// (see [`teatime_crdt::ids::actor_for_member`] and `node::read_identity`).
    pub actor: ActorId,
}

/// One folder's state and the logic that keeps it in sync.
pub struct Replica {
    root: PathBuf,
    /// The folder's directory handle: every write to the folder goes through it.
    fs: Root,
    store: Store,
    id: Identity,
    me: EndpointId,
    my_name: String,
    /// The folder document (dropped while the replica rests, see `rest.rs`).
    folder: Resident<FolderDoc>,
    /// Text documents, read from the store when used (see `docs.rs`).
    files: FileDocs,
    /// Dropped while the replica rests, like `folder` and `saved`.
    index: Resident<Index>,
    /// Heads last persisted, per document, for every document in the store (read from
    /// its heads table at start): the heads of a document not in memory.
    saved: Resident<HashMap<DocId, Vec<ChangeHash>>>,
    /// When the replica was last busy, and whether it rests (see `rest.rs`).
    rest: Rest,
    peers: HashMap<EndpointId, Link>,
    dial: mpsc::Sender<EndpointAddr>,
    /// Binary content being received.
    fetches: Fetches,
    /// Group chaining values of binary content this node hashed or received, by hash
    /// (what a peer needs to verify what it is sent).
    outboards: HashMap<Hash, Arc<Hashed>>,
    /// What is synced on this peer (ignore rules, whitelist).
    filter: Filter,
    /// Paths changed locally and not published (receive-only mode, or a file another
    /// peer has locked), as the last scan saw.
    held: BTreeSet<String>,
    /// Advisory locks.
    locks: Locks,
    /// Whether executable bits were synced at the last flush.
    exec_was_synced: bool,
    /// Pacing (from the node's config file).
    tuning: Tuning,
    /// Long work under way, for whoever draws it.
    progress: crate::progress::Shared,
    /// The most documents a peer said it has (a joiner's target).
    docs_expected: u64,
    /// When to hand memory freed by recent work back to the system (see
    /// [`crate::memory`]): [`QUIET_BEFORE_TRIM`] after the last event.
    trim_at: Option<Instant>,
    /// What each connected peer excludes (it told us), for `status`.
    peer_filters: HashMap<EndpointId, Filter>,
    /// When the next safety-net full rescan is due.
    next_rescan: Option<Instant>,
    /// Which way changes flow (this peer's setting, kept in the store; read once here,
    /// not at every flush).
    mode: Mode,
    /// Paused (`teatime pause`): no sessions until resumed.
    paused: bool,
    /// Whether the event loop runs (a command on a stopped folder opens it without).
    running: bool,
    /// When each peer was last heard from.
    last_heard: HashMap<EndpointId, std::time::SystemTime>,
    /// Remote changes that could not be written, by path (for `status`).
    errors: BTreeMap<String, String>,
    // Work accumulated since the last flush.
    dirty: BTreeSet<DocId>,
    remote_changed: HashSet<DocId>,
    index_touched: BTreeSet<String>,
    pending: Option<(Scope, Instant, Instant)>,
    reported: HashSet<String>,
    tree: TreeCache,
    /// What the last materialisation settled, so the next looks only at what changed.
    settled: Settled,
    /// Bumped whenever the filter is read again (the materialisation's skip rules change).
    filter_generation: u64,
    /// Documents that arrived whole from a peer, with the heads they hold: persisted as
    /// they came if nothing changed them before the next flush.
    received_whole: HashMap<DocId, (Vec<ChangeHash>, Vec<u8>)>,
    /// Documents whose materialisation failed, and when to try again.
    retry: HashSet<DocId>,
    retry_at: Option<Instant>,
    /// This node's key: it signs our changes (see [`authorship`]).
    key: iroh::SecretKey,
    /// Signatures of changes received since the last flush (persisted with them).
    unsaved_signatures: HashMap<[u8; 32], iroh::Signature>,
    /// Peers other members told us about, not dialed yet: only members are remembered
    /// and dialed (a peer cannot point us at a stranger, who would learn the folder's id
    /// from our Hello), and a newcomer's admission may arrive after its introduction.
    introductions: HashMap<EndpointId, EndpointAddr>,
    /// Changes frames whose authors are not known members yet, with their sender.
    parked: Vec<(EndpointId, Frame)>,
    /// Who sessions admit, shared with them (see [`admission`]).
    membership: Arc<std::sync::RwLock<crate::net::session::Membership>>,
    /// Joins waiting for `teatime approve`.
    join_requests: HashMap<EndpointId, admission::JoinRequest>,
    /// The node's endpoint, for the addresses tickets carry (none when a command runs
    /// without a node).
    endpoint: Option<iroh::Endpoint>,
    /// Peers that sent hostile or broken data, and until when they are refused.
    faults: HashMap<EndpointId, Fault>,
    /// Changes waiting for a dependency, per peer and document.
    waiting: intake::Waiting<EndpointId, DocId>,
    /// The folder's presence, the mass-delete breaker, disk space (see [`guards`]).
    guards: guards::Guards,
    /// New files' documents built ahead by the scan on every core, for `record` to take.
    prebuilt: HashMap<DocId, FileDoc>,
    /// New text files of a big import not recorded yet, in the scan's order: recorded a
    /// chunk per flush, so peers are admitted and served while the import runs.
    import_rest: Vec<LocalOp>,
    /// New documents a batch of frames brings, decoded and their signatures checked ahead
    /// on every core (see [`Replica::preload`]), by document.
    preloaded: HashMap<DocId, authorship::Preloaded>,
    /// Our new documents' `save()` from `persist_docs`, reused by the push that follows in
    /// the same flush (a new document is sent whole: encoding it once is enough).
    fresh_saves: HashMap<DocId, (Vec<ChangeHash>, Vec<u8>)>,
}

/// The rendered tree, recomputed only when the folder document changed or a file
/// document it depends on did: parsing every entry out of Automerge is the expensive
/// part of a flush.
#[derive(Default)]
struct TreeCache {
    heads: Option<Vec<ChangeHash>>,
    /// The folder's heads when the tree was dropped for a rest (see [`TreeCache::forget`]).
    forgotten_at: Option<Vec<ChangeHash>>,
    tree: Tree,
    /// Bumped at each rendering (a new tree, maybe an identical one).
    generation: u64,
    /// The entries the tree was rendered from.
    entries: BTreeMap<DocId, Entry>,
    /// The folder's heads `entries` were read at: only what changed since is read again
    /// ([`FolderDoc::refresh_entries`]).
    entries_at: Option<Vec<ChangeHash>>,
}

impl TreeCache {
    fn get(&mut self, folder: &mut FolderDoc, files: &mut FileDocs, store: &Store) -> &Tree {
        let heads = folder.doc_mut().get_heads();
        if self.heads.as_ref() != Some(&heads) {
            if self.entries_at.as_ref() != Some(&heads) {
                folder.refresh_entries(&mut self.entries, self.entries_at.as_deref());
                self.entries_at = Some(heads.clone());
            }
            let members = folder.members();
            let view = FolderView { entries: &self.entries, strategy: folder.strategy(), members: &members };
            self.tree = render(&view, &Facts { files: RefCell::new(files), store, entries: &self.entries });
            // The same folder as before a rest renders the same tree: the same generation,
            // so the materialisation's settled state still holds.
            if self.forgotten_at.take().as_ref() != Some(&heads) {
                self.generation += 1;
            }
            self.heads = Some(heads);
        }
        &self.tree
    }

    /// Drops the tree and its entries for a rest. Nothing changes while the replica
    /// rests, so a folder with the same heads afterwards renders the same tree.
    fn forget(&mut self) {
        self.forgotten_at = self.heads.take();
        self.tree = Tree::default();
        self.entries = BTreeMap::new();
        self.entries_at = None;
    }

    /// The entries the current tree is rendered from.
    fn get_entries(
        &mut self,
        folder: &mut FolderDoc,
        files: &mut FileDocs,
        store: &Store,
    ) -> &BTreeMap<DocId, Entry> {
        self.get(folder, files, store);
        &self.entries
    }

    /// A file document changed: the tree is stale if it depended on it.
    fn file_changed(&mut self, id: DocId) {
        if self.tree.depends_on.contains(&id) {
            self.heads = None;
        }
        // The tree dropped for a rest is not there to say what it depended on.
        self.forgotten_at = None;
    }
}

/// What rendering needs to know about file contents: text documents, or for binary
/// files the version in effect.
struct Facts<'a> {
    files: RefCell<&'a mut FileDocs>,
    store: &'a Store,
    entries: &'a BTreeMap<DocId, Entry>,
}

impl FileFacts for Facts<'_> {
    fn edited_since(&self, id: DocId, seen: &[ChangeHash]) -> bool {
        if let Some(blob) = self.entries.get(&id).and_then(|e| e.blob()) {
            return !seen.contains(&blob.as_head());
        }
        self.files.borrow_mut().get(self.store, id).is_some_and(|f| f.edited_since(seen))
    }

    fn content(&self, id: DocId) -> Option<[u8; 32]> {
        if let Some(blob) = self.entries.get(&id).and_then(|e| e.blob()) {
            return Some(blob.hash);
        }
        let text = self.files.borrow_mut().get(self.store, id)?.text()?;
        Some(*blake3::hash(text.as_bytes()).as_bytes())
    }
}

/// A peer's change to the folder document with more operations than this (and than four
/// per entry we have) is read back by reading every entry, not from the patch log
/// ([`FolderDoc::stop_tracking`]).
const LARGE_FOLDER_PAYLOAD_OPS: u64 = 4096;

/// A scan records at most this much new text at once; the rest of an import follows a
/// chunk per flush, so a join is answered and the first files sent within a second.
const IMPORT_CHUNK_BYTES: usize = 512 * 1024;

/// A later chunk of a big import records this much new text per entry the folder already
/// has, between [`IMPORT_CHUNK_BYTES`] and [`MAX_IMPORT_CHUNK_BYTES`]: recording a chunk
/// renders the tree, O(entries), so fixed-size chunks made an import quadratic (at 8,000
/// files, half the sharer's CPU went to rendering).
const IMPORT_BYTES_PER_ENTRY: usize = 1024;

/// The largest chunk of a big import (about 3 s of work on two cores of the build
/// machine): events, such as a join, wait at most that long.
const MAX_IMPORT_CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// Below this much new text the documents are built in `record`, one by one: threads
/// would cost more than they save.
const PARALLEL_IMPORT_BYTES: usize = 256 * 1024;

/// The documents of new text files, built on every core: inserting the text into
/// Automerge is most of an import's work and each document is independent. What the
/// folder records stays in the scan's order (`record` takes these by id). A document
/// that fails here is left to `record`, which reports the error.
fn build_file_docs(actor: &ActorId, files: Vec<(DocId, &str)>, at_ms: i64) -> HashMap<DocId, FileDoc> {
    let bytes: usize = files.iter().map(|(_, text)| text.len()).sum();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(files.len());
    if bytes < PARALLEL_IMPORT_BYTES || threads < 2 {
        return HashMap::new();
    }
    on_every_core(&files, threads, |(id, text)| {
        FileDoc::create(actor.clone(), text, at_ms).ok().map(|d| (*id, d))
    })
    .into_iter()
    .collect()
}

/// Milliseconds since the epoch: the wall clock, used only to weigh races.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn hashes(heads: &[ChangeHash]) -> Heads {
    heads.iter().map(|h| h.0).collect()
}

impl Replica {
    /// Loads the folder's state from its store.
    pub fn open(
        root: PathBuf,
        mut store: Store,
        id: Identity,
        key: iroh::SecretKey,
        my_name: String,
        dial: mpsc::Sender<EndpointAddr>,
        tuning: Tuning,
    ) -> Result<Replica> {
        let me = key.public();
        // Text documents are read when used: only the folder document and every
        // document's heads are read now.
        let loaded = store.load(id.folder)?;
        let saved: HashMap<DocId, Vec<ChangeHash>> = loaded
            .heads
            .into_iter()
            .map(|(doc, heads)| (doc, heads.into_iter().map(ChangeHash).collect()))
            .collect();
        let folder = match loaded.folder {
            Some(stored) => FolderDoc::from_doc(
                stored.load(id.actor.clone()).with_context(|| format!("loading document {}", id.folder))?,
            ),
            None => FolderDoc::from_doc(AutoCommit::new().with_actor(id.actor.clone())),
        };
        let files = FileDocs::new(id.actor.clone(), id.folder);
        let filter = Filter::load(&root, local::tracked(&store)?);
        let fs = Root::open(&root)?;
        let fetches = Fetches::new(&fs);
        let locks = Locks::new(local::locks(&store)?);
        let exec_was_synced = folder.setting(SYNC_EXEC_BIT).as_deref() == Some("on");
        let paused = local::paused(&store)?;
        let mode = local::mode(&store)?;
        let guards = guards::Guards::new(&fs, &store, tuning.min_disk_free);
        // Writes a stopped process left under way: the disk says which version it holds.
        let mut index = loaded.index;
        let index_touched = apply::resolve_intents(&fs, &mut index, loaded.intents);
        let mut replica = Replica {
            guards,
            prebuilt: HashMap::new(),
            import_rest: Vec::new(),
            preloaded: HashMap::new(),
            trim_at: None,
            fresh_saves: HashMap::new(),
            mode,
            peer_filters: HashMap::new(),
            progress: Default::default(),
            docs_expected: 0,
            tuning,
            next_rescan: tuning.rescan.map(|r| Instant::now() + r),
            paused,
            running: false,
            last_heard: HashMap::new(),
            errors: BTreeMap::new(),
            exec_was_synced,
            locks,
            held: BTreeSet::new(),
            fetches,
            filter,
            root,
            fs,
            store,
            id,
            me,
            my_name,
            folder: Resident::new(folder),
            files,
            index: Resident::new(index),
            saved: Resident::new(saved),
            rest: Rest::new(tuning.rest),
            peers: HashMap::new(),
            dial,
            outboards: HashMap::new(),
            dirty: BTreeSet::new(),
            remote_changed: HashSet::new(),
            index_touched,
            pending: None,
            reported: HashSet::new(),
            tree: TreeCache::default(),
            settled: Settled::default(),
            filter_generation: 0,
            retry: HashSet::new(),
            retry_at: None,
            received_whole: HashMap::new(),
            faults: HashMap::new(),
            waiting: intake::Waiting::default(),
            key,
            unsaved_signatures: HashMap::new(),
            parked: Vec::new(),
            introductions: HashMap::new(),
            membership: Default::default(),
            join_requests: HashMap::new(),
            endpoint: None,
        };
        replica.refresh_membership();
        Ok(replica)
    }

    /// Text files whose document has changes the disk's version (the index's heads)
    /// lacks.
    fn text_files_behind_their_documents(&mut self) -> Vec<DocId> {
        let mut behind = Vec::new();
        for row in self.index.values().filter(|e| e.kind == EntryKind::File && !e.binary) {
            // The heads as persisted: at startup no document is in memory yet.
            if let Some(heads) = self.saved.get(&row.id) {
                let mut on_disk = row.heads.clone();
                on_disk.sort_unstable();
                let mut now = hashes(heads);
                now.sort_unstable();
                if on_disk != now {
                    behind.push(row.id);
                }
            }
        }
        behind
    }

    /// Connects the replica to its node: the endpoint (for tickets) and the membership
    /// snapshot its sessions check.
    pub fn attach(
        &mut self,
        endpoint: iroh::Endpoint,
        membership: Arc<std::sync::RwLock<crate::net::session::Membership>>,
    ) {
        self.endpoint = Some(endpoint);
        self.membership = membership;
        self.refresh_membership();
    }

    /// Creates the folder document for a folder shared from here (first share only).
    pub fn create_folder(&mut self) -> Result<()> {
        self.folder =
            Resident::new(FolderDoc::create(self.id.actor.clone(), &self.me.to_string(), &self.my_name)?);
        self.dirty.insert(self.id.folder);
        self.refresh_membership();
        Ok(())
    }

    /// Whether the folder document exists here yet (a joiner waits for it).
    pub fn is_ready(&self) -> bool {
        self.folder.is_ready()
    }

    /// Processes events until `cancel` or until every sender is gone.
    pub async fn run(mut self, mut inbox: mpsc::Receiver<Event>, cancel: CancellationToken) {
        self.running = true;
        apply::remove_stale_temp_files(&self.fs);
        for (id, addr) in self.known_peer_addrs() {
            debug!(peer = %id.fmt_short(), "reconnecting to known peer");
            let _ = self.dial.try_send(addr);
        }
        // Startup: what changed while teatime was stopped is recorded before any peer's
        // change is applied, so an offline rename stays a rename (not a delete and a create)
        // and races with what peers did meanwhile are seen as races.
        self.hint(Scope::All);
        self.scan_pending();
        if self.folder.is_ready() {
            // Whatever the disk lacks (binary content a killed process was still
            // receiving, a write that failed or never happened) is looked for now, not at
            // the next change.
            self.remote_changed.insert(self.id.folder);
            // A peer's change persisted but not yet written when the process died: the
            // document is ahead of the version the index says the disk holds.
            let behind = self.text_files_behind_their_documents();
            self.remote_changed.extend(behind);
        }
        self.flush();
        loop {
            // A joiner keeps hints until the folder document arrives (a frame wakes it).
            let scan_at =
                self.pending.as_ref().filter(|_| self.folder.is_ready()).map(|(_, quiet, _)| *quiet);
            let mut wake = scan_at.map(tokio::time::Instant::from_std);
            if let Some(at) = self.retry_at {
                let at = tokio::time::Instant::from_std(at);
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
            if let Some(at) = self.next_rescan {
                let at = tokio::time::Instant::from_std(at);
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
            if let Some(at) = self.locks.next_wake() {
                let at = tokio::time::Instant::from_std(at);
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
            if !self.fetches.is_empty() {
                let at = tokio::time::Instant::now() + FETCH_POLL;
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
            if let Some(at) = self.guards.next_wake() {
                let at = tokio::time::Instant::from_std(at);
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
            for at in [self.files.next_idle(), self.trim_at, self.rest.next_wake()].into_iter().flatten() {
                let at = tokio::time::Instant::from_std(at);
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
            if self.has_backlog() {
                let soon = tokio::time::Instant::now() + BACKLOG_POLL;
                wake = Some(wake.map_or(soon, |w| w.min(soon)));
            }
            if !self.import_rest.is_empty() {
                wake = Some(tokio::time::Instant::now());
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                ev = inbox.recv() => {
                    let Some(ev) = ev else { break };
                    let mut batch = vec![ev];
                    while batch.len() < MAX_EVENTS_PER_FLUSH {
                        match inbox.try_recv() {
                            Ok(ev) => batch.push(ev),
                            Err(_) => break,
                        }
                    }
                    if !self.wake(batch[0].kind()) {
                        break;
                    }
                    self.preload(&batch);
                    for ev in batch {
                        self.handle(ev);
                    }
                    self.preloaded.clear();
                    self.trim_at = Some(Instant::now() + QUIET_BEFORE_TRIM);
                }
                _ = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => {
                    // A resting replica wakes for anything but its presence check and trim.
                    if self.rest.is_resting() && !self.only_rest_timers_due() && !self.wake("a timer") {
                        break;
                    }
                    self.poll_guards();
                    if self.pending.as_ref().is_some_and(|(_, quiet, _)| *quiet <= Instant::now()) {
                        self.scan_pending();
                    }
                    if let Some(at) = self.next_rescan.filter(|at| *at <= Instant::now()) {
                        // The safety net behind the watcher: a missed event is found here.
                        self.hint(Scope::All);
                        self.next_rescan = self.tuning.rescan.map(|r| at.max(Instant::now()) + r);
                    }
                    if self.retry_at.is_some_and(|at| at <= Instant::now()) {
                        self.retry_at = None;
                        self.remote_changed.extend(self.retry.drain());
                    }
                }
            }
            if !self.rest.is_resting() {
                // After the events: a join waiting for admission is answered between chunks.
                self.import_more();
                self.flush();
                self.rest_if_quiet();
            }
            if self.trim_at.is_some_and(|at| at <= Instant::now()) {
                self.trim_at = None;
                crate::memory::return_free_memory();
            }
        }
        // Last look at the disk, so an edit made just before shutdown is not left for later.
        // (A resting replica has nothing in flight: see `rest.rs`.)
        if !self.rest.is_resting() {
            if self.pending.is_some() {
                self.scan_pending();
            }
            self.flush();
        }
        for link in self.peers.values() {
            link.conn.close(0u32.into(), b"shutting down");
        }
        info!("folder {} stopped", self.root.display());
    }

    fn known_peer_addrs(&self) -> Vec<(EndpointId, EndpointAddr)> {
        let mut out = Vec::new();
        for (id, bytes) in self.store.peers().unwrap_or_default() {
            if let (Ok(id), Ok(addr)) =
                (id.parse::<EndpointId>(), postcard::from_bytes::<EndpointAddr>(&bytes))
                && id != self.me
            {
                out.push((id, addr));
            }
        }
        out
    }

    fn hint(&mut self, scope: Scope) {
        if let Scope::Paths(paths) = &scope
            && paths.iter().any(|p| Filter::is_rule_file(p))
        {
            return self.reload_filter();
        }
        let now = Instant::now();
        self.pending = Some(match self.pending.take() {
            None => (scope, now + self.tuning.debounce, now + MAX_DEBOUNCE.max(self.tuning.debounce)),
            Some((old, _, deadline)) => {
                let merged = match (old, scope) {
                    (Scope::Paths(mut a), Scope::Paths(b)) => {
                        a.extend(b);
                        Scope::Paths(a)
                    }
                    _ => Scope::All,
                };
                (merged, (now + self.tuning.debounce).min(deadline), deadline)
            }
        });
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Hint(scope) => self.hint(scope),
            Event::PeerUp(session) => self.peer_up(session),
            Event::PeerDown { peer, conn_id } => {
                if self.peers.get(&peer).is_some_and(|l| l.conn_id == conn_id) {
                    self.last_heard.insert(peer, std::time::SystemTime::now());
                    self.peer_filters.remove(&peer);
                    self.peers.remove(&peer);
                    self.fetches.peer_gone(peer);
                }
            }
            Event::Misbehaved { peer, conn_id: _, reason } => {
                // Whether or not that session is still the current one (it may have ended
                // first): the peer sent it, on an authenticated session.
                self.quarantine(peer, reason);
            }
            Event::Frame { peer, conn_id, frame } => {
                if self.peers.get(&peer).is_some_and(|l| l.conn_id == conn_id) {
                    self.last_heard.insert(peer, std::time::SystemTime::now());
                    self.frame(peer, frame);
                }
            }
            Event::Control(req, reply) => {
                let _ = reply.send(self.control(req));
            }
            Event::Admission(request) => self.admission(request),
        }
    }

    /// Decodes the new documents a batch of frames brings on every core, ahead of
    /// [`Replica::receive_changes`], which takes them instead of decoding the bytes itself,
    /// and checks their changes' signatures: for a join, decoding (a `save()` loaded into
    /// Automerge, or a text file's first change inflated and hashed) and the ed25519 checks
    /// are most of the work per file, and each document is independent. Only frames that
    /// would start an empty document are taken (new files, from a current session), and
    /// each payload passes [`intake::inspect`] before it is decoded (behind
    /// `catch_unwind`), as on the one-by-one path; roles, the waiting bound and applying
    /// stay on that path. A payload that fails here is simply not preloaded:
    /// `receive_changes` decodes it again and acts on the failure.
    fn preload(&mut self, batch: &[Event]) {
        let mut todo: Vec<(DocId, &[u8], &[Signed])> = Vec::new();
        let mut seen: HashSet<DocId> = HashSet::new();
        for ev in batch {
            let Event::Frame { peer, conn_id, frame: Frame::Changes { doc, data, signatures, .. } } = ev
            else {
                continue;
            };
            if *doc == self.id.folder
                || self.peers.get(peer).is_none_or(|l| l.conn_id != *conn_id)
                || !seen.insert(*doc)
                || self.saved.get(doc).is_some_and(|h| !h.is_empty())
                || self.files.in_memory(*doc).is_some_and(|f| !f.heads().is_empty())
            {
                continue;
            }
            todo.push((*doc, data, signatures));
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(todo.len());
        if threads < 2 {
            return;
        }
        let (folder, actor, limits) = (self.id.folder, &self.id.actor, &self.tuning.intake);
        let loaded = on_every_core(&todo, threads, |(doc, data, signatures)| {
            Some((*doc, authorship::Preloaded::decode(folder, actor, data, signatures, limits)?))
        });
        self.preloaded.extend(loaded);
    }

    fn peer_up(&mut self, session: Session) {
        let Session { peer, name, addr, conn_id, dialed_by_me, outbox, conn } = session;
        if !self.membership.read().expect("membership lock").admits(&peer) {
            // Revoked between its handshake and now.
            conn.close(6u32.into(), b"not a member");
            return;
        }
        if self.paused {
            info!(peer = %peer.fmt_short(), "refusing a session: syncing is paused");
            conn.close(5u32.into(), b"paused");
            return;
        }
        if self.guards.missing.is_some() {
            info!(peer = %peer.fmt_short(), "refusing a session: the folder is missing");
            conn.close(5u32.into(), b"folder missing");
            return;
        }
        if let Some(fault) = self.faults.get(&peer).filter(|f| f.until > Instant::now()) {
            info!(peer = %peer.fmt_short(), %name, "refusing a session: quarantined for {:?} more ({})",
                fault.until - Instant::now(), fault.reason);
            conn.close(6u32.into(), b"quarantined");
            return;
        }
        if let Some(existing) = self.peers.get(&peer) {
            // Same dialer: the peer reconnected and the old session is stale (e.g. the
            // peer crashed and QUIC has not timed out yet): the new one wins.
            // Both sides dialed at once: keep the session dialed by the smaller id, so
            // both ends pick the same one.
            // A peer dials only when it has no session with us, so a new session next to an
            // old one means the old one is dead on its side (it restarted, or lost the
            // path) even if QUIC has not noticed yet: only two sessions born together are
            // a simultaneous dial.
            let keep_dialed_by_me = self.me < peer;
            let simultaneous = existing.since.elapsed() < SIMULTANEOUS_DIAL;
            if simultaneous && existing.dialed_by_me != dialed_by_me && dialed_by_me != keep_dialed_by_me {
                conn.close(2u32.into(), b"duplicate session");
                return;
            }
            existing.conn.close(2u32.into(), b"replaced by a newer session");
        }
        let addr = self.remember_session_addr(&addr, &conn);
        let link = Link {
            name,
            since: Instant::now(),
            since_wall: std::time::SystemTime::now(),
            conn_id,
            dialed_by_me,
            outbox,
            conn,
            addr,
            known: HashMap::new(),
            backlog: BTreeSet::new(),
        };
        self.peers.insert(peer, link);
        if !self.locks.mine().is_empty() {
            let frame = self.locks_frame();
            self.send(peer, frame);
        }
        let excludes = self.excludes_frame();
        self.send(peer, excludes);
        let summary = Frame::Summary { docs: self.summary() };
        let peers = self.peers_frame(peer);
        self.send(peer, summary);
        self.send(peer, peers);
        // Tell the others about the newcomer, so the folder becomes a mesh.
        let Some(newcomer) = self.peers.get(&peer).map(|l| l.addr.clone()) else { return };
        let others: Vec<EndpointId> = self.peers.keys().filter(|p| **p != peer).copied().collect();
        for other in others {
            self.send(other, Frame::Peers { peers: vec![newcomer.clone()] });
        }
    }

    fn excludes_frame(&self) -> Frame {
        let (local, tracked) = self.filter.local_rules();
        Frame::Excludes { local, tracked: tracked.map(|t| t.into_iter().collect()) }
    }

    fn summary(&mut self) -> Vec<(DocId, Heads)> {
        self.all_heads().into_iter().map(|(id, heads)| (id, hashes(&heads))).collect()
    }

    /// Every document's heads (the folder's once it exists), without loading any: a
    /// document in memory has its own, any other the persisted ones.
    fn all_heads(&mut self) -> Vec<(DocId, Vec<ChangeHash>)> {
        let mut heads: HashMap<DocId, Vec<ChangeHash>> = self
            .saved
            .iter()
            .filter(|(id, _)| **id != self.id.folder)
            .map(|(id, h)| (*id, h.clone()))
            .collect();
        for (id, f) in self.files.loaded_mut() {
            heads.insert(*id, f.heads());
        }
        let mut all = Vec::with_capacity(heads.len() + 1);
        if self.folder.is_ready() {
            all.push((self.id.folder, self.folder.doc_mut().get_heads()));
        }
        all.extend(heads);
        all
    }

    /// A document's heads, without reading it from the store (`None`: no such document).
    fn heads_of(&mut self, id: DocId) -> Option<Vec<ChangeHash>> {
        if id == self.id.folder {
            return self.folder.is_ready().then(|| self.folder.doc_mut().get_heads());
        }
        match self.files.in_memory(id) {
            Some(f) => Some(f.heads()),
            None => self.saved.get(&id).cloned(),
        }
    }

    /// Every text document's id (stored or only in memory).
    fn file_ids(&mut self) -> Vec<DocId> {
        let mut ids: BTreeSet<DocId> =
            self.saved.keys().copied().filter(|id| *id != self.id.folder).collect();
        ids.extend(self.files.loaded_mut().map(|(id, _)| *id));
        ids.into_iter().collect()
    }

    fn send(&mut self, peer: EndpointId, frame: Frame) {
        let Some(link) = self.peers.get(&peer) else {
            return;
        };
        match link.outbox.try_send(frame) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!(peer = %peer.fmt_short(), "peer is not keeping up; reconnecting it");
                link.conn.close(3u32.into(), b"outbox full");
                self.peers.remove(&peer);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                debug!(peer = %peer.fmt_short(), "the session ended already");
                self.peers.remove(&peer);
            }
        }
    }

    /// `id`'s heads (a text document holding only its first change is not built for it).
    fn current_heads(&mut self, id: DocId) -> Vec<ChangeHash> {
        if id == self.id.folder {
            self.folder.doc_mut().get_heads()
        } else {
            self.files.get_or_new(&self.store, id).heads()
        }
    }

    /// `id` whole, for the store or a peer that lacks it (see [`FileDoc::save`]).
    fn save_doc(&mut self, id: DocId) -> Vec<u8> {
        if id == self.id.folder {
            self.folder.doc_mut().save()
        } else {
            self.files.get_or_new(&self.store, id).save()
        }
    }

    fn doc_mut(&mut self, id: DocId) -> &mut AutoCommit {
        if id == self.id.folder {
            self.folder.doc_mut()
        } else {
            self.files.get_or_new(&self.store, id).doc_mut()
        }
    }

    fn frame(&mut self, peer: EndpointId, frame: Frame) {
        match frame {
            Frame::Summary { docs } => {
                let theirs: HashMap<DocId, Heads> = docs.into_iter().collect();
                self.docs_expected = self.docs_expected.max(theirs.len() as u64);
                let mut ours: Vec<DocId> = vec![self.id.folder];
                ours.extend(self.file_ids());
                for doc in ours {
                    if doc == self.id.folder && !self.folder.is_ready() {
                        continue;
                    }
                    let their_heads: Option<Vec<ChangeHash>> =
                        theirs.get(&doc).map(|h| h.iter().map(|b| ChangeHash(*b)).collect());
                    if let Some(link) = self.peers.get_mut(&peer) {
                        match their_heads {
                            Some(h) => link.known.insert(doc, h),
                            None => link.known.remove(&doc),
                        };
                    }
                    self.push(peer, doc);
                }
            }
            Frame::Changes { doc, data, heads, signatures } => {
                self.receive_changes(peer, doc, data, heads, signatures)
            }
            Frame::Peers { peers } => {
                for addr in peers {
                    self.introduced(addr);
                }
            }
            Frame::BlobGet { hash, from, count, meta } => self.serve_blob(peer, hash, from, count, meta),
            Frame::BlobMeta { hash, size, cvs } => {
                let next = self.fetches.meta(peer, hash, size, cvs);
                self.blob_next(peer, next);
            }
            Frame::BlobData { hash, group, data } => {
                let next = self.fetches.data(peer, hash, group, &data);
                self.blob_next(peer, next);
            }
            Frame::BlobNone { hash } => self.fetches.refused(peer, hash),
            Frame::Excludes { local, tracked } => {
                // Paths that could never be synced match nothing: left out, said once.
                let tracked = tracked.map(|t| {
                    let (valid, refused): (BTreeSet<String>, BTreeSet<String>) =
                        t.into_iter().partition(|p| teatime_crdt::path::check_path(p).is_ok());
                    if !refused.is_empty() && self.reported.insert(format!("excludes\0{peer}")) {
                        warn!(peer = %peer.fmt_short(), ?refused, "ignoring tracked paths that may not reach disk");
                    }
                    valid
                });
                let filter = self.filter.for_peer(&local, tracked);
                self.peer_filters.insert(peer, filter);
            }
            Frame::Locks { locks } => {
                let (released, lost) = self.locks.receive(self.me, peer, &locks);
                if released {
                    self.hint(Scope::All); // changes held back for the lock can go out now
                }
                if !lost.is_empty() {
                    warn!(peer = %peer.fmt_short(), "{} taken concurrently by another peer, which keeps it", lost.len());
                    self.save_locks();
                }
            }
            other => debug!(peer = %peer.fmt_short(), "ignoring unexpected frame {other:?}"),
        }
    }

    /// Applies a peer's changes to `doc`. In order: [`intake::inspect`] checks the bytes'
    /// structure against the caps before Automerge sees them; they are parsed, behind
    /// `catch_unwind`, into the changes they add; each change's signature and its author's
    /// role are checked ([`authorship`]); the changes waiting for dependencies are bounded
    /// per peer; only then are they applied. A peer whose bytes fail any check but the role
    /// check is quarantined.
    fn receive_changes(
        &mut self,
        peer: EndpointId,
        doc: DocId,
        data: Vec<u8>,
        heads: Heads,
        signatures: Vec<Signed>,
    ) {
        // Decoded ahead from these very bytes (`preload`): inspected there too.
        let ahead = self.preloaded.remove(&doc).filter(|p| p.is_of(&data));
        let payload = match ahead.as_ref().map(|p| Ok(p.inspected)) {
            Some(inspected) => inspected,
            None => intake::inspect(&data, &self.tuning.intake),
        };
        let payload = match payload {
            Ok(p) => p,
            Err(why) => return self.quarantine(peer, format!("changes to document {}: {why}", doc.short())),
        };
        let mut incoming = match intake::decode_isolated(|| self.incoming(doc, &data, ahead)) {
            Ok(Ok(i)) => i,
            Ok(Err(why)) | Err(why) => {
                return self.quarantine(peer, format!("changes to document {}: {why}", doc.short()));
            }
        };
        let kept = match intake::decode_isolated(|| self.check_authorship(doc, &incoming, &signatures)) {
            Ok(Ok(kept)) => kept,
            Ok(Err(Refusal::Forged(why))) | Err(why) => {
                return self.quarantine(peer, format!("changes to document {}: {why}", doc.short()));
            }
            Ok(Err(Refusal::NotAllowed(why))) => return self.refuse_changes(peer, doc, &why),
            Ok(Err(Refusal::UnknownAuthor)) => {
                // Its author's admission has not reached us: try again once the folder
                // document changes (bounded: a flood of such frames is dropped, and
                // recovered by the summary exchange of the next session).
                if self.parked.len() < MAX_PARKED_FRAMES {
                    self.parked.push((peer, Frame::Changes { doc, data, heads, signatures }));
                }
                return;
            }
        };
        // Changes whose dependencies have not arrived wait in memory: bounded per peer.
        let waiting = match &mut incoming.apply {
            Apply::Changes(changes) if changes.is_empty() => false,
            Apply::Changes(changes) => {
                let batch: HashSet<ChangeHash> = changes.iter().map(|c| c.hash()).collect();
                let deps: Vec<ChangeHash> = changes
                    .iter()
                    .flat_map(|c| c.deps().iter().copied())
                    .filter(|h| !batch.contains(h))
                    .collect();
                let d = self.doc_mut(doc);
                !d.get_missing_deps(&deps).is_empty() || !d.get_missing_deps(&[]).is_empty()
            }
            Apply::Replace(whole) => !whole.get_missing_deps(&[]).is_empty(),
            Apply::Created(_) => false,
        };
        if let Err(why) = self.waiting.admit(peer, doc, &payload, data.len(), waiting, &self.tuning.intake) {
            return self.quarantine(peer, format!("changes to document {}: {why}", doc.short()));
        }
        self.unsaved_signatures.extend(kept);
        if doc == self.id.folder
            && payload.ops > LARGE_FOLDER_PAYLOAD_OPS.max(4 * self.tree.entries.len() as u64)
        {
            self.folder.stop_tracking();
        }
        let pre_text = self.files.get(&self.store, doc).and_then(|f| f.text());
        let before = self.current_heads(doc);
        let applied = match incoming.apply {
            Apply::Created(first) => {
                self.files.insert(doc, FileDoc::from_creation(*first, self.id.actor.clone()));
                Ok(Ok(()))
            }
            Apply::Changes(changes) if changes.is_empty() => Ok(Ok(())),
            apply => {
                let d = self.doc_mut(doc);
                intake::decode_isolated(|| match apply {
                    Apply::Changes(changes) => d.apply_changes(changes).map_err(|e| e.to_string()),
                    Apply::Replace(whole) => {
                        *d = *whole;
                        Ok(())
                    }
                    Apply::Created(_) => unreachable!("handled above"),
                })
            }
        };
        if let Ok(Err(why)) | Err(why) = applied {
            return self.quarantine(peer, format!("changes to document {}: {why}", doc.short()));
        }
        let after = self.current_heads(doc);
        if before.is_empty() && !after.is_empty() {
            self.received_whole.insert(doc, (after.clone(), data));
        }
        if before != after {
            self.dirty.insert(doc);
            self.remote_changed.insert(doc);
            let theirs: Vec<ChangeHash> = heads.iter().map(|h| ChangeHash(*h)).collect();
            if let Some(pre) = pre_text {
                self.undo_double_apply(doc, &pre, &theirs);
            }
            if doc == self.id.folder {
                self.refresh_membership();
                for (peer, frame) in std::mem::take(&mut self.parked) {
                    if self.peers.contains_key(&peer) {
                        self.frame(peer, frame);
                    }
                }
            }
        }
        if let Some(link) = self.peers.get_mut(&peer) {
            link.known.insert(doc, after);
        }
    }

    /// Changes outside their author's role: not applied (an honest peer with a stale
    /// view of the roles may relay them), logged once.
    fn refuse_changes(&mut self, peer: EndpointId, doc: DocId, why: &str) {
        if self.reported.insert(format!("refused\0{peer}\0{why}")) {
            warn!(peer = %peer.fmt_short(), doc = %doc.short(), "refusing changes outside their author's role: {why}");
        }
    }
    /// Ends the session with a peer that sent data no honest peer sends, refuses it for a
    /// cooldown, and records why (shown by `status`). The node keeps serving everyone else.
    fn quarantine(&mut self, peer: EndpointId, reason: String) {
        let strikes = self.faults.get(&peer).map_or(1, |f| f.strikes.saturating_add(1));
        let cooldown = QUARANTINE_COOLDOWN.saturating_mul(1 << (strikes - 1).min(16)).min(MAX_QUARANTINE);
        let link = self.peers.remove(&peer);
        let name = link
            .as_ref()
            .map(|l| l.name.clone())
            .or_else(|| self.faults.get(&peer).map(|f| f.name.clone()))
            .or_else(|| self.folder.members().get(&peer.to_string()).map(|m| m.name.clone()))
            .unwrap_or_default();
        warn!(peer = %peer.fmt_short(), %name, ?cooldown, "quarantining the peer: {reason}");
        if let Some(link) = link {
            link.conn.close(6u32.into(), b"quarantined: sent data no honest peer sends");
            self.last_heard.insert(peer, std::time::SystemTime::now());
            self.peer_filters.remove(&peer);
            self.fetches.peer_gone(peer);
        }
        let now = std::time::SystemTime::now();
        self.faults.insert(
            peer,
            Fault {
                name,
                reason,
                at: now,
                until: Instant::now() + cooldown,
                until_wall: now + cooldown,
                strikes,
            },
        );
    }

    /// The same outside change taken in on two peers at once (both ran `git pull`, both
    /// copied the same file in) arrives as two concurrent edits that insert the same text
    /// twice. When the peer's version and ours were the same text before the merge, the
    /// merge must be that text too: remove the doubled part. Both peers compute the same
    /// correction on the same merged state, so their deletions coincide and nothing else is
    /// touched.
    fn undo_double_apply(&mut self, doc: DocId, pre: &str, theirs: &[ChangeHash]) {
        let Some(file) = self.files.get(&self.store, doc) else { return };
        if theirs.is_empty() || file.text_at(theirs).as_deref() != Some(pre) {
            return;
        }
        if file.text().as_deref() == Some(pre) {
            return;
        }
        debug!(doc = %doc.short(), "same change made on two peers: keeping it once");
        if let Err(e) = file.ingest(pre, Instant::now() + INGEST_BUDGET, now_ms() as i64) {
            warn!(doc = %doc.short(), "could not merge a doubly applied change: {e}");
        }
    }

    /// Sends `peer` whatever it lacks of `doc`, and records that it now has our heads.
    fn push(&mut self, peer: EndpointId, doc: DocId) {
        let Some(link) = self.peers.get_mut(&peer) else { return };
        if link.outbox.capacity() <= OUTBOX_RESERVE {
            link.backlog.insert(doc);
            return;
        }
        let known = link.known.get(&doc).cloned();
        // Most documents are in sync at a session's start: that is decided without
        // reading them from the store.
        if known.is_some() && known == self.heads_of(doc) {
            return;
        }
        let heads = self.current_heads(doc);
        if known.as_ref() == Some(&heads) {
            return;
        }
        // Only heads we have can bound what to send; unknown ones are theirs to send us.
        let only_created =
            doc != self.id.folder && self.files.get_or_new(&self.store, doc).creation().is_some();
        let base: Vec<ChangeHash> = match known {
            None => Vec::new(),
            // A document holding only its first change: a peer that has any version of
            // it has that change (every later change descends from it).
            Some(k) if only_created => {
                if k.is_empty() {
                    k
                } else {
                    heads.clone()
                }
            }
            Some(k) => {
                let d = self.doc_mut(doc);
                if d.get_missing_deps(&[]).is_empty() {
                    // Nothing queued: a change-graph lookup says exactly which we have
                    // (get_change_by_hash would rebuild each change, O(document)).
                    let missing = d.get_missing_deps(&k);
                    k.into_iter().filter(|h| !missing.contains(h)).collect()
                } else {
                    k.into_iter().filter(|h| d.get_change_by_hash(h).is_some()).collect()
                }
            }
        };
        let outgoing = self.outgoing(doc, &base);
        if let Some(link) = self.peers.get_mut(&peer) {
            link.known.insert(doc, heads.clone());
        }
        if let Some((data, signatures)) = outgoing {
            let heads = hashes(&heads);
            self.send(peer, Frame::Changes { doc, data, heads, signatures });
        }
    }

    /// Pushes backlogged documents while the outboxes have room.
    fn drain_backlogs(&mut self) {
        let peers: Vec<EndpointId> =
            self.peers.iter().filter(|(_, l)| !l.backlog.is_empty()).map(|(p, _)| *p).collect();
        for peer in peers {
            while let Some(link) = self.peers.get_mut(&peer)
                && link.outbox.capacity() > OUTBOX_RESERVE
                && let Some(doc) = link.backlog.pop_first()
            {
                self.push(peer, doc);
            }
        }
    }

    fn has_backlog(&self) -> bool {
        self.peers.values().any(|l| !l.backlog.is_empty())
    }

    fn scan_pending(&mut self) {
        if !self.folder.is_ready() {
            return; // a joiner waits for the folder document before recording anything
        }
        if let Some((scope, _, _)) = self.pending.take() {
            self.scan(scope);
        }
    }

    /// Reads the ignore rules and the whitelist again, then looks at the whole folder: files
    /// no longer excluded are picked up (local ones published, remote ones written).
    fn reload_filter(&mut self) {
        let tracked = local::tracked(&self.store).unwrap_or_else(|e| {
            warn!("could not read the tracked paths: {e:#}");
            None
        });
        self.filter = Filter::load(&self.root, tracked);
        self.filter_generation += 1;
        for p in &self.filter.problems {
            warn!("ignore rules: {p}");
        }
        let excludes = self.excludes_frame();
        for peer in self.peers.keys().copied().collect::<Vec<_>>() {
            self.send(peer, excludes.clone());
        }
        self.hint(Scope::All);
        if self.folder.is_ready() {
            // Paths that were excluded may hold stale versions: write every file again
            // where it differs (a local edit found there is merged first).
            self.remote_changed.insert(self.id.folder);
            let all = self.file_ids();
            self.remote_changed.extend(all);
        }
    }

    fn scan(&mut self, mut scope: Scope) {
        // An unmounted or deleted folder looks emptied: nothing is recorded from it.
        if !self.folder_present() {
            return;
        }
        if self.filter.is_stale() {
            self.reload_filter();
            scope = Scope::All;
        }
        // Untracked files this scan looks at are seen again: its ops replace the deferred.
        match &scope {
            Scope::All => self.import_rest.clear(),
            Scope::Paths(paths) => self
                .import_rest
                .retain(|op| op.paths().iter().all(|p| !paths.iter().any(|h| scan::is_within(p, h)))),
        }
        let mut new_id = || DocId(rand::random());
        let text_limit = self.text_limit();
        let mut r = scan::reconcile(&self.fs, &self.index, &scope, &self.filter, text_limit, &mut new_id);
        // Gone during the walk: what it saw is not what the user did.
        if !self.folder_present() {
            return;
        }
        let mut held = self.hold_mass_deletions(&mut r.ops, &scope);
        for s in r.skipped {
            if self.reported.insert(format!("{}\0{}", s.path, s.reason)) {
                info!(path = ?s.path, "not synced: {}", s.reason);
            }
        }
        // The tree as it was before this scan: untracked paths are matched against it.
        let creates = r.ops.iter().any(|op| {
            matches!(
                op,
                LocalOp::CreateDir { .. } | LocalOp::CreateFile { .. } | LocalOp::CreateBinary { .. }
            )
        });
        let tree = if creates {
            self.tree.get(&mut self.folder, &mut self.files, &self.store).clone()
        } else {
            Tree::default()
        };
        let role = self.my_role();
        let mode = self.mode();
        if mode != Mode::ReceiveOnly {
            r.ops = self.defer_import(r.ops, role);
            let new_files = r.ops.iter().filter_map(|op| match op {
                LocalOp::CreateFile { id, path, content, .. }
                    if policy::allows_local(role, op) && !tree.by_path.contains_key(path) =>
                {
                    Some((*id, content.as_str()))
                }
                _ => None,
            });
            self.prebuilt = build_file_docs(&self.id.actor, new_files.collect(), now_ms() as i64);
        }
        let mut refused = BTreeSet::new();
        for op in r.ops {
            if !policy::allows_local(role, &op) {
                refused.extend(op.paths());
            } else if let Some((id, who)) = op.entry().and_then(|id| Some((id, self.locks.holder(id)?))) {
                let path = op.paths().pop().unwrap_or_default();
                if self.reported.insert(format!("locked\0{id}\0{who}")) {
                    let name = self.folder.members().get(&who.to_string()).map(|m| m.name.clone());
                    warn!(?path, holder = ?name.as_deref().unwrap_or("?"), "file is locked by another peer: the local change is held back until it is unlocked");
                }
                held.extend(op.paths());
            } else if mode == Mode::ReceiveOnly && !matches!(op, LocalOp::Touch { .. }) {
                held.extend(op.paths());
            } else if let Err(e) = self.record(op, &tree) {
                warn!("could not record a local change: {e:#}");
            }
        }
        self.prebuilt.clear();
        self.folder.commit_at(now_ms() as i64);
        if scope == Scope::All {
            self.held = held;
        } else {
            self.held.extend(held);
        }
        if !refused.is_empty() {
            warn!(role = role.as_str(), paths = ?refused, "local changes this member's role does not allow: putting them back");
            self.revert_paths(&refused);
        }
        if !r.unstable.is_empty() {
            self.hint(Scope::Paths(r.unstable.into_iter().collect()));
        }
    }

    /// Keeps the first [`IMPORT_CHUNK_BYTES`] of new text files (and every other op) for
    /// this scan, the rest of the new files for [`Self::import_more`].
    fn defer_import(&mut self, ops: Vec<LocalOp>, role: Role) -> Vec<LocalOp> {
        let new_bytes = |op: &LocalOp| match op {
            LocalOp::CreateFile { content, .. } if policy::allows_local(role, op) => Some(content.len() + 1),
            _ => None,
        };
        if ops.iter().filter_map(new_bytes).sum::<usize>() <= IMPORT_CHUNK_BYTES {
            return ops;
        }
        let mut budget = IMPORT_CHUNK_BYTES;
        let mut now = Vec::new();
        for op in ops {
            match new_bytes(&op) {
                Some(_) if budget == 0 => self.import_rest.push(op),
                Some(n) => {
                    budget = budget.saturating_sub(n);
                    now.push(op);
                }
                None => now.push(op),
            }
        }
        info!(now = now.len(), later = self.import_rest.len(), "big import: recording new files in chunks");
        now
    }

    /// Records the next chunk of a big import (see [`Self::defer_import`]).
    fn import_more(&mut self) {
        if self.import_rest.is_empty() || !self.folder_present() {
            return;
        }
        // Each chunk renders the tree again (every entry read back from the folder
        // document): the chunk grows with the folder so that stays a small part of it.
        let mut budget =
            (self.index.len() * IMPORT_BYTES_PER_ENTRY).clamp(IMPORT_CHUNK_BYTES, MAX_IMPORT_CHUNK_BYTES);
        let mut n = 0;
        while n < self.import_rest.len() && budget > 0 {
            if let LocalOp::CreateFile { content, .. } = &self.import_rest[n] {
                budget = budget.saturating_sub(content.len() + 1);
            }
            n += 1;
        }
        let chunk: Vec<LocalOp> = self.import_rest.drain(..n).collect();
        // Recorded meanwhile (a scan of its path, e.g. after a peer wrote there): not again.
        let chunk: Vec<LocalOp> =
            chunk.into_iter().filter(|op| op.paths().iter().all(|p| !self.index.contains_key(p))).collect();
        let tree = self.tree.get(&mut self.folder, &mut self.files, &self.store).clone();
        let new_files = chunk.iter().filter_map(|op| match op {
            LocalOp::CreateFile { id, path, content, .. } if !tree.by_path.contains_key(path) => {
                Some((*id, content.as_str()))
            }
            _ => None,
        });
        self.prebuilt = build_file_docs(&self.id.actor, new_files.collect(), now_ms() as i64);
        for op in chunk {
            if let Err(e) = self.record(op, &tree) {
                warn!("could not record a local change: {e:#}");
            }
        }
        self.prebuilt.clear();
        self.folder.commit_at(now_ms() as i64);
        if self.import_rest.is_empty() {
            info!("big import: done");
        }
    }

    fn stamp(&self) -> Stamp {
        Stamp::new(now_ms(), &self.me.to_string())
    }

    /// A stamp for a local action the file system dates (never in the future: a clock
    /// that was ahead must not win every race).
    fn stamp_at(&self, at_ms: u64) -> Stamp {
        Stamp::new(at_ms.min(now_ms()), &self.me.to_string())
    }

    fn parent_id(&self, path: &str) -> Option<DocId> {
        let parent = parent_of(path);
        if parent.is_empty() { None } else { self.index.get(parent).map(|e| e.id) }
    }

    /// The live entry the folder already shows at `path` with this kind, if any: an
    /// untracked file there that matches it is that entry (teatime wrote it and crashed
    /// before recording it, or the user put the same thing there), not a new one.
    fn shown_at(&self, tree: &Tree, path: &str, kind: EntryKind) -> Option<DocId> {
        tree.by_path.get(path).filter(|(id, k)| *k == kind && !self.index_has_id(*id)).map(|(id, _)| *id)
    }

    fn index_has_id(&self, id: DocId) -> bool {
        self.index.values().any(|e| e.id == id)
    }

    /// Records one local change in the documents and the index.
    fn record(&mut self, op: LocalOp, tree: &Tree) -> Result<()> {
        debug!(?op, "local change");
        match op {
            LocalOp::CreateDir { path, stat, .. } if self.shown_at(tree, &path, EntryKind::Dir).is_some() => {
                let id = self.shown_at(tree, &path, EntryKind::Dir).expect("checked in the guard");
                let entry = IndexEntry::dir(id, stat);
                self.set_index(path, entry);
            }
            LocalOp::CreateFile { path, ref content, stat, hash, .. }
                if self.shown_at(tree, &path, EntryKind::File).is_some_and(|id| {
                    self.files.get(&self.store, id).and_then(|f| f.text()).as_deref()
                        == Some(content.as_str())
                }) =>
            {
                let id = self.shown_at(tree, &path, EntryKind::File).expect("checked in the guard");
                let heads = hashes(&self.files.get(&self.store, id).expect("checked in the guard").heads());
                self.set_index(path, IndexEntry::file(id, stat, hash, heads));
            }
            LocalOp::CreateBinary { ref path, ref blob, stat, .. }
                if self.shown_at(tree, path, EntryKind::File).is_some_and(|id| {
                    self.folder.entry(id).and_then(|e| e.blob().map(|b| b.hash)) == Some(blob.hash)
                }) =>
            {
                let id = self.shown_at(tree, path, EntryKind::File).expect("checked in the guard");
                let entry = IndexEntry::binary(id, stat, blob.hash);
                self.set_index(path.clone(), entry);
            }
            LocalOp::CreateBinary { id, path, stat, blob } => {
                let stamp = self.stamp_at(ns_to_ms(stat.mtime_ns));
                let parent = self.parent_id(&path);
                self.folder.create_entry(id, parent, name_of(&path), EntryKind::File, &stamp)?;
                self.folder.set_blob(id, &BlobRef { hash: blob.hash, size: blob.size, stamp })?;
                self.record_exec(id, None, stat)?;
                self.dirty.insert(self.id.folder);
                self.set_index(path, IndexEntry::binary(id, stat, blob.hash));
                self.outboards.insert(blob.hash, Arc::new(blob));
            }
            LocalOp::EditBinary { id, path, stat, blob } => {
                let stamp = self.stamp_at(ns_to_ms(stat.mtime_ns));
                let old = self.index.get(&path).map(|e| e.stat);
                self.folder.set_blob(id, &BlobRef { hash: blob.hash, size: blob.size, stamp })?;
                self.record_exec(id, old, stat)?;
                // An edit beats a concurrent delete: the file comes back.
                if self.folder.entry(id).is_some_and(|e| !e.deletions.is_empty()) {
                    self.folder.undelete(id)?;
                }
                self.dirty.insert(self.id.folder);
                self.set_index(path, IndexEntry::binary(id, stat, blob.hash));
                self.outboards.insert(blob.hash, Arc::new(blob));
            }
            LocalOp::Edit { id, path, stat, hash, ref content }
                if self.files.get(&self.store, id).and_then(|f| f.text()).as_deref()
                    == Some(content.as_str()) =>
            {
                // The disk already holds the current text (e.g. written just before a crash,
                // not yet recorded): nothing to ingest, only the base moves.
                let heads = hashes(&self.files.get(&self.store, id).expect("checked in the guard").heads());
                self.set_index(path, IndexEntry::file(id, stat, hash, heads));
            }
            LocalOp::CreateDir { id, path, stat } => {
                let parent = self.parent_id(&path);
                let stamp = self.stamp_at(ns_to_ms(stat.mtime_ns));
                self.folder.create_entry(id, parent, name_of(&path), EntryKind::Dir, &stamp)?;
                self.dirty.insert(self.id.folder);
                let entry = IndexEntry::dir(id, stat);
                self.set_index(path, entry);
            }
            LocalOp::CreateFile { id, path, content, stat, hash } => {
                let mut file = match self.prebuilt.remove(&id) {
                    Some(file) => file,
                    None => FileDoc::create(self.id.actor.clone(), &content, now_ms() as i64)?,
                };
                let heads = hashes(&file.heads());
                self.files.insert(id, file);
                let parent = self.parent_id(&path);
                let stamp = self.stamp_at(ns_to_ms(stat.mtime_ns));
                self.folder.create_entry(id, parent, name_of(&path), EntryKind::File, &stamp)?;
                self.record_exec(id, None, stat)?;
                self.dirty.extend([id, self.id.folder]);
                let entry = IndexEntry::file(id, stat, hash, heads);
                self.set_index(path, entry);
            }
            LocalOp::Move { id, from, to, at_ms } => {
                let within = |index: &Index, dir: &str| -> Vec<String> {
                    index.keys().filter(|k| scan::is_within(k, dir)).cloned().collect()
                };
                let old_keys = within(&self.index, &from);
                move_in_index(&mut self.index, &from, &to);
                let new_keys = within(&self.index, &to);
                self.index_touched.extend(old_keys.into_iter().chain(new_keys));
                // If a peer deleted it meanwhile, the new location is one the deletion had not
                // seen: a rename-vs-delete race, which the folder's strategy settles.
                let (parent, stamp) = (self.parent_id(&to), self.stamp_at(at_ms));
                self.folder.move_entry(id, parent, name_of(&to), &stamp)?;
                self.dirty.insert(self.id.folder);
            }
            LocalOp::Edit { id, path, content, stat, hash } => {
                // The disk content derives from the version last read or written here.
                let base: Vec<ChangeHash> = self
                    .index
                    .get(&path)
                    .map(|e| e.heads.iter().map(|h| ChangeHash(*h)).collect())
                    .unwrap_or_default();
                let old = self.index.get(&path).map(|e| e.stat);
                self.record_exec(id, old, stat)?;
                let file = self.files.get(&self.store, id).context("edited file has no document")?;
                let before = file.heads();
                let merged_with_remote = base != before;
                let changed =
                    file.ingest_from(&content, &base, Instant::now() + INGEST_BUDGET, now_ms() as i64)?;
                // The base is what the disk holds: the edit's own change, which was made on
                // the disk's version, not the merge with what arrived meanwhile (the disk
                // lacks that until it is written back).
                let heads = if changed {
                    self.dirty.insert(id);
                    hashes(&file.heads().into_iter().filter(|h| !before.contains(h)).collect::<Vec<_>>())
                } else if base.is_empty() {
                    hashes(&before)
                } else {
                    hashes(&base)
                };
                if merged_with_remote {
                    // The disk holds only the local side: write the merged text back.
                    self.remote_changed.insert(id);
                }
                // An edit beats a concurrent delete: the file comes back.
                if self.folder.entry(id).is_some_and(|e| !e.deletions.is_empty()) {
                    self.folder.undelete(id)?;
                    self.dirty.insert(self.id.folder);
                }
                let entry = IndexEntry::file(id, stat, hash, heads);
                self.set_index(path, entry);
            }
            LocalOp::Touch { path, stat } => {
                if let Some(e) = self.index.get(&path).cloned() {
                    self.record_exec(e.id, Some(e.stat), stat)?;
                    self.set_index(path, IndexEntry { stat, racy: stat.is_recent(), ..e });
                }
            }
            LocalOp::Delete { id, path, at_ms } => {
                // The deletion names the version it saw: an edit it had not seen beats it.
                let seen = self.seen_on_disk(id, self.index.get(&path).cloned());
                let stamp = self.stamp_at(at_ms);
                self.folder.delete_entry(id, &stamp, seen)?;
                self.dirty.insert(self.id.folder);
                self.index.remove(&path);
                self.index_touched.insert(path);
            }
        }
        Ok(())
    }

    /// Records a change of the executable bit, where the folder syncs it. `old`: what
    /// the index had (`None` for a new file: only a set bit is news).
    fn record_exec(&mut self, id: DocId, old: Option<Stat_>, new: Stat_) -> Result<()> {
        if !self.exec_synced() || old.map_or(!new.is_exec(), |o| o.is_exec() == new.is_exec()) {
            return Ok(());
        }
        self.folder.set_exec(id, new.is_exec())?;
        self.dirty.insert(self.id.folder);
        Ok(())
    }

    /// When the folder starts syncing executable bits, the bits users set meanwhile are
    /// published first: turning the setting on must not strip them.
    fn exec_setting_changes(&mut self) {
        let now = self.folder.is_ready() && self.exec_synced();
        if now && !self.exec_was_synced {
            let set: Vec<DocId> = self
                .index
                .values()
                .filter(|e| e.kind == EntryKind::File && e.stat.is_exec())
                .map(|e| e.id)
                .collect();
            for id in set {
                if self.folder.entry(id).is_some_and(|e| !e.exec) && self.folder.set_exec(id, true).is_ok() {
                    self.dirty.insert(self.id.folder);
                }
            }
            self.folder.commit_at(now_ms() as i64);
        }
        self.exec_was_synced = now;
    }

    fn exec_synced(&self) -> bool {
        self.folder.setting(SYNC_EXEC_BIT).as_deref() == Some("on")
    }

    fn text_limit(&self) -> u64 {
        self.folder.setting(TEXT_LIMIT).and_then(|v| v.parse().ok()).unwrap_or(self.tuning.text_limit)
    }

    /// What a user's deletion of `id` names as the content it saw: the version the disk
    /// held (`row`, its index row), not the document's heads: a peer's change that had
    /// arrived but was not written yet was never seen, and beats the deletion.
    fn seen_on_disk(&mut self, id: DocId, row: Option<IndexEntry>) -> Vec<ChangeHash> {
        let Some(row) = row.filter(|r| r.id == id && (r.binary || !r.heads.is_empty())) else {
            return self.seen_content(id);
        };
        let mut seen: Vec<ChangeHash> = row.heads.iter().map(|h| ChangeHash(*h)).collect();
        if let Some(e) = self.folder.entry(id) {
            seen.extend(e.blobs.iter().filter(|b| b.hash == row.hash).map(|b| b.as_head()));
        }
        seen
    }

    /// What a deletion of `id` by teatime itself (a duplicate) names as seen: its
    /// document's heads, or for a binary file the versions in its register.
    fn seen_content(&mut self, id: DocId) -> Vec<ChangeHash> {
        let mut seen = self.files.get(&self.store, id).map(|f| f.heads()).unwrap_or_default();
        if let Some(e) = self.folder.entry(id) {
            seen.extend(e.blobs.iter().map(|b| b.as_head()));
        }
        seen
    }

    fn set_index(&mut self, path: String, entry: IndexEntry) {
        self.index.insert(path.clone(), entry);
        self.index_touched.insert(path);
    }

    /// Records, writes and persists whatever is pending (used when no event loop runs).
    pub fn flush_now(&mut self) {
        self.flush();
    }

    /// The progress this replica reports (see [`crate::progress`]).
    pub fn progress(&self) -> crate::progress::Shared {
        self.progress.clone()
    }

    fn report_progress(&mut self) {
        // Persisted documents (a joiner's progress), plus the folder once it is here.
        let docs_have = self.saved.keys().filter(|id| **id != self.id.folder).count() as u64
            + self.folder.is_ready() as u64;
        let fetching = self.fetches.progress();
        let p = crate::progress::Progress {
            docs_expected: self.docs_expected,
            docs_have,
            bytes_expected: fetching.iter().map(|(_, _, size)| size).sum(),
            bytes_have: fetching.iter().map(|(_, have, _)| have).sum(),
        };
        *self.progress.lock().expect("progress lock") = p;
    }

    /// Persist, materialise, persist the index, broadcast (see the module docs).
    fn flush(&mut self) {
        self.tick_locks();
        self.exec_setting_changes();
        let mut to_send: BTreeSet<DocId> = BTreeSet::new();
        for round in 0..MAX_MATERIALIZE_ROUNDS {
            self.persist_docs(&mut to_send);
            // What is not persisted is not written to the folder either (it waits for the
            // store to take it, see `guards`).
            if self.remote_changed.is_empty() || !self.folder.is_ready() || self.store_failed() {
                break;
            }
            if self.mode() == Mode::SendOnly {
                // Remote changes are kept in the documents (and relayed), not written here.
                self.remote_changed.clear();
                break;
            }
            // The folder gone, or no room: the changes wait (kept in `remote_changed`).
            if !self.may_write() {
                break;
            }
            // Local changes the watcher reported but the debounce still holds go first:
            // applying a remote change over an unrecorded local rename would lose it.
            if self.pending.is_some() {
                self.scan_pending();
                self.persist_docs(&mut to_send);
            }
            let mut changed = std::mem::take(&mut self.remote_changed);
            if self.record_duplicates() {
                self.persist_docs(&mut to_send);
            }
            changed.extend(self.stale_binaries());
            let exec_synced = self.exec_synced();
            self.tree.get(&mut self.folder, &mut self.files, &self.store);
            let entries = &self.tree.entries;
            let files = &mut self.files;
            let store = &self.store;
            let saved = &self.saved;
            let blobs = self.fetches.dir();
            // Listed once: a pass asks for every binary file not written yet, and opening
            // each (most not arrived, while a join runs) was most of a joiner's syscalls.
            let complete: HashSet<crate::blob::Hash> = blobs.held().into_iter().collect();
            let mut content_of = |id: DocId| {
                let entry = entries.get(&id)?;
                let exec = exec_synced.then_some(entry.exec);
                let body = match entry.blob() {
                    Some(b) => Body::Blob {
                        hash: b.hash,
                        source: complete.contains(&b.hash).then(|| blobs.open_complete(&b.hash)).flatten(),
                        losers: entry.blobs.iter().filter(|o| o.hash != b.hash).map(|o| o.hash).collect(),
                    },
                    None => {
                        // A document the store does not hold is not read from it: while a
                        // join runs, every pass asks for each document not arrived yet.
                        let f = if saved.contains_key(&id) {
                            files.get(store, id)?
                        } else {
                            files.in_memory(id)?
                        };
                        Body::Text { text: f.text()?, heads: hashes(&f.heads()) }
                    }
                };
                Some(Content { body, exec })
            };
            let (filter, held) = (&self.filter, &self.held);
            let skip = |path: &str, is_dir: bool| {
                filter.excludes(path, is_dir) || held.iter().any(|h| scan::is_within(path, h))
            };
            let mut journal = |intents: &[(String, crate::store::WriteIntent)]| {
                store.begin_writes(intents).map_err(io::Error::other)?;
                crate::crash::point(crate::crash::BEFORE_RENAME, intents.iter().map(|(p, _)| p.as_str()));
                Ok(())
            };
            let basis = (self.tree.generation, self.filter_generation, held);
            let only = self.settled.scope(basis, &self.tree.tree, &self.index, &changed, &self.index_touched);
            let m = materialize(
                &self.fs,
                &self.tree.tree,
                &skip,
                &mut self.index,
                &changed,
                only.as_ref(),
                &mut content_of,
                &mut journal,
            );
            let looked_at = only.map(|mut paths| {
                paths.extend(m.touched.iter().cloned());
                paths
            });
            self.settled.after_pass(basis, &self.tree.tree, &self.index, &skip, looked_at.as_ref());
            crate::crash::point(crate::crash::AFTER_MATERIALISE, m.touched.iter().map(String::as_str));
            self.report_refused_names();
            let rules_changed = m.touched.iter().any(|p| Filter::is_rule_file(p));
            for (path, kept) in &m.kept_versions {
                info!(?path, ?kept, "a concurrent binary version lost; it is kept");
            }
            for path in &m.touched {
                self.errors.remove(path);
            }
            self.index_touched.extend(m.touched);
            self.note_write_errors(&m.errors);
            if rules_changed {
                self.reload_filter();
            }
            for (path, id, err) in m.errors {
                // Often transient (a local move not scanned yet): try again shortly, and
                // say it again only if the reason changes.
                let err = err.to_string();
                if self.errors.get(&path) != Some(&err) {
                    warn!(?path, "could not apply a remote change (will retry): {err}");
                }
                self.errors.insert(path, err);
                self.schedule_retry([id]);
            }
            if m.local_first.is_empty() {
                break;
            }
            if round + 1 == MAX_MATERIALIZE_ROUNDS {
                self.schedule_retry(changed.iter().copied());
                break;
            }
            debug!(round, paths = ?m.local_first, "local edits found where remote changes land: ingesting first");
            self.scan(Scope::Paths(m.local_first));
            // Re-render with the local edits merged in; rewrite those files too.
            self.remote_changed = changed;
            self.remote_changed.extend(self.dirty.iter().copied());
        }
        self.persist_index();
        self.drain_backlogs();
        let connected: Vec<EndpointId> =
            if self.guards.disk.is_none() { self.peers.keys().copied().collect() } else { Vec::new() };
        for (peer, frame) in self.fetches.assign(&connected) {
            self.send(peer, frame);
        }
        self.report_progress();
        let peers: Vec<EndpointId> = self.peers.keys().copied().collect();
        for doc in to_send {
            for peer in &peers {
                self.push(*peer, doc);
            }
        }
        if self.files.drop_idle(&self.saved) > 0 {
            self.trim_at.get_or_insert_with(|| Instant::now() + QUIET_BEFORE_TRIM);
        }
        // Only for this flush's pushes: a backlogged document is encoded when it goes.
        self.fresh_saves.clear();
    }

    /// Entries the tree hides because a peer gave them a name that may not reach disk: said
    /// once each, escaped (a name may hold control or bidi characters meant for a terminal).
    fn report_refused_names(&mut self) {
        for r in &self.tree.tree.refused {
            if self.reported.insert(format!("refused-name\0{}\0{}", r.entry, r.name)) {
                warn!(
                    entry = %r.entry.short(),
                    parent = ?r.parent,
                    name = ?r.name,
                    "not written: a peer gave this entry a name that may not reach disk ({})",
                    r.reason
                );
            }
        }
    }

    /// The same file created on two peers (same path, same content) is one file: the
    /// duplicate entry is recorded as deleted, so it stays one even if the contents later
    /// diverge. Every peer may do this; the records agree. Returns whether it wrote.
    fn record_duplicates(&mut self) -> bool {
        if !self.my_role().writes_tree() {
            return false;
        }
        let dups = self.tree.get(&mut self.folder, &mut self.files, &self.store).duplicates.clone();
        let mut wrote = false;
        for dup in dups {
            let seen = self.seen_content(dup);
            let stamp = self.stamp();
            if self.folder.delete_entry(dup, &stamp, seen).is_ok() {
                wrote = true;
            }
        }
        if wrote {
            self.folder.commit_at(now_ms() as i64);
            self.dirty.insert(self.id.folder);
        }
        wrote
    }

    fn schedule_retry(&mut self, ids: impl IntoIterator<Item = DocId>) {
        self.retry.extend(ids);
        self.retry_at.get_or_insert_with(|| Instant::now() + RETRY_DELAY);
    }

    /// Commits the changed documents, their signatures and the index rows recorded since
    /// the last commit, in one transaction: a crash never separates a recorded creation or
    /// edit from the index row that says the disk holds it.
    fn persist_docs(&mut self, to_send: &mut BTreeSet<DocId>) {
        if self.dirty.is_empty() || !self.store_usable() {
            return;
        }
        let mut batch = Batch::default();
        let dirty = std::mem::take(&mut self.dirty);
        for doc in &dirty {
            let snapshot = self.store.wants_snapshot(*doc);
            let prev = self.saved.get(doc).cloned();
            self.tree.file_changed(*doc);
            let received = self.received_whole.remove(doc);
            let new_doc = prev.is_none() && received.is_none();
            let heads = self.current_heads(*doc);
            if prev.as_ref() == Some(&heads) {
                continue;
            }
            match (prev, received) {
                (Some(prev), _) if !snapshot => {
                    batch.changes.push((*doc, self.doc_mut(*doc).save_after(&prev)))
                }
                // A document that arrived whole and has not changed since: its bytes are
                // already a save, no need to encode it again (most of a join's CPU).
                (_, Some((at, bytes))) if at == heads => batch.snapshots.push((*doc, bytes)),
                _ => {
                    let bytes = self.save_doc(*doc);
                    if new_doc {
                        // Our new document: peers get it whole, from these bytes.
                        self.fresh_saves.insert(*doc, (heads.clone(), bytes.clone()));
                    }
                    batch.snapshots.push((*doc, bytes))
                }
            }
            batch.heads.push((*doc, hashes(&heads)));
            self.saved.insert(*doc, heads);
        }
        let signatures = std::mem::take(&mut self.unsaved_signatures);
        batch.signatures = signatures.iter().map(|(h, s)| (*h, s.to_bytes())).collect();
        let rows = std::mem::take(&mut self.index_touched);
        batch.index = rows.iter().map(|p| (p.clone(), self.index.get(p).cloned())).collect();
        self.settled.rows_persisted(&rows);
        if let Err(e) = self.store.commit(batch) {
            // Keep them dirty: they are retried at the next flush and not sent before.
            warn!("could not persist changes: {e:#}");
            self.note_store_error(&e);
            self.unsaved_signatures = signatures;
            self.index_touched.extend(rows);
            self.dirty = dirty;
            for doc in &self.dirty {
                self.saved.remove(doc);
            }
            return;
        }
        crate::crash::point(
            crate::crash::AFTER_DOCUMENTS_PERSISTED,
            rows.iter()
                .map(String::as_str)
                .chain(self.index.iter().filter(|(_, e)| dirty.contains(&e.id)).map(|(p, _)| p.as_str())),
        );
        to_send.extend(dirty);
    }

    fn persist_index(&mut self) {
        if self.index_touched.is_empty() || !self.store_usable() {
            return;
        }
        let touched = std::mem::take(&mut self.index_touched);
        self.settled.rows_persisted(&touched);
        let rows = touched.iter().cloned().map(|p| {
            let e = self.index.get(&p).cloned();
            (p, e)
        });
        let batch = Batch { index: rows.collect(), ..Default::default() };
        if let Err(e) = self.store.commit(batch) {
            warn!("could not persist the index: {e:#}");
            self.note_store_error(&e);
            // Kept for the next try: a row not written would be stale after a restart.
            self.index_touched.extend(touched);
        }
    }
}
