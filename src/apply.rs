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
//! Nothing is ever deleted or overwritten unless the index says teatime put it there and
//! it is unchanged since; untracked files at a target path are left alone and reported, so
//! the caller ingests them (and the tree gives one of the two a conflict name).
//! Paths come from [`Tree`], whose names are validated; every parent is checked to be a
//! real directory (not a symlink) before anything is written inside it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use teatime_crdt::path::{STATE_DIR, TEMP_PREFIX};
use teatime_crdt::{DocId, EntryKind, Tree};

use crate::scan::{disk_entry, is_within, move_in_index, parent_of, stat_of};
use crate::store::{Index, IndexEntry, Stat};

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
        /// A verified copy, if it has arrived.
        source: Option<PathBuf>,
        /// Concurrent versions that lost the race: a file holding one of them is kept
        /// aside, not overwritten.
        losers: Vec<[u8; 32]>,
    },
}

/// Where the losing versions of binary races are kept, inside the state directory.
pub const VERSIONS_DIR: &str = "versions";

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
    /// Files that held a losing binary version, and where that version was kept.
    pub kept_versions: Vec<(String, PathBuf)>,
}

/// Makes disk match `tree`, leaving alone paths `skip` names (excluded on this peer, or
/// changed locally and held back). `content_of` says what a file holds (`None`: its document
/// has not arrived yet); files are rewritten only when new at their path or when they
/// are in `changed`.
pub fn materialize(
    root: &Path,
    tree: &Tree,
    skip: &dyn Fn(&str, bool) -> bool,
    index: &mut Index,
    changed: &HashSet<DocId>,
    content_of: &mut dyn FnMut(DocId) -> Option<Content>,
) -> Materialized {
    let mut m = Materialized::default();

    // 1. Deletions: indexed entries no longer shown. Files first, then directories deepest first.
    let doomed: Vec<(String, IndexEntry)> = index
        .iter()
        .filter(|(_, e)| tree.path_of(e.id).is_none())
        .map(|(p, e)| (p.clone(), e.clone()))
        .collect();
    for (path, e) in &doomed {
        // Excluded here (ignored, untracked): never deleted because of a peer; the entry
        // is simply forgotten.
        if skip(path, e.kind == EntryKind::Dir) {
            index.remove(path);
            m.touched.insert(path.clone());
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
        match fs::remove_dir(root.join(path)) {
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
    let mut where_is: HashMap<DocId, String> = index.iter().map(|(p, e)| (e.id, p.clone())).collect();
    for (path, &(id, kind)) in &tree.by_path {
        if skip(path, kind == EntryKind::Dir) {
            continue;
        }
        if let Some(current) = where_is.get(&id).cloned()
            && current != *path
            && let Err(err) = move_entry(root, index, &mut where_is, &mut m, &current, path)
        {
            m.errors.push((path.clone(), id, err));
            continue;
        }
        let result = match kind {
            EntryKind::Dir => ensure_dir(root, index, &mut m, path, id),
            EntryKind::File => {
                let fresh = index.get(path).is_none_or(|e| e.id != id);
                if fresh || changed.contains(&id) {
                    match content_of(id) {
                        Some(content) => write_file(root, index, &mut m, path, id, content),
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
    }
    m
}

/// Whether everything under `dir` is skipped (and so not teatime's to remove).
fn holds_only_excluded(root: &Path, dir: &str, skip: &dyn Fn(&str, bool) -> bool) -> bool {
    let Ok(rd) = fs::read_dir(root.join(dir)) else { return false };
    rd.flatten().all(|d| {
        let Some(name) = d.file_name().to_str().map(str::to_string) else { return false };
        let child = format!("{dir}/{name}");
        let is_dir = d.file_type().is_ok_and(|t| t.is_dir());
        skip(&child, is_dir) || (is_dir && holds_only_excluded(root, &child, skip))
    })
}

/// Moves the entry at `from` to `to` on disk and in the index, first moving aside a
/// tracked entry that occupies `to` (it is moving elsewhere later in the same pass).
fn move_entry(
    root: &Path,
    index: &mut Index,
    where_is: &mut HashMap<DocId, String>,
    m: &mut Materialized,
    from: &str,
    to: &str,
) -> io::Result<()> {
    check_parents(root, to)?;
    if fs::symlink_metadata(root.join(to)).is_ok() {
        if index.contains_key(to) {
            let aside = format!("{}/{TEMP_PREFIX}-mv.{:016x}", parent_of(to), rand::random::<u64>());
            let aside = aside.trim_start_matches('/').to_string();
            rename_in_index(root, index, where_is, m, to, &aside)?;
        } else {
            m.local_first.insert(to.to_string());
            return Ok(());
        }
    }
    rename_in_index(root, index, where_is, m, from, to)
}

fn rename_in_index(
    root: &Path,
    index: &mut Index,
    where_is: &mut HashMap<DocId, String>,
    m: &mut Materialized,
    from: &str,
    to: &str,
) -> io::Result<()> {
    fs::rename(root.join(from), root.join(to))?;
    fsync_dir(&root.join(parent_of(to)));
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

fn ensure_dir(root: &Path, index: &mut Index, m: &mut Materialized, path: &str, id: DocId) -> io::Result<()> {
    if index.get(path).is_some_and(|e| e.id == id) {
        return Ok(());
    }
    check_parents(root, path)?;
    let full = root.join(path);
    match fs::symlink_metadata(&full) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            m.local_first.insert(path.to_string());
            return Ok(());
        }
        Err(_) => fs::create_dir(&full)?,
    }
    let stat = stat_of(&fs::symlink_metadata(&full)?);
    index.insert(path.to_string(), IndexEntry::dir(id, stat));
    m.touched.insert(path.to_string());
    Ok(())
}

fn write_file(
    root: &Path,
    index: &mut Index,
    m: &mut Materialized,
    path: &str,
    id: DocId,
    content: Content,
) -> io::Result<()> {
    let (hash, heads, binary, losers) = match &content.body {
        Body::Text { text, heads } => {
            (*blake3::hash(text.as_bytes()).as_bytes(), heads.clone(), false, &[][..])
        }
        Body::Blob { hash, losers, .. } => (*hash, vec![], true, &losers[..]),
    };
    let recorded = index.get(path).filter(|e| e.id == id).cloned();
    if let Some(e) = recorded.as_ref().filter(|e| e.hash == hash) {
        // Same bytes (e.g. a merge that only touched another file): only the base moves,
        // and perhaps the executable bit.
        let mut e = IndexEntry { heads, binary, ..e.clone() };
        if let Some(exec) = content.exec
            && e.stat.is_exec() != exec
        {
            e.stat = set_exec(&root.join(path), &e.stat, exec)?;
        }
        if index.get(path) != Some(&e) {
            index.insert(path.to_string(), e);
            m.touched.insert(path.to_string());
        }
        return Ok(());
    }
    let source = match &content.body {
        Body::Text { text, .. } => Source::Bytes(text.as_bytes()),
        Body::Blob { source: Some(p), .. } => Source::File(p),
        Body::Blob { hash, .. } if *hash == *blake3::hash(b"").as_bytes() => Source::Bytes(b""),
        Body::Blob { .. } => return Ok(()), // not here yet: written once it has arrived
    };
    check_parents(root, path)?;
    let full = root.join(path);
    let mode = match fs::symlink_metadata(&full) {
        Ok(meta) => {
            let unchanged =
                recorded.as_ref().is_some_and(|e| disk_entry(&meta).is_some_and(|d| d.stat == e.stat));
            if !unchanged {
                // Edited since we last looked, or not ours at all: ingest first.
                m.local_first.insert(path.to_string());
                return Ok(());
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
    let keep = recorded.as_ref().filter(|e| losers.contains(&e.hash)).map(|e| {
        let name = crate::scan::name_of(path);
        root.join(STATE_DIR).join(VERSIONS_DIR).join(format!("{name}.{}", &crate::blob::hex(&e.hash)[..12]))
    });
    match write_atomic(&full, source, mode, expected, keep.as_deref())? {
        Some(stat) => {
            let entry = if binary {
                IndexEntry::binary(id, stat, hash)
            } else {
                IndexEntry::file(id, stat, hash, heads)
            };
            index.insert(path.to_string(), entry);
            m.touched.insert(path.to_string());
            if let Some(kept) = keep {
                m.kept_versions.push((path.to_string(), kept));
            }
        }
        None => {
            m.local_first.insert(path.to_string());
        }
    }
    Ok(())
}

/// Changes only the executable bits of a file teatime recorded as `recorded` (if it is
/// still that file).
fn set_exec(full: &Path, recorded: &Stat, exec: bool) -> io::Result<Stat> {
    let meta = fs::symlink_metadata(full)?;
    if disk_entry(&meta).is_none_or(|d| d.stat != *recorded) {
        return Ok(*recorded); // changed meanwhile: the next scan records it first
    }
    let mode = meta.permissions().mode();
    let mode = if exec { mode | (mode & 0o444) >> 2 } else { mode & !0o111 };
    fs::set_permissions(full, fs::Permissions::from_mode(mode & 0o7777))?;
    Ok(stat_of(&fs::symlink_metadata(full)?))
}

/// What a write puts in the file.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// These bytes.
    Bytes(&'a [u8]),
    /// A copy of this file (streamed: it may be larger than memory).
    File(&'a Path),
}

/// Steps 2 to 5 of the module doc. `expected` is what the target must still be
/// (`None`: it must not exist). The swap is a `RENAME_EXCHANGE` (or `RENAME_NOREPLACE`
/// for a new file), and the file swapped out is checked afterwards: if the user wrote to
/// it between our check and the swap, it is swapped back and `Ok(None)` says "ingest the
/// local edit first". Returns the new file's [`Stat`].
pub fn write_atomic(
    target: &Path,
    source: Source<'_>,
    mode: Option<u32>,
    expected: Option<Stat>,
    keep_old: Option<&Path>,
) -> io::Result<Option<Stat>> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    let dir = target.parent().ok_or_else(|| io::Error::other("target has no parent"))?;
    let tmp = dir.join(format!("{TEMP_PREFIX}.{:016x}", rand::random::<u64>()));
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(mode.unwrap_or(0o644) & 0o777)
            .open(&tmp)?;
        match source {
            Source::Bytes(bytes) => f.write_all(bytes)?,
            Source::File(from) => {
                io::copy(&mut fs::File::open(from)?, &mut f)?;
            }
        }
        if let Some(mode) = mode {
            f.set_permissions(fs::Permissions::from_mode(mode & 0o777))?;
        }
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let outcome = match expected {
        None => match renameat_with(CWD, &tmp, CWD, target, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(true),
            // Someone created the file meanwhile: it is theirs, not ours to replace.
            Err(rustix::io::Errno::EXIST) => Ok(false),
            Err(e) => Err(io::Error::from(e)),
        },
        Some(expected) => match renameat_with(CWD, &tmp, CWD, target, RenameFlags::EXCHANGE) {
            Ok(()) => {
                // `tmp` now holds what was at the target. Renaming changed its ctime, so
                // compare what a writer changes: inode, size, mtime.
                let swapped = fs::symlink_metadata(&tmp).map(|m| stat_of(&m));
                let same = swapped.as_ref().is_ok_and(|s| {
                    s.ino == expected.ino && s.size == expected.size && s.mtime_ns == expected.mtime_ns
                });
                if same {
                    Ok(true)
                } else {
                    renameat_with(CWD, &tmp, CWD, target, RenameFlags::EXCHANGE).map_err(io::Error::from)?;
                    Ok(false)
                }
            }
            Err(e) => Err(io::Error::from(e)),
        },
    };
    let outcome = outcome?;
    // `tmp` holds what the target held before: kept if asked, else removed.
    match keep_old.filter(|_| outcome && expected.is_some()) {
        Some(keep) => {
            if let Some(dir) = keep.parent() {
                fs::create_dir_all(dir)?;
            }
            fs::rename(&tmp, keep)?;
        }
        None => {
            let _ = fs::remove_file(&tmp);
        }
    }
    if !outcome {
        return Ok(None);
    }
    fsync_dir(dir);
    Ok(Some(stat_of(&fs::symlink_metadata(target)?)))
}

fn remove_file_if_unchanged(root: &Path, path: &str, recorded: &Stat) -> io::Result<bool> {
    let full = root.join(path);
    match fs::symlink_metadata(&full) {
        Ok(meta) => {
            if disk_entry(&meta).is_some_and(|d| d.stat == *recorded) {
                check_parents(root, path)?;
                fs::remove_file(&full)?;
                Ok(true)
            } else {
                Ok(false)
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

/// Every ancestor of `rel` inside the root must be a real directory: never act through a
/// symlink a peer or a local process planted.
fn check_parents(root: &Path, rel: &str) -> io::Result<()> {
    let mut cur = root.to_path_buf();
    let parent = parent_of(rel);
    if parent.is_empty() {
        return Ok(());
    }
    for comp in parent.split('/') {
        cur.push(comp);
        let meta = fs::symlink_metadata(&cur)?;
        if !meta.file_type().is_dir() {
            return Err(io::Error::other(format!("{} is not a directory", cur.display())));
        }
    }
    Ok(())
}

fn fsync_dir(dir: &Path) {
    // Best effort: some file systems refuse fsync on directories.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Removes temp files a crash left behind (reserved prefix), anywhere in the folder.
pub fn remove_stale_temp_files(root: &Path) {
    fn walk(dir: &Path) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for dent in rd.flatten() {
            let name = dent.file_name();
            let Ok(ft) = dent.file_type() else { continue };
            // Only write temps: an entry moved aside (`-mv.`) is tracked in the index and
            // is put in place by the next materialisation.
            if name.to_string_lossy().starts_with(&format!("{TEMP_PREFIX}.")) && ft.is_file() {
                let _ = fs::remove_file(dent.path());
            } else if ft.is_dir() && name != teatime_crdt::path::STATE_DIR {
                walk(&dent.path());
            }
        }
    }
    walk(root);
}
