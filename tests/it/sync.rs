//! Sync scenarios. Each ends with an exact check of every peer's folder.

use std::ffi::OsStr;

use crate::harness::{
    AbsenceWatch, Entry, Peer, Tree, all_paths, assert_trees, connected_pair, numbered_lines, one_file,
    put_dir, put_file, remove, rename, replace_line, wait_converged, wait_converged_to, wait_until,
};

#[test]
fn join_copies_every_kind_of_text_file_byte_for_byte() {
    let mut expected = Tree::new();
    put_file(&mut expected, "top.txt", "hello\n");
    put_file(&mut expected, "nested/sibling.txt", "next to deeper\n");
    put_file(&mut expected, "nested/deeper/deepest.txt", "deep down\n");
    put_dir(&mut expected, "empty-dir");
    put_file(&mut expected, "empty.txt", "");
    put_file(&mut expected, "café/ñandú.md", "# Ñandú\n\nUn ave corredora.\n");
    put_file(&mut expected, "日本語.txt", "こんにちは、世界\n");
    put_file(&mut expected, "crlf.txt", "first\r\nsecond\r\nthird\r\n");
    put_file(&mut expected, "bom.txt", "\u{feff}starts with a byte order mark\n");
    put_file(&mut expected, "no-final-newline.txt", "the end");

    let mut a = Peer::share_tree("a", &expected);
    let mut b = Peer::new("b");
    assert!(!b.dir().exists());
    b.start_join(a.ticket());
    wait_converged_to(&[&a, &b], &expected);

    // Shutting down must neither fail nor touch the folders.
    a.stop();
    b.stop();
    assert_trees(&[&a, &b], &expected);
}

#[test]
fn live_edits_flow_both_ways() {
    let mut expected = one_file("seed.txt", "seed\n");
    let (a, b) = connected_pair(&expected);
    let both = [&a, &b];

    a.write("a1.txt", "alpha\n");
    put_file(&mut expected, "a1.txt", "alpha\n");
    wait_converged_to(&both, &expected);

    b.write("a1.txt", "alpha\nbeta\n");
    put_file(&mut expected, "a1.txt", "alpha\nbeta\n");
    wait_converged_to(&both, &expected);

    a.write("docs/readme.md", "# Docs\n");
    a.write("docs/sub/x.txt", "x\n");
    put_file(&mut expected, "docs/readme.md", "# Docs\n");
    put_file(&mut expected, "docs/sub/x.txt", "x\n");
    wait_converged_to(&both, &expected);

    b.remove_file("a1.txt");
    remove(&mut expected, "a1.txt");
    wait_converged_to(&both, &expected);

    a.rename("docs/readme.md", "docs/README.md");
    rename(&mut expected, "docs/readme.md", "docs/README.md");
    wait_converged_to(&both, &expected);

    b.rename("seed.txt", "docs/sub/seed.txt");
    rename(&mut expected, "seed.txt", "docs/sub/seed.txt");
    wait_converged_to(&both, &expected);

    a.rename("docs", "documents");
    rename(&mut expected, "docs", "documents");
    wait_converged_to(&both, &expected);

    b.mkdir("e1/e2/e3");
    put_dir(&mut expected, "e1/e2/e3");
    wait_converged_to(&both, &expected);

    a.remove_dir_all("documents");
    remove(&mut expected, "documents");
    wait_converged_to(&both, &expected);

    let mut only_empty_dirs = Tree::new();
    put_dir(&mut only_empty_dirs, "e1/e2/e3");
    assert_trees(&both, &only_empty_dirs);
}

