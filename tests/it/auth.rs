//! The join proof, from the outside: a hand-written client speaks the wire protocol to a
//! real `teatime share` and must get nothing about the folder unless it proves the secret.
//!
//! The client ([`crate::rawpeer`]) is loopback-only, configured like the node's
//! `--network loopback`.

use std::collections::HashMap;

use iroh::SecretKey;
use teatime::net::auth;
use teatime::net::wire::{Frame, read_frame};
use teatime::replica::sign_change;
use teatime::ticket::Ticket;
use teatime_crdt::automerge::AutoCommit;
use teatime_crdt::{DocId, FileDoc, FolderDoc};

use crate::harness::{Peer, Tree, assert_trees, deadline, put_file, wait_converged_to, wait_until};
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
        client.hello(ticket.folder, Some(&ticket)).await;
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
        client.hello(unknown, Some(&ticket)).await;
        // An eager client pipelines a proof (for the real secret) and a summary anyway.
        let mac = auth::proof(
            &ticket.secret,
            unknown,
            &ticket.id,
            &client.endpoint.id(),
            &ticket.addr.id,
            &[0; 32],
        );
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
        client.hello(ticket.folder, Some(&ticket)).await;
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

#[test]
fn a_stranger_with_the_right_alpn_gets_nothing() {
    let expected = secret_tree();
    let mut sharer = Peer::share_tree("sharer", &expected);
    let ticket = loopback_ticket(&sharer);

    let rt = runtime();
    let received = rt.block_on(async {
        let mut out = Vec::new();
        // No ticket at all: a stranger who learned the EndpointId and the folder id.
        let mut client = Client::connect(&ticket).await;
        client.hello(ticket.folder, None).await;
        client.send_eagerly(&Frame::Summary { docs: Vec::new() }).await;
        client.expect_refused_then_nothing("a Hello from a stranger").await;
        out.extend_from_slice(client.received());
        client.close().await;
        // A made-up ticket id: refused before any challenge.
        let mut forged = ticket.clone();
        forged.id[0] ^= 1;
        let mut client = Client::connect(&forged).await;
        client.hello(forged.folder, Some(&forged)).await;
        client.send_eagerly(&Frame::Summary { docs: Vec::new() }).await;
        client.expect_refused_then_nothing("a Hello naming a forged ticket").await;
        out.extend_from_slice(client.received());
        client.close().await;
        out
    });
    assert_nothing_leaked(&received, "stranger");
    assert!(!sharer.log_text().contains("new member admitted"), "the sharer admitted a stranger");
    assert_sharer_unharmed(&mut sharer, &expected);
}

/// Joins with the ticket as a member (a real admission), and collects the documents the
/// sharer sends until the secret file's document is there.
async fn join_and_fetch(client: &mut Client, ticket: &Ticket) -> HashMap<DocId, AutoCommit> {
    client.hello(ticket.folder, Some(ticket)).await;
    match client.read("a challenge, or a member's welcome").await {
        // A member: nothing to prove. An empty summary asks for every document.
        Read::Frame(Frame::Welcome { .. }) => client.send(&Frame::Summary { docs: Vec::new() }).await,
        Read::Frame(Frame::Challenge { nonce }) => {
            let (me, sharer) = (client.endpoint.id(), client.conn.remote_id());
            let mac = auth::proof(&ticket.secret, ticket.folder, &ticket.id, &me, &sharer, &nonce);
            client.send(&Frame::Proof { mac }).await;
            match client.read("the welcome").await {
                Read::Frame(Frame::Welcome { .. }) => client.send(&Frame::Summary { docs: Vec::new() }).await,
                other => panic!("expected Welcome, got {other:?}"),
            }
        }
        other => panic!("expected Challenge or Welcome, got {other:?}"),
    }
    let mut docs: HashMap<DocId, AutoCommit> = HashMap::new();
    loop {
        if docs.values().any(|d| FileDoc::from_doc(d.clone()).text().as_deref() == Some(SECRET_CONTENT)) {
            return docs;
        }
        match client.read("the secret file's document").await {
            Read::Frame(Frame::Changes { doc, data, .. }) => {
                docs.entry(doc).or_default().load_incremental(&data).expect("valid changes");
            }
            Read::Frame(_) => {}
            other => panic!("the session ended early: {other:?}"),
        }
    }
}

