//! Roles and modes on the replica's side: refusing peers' changes outside their role,
//! and putting local changes back (a role that does not allow them, `teatime revert`).

use super::*;

impl Replica {
    /// Whether changes to `doc` arriving on `peer`'s session are within its role (see
    /// [`crate::policy`]). Folder-document changes are tried on a copy first. Changes
    /// written by the owner are allowed whoever relays them, so a writer can pass on a
    /// role the owner set.
    pub(super) fn admit(&mut self, peer: EndpointId, doc: DocId, data: &[u8]) -> Result<(), String> {
        if !self.folder.is_ready() {
            return Ok(()); // joining: the folder (and who may do what) is not here yet
        }
        let role = Role::of(&self.folder, &peer.to_string());
        if role == Role::Owner {
            return Ok(());
        }
        if doc != self.id.folder {
            self.tree.get(&mut self.folder, &mut self.files);
            return if policy::allows_file_change(role, doc, &self.tree.entries) {
                Ok(())
            } else {
                Err(format!("a {} may not change the content of this file", role.as_str()))
            };
        }
        let before_heads = self.folder.doc_mut().get_heads();
        let mut after = FolderDoc::from_doc(self.folder.doc_mut().fork());
        after.doc_mut().load_incremental(data).map_err(|e| e.to_string())?;
        let mut base = self.folder.doc_mut().fork();
        if role == Role::Writer {
            let owners: BTreeSet<String> = self
                .folder
                .members()
                .into_iter()
                .filter(|(_, m)| m.role == Role::Owner.as_str())
                .map(|(id, _)| id)
                .collect();
            let new = after.doc_mut().get_changes(&before_heads);
            let by_owner: Vec<automerge::Change> = new
                .into_iter()
                .filter(|c| after.actor_member(c.actor_id()).is_some_and(|m| owners.contains(&m)))
                .collect();
            base.apply_changes(by_owner).map_err(|e| e.to_string())?;
        }
        policy::check_folder_change(role, &FolderDoc::from_doc(base), &after)
    }

    pub(super) fn my_role(&self) -> Role {
        Role::of(&self.folder, &self.me.to_string())
    }

    pub(super) fn mode(&self) -> Mode {
        self.mode
    }

    /// Puts `paths` back to the synced state. Whatever is there locally is moved to
    /// `.teatime/versions/reverted-<time>/` first: a revert never destroys the user's
    /// bytes.
    pub(super) fn revert_paths(&mut self, paths: &BTreeSet<String>) -> usize {
        let backup = format!("{STATE_DIR}/{}/reverted-{}", apply::VERSIONS_DIR, now_ms());
        let mut count = 0;
        // Deepest first, so a directory is emptied before it is looked at.
        for path in paths.iter().rev() {
            if let Err(e) = self.put_aside(path, &backup) {
                warn!(?path, "could not put back: {e}");
                continue;
            }
            // Forgotten by the index: the next materialisation writes the synced version.
            let below: Vec<String> =
                self.index.keys().filter(|k| scan::is_within(k, path)).cloned().collect();
            for k in below {
                self.index.remove(&k);
                self.index_touched.insert(k);
            }
            self.held.remove(path);
            count += 1;
        }
        self.remote_changed.insert(self.id.folder);
        self.remote_changed.extend(self.files.keys().copied());
        count
    }

    /// Moves what is at `path` to the same place under `backup` (both inside the folder,
    /// through its directory handle). An empty directory is removed instead; nothing there
    /// is nothing to do.
    fn put_aside(&self, path: &str, backup: &str) -> std::io::Result<()> {
        let (dir, name) = match self.fs.parent(path) {
            Ok(found) => found,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let meta = match dir.metadata(name) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if meta.is_dir() && dir.remove_dir(name).is_ok() {
            return Ok(());
        }
        // A directory with content (moved or created here) is kept aside whole, like a file.
        let keep_dir = self.fs.create_dir_all(&format!("{backup}/{}", parent_of(path)))?;
        dir.rename(name, &keep_dir, name, rustix::fs::RenameFlags::NOREPLACE)
    }

    /// `teatime revert`: everything changed locally and held back (receive-only) is put
    /// back to the synced state.
    pub(super) fn revert(&mut self) -> usize {
        self.scan(Scope::All);
        let held = std::mem::take(&mut self.held);
        self.revert_paths(&held)
    }
}
