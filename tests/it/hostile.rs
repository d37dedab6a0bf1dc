//! A hostile member (T4, T8, T9 in RELIABILITY.md): a peer that holds the folder's secret
//! gives folder entries every path of `fixtures/hostile-paths.txt`, each as one name and as
//! a chain of directories, with file documents holding content. The sharer must write none
//! of them, nothing outside its folder, nothing through a symlink; it must say what it
//! refused, escaped; and it must keep syncing with honest peers.
//!
//! The sharer's temp dir:
//!
//! ```text
//! box/canary.txt                 canaries: byte-identical, same mtime, same listing
//! box/outside/existing.txt
//! box/outside/deep/secret.txt
//! box/folder/                    the shared folder
//! box/folder/link-out -> ../outside    planted before the sharer starts
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use iroh::SecretKey;
use rustix::fs::{Mode, OFlags};
use teatime::net::wire::{Frame, read_frame, write_frame};
use teatime_crdt::automerge::transaction::Transactable;
use teatime_crdt::automerge::{ActorId, AutoCommit, ObjId, ObjType, ROOT, ReadDoc, Value};
use teatime_crdt::path::{MAX_DEPTH, MAX_PATH_BYTES, check_name, check_path};
use teatime_crdt::{DocId, FileDoc, FolderDoc};

use crate::harness::{Peer, STATE_DIR, deadline, put_file, wait_until, write_tree};
use crate::rawpeer::{Client, Read, loopback_ticket, runtime};

const CORPUS: &str = include_str!("../../fixtures/hostile-paths.txt");
const SEED: &str = "the sharer's own notes\n";
/// An absolute path in the corpus that stays inside the temp dir, checked outside the
/// sharer's temp dir too (a regression would create it there).
const ESCAPE_IN_TMP: &str = "teatime-hostile-escape.txt";

/// The corpus, less absolute paths outside `/tmp`: the validator's unit test covers them,
/// and a regression here must not write over the machine's own files.
fn corpus() -> Vec<String> {
    CORPUS
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| serde_json::from_str::<String>(l).unwrap_or_else(|e| panic!("corpus line {l}: {e}")))
        .filter(|p| !p.starts_with('/') || p.starts_with("/tmp/"))
        .collect()
}

/// What a path holds, as a snapshot compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir,
    File(Vec<u8>),
    Link(PathBuf),
    Other,
}

