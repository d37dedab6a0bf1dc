//! A hand-written peer that speaks the sync protocol to a real `teatime` process: the
//! outsider of `auth.rs` (wrong proofs, unknown folders) and the hostile member of
//! `hostile.rs` (the right secret, then crafted changes).
//!
//! Its endpoint is loopback-only, configured like the node's `--network loopback`.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::pin::Pin;
use std::task::{Context, Poll};

use iroh::endpoint::{Connection, PortmapperConfig, RecvStream, SendStream, presets};
use iroh::{Endpoint, RelayMode, SecretKey};
use teatime::net::auth;
use teatime::net::wire::{ALPN, Frame, read_frame, write_frame};
use teatime::ticket::Ticket;
use teatime_crdt::DocId;
use tokio::io::{AsyncRead, ReadBuf};

use crate::harness::{Peer, deadline};

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
    pub inner: R,
    pub seen: Vec<u8>,
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
    pub recv: Recorder<RecvStream>,
}

impl Client {
    /// Binds a fresh loopback-only endpoint and opens the sync stream to the ticket's sharer.
    pub async fn connect(ticket: &Ticket) -> Self {
        Self::connect_as(ticket, SecretKey::generate()).await
    }

    /// The same, with a given node key.
    pub async fn connect_as(ticket: &Ticket, key: SecretKey) -> Self {
        let (endpoint, conn) = Self::dial(ticket, key).await;
        let (send, recv) = conn.open_bi().await.expect("open the sync stream");
        Self { endpoint, conn, send, recv: Recorder { inner: recv, seen: Vec::new() } }
    }

    /// A new connection and sync stream to the ticket's sharer from `endpoint` (the same
    /// node id as before).
    pub async fn reconnect(endpoint: Endpoint, ticket: &Ticket) -> Self {
        let conn = tokio::time::timeout(deadline(), endpoint.connect(ticket.addr.clone(), ALPN))
            .await
            .expect("connecting to the sharer timed out")
            .expect("connect to the sharer");
        let (send, recv) = conn.open_bi().await.expect("open the sync stream");
        Self { endpoint, conn, send, recv: Recorder { inner: recv, seen: Vec::new() } }
    }

    /// A loopback-only endpoint with `key`, connected to the ticket's sharer.
    pub async fn dial(ticket: &Ticket, key: SecretKey) -> (Endpoint, Connection) {
        let endpoint = Endpoint::builder(presets::Minimal)
            .relay_mode(RelayMode::Disabled)
            .clear_address_lookup()
            .portmapper_config(PortmapperConfig::Disabled)
            .secret_key(key)
            .clear_ip_transports()
            .bind_addr(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
            .expect("loopback bind address")
            .bind()
            .await
            .expect("bind the test endpoint");
        for addr in endpoint.bound_sockets() {
            assert!(addr.ip().is_loopback(), "test endpoint bound a non-loopback socket: {addr}");
        }
        let conn = tokio::time::timeout(deadline(), endpoint.connect(ticket.addr.clone(), ALPN))
            .await
            .expect("connecting to the sharer timed out")
            .expect("connect to the sharer");
        (endpoint, conn)
    }

    pub async fn send(&mut self, frame: &Frame) {
        write_frame(&mut self.send, frame).await.unwrap_or_else(|e| panic!("send {frame:?}: {e:#}"));
    }

    /// Sends a frame the acceptor may already have stopped listening for.
    pub async fn send_eagerly(&mut self, frame: &Frame) {
        let _ = write_frame(&mut self.send, frame).await;
    }

    /// Says hello for `folder`, naming the ticket's id (as a joiner does) when given one.
    pub async fn hello(&mut self, folder: DocId, ticket: Option<&Ticket>) {
        let hello = Frame::Hello {
            folder,
            name: "mallory".into(),
            addr: self.endpoint.addr(),
            ticket: ticket.map(|t| t.id),
            credentials: None,
        };
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
        let mac = auth::proof(
            secret,
            ticket.folder,
            &ticket.id,
            &self.endpoint.id(),
            &self.conn.remote_id(),
            &nonce,
        );
        self.send(&Frame::Proof { mac }).await;
        self.send_eagerly(&Frame::Summary { docs: Vec::new() }).await;
    }

    /// Expects `Refused` as the very next frame, then the end of the stream and of the
    /// connection, with no other frame in between.
    pub async fn expect_refused_then_nothing(&mut self, after: &str) {
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

    pub fn received(&self) -> &[u8] {
        &self.recv.seen
    }

    pub async fn close(self) {
        self.conn.close(0u32.into(), b"test done");
        self.endpoint.close().await;
    }
}
