//! Local side, outbound: making the folder on disk match the rendered tree.
//!
//! This module owns every write teatime makes inside the folder. Writing a file's new
//! content goes:
//!
//! 1. check that the target still holds what teatime last recorded (same [`Stat`]); if
//!    not, the user edited it meanwhile: stop, and let the caller ingest that edit first
//!    (it is merged, then the merged text is written);
//! 2. write the content to a fresh temp file (reserved prefix, `O_EXCL`) in the same
//!    directory, copying the old file's permissions;
//! 3. fsync the temp file;
//! 4. swap it with the target in one `renameat2(RENAME_EXCHANGE)` (atomic: readers see
//!    the old or the new file, never a mix), then check the file swapped out is still the
//!    one recorded in step 1; if the user wrote to it in between, swap back and go to 1;
//! 5. remove the swapped-out file and fsync the directory;
//! 6. record the new [`Stat`] and hash in the index, so the watcher's event for our own
//!    write is recognised as "nothing changed" (no echo).
//!
//! Files go in batches: step 1 for each, steps 2 and 3 for the whole batch on several
//! threads, one commit of all their write intents (a [`Journal`]), then steps 4 and 5,
//! the directory fsynced once per batch.
//!
//! Nothing is ever deleted or overwritten unless the index says teatime put it there and
//! it is unchanged since; untracked files at a target path are left alone and reported, so
//! the caller ingests them (and the tree gives one of the two a conflict name).
//!
//! Paths come from [`Tree`], whose names are validated ([`teatime_crdt::path`]); an entry
//! the tree hides because its name is refused is forgotten, never deleted from disk. Every
//! operation goes through the folder's directory handle ([`Root`]): the kernel resolves
//! each parent beneath the root with no symlink on the way, and acts on the final name
//! itself, so nothing is ever written outside the folder or through a symlink, even one
//! swapped in between a check and a write.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;

use rustix::fs::RenameFlags;
use teatime_crdt::path::{STATE_DIR, TEMP_PREFIX, is_valid_name};
use teatime_crdt::{DocId, EntryKind, Tree};

use crate::fsroot::{Dir, Root};
use crate::parallel::on_every_core;
use crate::scan::{disk_entry, is_within, move_in_index, parent_of, stat_of};
use crate::store::{Index, IndexEntry, Stat, WriteIntent};

/// A file's content as the folder has it.
pub struct Content {
    /// The bytes.
    pub body: Body,
    /// The executable bit, where the folder syncs it (`None`: leave permissions alone).
    pub exec: Option<bool>,
}

/// Where a file's bytes come from.
pub enum Body {
    /// A text document's text, at these heads.
    Text {
        /// The text.
        text: String,
        /// The document's heads.
        heads: Vec<[u8; 32]>,
    },
    /// Binary content.
    Blob {
        /// Its BLAKE3.
        hash: [u8; 32],
        /// A verified copy, opened, if it has arrived.
        source: Option<File>,
        /// Concurrent versions that lost the race: a file holding one of them is kept
        /// aside, not overwritten.
        losers: Vec<[u8; 32]>,
    },
}

/// Makes file writes durable before their renames (commits their [`WriteIntent`]s, by
/// path, in one transaction); an error stops those writes.
pub type Journal<'a> = dyn FnMut(&[(String, WriteIntent)]) -> io::Result<()> + 'a;

/// Temp files written before their intents are committed together: one durable commit
/// per this many files instead of one per file (a joiner materialises thousands at once).
const WRITE_BATCH: usize = 256;

/// Threads writing a batch's temp files at most (each mostly waits on the file system).
const WRITE_THREADS: usize = 4;

/// Where the losing versions of binary races are kept, inside the state directory.
pub const VERSIONS_DIR: &str = "versions";

/// A kept version's name stays under this many bytes of the original name, so the added
/// suffix never makes it too long for the file system.
const KEPT_NAME_BYTES: usize = 200;

/// What a materialisation did and could not do.
#[derive(Debug, Default)]
pub struct Materialized {
    /// Index paths written or removed (persist their current value).
    pub touched: BTreeSet<String>,
    /// Paths where the disk holds something teatime has not recorded: ingest them, then
    /// materialise again.
    pub local_first: BTreeSet<String>,
    /// Failures, by path and entry (the rest of the folder still proceeds; the caller
    /// retries these later).
    pub errors: Vec<(String, DocId, io::Error)>,
    /// Files that held a losing binary version, and where that version was kept
    /// (relative to the folder).
    pub kept_versions: Vec<(String, String)>,
}