#[test]
fn concurrent_edits_to_one_file_merge_while_connected() {
    let base = numbered_lines(20);
    let (a, b) = connected_pair(&one_file("notes.txt", &base));

    let a_version = replace_line(&base, 3, "A-EDIT");
    let b_version = replace_line(&base, 17, "B-EDIT");
    // Back to back, so neither peer has seen the other's edit when it makes its own.
    a.write("notes.txt", &a_version);
    b.write("notes.txt", &b_version);

    let merged = replace_line(&a_version, 17, "B-EDIT");
    let expected = one_file("notes.txt", &merged);
    wait_converged_to(&[&a, &b], &expected);
    assert_eq!(a.read("notes.txt"), Some(merged.into_bytes()));
}

#[test]
fn edits_made_while_a_peer_is_stopped_merge_on_restart() {
    let base = numbered_lines(20);
    let (a, mut b) = connected_pair(&one_file("notes.txt", &base));

    b.stop();
    a.write("notes.txt", replace_line(&base, 2, "A-EDIT"));
    b.write("notes.txt", replace_line(&base, 18, "B-EDIT"));
    b.sync();

    let merged = replace_line(&replace_line(&base, 2, "A-EDIT"), 18, "B-EDIT");
    let expected = one_file("notes.txt", &merged);
    wait_converged_to(&[&a, &b], &expected);
    assert_eq!(b.read("notes.txt"), Some(merged.into_bytes()));
}

#[test]
fn changes_made_while_stopped_are_picked_up_on_restart() {
    let mut expected = Tree::new();
    put_file(&mut expected, "keep.txt", "untouched\n");
    put_file(&mut expected, "edit.txt", "before\n");
    put_file(&mut expected, "delete.txt", "doomed\n");
    let (a, mut b) = connected_pair(&expected);

    b.stop();
    b.write("new.txt", "created offline\n");
    b.write("edit.txt", "after\n");
    b.remove_file("delete.txt");
    b.sync();

    put_file(&mut expected, "new.txt", "created offline\n");
    put_file(&mut expected, "edit.txt", "after\n");
    remove(&mut expected, "delete.txt");
    wait_converged_to(&[&a, &b], &expected);

    // A later change round-trips after everything above, so a resurrected
    // delete.txt would have shown up by the time it arrives.
    a.write("barrier.txt", "later\n");
    put_file(&mut expected, "barrier.txt", "later\n");
    wait_converged_to(&[&a, &b], &expected);
    assert!(a.read("delete.txt").is_none() && b.read("delete.txt").is_none());
}

#[test]
fn a_killed_peer_catches_up_after_restart() {
    let mut expected = one_file("log.txt", "start\n");
    let (a, mut b) = connected_pair(&expected);

    // No clean shutdown: whatever B keeps on disk must survive a crash.
    b.kill();
    a.write("log.txt", "start\nfrom a\n");
    b.write("offline.txt", "written while b was down\n");
    b.sync();

    put_file(&mut expected, "log.txt", "start\nfrom a\n");
    put_file(&mut expected, "offline.txt", "written while b was down\n");
    wait_converged_to(&[&a, &b], &expected);
    assert_trees(&[&a, &b], &expected);
}

#[test]
fn three_peers_form_a_mesh_that_survives_the_sharer() {
    let mut expected = one_file("from-a.txt", "a\n");
    let mut a = Peer::share_tree("a", &expected);
    let b = Peer::join("b", a.ticket());
    let c = Peer::join("c", a.ticket());
    wait_converged_to(&[&a, &b, &c], &expected);

    b.write("from-b.txt", "b\n");
    c.write("from-c.txt", "c\n");
    put_file(&mut expected, "from-b.txt", "b\n");
    put_file(&mut expected, "from-c.txt", "c\n");
    wait_converged_to(&[&a, &b, &c], &expected);

    // With A gone, B and C can only reach each other directly.
    a.stop();
    let before_a_stopped = expected.clone();
    c.write("from-c.txt", "c, edited without a\n");
    b.write("b-without-a.txt", "b alone\n");
    put_file(&mut expected, "from-c.txt", "c, edited without a\n");
    put_file(&mut expected, "b-without-a.txt", "b alone\n");
    wait_converged_to(&[&b, &c], &expected);
    assert_trees(&[&a], &before_a_stopped);
}

