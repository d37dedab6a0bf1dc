//! Local side, inbound: what changed on disk since teatime last looked.
//!
//! The watcher only says *where* to look; this module decides *what* happened by comparing
//! the disk with the index (what teatime last saw or wrote at each path). A missed or
//! doubled event is therefore harmless, and a full scan is always correct.
//!
//! Unchanged files are recognised by metadata alone ([`Stat`]); only files whose metadata
//! differ are read. A path that vanished and a path that appeared are the same entry
//! moved when they share an inode (or, failing that, identical content): a rename is a
//! rename, never a delete plus a create, so a peer's concurrent edit follows it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;

use rustix::fs::FileType;

use teatime_crdt::path::{MAX_DEPTH, MAX_PATH_BYTES, Refused, check_name, check_path};
use teatime_crdt::{DocId, EntryKind};

use crate::blob::{Hashed, hash_reader};
use crate::filter::Filter;
use crate::fsroot::{Dir, Root};
use crate::store::{Index, IndexEntry, Stat};

/// Files larger than this are not text documents (Automerge's memory cost per byte).
pub const DEFAULT_TEXT_LIMIT_BYTES: u64 = 8 * 1024 * 1024;

/// Where to look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The whole folder.
    All,
    /// These relative paths and everything below them.
    Paths(BTreeSet<String>),
}

impl Scope {
    /// Whether `path` is one of the scope's paths or below one: a lookup per ancestor,
    /// so a burst of thousands of hinted paths stays cheap.
    pub fn contains(&self, path: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Paths(ps) => {
                let mut cur = path;
                loop {
                    if ps.contains(cur) {
                        return true;
                    }
                    match cur.rfind('/') {
                        Some(i) => cur = &cur[..i],
                        None => return false,
                    }
                }
            }
        }
    }

    /// The index entries inside the scope.
    fn select(&self, index: &Index) -> Index {
        match self {
            Scope::All => index.clone(),
            Scope::Paths(ps) => {
                let mut out = Index::new();
                for p in ps {
                    for (k, v) in index.range(p.clone()..).take_while(|(k, _)| k.starts_with(p.as_str())) {
                        if is_within(k, p) {
                            out.insert(k.clone(), v.clone());
                        }
                    }
                }
                out
            }
        }
    }
}

/// Whether `path` is `dir` or below it.
pub fn is_within(path: &str, dir: &str) -> bool {
    path == dir || (path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/')
}

/// What is on disk at a path.
#[derive(Debug, Clone, Copy)]
pub struct DiskEntry {
    /// File or directory.
    pub kind: EntryKind,
    /// Metadata.
    pub stat: Stat,
}

/// Metadata of a path (not following symlinks), as a [`DiskEntry`], or `None` for
/// anything that is not a regular file or directory.
pub fn disk_entry(meta: &fs::Metadata) -> Option<DiskEntry> {
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_file() {
        EntryKind::File
    } else {
        return None;
    };
    Some(DiskEntry { kind, stat: stat_of(meta) })
}

/// What is at a path, from a raw status (not following symlinks), as [`disk_entry`].
pub fn disk_entry_raw(st: &rustix::fs::Stat) -> Option<DiskEntry> {
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => EntryKind::Dir,
        FileType::RegularFile => EntryKind::File,
        _ => return None,
    };
    Some(DiskEntry { kind, stat: stat_of_raw(st) })
}

/// The [`Stat`] of a raw status, the same as [`stat_of`] gives for its metadata.
#[allow(clippy::unnecessary_cast, reason = "the status fields' types differ between targets")]
pub fn stat_of_raw(st: &rustix::fs::Stat) -> Stat {
    Stat {
        ino: st.st_ino as u64,
        size: st.st_size as u64,
        mtime_ns: st.st_mtime as i128 * 1_000_000_000 + st.st_mtime_nsec as i128,
        ctime_ns: st.st_ctime as i128 * 1_000_000_000 + st.st_ctime_nsec as i128,
        mode: st.st_mode & 0o7777,
    }
}

/// The [`Stat`] of a metadata record.
pub fn stat_of(meta: &fs::Metadata) -> Stat {
    Stat {
        ino: meta.ino(),
        size: meta.size(),
        mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
        mode: meta.mode() & 0o7777,
    }
}

