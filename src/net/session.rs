//! One connection with one peer: the handshake, then two frame pumps.
//!
//! Admission: a member of the folder (by the EndpointId TLS authenticated) is welcomed at
//! once; a revoked member, or a stranger without a live ticket, is refused before any
//! folder data, path or document id is sent; a dialer naming a ticket this node issued
//! must prove its secret, and is then admitted by the replica (which checks expiry, uses
//! and join approval, and records the new member). A dialer, in turn, only dials members
//! (or, while joining, the ticket's issuer).
//! After the handshake, the session registers with the folder's replica task
//! ([`crate::replica::Event::PeerUp`]) and forwards every frame it reads to it; the
//! replica sends frames back through the session's outbox.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler};
use iroh::{Endpoint, EndpointAddr, EndpointId};
use teatime_crdt::DocId;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::Links;
use super::auth;
use super::wire::{
    ALPN, Credentials, Frame, FrameError, MAX_HANDSHAKE_FRAME_BYTES, read_frame, read_frame_limited,
    write_frame,
};
use crate::replica::{Admission, Event, Session};
use crate::ticket::Ticket;

/// How long each handshake step may take before the connection is dropped.
const HANDSHAKE_STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on establishing a connection (iroh may otherwise wait on discovery for long).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Frames queued for one peer before it counts as too slow and is disconnected (it
/// reconnects and catches up through a fresh summary exchange).
pub const OUTBOX_CAPACITY: usize = 4096;

/// Refusal reason for a join held until an owner approves it (the dialer retries often).
pub const AWAITING_APPROVAL: &str = "awaiting approval";
/// Refusal reason for a dialer that is not a member (as far as the acceptor knows: a
/// member admitted while it was away retries with its credentials).
pub const NOT_A_MEMBER: &str = "not a member of this folder";

/// Who may hold a session for a folder, as its replica last computed it from the folder
/// document.
#[derive(Debug, Default, Clone)]
pub struct Membership {
    /// The folder document is here (a joiner is waiting for it).
    pub ready: bool,
    /// Members in good standing.
    pub members: HashSet<EndpointId>,
    /// Members cut off by `teatime revoke`.
    pub revoked: HashSet<EndpointId>,
    /// While this node is not a member yet: the ticket it joins with.
    pub joining: Option<Ticket>,
    /// Whether a ticket this node issued may still admit someone (else only members
    /// are worth a handshake).
    pub tickets_live: bool,
}

impl Membership {
    /// Whether a session with `peer` may start: a member, or while joining, the issuer of
    /// the ticket.
    pub fn admits(&self, peer: &EndpointId) -> bool {
        if self.revoked.contains(peer) {
            return false;
        }
        self.members.contains(peer) || self.joining.as_ref().is_some_and(|t| t.addr.id == *peer)
    }
}

/// What a session needs to know about a folder this node syncs.
#[derive(Clone)]
pub struct FolderAccess {
    /// Who may connect (kept current by the replica).
    pub membership: Arc<RwLock<Membership>>,
    /// The replica task's inbox.
    pub inbox: mpsc::Sender<Event>,
    /// Live sessions per peer.
    pub links: Arc<Links>,
}

/// Everything the node's sessions share.
#[derive(Clone)]
pub struct Hub {
    /// The node's endpoint.
    pub endpoint: Endpoint,
    /// The node's display name.
    pub name: String,
    /// Folders served, by id.
    pub folders: Arc<RwLock<HashMap<DocId, FolderAccess>>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("name", &self.name).finish()
    }
}

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

impl Hub {
    fn folder(&self, id: &DocId) -> Option<FolderAccess> {
        self.folders.read().expect("folders lock").get(id).cloned()
    }

