//! Guards against environment faults (see `src/replica/guards.rs`): the mass-delete
//! breaker, a folder whose marker or disk goes away, a full disk. The tests that mount
//! file systems (a bind mount standing for a disk, a size-limited tmpfs) need root; where
//! `mount` fails they say they are skipped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::*;

/// A mount the test made, lazily unmounted when dropped (declare it after the peer whose
/// folder it covers, so it goes first).
struct Mount {
    target: PathBuf,
}

impl Mount {
    fn run(args: &[&str], target: &Path) -> Option<Mount> {
        let ok = Command::new("mount").args(args).arg(target).status().is_ok_and(|s| s.success());
        ok.then(|| Mount { target: target.to_path_buf() })
    }

    /// `source` also at `target`: the same directory (device and inode) at two paths.
    fn bind(source: &Path, target: &Path) -> Option<Mount> {
        Mount::run(&["--bind", source.to_str().expect("UTF-8 path")], target)
    }

    fn tmpfs(target: &Path, size: &str) -> Option<Mount> {
        Mount::run(&["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"], target)
    }

    /// `umount -l`: gone from the path at once, even while teatime holds files open in it
    /// (as when a disk is pulled).
    fn unmount(self) {
        let status = Command::new("umount").arg("-l").arg(&self.target).status().expect("run umount");
        assert!(status.success(), "umount -l {}", self.target.display());
        std::mem::forget(self);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.target).status();
    }
}

fn skipped(test: &str) {
    eprintln!("{test}: skipped, this machine does not let the test mount file systems (needs root)");
}

fn problems(peer: &Peer) -> Vec<serde_json::Value> {
    let status = peer.cli_json(&["status", peer.dir_arg(), "--json"]);
    status["problems"].as_array().cloned().unwrap_or_default()
}

fn has_problem(peer: &Peer, kind: &str) -> bool {
    problems(peer).iter().any(|p| p["kind"] == kind)
}

fn many_files(dir: &str, count: usize) -> Tree {
    let mut tree = Tree::new();
    for i in 0..count {
        put_file(&mut tree, &format!("{dir}/f{i:02}.md"), format!("file {i}\n"));
    }
    put_file(&mut tree, "readme.md", "hello\n");
    tree
}

#[test]
fn a_mass_deletion_is_held_until_confirmed_or_reverted() {
    let seed = many_files("docs", 20);
    let (a, b) = connected_pair(&seed);

    a.remove_dir_all("docs");
    wait_until("a holds the mass deletion", || has_problem(&a, "mass-delete"));
    let human = a.cli_ok(&["status", a.dir_arg()]);
    assert!(human.contains("mass deletion held"), "status does not name it: {human}");
    // A later change of A's reaches B; the deletions, found before it, did not.
    a.write("after.md", "after\n");
    wait_until("b has a's later file", || b.read("after.md").is_some());
    for i in 0..20 {
        assert!(b.read(&format!("docs/f{i:02}.md")).is_some(), "docs/f{i:02}.md spread to b");
    }

    // Revert writes them back from the documents.
    a.cli_ok(&["revert", a.dir_arg()]);
    let mut expected = seed.clone();
    put_file(&mut expected, "after.md", "after\n");
    wait_converged_to(&[&a, &b], &expected);
    wait_until("a holds nothing any more", || problems(&a).is_empty());

    // Deleted again, and confirmed this time: it spreads.
    a.remove_dir_all("docs");
    wait_until("a holds the mass deletion again", || has_problem(&a, "mass-delete"));
    a.cli_ok(&["confirm-delete", a.dir_arg()]);
    remove(&mut expected, "docs");
    wait_converged_to(&[&a, &b], &expected);
    assert!(problems(&a).is_empty(), "still held after confirm-delete: {:?}", problems(&a));
}

#[test]
fn renames_and_git_checkouts_do_not_trip_the_breaker() {
    let seed = many_files("src", 20);
    let (a, b) = connected_pair(&seed);

    a.rename("src", "lib");
    let mut one = seed.clone();
    rename(&mut one, "src", "lib");
    wait_converged_to(&[&a, &b], &one);

    // A git work tree inside the folder (`.git/` is never synced): branch `two` changes
    // every file and drops two; checking out back and forth rewrites them all.
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=one"])
            .args(args)
            .current_dir(a.dir())
            .output()
            .expect("run git");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "one"]);
    git(&["checkout", "-qb", "two"]);
    let mut two = one.clone();
    for i in 0..20 {
        let path = format!("lib/f{i:02}.md");
        if i < 2 {
            a.remove_file(&path);
            remove(&mut two, &path);
        } else {
            a.write(&path, format!("file {i}, version two\n"));
            put_file(&mut two, &path, format!("file {i}, version two\n"));
        }
    }
    git(&["add", "-A"]);
    git(&["commit", "-qm", "two"]);
    let converged = |expected: &Tree| {
        wait_until("a and b hold the checked out tree", || {
            let mut on_a = a.tree();
            remove(&mut on_a, ".git");
            on_a == *expected && b.tree() == *expected
        })
    };
    converged(&two);
    git(&["checkout", "-q", "one"]);
    converged(&one);
    git(&["checkout", "-q", "two"]);
    converged(&two);
    assert!(problems(&a).is_empty(), "{:?}", problems(&a));
    assert!(!a.log_text().contains("mass deletion"), "the breaker tripped on renames or checkouts");
}

