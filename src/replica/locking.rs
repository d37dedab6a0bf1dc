//! Advisory locks (see [`crate::locks`]): taking, releasing, renewing and listing them.

use super::*;

impl Replica {
    pub(super) fn lease(&self) -> Duration {
        self.folder
            .setting(LOCK_LEASE)
            .and_then(|v| v.parse().ok())
            .map_or(locks::DEFAULT_LEASE, Duration::from_secs)
    }

    pub(super) fn locks_frame(&self) -> Frame {
        let ms = self.lease().as_millis() as u64;
        Frame::Locks { locks: self.locks.mine().iter().map(|id| (*id, ms)).collect() }
    }

    /// Renews our leases when due; drops others' expired ones (and looks again at
    /// changes they held back).
    pub(super) fn tick_locks(&mut self) {
        if self.locks.expire() {
            self.reported.retain(|r| !r.starts_with("locked\0"));
            self.hint(Scope::All);
        }
        if self.locks.renew_due(self.lease()) {
            let frame = self.locks_frame();
            for peer in self.peers.keys().copied().collect::<Vec<_>>() {
                self.send(peer, frame.clone());
            }
        }
    }

    pub(super) fn save_locks(&self) {
        if let Err(e) = local::set_locks(&self.store, self.locks.mine()) {
            warn!("could not save locks: {e:#}");
        }
    }

    /// The file entry shown at `path`.
    pub(super) fn file_at(&mut self, path: &str) -> Result<DocId, String> {
        match self.tree.get(&mut self.folder, &mut self.files, &self.store).by_path.get(path) {
            Some(&(id, EntryKind::File)) => Ok(id),
            Some(_) => Err(format!("{path} is a directory; lock the files in it")),
            None => Err(format!("{path} is not a synced file")),
        }
    }

    pub(super) fn lock(&mut self, path: &str) -> Result<(), String> {
        if !self.my_role().writes_tree() && self.my_role() != Role::Editor {
            return Err("a reader cannot lock files".into());
        }
        let id = self.file_at(path)?;
        if let Err(who) = self.locks.take(id) {
            let name = self.folder.members().get(&who.to_string()).map(|m| m.name.clone());
            return Err(format!("{path} is locked by {}", name.unwrap_or_else(|| who.to_string())));
        }
        self.save_locks();
        Ok(())
    }

    pub(super) fn unlock(&mut self, path: &str) -> Result<(), String> {
        let id = self.file_at(path)?;
        if !self.locks.release(id) {
            return Err(format!("{path} is not locked by this peer"));
        }
        self.save_locks();
        for peer in self.peers.keys().copied().collect::<Vec<_>>() {
            self.send(peer, Frame::Locks { locks: vec![(id, 0)] });
        }
        Ok(())
    }

    pub(super) fn lock_list(&mut self) -> Vec<serde_json::Value> {
        let me = self.me;
        let members = self.folder.members();
        let mut held: Vec<(DocId, EndpointId)> = self.locks.mine().iter().map(|id| (*id, me)).collect();
        held.extend(self.locks.theirs());
        let tree = self.tree.get(&mut self.folder, &mut self.files, &self.store);
        held.into_iter()
            .map(|(id, who)| {
                let name = members.get(&who.to_string()).map(|m| m.name.clone()).unwrap_or_default();
                json!({"path": tree.path_of(id).unwrap_or(""), "holder": who.to_string(), "name": name, "me": who == me})
            })
            .collect()
    }
}
