//! Crash consistency: a real process aborted at a named point of its flush
//! (`TEATIME_CRASH_AT=<point>:<path>`, see `src/crash.rs`), the user acting on the folder
//! while it is down, then a restart. Checked: no ghost copy, no doubled text, no lost edit,
//! no temp file left, and the state loads and syncs.

use std::fs;

use crate::harness::{
    Peer, all_paths, connected_pair, one_file, put_file, settle, wait_converged_to, wait_until,
};

const CRASH_AT: &str = "TEATIME_CRASH_AT";

/// Restarts `peer` armed to abort at `point` on `path`.
fn restart_armed(peer: &mut Peer, point: &str, path: &str) {
    peer.stop();
    peer.set_env(CRASH_AT, Some(&format!("{point}:{path}")));
    peer.sync();
}

/// Waits until `peer` aborted at its crash point, and reaps it.
fn wait_crashed(peer: &mut Peer, point: &str) {
    let said = format!("TEATIME_CRASH_AT: aborting at {point}");
    wait_until(&format!("{} to abort at {point}", peer.name()), || {
        !peer.is_running() && peer.log_text().contains(&said)
    });
    peer.kill();
    peer.set_env(CRASH_AT, None);
}

fn temp_files(peer: &Peer) -> Vec<String> {
    all_paths(peer.dir())
        .into_iter()
        .filter(|p| p.rsplit('/').next().unwrap().starts_with(".teatime-tmp"))
        .collect()
}

/// A creation is recorded in the documents with its index row, in one commit: after a crash
/// right after that commit and an edit while the process was down, the restart sees an edit
/// of the file it created, not an untracked file to create a second time.
#[test]
fn a_creation_recorded_before_a_crash_is_not_created_again() {
    let mut expected = one_file("seed.txt", "seed\n");
    let (mut a, b) = connected_pair(&expected);
    restart_armed(&mut a, "after-documents-persisted", "new.txt");
    a.write("new.txt", "first\n");
    wait_crashed(&mut a, "after-documents-persisted");

    a.write("new.txt", "first\nsecond\n");
    a.sync();
    put_file(&mut expected, "new.txt", "first\nsecond\n");
    settle(&[&a, &b], &mut expected);
}

/// A file written by materialisation has its index row durable with the write (a write
/// intent committed before the rename): after a crash before the row itself is committed
/// and a user edit of the written file, the edit is made against the version written, so
/// the peer's change is not inserted a second time.
#[test]
fn a_remote_edit_written_before_a_crash_is_not_doubled_by_a_later_local_edit() {
    let mut expected = one_file("notes.txt", "one\n");
    let (mut a, b) = connected_pair(&expected);
    restart_armed(&mut a, "after-materialise", "notes.txt");
    b.write("notes.txt", "one\ntwo\n");
    wait_crashed(&mut a, "after-materialise");
    assert_eq!(
        a.read("notes.txt").as_deref(),
        Some(&b"one\ntwo\n"[..]),
        "the write happened before the crash"
    );

    a.write("notes.txt", "one\ntwo\nthree\n");
    a.sync();
    put_file(&mut expected, "notes.txt", "one\ntwo\nthree\n");
    settle(&[&a, &b], &mut expected);
}

/// A peer's new file written just before a crash, then moved by the user while the
/// process was down: the write intent says the rename happened (the temp file is gone), so
/// the restart scan finds the file by inode at its new path, a move, not a second file with
/// the same text (found by the crash torture test).
#[test]
fn a_remote_file_written_before_a_crash_and_moved_while_down_is_moved_not_copied() {
    let mut expected = one_file("seed.txt", "seed\n");
    let (mut a, b) = connected_pair(&expected);
    restart_armed(&mut a, "after-materialise", "new.txt");
    b.write("new.txt", "from b\n");
    wait_crashed(&mut a, "after-materialise");
    assert_eq!(a.read("new.txt").as_deref(), Some(&b"from b\n"[..]), "the write happened before the crash");

    fs::create_dir(a.path("moved")).unwrap();
    fs::rename(a.path("new.txt"), a.path("moved/new.txt")).unwrap();
    a.sync();
    put_file(&mut expected, "moved/new.txt", "from b\n");
    settle(&[&a, &b], &mut expected);
}

/// A crash between the write intent and the rename: the temp file is removed at startup,
/// the file still holds the old version (so a user edit made meanwhile is merged against
/// it), and the peer's change that was never written is written after the restart.
#[test]
fn a_crash_before_the_rename_leaves_no_temp_file_and_loses_nothing() {
    let mut expected = one_file("notes.txt", "one\n");
    let (mut a, b) = connected_pair(&expected);
    restart_armed(&mut a, "before-rename", "notes.txt");
    b.write("notes.txt", "one\ntwo\n");
    wait_crashed(&mut a, "before-rename");
    assert_eq!(temp_files(&a).len(), 1, "the crash left the temp file: {:?}", all_paths(a.dir()));
    assert_eq!(a.read("notes.txt").as_deref(), Some(&b"one\n"[..]), "the target was not replaced");

    a.write("notes.txt", "zero\none\n");
    a.sync();
    put_file(&mut expected, "notes.txt", "zero\none\ntwo\n");
    settle(&[&a, &b], &mut expected);
    assert_eq!(temp_files(&a), Vec::<String>::new());
}