/// Why a symlink, socket, FIFO or device is not synced (one text, so it is reported once
/// however it was found).
const SPECIAL_FILE: &str = "symlink or special file (never followed, never synced)";

/// Something teatime saw but does not sync, reported once per path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Relative path (lossy for non-UTF-8 names).
    pub path: String,
    /// Why.
    pub reason: &'static str,
}

/// What a walk found.
#[derive(Default)]
pub struct Walked {
    /// Synced paths on disk.
    pub entries: BTreeMap<String, DiskEntry>,
    /// Directories that hold excluded entries.
    pub holding_excluded: BTreeSet<String>,
    /// Directories that exist but could not be read (an I/O error, a disk going away):
    /// what they held is unknown, not gone.
    pub unreadable: BTreeSet<String>,
}

/// Whether a name found on disk may be published: peers would refuse it otherwise
/// ([`teatime_crdt::path`]), so it is reported and stays local.
fn publishable(child: &str, name: &str) -> Result<(), Refused> {
    check_name(name)?;
    if child.len() > MAX_PATH_BYTES {
        return Err(Refused::PathTooLong);
    }
    if child.bytes().filter(|b| *b == b'/').count() >= MAX_DEPTH {
        return Err(Refused::TooDeep);
    }
    Ok(())
}

/// Walks `scope` under `root`, never following symlinks (every directory is opened
/// beneath the root's handle, so one swapped for a symlink is not entered), skipping what
/// `filter` excludes and names that may not be published.
pub fn walk(root: &Root, scope: &Scope, filter: &Filter, skipped: &mut Vec<Skipped>) -> Walked {
    let mut out = Walked::default();
    match scope {
        Scope::All => walk_below(root, String::new(), filter, &mut out, skipped),
        Scope::Paths(paths) => {
            for rel in paths {
                let Ok(st) = root.stat(rel) else { continue };
                let entry = disk_entry_raw(&st);
                if filter.excludes(rel, entry.is_some_and(|d| d.kind == EntryKind::Dir)) {
                    continue;
                }
                if let Err(why) = check_path(rel) {
                    skipped.push(Skipped { path: rel.clone(), reason: why.as_str() });
                    continue;
                }
                match entry {
                    Some(d) => {
                        out.entries.insert(rel.clone(), d);
                        if d.kind == EntryKind::Dir {
                            walk_below(root, rel.clone(), filter, &mut out, skipped);
                        }
                    }
                    None => skipped.push(Skipped { path: rel.clone(), reason: SPECIAL_FILE }),
                }
            }
        }
    }
    out
}

/// Everything below the directory `top`, with a work list rather than recursion: a peer
/// can nest directories thousands deep, which must cost neither stack nor open files.
fn walk_below(root: &Root, top: String, filter: &Filter, out: &mut Walked, skipped: &mut Vec<Skipped>) {
    let mut todo = vec![top];
    while let Some(rel) = todo.pop() {
        let entries = match root.dir(&rel).and_then(|dir| dir.entries().map(|e| (dir, e))) {
            Ok(found) => found,
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => continue,
            Err(_) => {
                out.unreadable.insert(rel);
                continue;
            }
        };
        let (dir, entries) = entries;
        for (name, _) in entries {
            let Some(name) = name.to_str() else {
                skipped.push(Skipped {
                    path: join(&rel, &name.to_string_lossy()),
                    reason: "file name is not valid UTF-8",
                });
                continue;
            };
            let child = join(&rel, name);
            let Ok(st) = dir.stat(name) else { continue };
            let entry = disk_entry_raw(&st);
            if filter.excludes(&child, entry.is_some_and(|d| d.kind == EntryKind::Dir)) {
                out.holding_excluded.insert(rel.clone());
                continue;
            }
            if let Err(why) = publishable(&child, name) {
                skipped.push(Skipped { path: child, reason: why.as_str() });
                out.holding_excluded.insert(rel.clone());
                continue;
            }
            match entry {
                Some(d) => {
                    out.entries.insert(child.clone(), d);
                    if d.kind == EntryKind::Dir {
                        todo.push(child);
                    }
                }
                None => skipped.push(Skipped { path: child, reason: SPECIAL_FILE }),
            }
        }
    }
}

/// `dir/name`, or `name` at the root.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() { name.to_string() } else { format!("{dir}/{name}") }
}

