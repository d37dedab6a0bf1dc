//! Who gets in: tickets this node issued, joins (with optional approval), revocation, and
//! the membership snapshot sessions check before any folder data moves.
//!
//! Membership lives in the folder document (`members`, with roles; `revoked` is a role),
//! so every peer agrees on it. Tickets live with the node that issued them (their secrets
//! must not reach other members: a reader would mint write tickets), in the store's meta
//! table. A peer proves a ticket once; from then on it is admitted by its EndpointId.

use std::collections::HashSet;

use super::*;
use crate::net::session::{AWAITING_APPROVAL, Membership};
use crate::ticket::{Grant, IssuedTicket, Ticket, TicketId};

/// Folder setting: whether joins wait for `teatime approve` (`on`/`off`).
pub const JOIN_APPROVAL: &str = "join-approval";

/// A join waiting for approval.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// Who asks.
    pub peer: EndpointId,
    /// The name it gives itself.
    pub name: String,
    /// With which ticket.
    pub ticket: TicketId,
    /// What that ticket grants.
    pub grant: Grant,
    /// When it first asked (ms since the epoch).
    pub since_ms: u64,
}

impl JoinRequest {
    /// The request's handle for `teatime approve`: the start of the peer's id.
    pub fn handle(&self) -> String {
        self.peer.to_string()[..8].to_string()
    }
}

/// A request from a session about admission, answered by the replica.
pub enum Admission {
    /// The secret of a ticket issued here, if it still admits.
    Secret {
        /// The ticket named in the Hello.
        ticket: TicketId,
        /// The secret, or why not.
        reply: oneshot::Sender<Result<[u8; 32], String>>,
    },
    /// This node's folder document and signatures, to prove its membership to a member
    /// that has not heard of its admission.
    Credentials {
        /// Them, if the folder is here.
        reply: oneshot::Sender<Option<crate::net::wire::Credentials>>,
    },
    /// A dialer we do not know as a member showed its folder document: take in what it
    /// adds (checked like any changes), then say whether that makes it a member.
    Check {
        /// Who.
        peer: EndpointId,
        /// Its folder document.
        credentials: crate::net::wire::Credentials,
        /// Whether it is a member now.
        reply: oneshot::Sender<bool>,
    },
    /// `peer` proved `ticket`: admit it (or hold it for approval).
    Join {
        /// Who.
        peer: EndpointId,
        /// Its display name.
        name: String,
        /// The ticket proved.
        ticket: TicketId,
        /// Admitted, or why not.
        reply: oneshot::Sender<Result<(), String>>,
    },
}

impl Replica {
    pub(super) fn admission(&mut self, request: Admission) {
        match request {
            Admission::Secret { ticket, reply } => {
                let _ = reply.send(self.live_ticket(&ticket).map(|t| t.secret));
            }
            Admission::Join { peer, name, ticket, reply } => {
                let _ = reply.send(self.join(peer, name, ticket));
            }
            Admission::Credentials { reply } => {
                let folder = self.id.folder;
                let credentials = if self.folder.is_ready() {
                    self.outgoing(folder, &[])
                        .map(|(data, signatures)| crate::net::wire::Credentials { data, signatures })
                } else {
                    None
                };
                let _ = reply.send(credentials);
            }
            Admission::Check { peer, credentials, reply } => {
                if self.folder.is_ready() {
                    let folder = self.id.folder;
                    // The same checks as changes from a session: forged ones are dropped.
                    self.receive_changes(peer, folder, credentials.data, Vec::new(), credentials.signatures);
                }
                let member = self.membership.read().expect("membership lock").admits(&peer);
                if member {
                    info!(peer = %peer.fmt_short(), "a member admitted elsewhere showed its admission");
                }
                let _ = reply.send(member);
            }
        }
    }

    fn live_ticket(&self, id: &TicketId) -> Result<IssuedTicket, String> {
        let tickets = local::tickets(&self.store).map_err(|e| format!("{e:#}"))?;
        let t = tickets.into_iter().find(|t| &t.id == id).ok_or("unknown ticket")?;
        t.check(now_ms()).map_err(|e| e.to_string())?;
        if !self.may_admit() {
            return Err("the ticket's issuer may no longer admit members".into());
        }
        Ok(t)
    }

    /// Whether this node's role lets it admit members. A writer may bring in writers and
    /// readers: no grant exceeds what a writer may record (`policy::check_folder_change`).
    fn may_admit(&self) -> bool {
        self.folder.is_ready() && matches!(self.my_role(), Role::Owner | Role::Writer)
    }