#[test]
fn joining_into_a_non_empty_folder_loses_nothing() {
    let a_shared = "shared, as A wrote it\n";
    let b_shared = "shared, as B wrote it\n";
    let mut a_files = Tree::new();
    put_file(&mut a_files, "theirs.txt", "only A had this\n");
    put_file(&mut a_files, "shared.txt", a_shared);
    let a = Peer::share_tree("a", &a_files);

    let mut b = Peer::new("b");
    b.write("mine.txt", "only B had this\n");
    b.write("shared.txt", b_shared);
    b.start_join(a.ticket());

    let has_both_versions = |tree: &Tree| {
        let contents: Vec<&Entry> = tree.values().collect();
        [a_shared, b_shared].iter().all(|text| contents.contains(&&Entry::File(text.as_bytes().to_vec())))
    };
    wait_until("a to hold mine.txt and both shared.txt versions", || {
        let tree = a.tree();
        tree.contains_key("mine.txt") && has_both_versions(&tree)
    });
    let tree = wait_converged(&[&a, &b]);
    assert!(has_both_versions(&tree));

    // Names are exact except for the pair of shared.txt versions: one of them may sit
    // under a conflict name, so only its content is checked.
    assert_eq!(tree.get("mine.txt"), Some(&Entry::File(b"only B had this\n".to_vec())));
    assert_eq!(tree.get("theirs.txt"), Some(&Entry::File(b"only A had this\n".to_vec())));
    let shared = tree.get("shared.txt").expect("shared.txt is kept");
    assert!(
        *shared == Entry::File(a_shared.into()) || *shared == Entry::File(b_shared.into()),
        "shared.txt holds one of the two versions, not {shared:?}"
    );
    let mut files: Vec<&[u8]> = tree
        .values()
        .filter_map(|entry| match entry {
            Entry::File(bytes) => Some(bytes.as_slice()),
            Entry::Dir => None,
        })
        .collect();
    files.sort();
    let mut want: Vec<&[u8]> =
        vec![b"only A had this\n", b"only B had this\n", a_shared.as_bytes(), b_shared.as_bytes()];
    want.sort();
    assert_eq!(files, want, "exactly the four files, none lost or doubled");
    assert_trees(&[&a, &b], &tree);
}

#[test]
fn received_changes_do_not_echo_back() {
    let mut expected = one_file("seed.txt", "seed\n");
    let (a, b) = connected_pair(&expected);
    let both = [&a, &b];

    a.write("echo.txt", "v1 from A\n");
    put_file(&mut expected, "echo.txt", "v1 from A\n");
    wait_converged_to(&both, &expected);

    // If B echoed v1 back as its own edit, it could clobber B's next edit on A.
    b.write("echo.txt", "v2 from B\n");
    put_file(&mut expected, "echo.txt", "v2 from B\n");
    wait_converged_to(&both, &expected);

    // A burst of saves: only the last one may win.
    for i in 3..=6 {
        a.write("echo.txt", format!("v{i} from A\n"));
    }
    put_file(&mut expected, "echo.txt", "v6 from A\n");
    wait_converged_to(&both, &expected);

    b.write("echo.txt", "v7 from B\n");
    put_file(&mut expected, "echo.txt", "v7 from B\n");
    wait_converged_to(&both, &expected);

    // A change from the other side arrives after any late echo would have.
    a.write("barrier.txt", "done\n");
    put_file(&mut expected, "barrier.txt", "done\n");
    wait_converged_to(&both, &expected);

    for peer in both {
        let leftovers: Vec<String> =
            all_paths(peer.dir()).into_iter().filter(|p| p.contains(".teatime-tmp")).collect();
        assert!(leftovers.is_empty(), "{} has temp files left: {leftovers:?}", peer.name);
    }
    assert_trees(&both, &expected);
}

