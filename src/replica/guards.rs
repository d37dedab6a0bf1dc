//! Guards against the environment: the folder going away (an unmounted disk, a deleted
//! or replaced directory), a scan that would delete most of the folder, a full disk.
//!
//! - **Presence.** The folder root's device and inode are pinned when it opens. Before a
//!   scan is recorded, and before anything is written, the path must still name that
//!   directory and `.teatime/state.redb` must be there. If not, the folder is paused:
//!   no scan is recorded (an unmounted disk looks like "everything deleted"), nothing is
//!   written, sessions are closed and refused. It is polled with backoff and resumes by
//!   itself when the same directory is back (a remount of the same disk).
//! - **Mass deletion.** A scan whose file deletions, with those recorded in the last
//!   minute, reach both `mass-delete-min` files and `mass-delete-percent` of the tracked
//!   files holds them: they are not recorded, so nothing spreads, and every later
//!   deletion waits too, until `teatime confirm-delete` records them or `teatime revert`
//!   writes the files back from the documents. Moves are not deletions (the scan pairs
//!   them by inode, then content), so `mv dir` and `git checkout` do not trip it.
//! - **Disk space.** Below `min-disk-free` (or after a write failed with ENOSPC) nothing
//!   is materialised and no binary content is fetched; documents are still kept (redb,
//!   in the same folder, may fail too: it is reopened). Polled; resumes when space frees.

use std::collections::VecDeque;

use super::*;

/// Setting (this peer): the share of tracked files, in percent, that one burst of local
/// deletions must reach to be held (`off`: never).
pub const MASS_DELETE_PERCENT: &str = "mass-delete-percent";
/// Setting (this peer): the fewest file deletions that are ever held.
pub const MASS_DELETE_MIN: &str = "mass-delete-min";
/// Setting (this peer): free space below which nothing is written (bytes, or `N%` of the
/// file system).
pub const MIN_DISK_FREE: &str = "min-disk-free";

const DEFAULT_PERCENT: u64 = 50;
const DEFAULT_MIN: u64 = 10;
/// Deletions recorded this recently count towards the next scan's: an `rm -rf` seen in
/// several scans is still one burst.
const BURST_WINDOW: Duration = Duration::from_secs(60);
/// First and longest interval between two looks at a folder or disk that is not usable.
const POLL_FIRST: Duration = Duration::from_millis(250);
const POLL_MAX: Duration = Duration::from_secs(5);
/// How often a folder that looks fine is checked anyway: a lazily unmounted disk sends
/// no event, and its status should say so without waiting for a change.
const PRESENCE_EVERY: Duration = Duration::from_secs(5);
/// Held deletion paths listed by `status` (the count is always whole).
const LISTED: usize = 20;

/// Free space below which nothing is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinFree {
    Bytes(u64),
    Percent(u64),
}

impl Default for MinFree {
    /// Syncthing's default too: what a system needs to keep running does not scale with
    /// the disk exactly, but 1% is rarely too little and a user can lower it.
    fn default() -> Self {
        MinFree::Percent(1)
    }
}

impl MinFree {
    /// `N%` of the file system, or a number of bytes.
    pub fn parse(s: &str) -> Option<MinFree> {
        match s.trim().strip_suffix('%') {
            Some(p) => p.trim().parse().ok().filter(|p| *p <= 100).map(MinFree::Percent),
            None => s.trim().parse().ok().map(MinFree::Bytes),
        }
    }

    fn bytes(self, total: u64) -> u64 {
        match self {
            MinFree::Bytes(b) => b,
            MinFree::Percent(p) => total / 100 * p,
        }
    }

    fn text(self) -> String {
        match self {
            MinFree::Bytes(b) => b.to_string(),
            MinFree::Percent(p) => format!("{p}%"),
        }
    }
}

/// The disk is (nearly) full.
#[derive(Debug, Clone)]
pub(super) struct DiskFull {
    free: u64,
    min: u64,
    /// A write failed with this much free: wait for more than that.
    failed_at: Option<u64>,
}