    fn join(&mut self, peer: EndpointId, name: String, ticket: TicketId) -> Result<(), String> {
        let t = self.live_ticket(&ticket)?;
        if self.folder.members().get(&peer.to_string()).is_some_and(|m| m.role == Role::Revoked.as_str()) {
            return Err("revoked".into());
        }
        if self.join_approval() {
            let request = JoinRequest { peer, name, ticket, grant: t.grant, since_ms: now_ms() };
            let handle = request.handle();
            if !self.join_requests.contains_key(&peer) {
                warn!(peer = %peer.fmt_short(), name = %request.name, ticket = %t.id_hex(), grant = ?t.grant,
                      "join waiting for approval: run `teatime approve DIR {handle}`");
            }
            self.join_requests.entry(peer).or_insert(request);
            return Err(format!("{AWAITING_APPROVAL} (request {handle})"));
        }
        self.admit_member(peer, &name, &t)
    }

    /// Records `peer` as a member with the ticket's grant and counts a use.
    fn admit_member(&mut self, peer: EndpointId, name: &str, t: &IssuedTicket) -> Result<(), String> {
        let mut tickets = local::tickets(&self.store).map_err(|e| format!("{e:#}"))?;
        if let Some(stored) = tickets.iter_mut().find(|s| s.id == t.id) {
            stored.consume();
        }
        local::set_tickets(&self.store, &tickets).map_err(|e| format!("{e:#}"))?;
        self.folder
            .add_member(&peer.to_string(), name, t.grant.role(), &t.id_hex())
            .map_err(|e| e.to_string())?;
        self.folder.commit_at(now_ms() as i64);
        self.dirty.insert(self.id.folder);
        self.join_requests.remove(&peer);
        info!(peer = %peer.fmt_short(), %name, role = t.grant.role(), ticket = %t.id_hex(), "new member admitted");
        self.refresh_membership();
        Ok(())
    }

    fn join_approval(&self) -> bool {
        self.folder.setting(JOIN_APPROVAL).as_deref() == Some("on")
    }

    /// Issues a ticket: the standing one for `grant` (created once, printed by `share`),
    /// or a new one with its own limits.
    pub fn issue_ticket(
        &mut self,
        grant: Grant,
        expires: Option<Duration>,
        uses: Option<u32>,
        standing: bool,
    ) -> Result<String, String> {
        if !self.may_admit() {
            return Err(format!("a {} may not invite members", self.my_role().as_str()));
        }
        let now = now_ms();
        let mut tickets = local::tickets(&self.store).map_err(|e| format!("{e:#}"))?;
        let existing = tickets.iter().find(|t| t.standing && t.grant == grant && t.check(now).is_ok());
        let issued = match existing {
            Some(t) if standing => t.clone(),
            _ => {
                let expires_ms = expires.map(|d| now.saturating_add(d.as_millis() as u64));
                let t = IssuedTicket::new(
                    (rand::random(), rand::random()),
                    grant,
                    now,
                    expires_ms,
                    uses,
                    standing,
                );
                tickets.push(t.clone());
                local::set_tickets(&self.store, &tickets).map_err(|e| format!("{e:#}"))?;
                self.refresh_membership();
                t
            }
        };
        let addr = self.endpoint.as_ref().map(|e| e.addr()).unwrap_or_else(|| EndpointAddr::new(self.me));
        Ok(Ticket {
            folder: self.id.folder,
            id: issued.id,
            secret: issued.secret,
            grant,
            expires_ms: issued.expires_ms,
            name: self.my_name.clone(),
            addr,
        }
        .encode())
    }

    /// The tickets issued here, for `teatime tickets`.
    pub(super) fn ticket_list(&self) -> Result<serde_json::Value, String> {
        let now = now_ms();
        let tickets = local::tickets(&self.store).map_err(|e| format!("{e:#}"))?;
        let members = self.folder.members();
        Ok(json!(
            tickets
                .iter()
                .map(|t| {
                    let admitted: Vec<&str> =
                        members.values().filter(|m| m.via == t.id_hex()).map(|m| m.name.as_str()).collect();
                    json!({
                        "id": t.id_hex(),
                        "grant": t.grant.role(),
                        "standing": t.standing,
                        "created": history::iso_time(t.created_ms as i64),
                        "expires": t.expires_ms.map(|e| history::iso_time(e as i64)),
                        "uses_left": t.uses_left,
                        "used": t.used,
                        "admitted": admitted,
                        "state": match t.check(now) { Ok(()) => "live".to_string(), Err(e) => e.to_string() },
                    })
                })
                .collect::<Vec<_>>()
        ))
    }

