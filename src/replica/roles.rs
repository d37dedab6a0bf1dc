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
        let all = self.file_ids();
        self.remote_changed.extend(all);
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
        // Held deletions are among them: written back, they are decided.
        self.guards.held_deletions.clear();
        self.revert_paths(&held)
    }
}