/// Makes disk match `tree`, leaving alone paths `skip` names (excluded on this peer, or
/// changed locally and held back). `content_of` says what a file holds (`None`: its document
/// has not arrived yet); files are rewritten only when new at their path or when they
/// are in `changed`.
///
/// `only`: `None` looks at every path of the tree and every index row. `Some(paths)` looks
/// at these paths alone: the caller vouches that everywhere else the index already agrees
/// with this tree (each row's entry is shown at that row's path, each shown path not
/// skipped has its entry's row), which is where a whole pass would do nothing, so both
/// do the same (see `replica::Settled`).
#[allow(clippy::too_many_arguments)]
pub fn materialize(
    root: &Root,
    tree: &Tree,
    skip: &dyn Fn(&str, bool) -> bool,
    index: &mut Index,
    changed: &HashSet<DocId>,
    only: Option<&BTreeSet<String>>,
    content_of: &mut dyn FnMut(DocId) -> Option<Content>,
    journal: &mut Journal<'_>,
) -> Materialized {
    let mut m = Materialized::default();

    // 1. Deletions: indexed entries no longer shown. Files first, then directories deepest first.
    let rows: Box<dyn Iterator<Item = (&String, &IndexEntry)>> = match only {
        None => Box::new(index.iter()),
        Some(paths) => Box::new(paths.iter().filter_map(|p| index.get_key_value(p))),
    };
    let doomed: Vec<(String, IndexEntry)> =
        rows.filter(|(_, e)| tree.path_of(e.id).is_none()).map(|(p, e)| (p.clone(), e.clone())).collect();
    for (path, e) in &doomed {
        // Excluded here (ignored, untracked): never deleted because of a peer; the entry
        // is simply forgotten.
        if skip(path, e.kind == EntryKind::Dir) {
            index.remove(path);
            m.touched.insert(path.clone());
        }
        // Hidden because a peer gave it (or a directory above it) a name that may not
        // reach disk: not a deletion. Forgotten, and looked at again by the scan, which
        // publishes what is there as new (or reports it as not synced).
        if tree.hidden.contains(&e.id) && index.remove(path).is_some() {
            m.touched.insert(path.clone());
            m.local_first.insert(path.clone());
        }
    }
    let doomed: Vec<(String, IndexEntry)> =
        doomed.into_iter().filter(|(p, _)| index.contains_key(p)).collect();
    for (path, e) in doomed.iter().filter(|(_, e)| e.kind == EntryKind::File) {
        // Another entry with the same content now owns this path (the same file created
        // on two peers): the bytes on disk are already right, only the owner changes.
        if let Some(&(other, EntryKind::File)) = tree.by_path.get(path)
            && let Some(Content { body: Body::Text { text, heads }, .. }) = content_of(other)
            && *blake3::hash(text.as_bytes()).as_bytes() == e.hash
        {
            index.insert(path.clone(), IndexEntry { id: other, heads, ..e.clone() });
            m.touched.insert(path.clone());
            continue;
        }
        match remove_file_if_unchanged(root, path, &e.stat) {
            Ok(true) => {
                index.remove(path);
                m.touched.insert(path.clone());
            }
            Ok(false) => {
                m.local_first.insert(path.clone());
            }
            Err(err) => m.errors.push((path.clone(), e.id, err)),
        }
    }
    for (path, _) in doomed.iter().rev().filter(|(_, e)| e.kind == EntryKind::Dir) {
        match root.parent(path).and_then(|(dir, name)| dir.remove_dir(name)) {
            Ok(()) => {
                index.remove(path);
                m.touched.insert(path.clone());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                index.remove(path);
                m.touched.insert(path.clone());
            }
            // Not empty because of excluded files (ignored locally): they stay, and so
            // does the directory, now local (the scan does not publish a directory that
            // holds only excluded things).
            Err(_) if holds_only_excluded(root, path, skip) => {
                index.remove(path);
                m.touched.insert(path.clone());
            }
            // Not empty: it holds something teatime does not know about. Keep it; the
            // caller scans it so those files are synced rather than lost.
            Err(_) => {
                m.local_first.insert(path.clone());
            }
        }
    }

    // 2. Moves, parents first, then 3. creations and content, also parents first.
    // File writes wait in `pending` (content durable in temp files) until a batch's
    // intents are committed at once; a move renames paths under them, so it goes after.
    let mut where_is: HashMap<DocId, String> = match only {
        None => index.iter().map(|(p, e)| (e.id, p.clone())).collect(),
        Some(paths) => paths.iter().filter_map(|p| Some((index.get(p)?.id, p.clone()))).collect(),
    };
    let shown: Box<dyn Iterator<Item = (&String, &(DocId, EntryKind))>> = match only {
        None => Box::new(tree.by_path.iter()),
        Some(paths) => Box::new(paths.iter().filter_map(|p| tree.by_path.get_key_value(p))),
    };
    let mut pending: Vec<Prepared> = Vec::new();
    for (path, &(id, kind)) in shown {
        if skip(path, kind == EntryKind::Dir) {
            continue;
        }
        if let Some(current) = where_is.get(&id).cloned()
            && current != *path
        {
            swap_in_batch(index, &mut m, &mut pending, journal);
            if let Err(err) = move_entry(root, index, &mut where_is, &mut m, &current, path) {
                m.errors.push((path.clone(), id, err));
                continue;
            }
        }
        let result = match kind {
            EntryKind::Dir => ensure_dir(root, index, &mut m, path, id),
            EntryKind::File => {
                let fresh = index.get(path).is_none_or(|e| e.id != id);
                if fresh || changed.contains(&id) {
                    match content_of(id) {
                        Some(content) => write_file(root, index, &mut m, path, id, content)
                            .map(|prepared| pending.extend(prepared)),
                        None => Ok(()),
                    }
                } else {
                    Ok(())
                }
            }
        };
        if let Err(err) = result {
            m.errors.push((path.clone(), id, err));
        }
        if let Some(e) = index.get(path) {
            where_is.insert(e.id, path.clone());
        }
        if pending.len() >= WRITE_BATCH {
            swap_in_batch(index, &mut m, &mut pending, journal);
        }
    }
    swap_in_batch(index, &mut m, &mut pending, journal);
    m
}