    /// `teatime revoke`: a member (id, prefix or name), cut off by every peer, or a ticket
    /// issued here (id or prefix).
    pub(super) fn revoke(&mut self, who: &str) -> Result<String, String> {
        let mut tickets = local::tickets(&self.store).map_err(|e| format!("{e:#}"))?;
        let matching: Vec<usize> =
            (0..tickets.len()).filter(|i| who.len() >= 6 && tickets[*i].id_hex().starts_with(who)).collect();
        if let [i] = matching.as_slice() {
            tickets[*i].revoked = true;
            local::set_tickets(&self.store, &tickets).map_err(|e| format!("{e:#}"))?;
            self.refresh_membership();
            return Ok(format!("ticket {} revoked", tickets[*i].id_hex()));
        }
        if self.my_role() != Role::Owner {
            return Err("only the folder's owner revokes members".into());
        }
        let id = self.find_member(who)?;
        if id == self.me.to_string() {
            return Err("the owner cannot revoke itself".into());
        }
        self.folder.set_role(&id, Role::Revoked.as_str(), now_ms() as i64).map_err(|e| e.to_string())?;
        self.folder.commit_at(now_ms() as i64);
        self.dirty.insert(self.id.folder);
        self.refresh_membership();
        let name = self.folder.members().get(&id).map(|m| m.name.clone()).unwrap_or_default();
        Ok(format!("{name} ({}) revoked", &id[..8]))
    }

    /// `teatime approve`: lists the joins waiting, or admits one.
    pub(super) fn approve(&mut self, handle: Option<String>) -> Result<serde_json::Value, String> {
        let Some(handle) = handle else {
            return Ok(json!(
                self.join_requests
                    .values()
                    .map(|r| json!({
                        "request": r.handle(),
                        "peer": r.peer.to_string(),
                        "name": r.name,
                        "ticket": teatime_crdt::ids::to_hex(&r.ticket),
                        "grant": r.grant.role(),
                        "since": history::iso_time(r.since_ms as i64),
                    }))
                    .collect::<Vec<_>>()
            ));
        };
        let found: Vec<JoinRequest> = self
            .join_requests
            .values()
            .filter(|r| r.peer.to_string().starts_with(&handle))
            .cloned()
            .collect();
        let request = match found.as_slice() {
            [one] => one.clone(),
            [] => return Err(format!("no join request {handle:?} is waiting")),
            _ => return Err(format!("{handle:?} matches several requests; give more of it")),
        };
        // Checked again: the ticket may have expired or been used up meanwhile.
        let t = self.live_ticket(&request.ticket)?;
        self.admit_member(request.peer, &request.name, &t)?;
        Ok(json!(format!("{} admitted as {}", request.name, t.grant.role())))
    }

    /// Recomputes who may hold a session from the folder document, and ends sessions and
    /// tickets that revocations cut off.
    pub(super) fn refresh_membership(&mut self) {
        let members = self.folder.members();
        let me = self.me.to_string();
        let mut m = Membership { ready: self.folder.is_ready(), ..Default::default() };
        let mut revoked_via = HashSet::new();
        for (id, member) in &members {
            let Ok(peer) = id.parse::<EndpointId>() else { continue };
            if member.role == Role::Revoked.as_str() {
                m.revoked.insert(peer);
                revoked_via.insert(member.via.clone());
            } else {
                m.members.insert(peer);
            }
        }
        if !members.contains_key(&me) {
            m.joining = local::join_ticket(&self.store).ok().flatten();
        }
        let now = now_ms();
        m.tickets_live = local::tickets(&self.store)
            .map(|t| t.iter().any(|t| t.check(now).is_ok() && !revoked_via.contains(&t.id_hex())))
            .unwrap_or(false);
        // A revoked member cannot come back with the ticket it joined with.
        if let Ok(mut tickets) = local::tickets(&self.store)
            && tickets.iter().any(|t| !t.revoked && revoked_via.contains(&t.id_hex()))
        {
            for t in tickets.iter_mut().filter(|t| revoked_via.contains(&t.id_hex())) {
                t.revoked = true;
            }
            if let Err(e) = local::set_tickets(&self.store, &tickets) {
                warn!("could not revoke a revoked member's ticket: {e:#}");
            }
        }
        let cut: Vec<EndpointId> = self.peers.keys().filter(|p| !m.admits(p)).copied().collect();
        for peer in cut {
            if let Some(link) = self.peers.remove(&peer) {
                info!(peer = %peer.fmt_short(), "ending the session: no longer a member");
                link.conn.close(6u32.into(), b"not a member");
            }
        }
        self.join_requests.retain(|p, _| !m.revoked.contains(p));
        *self.membership.write().expect("membership lock") = m;
        self.dial_introduced();
    }

    /// Takes up the introductions of peers that are members now.
    pub(super) fn dial_introduced(&mut self) {
        let members = {
            let m = self.membership.read().expect("membership lock");
            if !m.ready {
                return;
            }
            m.members.clone()
        };
        let ready: Vec<EndpointId> =
            self.introductions.keys().filter(|id| members.contains(*id)).copied().collect();
        for id in ready {
            if let Some(addr) = self.introductions.remove(&id) {
                self.introduced(addr);
            }
        }
    }
}
