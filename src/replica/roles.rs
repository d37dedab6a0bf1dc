//! Roles and modes on the replica's side: putting local changes back (a role that does
//! not allow them, `teatime revert`). Peers' changes are judged in [`super::authorship`].

use super::*;

impl Replica {
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