/// The parent directory of a relative path (`""` for the root).
pub fn parent_of(path: &str) -> &str {
    path.rfind('/').map(|i| &path[..i]).unwrap_or("")
}

/// The last component of a relative path.
pub fn name_of(path: &str) -> &str {
    path.rfind('/').map(|i| &path[i + 1..]).unwrap_or(path)
}

/// A local change, to be recorded in the folder (in this order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalOp {
    /// A new directory.
    CreateDir { id: DocId, path: String, stat: Stat },
    /// A new text file.
    CreateFile { id: DocId, path: String, content: String, stat: Stat, hash: [u8; 32] },
    /// An entry moved or renamed (a directory carries its subtree), at `at_ms` (the moved
    /// inode's ctime: a rename made while teatime was stopped keeps its real time).
    Move { id: DocId, from: String, to: String, at_ms: u64 },
    /// A file's content changed.
    Edit { id: DocId, path: String, content: String, stat: Stat, hash: [u8; 32] },
    /// A new binary file.
    CreateBinary { id: DocId, path: String, stat: Stat, blob: Hashed },
    /// A binary file's content changed, or a text file's content stopped being text.
    EditBinary { id: DocId, path: String, stat: Stat, blob: Hashed },
    /// Metadata changed, content did not: only the index learns it.
    Touch { path: String, stat: Stat },
    /// An entry vanished, at `at_ms` (its directory's mtime, the best trace a deletion
    /// leaves).
    Delete { id: DocId, path: String, at_ms: u64 },
}