/// A file write checked against the disk, waiting for its batch: its content goes to a
/// temp file next to the target, then its intent is committed, then the swap.
struct Prepared {
    path: String,
    id: DocId,
    dir: Dir,
    name: String,
    temp: Temp,
    expected: Option<Stat>,
    /// Where the old file goes instead of being removed (a losing binary version).
    keep: Option<(Dir, String)>,
    /// What the index holds for the target now.
    old: Option<IndexEntry>,
    /// The row once the new content is in (its `stat` is the temp file's).
    new: IndexEntry,
}

/// A prepared write's temp file.
enum Temp {
    /// Text, written with the rest of the batch (on every core: creating and syncing
    /// thousands of small files is most of a join's time in the kernel).
    Text { bytes: String, mode: Option<u32> },
    /// Written already (a binary file's content is streamed from its blob at once).
    Written(PreparedTemp),
}

/// Writes the batch's text temp files, on up to [`WRITE_THREADS`] threads; a write that
/// fails is reported and leaves the batch.
fn write_batch_temps(batch: Vec<Prepared>, m: &mut Materialized) -> Vec<(Prepared, PreparedTemp)> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(WRITE_THREADS);
    let write = |p: &Prepared| match &p.temp {
        Temp::Text { bytes, mode } => write_temp(&p.dir, Source::Bytes(bytes.as_bytes()), *mode),
        Temp::Written(t) => Ok(t.clone()),
    };
    let texts = batch.iter().filter(|p| matches!(p.temp, Temp::Text { .. })).count();
    let written: Vec<io::Result<PreparedTemp>> = if threads < 2 || texts < 2 {
        batch.iter().map(write).collect()
    } else {
        let numbered: Vec<(usize, &Prepared)> = batch.iter().enumerate().collect();
        let mut slots: Vec<Option<io::Result<PreparedTemp>>> = (0..batch.len()).map(|_| None).collect();
        for (i, r) in on_every_core(&numbered, threads, |(i, p)| Some((*i, write(p)))) {
            slots[i] = Some(r);
        }
        // A thread that panicked left its items without a result: they are not written.
        slots
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(io::Error::other("its writer thread failed"))))
            .collect()
    };
    let mut out = Vec::with_capacity(batch.len());
    for (p, temp) in batch.into_iter().zip(written) {
        match temp {
            Ok(temp) => out.push((p, temp)),
            Err(err) => m.errors.push((p.path, p.id, err)),
        }
    }
    out
}

