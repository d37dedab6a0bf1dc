//! The join proof, from the outside: a hand-written client speaks the wire protocol to a
//! real `teatime share` and must get nothing about the folder unless it proves the secret.
//!
//! The client ([`crate::rawpeer`]) is loopback-only, configured like the node's
//! `--network loopback`.

use std::collections::HashMap;

use teatime::net::auth;
use teatime::net::wire::Frame;
use teatime_crdt::automerge::AutoCommit;
use teatime_crdt::{DocId, FileDoc, FolderDoc};

use crate::harness::{Peer, Tree, assert_trees, put_file, wait_converged_to, wait_until};
use crate::rawpeer::{Client, Read, loopback_ticket, runtime};

/// Name and content nobody could produce by accident: if either shows up in what a client
/// received, folder data leaked.
const SECRET_NAME: &str = "quokka-ledger-7d31.txt";
const SECRET_CONTENT: &str = "marmalade-vault-5f08: the combination is 31-4-15\n";

fn secret_tree() -> Tree {
    let mut tree = Tree::new();
    put_file(&mut tree, "plans/readme.txt", "nothing to see here\n");
    put_file(&mut tree, &format!("plans/{SECRET_NAME}"), SECRET_CONTENT);
    tree
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn assert_nothing_leaked(received: &[u8], attempt: &str) {
    for needle in [SECRET_NAME, SECRET_CONTENT.trim_end()] {
        assert!(
            !contains(received, needle),
            "{attempt}: {needle:?} appears in the {} bytes the client received",
            received.len()
        );
    }
}

/// Whether the sharer's log shows a session with the endpoint whose short id is `short`
/// (the session logs `connected peer=<short id>` once the handshake is over).
fn logged_session_with(sharer: &Peer, short: &str) -> bool {
    sharer.log_text().contains(&format!("connected peer={short}"))
}

/// The sharer still serves its folder untouched: a real peer joins and gets exactly it.
fn assert_sharer_unharmed(sharer: &mut Peer, expected: &Tree) {
    assert!(sharer.is_running(), "the sharer exited after the hostile attempts");
    assert_trees(&[&*sharer], expected);
    let joiner = Peer::join("honest", sharer.ticket());
    wait_converged_to(&[&*sharer, &joiner], expected);
    assert!(sharer.is_running(), "the sharer exited");
}

#[test]
fn a_wrong_proof_is_refused_and_receives_no_folder_data() {
    let expected = secret_tree();
    let mut sharer = Peer::share_tree("sharer", &expected);
    let ticket = loopback_ticket(&sharer);

    let rt = runtime();
    let mut wrong = ticket.secret;
    wrong[0] ^= 1;
    let (received, short) = rt.block_on(async {
        let mut client = Client::connect(&ticket).await;
        client.hello(ticket.folder).await;
        client.prove(&ticket, &wrong).await;
        client.expect_refused_then_nothing("a proof made with the wrong secret").await;
        let out = (client.received().to_vec(), client.endpoint.id().fmt_short().to_string());
        client.close().await;
        out
    });
    assert_nothing_leaked(&received, "wrong proof");

    assert_sharer_unharmed(&mut sharer, &expected);
    assert!(!logged_session_with(&sharer, &short), "the sharer logged a session with the refused client");
}

#[test]
fn a_hello_for_an_unknown_folder_is_refused_with_nothing_else() {
    let expected = secret_tree();
    let mut sharer = Peer::share_tree("sharer", &expected);
    let ticket = loopback_ticket(&sharer);

    let rt = runtime();
    let mut unknown = ticket.folder;
    unknown.0[0] ^= 1;
    let (received, short) = rt.block_on(async {
        let mut client = Client::connect(&ticket).await;
        client.hello(unknown).await;
        // An eager client pipelines a proof (for the real secret) and a summary anyway.
        let mac = auth::proof(&ticket.secret, unknown, &client.endpoint.id(), &ticket.addr.id, &[0; 32]);
        client.send_eagerly(&Frame::Proof { mac }).await;
        client.send_eagerly(&Frame::Summary { docs: Vec::new() }).await;
        client.expect_refused_then_nothing("a Hello for an unknown folder").await;
        let out = (client.received().to_vec(), client.endpoint.id().fmt_short().to_string());
        client.close().await;
        out
    });
    assert_nothing_leaked(&received, "unknown folder");

    assert_sharer_unharmed(&mut sharer, &expected);
    assert!(!logged_session_with(&sharer, &short), "the sharer logged a session with the refused client");
}

/// The positive control for the two tests above: the same client with the right secret is
/// let in, and the very checks they rely on (frames after the proof, the distinctive bytes,
/// the sharer's log) do see the folder's data.
#[test]
fn the_right_proof_is_welcomed_and_receives_the_folder() {
    let expected = secret_tree();
    let mut sharer = Peer::share_tree("sharer", &expected);
    let ticket = loopback_ticket(&sharer);

    let rt = runtime();
    let short = rt.block_on(async {
        let mut client = Client::connect(&ticket).await;
        client.hello(ticket.folder).await;
        client.prove(&ticket, &ticket.secret).await;
        match client.read("the answer to the right proof").await {
            Read::Frame(Frame::Welcome { .. }) => {}
            other => panic!("expected Welcome after the right proof, got {other:?}"),
        }
        // The documents the client receives, decoded as a joiner would: the folder's file
        // names and contents must be in them (Automerge compresses, so the raw bytes need
        // not show them).
        let mut summary = false;
        let mut docs: HashMap<DocId, AutoCommit> = HashMap::new();
        let got_folder = |docs: &mut HashMap<DocId, AutoCommit>| {
            let names = |d: &AutoCommit| {
                let folder = FolderDoc::from_doc(d.clone());
                folder.entries().values().any(|e| e.locs.iter().any(|l| l.name == SECRET_NAME))
            };
            let has_name = docs.values().any(names);
            let has_text =
                docs.values().any(|d| FileDoc::from_doc(d.clone()).text().as_deref() == Some(SECRET_CONTENT));
            has_name && has_text
        };
        while !(summary && got_folder(&mut docs)) {
            match client.read("a Summary and the secret file's name and content").await {
                Read::Frame(Frame::Summary { docs }) => {
                    assert!(!docs.is_empty(), "the sharer's summary lists no document");
                    summary = true;
                }
                Read::Frame(Frame::Changes { doc, data, .. }) => {
                    docs.entry(doc)
                        .or_default()
                        .load_incremental(&data)
                        .expect("the sharer sent valid changes");
                }
                Read::Frame(_) => {}
                other => panic!(
                    "the session ended ({other:?}) before the client got a Summary (got one: {summary}) \
                     and the secret file's name and content"
                ),
            }
        }
        let short = client.endpoint.id().fmt_short().to_string();
        client.close().await;
        short
    });
    wait_until("the sharer to log the session with the welcomed client", || {
        logged_session_with(&sharer, &short)
    });

    assert_sharer_unharmed(&mut sharer, &expected);
}