/// What the guards know (see the module docs).
pub(super) struct Guards {
    /// The folder root's (device, inode) when it opened.
    root_id: Option<(u64, u64)>,
    /// Why the folder is not usable, if it is not.
    pub(super) missing: Option<String>,
    pub(super) disk: Option<DiskFull>,
    /// Why the state database could not be written, if it could not (reopened at the
    /// next look).
    store_error: Option<String>,
    /// Deletions found and held back: while any is, every deletion waits.
    pub(super) held_deletions: BTreeSet<String>,
    /// `confirm-delete` in progress: deletions are recorded, not held.
    confirming: bool,
    /// File deletions recorded recently (when, how many).
    recent: VecDeque<(Instant, usize)>,
    pub(super) poll_at: Option<Instant>,
    backoff: Duration,
    /// The next routine presence check.
    presence_at: Instant,
    percent: Option<u64>,
    min_count: u64,
    min_free: MinFree,
}

impl Guards {
    /// `min_free`: this node's default, for a folder that sets none of its own.
    pub(super) fn new(fs: &Root, store: &Store, min_free: MinFree) -> Guards {
        let text =
            |key: &str| store.meta(key).ok().flatten().map(|b| String::from_utf8_lossy(&b).into_owned());
        Guards {
            root_id: fs.stat("").ok().map(|st| (st.st_dev, st.st_ino)),
            missing: None,
            disk: None,
            store_error: None,
            held_deletions: BTreeSet::new(),
            confirming: false,
            recent: VecDeque::new(),
            poll_at: None,
            backoff: POLL_FIRST,
            presence_at: Instant::now() + PRESENCE_EVERY,
            percent: text(MASS_DELETE_PERCENT)
                .map_or(Some(DEFAULT_PERCENT), |v| parse_percent(&v).ok().flatten()),
            min_count: text(MASS_DELETE_MIN).and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_MIN),
            min_free: text(MIN_DISK_FREE).and_then(|v| MinFree::parse(&v)).unwrap_or(min_free),
        }
    }

    /// When the folder, the disk or the store should be looked at again.
    pub(super) fn next_wake(&self) -> Option<Instant> {
        Some(self.poll_at.map_or(self.presence_at, |at| at.min(self.presence_at)))
    }

    fn schedule_poll(&mut self) {
        if self.poll_at.is_none() {
            self.poll_at = Some(Instant::now() + self.backoff);
            self.backoff = (self.backoff * 2).min(POLL_MAX);
        }
    }

    pub(super) fn all_clear(&self) -> bool {
        self.missing.is_none() && self.disk.is_none() && self.store_error.is_none()
    }
}

fn parse_percent(v: &str) -> Result<Option<u64>, String> {
    if v == "off" {
        return Ok(None);
    }
    v.trim_end_matches('%')
        .parse::<u64>()
        .ok()
        .filter(|p| (1..=100).contains(p))
        .map(Some)
        .ok_or_else(|| format!("{MASS_DELETE_PERCENT} is a percentage from 1 to 100, or off, not {v:?}"))
}

fn is_no_space(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
}

/// Whether a store error comes from a full disk (redb wraps the I/O error in its own
/// types, which do not all expose it as a source: the OS message is the common ground).
fn store_out_of_space(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(is_no_space) || {
            let text = c.to_string();
            text.contains("os error 28") || text.contains("os error 122")
        }
    })
}

impl Replica {
    /// Why the folder is not the one teatime opened, or not there at all.
    fn presence_problem(&self) -> Option<String> {
        let root = self.root.display();
        match rustix::fs::stat(&self.root) {
            Err(e) => return Some(format!("{root} is gone ({e})")),
            Ok(st) if Some((st.st_dev, st.st_ino)) != self.guards.root_id => {
                return Some(format!(
                    "{root} is not the directory teatime opened any more (its disk was unmounted, or it was replaced)"
                ));
            }
            Ok(_) => {}
        }
        let marker = format!("{STATE_DIR}/state.redb");
        if let Err(e) = self.fs.stat(&marker) {
            return Some(format!("its marker {root}/{marker} is gone ({e})"));
        }
        None
    }

