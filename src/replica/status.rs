//! `teatime status` and `pause`/`resume`: what the folder is doing, and why work waits.

use std::time::SystemTime;

use super::history::iso_time;
use super::*;

fn wall_ms(t: SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Replica {
    /// Documents `peer` lacks, as far as this replica knows.
    fn pending_for(&mut self, peer: EndpointId) -> usize {
        let ours = self.all_heads();
        let Some(link) = self.peers.get(&peer) else { return 0 };
        ours.iter()
            .filter(|(id, heads)| link.known.get(id) != Some(heads) || link.backlog.contains(id))
            .count()
    }

    /// The folder's state, for `teatime status`.
    pub(super) fn status(&mut self) -> serde_json::Value {
        self.tree.get(&mut self.folder, &mut self.files, &self.store);
        let me = self.me.to_string();
        let members = self.folder.members();
        // Members, and peers that were quarantined before they became members.
        let mut listed: Vec<(String, String, String)> =
            members.iter().map(|(id, m)| (id.clone(), m.name.clone(), m.role.clone())).collect();
        for (peer, fault) in &self.faults {
            if !members.contains_key(&peer.to_string()) {
                listed.push((peer.to_string(), fault.name.clone(), "not a member".into()));
            }
        }
        let now = std::time::Instant::now();
        let mut peers = Vec::new();
        for (id, name, role) in &listed {
            if *id == me {
                continue;
            }
            let Ok(peer) = id.parse::<EndpointId>() else { continue };
            let pending = if self.peers.contains_key(&peer) { Some(self.pending_for(peer)) } else { None };
            let link = self.peers.get(&peer);
            let path = link.and_then(|l| {
                let paths = l.conn.paths();
                let selected = paths.iter().find(|p| p.is_selected())?;
                Some(json!({
                    "kind": if selected.is_relay() { "relay" } else { "direct" },
                    "addr": format!("{:?}", selected.remote_addr()),
                    "rtt_ms": selected.rtt().as_secs_f64() * 1000.0,
                }))
            });
            let connected_since = link.map(|l| iso_time(wall_ms(l.since_wall)));
            // Files here that this peer does not take (its own ignore rules, whitelist).
            let ignored_there = self.peer_filters.get(&peer).map(|f| {
                self.tree
                    .tree
                    .by_path
                    .iter()
                    .filter(|(p, (_, k))| *k == EntryKind::File && f.excludes(p, false))
                    .count()
            });
            let fault = self.faults.get(&peer);
            let quarantined_until = fault.filter(|f| f.until > now).map(|f| iso_time(wall_ms(f.until_wall)));
            let last_fault = fault.map(|f| json!({"reason": f.reason, "at": iso_time(wall_ms(f.at))}));
            let why = if self.paused {
                Some("paused")
            } else if self.guards.missing.is_some() {
                Some("folder missing")
            } else if link.is_none() && quarantined_until.is_some() {
                Some("quarantined")
            } else if link.is_none() {
                Some("peer offline")
            } else {
                None
            };
            peers.push(json!({
                "id": id,
                "name": name,
                "role": role,
                "connected": link.is_some(),
                "connected_since": connected_since,
                "last_heard": self.last_heard.get(&peer).map(|t| iso_time(wall_ms(*t))),
                "path": path,
                "pending_out": pending,
                "ignored_there": ignored_there,
                "waiting_because": why,
                "quarantined_until": quarantined_until,
                "last_fault": last_fault,
            }));
        }
        let conflicts = self.conflicts().len();
        let held: Vec<serde_json::Value> = self
            .held
            .iter()
            .map(|p| {
                let why = match self.mode() {
                    _ if self.guards.held_deletions.contains(p) => {
                        "mass deletion held: `teatime confirm-delete` spreads it, `teatime revert` writes it back"
                    }
                    Mode::ReceiveOnly => "receive-only: local change not published",
                    _ => "locked by another peer",
                };
                json!({"path": p, "why": why})
            })
            .collect();
        let fetching = self.fetches.progress();
        json!({
            "folder": self.root,
            "running": self.running,
            "paused": self.paused,
            "mode": self.mode().as_str(),
            "role": self.my_role().as_str(),
            "files": self.index.values().filter(|e| e.kind == EntryKind::File).count(),
            // Text documents held in memory now (the others are read from the store when used).
            "documents_in_memory": self.files.len(),
            // Times the replica dropped the folder's state from memory when quiet (rest.rs).
            "rests": self.rest.count,
            "peers": peers,
            "incoming": fetching.iter().map(|(hash, have, size)| json!({
                "blob": blob::hex(hash), "bytes": have, "size": size,
            })).collect::<Vec<_>>(),
            "held": held,
            "conflicts": conflicts,
            "problems": self.guard_problems(),
            "errors": self.errors.iter().map(|(p, e)| json!({"path": p, "error": e})).collect::<Vec<_>>(),
        })
    }

    /// `teatime pause` / `resume`.
    pub(super) fn set_paused(&mut self, paused: bool) -> Result<(), String> {
        local::set_paused(&self.store, paused).map_err(|e| format!("{e:#}"))?;
        self.paused = paused;
        if paused {
            for (_, link) in self.peers.drain() {
                link.conn.close(5u32.into(), b"paused");
            }
        } else {
            // Dial everyone now rather than at the end of their backoff.
            for (_, addr) in self.known_peer_addrs() {
                let _ = self.dial.try_send(addr);
            }
            self.hint(Scope::All);
        }
        Ok(())
    }
}
