//! Hostile input after the join proof: a member that sends bytes no honest peer sends (an
//! oversized frame, garbage where Automerge changes belong, a document over the size cap,
//! a document that makes Automerge panic)
//! loses its session, is named in `teatime status`, is refused for a while, and the node
//! keeps syncing with everyone else.
//!
//! The hostile peer is the hand-written client of `rawpeer.rs`, admitted with the real
//! ticket.

use serde_json::Value;
use teatime::net::wire::{Frame, MAX_FRAME_BYTES};
use teatime_crdt::{DocId, FileDoc};

use crate::harness::{Peer, Tree, put_file, wait_converged_to, wait_for, write_tree};
use crate::rawpeer::{Client, Read, loopback_ticket, runtime};
use crate::status::check_schema;

/// The sharer's cap on one document's payload (`max_doc_bytes`), low enough for a test to
/// go over it with a small frame.
const CAP: usize = 1 << 20;

enum Attack {
    /// A length prefix one byte over the frame limit, and nothing after it.
    OversizedPrefix,
    /// A `Changes` frame whose data starts like an Automerge chunk and is garbage.
    GarbageChanges,
    /// A `Changes` frame holding a valid document that inflates past [`CAP`].
    OverCap(Vec<u8>),
    /// A `Changes` frame holding a document chunk that passes every check before
    /// decoding and makes Automerge 0.12 panic (found by fuzzing).
    AutomergePanic,
}

/// The fuzz seed of that document chunk (its first byte is the fuzz target's mode).
const AUTOMERGE_PANIC: &[u8] = include_bytes!("../../fuzz/corpus/changes_admission/automerge-panic");

impl Attack {
    async fn send(&self, client: &mut Client, folder: DocId) {
        match self {
            Attack::OversizedPrefix => {
                let prefix = ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes();
                let _ = client.send.write_all(&prefix).await;
            }
            Attack::GarbageChanges => {
                let mut data = vec![0x85, 0x6f, 0x4a, 0x83];
                data.extend_from_slice(b"\x01\x02\x03\x04\x01\x20 not an automerge change at all!!");
                client
                    .send(&Frame::Changes { doc: folder, data, heads: Vec::new(), signatures: Vec::new() })
                    .await;
            }
            Attack::OverCap(data) => {
                let doc = DocId([0x5a; 16]);
                client
                    .send(&Frame::Changes {
                        doc,
                        data: data.clone(),
                        heads: Vec::new(),
                        signatures: Vec::new(),
                    })
                    .await;
            }
            Attack::AutomergePanic => {
                let (doc, data) = (DocId([0x5b; 16]), AUTOMERGE_PANIC[1..].to_vec());
                client.send(&Frame::Changes { doc, data, heads: Vec::new(), signatures: Vec::new() }).await;
            }
        }
    }

    /// What the sharer's status must say about the peer.
    fn reason(&self) -> &'static str {
        match self {
            Attack::OversizedPrefix => "byte frame, over the",
            Attack::GarbageChanges => "not Automerge changes",
            Attack::OverCap(_) => "cap for one document",
            // If a later Automerge reports an error instead, the peer is still dropped
            // and named, with that error: update this text then.
            Attack::AutomergePanic => "Automerge panicked",
        }
    }
}

/// Reads (and drops) whatever the sharer sends until it ends the session; panics if it
/// is still open after the deadline.
async fn expect_dropped(client: &mut Client, after: &str) {
    loop {
        match client.read(&format!("the sharer to drop the session after {after}")).await {
            Read::Frame(_) => {}
            Read::End | Read::Failed(_) => return,
        }
    }
}

/// The sharer's status entry for the peer `id`.
fn status_of(sharer: &Peer, id: &str) -> Result<(Value, Value), String> {
    let v = sharer.cli_json(&["status", sharer.dir_arg(), "--json"]);
    let peer = v["peers"].as_array().and_then(|p| p.iter().find(|p| p["id"] == id).cloned());
    match peer {
        Some(p) => Ok((v, p)),
        None => Err(format!("no peer {id} in {v:#}")),
    }
}

