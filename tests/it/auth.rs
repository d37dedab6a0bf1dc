//! The join proof, from the outside: a hand-written client speaks the wire protocol to a
//! real `teatime share` and must get nothing about the folder unless it proves the secret.
//!
//! The client's endpoint is loopback-only, configured like the node's `--network loopback`.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::pin::Pin;
use std::task::{Context, Poll};

use iroh::endpoint::{Connection, PortmapperConfig, RecvStream, SendStream, presets};
use iroh::{Endpoint, RelayMode, SecretKey};
use std::collections::HashMap;
use teatime::net::auth;
use teatime::net::wire::{ALPN, Frame, read_frame, write_frame};
use teatime::ticket::Ticket;

use teatime_crdt::automerge::AutoCommit;
use teatime_crdt::{DocId, FileDoc, FolderDoc};
use tokio::io::{AsyncRead, ReadBuf};

use crate::harness::{Peer, Tree, assert_trees, deadline, put_file, wait_converged_to, wait_until};

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

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

/// Decodes a peer's ticket, insisting it only points at loopback addresses.
pub fn loopback_ticket(peer: &Peer) -> Ticket {
    let ticket = Ticket::decode(peer.ticket()).expect("the sharer's ticket decodes");
    let ips: Vec<_> = ticket.addr.ip_addrs().collect();
    assert!(!ips.is_empty(), "ticket has no direct address: {:?}", ticket.addr);
    assert!(ips.iter().all(|a| a.ip().is_loopback()), "ticket has a non-loopback address: {ips:?}");
    assert_eq!(ticket.addr.relay_urls().count(), 0, "ticket names a relay: {:?}", ticket.addr);
    ticket
}

/// A stream reader that keeps a copy of every byte it passes on.
pub struct Recorder<R> {
    inner: R,
    seen: Vec<u8>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Recorder<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.seen.extend_from_slice(&buf.filled()[before..]);
        }
        polled
    }
}

/// What one read from the acceptor produced.
#[derive(Debug)]
pub enum Read {
    Frame(Frame),
    /// The stream ended cleanly between frames.
    End,
    /// The stream or connection failed (e.g. closed by the acceptor).
    Failed(#[allow(dead_code, reason = "read through Debug, in failure messages")] String),
}

/// A hand-driven dialer: one loopback endpoint, one connection, one bi stream.
pub struct Client {
    pub endpoint: Endpoint,
    pub conn: Connection,
    pub send: SendStream,
    recv: Recorder<RecvStream>,
}

impl Client {
    /// Binds a fresh loopback-only endpoint and opens the sync stream to the ticket's sharer.
    pub async fn connect(ticket: &Ticket) -> Self {
        let endpoint = Endpoint::builder(presets::Minimal)
            .relay_mode(RelayMode::Disabled)
            .clear_address_lookup()
            .portmapper_config(PortmapperConfig::Disabled)
            .secret_key(SecretKey::generate())
            .clear_ip_transports()
            .bind_addr(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
            .expect("loopback bind address")
            .bind()
            .await
            .expect("bind the test endpoint");
        for addr in endpoint.bound_sockets() {
            assert!(addr.ip().is_loopback(), "test endpoint bound a non-loopback socket: {addr}");
        }
        Self::dial(endpoint, ticket).await
    }

    /// Opens a new connection and sync stream to the ticket's sharer from `endpoint`.
    pub async fn dial(endpoint: Endpoint, ticket: &Ticket) -> Self {
        let conn = tokio::time::timeout(deadline(), endpoint.connect(ticket.addr.clone(), ALPN))
            .await
            .expect("connecting to the sharer timed out")
            .expect("connect to the sharer");
        let (send, recv) = conn.open_bi().await.expect("open the sync stream");
        Self { endpoint, conn, send, recv: Recorder { inner: recv, seen: Vec::new() } }
    }

    pub async fn send(&mut self, frame: &Frame) {
        write_frame(&mut self.send, frame).await.unwrap_or_else(|e| panic!("send {frame:?}: {e:#}"));
    }

    /// Sends a frame the acceptor may already have stopped listening for.
    async fn send_eagerly(&mut self, frame: &Frame) {
        let _ = write_frame(&mut self.send, frame).await;
    }

    pub async fn hello(&mut self, folder: DocId) {
        let hello = Frame::Hello { folder, name: "mallory".into(), addr: self.endpoint.addr() };
        self.send(&hello).await;
    }

    /// The next frame, the end of the stream, or a failure; panics after the deadline.
    pub async fn read(&mut self, waiting_for: &str) -> Read {
        match tokio::time::timeout(deadline(), read_frame(&mut self.recv)).await {
            Err(_) => {
                panic!("nothing from the sharer within {:?} while waiting for {waiting_for}", deadline())
            }
            Ok(Ok(Some(frame))) => Read::Frame(frame),
            Ok(Ok(None)) => Read::End,
            Ok(Err(e)) => Read::Failed(format!("{e:#}")),
        }
    }

    /// Reads the challenge and answers it with a proof made from `secret`; an empty
    /// `Summary` follows at once, as an eager client would send it, so an acceptor that let
    /// the client in would answer with the folder's documents.
    pub async fn prove(&mut self, ticket: &Ticket, secret: &[u8; 32]) {
        let nonce = match self.read("the challenge").await {
            Read::Frame(Frame::Challenge { nonce }) => nonce,
            other => panic!("expected Challenge after Hello, got {other:?}"),
        };
        let mac = auth::proof(secret, ticket.folder, &self.endpoint.id(), &self.conn.remote_id(), &nonce);
        self.send(&Frame::Proof { mac }).await;
        self.send_eagerly(&Frame::Summary { docs: Vec::new() }).await;
    }

    /// Expects `Refused` as the very next frame, then the end of the stream and of the
    /// connection, with no other frame in between.
    async fn expect_refused_then_nothing(&mut self, after: &str) {
        match self.read(&format!("the answer to {after}")).await {
            Read::Frame(Frame::Refused { reason }) => {
                assert!(!reason.is_empty(), "Refused should say why");
            }
            other => panic!("expected Refused after {after}, got {other:?}"),
        }
        match self.read("the stream to end after Refused").await {
            Read::End | Read::Failed(_) => {}
            Read::Frame(frame) => panic!("the sharer sent {frame:?} after refusing {after}"),
        }
        let closed = tokio::time::timeout(deadline(), self.conn.closed()).await;
        assert!(closed.is_ok(), "the sharer kept the connection open for {:?} after refusing", deadline());
    }

    fn received(&self) -> &[u8] {
        &self.recv.seen
    }

    pub async fn close(self) {
        self.conn.close(0u32.into(), b"test done");
        self.endpoint.close().await;
    }
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