/// An edit of the secret file written under `actor`, as the frame that carries it, signed
/// by `signer` (or unsigned).
fn edit_as(
    docs: &HashMap<DocId, AutoCommit>,
    folder: DocId,
    actor: &[u8; 32],
    signer: Option<&SecretKey>,
    text: &str,
) -> Frame {
    let (id, doc) = docs
        .iter()
        .find(|(_, d)| FileDoc::from_doc((*d).clone()).text().as_deref() == Some(SECRET_CONTENT))
        .expect("the secret file's document");
    let actor = teatime_crdt::ids::actor_for_member(actor, rand::random());
    let mut file = FileDoc::from_doc(doc.clone().with_actor(actor));
    let before = file.doc_mut().get_heads();
    let far = std::time::Instant::now() + std::time::Duration::from_secs(5);
    file.ingest(text, far, 0).expect("edit the copy");
    let changes = file.doc_mut().get_changes(&before);
    let data = changes.iter().flat_map(|c| c.raw_bytes().to_vec()).collect();
    let signatures =
        signer.map(|k| changes.iter().map(|c| (c.hash().0, sign_change(k, folder, &c.hash()))).collect());
    let heads = file.doc_mut().get_heads().iter().map(|h| h.0).collect();
    Frame::Changes { doc: *id, data, heads, signatures: signatures.unwrap_or_default() }
}

/// Waits until the connection ends (the sharer dropped the client).
async fn expect_dropped(client: &mut Client, after: &str) {
    loop {
        match client.read(&format!("the sharer to drop the client after {after}")).await {
            Read::End | Read::Failed(_) => return,
            Read::Frame(_) => {}
        }
    }
}

#[test]
fn nobody_writes_under_another_members_actor() {
    let expected = secret_tree();
    let mut sharer = Peer::share_tree("sharer", &expected);
    let ticket = loopback_ticket(&sharer);
    let owner_id: [u8; 32] = *ticket.addr.id.as_bytes();

    let rt = runtime();
    rt.block_on(async {
        // A member forges the owner's actor, signing with its own key.
        let key = SecretKey::generate();
        let mut client = Client::connect_as(&ticket, key.clone()).await;
        let docs = join_and_fetch(&mut client, &ticket).await;
        client.send(&edit_as(&docs, ticket.folder, &owner_id, Some(&key), "forged by a member\n")).await;
        expect_dropped(&mut client, "a change under the owner's actor").await;
        client.close().await;
        // Another member, its own actor, unsigned (the first one is quarantined now).
        let key = SecretKey::generate();
        let mut client = Client::connect_as(&ticket, key.clone()).await;
        let docs = join_and_fetch(&mut client, &ticket).await;
        let me = *key.public().as_bytes();
        client.send(&edit_as(&docs, ticket.folder, &me, None, "unsigned\n")).await;
        expect_dropped(&mut client, "an unsigned change").await;
        client.close().await;
    });
    wait_until("the sharer to log both forgeries", || {
        let log = sharer.log_text();
        log.contains("not signed by its author") && log.contains("an unsigned change")
    });
    assert_sharer_unharmed(&mut sharer, &expected);
}