/// Everything under `dir` but `skip`, by relative path: content and mtime (ns).
fn snapshot(dir: &Path, skip: &Path) -> BTreeMap<String, (Node, i128)> {
    fn walk(dir: &Path, rel: &str, skip: &Path, out: &mut BTreeMap<String, (Node, i128)>) {
        let mut names: Vec<_> = fs::read_dir(dir).expect("list").flatten().map(|d| d.file_name()).collect();
        names.sort();
        for name in names {
            let path = dir.join(&name);
            if path == skip {
                continue;
            }
            let child = format!("{rel}/{}", name.to_string_lossy());
            let meta = fs::symlink_metadata(&path).expect("stat");
            let node = if meta.is_dir() {
                Node::Dir
            } else if meta.is_file() {
                Node::File(fs::read(&path).expect("read"))
            } else if meta.file_type().is_symlink() {
                Node::Link(fs::read_link(&path).expect("readlink"))
            } else {
                Node::Other
            };
            out.insert(
                child.clone(),
                (node, meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128),
            );
            if meta.is_dir() {
                walk(&path, &child, skip, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, "", skip, &mut out);
    out
}

/// Every path in the folder (not following symlinks), relative, joined by `/`. Directories
/// are opened relative to the folder, so paths longer than `PATH_MAX` are listed too; a work
/// list, not recursion, because the hostile change nests directories thousands deep.
fn folder_paths(folder: &Path) -> BTreeSet<String> {
    let root = rustix::fs::open(folder, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .expect("open folder");
    let mut out = BTreeSet::new();
    let mut todo = vec![String::new()];
    while let Some(rel) = todo.pop() {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let dir =
            rustix::fs::openat(&root, if rel.is_empty() { "." } else { rel.as_str() }, flags, Mode::empty())
                .unwrap_or_else(|e| panic!("open {rel:?}: {e}"));
        for entry in rustix::fs::Dir::read_from(&dir).expect("list") {
            let entry = entry.expect("entry");
            let name = String::from_utf8_lossy(entry.file_name().to_bytes()).into_owned();
            if name == "." || name == ".." {
                continue;
            }
            let child = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            out.insert(child.clone());
            if entry.file_type() == rustix::fs::FileType::Directory && !(rel.is_empty() && name == STATE_DIR)
            {
                todo.push(child);
            }
        }
    }
    out
}

/// Every path under the state directory.
fn state_paths(folder: &Path) -> BTreeSet<String> {
    snapshot(&folder.join(STATE_DIR), Path::new("")).into_keys().collect()
}

/// Directories the sharer should create for a chain: its leading valid components
/// (a refused one hides everything below it), except through the symlink it holds.
fn valid_dirs_of_chain(path: &str) -> Vec<String> {
    let parts: Vec<&str> = path.split('/').collect();
    let mut out = Vec::new();
    for end in 1..parts.len() {
        let prefix = parts[..end].join("/");
        if check_name(parts[end - 1]).is_err() || prefix.len() > MAX_PATH_BYTES || end > MAX_DEPTH {
            break;
        }
        out.push(prefix);
    }
    out.retain(|p| p != "link-out" && !p.starts_with("link-out/"));
    out
}

/// Entries written into the folder document directly with Automerge (no `FolderDoc`
/// method stands between the hostile peer and the document), plus their file documents.
struct Injection {
    /// The hostile member's key: its changes are signed like any member's (the sharer
    /// would drop unsigned ones before their paths were even looked at).
    key: SecretKey,
    folder: AutoCommit,
    entries: ObjId,
    stamp: String,
    files: Vec<(DocId, String)>,
}

impl Injection {
    fn new(folder: &mut AutoCommit, key: &SecretKey) -> Self {
        let by = key.public().to_string();
        let folder = folder.fork().with_actor(Self::actor(key));
        let entries = match folder.get(ROOT, "entries") {
            Ok(Some((Value::Object(ObjType::Map), id))) => id,
            other => panic!("the folder document has no entries map: {other:?}"),
        };
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
        Injection { key: key.clone(), folder, entries, stamp: format!("{ms}|{by}"), files: Vec::new() }
    }

    /// A fresh actor of the member's.
    fn actor(key: &SecretKey) -> ActorId {
        teatime_crdt::ids::actor_for_member(key.public().as_bytes(), rand::random())
    }

    fn sign(
        &self,
        folder_id: DocId,
        changes: &[teatime_crdt::automerge::Change],
    ) -> Vec<teatime::replica::Signed> {
        changes
            .iter()
            .map(|c| (c.hash().0, teatime::replica::sign_change(&self.key, folder_id, &c.hash())))
            .collect()
    }

    /// An entry as `crdt::folder` lays it out: `loc` = "ms|by|parent|name"; a file gets a
    /// document saying where it was planted.
    fn entry(&mut self, parent: Option<DocId>, name: &str, kind: &str) -> DocId {
        let id = DocId(rand::random());
        let obj = self.folder.put_object(&self.entries, id.to_string(), ObjType::Map).expect("entry");
        let parent_hex = parent.map(|p| p.to_string()).unwrap_or_default();
        self.folder.put(&obj, "kind", kind).expect("kind");
        self.folder.put(&obj, "created", self.stamp.as_str()).expect("created");
        self.folder.put(&obj, "loc", format!("{}|{parent_hex}|{name}", self.stamp)).expect("loc");
        self.folder.put(&obj, "del", "").expect("del");
        if kind == "file" {
            self.files.push((id, format!("planted by a hostile peer as {name:?}\n")));
        }
        id
    }

    /// A benign file at the root: seeing it on disk proves the change was processed.
    fn control_file(&mut self, name: &str) {
        self.entry(None, name, "file");
    }

    /// Each path as one name at the root, and as a chain of directories ending in a file.
    fn path(&mut self, path: &str) {
        self.entry(None, path, "file");
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() < 2 {
            return;
        }
        let mut parent = None;
        for dir in &parts[..parts.len() - 1] {
            parent = Some(self.entry(parent, dir, "dir"));
        }
        self.entry(parent, parts[parts.len() - 1], "file");
    }

    /// The frames: every file document whole, then the folder change (one change); and the
    /// folder document with the change, to build on.
    fn frames(
        mut self,
        folder_id: DocId,
        before: &[teatime_crdt::automerge::ChangeHash],
    ) -> (Vec<Frame>, AutoCommit) {
        let mut frames = Vec::new();
        for (id, content) in &self.files {
            let mut doc = FileDoc::create(Self::actor(&self.key), content, 0).expect("file doc");
            let heads = doc.heads().iter().map(|h| h.0).collect();
            let signatures = self.sign(folder_id, &doc.doc_mut().get_changes(&[]));
            frames.push(Frame::Changes { doc: *id, data: doc.doc_mut().save(), heads, signatures });
        }
        self.folder.commit();
        let heads = self.folder.get_heads().iter().map(|h| h.0).collect();
        let changes = self.folder.get_changes(before);
        let signatures = self.sign(folder_id, &changes);
        let data = changes.iter().flat_map(|c| c.raw_bytes().to_vec()).collect();
        frames.push(Frame::Changes { doc: folder_id, data, heads, signatures });
        (frames, self.folder)
    }
}

/// Whether the log holds a raw control or invisible formatting character (a name printed
/// unescaped): anything but a newline.
fn raw_control_chars(log: &str) -> Vec<(usize, char)> {
    log.chars()
        .enumerate()
        .filter(|(_, c)| {
            (c.is_control() && *c != '\n')
                || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{FEFF}')
        })
        .take(5)
        .collect()
}

#[test]
fn a_hostile_member_writes_nothing_outside_the_folder_nor_any_refused_name() {
    let corpus = corpus();
    assert!(corpus.len() >= 200, "the corpus has only {} paths", corpus.len());

    // The sharer, its folder in a box of canaries, and a symlink out of the folder.
    let mut sharer = Peer::new_in("sharer", "box/folder");
    let tmp = sharer.temp_root().to_path_buf();
    let boxed = tmp.join("box");
    let folder = sharer.dir().to_path_buf();
    fs::create_dir_all(boxed.join("outside/deep")).unwrap();
    fs::write(boxed.join("canary.txt"), "canary: must never change\n").unwrap();
    fs::write(boxed.join("outside/existing.txt"), "outside: must never change\n").unwrap();
    fs::write(boxed.join("outside/deep/secret.txt"), "outside, deeper: must never change\n").unwrap();
    let mut seed = crate::harness::Tree::new();
    put_file(&mut seed, "notes.md", SEED);
    write_tree(&folder, &seed);
    std::os::unix::fs::symlink("../outside", folder.join("link-out")).unwrap();
    sharer.start_share();
    let ticket = loopback_ticket(&sharer);

    let escape_in_tmp = std::env::temp_dir().join(ESCAPE_IN_TMP);
    let escape_before = fs::symlink_metadata(&escape_in_tmp).ok().map(|m| (m.ino(), m.mtime_nsec()));

    let rt = runtime();
    let key = SecretKey::generate();
    let (client, mut folder_doc) = rt.block_on(async {
        let mut client = Client::connect_as(&ticket, key.clone()).await;
        client.hello(ticket.folder, Some(&ticket)).await;
        client.prove(&ticket, &ticket.secret).await;
        match client.read("the answer to the right proof").await {
            Read::Frame(Frame::Welcome { .. }) => {}
            other => panic!("expected Welcome, got {other:?}"),
        }
        let mut folder_doc = AutoCommit::new();
        let has_seed = |d: &AutoCommit| {
            FolderDoc::from_doc(d.clone()).entries().values().any(|e| e.any_loc().name == "notes.md")
        };
        while !has_seed(&folder_doc) {
            match client.read("the folder document").await {
                Read::Frame(Frame::Changes { doc, data, .. }) if doc == ticket.folder => {
                    folder_doc.load_incremental(&data).expect("the sharer sent valid changes");
                }
                Read::Frame(_) => {}
                other => panic!("the session ended before the folder document came: {other:?}"),
            }
        }
        (client, folder_doc)
    });
    let Client { endpoint, conn, mut send, mut recv } = client;
    // Whatever the sharer sends from now on is read and dropped, so it never waits on us.
    let drain = rt.spawn(async move { while let Ok(Some(_)) = read_frame(&mut recv).await {} });

    // Everything around the folder, and the folder itself, before.
    let around_before = snapshot(&tmp, &folder);
    let state_before = state_paths(&folder);
    let paths_before = folder_paths(&folder);

    let before = folder_doc.get_heads();
    let mut injection = Injection::new(&mut folder_doc, &key);
    for path in &corpus {
        injection.path(path);
    }
    injection.control_file("control-1.txt");
    let (frames, mut after_first) = injection.frames(ticket.folder, &before);
    let sent = frames.len();
    rt.block_on(async {
        for frame in &frames {
            write_frame(&mut send, frame).await.expect("send a hostile frame");
        }
    });
    wait_until("the control file sent with the hostile entries", || sharer.read("control-1.txt").is_some());
    // A second change after the first was written: once it is on disk, the sharer has
    // finished everything the first one made it do.
    let heads = after_first.get_heads();
    let mut barrier = Injection::new(&mut after_first, &key);
    barrier.control_file("control-2.txt");
    let (frames, _) = barrier.frames(ticket.folder, &heads);
    rt.block_on(async {
        for frame in &frames {
            write_frame(&mut send, frame).await.expect("send the barrier");
        }
    });
    wait_until("the barrier file", || sharer.read("control-2.txt").is_some());

    // Nothing outside the folder changed: canaries byte-identical with their mtimes, no
    // new path anywhere in the temp dir, nothing in the shared temp dir.
    let around_after = snapshot(&tmp, &folder);
    let changed: Vec<_> = around_after
        .iter()
        .filter(|(p, now)| around_before.get(*p) != Some(now) && !p.ends_with(".log"))
        .map(|(p, _)| p.clone())
        .chain(around_before.keys().filter(|p| !around_after.contains_key(*p)).cloned())
        .collect();
    assert!(changed.is_empty(), "outside the folder, these changed or appeared: {changed:#?}");
    assert_eq!(
        fs::symlink_metadata(&escape_in_tmp).ok().map(|m| (m.ino(), m.mtime_nsec())),
        escape_before,
        "{} was written",
        escape_in_tmp.display()
    );

    // Inside: only the control files and the valid directories of the chains appeared;
    // no corpus path, no twin, nothing in the state directory.
    let paths_after = folder_paths(&folder);
    let appeared: BTreeSet<String> = paths_after.difference(&paths_before).cloned().collect();
    let mut expected: BTreeSet<String> = ["control-1.txt", "control-2.txt"].map(String::from).into();
    for path in &corpus {
        expected.extend(valid_dirs_of_chain(path));
    }
    let unexpected: Vec<&String> = appeared.difference(&expected).collect();
    assert!(unexpected.is_empty(), "the sharer wrote paths it should have refused: {unexpected:#?}");
    let missing: Vec<&String> = expected.difference(&appeared).take(10).collect();
    assert!(missing.is_empty(), "valid parts of the hostile change were not written: {missing:#?}");
    // (`.teatime` itself and its files were there before: the state check below.)
    for path in &corpus {
        assert!(!appeared.contains(path), "{path:?} appeared in the folder");
    }
    for path in &appeared {
        assert_eq!(check_path(path), Ok(()), "{path:?} was written");
    }
    let state_new: Vec<String> = state_paths(&folder).difference(&state_before).cloned().collect();
    assert!(state_new.is_empty(), "new paths in the state directory: {state_new:?}");

    // The refusals are in the log, once each, escaped; no raw control character.
    let log = sharer.log_text();
    let refusals = log.matches("a peer gave this entry a name that may not reach disk").count();
    assert!(
        refusals >= corpus.len(),
        "{refusals} refusals logged for {} whole-path names ({sent} frames sent)",
        corpus.len()
    );
    for escaped in [r#"name="evil\u{202e}txt.exe""#, r#"name="x\0y""#, r#"name=".TEATIME/state.redb""#] {
        assert!(log.contains(escaped), "the log does not show {escaped}");
    }
    assert!(log.contains("goes through a symlink"), "the log does not say the symlink was refused");
    let raw = raw_control_chars(&log);
    assert!(raw.is_empty(), "the log holds raw control characters (char index, char): {raw:?}");

    // Still running, still syncing with an honest peer.
    assert!(sharer.is_running(), "the sharer exited");
    let honest = Peer::join("honest", sharer.ticket());
    wait_until("the honest peer to get the sharer's notes", || {
        honest.read("notes.md").as_deref() == Some(SEED.as_bytes())
    });
    honest.write("notes.md", "edited by an honest peer\n");
    wait_until("the honest edit to reach the sharer", || {
        sharer.read("notes.md").as_deref() == Some(b"edited by an honest peer\n".as_slice())
    });
    sharer.write("reply.md", "the sharer still writes\n");
    wait_until("the sharer's new file to reach the honest peer", || honest.read("reply.md").is_some());
    assert!(sharer.is_running(), "the sharer exited");
    for path in folder_paths(honest.dir()).into_iter().filter(|p| p != STATE_DIR) {
        assert_eq!(check_path(&path), Ok(()), "the honest peer wrote {path:?}");
    }

    conn.close(0u32.into(), b"test done");
    rt.block_on(async {
        let _ = tokio::time::timeout(deadline(), drain).await;
        endpoint.close().await;
    });
}