#[test]
fn peers_that_send_garbage_are_dropped_and_named_while_an_honest_peer_syncs() {
    let mut expected = Tree::new();
    put_file(&mut expected, "notes.md", "one\n");
    let mut sharer = Peer::new("sharer");
    sharer.write_config(&format!("max_doc_bytes = {CAP}\n"));
    write_tree(sharer.dir(), &expected);
    sharer.start_share();
    let honest = Peer::join("honest", sharer.ticket());
    wait_converged_to(&[&sharer, &honest], &expected);
    let ticket = loopback_ticket(&sharer);

    // Two MiB of one letter: Automerge's save compresses it to a few KiB.
    let big = FileDoc::create(teatime_crdt::automerge::ActorId::random(), &"x".repeat(2 * CAP), 0)
        .unwrap()
        .doc_mut()
        .save();
    assert!(big.len() < CAP, "the document should be small on the wire ({} bytes)", big.len());
    let attacks =
        [Attack::OversizedPrefix, Attack::GarbageChanges, Attack::OverCap(big), Attack::AutomergePanic];

    let rt = runtime();
    let mut kept = None;
    for (i, attack) in attacks.into_iter().enumerate() {
        let reason = attack.reason();
        let (id, client) = rt.block_on(async {
            let mut client = Client::connect(&ticket).await;
            client.hello(ticket.folder, Some(&ticket)).await;
            client.prove(&ticket, &ticket.secret).await;
            match client.read("the answer to the right proof").await {
                Read::Frame(Frame::Welcome { .. }) => {}
                other => panic!("expected Welcome, got {other:?}"),
            }
            attack.send(&mut client, ticket.folder).await;
            expect_dropped(&mut client, reason).await;
            (client.endpoint.id().to_string(), client)
        });

        let (status, peer) =
            wait_for(&format!("the sharer's status to name the peer that sent {reason:?}"), || {
                let (v, p) = status_of(&sharer, &id)?;
                let named = p["last_fault"]["reason"].as_str().is_some_and(|r| r.contains(reason));
                if named && p["connected"] == false { Ok((v, p)) } else { Err(format!("{p:#}")) }
            });
        check_schema(&status);
        assert!(peer["quarantined_until"].is_string(), "{peer:#}");
        assert_eq!(peer["waiting_because"], "quarantined", "{peer:#}");
        assert!(sharer.is_running(), "the sharer exited after {reason:?}");

        // The honest peer keeps syncing, both ways, through the sharer.
        let (mine, theirs) = (format!("from-honest-{i}.txt"), format!("from-sharer-{i}.txt"));
        honest.write(&mine, format!("{i}\n"));
        sharer.write(&theirs, format!("{i}\n"));
        put_file(&mut expected, &mine, format!("{i}\n"));
        put_file(&mut expected, &theirs, format!("{i}\n"));
        wait_converged_to(&[&sharer, &honest], &expected);
        kept = Some(client);
    }

    // Within its cooldown, the last hostile peer is let through the handshake (it is a
    // member) but gets nothing of the folder: the session is closed at once.
    let client = kept.expect("the attacks ran");
    rt.block_on(async {
        let endpoint = client.endpoint.clone();
        client.conn.close(0u32.into(), b"again");
        let mut again = Client::reconnect(endpoint, &ticket).await;
        again.hello(ticket.folder, None).await;
        loop {
            match again.read("the sharer to refuse the quarantined peer").await {
                Read::Frame(Frame::Welcome { .. }) => {}
                Read::Frame(other) => panic!("a quarantined peer was sent {other:?}"),
                Read::End | Read::Failed(_) => break,
            }
        }
        again.close().await;
    });
    wait_for("the sharer to log that it refused the quarantined peer", || {
        let log = sharer.log_text();
        if log.contains("refusing a session: quarantined") { Ok(()) } else { Err("not yet".into()) }
    });
    assert!(sharer.is_running(), "the sharer exited");
}
