//! One connection with one peer: the handshake, then two frame pumps.
//!
//! Nothing about a folder is sent before the dialer has proved the join secret: an
//! acceptor answers an unknown folder or a wrong proof with `Refused` and closes.
//! After the handshake, the session registers with the folder's replica task
//! ([`crate::replica::Event::PeerUp`]) and forwards every frame it reads to it; the
//! replica sends frames back through the session's outbox.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler};
use iroh::{Endpoint, EndpointAddr};
use teatime_crdt::DocId;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::Links;
use super::auth;
use super::wire::{
    ALPN, Frame, FrameError, MAX_HANDSHAKE_FRAME_BYTES, read_frame, read_frame_limited, write_frame,
};
use crate::replica::{Event, Session};

/// How long each handshake step may take before the connection is dropped.
const HANDSHAKE_STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on establishing a connection (iroh may otherwise wait on discovery for long).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Frames queued for one peer before it counts as too slow and is disconnected (it
/// reconnects and catches up through a fresh summary exchange).
pub const OUTBOX_CAPACITY: usize = 4096;

/// What a session needs to know about a folder this node syncs.
#[derive(Clone)]
pub struct FolderAccess {
    /// The join secret.
    pub secret: [u8; 32],
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

    /// Dials `addr` for `folder`, proves the secret, and runs the session until it ends.
    pub async fn dial(&self, addr: EndpointAddr, folder: DocId) -> Result<()> {
        let access = self.folder(&folder).context("folder not served")?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, self.endpoint.connect(addr.clone(), ALPN))
            .await
            .map_err(|_| anyhow!("connecting timed out"))??;
        let (mut send, mut recv) = conn.open_bi().await?;
        let hello = Frame::Hello { folder, name: self.name.clone(), addr: self.endpoint.addr() };
        write_frame(&mut send, &hello).await?;
        let nonce = match step(read_frame_limited(&mut recv, MAX_HANDSHAKE_FRAME_BYTES)).await? {
            Frame::Challenge { nonce } => nonce,
            Frame::Refused { reason } => bail!("refused by {}: {reason}", addr.id.fmt_short()),
            other => bail!("unexpected frame {other:?} in handshake"),
        };
        let mac = auth::proof(&access.secret, folder, &self.endpoint.id(), &conn.remote_id(), &nonce);
        write_frame(&mut send, &Frame::Proof { mac }).await?;
        let name = match step(read_frame_limited(&mut recv, MAX_HANDSHAKE_FRAME_BYTES)).await? {
            Frame::Welcome { name } => name,
            Frame::Refused { reason } => bail!("refused by {}: {reason}", addr.id.fmt_short()),
            other => bail!("unexpected frame {other:?} in handshake"),
        };
        run(conn, send, recv, access, name, addr, true).await;
        Ok(())
    }

    async fn accept_inner(&self, conn: Connection) -> Result<()> {
        let peer = conn.remote_id();
        let (mut send, mut recv) = step_io(conn.accept_bi()).await?;
        let (folder, name, mut addr) =
            match step(read_frame_limited(&mut recv, MAX_HANDSHAKE_FRAME_BYTES)).await? {
                Frame::Hello { folder, name, addr } => (folder, name, addr),
                other => bail!("expected Hello, got {other:?}"),
            };
        let Some(access) = self.folder(&folder) else {
            refuse(&conn, &mut send, "unknown folder").await;
            bail!("{} asked for a folder this node does not serve", peer.fmt_short());
        };
        let nonce: [u8; 32] = rand::random();
        write_frame(&mut send, &Frame::Challenge { nonce }).await?;
        let mac = match step(read_frame_limited(&mut recv, MAX_HANDSHAKE_FRAME_BYTES)).await? {
            Frame::Proof { mac } => mac,
            other => bail!("expected Proof, got {other:?}"),
        };
        if !auth::verify(&access.secret, folder, &peer, &self.endpoint.id(), &nonce, &mac) {
            refuse(&conn, &mut send, "wrong proof").await;
            bail!("{} failed the join proof", peer.fmt_short());
        }
        write_frame(&mut send, &Frame::Welcome { name: self.name.clone() }).await?;
        // The id is authenticated by TLS; the announced addresses are only hints.
        addr.id = peer;
        run(conn, send, recv, access, name, addr, false).await;
        Ok(())
    }
}

impl ProtocolHandler for Hub {
    async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
        let peer = conn.remote_id();
        if let Err(e) = self.accept_inner(conn).await {
            debug!(peer = %peer.fmt_short(), "incoming session ended: {e:#}");
        }
        Ok(())
    }
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
    info!(peer = %peer.fmt_short(), %name, dialed_by_me, "connected");
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
                    warn!(peer = %peer.fmt_short(), "dropping connection: {e:#}");
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