    /// Whether the folder is there (see the module docs); pauses it when it just went.
    pub(super) fn folder_present(&mut self) -> bool {
        if self.guards.missing.is_some() {
            return false; // looked at again by the poll, not at every event
        }
        let Some(why) = self.presence_problem() else { return true };
        warn!("folder missing: {why}; paused, nothing is recorded or written until it is back");
        self.guards.missing = Some(why);
        self.guards.schedule_poll();
        for (_, link) in self.peers.drain() {
            link.conn.close(5u32.into(), b"folder missing");
        }
        self.pending = None; // a full scan follows its return
        false
    }

    /// Whether there is room to write (see the module docs).
    pub(super) fn disk_has_room(&mut self) -> bool {
        let Ok((free, total)) = self.fs.free_space() else { return true };
        let min = self.guards.min_free.bytes(total);
        let short =
            free < min || self.guards.disk.as_ref().and_then(|d| d.failed_at).is_some_and(|at| free <= at);
        if !short {
            if self.guards.disk.take().is_some() {
                info!(free, "disk space is back: writing remote changes again");
                self.everything_to_write();
            }
            return true;
        }
        let failed_at = self.guards.disk.as_ref().and_then(|d| d.failed_at);
        if self.guards.disk.is_none() {
            warn!(
                free,
                min,
                "disk full: {free} bytes free on {} (min-disk-free {}): remote changes wait until space frees",
                self.root.display(),
                self.guards.min_free.text()
            );
        }
        self.guards.disk = Some(DiskFull { free, min, failed_at });
        self.guards.schedule_poll();
        false
    }

    /// A write failed: if for want of space, stop writing until more is free.
    pub(super) fn note_write_errors(&mut self, errors: &[(String, DocId, std::io::Error)]) {
        if !errors.iter().any(|(_, _, e)| is_no_space(e)) {
            return;
        }
        self.mark_disk_full("a write failed");
        self.guards.schedule_poll();
    }

    /// Records that a write (`what`) failed for lack of space: nothing is written until
    /// there is more free than now. Warns once per episode.
    fn mark_disk_full(&mut self, what: &str) {
        let (free, total) = self.fs.free_space().unwrap_or((0, 0));
        if self.guards.disk.is_none() {
            warn!(
                free,
                "disk full: {what} with {free} bytes free on {}: remote changes wait until space frees",
                self.root.display()
            );
        }
        let min = self.guards.min_free.bytes(total);
        self.guards.disk = Some(DiskFull { free, min, failed_at: Some(free) });
    }

    /// The state database refused a write: it is reopened at the next look (redb refuses
    /// everything after an I/O error until then).
    pub(super) fn note_store_error(&mut self, e: &anyhow::Error) {
        self.guards.store_error = Some(format!("{e:#}"));
        self.guards.schedule_poll();
        if store_out_of_space(e) {
            self.mark_disk_full("the folder's state could not be saved");
        } else {
            let _ = self.disk_has_room();
        }
    }

    /// Whether the last write to the store failed (and is not retried yet).
    pub(super) fn store_failed(&self) -> bool {
        self.guards.store_error.is_some()
    }

    /// Before a write to the store: false while an earlier write failed (the poll
    /// reopens it, with backoff, once the disk has room).
    pub(super) fn store_usable(&self) -> bool {
        self.guards.store_error.is_none()
    }

    fn reopen_store(&mut self) -> bool {
        match self.store.reopen() {
            Ok(()) => {
                info!("state database reopened after a failed write");
                self.guards.store_error = None;
                true
            }
            Err(e) => {
                self.guards.store_error = Some(format!("{e:#}"));
                self.guards.schedule_poll();
                false
            }
        }
    }

    /// Whether remote changes may be written to the folder now.
    pub(super) fn may_write(&mut self) -> bool {
        self.folder_present() && self.disk_has_room()
    }

