//! Keeping connections up: one dial loop per known peer.
//!
//! A loop dials only while no session with that peer is live (whoever dialed it), and
//! backs off exponentially between failed attempts, so an offline peer costs a handful of
//! packets per minute and a peer that comes back is reached within [`MAX_BACKOFF`].

use std::collections::HashMap;
use std::time::Duration;

use iroh::{EndpointAddr, EndpointId};
use teatime_crdt::DocId;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::session::{AWAITING_APPROVAL, DialError, Hub, NOT_A_MEMBER};

/// First retry delay.
pub const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Longest retry delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a join held for approval asks again (an approval is seen this fast).
const APPROVAL_POLL: Duration = Duration::from_secs(1);
/// A session that lasted this long counts as healthy: the next failure retries quickly.
const HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// Requests to dial, from the replica (capacity: one per known peer is plenty).
pub const DIAL_QUEUE_CAPACITY: usize = 256;

/// Runs until `cancel`: starts a loop for each peer it is told about, and updates the
/// address of a loop already running.
pub async fn run_dialer(
    hub: Hub,
    folder: DocId,
    mut requests: mpsc::Receiver<EndpointAddr>,
    cancel: CancellationToken,
) {
    let mut loops: HashMap<EndpointId, watch::Sender<EndpointAddr>> = HashMap::new();
    let links = hub.folders.read().expect("folders lock").get(&folder).map(|f| f.links.clone());
    let Some(links) = links else { return };
    loop {
        let addr = tokio::select! {
            _ = cancel.cancelled() => return,
            addr = requests.recv() => match addr { Some(a) => a, None => return },
        };
        if addr.id == hub.endpoint.id() {
            continue;
        }
        if let Some(tx) = loops.get(&addr.id) {
            // Waking the loop skips its backoff: only for an address it does not have.
            tx.send_if_modified(|current| {
                let changed = *current != addr;
                *current = addr;
                changed
            });
            continue;
        }
        let (tx, mut rx) = watch::channel(addr.clone());
        loops.insert(addr.id, tx);
        let (hub, links, cancel) = (hub.clone(), links.clone(), cancel.clone());
        tokio::spawn(async move {
            let peer = addr.id;
            let mut backoff = MIN_BACKOFF;
            let mut last_refusal = String::new();
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = links.wait_disconnected(&peer) => {}
                }
                let addr = rx.borrow_and_update().clone();
                let started = Instant::now();
                let result = tokio::select! {
                    _ = cancel.cancelled() => return,
                    // Refused as a stranger: the peer has not heard of our admission (it was
                    // away); our folder document shows it.
                    r = hub.dial(addr, folder, last_refusal == NOT_A_MEMBER) => r,
                };
                let mut delay = backoff;
                match result {
                    // Only a session that ran counts: a connect that took long to time out
                    // is a failure like any other.
                    Ok(()) if started.elapsed() > HEALTHY_SESSION => {
                        last_refusal.clear();
                        backoff = MIN_BACKOFF;
                        delay = backoff;
                    }
                    Ok(()) => last_refusal.clear(),
                    Err(DialError::Refused(reason)) => {
                        // Said once per reason: the user needs to know (an expired ticket,
                        // a revoked membership), but not every few seconds.
                        if reason != last_refusal {
                            warn!(peer = %peer.fmt_short(), "refused: {reason}");
                            last_refusal = reason.clone();
                        }
                        if reason.starts_with(AWAITING_APPROVAL) {
                            delay = APPROVAL_POLL;
                        }
                    }
                    Err(e) => debug!(peer = %peer.fmt_short(), "dial failed: {e:#}"),
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                    // A new address is worth trying at once.
                    _ = rx.changed() => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        });
    }
}