/// Commits the intents of `pending` in one transaction, then swaps each file in (steps 4
/// and 5 of the module doc) and records its row.
fn swap_in_batch(
    index: &mut Index,
    m: &mut Materialized,
    pending: &mut Vec<Prepared>,
    journal: &mut Journal<'_>,
) {
    if pending.is_empty() {
        return;
    }
    let batch = write_batch_temps(std::mem::take(pending), m);
    // Touched from here on: the rows persisted after the pass clear the intents.
    m.touched.extend(batch.iter().map(|(p, _)| p.path.clone()));
    // The index row is durable with the write: committed as an intent before the rename,
    // settled by what the disk holds if the process stops before the row itself is.
    let intents: Vec<(String, WriteIntent)> = batch
        .iter()
        .map(|(p, temp)| {
            let new = IndexEntry { stat: temp.stat, racy: temp.stat.is_recent(), ..p.new.clone() };
            let intent = WriteIntent {
                old: p.old.clone(),
                new,
                temp: crate::scan::join(parent_of(&p.path), &temp.name),
            };
            (p.path.clone(), intent)
        })
        .collect();
    if let Err(err) = journal(&intents) {
        for (p, temp) in batch {
            let _ = p.dir.unlink(&temp.name);
            m.errors.push((p.path, p.id, io::Error::new(err.kind(), err.to_string())));
        }
        return;
    }
    let mut swapped_in: HashMap<&str, &Dir> = HashMap::new();
    for (p, temp) in &batch {
        let keep = p.keep.as_ref().map(|(dir, name)| (dir, name.as_str()));
        match swap_temp(&p.dir, temp, &p.name, p.expected, keep) {
            Ok(Some(stat)) => {
                index.insert(p.path.clone(), IndexEntry { stat, racy: stat.is_recent(), ..p.new.clone() });
                if let Some((_, kept)) = &p.keep {
                    m.kept_versions.push((p.path.clone(), format!("{STATE_DIR}/{VERSIONS_DIR}/{kept}")));
                }
                swapped_in.insert(parent_of(&p.path), &p.dir);
            }
            Ok(None) => {
                m.local_first.insert(p.path.clone());
            }
            Err(err) => m.errors.push((p.path.clone(), p.id, err)),
        }
    }
    // Step 5's directory fsync, once per directory of the batch (before any row is
    // committed, like one per file).
    for dir in swapped_in.values() {
        dir.fsync();
    }
}

/// Whether everything under `dir` is skipped or never synced (names that may not reach
/// a peer), and so not teatime's to remove. A work list, not recursion: nesting can be
/// thousands deep.
fn holds_only_excluded(root: &Root, dir: &str, skip: &dyn Fn(&str, bool) -> bool) -> bool {
    let mut todo = vec![dir.to_string()];
    while let Some(rel) = todo.pop() {
        let Ok(entries) = root.dir(&rel).and_then(|d| d.entries()) else { return false };
        for (name, is_dir) in entries {
            let Some(name) = name.to_str().filter(|n| is_valid_name(n)) else { continue };
            let child = format!("{rel}/{name}");
            if skip(&child, is_dir) {
                continue;
            }
            if !is_dir {
                return false;
            }
            todo.push(child);
        }
    }
    true
}