    /// The poll: looks again at whatever stopped the folder.
    pub(super) fn poll_guards(&mut self) {
        if self.guards.presence_at <= Instant::now() {
            self.guards.presence_at = Instant::now() + PRESENCE_EVERY;
            self.folder_present();
        }
        if self.guards.poll_at.is_none_or(|at| at > Instant::now()) {
            return;
        }
        self.guards.poll_at = None;
        if self.guards.missing.is_some() {
            match self.presence_problem() {
                Some(why) => {
                    if self.guards.missing.as_ref() != Some(&why) {
                        warn!("folder missing: {why}");
                    }
                    self.guards.missing = Some(why);
                }
                None => {
                    info!("folder {} is back: syncing again", self.root.display());
                    self.guards.missing = None;
                    for (_, addr) in self.known_peer_addrs() {
                        let _ = self.dial.try_send(addr);
                    }
                    self.hint(Scope::All);
                    self.everything_to_write();
                }
            }
        }
        if self.guards.disk.is_some() {
            self.disk_has_room();
        }
        if self.guards.store_error.is_some() && self.guards.disk.is_none() && self.reopen_store() {
            // Whatever failed to persist is still dirty: the flush after this poll saves it.
            self.everything_to_write();
        }
        if self.guards.all_clear() {
            self.guards.backoff = POLL_FIRST;
        } else {
            self.guards.schedule_poll();
        }
    }

    /// After a stop: every file is compared with its document again and written where
    /// it differs.
    fn everything_to_write(&mut self) {
        if self.folder.is_ready() {
            self.remote_changed.insert(self.id.folder);
            let all = self.file_ids();
            self.remote_changed.extend(all);
        }
    }

    /// The mass-delete breaker, on one scan's operations: takes out the deletions it
    /// holds and returns their paths.
    pub(super) fn hold_mass_deletions(&mut self, ops: &mut Vec<LocalOp>, scope: &Scope) -> BTreeSet<String> {
        let now = Instant::now();
        self.guards.recent.retain(|(at, _)| now.duration_since(*at) < BURST_WINDOW);
        if self.guards.confirming {
            self.guards.held_deletions.clear();
            return BTreeSet::new();
        }
        let deleted: BTreeSet<String> = ops
            .iter()
            .filter_map(|op| match op {
                LocalOp::Delete { path, .. } => Some(path.clone()),
                _ => None,
            })
            .collect();
        let files_deleted =
            deleted.iter().filter(|p| self.index.get(*p).is_some_and(|e| e.kind == EntryKind::File)).count();
        // What the scan looked at and did not find deleted is no longer a deletion (the
        // files came back: a `git checkout` caught between unlink and write, a revert).
        let was_tripped = !self.guards.held_deletions.is_empty();
        let settled: Vec<String> = self
            .guards
            .held_deletions
            .iter()
            .filter(|p| scope.contains(p) && !deleted.contains(*p))
            .cloned()
            .collect();
        for p in &settled {
            self.guards.held_deletions.remove(p);
            self.held.remove(p);
        }
        // While the breaker is tripped, every deletion waits for the decision.
        let tripped = was_tripped && !(self.guards.held_deletions.is_empty() && deleted.is_empty());
        if was_tripped && !tripped {
            info!("the deletions held back are gone (the files are back): nothing to confirm");
        }
        let recent: usize = self.guards.recent.iter().map(|(_, n)| n).sum();
        let burst = (files_deleted + recent) as u64;
        let tracked = (self.index.values().filter(|e| e.kind == EntryKind::File).count() + recent) as u64;
        let trips = self.guards.percent.is_some_and(|p| {
            files_deleted > 0 && burst >= self.guards.min_count.max(1) && burst * 100 >= p * tracked
        });
        if !tripped && !trips {
            if files_deleted > 0 {
                self.guards.recent.push_back((now, files_deleted));
            }
            return BTreeSet::new();
        }
        if !tripped && trips {
            warn!(
                "mass deletion: {burst} of {tracked} files deleted here at once; held, nothing spreads until `teatime confirm-delete {0}` (spread them) or `teatime revert {0}` (write them back)",
                self.root.display()
            );
        }
        ops.retain(|op| !matches!(op, LocalOp::Delete { .. }));
        self.guards.held_deletions.extend(deleted.iter().cloned());
        deleted
    }

