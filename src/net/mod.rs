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

use iroh::{EndpointAddr, EndpointId};
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

/// At most this many addresses are remembered per peer: enough for a few interfaces, a
/// relay and the addresses it had before a restart or a move, and bounded whatever peers
/// tell us.
pub const MAX_PEER_ADDRS: usize = 12;

/// Everything `fresh` says about a peer, then what `known` adds, up to [`MAX_PEER_ADDRS`].
/// iroh sends its first packets to every address it has, so a stale one costs a few
/// datagrams, while dropping a good one could leave the peer unreachable.
pub fn merge_addrs(fresh: &EndpointAddr, known: &EndpointAddr) -> EndpointAddr {
    let mut merged = EndpointAddr::new(fresh.id);
    for a in fresh.addrs.iter().chain(known.addrs.iter().filter(|_| known.id == fresh.id)) {
        if merged.addrs.len() >= MAX_PEER_ADDRS {
            break;
        }
        merged.addrs.insert(a.clone());
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(id: EndpointId, ports: impl IntoIterator<Item = u16>) -> EndpointAddr {
        EndpointAddr::new(id)
            .with_addrs(ports.into_iter().map(|p| iroh::TransportAddr::Ip(([127, 0, 0, 1], p).into())))
    }

    #[test]
    fn merged_addresses_keep_the_fresh_ones_first_and_stay_bounded() {
        let id = iroh::SecretKey::from_bytes(&[1; 32]).public();
        let other = iroh::SecretKey::from_bytes(&[2; 32]).public();
        let m = merge_addrs(&addr(id, [2000]), &addr(id, [1000]));
        assert_eq!(m, addr(id, [1000, 2000]));
        // Another peer's addresses never leak in.
        assert_eq!(merge_addrs(&addr(id, [2000]), &addr(other, [1000])), addr(id, [2000]));
        // A flood of stale addresses cannot push the fresh ones out.
        let m = merge_addrs(&addr(id, [60000, 60001]), &addr(id, 1000..1100));
        assert_eq!(m.addrs.len(), MAX_PEER_ADDRS);
        assert!(addr(id, [60000, 60001]).addrs.is_subset(&m.addrs));
    }
}
