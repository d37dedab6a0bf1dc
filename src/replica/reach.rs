//! Where peers are: the addresses this replica remembers, learns and passes on.
//!
//! - A session's peer says where it is (the dialer's `Hello`), and the connection shows
//!   the address its packets actually come from (behind a NAT, the mapping): these come
//!   first in what is saved, before what was saved already ([`merge_addrs`], bounded; an
//!   announcement made before the node knew all its addresses loses nothing).
//! - A `Peers` frame relays what another member saved, possibly stale: it is merged the
//!   same way, and ignored for a peer we have a live session with.
//! - Each update also goes to the dialer, so the next reconnection tries the newest
//!   addresses, and a peer that only ever dialed us is redialed when it goes away.

use iroh::endpoint::Connection;
use iroh::{EndpointAddr, EndpointId, TransportAddr};
use tracing::warn;

use super::{MAX_INTRODUCED, Replica};
use crate::net::merge_addrs;
use crate::net::wire::Frame;

impl Replica {
    /// The address saved for `peer`.
    fn saved_addr(&self, peer: &EndpointId) -> Option<EndpointAddr> {
        self.known_peer_addrs().into_iter().find(|(id, _)| id == peer).map(|(_, a)| a)
    }

    fn save_addr(&self, addr: &EndpointAddr) {
        let bytes = postcard::to_stdvec(addr).unwrap_or_default();
        if let Err(e) = self.store.save_peer(&addr.id.to_string(), &bytes) {
            warn!("could not remember peer address: {e:#}");
        }
    }

    /// A session with `announced.id` started: what it announced and the address the
    /// connection runs on go first in the saved address, and to the dialer.
    pub(super) fn remember_session_addr(
        &mut self,
        announced: &EndpointAddr,
        conn: &Connection,
    ) -> EndpointAddr {
        let mut addr = announced.clone();
        let paths = conn.paths();
        if let Some(TransportAddr::Ip(ip)) =
            paths.iter().find(|p| p.is_selected()).map(|p| p.remote_addr().clone())
        {
            addr.addrs.insert(TransportAddr::Ip(ip));
        }
        let saved = self.saved_addr(&addr.id);
        let addr = merge_addrs(&addr, saved.as_ref().unwrap_or(&EndpointAddr::new(addr.id)));
        // Only news goes to the dialer: a new address makes a waiting dial loop retry at
        // once, so repeating the same one after every session would defeat its backoff.
        if saved.as_ref() != Some(&addr) {
            self.save_addr(&addr);
            let _ = self.dial.try_send(addr.clone());
        }
        addr
    }

    /// A member told us where `addr.id` was last seen (an introduction): merged with what
    /// we saved, then dialed unless a session is live. Only members are remembered and
    /// dialed (a peer cannot point us at a stranger, who would learn the folder's id from
    /// our Hello); a newcomer's admission may arrive after its introduction, so until then
    /// the introduction waits (bounded), see [`Replica::dial_introduced`].
    pub(super) fn introduced(&mut self, addr: EndpointAddr) {
        if addr.id == self.me || self.peers.contains_key(&addr.id) {
            return;
        }
        let member = {
            let m = self.membership.read().expect("membership lock");
            m.admits(&addr.id)
        };
        if !member {
            if self.introductions.len() < MAX_INTRODUCED || self.introductions.contains_key(&addr.id) {
                self.introductions.insert(addr.id, addr);
            }
            return;
        }
        let saved = self.saved_addr(&addr.id);
        let merged = merge_addrs(&addr, saved.as_ref().unwrap_or(&EndpointAddr::new(addr.id)));
        if saved.as_ref() != Some(&merged) {
            self.save_addr(&merged);
        }
        // Always: the dialer starts a loop for a peer it does not know yet, and ignores an
        // address it already has.
        let _ = self.dial.try_send(merged);
    }

    /// Where every member we know is reachable, for `to`: live sessions' addresses, then
    /// the saved addresses of members not connected now (so a newcomer also meets the
    /// members that are offline at the moment).
    pub(super) fn peers_frame(&self, to: EndpointId) -> Frame {
        let mut peers: Vec<EndpointAddr> =
            self.peers.iter().filter(|(id, _)| **id != to).map(|(_, l)| l.addr.clone()).collect();
        let members = self.folder.is_ready().then(|| self.folder.members());
        for (id, addr) in self.known_peer_addrs() {
            let member = members.as_ref().is_none_or(|m| m.contains_key(&id.to_string()));
            if id != to && member && !self.peers.contains_key(&id) {
                peers.push(addr);
            }
        }
        Frame::Peers { peers }
    }
}
