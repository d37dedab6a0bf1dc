//! A quiet replica lets go of everything that grows with the folder.
//!
//! An always-on peer spends nearly all its life with nothing to do, yet holds the folder
//! document (Automerge keeps 1.6-2.2 KB per entry), the entries parsed out of it and the
//! tree rendered from them, the index and every document's heads: about 3.5 KB per file,
//! 350 MB at 100,000 files. All of it is in the store. After [`REST_AFTER`] without an
//! event, with nothing in flight, the replica drops it ([`Replica::rest`]); the next event
//! reads it back first ([`Replica::wake`]), as a restart would. What stays is what no
//! store holds: peers' sessions and what they are known to have, locks, guards.
//!
//! While resting, the fields that were dropped are [`Resident`]s: touching one panics
//! rather than read an empty folder as if it were the real one (an empty folder would
//! look like a joiner's, or like every file deleted). The event loop wakes the replica
//! before anything that could touch them; only the folder's presence check and the
//! memory trim run while it rests.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use automerge::ChangeHash;
use teatime_crdt::FolderDoc;
use tracing::{debug, error};

use super::Replica;

/// How long a replica stays quiet before it rests (unless the config file says otherwise):
/// as long as a text document stays in memory unused (see `docs.rs`), so a folder in use
/// keeps its state warm.
pub const REST_AFTER: Duration = Duration::from_secs(30);

/// When a resting replica trims its heap a second time.
const TRIM_AGAIN_AFTER: Duration = Duration::from_secs(30);

/// A value the replica drops while it rests (see the module docs).
#[derive(Debug)]
pub(super) struct Resident<T>(Option<T>);

impl<T> Resident<T> {
    pub(super) fn new(value: T) -> Self {
        Resident(Some(value))
    }

    fn drop_value(&mut self) {
        self.0 = None;
    }
}

impl<T> Deref for Resident<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.0.as_ref().expect("the replica's state was touched while it rests (wake it first)")
    }
}

impl<T> DerefMut for Resident<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.as_mut().expect("the replica's state was touched while it rests (wake it first)")
    }
}

/// When the replica last had something to do, and whether it rests.
#[derive(Debug)]
pub(super) struct Rest {
    /// Quiet time before resting (`None`: never).
    after: Option<Duration>,
    last_busy: Instant,
    resting: bool,
    /// Rests since the start (for `status`).
    pub(super) count: u64,
}

impl Rest {
    pub(super) fn new(after: Option<Duration>) -> Self {
        Rest { after, last_busy: Instant::now(), resting: false, count: 0 }
    }

    /// Something happened: the quiet period starts again.
    pub(super) fn busy(&mut self) {
        self.last_busy = Instant::now();
    }

    pub(super) fn is_resting(&self) -> bool {
        self.resting
    }

    /// When the replica may rest, if it is awake (for the event loop's timer).
    pub(super) fn next_wake(&self) -> Option<Instant> {
        let after = self.after.filter(|_| !self.resting)?;
        Some(self.last_busy + after).filter(|at| *at > Instant::now())
    }

    fn quiet_long_enough(&self) -> bool {
        self.after.is_some_and(|after| self.last_busy.elapsed() >= after)
    }
}

impl Replica {
    /// Whether nothing is in flight that lives only in memory: every document and index
    /// row persisted, no scan, write, fetch or send pending, nothing waiting on a peer
    /// or on the user, no guard tripped.
    fn may_rest(&mut self) -> bool {
        self.running
            && !self.rest.resting
            && self.rest.quiet_long_enough()
            && self.folder.is_ready()
            && self.dirty.is_empty()
            && self.remote_changed.is_empty()
            && self.index_touched.is_empty()
            && self.retry.is_empty()
            && self.only_rest_timers_due()
            && self.waiting.is_empty()
            && self.parked.is_empty()
            && self.received_whole.is_empty()
            && self.unsaved_signatures.is_empty()
            && self.join_requests.is_empty()
            // Frames still queued for a session: their buffers would be freed after the trim.
            && self.peers.values().all(|l| l.outbox.capacity() == l.outbox.max_capacity())
            && self.guards.all_clear()
            // Changes waiting for their dependencies live only in the document.
            && self.folder.doc_mut().get_missing_deps(&[]).is_empty()
    }

