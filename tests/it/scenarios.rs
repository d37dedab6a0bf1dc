//! Harder sync scenarios with real processes: renames racing edits, many files, a big file,
//! and empty files. Each ends with an exact check of every peer's folder.

use crate::harness::{
    Entry, Peer, Tree, assert_trees, connected_pair, deadline, numbered_lines, put_dir, put_file, remove,
    rename, replace_line, settle, wait_converged_to, wait_converged_to_within,
};

/// No path in `tree` is `dir` or lies below it.
fn assert_no_path_under(peer: &Peer, dir: &str) {
    let below = format!("{dir}/");
    let found: Vec<String> = peer.tree().into_keys().filter(|p| p == dir || p.starts_with(&below)).collect();
    assert!(found.is_empty(), "{} still has {dir}: {found:?}", peer.name);
}

#[test]
fn an_offline_edit_follows_a_concurrent_directory_rename() {
    let base = numbered_lines(10);
    let mut expected = Tree::new();
    put_file(&mut expected, "dir/notes.md", &base);
    let (mut a, mut b) = connected_pair(&expected);

    b.stop();
    a.rename("dir", "renamed");
    let edited = replace_line(&base, 5, "line 5, edited by B while offline");
    b.write("dir/notes.md", &edited);
    b.sync();

    let mut expected = Tree::new();
    put_file(&mut expected, "renamed/notes.md", &edited);
    wait_converged_to(&[&a, &b], &expected);

    // A later change round-trips after everything above, so a late resurrection of dir/
    // would have shown up by the time it arrives.
    a.write("barrier.txt", "done\n");
    put_file(&mut expected, "barrier.txt", "done\n");
    wait_converged_to(&[&a, &b], &expected);
    for peer in [&a, &b] {
        assert_no_path_under(peer, "dir");
    }
    a.stop();
    b.stop();
    assert_trees(&[&a, &b], &expected);
}

/// Deterministic content for file `i`: a few lines that name it.
fn small_file(i: usize, version: u32) -> String {
    let lines = 1 + i % 5;
    (0..lines).map(|l| format!("file {i} v{version} line {l}\n")).collect()
}

fn small_file_path(i: usize) -> String {
    // 20 directories, two of them nested, every file name distinct.
    let dir = i % 20;
    if dir % 7 == 3 { format!("d{dir:02}/inner/f{i:03}.txt") } else { format!("d{dir:02}/f{i:03}.txt") }
}

#[test]
fn hundreds_of_files_join_then_mass_delete_and_edit() {
    let mut expected = Tree::new();
    for i in 0..300 {
        put_file(&mut expected, &small_file_path(i), small_file(i, 1));
    }
    let dirs = expected.keys().filter(|k| !k.contains('/')).count();
    assert_eq!(dirs, 20, "the seed spreads over 20 top-level directories");

    let a = Peer::share_tree("a", &expected);
    let b = Peer::join("b", a.ticket());
    wait_converged_to(&[&a, &b], &expected);

    // Every third file goes (100 of them); 50 of the rest get a new version.
    let mut edited = 0;
    for i in 0..300 {
        let path = small_file_path(i);
        if i % 3 == 0 {
            a.remove_file(&path);
            remove(&mut expected, &path);
        } else if edited < 50 && i % 3 == 1 {
            a.write(&path, small_file(i, 2));
            put_file(&mut expected, &path, small_file(i, 2));
            edited += 1;
        }
    }
    assert_eq!(edited, 50);
    assert_eq!(expected.values().filter(|e| matches!(e, Entry::File(_))).count(), 200);
    settle(&[&a, &b], &mut expected);
}

#[test]
fn one_line_edited_in_a_two_megabyte_file_arrives_exactly() {
    // 32768 lines of 64 bytes: 2 MiB of text.
    let big: String =
        (1..=32768).map(|i| format!("{:<63}\n", format!("line {i:05} of the big file"))).collect();
    assert_eq!(big.len(), 2 * 1024 * 1024);
    let mut expected = Tree::new();
    put_file(&mut expected, "big.txt", &big);
    let (a, b) = connected_pair(&expected);

    let edited = replace_line(&big, 16384, "line 16384, edited by B in the middle");
    b.write("big.txt", &edited);
    put_file(&mut expected, "big.txt", &edited);
    // The first edit of a never-edited file builds its Automerge document on both peers,
    // one operation per character: about 2 s of CPU per MiB in Automerge (measured with
    // `cargo bench --bench text -- first_edit`), 4 s here per peer, more on a loaded two-core CI
    // machine, where 20 s was once not enough. The deadline is for the sync, not for that.
    wait_converged_to_within(deadline() * 3, &[&a, &b], &expected);
    assert_eq!(a.read("big.txt").as_deref(), Some(edited.as_bytes()), "a's big.txt byte for byte");
}

#[test]
fn a_file_moved_on_one_peer_while_edited_on_the_other_keeps_the_edit() {
    let base = numbered_lines(10);
    let mut expected = Tree::new();
    put_file(&mut expected, "src/moving.txt", &base);
    put_file(&mut expected, "src/stays.txt", "stays\n");
    put_dir(&mut expected, "dst");
    let (a, b) = connected_pair(&expected);

    let edited = replace_line(&base, 4, "line 4, edited by A");
    // Back to back, so neither peer has seen the other's change when it makes its own.
    a.write("src/moving.txt", &edited);
    b.rename("src/moving.txt", "dst/moving.txt");

    put_file(&mut expected, "src/moving.txt", &edited);
    rename(&mut expected, "src/moving.txt", "dst/moving.txt");
    settle(&[&a, &b], &mut expected);
}

#[test]
fn an_empty_file_fills_and_empties_again() {
    let mut expected = Tree::new();
    put_file(&mut expected, "empty.txt", "");
    let (a, b) = connected_pair(&expected);

    // Each step waits for B, so B sees every state, not just the last.
    for content in ["now there is text\nand a second line\n", "", "back again\n", ""] {
        a.write("empty.txt", content);
        put_file(&mut expected, "empty.txt", content);
        wait_converged_to(&[&a, &b], &expected);
    }
    assert_trees(&[&a, &b], &expected);
}
