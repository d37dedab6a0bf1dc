//! Text documents are read from the store when used and dropped when idle: a restart
//! reads none of them, and a folder of many files never holds them all in memory.

use crate::harness::{Peer, Tree, connected_pair, put_file, wait_converged_to, wait_for};

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