/// Moves the entry at `from` to `to` on disk and in the index, first moving aside a
/// tracked entry that occupies `to` (it is moving elsewhere later in the same pass).
fn move_entry(
    root: &Root,
    index: &mut Index,
    where_is: &mut HashMap<DocId, String>,
    m: &mut Materialized,
    from: &str,
    to: &str,
) -> io::Result<()> {
    let (to_dir, to_name) = root.parent(to)?;
    match to_dir.metadata(to_name) {
        Ok(_) if index.contains_key(to) => {
            let aside = format!("{}/{TEMP_PREFIX}-mv.{:016x}", parent_of(to), rand::random::<u64>());
            let aside = aside.trim_start_matches('/').to_string();
            rename_in_index(root, index, where_is, m, to, &aside)?;
        }
        Ok(_) => {
            m.local_first.insert(to.to_string());
            return Ok(());
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match rename_in_index(root, index, where_is, m, from, to) {
        // Something appeared at `to` meanwhile: it is the user's, looked at first.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            m.local_first.insert(to.to_string());
            Ok(())
        }
        other => other,
    }
}

/// Renames `from` to `to` (never over an existing entry) and re-keys the index.
fn rename_in_index(
    root: &Root,
    index: &mut Index,
    where_is: &mut HashMap<DocId, String>,
    m: &mut Materialized,
    from: &str,
    to: &str,
) -> io::Result<()> {
    let (from_dir, from_name) = root.parent(from)?;
    let (to_dir, to_name) = root.parent(to)?;
    from_dir.rename(from_name, &to_dir, to_name, RenameFlags::NOREPLACE)?;
    to_dir.fsync();
    let old_keys: Vec<String> = index.keys().filter(|k| is_within(k, from)).cloned().collect();
    move_in_index(index, from, to);
    for k in old_keys {
        m.touched.insert(k.clone());
        let new = format!("{to}{}", &k[from.len()..]);
        if let Some(e) = index.get(&new) {
            where_is.insert(e.id, new.clone());
        }
        m.touched.insert(new);
    }
    Ok(())
}

fn ensure_dir(root: &Root, index: &mut Index, m: &mut Materialized, path: &str, id: DocId) -> io::Result<()> {
    if index.get(path).is_some_and(|e| e.id == id) {
        return Ok(());
    }
    let (dir, name) = root.parent(path)?;
    match dir.metadata(name) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            m.local_first.insert(path.to_string());
            return Ok(());
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => dir.mkdir(name, 0o777)?,
        Err(e) => return Err(e),
    }
    let stat = stat_of(&dir.metadata(name)?);
    index.insert(path.to_string(), IndexEntry::dir(id, stat));
    m.touched.insert(path.to_string());
    Ok(())
}

