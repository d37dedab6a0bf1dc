//! Commands from the command line (`control.rs` requests): settings, members, tracking,
//! conflicts and their resolution.

use super::*;
use crate::ticket::Grant;

impl Replica {
    /// Answers a command; changes it makes are recorded, written and sent at the next flush.
    pub fn control(&mut self, req: Request) -> Response {
        if !self.folder.is_ready() {
            return Err("the folder has not arrived from its peers yet".into());
        }
        let writes_folder = matches!(
            req,
            Request::Setting { value: Some(_), .. } | Request::SetTier { .. } | Request::Resolve { .. }
        ) && !matches!(&req, Request::Setting { key, .. }
            if key == "tracking" || key == "mode" || self.guard_setting(key).is_some());
        if writes_folder && !self.my_role().writes_tree() {
            return Err(format!(
                "a {} may not change the folder's settings or members",
                self.my_role().as_str()
            ));
        }
        let changed = match req {
            Request::Setting { key, value: None } => return self.setting(&key).map(|v| json!(v)),
            Request::Setting { key, value: Some(value) } => self.set_setting(&key, &value)?,
            Request::Track(paths) | Request::Untrack(paths) if paths.is_empty() => {
                return Err("give at least one path".into());
            }
            Request::Track(paths) => {
                self.change_tracked(|set| set.extend(paths))?;
                false
            }
            Request::Untrack(paths) => {
                self.change_tracked(|set| set.retain(|t| !paths.contains(t)))?;
                false
            }
            Request::Tracked => {
                let paths = local::tracked_paths(&self.store).map_err(|e| format!("{e:#}"))?;
                let mode = local::tracking(&self.store).map_err(|e| format!("{e:#}"))?;
                return Ok(json!({"tracking": mode.as_str(), "paths": paths}));
            }
            Request::Peers => {
                let me = self.me.to_string();
                let list: Vec<serde_json::Value> = self
                    .folder
                    .members()
                    .into_iter()
                    .map(|(id, m)| {
                        let link = id.parse::<EndpointId>().ok().and_then(|p| self.peers.get(&p));
                        let path = link.and_then(|l| {
                            let paths = l.conn.paths();
                            let p = paths.iter().find(|p| p.is_selected())?;
                            Some(if p.is_relay() { "relay" } else { "direct" })
                        });
                        let addrs: Vec<String> = link
                            .map(|l| l.addr.addrs.iter().map(|a| format!("{a:?}")).collect())
                            .unwrap_or_default();
                        json!({"id": id, "name": m.name, "role": m.role, "tier": m.tier, "me": id == me,
                               "connected": link.is_some(), "path": path, "addrs": addrs})
                    })
                    .collect();
                return Ok(json!(list));
            }
            Request::SetRole { peer, role } => {
                if self.my_role() != Role::Owner {
                    return Err("only the folder's owner sets roles".into());
                }
                let role = Role::parse(&role)
                    .filter(|r| *r != Role::Owner)
                    .ok_or_else(|| format!("unknown role {role:?} (expected writer, editor or reader)"))?;
                let id = self.find_member(&peer)?;
                if id == self.me.to_string() {
                    return Err("the owner keeps the owner role".into());
                }
                self.folder.set_role(&id, role.as_str(), now_ms() as i64).map_err(|e| e.to_string())?;
                true
            }
            Request::Lock(path) => {
                self.lock(&path)?;
                return Ok(json!("ok"));
            }
            Request::Unlock(path) => {
                self.unlock(&path)?;
                return Ok(json!("ok"));
            }
            Request::Locks => return Ok(json!(self.lock_list())),
            Request::Log { deleted: true, .. } => return Ok(self.deleted()),
            Request::Log { path, .. } => return self.log(path.as_deref()),
            Request::Show { path, at } => return self.show(&path, &at),
            Request::Diff { path, a, b } => return self.diff(&path, &a, &b),
            Request::Blame(path) => return self.blame(&path),
            Request::Merges => return Ok(self.merges()),
            Request::Restore { path, at } => {
                if !self.my_role().writes_tree() && self.my_role() != Role::Editor {
                    return Err("a reader cannot restore files".into());
                }
                self.restore(&path, &at)?;
                return Ok(json!("ok"));
            }
            Request::Status => return Ok(self.status()),
            Request::Pause => {
                self.set_paused(true)?;
                return Ok(json!("paused"));
            }
            Request::Resume => {
                self.set_paused(false)?;
                return Ok(json!("syncing"));
            }
            Request::ConfirmDelete => {
                let n = self.confirm_deletions()?;
                return Ok(json!(format!("{n} deletions recorded")));
            }
            Request::Revert => {
                let n = self.revert();
                return Ok(json!(format!("{n} paths put back")));
            }
            Request::SetTier { peer, tier } => {
                let id = self.find_member(&peer)?;
                self.folder.set_tier(&id, tier).map_err(|e| e.to_string())?;
                true
            }
            Request::Conflicts => return Ok(json!(self.conflicts())),
            Request::Ticket { read_only, expires_secs, uses, standing } => {
                let grant = if read_only { Grant::Read } else { Grant::Write };
                let expires = expires_secs.map(Duration::from_secs);
                let ticket = self.issue_ticket(grant, expires, uses, standing)?;
                return Ok(json!({"ticket": ticket}));
            }
            Request::Tickets => return self.ticket_list(),
            Request::Revoke(who) => return self.revoke(&who).map(|m| json!(m)),
            Request::Approve(handle) => return self.approve(handle),
            Request::Resolve { id, keep } => {
                self.resolve(&id, &keep)?;
                true
            }
        };
        if changed {
            self.folder.commit_at(now_ms() as i64);
            self.dirty.insert(self.id.folder);
            // The tree may change here too (strategy, tiers, a resolution): re-render.
            self.remote_changed.insert(self.id.folder);
        }
        Ok(json!("ok"))
    }