#[test]
fn an_editors_atomic_save_is_not_seen_as_a_delete() {
    let mut expected = one_file("notes.md", "first draft\n");
    let (a, b) = connected_pair(&expected);

    let watch = AbsenceWatch::start(b.path("notes.md"));
    for draft in ["second draft\n", "third draft\n"] {
        // What many editors do: write a sibling, then rename it over the original.
        a.write("notes.md.new", draft);
        a.rename("notes.md.new", "notes.md");
        put_file(&mut expected, "notes.md", draft);
        wait_converged_to(&[&a, &b], &expected);
    }
    assert!(!watch.finish(), "notes.md went missing on b during an atomic save on a");
    assert_trees(&[&a, &b], &expected);
}

#[test]
fn malformed_tickets_are_rejected_without_side_effects() {
    let a = Peer::share("a");
    let ticket = a.ticket();
    let cut = ticket.char_indices().rev().nth(4).map(|(i, _)| i).expect("ticket longer than 5 characters");
    let truncated = &ticket[..cut];

    for (label, bad) in [("garbage", "garbage"), ("truncated", truncated)] {
        let b = Peer::new(label);
        let out = b.run_to_end(&[OsStr::new("join"), OsStr::new(bad), b.dir().as_os_str()]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{label}: exit status; stdout: {:?}, stderr: {:?}",
            out.stdout,
            out.stderr
        );
        let stderr = out.stderr.trim_end();
        assert_eq!(stderr.lines().count(), 1, "{label}: stderr should be one line: {stderr:?}");
        assert!(
            !stderr.trim().is_empty() && stderr.to_lowercase().contains("ticket"),
            "{label}: stderr should name the ticket: {stderr:?}"
        );
        assert!(!b.dir().exists(), "{label}: folder was created");
        assert!(!b.home().exists(), "{label}: home was created");
    }
}

#[test]
fn binary_files_sync_both_ways_byte_for_byte() {
    let image: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\xff\xfe\0\xc3\x28";
    let live: &[u8] = b"\0\x01\x02\xff\xfe\xfd not utf-8 \xc0\xaf";
    let mut expected = one_file("readme.txt", "text beside a binary\n");
    put_file(&mut expected, "image.bin", image);
    put_file(&mut expected, "empty.bin", b"");

    let a = Peer::share_tree("a", &expected);
    let b = Peer::join("b", a.ticket());
    wait_converged_to(&[&b], &expected);

    // Live, both ways: a new binary, a binary rewritten, a binary deleted.
    a.write("live.bin", live);
    put_file(&mut expected, "live.bin", live);
    b.write("image.bin", b"\x89PNG replaced \xff");
    put_file(&mut expected, "image.bin", b"\x89PNG replaced \xff");
    wait_converged_to(&[&a, &b], &expected);
    b.remove_file("live.bin");
    remove(&mut expected, "live.bin");
    wait_converged_to(&[&a, &b], &expected);
}

#[test]
fn sharing_again_resumes_the_same_folder() {
    let mut expected = one_file("one.txt", "1\n");
    let (mut a, b) = connected_pair(&expected);

    a.stop();
    b.write("while-a-was-down.txt", "b kept going\n");
    put_file(&mut expected, "while-a-was-down.txt", "b kept going\n");

    // Back on the same home and folder, A redials B, which is still running where it was.
    let second_ticket = a.start_share();
    wait_converged_to(&[&a, &b], &expected);

    // C, joining with the new ticket, lands in the folder B joined with the old one.
    let c = Peer::join("c", &second_ticket);
    wait_converged_to(&[&a, &b, &c], &expected);
    c.write("from-c.txt", "c\n");
    a.write("one.txt", "1, edited after the restart\n");
    put_file(&mut expected, "from-c.txt", "c\n");
    put_file(&mut expected, "one.txt", "1, edited after the restart\n");
    wait_converged_to(&[&a, &b, &c], &expected);
    assert_trees(&[&a, &b, &c], &expected);
}
