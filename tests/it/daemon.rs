//! `teatime daemon`: several folders in one headless process, handed over by `share`,
//! `join` and `sync`, surviving a restart, stopping cleanly.

use std::ffi::OsStr;
use std::fs;

use crate::harness::{Peer, Tree, put_file, wait_converged_to, wait_until};

#[test]
fn a_daemon_runs_several_folders_across_a_restart() {
    let mut d = Peer::new("d");
    let notes = d.dir().to_path_buf();
    let photos = d.home().with_file_name("photos");
    fs::create_dir_all(&notes).unwrap();
    fs::create_dir_all(&photos).unwrap();
    fs::write(notes.join("todo.md"), "- tea\n").unwrap();
    fs::write(photos.join("cat.bin"), b"\0meow\xff").unwrap();
    d.start_daemon();

    // `share` hands the folder to the daemon, prints the ticket, and returns.
    let notes_ticket = d.cli_ok(&["share", notes.to_str().unwrap()]).trim().to_string();
    let photos_ticket = d.cli_ok(&["share", photos.to_str().unwrap()]).trim().to_string();
    assert!(notes_ticket.starts_with("tt1") && photos_ticket.starts_with("tt1"));

    // A second daemon on the same home refuses to start, saying why.
    let second = d.run_to_end(&[OsStr::new("daemon")]);
    assert!(!second.status.success(), "{second:?}");
    assert!(second.stderr.contains("already runs"), "{second:?}");

    // A folder inside (or around) a shared one is refused.
    fs::create_dir_all(notes.join("sub")).unwrap();
    let nested = d.cli(&["share", notes.join("sub").to_str().unwrap()]);
    assert_eq!(nested.status.code(), Some(2), "{nested:?}");
    assert!(String::from_utf8_lossy(&nested.stderr).contains("inside the shared folder"), "{nested:?}");

    // Two peers join the two folders; both sync both ways with the daemon.
    let b = Peer::join("b", &notes_ticket);
    let c = Peer::join("c", &photos_ticket);
    let mut notes_tree = Tree::new();
    put_file(&mut notes_tree, "todo.md", "- tea\n");
    crate::harness::put_dir(&mut notes_tree, "sub");
    let mut photos_tree = Tree::new();
    put_file(&mut photos_tree, "cat.bin", b"\0meow\xff");
    wait_converged_to(&[&b], &notes_tree);
    wait_converged_to(&[&c], &photos_tree);
    b.write("todo.md", "- tea\n- biscuits\n");
    wait_until("b's edit to reach the daemon", || {
        fs::read(notes.join("todo.md")).ok().as_deref() == Some(&b"- tea\n- biscuits\n"[..])
    });
    // Folder commands reach the daemon through the folder's socket.
    assert_eq!(d.cli_ok(&["config", notes.to_str().unwrap(), "conflict-strategy"]).trim(), "timestamp");

    // SIGTERM: a clean exit (0). Restarted, it resumes both folders by itself.
    d.stop();
    b.write("todo.md", "- tea\n- biscuits\n- while the daemon was down\n");
    c.write("dog.bin", b"\0woof\xff");
    d.start_daemon();
    wait_until("both folders to catch up after the restart", || {
        fs::read(notes.join("todo.md")).ok().as_deref()
            == Some(&b"- tea\n- biscuits\n- while the daemon was down\n"[..])
            && fs::read(photos.join("dog.bin")).ok().as_deref() == Some(&b"\0woof\xff"[..])
    });

    // `join` hands a third folder to the running daemon, and returns at once.
    let mut e_tree = Tree::new();
    put_file(&mut e_tree, "shared-by-e.md", "from e\n");
    let e = Peer::share_tree("e", &e_tree);
    let joined = d.home().with_file_name("from-e");
    d.cli_ok(&["join", e.ticket(), joined.to_str().unwrap()]);
    wait_until("e's folder to arrive in the daemon", || {
        fs::read(joined.join("shared-by-e.md")).ok().as_deref() == Some(&b"from e\n"[..])
    });

    // `unshare`: the daemon stops syncing the folder, whose files stay as they are.
    d.cli_ok(&["unshare", photos.to_str().unwrap()]);
    c.write("later.bin", b"\0not for the daemon\xff");
    b.write("barrier.md", "after unshare\n");
    wait_until("the barrier to reach the daemon's notes", || notes.join("barrier.md").exists());
    // (c's change had as long as b's to arrive, over a connection that is now gone.)
    assert!(photos.join("dog.bin").exists() && photos.join("cat.bin").exists());
    assert!(!photos.join("later.bin").exists());
    let folders = fs::read_to_string(d.home().join("folders")).unwrap();
    assert!(!folders.contains("photos"), "{folders}");
}

#[test]
fn a_config_file_with_a_typo_is_refused_clearly() {
    let d = Peer::new("d");
    fs::create_dir_all(d.dir()).unwrap();
    d.write_config("rescan_secs = 60\ndebounce = 20\n");
    let out = d.run_to_end(&[OsStr::new("share"), d.dir().as_os_str()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("config.toml") && out.stderr.contains("debounce"), "{out:?}");
    assert!(!d.dir().join(".teatime").exists(), "nothing is created on bad input");
}