/// Writes go in batches (one intent commit, then the renames): a crash before the renames
/// of a batch holding new files and an edit leaves every target untouched, and after the
/// restart each file is there once, with the user's edit merged, and no temp file.
#[test]
fn a_crash_before_a_batch_of_renames_loses_nothing_and_doubles_nothing() {
    let mut expected = one_file("notes.txt", "one\n");
    let (mut a, b) = connected_pair(&expected);
    restart_armed(&mut a, "before-rename", "notes.txt");
    for i in 0..5 {
        b.write(&format!("new{i}.txt"), format!("new {i}\n"));
    }
    b.write("notes.txt", "one\ntwo\n");
    wait_crashed(&mut a, "before-rename");
    assert!(!temp_files(&a).is_empty(), "the crash left the temp files: {:?}", all_paths(a.dir()));
    assert_eq!(a.read("notes.txt").as_deref(), Some(&b"one\n"[..]), "the target was not replaced");

    a.write("notes.txt", "zero\none\n");
    a.sync();
    for i in 0..5 {
        put_file(&mut expected, &format!("new{i}.txt"), format!("new {i}\n"));
    }
    put_file(&mut expected, "notes.txt", "zero\none\ntwo\n");
    settle(&[&a, &b], &mut expected);
    assert_eq!(temp_files(&a), Vec::<String>::new());
}

/// A peer's edit persisted but not written to disk when the process crashed was never seen
/// by the user: a deletion of the file while the process was down names the version the
/// disk held, so the unseen edit wins and the file comes back with it, everywhere.
#[test]
fn a_delete_does_not_beat_a_remote_edit_that_never_reached_the_disk() {
    let mut expected = one_file("notes.txt", "one\n");
    let (mut a, b) = connected_pair(&expected);
    restart_armed(&mut a, "after-documents-persisted", "notes.txt");
    b.write("notes.txt", "one\ntwo\n");
    wait_crashed(&mut a, "after-documents-persisted");
    assert_eq!(a.read("notes.txt").as_deref(), Some(&b"one\n"[..]), "the edit was not written");

    a.remove_file("notes.txt");
    a.sync();
    put_file(&mut expected, "notes.txt", "one\ntwo\n");
    settle(&[&a, &b], &mut expected);
}

/// A local edit merged with a peer's edit the disk did not hold yet records as its base the
/// edit's own version (what the disk holds), not the merge: after a crash before the merge
/// is written back, the restart sees the disk is behind its document and writes it.
#[test]
fn a_merge_not_written_back_before_a_crash_is_written_after_the_restart() {
    let mut expected = one_file("notes.txt", "one\n");
    let (mut a, b) = connected_pair(&expected);
    restart_armed(&mut a, "after-documents-persisted", "notes.txt");
    b.write("notes.txt", "one\ntwo\n");
    wait_crashed(&mut a, "after-documents-persisted");

    // Merged at the restart's scan, persisted with its index row, then a crash before the
    // merge reaches the disk.
    a.write("notes.txt", "zero\none\n");
    a.set_env(CRASH_AT, Some("after-documents-persisted:notes.txt"));
    a.sync();
    wait_crashed(&mut a, "after-documents-persisted");
    assert_eq!(a.read("notes.txt").as_deref(), Some(&b"zero\none\n"[..]));

    a.sync();
    put_file(&mut expected, "notes.txt", "zero\none\ntwo\n");
    settle(&[&a, &b], &mut expected);
}

/// Temp files a crash left anywhere in the folder are removed at startup, never synced.
#[test]
fn startup_removes_leftover_temp_files() {
    let mut expected = one_file("dir/kept.txt", "kept\n");
    let (mut a, b) = connected_pair(&expected);
    a.stop();
    a.write(".teatime-tmp.0123456789abcdef", "half a write");
    a.write("dir/.teatime-tmp.fedcba9876543210", "another");
    a.sync();
    wait_until("a's leftover temp files to be removed", || temp_files(&a).is_empty());
    settle(&[&a, &b], &mut expected);
    assert!(temp_files(&b).is_empty());
}

/// A store restored from an older copy must not write under the actor it wrote with after
/// that copy was made: peers hold those (actor, seq) pairs under other changes and would
/// refuse every batch. Each process start writes with a fresh actor.
#[test]
fn a_store_restored_from_a_backup_keeps_syncing() {
    let mut expected = one_file("seed.txt", "seed\n");
    let (mut a, b) = connected_pair(&expected);
    a.stop();
    let state = a.path(".teatime/state.redb");
    let backup = a.temp_root().join("state.redb.backup");
    fs::copy(&state, &backup).expect("back up the store");
    a.sync();
    a.write("after-backup.txt", "written after the backup\n");
    put_file(&mut expected, "after-backup.txt", "written after the backup\n");
    wait_converged_to(&[&a, &b], &expected);
    a.stop();

    fs::copy(&backup, &state).expect("restore the store");
    a.sync();
    a.write("after-restore.txt", "written after the restore\n");
    b.write("from-b.txt", "b is still heard\n");
    put_file(&mut expected, "after-restore.txt", "written after the restore\n");
    put_file(&mut expected, "from-b.txt", "b is still heard\n");
    settle(&[&a, &b], &mut expected);
}
