//! `teatime check DIR`: verifies a stopped folder's saved state without changing it.
//!
//! The database is copied to a private temp dir and everything is read from the copy, so
//! the check never writes to the folder (after a crash redb must repair the file before it
//! can be read; the copy takes that repair, the folder's own file gets it at the next
//! start). Checked: redb's integrity check (page checksums), every document loads with
//! Automerge's head verification, every index row names an entry of the folder document
//! of its kind and, for a text file, a document holding the heads the row names.
//! Leftover temp files in the folder are reported as notes: the next start removes them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use automerge::{AutoCommit, ChangeHash, LoadOptions, VerificationMode};
use serde::Serialize;
use teatime_crdt::creation::Creation;
use teatime_crdt::path::{STATE_DIR, TEMP_PREFIX};
use teatime_crdt::{DocId, EntryKind, FileDoc, FolderDoc};

use crate::store::Store;

const META_FOLDER: &str = "folder_id";

/// What a check found. `problems` are damage; `notes` are normal after a crash.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub documents: usize,
    pub index_rows: usize,
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

/// The folder is not one teatime keeps (no state): unusable input, not damage.
#[derive(Debug, thiserror::Error)]
#[error("{} is not a teatime folder (no {STATE_DIR}/state.redb)", .0.display())]
pub struct NotAFolder(pub PathBuf);

