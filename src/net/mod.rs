//! Talking to peers: the iroh endpoint, the sync protocol handler, and dialing.
//!
//! - [`endpoint`]: one iroh `Endpoint` per node, configured by [`NetworkMode`].
//! - [`session`]: the handshake (folder, challenge, proof) and the frame pumps of one
//!   connection; frames go to and come from the folder's replica task.
//! - [`dial`]: keeps one outgoing connection attempt loop per known peer, with backoff.
//! - [`wire`] and [`auth`]: frames and the join proof.

pub mod auth;
pub mod dial;
pub mod endpoint;
pub mod session;
pub mod wire;

use std::collections::HashMap;
use std::sync::Mutex;

use iroh::EndpointId;
use tokio::sync::Notify;

/// How many live sessions each peer has, so the dialer only dials peers it is not
/// already connected to (whichever side dialed).
#[derive(Debug, Default)]
pub struct Links {
    counts: Mutex<HashMap<EndpointId, usize>>,
    changed: Notify,
}

impl Links {
    /// A session with `peer` started.
    pub fn up(&self, peer: EndpointId) {
        *self.counts.lock().expect("links lock").entry(peer).or_default() += 1;
        self.changed.notify_waiters();
    }

    /// A session with `peer` ended.
    pub fn down(&self, peer: EndpointId) {
        let mut counts = self.counts.lock().expect("links lock");
        if let Some(n) = counts.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&peer);
            }
        }
        drop(counts);
        self.changed.notify_waiters();
    }

    /// Whether any session with `peer` is live.
    pub fn is_connected(&self, peer: &EndpointId) -> bool {
        self.counts.lock().expect("links lock").contains_key(peer)
    }

    /// Waits until no session with `peer` is live.
    pub async fn wait_disconnected(&self, peer: &EndpointId) {
        loop {
            let notified = self.changed.notified();
            if !self.is_connected(peer) {
                return;
            }
            notified.await;
        }
    }
}