    /// Dials `addr` for `folder` (a member, or the issuer of the ticket this node joins
    /// with), proves the ticket if asked, and runs the session until it ends.
    /// With `prove_membership`, the Hello carries this node's folder document, for a peer
    /// that refused us as a stranger because it has not heard of our admission yet.
    pub async fn dial(
        &self,
        addr: EndpointAddr,
        folder: DocId,
        prove_membership: bool,
    ) -> Result<(), DialError> {
        let access = self.folder(&folder).ok_or_else(|| DialError::Failed(anyhow!("folder not served")))?;
        let ticket = {
            let m = access.membership.read().expect("membership lock");
            if !m.admits(&addr.id) {
                return Err(DialError::NotMember);
            }
            m.joining.clone().filter(|t| t.addr.id == addr.id)
        };
        let credentials = if prove_membership && ticket.is_none() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let _ = access.inbox.send(Event::Admission(Admission::Credentials { reply: tx })).await;
            rx.await.ok().flatten()
        } else {
            None
        };
        let (conn, send, recv, name) = self.handshake(&addr, folder, ticket.as_ref(), credentials).await?;
        run(conn, send, recv, access, name, addr, true).await;
        Ok(())
    }

    /// Runs the dialer's side of the handshake. A connection the acceptor closed on
    /// (it closes on strangers before a stream is accepted) is a refusal, with its reason.
    async fn handshake(
        &self,
        addr: &EndpointAddr,
        folder: DocId,
        ticket: Option<&Ticket>,
        credentials: Option<Credentials>,
    ) -> Result<(Connection, iroh::endpoint::SendStream, iroh::endpoint::RecvStream, String), DialError> {
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, self.endpoint.connect(addr.clone(), ALPN))
            .await
            .map_err(|_| anyhow!("connecting timed out"))?
            .map_err(anyhow::Error::from)?;
        match self.handshake_on(&conn, folder, ticket, credentials).await {
            Err(DialError::Failed(e)) => match conn.close_reason() {
                Some(iroh::endpoint::ConnectionError::ApplicationClosed(close)) => {
                    Err(DialError::Refused(String::from_utf8_lossy(&close.reason).into_owned()))
                }
                _ => Err(DialError::Failed(e)),
            },
            Ok((send, recv, name)) => Ok((conn, send, recv, name)),
            Err(e) => Err(e),
        }
    }

    async fn handshake_on(
        &self,
        conn: &Connection,
        folder: DocId,
        ticket: Option<&Ticket>,
        credentials: Option<Credentials>,
    ) -> Result<(iroh::endpoint::SendStream, iroh::endpoint::RecvStream, String), DialError> {
        let refused = |reason: String| DialError::Refused(reason);
        let (mut send, mut recv) = conn.open_bi().await.map_err(anyhow::Error::from)?;
        let hello = Frame::Hello {
            folder,
            name: self.name.clone(),
            addr: self.endpoint.addr(),
            ticket: ticket.map(|t| t.id),
            credentials,
        };
        write_frame(&mut send, &hello).await?;
        let name = match step(read_frame_limited(&mut recv, MAX_HANDSHAKE_FRAME_BYTES)).await? {
            Frame::Welcome { name } => name,
            Frame::Challenge { nonce } => {
                let Some(t) = ticket else {
                    return Err(refused("asked for a ticket we did not name".into()));
                };
                let mac =
                    auth::proof(&t.secret, folder, &t.id, &self.endpoint.id(), &conn.remote_id(), &nonce);
                write_frame(&mut send, &Frame::Proof { mac }).await?;
                match step(read_frame_limited(&mut recv, MAX_HANDSHAKE_FRAME_BYTES)).await? {
                    Frame::Welcome { name } => name,
                    Frame::Refused { reason } => return Err(refused(reason)),
                    other => return Err(anyhow!("unexpected frame {other:?} in handshake").into()),
                }
            }
            Frame::Refused { reason } => return Err(refused(reason)),
            other => return Err(anyhow!("unexpected frame {other:?} in handshake").into()),
        };
        Ok((send, recv, name))
    }

    async fn accept_inner(&self, conn: Connection) -> Result<()> {
        let peer = conn.remote_id();
        let (mut send, mut recv) = step_io(conn.accept_bi()).await?;
        // The Hello may carry credentials (a folder document): the frame cap, read as its
        // bytes arrive; every other handshake frame is tiny.
        let (folder, name, mut addr, ticket, credentials) = match step(read_frame(&mut recv)).await? {
            Frame::Hello { folder, name, addr, ticket, credentials } => {
                (folder, name, addr, ticket, credentials)
            }
            other => bail!("expected Hello, got {other:?}"),
        };
        let Some(access) = self.folder(&folder) else {
            refuse(&conn, &mut send, "unknown folder").await;
            bail!("{} asked for a folder this node does not serve", peer.fmt_short());
        };
        let (member, revoked) = {
            let m = access.membership.read().expect("membership lock");
            (m.ready && m.admits(&peer), m.revoked.contains(&peer))
        };
        if revoked {
            refuse(&conn, &mut send, "revoked").await;
            bail!("{} is revoked", peer.fmt_short());
        }
        if !member && ticket.is_none() && credentials.is_some() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let check = Admission::Check {
                peer,
                credentials: credentials.unwrap_or_else(|| unreachable!()),
                reply: tx,
            };
            let _ = access.inbox.send(Event::Admission(check)).await;
            if rx.await != Ok(true) {
                refuse(&conn, &mut send, NOT_A_MEMBER).await;
                bail!("{}'s credentials do not make it a member", peer.fmt_short());
            }
        } else if !member {
            let Some(ticket) = ticket else {
                refuse(&conn, &mut send, NOT_A_MEMBER).await;
                bail!("{} is not a member and named no ticket", peer.fmt_short());
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            let _ = access.inbox.send(Event::Admission(Admission::Secret { ticket, reply: tx })).await;
            let secret = match rx.await {
                Ok(Ok(secret)) => secret,
                Ok(Err(reason)) => {
                    refuse(&conn, &mut send, &reason).await;
                    bail!("{} named a ticket that does not admit: {reason}", peer.fmt_short());
                }
                Err(_) => bail!("folder closing"),
            };
            let nonce: [u8; 32] = rand::random();
            write_frame(&mut send, &Frame::Challenge { nonce }).await?;
            let mac = match step(read_frame_limited(&mut recv, MAX_HANDSHAKE_FRAME_BYTES)).await? {
                Frame::Proof { mac } => mac,
                other => bail!("expected Proof, got {other:?}"),
            };
            if !auth::verify(&secret, folder, &ticket, &peer, &self.endpoint.id(), &nonce, &mac) {
                refuse(&conn, &mut send, "wrong proof").await;
                bail!("{} failed the join proof", peer.fmt_short());
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            let join = Admission::Join { peer, name: name.clone(), ticket, reply: tx };
            let _ = access.inbox.send(Event::Admission(join)).await;
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => {
                    refuse(&conn, &mut send, &reason).await;
                    bail!("{} not admitted: {reason}", peer.fmt_short());
                }
                Err(_) => bail!("folder closing"),
            }
        }
        write_frame(&mut send, &Frame::Welcome { name: self.name.clone() }).await?;
        // The id is authenticated by TLS; the announced addresses are only hints.
        addr.id = peer;
        run(conn, send, recv, access, name, addr, false).await;
        Ok(())
    }
}

