//! Roles and modes on the replica's side: refusing peers' changes outside their role,
//! and putting local changes back (a role that does not allow them, `teatime revert`).

use super::*;

impl Replica {
    /// Whether changes to the file document `doc` arriving on `peer`'s session are within
    /// its role (see [`crate::policy`]); decided from the folder alone, before decoding.
    pub(super) fn admit_file(&mut self, peer: EndpointId, doc: DocId) -> Result<(), String> {
        if !self.folder.is_ready() {
            return Ok(()); // joining: the folder (and who may do what) is not here yet
        }
        let role = Role::of(&self.folder, &peer.to_string());
        if role == Role::Owner {
            return Ok(());
        }
        self.tree.get(&mut self.folder, &mut self.files);
        if policy::allows_file_change(role, doc, &self.tree.entries) {
            Ok(())
        } else {
            Err(format!("a {} may not change the content of this file", role.as_str()))
        }
    }

    /// Whether the folder document `after` (ours at `before_heads` with `peer`'s changes
    /// loaded, on a fork) differs from ours only as `peer`'s role allows. Changes written by
    /// the owner are allowed whoever relays them, so a writer can pass on a role the owner
    /// set.
    pub(super) fn admit_folder(
        &mut self,
        peer: EndpointId,
        before_heads: &[ChangeHash],
        after: &mut FolderDoc,
    ) -> Result<(), String> {
        if !self.folder.is_ready() {
            return Ok(()); // joining: the folder (and who may do what) is not here yet
        }
        let role = Role::of(&self.folder, &peer.to_string());
        if role == Role::Owner {
            return Ok(());
        }
        let mut base = self.folder.doc_mut().fork();
        if role == Role::Writer {
            let owners: BTreeSet<String> = self
                .folder
                .members()
                .into_iter()
                .filter(|(_, m)| m.role == Role::Owner.as_str())
                .map(|(id, _)| id)
                .collect();
            let new = after.doc_mut().get_changes(before_heads);
            let by_owner: Vec<automerge::Change> = new
                .into_iter()
                .filter(|c| after.actor_member(c.actor_id()).is_some_and(|m| owners.contains(&m)))
                .collect();
            base.apply_changes(by_owner).map_err(|e| e.to_string())?;
        }
        policy::check_folder_change(role, &FolderDoc::from_doc(base), after)
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
        let backup =
            self.root.join(STATE_DIR).join(apply::VERSIONS_DIR).join(format!("reverted-{}", now_ms()));
        let mut count = 0;
        // Deepest first, so a directory is emptied before it is looked at.
        for path in paths.iter().rev() {
            let full = self.root.join(path);
            if let Ok(meta) = std::fs::symlink_metadata(&full) {
                let keep = backup.join(path);
                let moved = keep.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| {
                    // An empty directory goes; one with content (moved or created here) is
                    // kept aside whole, like a file.
                    if meta.is_dir() {
                        std::fs::remove_dir(&full).or_else(|_| std::fs::rename(&full, &keep))
                    } else {
                        std::fs::rename(&full, &keep)
                    }
                });
                if let Err(e) = moved {
                    warn!(%path, "could not put back: {e}");
                    continue;
                }
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

    /// `teatime revert`: everything changed locally and held back (receive-only) is put
    /// back to the synced state.
    pub(super) fn revert(&mut self) -> usize {
        self.scan(Scope::All);
        let held = std::mem::take(&mut self.held);
        self.revert_paths(&held)
    }
}