    /// `teatime confirm-delete`: records every deletion the disk shows now, held or not.
    pub(super) fn confirm_deletions(&mut self) -> Result<usize, String> {
        if !self.folder_present() {
            return Err(format!(
                "the folder is missing ({}): nothing is recorded until it is back",
                self.guards.missing.clone().unwrap_or_default()
            ));
        }
        let before = self.index.len();
        self.guards.confirming = true;
        self.scan(Scope::All);
        self.guards.confirming = false;
        self.guards.recent.clear();
        let held = std::mem::take(&mut self.guards.held_deletions);
        self.held.retain(|p| !held.contains(p));
        Ok(before.saturating_sub(self.index.len()))
    }

    /// What the guards stop, for `status`: one object per problem.
    pub(super) fn guard_problems(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        if let Some(why) = &self.guards.missing {
            out.push(json!({
                "kind": "folder-missing",
                "message": format!("folder missing: {why}; paused (nothing is recorded, written or deleted) until it is back"),
            }));
        }
        if let Some(d) = &self.guards.disk {
            out.push(json!({
                "kind": "disk-full",
                "message": format!(
                    "disk full: {} bytes free on {} (min-disk-free {}, {} bytes): remote changes wait until space frees",
                    d.free, self.root.display(), self.guards.min_free.text(), d.min
                ),
                "free": d.free,
                "min_free": d.min,
            }));
        }
        if let Some(e) = &self.guards.store_error {
            out.push(json!({
                "kind": "state-unwritable",
                "message": format!("the folder's state could not be saved ({e}); retrying"),
            }));
        }
        if !self.guards.held_deletions.is_empty() {
            let n = self.guards.held_deletions.len();
            out.push(json!({
                "kind": "mass-delete",
                "message": format!(
                    "mass deletion held: {n} paths deleted here are not spread; `teatime confirm-delete {0}` spreads them, `teatime revert {0}` writes them back",
                    self.root.display()
                ),
                "paths": self.guards.held_deletions.iter().take(LISTED).collect::<Vec<_>>(),
                "count": n,
            }));
        }
        out
    }

    pub(super) fn guard_setting(&self, key: &str) -> Option<String> {
        Some(match key {
            MASS_DELETE_PERCENT => self.guards.percent.map_or("off".into(), |p| p.to_string()),
            MASS_DELETE_MIN => self.guards.min_count.to_string(),
            MIN_DISK_FREE => self.guards.min_free.text(),
            _ => return None,
        })
    }

    /// Sets a guard setting (this peer's, kept in the store). `None`: not one of them.
    pub(super) fn set_guard_setting(&mut self, key: &str, value: &str) -> Option<Result<(), String>> {
        let result = match key {
            MASS_DELETE_PERCENT => parse_percent(value).map(|p| self.guards.percent = p),
            MASS_DELETE_MIN => value
                .parse()
                .map(|n| self.guards.min_count = n)
                .map_err(|_| format!("{MASS_DELETE_MIN} is a number of files, not {value:?}")),
            MIN_DISK_FREE => MinFree::parse(value).map(|m| self.guards.min_free = m).ok_or_else(|| {
                format!("{MIN_DISK_FREE} is a number of bytes or a percentage (1%), not {value:?}")
            }),
            _ => return None,
        };
        Some(result.and_then(|()| {
            self.store.set_meta(&[(key, value.trim().as_bytes())]).map_err(|e| format!("{e:#}"))?;
            // A lower threshold may let waiting work go now.
            self.guards.poll_at = Some(Instant::now());
            Ok(())
        }))
    }
}