#[test]
fn a_readers_change_relayed_by_a_writer_is_refused() {
    let expected = secret_tree();
    let mut sharer = Peer::share_tree("sharer", &expected);
    let read_only = sharer.cli_ok(&["ticket", sharer.dir_arg(), "--read-only"]);
    let reader = Peer::join("reader", read_only.trim());
    wait_converged_to(&[&sharer, &reader], &expected);
    let reader_key: [u8; 32] = std::fs::read(reader.home().join("node.key"))
        .expect("the reader's key")
        .try_into()
        .expect("32 bytes");
    let reader_key = SecretKey::from_bytes(&reader_key);

    let ticket = loopback_ticket(&sharer);
    let rt = runtime();
    rt.block_on(async {
        // A writer (a real member) relays a change the reader signed.
        let mut client = Client::connect(&ticket).await;
        let docs = join_and_fetch(&mut client, &ticket).await;
        let reader_id = *reader_key.public().as_bytes();
        let frame = edit_as(&docs, ticket.folder, &reader_id, Some(&reader_key), "the reader's words\n");
        client.send(&frame).await;
        // Kept connected until the sharer has judged it (its tasks run on other threads).
        wait_until("the sharer to refuse the reader's change", || {
            sharer
                .log_text()
                .contains("refusing changes outside their author's role: a reader may not change")
        });
        client.close().await;
    });
    assert_trees(&[&sharer, &reader], &expected);
    assert_sharer_unharmed(&mut sharer, &expected);
}

#[test]
fn with_no_live_ticket_a_stranger_is_closed_on_before_any_stream() {
    let expected = secret_tree();
    let mut sharer = Peer::share_tree("sharer", &expected);
    let ticket = loopback_ticket(&sharer);
    let id = teatime_crdt::ids::to_hex(&ticket.id);
    let answer = sharer.cli_ok(&["revoke", sharer.dir_arg(), &id]);
    assert!(answer.contains("revoked"), "{answer}");

    let rt = runtime();
    rt.block_on(async {
        let (endpoint, conn) = Client::dial(&ticket, SecretKey::generate()).await;
        // Closed on at once: opening the stream fails, or the first read does.
        let closed =
            tokio::time::timeout(deadline(), conn.closed()).await.expect("the sharer closes the connection");
        assert!(format!("{closed:?}").contains("not a member"), "closed for another reason: {closed:?}");
        if let Ok((_send, mut recv)) = conn.open_bi().await {
            assert!(!matches!(read_frame(&mut recv).await, Ok(Some(_))), "a stranger got a frame");
        }
        endpoint.close().await;
    });
    assert!(sharer.is_running());
    // The standing ticket is revoked: a real joiner is refused too, and gets nothing.
    let late = Peer::join("late", sharer.ticket());
    wait_until("the late joiner to be refused", || late.log_text().contains("refused: not a member"));
    assert!(late.tree().keys().all(|p| p.starts_with(".teatime")), "{:?}", late.tree().keys());
}

#[test]
fn a_stranger_cannot_vouch_for_itself() {
    let expected = secret_tree();
    let mut sharer = Peer::share_tree("sharer", &expected);
    let ticket = loopback_ticket(&sharer);

    let rt = runtime();
    let received = rt.block_on(async {
        let key = SecretKey::generate();
        let mut client = Client::connect_as(&ticket, key.clone()).await;
        // A folder document that names the stranger a member, signed by the stranger.
        let actor = teatime_crdt::ids::actor_for_member(key.public().as_bytes(), rand::random());
        let mut fake = FolderDoc::create(actor, &key.public().to_string(), "mallory").expect("a folder doc");
        let data = fake.doc_mut().save();
        let signatures = fake
            .doc_mut()
            .get_changes(&[])
            .iter()
            .map(|c| (c.hash().0, sign_change(&key, ticket.folder, &c.hash())))
            .collect();
        let hello = Frame::Hello {
            folder: ticket.folder,
            name: "mallory".into(),
            addr: client.endpoint.addr(),
            ticket: None,
            credentials: Some(teatime::net::wire::Credentials { data, signatures }),
        };
        client.send(&hello).await;
        client.send_eagerly(&Frame::Summary { docs: Vec::new() }).await;
        client.expect_refused_then_nothing("credentials a stranger signed itself").await;
        let out = client.received().to_vec();
        client.close().await;
        out
    });
    assert_nothing_leaked(&received, "self-vouching stranger");
    let members = sharer.cli_json(&["peers", sharer.dir_arg(), "--json"]);
    assert_eq!(members.as_array().map(|m| m.len()), Some(1), "the stranger became a member: {members}");
    assert_sharer_unharmed(&mut sharer, &expected);
}
