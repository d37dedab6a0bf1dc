//! Text documents are read from the store when used and dropped when idle: a restart
//! reads none of them, and a folder of many files never holds them all in memory.

use crate::harness::{
    Peer, Tree, connected_pair, put_file, remove, rename, settle, wait_converged_to, wait_for, write_tree,
};

/// Waits until `peer` is connected and has nothing left to send (its summary of every
/// document agrees with what it knows the other peer has).
fn wait_in_sync(peer: &Peer) {
    wait_for("nothing left to send", || {
        let status = peer.cli_json(&["status", peer.dir_arg(), "--json"]);
        let peers = status["peers"].as_array().cloned().unwrap_or_default();
        match peers.iter().any(|p| p["connected"] == true && p["pending_out"] == 0) {
            true => Ok(()),
            false => Err(format!("{}: {peers:?}", peer.name())),
        }
    });
}

fn documents_in_memory(peer: &Peer) -> u64 {
    let status = peer.cli_json(&["status", peer.dir_arg(), "--json"]);
    status["documents_in_memory"].as_u64().expect("documents_in_memory in status")
}

#[test]
fn documents_are_read_when_used_and_a_restart_reads_none() {
    // More files than the replica keeps in memory at once (docs.rs: 256).
    let mut seed = Tree::new();
    for i in 0..300 {
        put_file(&mut seed, &format!("notes/n{i:03}.md"), format!("note {i}\nsecond line\n"));
    }
    let (a, mut b) = connected_pair(&seed);
    // A change to the folder document once b has stored it.
    a.write("later.md", "later\n");
    put_file(&mut seed, "later.md", "later\n");
    wait_converged_to(&[&a, &b], &seed);
    for peer in [&a, &b] {
        wait_in_sync(peer);
        wait_for("documents beyond the cap dropped", || match documents_in_memory(peer) {
            n if n <= 256 => Ok(()),
            n => Err(format!("{} holds {n} documents", peer.name())),
        });
    }

    b.stop();
    b.sync();
    // Connected, and the summaries exchanged: nothing left to send either way.
    wait_in_sync(&b);
    wait_converged_to(&[&a, &b], &seed);
    assert_eq!(documents_in_memory(&b), 0, "a restart with nothing changed loads no document");

    // A change to one file reads that document, and only it, on both sides.
    let text = "note 7\nsecond line, edited on b\n";
    b.write("notes/n007.md", text);
    put_file(&mut seed, "notes/n007.md", text);
    wait_converged_to(&[&a, &b], &seed);
    let loaded = documents_in_memory(&b);
    assert!((1..=2).contains(&loaded), "b holds {loaded} documents after one edit");
}

/// Whether `peer`'s replica rests now, from its log (a status command would wake it).
fn resting(peer: &Peer) -> Result<(), String> {
    let log = peer.log_text();
    let (rests, wakes) =
        (log.matches("resting: folder state dropped").count(), log.matches("awake for").count());
    match rests > wakes {
        true => Ok(()),
        false => Err(format!("{}: {rests} rests, {wakes} wakes", peer.name())),
    }
}

fn wakes_for(peer: &Peer, why: &str) -> usize {
    peer.log_text().matches(&format!("awake for {why}")).count()
}

#[test]
fn a_quiet_replica_rests_and_the_next_event_wakes_it_with_the_folder_intact() {
    let mut seed = Tree::new();
    for i in 0..40 {
        put_file(&mut seed, &format!("notes/n{i:02}.md"), format!("note {i}\n"));
    }
    // Rest after one quiet second (the default is 30), and say so in the log.
    let start = |name: &str| {
        let mut peer = Peer::new(name);
        peer.write_config("rest_secs = 1\n");
        peer.set_env("RUST_LOG", Some("warn,iroh=error,teatime=info,teatime::replica::rest=debug"));
        peer
    };
    let mut a = start("a");
    write_tree(a.dir(), &seed);
    a.start_share();
    let mut b = start("b");
    b.start_join(a.ticket());
    wait_converged_to(&[&a, &b], &seed);

    // A peer's change reaches a resting replica: it wakes and writes it.
    wait_for("both resting", || resting(&a).and(resting(&b)));
    let frames = wakes_for(&b, "a peer's frame");
    a.write("notes/n01.md", "note 1, edited on a while b rests\n");
    put_file(&mut seed, "notes/n01.md", "note 1, edited on a while b rests\n");
    wait_converged_to(&[&a, &b], &seed);
    assert!(wakes_for(&b, "a peer's frame") > frames, "b did not wake for a's change:\n{}", b.log_text());

    // A local rename, a deletion and a new file, made while both rest.
    wait_for("both resting again", || resting(&a).and(resting(&b)));
    let file_events = wakes_for(&b, "a file event");
    b.rename("notes/n02.md", "notes/n02-renamed.md");
    rename(&mut seed, "notes/n02.md", "notes/n02-renamed.md");
    b.write("notes/new.md", "new on b\n");
    put_file(&mut seed, "notes/new.md", "new on b\n");
    wait_converged_to(&[&a, &b], &seed);
    assert!(
        wakes_for(&b, "a file event") > file_events,
        "b did not wake for its own edits:\n{}",
        b.log_text()
    );
    wait_for("both resting again", || resting(&a).and(resting(&b)));
    a.remove_file("notes/n03.md");
    remove(&mut seed, "notes/n03.md");
    settle(&[&a, &b], &mut seed);

    // A command wakes it too, and sees the whole folder.
    wait_for("both resting again", || resting(&a).and(resting(&b)));
    let files = seed.values().filter(|e| matches!(e, crate::harness::Entry::File(..))).count();
    for peer in [&a, &b] {
        let status = peer.cli_json(&["status", peer.dir_arg(), "--json"]);
        assert_eq!(status["files"].as_u64(), Some(files as u64), "{}: {status:#}", peer.name());
        assert!(status["rests"].as_u64() >= Some(4), "{}: {status:#}", peer.name());
        assert!(!peer.log_text().contains("panicked"), "{}", peer.log_text());
    }
}
