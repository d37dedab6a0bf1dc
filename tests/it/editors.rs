//! Real editors and tools on a synced folder, each against a peer editing the same file:
//! vim (`backupcopy` yes and no), `sed -i`, a tool that writes a temp file and renames it
//! over, `git checkout` of another branch (thousands of files at once), `cp -r` and `mv`
//! of a directory tree, `rm -rf` of a subtree.
//!
//! Without concurrency the last save wins; with it (A paused with `teatime pause` while
//! both sides edit, then resumed) the content is merged. Every test ends with an exact
//! check of both folders after a barrier (see `settle`): no conflict copy, nothing
//! deleted that should not be, the tools' own temp, swap and backup files nowhere.
//! A tool that is not installed makes its test say so and skip.

use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{
    AbsenceWatch, Peer, Tree, connected_pair, deadline, diff_trees, numbered_lines, put_file, remove, rename,
    replace_line, settle, wait_converged_to, wait_for, write_tree,
};

fn have(tool: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIPPED: {tool} is not installed");
    }
    found
}

/// Runs a tool to completion in `cwd` and insists it succeeds.
fn run(cwd: &Path, program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .env("HOME", cwd) // no user configuration (vimrc, gitconfig) leaks in
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// vim without any configuration, as a script: `commands` then write and quit. Swap and
/// backup files are on (vim's defaults with `writebackup`), so teatime must ignore them.
fn vim(peer: &Peer, rel: &str, backupcopy: &str, commands: &[&str]) {
    let mut args = vec!["-u", "NONE", "-N", "-i", "NONE", "-es"];
    let setting = format!("set backupcopy={backupcopy} writebackup");
    args.extend(["-c", &setting]);
    for c in commands {
        args.extend(["-c", c]);
    }
    args.extend(["-c", "wq", rel]);
    run(peer.dir(), "vim", &args);
}

/// Stops A syncing (its sessions end), so both sides can edit concurrently.
fn pause(a: &Peer) {
    a.cli_ok(&["pause", a.dir_arg()]);
    wait_for(&format!("{} to drop its sessions", a.name()), || {
        let v = a.cli_json(&["status", a.dir_arg(), "--json"]);
        let peers = v["peers"].as_array().cloned().unwrap_or_default();
        if peers.iter().all(|p| p["connected"] == false) { Ok(()) } else { Err(format!("{v}")) }
    });
}

fn resume(a: &Peer) {
    a.cli_ok(&["resume", a.dir_arg()]);
}

/// Waits until `peer` has recorded what is on its disk at `rel` (its index holds it:
/// `teatime log` shows a change whose result is the disk's content).
fn wait_recorded(peer: &Peer, rel: &str) {
    let want = peer.read(rel).expect("file exists");
    wait_for(&format!("{} to record its {rel}", peer.name()), || {
        let shown = peer.cli(&["show", peer.dir_arg(), rel, "--at", "now"]);
        if shown.status.success() && shown.stdout == want {
            Ok(())
        } else {
            Err(format!("show says {:?}", String::from_utf8_lossy(&shown.stdout)))
        }
    });
}

/// The whole test for one file-saving tool: a save with no concurrency wins on both
/// peers (and the file never disappears on the other peer meanwhile); then a save on A
/// while B edits another line of the same file, A paused: both edits are merged.
fn save_against_a_peer(save: impl Fn(&Peer, &str, usize, &str)) {
    let base = numbered_lines(10);
    let mut expected = Tree::new();
    put_file(&mut expected, "notes.txt", &base);
    let (a, b) = connected_pair(&expected);

    // Last save wins: A saves, then B (with the same tool), each after the other's arrived.
    let watch = AbsenceWatch::start(b.path("notes.txt"));
    save(&a, "notes.txt", 2, "two, saved on a");
    let text = replace_line(&base, 2, "two, saved on a");
    put_file(&mut expected, "notes.txt", &text);
    wait_converged_to(&[&a, &b], &expected);
    assert!(!watch.finish(), "notes.txt vanished on b while a saved it: a save seen as a delete");
    let watch = AbsenceWatch::start(a.path("notes.txt"));
    save(&b, "notes.txt", 2, "two, saved again on b");
    let text = replace_line(&text, 2, "two, saved again on b");
    put_file(&mut expected, "notes.txt", &text);
    wait_converged_to(&[&a, &b], &expected);
    assert!(!watch.finish(), "notes.txt vanished on a while b saved it");

    // Concurrent: A saves line 1 while B, out of reach, edits line 10.
    pause(&a);
    save(&a, "notes.txt", 1, "one, saved on a");
    wait_recorded(&a, "notes.txt");
    b.write("notes.txt", replace_line(&text, 10, "ten, written on b"));
    wait_recorded(&b, "notes.txt");
    resume(&a);
    let merged = replace_line(&replace_line(&text, 1, "one, saved on a"), 10, "ten, written on b");
    put_file(&mut expected, "notes.txt", &merged);
    settle(&[&a, &b], &mut expected);
}

#[test]
fn vim_backupcopy_yes_saves_in_place_and_merges() {
    if !have("vim") {
        return;
    }
    save_against_a_peer(|peer, rel, line, text| {
        vim(peer, rel, "yes", &[&format!("{line}s/.*/{text}/")]);
    });
}

#[test]
fn vim_backupcopy_no_renames_and_still_is_one_edit() {
    if !have("vim") {
        return;
    }
    save_against_a_peer(|peer, rel, line, text| {
        vim(peer, rel, "no", &[&format!("{line}s/.*/{text}/")]);
    });
}

#[test]
fn sed_in_place_is_an_edit_and_merges() {
    if !have("sed") {
        return;
    }
    save_against_a_peer(|peer, rel, line, text| {
        run(peer.dir(), "sed", &["-i", &format!("{line}s/.*/{text}/"), rel]);
    });
}

#[test]
fn temp_file_renamed_over_is_an_edit_and_merges() {
    // What many tools do (atomic writes): a sibling temp file with an unremarkable name,
    // written, then renamed over the target.
    save_against_a_peer(|peer, rel, line, text| {
        let old = String::from_utf8(peer.read(rel).expect("target exists")).expect("text");
        let temp = format!(".{rel}.Xq3z9");
        peer.write(&temp, replace_line(&old, line, text));
        peer.rename(&temp, rel);
    });
}

#[test]
fn temp_file_seen_by_peers_then_renamed_over_replaces_the_target() {
    // The slow case: the temp file lived long enough to be synced as a file of its own,
    // then the tool renamed it over the target. The target holds the new content on both
    // peers, the temp is gone, and there is no conflict copy.
    let mut expected = Tree::new();
    put_file(&mut expected, "notes.txt", numbered_lines(5));
    let (a, b) = connected_pair(&expected);
    let new = replace_line(&numbered_lines(5), 3, "three, via a temp file");
    a.write("notes.txt.part", &new);
    put_file(&mut expected, "notes.txt.part", &new);
    wait_converged_to(&[&a, &b], &expected);
    a.rename("notes.txt.part", "notes.txt");
    remove(&mut expected, "notes.txt.part");
    put_file(&mut expected, "notes.txt", &new);
    settle(&[&a, &b], &mut expected);
}

/// `peer`'s folder without git's own directory (which teatime never syncs).
fn tree_without_git(peer: &Peer) -> Tree {
    let mut tree = peer.tree();
    remove(&mut tree, ".git");
    tree
}

/// [`settle`] for folders holding a git repository, with a longer deadline: thousands
/// of files take a while on a loaded debug build.
fn settle_without_git(peers: &[&Peer], expected: &mut Tree) {
    let limit = deadline() * 6;
    let wait = |expected: &Tree| {
        for peer in peers {
            let start = Instant::now();
            loop {
                let actual = tree_without_git(peer);
                if &actual == expected {
                    break;
                }
                assert!(
                    start.elapsed() < limit,
                    "timed out after {limit:?} waiting for {} to hold the expected tree (.git aside):\n{}",
                    peer.name(),
                    diff_trees(&actual, expected)
                );
                thread::sleep(Duration::from_millis(200));
            }
        }
    };
    wait(expected);
    for peer in peers {
        let path = format!("barrier-{}.txt", peer.name());
        peer.write(&path, "done\n");
        put_file(expected, &path, "done\n");
    }
    wait(expected);
}

/// A file of the generated repository: `lines` numbered lines naming it.
fn repo_file(path: &str, lines: usize, version: &str) -> String {
    (1..=lines).map(|i| format!("{path} line {i} {version}\n")).collect()
}

#[test]
fn git_checkout_of_another_branch_with_thousands_of_files() {
    if !have("git") {
        return;
    }
    const FILES: usize = 2000;
    let git = |dir: &Path, args: &[&str]| {
        let mut all =
            vec!["-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "init.defaultBranch=main"];
        all.extend(args);
        run(dir, "git", &all);
    };
    let path_of = |i: usize| format!("src/m{}/s{}/f{i}.txt", i % 10, i % 7);

    // Branch main: FILES files. Branch other: every 3rd changed (line 2), every 20th
    // removed (a minority: no mass-deletion guard should trip), 300 added.
    let mut main = Tree::new();
    for i in 0..FILES {
        put_file(&mut main, &path_of(i), repo_file(&path_of(i), 6, "main"));
    }
    let mut a = Peer::new("a");
    write_tree(a.dir(), &main);
    git(a.dir(), &["init", "-q"]);
    git(a.dir(), &["add", "-A"]);
    git(a.dir(), &["commit", "-qm", "main"]);
    git(a.dir(), &["checkout", "-qb", "other"]);
    let mut other = main.clone();
    for i in 0..FILES {
        let path = path_of(i);
        if i % 20 == 0 {
            std::fs::remove_file(a.path(&path)).expect("rm");
            remove(&mut other, &path);
        } else if i % 3 == 0 {
            let text = replace_line(&repo_file(&path, 6, "main"), 2, &format!("{path} changed on other"));
            a.write(&path, &text);
            put_file(&mut other, &path, text);
        }
    }
    for i in 0..300 {
        let path = format!("added/a{}/n{i}.txt", i % 5);
        let text = repo_file(&path, 3, "other");
        a.write(&path, &text);
        put_file(&mut other, &path, text);
    }
    // Removing files leaves empty directories behind on disk (git does not remove them
    // on commit, but does on checkout); the expected trees hold only what git tracks.
    git(a.dir(), &["add", "-A"]);
    git(a.dir(), &["commit", "-qm", "other"]);
    git(a.dir(), &["checkout", "-q", "main"]);
    assert_eq!(crate::harness::tree(a.dir()).keys().filter(|k| k.ends_with(".txt")).count(), FILES);

    a.start_share();
    let b = Peer::join("b", a.ticket());
    let mut expected = main.clone();
    settle_without_git(&[&a, &b], &mut expected);
    main = expected.clone(); // with the barrier files, which git leaves alone

    // Concurrently: B edits line 5 of a file the checkout changes (line 2), A checks out.
    let edited = path_of(3);
    pause(&a);
    let on_b = replace_line(&repo_file(&edited, 6, "main"), 5, "line 5, edited on b");
    b.write(&edited, &on_b);
    wait_recorded(&b, &edited);
    git(a.dir(), &["checkout", "-q", "other"]);
    resume(&a);
    for (path, entry) in &main {
        if path.starts_with("barrier-") {
            other.insert(path.clone(), entry.clone());
        }
    }
    expected = other.clone();
    let merged = replace_line(
        &replace_line(&repo_file(&edited, 6, "main"), 2, &format!("{edited} changed on other")),
        5,
        "line 5, edited on b",
    );
    put_file(&mut expected, &edited, merged);
    settle_without_git(&[&a, &b], &mut expected);

    // And back, without concurrency: the last checkout wins everywhere. B's merged edit
    // is a local modification git would refuse to overwrite, so it is committed first.
    git(a.dir(), &["commit", "-qam", "merged edit"]);
    git(a.dir(), &["checkout", "-q", "main"]);
    // The barrier files were never committed: git leaves them alone.
    let mut back = main.clone();
    settle_without_git(&[&a, &b], &mut back);
}

#[test]
fn cp_r_and_mv_of_a_tree_while_a_peer_edits_inside() {
    if !have("cp") || !have("mv") {
        return;
    }
    let mut expected = Tree::new();
    for d in ["src", "src/x", "src/x/y", "src/z"] {
        for i in 0..5 {
            put_file(&mut expected, &format!("{d}/f{i}.txt"), numbered_lines(4));
        }
    }
    put_file(&mut expected, "keep.txt", "untouched\n");
    let (a, b) = connected_pair(&expected);

    // A copies the tree and moves the original while B edits a file inside it.
    pause(&a);
    let edited = replace_line(&numbered_lines(4), 4, "four, edited on b");
    b.write("src/x/y/f2.txt", &edited);
    wait_recorded(&b, "src/x/y/f2.txt");
    run(a.dir(), "cp", &["-r", "src", "copy"]);
    run(a.dir(), "mv", &["src", "moved"]);
    resume(&a);
    // The copy was taken from A's disk before B's edit arrived; the edit follows the
    // moved original.
    let original = expected.clone();
    for (path, entry) in &original {
        if let Some(rest) = path.strip_prefix("src/") {
            expected.insert(format!("copy/{rest}"), entry.clone());
        }
    }
    crate::harness::put_dir(&mut expected, "copy");
    rename(&mut expected, "src", "moved");
    put_file(&mut expected, "moved/x/y/f2.txt", &edited);
    settle(&[&a, &b], &mut expected);

    // Without concurrency: B moves the copy inside the moved tree; A sees exactly that.
    run(b.dir(), "mv", &["copy", "moved/x/copy"]);
    rename(&mut expected, "copy", "moved/x/copy");
    settle(&[&a, &b], &mut expected);
}

#[test]
fn rm_rf_of_a_subtree_keeps_a_concurrent_edit_and_nothing_else() {
    if !have("rm") {
        return;
    }
    let mut expected = Tree::new();
    // Enough files that both removals together (18 of 48) stay under the mass-delete
    // breaker's default share (50 %, deletions of the last minute counted together).
    for d in ["docs", "docs/old", "src", "tests", "misc", "lib", "bin", "assets"] {
        for i in 0..6 {
            put_file(&mut expected, &format!("{d}/f{i}.txt"), numbered_lines(3));
        }
    }
    let (a, b) = connected_pair(&expected);

    // Without concurrency: the subtree goes everywhere, the rest stays.
    run(a.dir(), "rm", &["-rf", "misc"]);
    remove(&mut expected, "misc");
    wait_converged_to(&[&a, &b], &expected);

    // Concurrently: A removes docs/ (a minority of the files) while B edits a file in
    // docs/old. The edit wins over the deletion that had not seen it: docs/old/f1.txt
    // comes back with its directories, and only it.
    pause(&a);
    let edited = replace_line(&numbered_lines(3), 2, "two, edited on b");
    b.write("docs/old/f1.txt", &edited);
    wait_recorded(&b, "docs/old/f1.txt");
    run(a.dir(), "rm", &["-rf", "docs"]);
    resume(&a);
    remove(&mut expected, "docs");
    put_file(&mut expected, "docs/old/f1.txt", &edited);
    settle(&[&a, &b], &mut expected);
}