impl Hub {
    /// Whether `peer` could get anywhere here: a member of a folder, or anyone while a
    /// ticket is live. Everyone else is closed on before a stream is even accepted.
    fn worth_a_handshake(&self, peer: &EndpointId) -> bool {
        self.folders.read().expect("folders lock").values().any(|f| {
            let m = f.membership.read().expect("membership lock");
            m.admits(peer) || m.revoked.contains(peer) || m.tickets_live
        })
    }
}

impl ProtocolHandler for Hub {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let peer = conn.remote_id();
        if !self.worth_a_handshake(&peer) {
            debug!(peer = %peer.fmt_short(), "closing a connection from a stranger");
            conn.close(6u32.into(), b"not a member");
            return Ok(());
        }
        if let Err(e) = self.accept_inner(conn).await {
            debug!(peer = %peer.fmt_short(), "incoming session ended: {e:#}");
        }
        Ok(())
    }
}

/// Why dialing a peer did not lead to a session.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The peer is not a member (this node does not dial strangers).
    #[error("not a member of the folder")]
    NotMember,
    /// The peer refused us, and said why.
    #[error("refused: {0}")]
    Refused(String),
    /// Connecting or the handshake failed.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

async fn refuse(conn: &Connection, send: &mut iroh::endpoint::SendStream, reason: &str) {
    let _ = write_frame(send, &Frame::Refused { reason: reason.into() }).await;
    let _ = send.finish();
    // Give the frame a moment to leave before closing; bounded, never a hang.
    let _ = tokio::time::timeout(Duration::from_millis(500), send.stopped()).await;
    conn.close(1u32.into(), reason.as_bytes());
}

