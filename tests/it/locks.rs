//! Advisory locks: a locked file's concurrent changes are held back on other peers until
//! the lock is released, or until the holder has been gone for the lease.

use crate::harness::{Peer, Tree, connected_pair, put_file, wait_converged_to, wait_for, wait_until};

/// The paths `peer` lists as locked, with the holder's name.
fn locks(peer: &Peer) -> Vec<(String, String)> {
    let v = peer.cli_json(&["locks", peer.dir_arg(), "--json"]);
    v.as_array()
        .into_iter()
        .flatten()
        .map(|l| (l["path"].as_str().unwrap_or("").to_string(), l["name"].as_str().unwrap_or("").to_string()))
        .collect()
}

fn wait_locks(peer: &Peer, expected: &[(&str, &str)]) {
    let expected: Vec<(String, String)> =
        expected.iter().map(|(p, n)| (p.to_string(), n.to_string())).collect();
    wait_for(&format!("{} to list locks {expected:?}", peer.name), || {
        let got = locks(peer);
        if got == expected { Ok(()) } else { Err(format!("{got:?}")) }
    });
}

#[test]
fn a_lock_holds_back_a_concurrent_change_until_unlocked() {
    let mut expected = Tree::new();
    put_file(&mut expected, "notes.md", "text\n");
    put_file(&mut expected, "art.bin", b"\0version one\xff");
    let (a, b) = connected_pair(&expected);

    a.cli_ok(&["lock", a.dir_arg(), "art.bin"]);
    wait_locks(&b, &[("art.bin", "a")]);
    // Taking a lock someone else holds is refused, naming the holder.
    let out = b.cli(&["lock", b.dir_arg(), "art.bin"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("locked by a"), "{out:?}");

    // B changes the locked file: held back on B, never reaching A, while A keeps syncing.
    b.write("art.bin", b"\0b's version\xfe");
    wait_until("b's log to say the file is locked", || b.log_text().contains("locked by another peer"));
    // Barrier: a change each way made after B's write has arrived.
    a.write("from-a.md", "after\n");
    b.write("from-b.md", "after\n");
    wait_until("both barriers to cross", || b.read("from-a.md").is_some() && a.read("from-b.md").is_some());
    assert_eq!(a.read("art.bin").as_deref(), Some(&b"\0version one\xff"[..]));
    assert_eq!(b.read("art.bin").as_deref(), Some(&b"\0b's version\xfe"[..]), "b's change stays on b's disk");

    // Unlocked: the held change goes out.
    a.cli_ok(&["unlock", a.dir_arg(), "art.bin"]);
    put_file(&mut expected, "art.bin", b"\0b's version\xfe");
    put_file(&mut expected, "from-a.md", "after\n");
    put_file(&mut expected, "from-b.md", "after\n");
    wait_converged_to(&[&a, &b], &expected);
    wait_locks(&b, &[]);
}

#[test]
fn a_lock_expires_after_its_holder_is_killed() {
    let mut expected = Tree::new();
    put_file(&mut expected, "art.bin", b"\0one\xff");
    let (mut a, b) = connected_pair(&expected);
    a.cli_ok(&["config", a.dir_arg(), "lock-lease", "2"]);
    wait_for("b to see the 2 s lease", || {
        let v = b.cli_ok(&["config", b.dir_arg(), "lock-lease"]);
        if v.trim() == "2" { Ok(()) } else { Err(v) }
    });
    a.cli_ok(&["lock", a.dir_arg(), "art.bin"]);
    wait_locks(&b, &[("art.bin", "a")]);
    b.write("art.bin", b"\0b wrote this while a held the lock\xff");
    wait_until("b's log to say the file is locked", || b.log_text().contains("locked by another peer"));

    a.kill();
    // The lease runs out on B, and the held change is published: A finds it on restart.
    wait_locks(&b, &[]);
    a.sync();
    put_file(&mut expected, "art.bin", b"\0b wrote this while a held the lock\xff");
    wait_converged_to(&[&a, &b], &expected);
    // A's lock survived its restart and is announced again; B's change already went out.
    wait_locks(&b, &[("art.bin", "a")]);
}