impl LocalOp {
    /// The existing entry the change is about (`None` for creations).
    pub fn entry(&self) -> Option<DocId> {
        match self {
            LocalOp::Edit { id, .. }
            | LocalOp::EditBinary { id, .. }
            | LocalOp::Move { id, .. }
            | LocalOp::Delete { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// The paths the change is about.
    pub fn paths(&self) -> Vec<String> {
        match self {
            LocalOp::CreateDir { path, .. }
            | LocalOp::CreateFile { path, .. }
            | LocalOp::Edit { path, .. }
            | LocalOp::CreateBinary { path, .. }
            | LocalOp::EditBinary { path, .. }
            | LocalOp::Touch { path, .. }
            | LocalOp::Delete { path, .. } => vec![path.clone()],
            LocalOp::Move { from, to, .. } => vec![from.clone(), to.clone()],
        }
    }
}

/// The result of comparing disk with the index.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Changes to record, in order.
    pub ops: Vec<LocalOp>,
    /// Files that changed while being read: look again later.
    pub unstable: Vec<String>,
    /// Files seen and not synced.
    pub skipped: Vec<Skipped>,
}

/// A file that just became empty, or lost most of its size, may be a writer's
/// truncate-then-write caught in the middle (`fs::write`, many editors' non-atomic
/// saves). Ingesting that would delete the text for every peer, so such a file must keep
/// its new size for a while before it counts. Normal edits are not delayed.
const EMPTIED_SETTLE: std::time::Duration = std::time::Duration::from_millis(1000);
const SHRUNK_SETTLE: std::time::Duration = std::time::Duration::from_millis(300);

fn is_settling(old_size: u64, now: &Stat) -> bool {
    let settle = if now.size == 0 && old_size > 0 {
        EMPTIED_SETTLE
    } else if now.size < old_size / 2 {
        SHRUNK_SETTLE
    } else {
        return false;
    };
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    let age_ns = now_ns - now.mtime_ns;
    // A modification time in the future (clock skew) counts as settled: never wait on it.
    (0..settle.as_nanos() as i128).contains(&age_ns)
}

/// Content read from a file.
enum Read_ {
    Text { content: String, stat: Stat, hash: [u8; 32] },
    Binary { blob: Hashed, stat: Stat },
    NotText,
    Unstable,
    Gone,
}

impl Read_ {
    fn hash(&self) -> Option<[u8; 32]> {
        match self {
            Read_::Text { hash, .. } => Some(*hash),
            Read_::Binary { blob, .. } => Some(blob.hash),
            _ => None,
        }
    }

    fn stat(&self) -> Option<Stat> {
        match self {
            Read_::Text { stat, .. } | Read_::Binary { stat, .. } => Some(*stat),
            _ => None,
        }
    }
}

/// Reads a file as text if it is text (and `binary` is false), else hashes it as binary
/// content.
fn read_content(root: &Root, rel: &str, text_limit: u64, binary: bool) -> Read_ {
    let Ok((dir, name)) = root.parent(rel) else {
        return Read_::Gone;
    };
    if !binary {
        match read_text(&dir, name, text_limit) {
            Read_::NotText => {}
            other => return other,
        }
    }
    read_binary(&dir, name)
}

/// Hashes a binary file (streamed: it may be larger than memory), checking that it did
/// not change meanwhile: a file being written is not published half-written.
fn read_binary(dir: &Dir, name: &str) -> Read_ {
    let Ok(f) = dir.open_file(name) else {
        return Read_::Gone;
    };
    let Ok(before) = f.metadata() else {
        return Read_::Gone;
    };
    let Ok(blob) = hash_reader(f) else {
        return Read_::Unstable;
    };
    let Ok(after) = dir.stat(name) else {
        return Read_::Gone;
    };
    let after = stat_of_raw(&after);
    if stat_of(&before) != after || blob.size != after.size {
        return Read_::Unstable;
    }
    Read_::Binary { blob, stat: after }
}

/// Reads a file whole if it is a text file, checking that it did not change meanwhile
/// (a writer still appending must not be ingested half-written).
fn read_text(dir: &Dir, name: &str, text_limit: u64) -> Read_ {
    let Ok(mut f) = dir.open_file(name) else {
        return Read_::Gone;
    };
    let Ok(before) = f.metadata() else {
        return Read_::Gone;
    };
    if before.len() > text_limit {
        return Read_::NotText;
    }
    let mut bytes = Vec::with_capacity(before.len() as usize);
    if f.by_ref().take(text_limit + 1).read_to_end(&mut bytes).is_err() {
        return Read_::Unstable;
    }
    let Ok(after) = dir.stat(name) else {
        return Read_::Gone;
    };
    let after = stat_of_raw(&after);
    if stat_of(&before) != after || bytes.len() as u64 != after.size {
        return Read_::Unstable;
    }
    if bytes.contains(&0) {
        return Read_::NotText;
    }
    let hash = *blake3::hash(&bytes).as_bytes();
    match String::from_utf8(bytes) {
        Ok(content) => Read_::Text { content, stat: after, hash },
        Err(_) => Read_::NotText,
    }
}

/// Compares what is on disk in `scope` with `index` and says what changed.
/// `new_id` supplies ids for new entries.
pub fn reconcile(
    root: &Root,
    index: &Index,
    scope: &Scope,
    filter: &Filter,
    text_limit: u64,
    new_id: &mut dyn FnMut() -> DocId,
) -> Reconciled {
    let mut out = Reconciled::default();
    let walked = walk(root, scope, filter, &mut out.skipped);
    let disk = walked.entries;
    // Only what the scope covers: a hint about one file must not copy a 100k-entry index.
    let mut working = scope.select(index);

    let on_disk_as = |path: &str, kind: EntryKind| disk.get(path).is_some_and(|d| d.kind == kind);

    // Vanished entries that may turn out to be moves: by inode, and by content hash.
    let mut gone_by_ino: BTreeMap<u64, String> = BTreeMap::new();
    let mut gone_by_hash: BTreeMap<[u8; 32], String> = BTreeMap::new();
    // Excluded index paths (e.g. a file that became ignored, or an entry moved aside
    // mid-materialisation) are never "gone": nothing is deleted because it became excluded.
    // Likewise below a directory that could not be read: its entries are unknown, not gone.
    let unreadable = &walked.unreadable;
    let in_scope = |path: &str, kind: EntryKind| {
        scope.contains(path)
            && !filter.excludes(path, kind == EntryKind::Dir)
            && !unreadable.iter().any(|u| u.is_empty() || (is_within(path, u) && path != u))
    };
    for (path, e) in &working {
        if in_scope(path, e.kind) && !on_disk_as(path, e.kind) {
            gone_by_ino.insert(e.stat.ino, path.clone());
            if e.kind == EntryKind::File {
                gone_by_hash.insert(e.hash, path.clone());
            }
        }
    }

    let mut outside_by_ino: Option<HashMap<u64, String>> = None;
    // New paths, parents first (BTreeMap order puts "a" before "a/b").
    for (path, d) in &disk {
        if working.get(path).is_some_and(|e| e.kind == d.kind) {
            continue; // known (possibly just re-keyed by a directory move below)
        }
        if let Some(old) = gone_by_ino.get(&d.stat.ino).cloned()
            && working.get(&old).is_some_and(|e| e.kind == d.kind)
            && !on_disk_as(&old, d.kind)
        {
            gone_by_ino.remove(&d.stat.ino);
            let id = working[&old].id;
            move_in_index(&mut working, &old, path);
            out.ops.push(LocalOp::Move { id, from: old, to: path.clone(), at_ms: ns_to_ms(d.stat.ctime_ns) });
            continue;
        }
        if let Scope::Paths(_) = scope
            && let Some(old) = moved_from_outside(root, index, &working, &mut outside_by_ino, path, d)
        {
            // Renamed from a path this scan does not cover (the watcher's "from" and
            // "to" came in separate batches): still a move, never a second copy.
            let id = index[&old].id;
            for (k, e) in index.range(old.clone()..).take_while(|(k, _)| k.starts_with(old.as_str())) {
                if is_within(k, &old) {
                    working.insert(format!("{path}{}", &k[old.len()..]), e.clone());
                }
            }
            out.ops.push(LocalOp::Move { id, from: old, to: path.clone(), at_ms: ns_to_ms(d.stat.ctime_ns) });
            continue;
        }
        match d.kind {
            // A new directory that holds only excluded things (a build output, a cache) is
            // local: publishing it would only show peers an empty directory.
            EntryKind::Dir
                if walked.holding_excluded.contains(path)
                    && disk.range(format!("{path}/")..).next().is_none_or(|(k, _)| !is_within(k, path)) => {}
            EntryKind::Dir => {
                let id = new_id();
                working.insert(path.clone(), IndexEntry::dir(id, d.stat));
                out.ops.push(LocalOp::CreateDir { id, path: path.clone(), stat: d.stat });
            }
            EntryKind::File => {
                let read = read_content(root, path, text_limit, false);
                let (Some(hash), Some(stat)) = (read.hash(), read.stat()) else {
                    if matches!(read, Read_::Unstable) {
                        out.unstable.push(path.clone());
                    }
                    continue;
                };
                if let Some(old) = gone_by_hash.get(&hash).cloned()
                    && working.get(&old).is_some_and(|e| e.kind == EntryKind::File && e.hash == hash)
                {
                    gone_by_hash.remove(&hash);
                    let id = working[&old].id;
                    move_in_index(&mut working, &old, path);
                    if let Some(e) = working.get_mut(path) {
                        e.stat = stat;
                    }
                    out.ops.push(LocalOp::Move {
                        id,
                        from: old,
                        to: path.clone(),
                        at_ms: ns_to_ms(stat.ctime_ns),
                    });
                    out.ops.push(LocalOp::Touch { path: path.clone(), stat });
                    continue;
                }
                let id = new_id();
                // Just read: not racy within this pass.
                let entry = IndexEntry {
                    racy: false,
                    binary: matches!(read, Read_::Binary { .. }),
                    ..IndexEntry::file(id, stat, hash, vec![])
                };
                working.insert(path.clone(), entry);
                out.ops.push(match read {
                    Read_::Text { content, .. } => {
                        LocalOp::CreateFile { id, path: path.clone(), content, stat, hash }
                    }
                    Read_::Binary { blob, .. } => {
                        LocalOp::CreateBinary { id, path: path.clone(), stat, blob }
                    }
                    _ => unreachable!("hash() is Some only for content"),
                });
            }
        }
    }

    // Known paths whose metadata changed: read and compare content.
    for (path, d) in &disk {
        let Some(e) = working.get(path) else { continue };
        if e.kind != d.kind || e.kind == EntryKind::Dir || (e.stat == d.stat && !e.racy) {
            continue;
        }
        let id = e.id;
        let old_hash = e.hash;
        let binary = e.binary;
        if is_settling(e.stat.size, &d.stat) {
            out.unstable.push(path.clone());
            continue;
        }
        let read = read_content(root, path, text_limit, binary);
        let (Some(hash), Some(stat)) = (read.hash(), read.stat()) else {
            if matches!(read, Read_::Unstable) {
                out.unstable.push(path.clone());
            }
            continue;
        };
        if hash == old_hash {
            out.ops.push(LocalOp::Touch { path: path.clone(), stat });
        } else {
            out.ops.push(match read {
                Read_::Text { content, .. } => LocalOp::Edit { id, path: path.clone(), content, stat, hash },
                // A text file that stopped being text turns binary: nothing is lost.
                Read_::Binary { blob, .. } => LocalOp::EditBinary { id, path: path.clone(), stat, blob },
                _ => unreachable!("hash() is Some only for content"),
            });
        }
        if let Some(e) = working.get_mut(path) {
            e.stat = stat;
            e.hash = hash;
        }
    }

    // Whatever is still missing was deleted; children before parents.
    let gone: Vec<(String, DocId)> = working
        .iter()
        .filter(|(p, e)| in_scope(p, e.kind) && !on_disk_as(p, e.kind))
        .map(|(p, e)| (p.clone(), e.id))
        .collect();
    let now_ms = ns_to_ms(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128),
    );
    for (path, id) in gone.into_iter().rev() {
        let mtime_ms = |dir: &str| root.stat(dir).map(|st| ns_to_ms(stat_of_raw(&st).mtime_ns));
        // A path that just vanished, seen by a scan of a few paths, may be the "from" half
        // of a rename whose "to" the watcher has not reported yet: deleting it now and
        // creating the "to" later would make two entries of one file (and both live on if a
        // peer edited or renamed it meanwhile). Looked at again once the nearest directory
        // still there (a moved directory's children go with it) has been quiet a while.
        if matches!(scope, Scope::Paths(_)) {
            let mut dir = parent_of(&path);
            let quiet_since = loop {
                match mtime_ms(dir) {
                    Ok(ms) => break ms,
                    Err(_) if !dir.is_empty() => dir = parent_of(dir),
                    Err(_) => break 0,
                }
            };
            if now_ms.saturating_sub(quiet_since) < MOVE_SETTLE_MS {
                out.unstable.push(path);
                continue;
            }
        }
        out.ops.push(LocalOp::Delete { id, at_ms: mtime_ms(parent_of(&path)).unwrap_or(u64::MAX), path });
    }
    out
}

/// How long a path gone from a just-changed directory waits for the other half of a
/// rename before it counts as deleted (scans of a few paths only: a whole-folder scan
/// sees both halves).
const MOVE_SETTLE_MS: u64 = 300;

/// For a scan of a few paths (`working` holds their entries), the path `new` (on disk as
/// `d`, not in the index) was renamed from: an entry outside the scan with the same inode
/// and kind whose own path no longer holds it. `by_ino` is built from the whole index on
/// first use.
fn moved_from_outside(
    root: &Root,
    index: &Index,
    working: &Index,
    by_ino: &mut Option<HashMap<u64, String>>,
    new: &str,
    d: &DiskEntry,
) -> Option<String> {
    let by_ino = by_ino.get_or_insert_with(|| index.iter().map(|(p, e)| (e.stat.ino, p.clone())).collect());
    let old = by_ino.get(&d.stat.ino)?;
    let entry = index.get(old)?;
    if old == new || entry.kind != d.kind || working.contains_key(old) || is_within(new, old) {
        return None;
    }
    // Its old path must not hold it any more.
    let still_there = root.stat(old).is_ok_and(|st| stat_of_raw(&st).ino == d.stat.ino);
    (!still_there).then(|| old.clone())
}

/// File system nanoseconds to milliseconds (0 for times before the epoch).
pub fn ns_to_ms(ns: i128) -> u64 {
    (ns / 1_000_000).clamp(0, u64::MAX as i128) as u64
}

/// Re-keys an index entry and everything below it from `from` to `to`.
pub fn move_in_index(index: &mut Index, from: &str, to: &str) {
    let moved: Vec<String> = index
        .range(from.to_string()..)
        .map(|(k, _)| k.clone())
        .take_while(|k| k.as_str() == from || k.starts_with(from))
        .filter(|k| is_within(k, from))
        .collect();
    for old in moved {
        if let Some(e) = index.remove(&old) {
            index.insert(format!("{to}{}", &old[from.len()..]), e);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn ids() -> impl FnMut() -> DocId {
        let mut n = 0u8;
        move || {
            n += 1;
            DocId([n; 16])
        }
    }

    fn apply(index: &mut Index, ops: &[LocalOp]) {
        for op in ops {
            match op {
                LocalOp::CreateDir { id, path, stat } => {
                    index.insert(path.clone(), IndexEntry::dir(*id, *stat));
                }
                LocalOp::CreateFile { id, path, stat, hash, .. }
                | LocalOp::Edit { id, path, stat, hash, .. } => {
                    index.insert(path.clone(), IndexEntry::file(*id, *stat, *hash, vec![]));
                }
                LocalOp::CreateBinary { id, path, stat, blob }
                | LocalOp::EditBinary { id, path, stat, blob } => {
                    index.insert(path.clone(), IndexEntry::binary(*id, *stat, blob.hash));
                }
                LocalOp::Move { from, to, .. } => move_in_index(index, from, to),
                LocalOp::Touch { path, stat } => index.get_mut(path).unwrap().stat = *stat,
                LocalOp::Delete { path, .. } => {
                    index.remove(path);
                }
            }
        }
    }

    fn scan_all(root: &Path, index: &Index, new_id: &mut dyn FnMut() -> DocId) -> Reconciled {
        let filter = Filter::load(root, None);
        reconcile(&Root::open(root).unwrap(), index, &Scope::All, &filter, DEFAULT_TEXT_LIMIT_BYTES, new_id)
    }

    #[test]
    fn names_peers_would_refuse_are_reported_not_published() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for name in ["aux.c", "cafe\u{301}.md", "a\\b", "notes.", "evil\u{202e}txt"] {
            fs::write(root.join(name), "x").unwrap();
        }
        fs::create_dir(root.join("CON")).unwrap();
        fs::write(root.join("CON/inside.md"), "x").unwrap();
        fs::write(root.join("fine.md"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
        let r = scan_all(root, &Index::new(), &mut ids());
        let published: Vec<String> = r.ops.iter().flat_map(LocalOp::paths).collect();
        assert_eq!(published, ["fine.md"]);
        let mut skipped: Vec<&str> = r.skipped.iter().map(|s| s.path.as_str()).collect();
        skipped.sort();
        assert_eq!(skipped, ["CON", "a\\b", "aux.c", "cafe\u{301}.md", "evil\u{202e}txt", "link", "notes."]);
    }

    /// Sets a directory's modification time far back: it has been quiet since.
    fn quiet_since_long_ago(dir: &Path) {
        let past = rustix::fs::Timespec { tv_sec: 1_000_000_000, tv_nsec: 0 };
        let times = rustix::fs::Timestamps { last_access: past, last_modification: past };
        rustix::fs::utimensat(rustix::fs::CWD, dir, &times, rustix::fs::AtFlags::empty()).unwrap();
    }

    fn scan_paths(root: &Path, index: &Index, paths: &[&str]) -> Reconciled {
        let filter = Filter::load(root, None);
        let scope = Scope::Paths(paths.iter().map(|p| p.to_string()).collect());
        reconcile(&Root::open(root).unwrap(), index, &scope, &filter, DEFAULT_TEXT_LIMIT_BYTES, &mut ids())
    }

    /// The watcher may report a rename's two halves to separate scans: the "to" alone is
    /// still a move (found by inode outside the scan), and the "from" alone waits for it
    /// rather than being recorded as a deletion, for files and directories alike.
    #[test]
    fn a_rename_seen_half_by_half_is_a_move_not_a_delete_and_a_create() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("d")).unwrap();
        fs::write(root.join("d/a.md"), "one").unwrap();
        fs::write(root.join("b.md"), "two").unwrap();
        let mut index = Index::new();
        let first = scan_all(root, &index, &mut ids());
        apply(&mut index, &first.ops);

        fs::rename(root.join("b.md"), root.join("d/c.md")).unwrap();
        // The "from" half first, in a just-changed directory: looked at again, not deleted.
        let r = scan_paths(root, &index, &["b.md"]);
        assert!(r.ops.is_empty(), "{:?}", r.ops);
        assert_eq!(r.unstable, ["b.md"]);
        // The "to" half alone: a move of the same entry.
        let r = scan_paths(root, &index, &["d/c.md"]);
        assert!(
            matches!(&r.ops[0], LocalOp::Move { id, from, to, .. }
                if *id == index["b.md"].id && from == "b.md" && to == "d/c.md"),
            "{:?}",
            r.ops
        );
        assert!(r.ops[1..].iter().all(|op| matches!(op, LocalOp::Touch { .. })), "{:?}", r.ops);
        apply(&mut index, &r.ops);

        // A directory, its "to" half alone: one move, its children known under it.
        fs::rename(root.join("d"), root.join("e")).unwrap();
        let r = scan_paths(root, &index, &["e"]);
        assert!(
            matches!(&r.ops[0], LocalOp::Move { from, to, .. } if from == "d" && to == "e"),
            "{:?}",
            r.ops
        );
        assert!(r.ops[1..].iter().all(|op| matches!(op, LocalOp::Touch { .. })), "{:?}", r.ops);
        apply(&mut index, &r.ops);
        assert!(index.contains_key("e/a.md") && index.contains_key("e/c.md"));

        // A real deletion is recorded once the directory has been quiet for a while
        // (its modification time set back, rather than waiting).
        fs::remove_file(root.join("e/a.md")).unwrap();
        assert_eq!(scan_paths(root, &index, &["e/a.md"]).unstable, ["e/a.md"]);
        quiet_since_long_ago(&root.join("e"));
        let r = scan_paths(root, &index, &["e/a.md"]);
        assert!(
            matches!(r.ops.as_slice(), [LocalOp::Delete { path, .. }] if path == "e/a.md"),
            "{:?}",
            r.ops
        );
    }

    #[test]
    fn create_edit_move_delete_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("d/sub")).unwrap();
        fs::write(root.join("d/sub/a.md"), "one").unwrap();
        fs::write(root.join("b.md"), "two").unwrap();
        fs::write(root.join("bin"), [0u8, 1, 2]).unwrap();
        fs::write(root.join("x.swp"), "swap").unwrap();
        let mut new_id = ids();
        let mut index = Index::new();
        let r = scan_all(root, &index, &mut new_id);
        assert_eq!(r.ops.len(), 5, "{:?}", r.ops);
        assert!(r.ops.iter().any(|op| matches!(op, LocalOp::CreateBinary { path, .. } if path == "bin")));
        apply(&mut index, &r.ops);

        // Nothing changed: nothing to do (files written this instant are "racy" and get
        // re-read, which at most refreshes their metadata).
        let r = scan_all(root, &index, &mut new_id);
        assert!(r.ops.iter().all(|op| matches!(op, LocalOp::Touch { .. })), "{:?}", r.ops);
        apply(&mut index, &r.ops);
        for e in index.values_mut() {
            e.racy = false;
        }
        let r = scan_all(root, &index, &mut new_id);
        assert!(r.ops.is_empty(), "{:?}", r.ops);

        // Directory rename: one move, children follow.
        fs::rename(root.join("d"), root.join("e")).unwrap();
        // Atomic save of b.md: new inode at the same path is an edit.
        fs::write(root.join("b.tmp2"), "two!").unwrap();
        fs::rename(root.join("b.tmp2"), root.join("b.md")).unwrap();
        let r = scan_all(root, &index, &mut new_id);
        assert!(
            matches!(&r.ops[0], LocalOp::Move { from, to, .. } if from == "d" && to == "e"),
            "{:?}",
            r.ops
        );
        assert!(
            matches!(&r.ops[1], LocalOp::Edit { path, content, .. } if path == "b.md" && content == "two!"),
            "{:?}",
            r.ops
        );
        assert_eq!(r.ops.len(), 2, "{:?}", r.ops);
        apply(&mut index, &r.ops);

        fs::remove_dir_all(root.join("e")).unwrap();
        // Long enough ago that this is no rename's first half (see the test above).
        quiet_since_long_ago(root);
        let r = reconcile(
            &Root::open(root).unwrap(),
            &index,
            &Scope::Paths(["e".to_string()].into()),
            &Filter::default(),
            DEFAULT_TEXT_LIMIT_BYTES,
            &mut new_id,
        );
        let deleted: Vec<&str> = r
            .ops
            .iter()
            .map(|op| match op {
                LocalOp::Delete { path, .. } => path.as_str(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(deleted, ["e/sub/a.md", "e/sub", "e"]);
    }
}