async fn step<T>(fut: impl Future<Output = Result<Option<T>, FrameError>>) -> Result<T> {
    tokio::time::timeout(HANDSHAKE_STEP_TIMEOUT, fut)
        .await
        .map_err(|_| anyhow!("handshake timed out"))??
        .ok_or_else(|| anyhow!("peer closed the stream during the handshake"))
}

async fn step_io<T, E: std::error::Error + Send + Sync + 'static>(
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T> {
    Ok(tokio::time::timeout(HANDSHAKE_STEP_TIMEOUT, fut)
        .await
        .map_err(|_| anyhow!("handshake timed out"))??)
}

/// Runs an authenticated session until either side ends it.
async fn run(
    conn: Connection,
    mut send: iroh::endpoint::SendStream,
    mut recv: iroh::endpoint::RecvStream,
    access: FolderAccess,
    name: String,
    addr: EndpointAddr,
    dialed_by_me: bool,
) {
    let peer = conn.remote_id();
    let conn_id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
    let (outbox, mut out_rx) = mpsc::channel::<Frame>(OUTBOX_CAPACITY);
    access.links.up(peer);
    info!(peer = %peer.fmt_short(), ?name, dialed_by_me, "connected");
    let up = Event::PeerUp(Session { peer, name, addr, conn_id, dialed_by_me, outbox, conn: conn.clone() });
    if access.inbox.send(up).await.is_err() {
        access.links.down(peer);
        return;
    }
    let writer = async {
        while let Some(frame) = out_rx.recv().await {
            if let Err(e) = write_frame(&mut send, &frame).await {
                debug!(peer = %peer.fmt_short(), "write failed: {e:#}");
                break;
            }
        }
        let _ = send.finish();
    };
    let reader = async {
        loop {
            match read_frame(&mut recv).await {
                Ok(Some(frame)) => {
                    if access.inbox.send(Event::Frame { peer, conn_id, frame }).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) if e.is_peer_fault() => {
                    // Bytes no honest peer sends: the replica quarantines the peer.
                    warn!(peer = %peer.fmt_short(), "dropping connection: {e:#}");
                    let _ =
                        access.inbox.send(Event::Misbehaved { peer, conn_id, reason: e.to_string() }).await;
                    break;
                }
                Err(e) => {
                    // The stream's error says only "connection lost": the connection says why.
                    let why = conn.close_reason().map(|r| r.to_string()).unwrap_or_default();
                    warn!(peer = %peer.fmt_short(), "dropping connection: {e:#} ({why})");
                    break;
                }
            }
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
        _ = conn.closed() => {}
    }
    conn.close(0u32.into(), b"session over");
    let _ = access.inbox.send(Event::PeerDown { peer, conn_id }).await;
    access.links.down(peer);
    info!(peer = %peer.fmt_short(), "disconnected");
}