/// A private directory removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Checks the folder at `dir`; fails only when the check cannot run at all.
pub fn check(dir: &Path) -> Result<Report> {
    let state = dir.join(STATE_DIR).join("state.redb");
    if !state.is_file() {
        return Err(NotAFolder(dir.to_path_buf()).into());
    }
    let mut report = Report::default();
    let scratch = Scratch(std::env::temp_dir().join(format!(
        "teatime-check-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    )));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).create(&scratch.0).context("creating a temp dir")?;
    }
    let copy = scratch.0.join("state.redb");
    match redb::ReadOnlyDatabase::open(&state) {
        // Held open while copying: no teatime process can start writing meanwhile.
        Ok(db) => {
            std::fs::copy(&state, &copy).context("copying the state")?;
            drop(db);
        }
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            bail!("{} is in use by a running teatime process: stop it, then check", dir.display())
        }
        Err(redb::DatabaseError::RepairAborted) => {
            report.notes.push(
                "the state was not closed cleanly (a crash or kill): checked a repaired copy; \
                 the folder's own file is repaired at the next start"
                    .into(),
            );
            std::fs::copy(&state, &copy).context("copying the state")?;
        }
        Err(e) => {
            report.problems.push(format!("the state does not open: {e}"));
            return Ok(report);
        }
    }
    let mut store = match Store::open(&copy) {
        Ok(store) => store,
        Err(e) => {
            report.problems.push(format!("the state does not open: {e:#}"));
            return Ok(report);
        }
    };
    match store.check_integrity() {
        Ok(true) => {}
        Ok(false) => report.problems.push("redb's integrity check failed (checksums)".into()),
        Err(e) => report.problems.push(format!("redb's integrity check could not run: {e:#}")),
    }
    let folder_id = store
        .meta(META_FOLDER)?
        .map(|bytes| bytes.as_slice().try_into().map(DocId))
        .transpose()
        .map_err(|_| anyhow::anyhow!("the stored folder id is malformed"))?;
    let (loaded, docs) =
        match store.load(folder_id.unwrap_or(DocId([0; 16]))).and_then(|l| Ok((l, store.all_docs()?))) {
            Ok(loaded) => loaded,
            Err(e) => {
                report.problems.push(format!("the state does not read: {e:#}"));
                return Ok(report);
            }
        };

    report.documents = docs.len();
    report.index_rows = loaded.index.len();
    let mut folder = None;
    let mut files = BTreeMap::new();
    for (id, stored) in docs {
        // A text document holding only its first change: reading it checks its encoding
        // and hash (see `Creation`), without Automerge.
        if Some(id) != folder_id
            && stored.changes.is_empty()
            && let Some(first) = Creation::parse(&stored.snapshot)
        {
            match loaded.heads.get(&id) {
                Some(heads) if *heads == [first.hash.0] => {}
                Some(_) => {
                    report.problems.push(format!("document {id}: the recorded heads are not the document's"))
                }
                None => report.problems.push(format!("document {id} has no recorded heads")),
            }
            let actor = first.actor.clone();
            files.insert(id, FileDoc::from_creation(first, actor));
            continue;
        }
        let mut doc = match load_verified(&stored.snapshot, &stored.changes) {
            Ok(doc) => doc,
            Err(e) => {
                report.problems.push(format!("document {id} does not load: {e:#}"));
                continue;
            }
        };
        match loaded.heads.get(&id) {
            Some(heads) if doc_heads_are(&mut doc, heads) => {}
            Some(_) => {
                report.problems.push(format!("document {id}: the recorded heads are not the document's"))
            }
            None => report.problems.push(format!("document {id} has no recorded heads")),
        }
        if Some(id) == folder_id {
            folder = Some(FolderDoc::from_doc(doc));
        } else {
            files.insert(id, FileDoc::from_doc(doc));
        }
    }
    for (id, file) in &mut files {
        if !file.has_waiting_changes() {
            continue;
        }
        let waiting = file.doc_mut().get_missing_deps(&[]);
        if !waiting.is_empty() {
            report.notes.push(format!("document {id} holds changes waiting for {} missing", waiting.len()));
        }
    }

    let Some(folder) = folder else {
        match folder_id {
            None => report.notes.push("no folder yet (a join that has not received it)".into()),
            Some(_) if loaded.index.is_empty() => {
                report.notes.push("the folder document has not arrived yet".into())
            }
            Some(id) => report.problems.push(format!("the folder document {id} is missing")),
        }
        return Ok(report);
    };
    let entries = folder.entries();
    for (path, row) in &loaded.index {
        let Some(entry) = entries.get(&row.id) else {
            report
                .problems
                .push(format!("index row {path:?} names {}, which the folder does not hold", row.id));
            continue;
        };
        if entry.kind != row.kind {
            report.problems.push(format!(
                "index row {path:?} is a {:?}, the folder's entry a {:?}",
                row.kind, entry.kind
            ));
            continue;
        }
        if row.kind != EntryKind::File || row.binary {
            continue;
        }
        let Some(file) = files.get_mut(&row.id) else {
            report.problems.push(format!("index row {path:?} names document {}, which is missing", row.id));
            continue;
        };
        if !file.is_ready() {
            report.problems.push(format!("index row {path:?}: document {} has no text", row.id));
            continue;
        }
        let base: Vec<ChangeHash> = row.heads.iter().map(|h| ChangeHash(*h)).collect();
        if file.text_at(&base).is_none() {
            report.problems.push(format!(
                "index row {path:?}: its base (the version on disk) is not in document {}",
                row.id
            ));
        }
    }
    let temps = temp_files(dir);
    if !temps.is_empty() {
        report.notes.push(format!(
            "{} temp file(s) left by an interrupted write or move, removed or put in place at the next start: {}",
            temps.len(),
            temps.iter().map(|t| format!("{t:?}")).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(report)
}

/// A stored document (snapshot, then its incremental chunks), heads verified.
/// Whether `doc`'s heads are `recorded` (in any order).
fn doc_heads_are(doc: &mut AutoCommit, recorded: &[[u8; 32]]) -> bool {
    let mut ours: Vec<[u8; 32]> = doc.get_heads().iter().map(|h| h.0).collect();
    let mut recorded = recorded.to_vec();
    ours.sort_unstable();
    recorded.sort_unstable();
    ours == recorded
}

fn load_verified(snapshot: &[u8], changes: &[Vec<u8>]) -> Result<AutoCommit> {
    let options = LoadOptions::new().verification_mode(VerificationMode::Check);
    let mut doc = AutoCommit::load_with_options(snapshot, options).context("snapshot")?;
    for (n, chunk) in changes.iter().enumerate() {
        doc.load_incremental(chunk).with_context(|| format!("change chunk {n}"))?;
    }
    Ok(doc)
}

/// Paths of teatime's write temp files under `dir` (the state directory left out).
pub fn temp_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, rel)) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let sub = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() && !(rel.is_empty() && name == STATE_DIR) {
                todo.push((entry.path(), sub));
            } else if kind.is_file() && name.starts_with(TEMP_PREFIX) {
                out.push(sub);
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use automerge::ActorId;
    use teatime_crdt::Stamp;

    use super::*;
    use crate::store::{Batch, IndexEntry, Stat};

    /// A folder whose state holds a folder document with one file entry, its document,
    /// and the index rows given.
    fn folder(rows: impl FnOnce(DocId, Vec<[u8; 32]>) -> Vec<(String, IndexEntry)>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(STATE_DIR)).unwrap();
        let mut store = Store::open(&dir.path().join(STATE_DIR).join("state.redb")).unwrap();
        let (folder_id, file_id) = (DocId([1; 16]), DocId([2; 16]));
        let actor = ActorId::from(&[7u8; 8][..]);
        let mut folder = FolderDoc::create(actor.clone(), "owner", "o").unwrap();
        let stamp = Stamp { ms: 1, by: "owner".into() };
        folder.create_entry(file_id, None, "a.txt", EntryKind::File, &stamp).unwrap();
        folder.commit();
        let mut file = FileDoc::create(actor, "hello\n", 1).unwrap();
        let heads = file.heads().iter().map(|h| h.0).collect();
        store.set_meta(&[(META_FOLDER, folder_id.0.as_slice())]).unwrap();
        store
            .commit(Batch {
                snapshots: vec![(folder_id, folder.doc_mut().save()), (file_id, file.doc_mut().save())],
                index: rows(file_id, heads).into_iter().map(|(p, e)| (p, Some(e))).collect(),
                ..Default::default()
            })
            .unwrap();
        dir
    }

    #[test]
    fn a_sound_state_passes() {
        let dir =
            folder(|id, heads| vec![("a.txt".into(), IndexEntry::file(id, Stat::default(), [0; 32], heads))]);
        let report = check(dir.path()).unwrap();
        assert!(report.problems.is_empty(), "{report:?}");
        assert_eq!((report.documents, report.index_rows), (2, 1));
    }

    #[test]
    fn index_rows_the_documents_do_not_back_are_problems() {
        let dir = folder(|id, _| {
            vec![
                ("a.txt".into(), IndexEntry::file(id, Stat::default(), [0; 32], vec![[9; 32]])),
                ("ghost.txt".into(), IndexEntry::file(DocId([3; 16]), Stat::default(), [0; 32], vec![])),
            ]
        });
        let report = check(dir.path()).unwrap();
        assert_eq!(report.problems.len(), 2, "{report:?}");
        assert!(report.problems[0].contains("its base"), "{report:?}");
        assert!(report.problems[1].contains("which the folder does not hold"), "{report:?}");
    }

    #[test]
    fn a_damaged_database_is_a_problem_and_the_original_is_untouched() {
        let dir = folder(|_, _| vec![]);
        let path = dir.path().join(STATE_DIR).join("state.redb");
        let mut bytes = std::fs::read(&path).unwrap();
        // One bit of the file's text, inside a stored document: only checksums can tell.
        let at = bytes.windows(6).position(|w| w == b"hello\n").expect("the text is stored as is");
        bytes[at] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let report = check(dir.path()).unwrap();
        assert!(!report.problems.is_empty(), "damage went unnoticed");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "check wrote to the folder's state");
    }

    #[test]
    fn a_plain_directory_is_not_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check(dir.path()).unwrap_err().downcast_ref::<NotAFolder>().is_some());
    }
}