    /// Whether the only timers due are those a resting replica serves without waking:
    /// the folder's presence check and the memory trim.
    pub(super) fn only_rest_timers_due(&self) -> bool {
        self.guards.poll_at.is_none()
            && self.next_rescan.is_none_or(|at| at > Instant::now())
            && self.pending.is_none()
            && self.retry_at.is_none()
            && self.locks.next_wake().is_none()
            && self.fetches.is_empty()
            && !self.has_backlog()
            && self.import_rest.is_empty()
    }

    /// Rests if the replica may (see [`Replica::may_rest`]).
    pub(super) fn rest_if_quiet(&mut self) {
        if !self.may_rest() {
            return;
        }
        let heads = self.folder.doc_mut().get_heads();
        self.files.drop_persisted(&self.saved);
        self.tree.forget();
        self.folder.drop_value();
        self.index.drop_value();
        self.saved.drop_value();
        // Buffers a big import or join grew and kept (a cleared map keeps its capacity).
        self.prebuilt = Default::default();
        self.preloaded = Default::default();
        self.fresh_saves = Default::default();
        self.received_whole = Default::default();
        self.unsaved_signatures = Default::default();
        self.import_rest = Vec::new();
        self.parked = Vec::new();
        if let Err(e) = self.store.drop_cache() {
            // Writes are refused until it opens again (see `Store::reopen`); waking reads the
            // state back and stops the folder if that fails too.
            error!("could not open this folder's store again after letting its cache go: {e:#}");
        }
        self.rest.resting = true;
        self.rest.count += 1;
        // What was dropped goes back to the system now; what sessions and the network stack
        // still hold (data sent and not acknowledged yet) at one more trim, a while later.
        crate::memory::return_free_memory();
        self.compact_known_heads();
        self.trim_at = Some(Instant::now() + TRIM_AGAIN_AFTER);
        debug!(folder_heads = heads.len(), "resting: folder state dropped from memory until the next event");
    }

    /// Copies what each peer is known to have into fresh allocations, then trims again.
    /// Those are one small allocation per document, made while the share or the join ran
    /// and scattered over the heap between its buffers: after the trim above, each still
    /// pinned a page that is otherwise free (at 100k files, hundreds of MB of RSS with
    /// 40 MB in use). Copied now, they are carved next to each other out of the space the
    /// rest freed, and the pages they pinned go back to the system.
    fn compact_known_heads(&mut self) {
        for link in self.peers.values_mut() {
            let fresh: HashMap<_, _> = link.known.iter().map(|(doc, heads)| (*doc, heads.clone())).collect();
            link.known = fresh;
        }
        crate::memory::return_free_memory();
    }

    /// Wakes the replica if it rests (see [`Replica::read_back`]); false if that failed,
    /// and the folder must stop: it cannot be handled without its state.
    pub(super) fn wake(&mut self, why: &str) -> bool {
        match self.read_back(why) {
            Ok(()) => true,
            Err(e) => {
                error!("could not read this folder's state back from its store: {e:#}; stopping it");
                false
            }
        }
    }

    /// Reads back what [`Replica::rest_if_quiet`] dropped: the folder document, the index and
    /// every document's heads, as at startup.
    fn read_back(&mut self, why: &str) -> Result<()> {
        self.rest.busy();
        if !self.rest.resting {
            return Ok(());
        }
        let started = Instant::now();
        let loaded = self.store.load(self.id.folder)?;
        let stored = loaded.folder.context("the folder document is missing from the store")?;
        let folder = FolderDoc::from_doc(
            stored
                .load(self.id.actor.clone())
                .with_context(|| format!("loading document {}", self.id.folder))?,
        );
        if !loaded.intents.is_empty() {
            // Nothing writes while the replica rests; left for the next start to resolve.
            debug!(intents = loaded.intents.len(), "write intents in the store while waking");
        }
        self.saved = Resident::new(
            loaded
                .heads
                .into_iter()
                .map(|(doc, heads)| (doc, heads.into_iter().map(ChangeHash).collect()))
                .collect(),
        );
        self.index = Resident::new(loaded.index);
        self.folder = Resident::new(folder);
        self.rest.resting = false;
        debug!(ms = started.elapsed().as_millis() as u64, "awake for {why}: folder state read back");
        Ok(())
    }
}