#[test]
fn a_folder_whose_marker_goes_is_paused_and_resumes_when_it_is_back() {
    let seed = many_files("notes", 12);
    let (a, b) = connected_pair(&seed);

    a.rename(STATE_DIR, ".teatime-away");
    wait_until("a sees its marker gone", || a.log_text().contains("folder missing"));
    a.remove_file("notes/f00.md");
    a.write("new-on-a.md", "a\n");
    b.write("from-b.md", "b\n");
    // B (or A) dials again and A refuses: nothing is exchanged while the folder is away.
    wait_until("a refuses sessions", || a.log_text().contains("refusing a session: the folder is missing"));
    assert!(b.read("notes/f00.md").is_some() && b.read("new-on-a.md").is_none());
    assert!(a.read("from-b.md").is_none(), "a wrote into a folder it had lost");

    a.rename(".teatime-away", STATE_DIR);
    let mut expected = seed.clone();
    remove(&mut expected, "notes/f00.md");
    put_file(&mut expected, "new-on-a.md", "a\n");
    put_file(&mut expected, "from-b.md", "b\n");
    wait_converged_to(&[&a, &b], &expected);
}

#[test]
fn an_unmounted_folder_is_paused_and_resumes_when_remounted() {
    const TEST: &str = "an_unmounted_folder_is_paused_and_resumes_when_remounted";
    let seed = many_files("notes", 12);
    let mut a = Peer::new_in("a", "folder");
    let disk = a.temp_root().join("disk");
    write_tree(&disk, &seed);
    fs::create_dir_all(a.dir()).expect("mount point");
    let Some(mount) = Mount::bind(&disk, a.dir()) else { return skipped(TEST) };
    a.start_share();
    let b = Peer::join("b", a.ticket());
    wait_converged_to(&[&a, &b], &seed);

    mount.unmount();
    wait_until("a sees its folder gone", || a.log_text().contains("folder missing"));
    b.write("notes/f01.md", "edited on b\n");
    b.remove_file("notes/f02.md");
    wait_until("a refuses sessions", || a.log_text().contains("refusing a session: the folder is missing"));
    assert!(a.tree().is_empty(), "a wrote into the empty mount point: {:?}", a.tree());
    assert_eq!(tree(&disk), seed, "a changed the unmounted disk");
    let mut expected = seed.clone();
    put_file(&mut expected, "notes/f01.md", "edited on b\n");
    remove(&mut expected, "notes/f02.md");
    assert_eq!(b.tree(), expected, "b lost something");

    let _mount = Mount::bind(&disk, a.dir()).expect("mount again");
    wait_converged_to(&[&a, &b], &expected);
}

/// Bytes free on the file system holding `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let st = rustix::fs::statvfs(dir).expect("statvfs");
    st.f_bavail * st.f_frsize
}

/// Text that does not compress much (so its documents take room too).
fn noise(bytes: usize) -> String {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = String::with_capacity(bytes + 80);
    while out.len() < bytes {
        for _ in 0..8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.push_str(&format!("{x:016x}"));
        }
        out.push('\n');
    }
    out
}

#[test]
fn a_full_disk_stops_writes_truncates_nothing_and_resumes_when_space_frees() {
    const TEST: &str = "a_full_disk_stops_writes_truncates_nothing_and_resumes_when_space_frees";
    let mut seed = one_file("keep.md", "original\n");
    put_file(&mut seed, "small.md", "small\n");
    let mut a = Peer::new("a");
    fs::create_dir_all(a.dir()).expect("mount point");
    let Some(_mount) = Mount::tmpfs(a.dir(), "16m") else { return skipped(TEST) };
    write_tree(a.dir(), &seed);
    a.start_share();
    let mut b = Peer::join("b", a.ticket());
    wait_converged_to(&[&a, &b], &seed);

    // Fill the disk (in the state directory, which is never synced), then leave 128 KiB;
    // nothing is written below 16 KiB.
    a.cli_ok(&["config", a.dir_arg(), "min-disk-free", "16384"]);
    let filler = a.path(".teatime/filler");
    {
        use std::io::Write;
        let mut f = fs::File::create(&filler).expect("filler");
        let chunk = vec![0xa5u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let len = f.metadata().expect("filler size").len();
        f.set_len(len.saturating_sub(128 * 1024)).expect("shrink filler");
    }
    wait_until("a has no problem before the big change", || {
        problems(&a).iter().all(|p| p["kind"] != "disk-full")
    });
    assert!(free_bytes(a.dir()) < 256 * 1024);

    let big = noise(400 * 1024);
    b.write("keep.md", &big);
    wait_until("a's status names the full disk", || has_problem(&a, "disk-full"));
    let human = a.cli_ok(&["status", a.dir_arg()]);
    assert!(human.contains("disk full"), "status does not name it: {human}");
    assert_eq!(a.read("keep.md").as_deref(), Some(&b"original\n"[..]), "keep.md was changed or truncated");
    let leftovers: Vec<String> =
        all_paths(a.dir()).into_iter().filter(|p| p.contains(".teatime-tmp")).collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");

    fs::remove_file(&filler).expect("free space");
    let mut expected = seed.clone();
    put_file(&mut expected, "keep.md", &big);
    wait_converged_to(&[&a, &b], &expected);
    wait_until("a's problems clear", || problems(&a).is_empty());

    // The state survived: it opens again, and syncing goes on.
    a.stop();
    a.sync();
    b.write("after.md", "after\n");
    put_file(&mut expected, "after.md", "after\n");
    wait_converged_to(&[&a, &b], &expected);
    b.stop();
}