    pub(super) fn setting(&self, key: &str) -> Result<String, String> {
        let err = |e: anyhow::Error| format!("{e:#}");
        Ok(match key {
            "conflict-strategy" => self.folder.strategy().as_str().to_string(),
            SYNC_EXEC_BIT => if self.exec_synced() { "on" } else { "off" }.to_string(),
            TEXT_LIMIT => self.text_limit().to_string(),
            LOCK_LEASE => self.lease().as_secs().to_string(),
            JOIN_APPROVAL => self.folder.setting(JOIN_APPROVAL).unwrap_or_else(|| "off".into()),
            "tracking" => local::tracking(&self.store).map_err(err)?.as_str().to_string(),
            "mode" => self.mode().as_str().to_string(),
            _ => return self.guard_setting(key).ok_or_else(|| unknown_setting(key)),
        })
    }

    /// Changes a setting; returns whether the folder document changed.
    pub(super) fn set_setting(&mut self, key: &str, value: &str) -> Result<bool, String> {
        let err = |e: anyhow::Error| format!("{e:#}");
        match key {
            "conflict-strategy" => {
                let s = Strategy::parse(value).ok_or_else(|| {
                    format!(
                        "unknown conflict strategy {value:?} (expected timestamp, priority or interactive)"
                    )
                })?;
                self.folder.set_strategy(s).map_err(|e| e.to_string())?;
                Ok(true)
            }
            SYNC_EXEC_BIT => {
                if !matches!(value, "on" | "off") {
                    return Err(format!("{SYNC_EXEC_BIT} is on or off, not {value:?}"));
                }
                self.folder.set_setting(SYNC_EXEC_BIT, value).map_err(|e| e.to_string())?;
                Ok(true)
            }
            TEXT_LIMIT => {
                let bytes: u64 =
                    value.parse().map_err(|_| format!("{TEXT_LIMIT} is a number of bytes, not {value:?}"))?;
                self.folder.set_setting(TEXT_LIMIT, &bytes.to_string()).map_err(|e| e.to_string())?;
                Ok(true)
            }
            LOCK_LEASE => {
                let secs: u64 = value
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("{LOCK_LEASE} is a number of seconds, not {value:?}"))?;
                self.folder.set_setting(LOCK_LEASE, &secs.to_string()).map_err(|e| e.to_string())?;
                Ok(true)
            }
            JOIN_APPROVAL => {
                if !matches!(value, "on" | "off") {
                    return Err(format!("{JOIN_APPROVAL} is on or off, not {value:?}"));
                }
                self.folder.set_setting(JOIN_APPROVAL, value).map_err(|e| e.to_string())?;
                Ok(true)
            }
            "mode" => {
                let m = Mode::parse(value).ok_or_else(|| {
                    format!("unknown mode {value:?} (expected send-receive, send-only or receive-only)")
                })?;
                let was = self.mode();
                local::set_mode(&self.store, m).map_err(err)?;
                self.mode = m;
                if was != m {
                    // Whatever was held back either way is looked at again.
                    self.hint(Scope::All);
                    self.remote_changed.insert(self.id.folder);
                    let all = self.file_ids();
                    self.remote_changed.extend(all);
                }
                Ok(false)
            }
            "tracking" => {
                let t = local::Tracking::parse(value)
                    .ok_or_else(|| format!("unknown tracking {value:?} (expected all or whitelist)"))?;
                local::set_tracking(&self.store, t).map_err(err)?;
                self.reload_filter();
                Ok(false)
            }
            _ => match self.set_guard_setting(key, value) {
                Some(result) => result.map(|()| false),
                None => Err(unknown_setting(key)),
            },
        }
    }

    pub(super) fn change_tracked(
        &mut self,
        change: impl FnOnce(&mut BTreeSet<String>),
    ) -> Result<(), String> {
        let err = |e: anyhow::Error| format!("{e:#}");
        let mut set = local::tracked_paths(&self.store).map_err(err)?;
        change(&mut set);
        local::set_tracked_paths(&self.store, &set).map_err(err)?;
        self.reload_filter();
        Ok(())
    }

    pub(super) fn find_member(&self, who: &str) -> Result<String, String> {
        let members = self.folder.members();
        if members.contains_key(who) {
            return Ok(who.to_string());
        }
        // An exact name first: ids are hex, so a short name could also be an id prefix.
        let by_name: Vec<&String> = members.iter().filter(|(_, m)| m.name == who).map(|(id, _)| id).collect();
        if let [one] = by_name.as_slice() {
            return Ok((*one).clone());
        }
        let found: Vec<&String> = members.keys().filter(|id| id.starts_with(who)).collect();
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(format!("no member matches {who:?}")),
            _ => Err(format!("{who:?} matches several members; give more of the id")),
        }
    }

    /// Pending conflicts, as the CLI lists them.
    pub(super) fn conflicts(&mut self) -> Vec<serde_json::Value> {
        let tree = self.tree.get(&mut self.folder, &mut self.files, &self.store);
        let path = |id: &DocId| tree.path_of(*id).unwrap_or("").to_string();
        tree.conflicts
            .iter()
            .map(|c| match c {
                Conflict::Rename { entry, options } => json!({
                    "id": c.id(), "kind": "rename", "path": path(entry),
                    "options": options.iter().map(|o| o.name.clone()).collect::<Vec<_>>(),
                }),
                Conflict::RenameDelete { entry, deleted_by } => json!({
                    "id": c.id(), "kind": "rename-delete", "path": path(entry),
                    "options": ["keep", "delete"], "deleted_by": deleted_by.by,
                }),
                Conflict::SamePath { entries, .. } => json!({
                    "id": c.id(), "kind": "same-path", "path": path(&entries[0]),
                    "options": entries.iter().map(path).collect::<Vec<_>>(),
                }),
            })
            .collect()
    }

    /// Settles a conflict with ordinary writes that supersede the racing ones, so the
    /// decision reaches every peer like any change.
    pub(super) fn resolve(&mut self, id: &str, keep: &str) -> Result<(), String> {
        let tree = self.tree.get(&mut self.folder, &mut self.files, &self.store).clone();
        let conflict = tree
            .conflicts
            .iter()
            .find(|c| c.id() == id)
            .ok_or_else(|| format!("no pending conflict {id:?}"))?;
        let stamp = self.stamp();
        let err = |e: teatime_crdt::ModelError| e.to_string();
        match conflict {
            Conflict::Rename { entry, options } => {
                let chosen = options
                    .iter()
                    .find(|o| o.name == keep)
                    .ok_or_else(|| format!("{keep:?} is not one of the names in conflict {id}"))?;
                self.folder.move_entry(*entry, chosen.parent, &chosen.name, &stamp).map_err(err)?;
            }
            Conflict::RenameDelete { entry, .. } => match keep {
                "keep" => self.folder.undelete(*entry).map_err(err)?,
                "delete" => {
                    let seen = self.seen_content(*entry);
                    self.folder.delete_entry(*entry, &stamp, seen).map_err(err)?;
                }
                _ => return Err(format!("keep \"keep\" or \"delete\" for conflict {id}")),
            },
            Conflict::SamePath { entries, .. } => {
                let kept = entries
                    .iter()
                    .find(|e| tree.path_of(**e) == Some(keep) || e.to_string().starts_with(keep))
                    .ok_or_else(|| format!("{keep:?} is not one of the paths in conflict {id}"))?;
                // The others give the name up for good: a loser keeps the conflict name it is
                // shown under; the one shown at the contested path meanwhile takes one.
                let members = self.folder.members();
                for other in entries.iter().filter(|e| *e != kept) {
                    let (Some(path), Some(entry)) = (tree.path_of(*other), self.folder.entry(*other)) else {
                        continue;
                    };
                    let name = if tree.path_of(entries[0]) == Some(path) {
                        let creator = members.get(&entry.created.by).map_or("unknown", |m| m.name.as_str());
                        teatime_crdt::tree::conflict_name(name_of(path), creator)
                    } else {
                        name_of(path).to_string()
                    };
                    let parent = entry.any_loc().parent;
                    self.folder.move_entry(*other, parent, &name, &stamp).map_err(err)?;
                }
            }
        }
        Ok(())
    }
}

fn unknown_setting(key: &str) -> String {
    let known: Vec<&str> = crate::control::SETTINGS.iter().map(|(k, _, _)| *k).collect();
    format!("unknown setting {key:?} (known: {})", known.join(", "))
}