/// Writes the file's new content to a temp file (steps 1 to 3 of the module doc), or only
/// updates its row if the bytes are already there. `Some`: the swap waits for its intent.
fn write_file(
    root: &Root,
    index: &mut Index,
    m: &mut Materialized,
    path: &str,
    id: DocId,
    content: Content,
) -> io::Result<Option<Prepared>> {
    let (hash, heads, binary, losers) = match &content.body {
        Body::Text { text, heads } => {
            (*blake3::hash(text.as_bytes()).as_bytes(), heads.clone(), false, &[][..])
        }
        Body::Blob { hash, losers, .. } => (*hash, vec![], true, &losers[..]),
    };
    let recorded = index.get(path).filter(|e| e.id == id).cloned();
    let (dir, name) = root.parent(path)?;
    if let Some(e) = recorded.as_ref().filter(|e| e.hash == hash) {
        // Same bytes (e.g. a merge that only touched another file): only the base moves,
        // and perhaps the executable bit.
        let mut e = IndexEntry { heads, binary, ..e.clone() };
        if let Some(exec) = content.exec
            && e.stat.is_exec() != exec
        {
            e.stat = set_exec(&dir, name, &e.stat, exec)?;
        }
        if index.get(path) != Some(&e) {
            index.insert(path.to_string(), e);
            m.touched.insert(path.to_string());
        }
        return Ok(None);
    }
    if matches!(&content.body, Body::Blob { source: None, hash, .. } if *hash != *blake3::hash(b"").as_bytes())
    {
        return Ok(None); // not here yet: written once it has arrived
    }
    let mode = match dir.metadata(name) {
        Ok(meta) => {
            let unchanged =
                recorded.as_ref().is_some_and(|e| disk_entry(&meta).is_some_and(|d| d.stat == e.stat));
            if !unchanged {
                // Edited since we last looked, or not ours at all: ingest first.
                m.local_first.insert(path.to_string());
                return Ok(None);
            }
            Some(meta.permissions().mode())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let mode = match content.exec {
        Some(true) => Some(mode.unwrap_or(0o644) | (mode.unwrap_or(0o644) & 0o444) >> 2),
        Some(false) => Some(mode.unwrap_or(0o644) & !0o111),
        None => mode,
    };
    let expected = recorded.as_ref().map(|e| e.stat);
    // The file holds a version that lost a concurrent binary write: keep it aside.
    let keep = match recorded.as_ref().filter(|e| losers.contains(&e.hash)) {
        Some(e) => {
            let versions = root.create_dir_all(&format!("{STATE_DIR}/{VERSIONS_DIR}"))?;
            let stem = truncated(name, KEPT_NAME_BYTES);
            Some((versions, format!("{stem}.{}", &crate::blob::hex(&e.hash)[..12])))
        }
        None => None,
    };
    let new = if binary {
        IndexEntry::binary(id, Stat::default(), hash)
    } else {
        IndexEntry::file(id, Stat::default(), hash, heads)
    };
    let temp = match content.body {
        Body::Text { text, .. } => Temp::Text { bytes: text, mode },
        Body::Blob { source: Some(f), .. } => Temp::Written(write_temp(&dir, Source::File(&f), mode)?),
        Body::Blob { .. } => Temp::Written(write_temp(&dir, Source::Bytes(b""), mode)?),
    };
    Ok(Some(Prepared {
        path: path.to_string(),
        id,
        name: name.to_string(),
        dir,
        temp,
        expected,
        keep,
        old: recorded,
        new,
    }))
}

/// The longest prefix of `name` within `max` bytes, cut at a character boundary.
fn truncated(name: &str, max: usize) -> &str {
    let mut end = name.len().min(max);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// Changes only the executable bits of the file `name` in `dir`, if it is still the one
/// teatime recorded as `recorded`.
fn set_exec(dir: &Dir, name: &str, recorded: &Stat, exec: bool) -> io::Result<Stat> {
    let changed = dir.set_mode(name, |meta| {
        if disk_entry(meta).is_none_or(|d| d.stat != *recorded) {
            return None; // changed meanwhile: the next scan records it first
        }
        let mode = meta.permissions().mode();
        Some(if exec { mode | (mode & 0o444) >> 2 } else { mode & !0o111 })
    })?;
    Ok(changed.map_or(*recorded, |meta| stat_of(&meta)))
}

/// What a write puts in the file.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// These bytes.
    Bytes(&'a [u8]),
    /// A copy of this open file (streamed: it may be larger than memory).
    File(&'a File),
}

/// A temp file holding new content, durable, not yet renamed into place.
#[derive(Clone)]
pub struct PreparedTemp {
    /// Its name in the directory.
    pub name: String,
    /// Its [`Stat`] once written and synced.
    pub stat: Stat,
}

/// Steps 2 and 3 of the module doc: the content in a fresh temp file in `dir`, synced. On
/// error nothing is left behind.
pub fn write_temp(dir: &Dir, source: Source<'_>, mode: Option<u32>) -> io::Result<PreparedTemp> {
    let (tmp, mut f) = dir.create_temp(mode.unwrap_or(0o644))?;
    let written = (|| {
        match source {
            Source::Bytes(bytes) => f.write_all(bytes)?,
            Source::File(mut from) => {
                io::copy(&mut from, &mut f)?;
            }
        }
        if let Some(mode) = mode {
            f.set_permissions(fs::Permissions::from_mode(mode & 0o777))?;
        }
        f.sync_all()?;
        Ok(stat_of(&f.metadata()?))
    })();
    match written {
        Ok(stat) => Ok(PreparedTemp { name: tmp, stat }),
        Err(e) => {
            let _ = dir.unlink(&tmp);
            Err(e)
        }
    }
}

/// Steps 4 and 5 of the module doc, for a temp file [`write_temp`] made in `dir` and the
/// file `target` there. `expected` is what the target must still be (`None`: it must not
/// exist). The swap is a `RENAME_EXCHANGE` (or `RENAME_NOREPLACE` for a new file), and the
/// file swapped out is checked afterwards: if the user wrote to it between our check and
/// the swap, it is swapped back and `Ok(None)` says "ingest the local edit first". The old
/// file is moved to `keep_old` if given. The temp file is gone afterwards; the caller
/// fsyncs `dir` (once for many swaps). Returns the new file's [`Stat`].
pub fn swap_temp(
    dir: &Dir,
    temp: &PreparedTemp,
    target: &str,
    expected: Option<Stat>,
    keep_old: Option<(&Dir, &str)>,
) -> io::Result<Option<Stat>> {
    let tmp = temp.name.as_str();
    let outcome = match expected {
        None => match dir.rename(tmp, dir, target, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(true),
            // Someone created the file meanwhile: it is theirs, not ours to replace.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        },
        Some(expected) => (|| {
            dir.rename(tmp, dir, target, RenameFlags::EXCHANGE)?;
            // `tmp` now holds what was at the target. Renaming changed its ctime, so
            // compare what a writer changes: inode, size, mtime.
            let swapped = dir.metadata(tmp).map(|m| stat_of(&m));
            let same = swapped.as_ref().is_ok_and(|s| {
                s.ino == expected.ino && s.size == expected.size && s.mtime_ns == expected.mtime_ns
            });
            if !same {
                dir.rename(tmp, dir, target, RenameFlags::EXCHANGE)?;
            }
            Ok(same)
        })(),
    };
    // `tmp` holds what the target held before (or our copy, if it did not go in): kept
    // if asked, else removed.
    let kept = match (&outcome, keep_old) {
        (Ok(true), Some((keep_dir, keep_name))) if expected.is_some() => {
            dir.rename(tmp, keep_dir, keep_name, RenameFlags::empty())
        }
        _ => dir.unlink(tmp),
    };
    if !outcome? {
        return Ok(None);
    }
    if keep_old.is_some() {
        kept?;
    }
    Ok(Some(stat_of(&dir.metadata(target)?)))
}

fn remove_file_if_unchanged(root: &Root, path: &str, recorded: &Stat) -> io::Result<bool> {
    let (dir, name) = match root.parent(path) {
        Ok(found) => found,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    match dir.metadata(name) {
        Ok(meta) if disk_entry(&meta).is_some_and(|d| d.stat == *recorded) => {
            dir.unlink(name)?;
            Ok(true)
        }
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

/// Removes temp files a crash left behind (reserved prefix), anywhere in the folder.
pub fn remove_stale_temp_files(root: &Root) {
    // A work list, not recursion: nesting can be thousands deep.
    let mut todo = vec![String::new()];
    while let Some(rel) = todo.pop() {
        let Ok(dir) = root.dir(&rel) else { continue };
        let Ok(entries) = dir.entries() else { continue };
        for (name, is_dir) in entries {
            let Some(name) = name.to_str() else { continue };
            // Only write temps: an entry moved aside (`-mv.`) is tracked in the index and
            // is put in place by the next materialisation.
            if name.starts_with(&format!("{TEMP_PREFIX}.")) && !is_dir {
                if dir.metadata(name).is_ok_and(|m| m.is_file()) {
                    let _ = dir.unlink(name);
                }
            } else if is_dir && name != STATE_DIR {
                todo.push(crate::scan::join(&rel, name));
            }
        }
    }
}

/// Settles the file writes a stopped process left under way (see [`WriteIntent`]): the
/// disk says whether each rename happened.
/// - The target holds the temp file's inode: it got the write, its row is the new one
///   (with the temp file's stat, which the rename's ctime already differs from, so the
///   scan reads the file again and a user edit made since is recorded against the version
///   written).
/// - The temp file is still there, with its inode: the rename never happened, the old row
///   stands.
/// - Neither, and the target is gone: the rename happened and the user moved or deleted
///   the file while the process was down. The new row lets the scan find it by inode
///   wherever it went (the old row would make it a new file: a second copy).
/// - Anything else (another file at the target) keeps the old row: at worst a peer's
///   change is merged in twice, never taken as seen by a user who may not have had it.
///
/// Returns every path concerned (persist their rows: that also clears the intents).
pub fn resolve_intents(
    root: &Root,
    index: &mut Index,
    intents: Vec<(String, WriteIntent)>,
) -> BTreeSet<String> {
    let mut touched = BTreeSet::new();
    for (path, intent) in intents {
        let file_at = |p: &str| {
            root.parent(p)
                .and_then(|(dir, name)| dir.metadata(name))
                .ok()
                .filter(|m| m.is_file())
                .map(|m| stat_of(&m).ino)
        };
        let ino = intent.new.stat.ino;
        let written = match (file_at(&path), file_at(&intent.temp)) {
            (Some(target), _) => target == ino,
            (None, temp) => temp != Some(ino),
        };
        let row = if written { Some(intent.new) } else { intent.old };
        match row {
            Some(row) => index.insert(path.clone(), row),
            None => index.remove(&path),
        };
        touched.insert(path);
    }
    touched
}
