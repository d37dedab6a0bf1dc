//! Binary content on the replica's side: which versions the disk lacks (fetched, then
//! written), and serving content to peers (see [`crate::blob`]).

use super::*;

impl Replica {
    /// Binary files (and executable bits) the disk does not show as the folder has them:
    /// they are (re)written by the next materialisation, and content not here yet is
    /// fetched. Received content no longer needed is dropped.
    pub(super) fn stale_binaries(&mut self) -> HashSet<DocId> {
        let exec_synced = self.exec_synced();
        self.tree.get(&mut self.folder, &mut self.files, &self.store);
        // Runs at every remote change: a text file (most of a folder) is passed over
        // without a filter match or an index lookup.
        let mut by_id: Option<HashMap<DocId, &IndexEntry>> = None;
        let mut stale = HashSet::new();
        let mut wanted: HashMap<Hash, u64> = HashMap::new();
        for (path, &(id, kind)) in &self.tree.tree.by_path {
            if kind != EntryKind::File {
                continue;
            }
            let Some(entry) = self.tree.entries.get(&id) else { continue };
            let blob = entry.blob();
            if (blob.is_none() && !exec_synced) || self.filter.excludes(path, false) {
                continue;
            }
            // The row at its path, or wherever the disk holds it (a rename not written yet).
            let disk = match self.index.get(path).filter(|e| e.id == id) {
                Some(e) => Some(e),
                None => by_id
                    .get_or_insert_with(|| self.index.values().map(|e| (e.id, e)).collect())
                    .get(&id)
                    .copied(),
            };
            if exec_synced && disk.is_some_and(|d| d.stat.is_exec() != entry.exec) {
                stale.insert(id);
            }
            let Some(b) = blob else { continue };
            if disk.is_none_or(|d| d.hash != b.hash) {
                stale.insert(id);
                if b.size > 0 {
                    wanted.insert(b.hash, b.size);
                }
            }
        }
        let needed: HashSet<Hash> = wanted.keys().copied().collect();
        for held in self.fetches.dir().held() {
            if !needed.contains(&held) {
                self.fetches.dir().remove(&held);
            }
        }
        self.fetches.retain(&needed);
        for (hash, size) in wanted {
            self.fetches.want(hash, size);
        }
        stale
    }

    /// Answers a peer's request for binary content: from a received copy, or from a
    /// file in the folder that still holds it (checked group by group as it is read).
    pub(super) fn serve_blob(&mut self, peer: EndpointId, hash: Hash, from: u64, count: u32, meta: bool) {
        let none = Frame::BlobNone { hash };
        // A received copy, or a file in the folder that still has the indexed metadata
        // (checked on the opened file, so what is read is what was checked).
        let source = self.fetches.dir().open_complete(&hash).or_else(|| {
            self.index.iter().filter(|(_, e)| e.binary && e.hash == hash).find_map(|(p, e)| {
                let (dir, name) = self.fs.parent(p).ok()?;
                let file = dir.open_file(name).ok()?;
                file.metadata().is_ok_and(|m| scan::stat_of(&m) == e.stat).then_some(file)
            })
        });
        let Some(source) = source else { return self.send(peer, none) };
        let hashed = match self.outboards.get(&hash) {
            Some(h) => h.clone(),
            None => match blob::hash_reader(&source) {
                Ok(h) if h.hash == hash => {
                    let h = Arc::new(h);
                    self.outboards.insert(hash, h.clone());
                    h
                }
                _ => return self.send(peer, none),
            },
        };
        if meta {
            self.send(peer, Frame::BlobMeta { hash, size: hashed.size, cvs: hashed.cvs.clone() });
        }
        let end = (from + u64::from(count)).min(blob::groups(hashed.size));
        for group in from..end {
            match blob::read_group(&source, &hashed.cvs, hashed.size, group) {
                Ok(Some(data)) => self.send(peer, Frame::BlobData { hash, group, data }),
                _ => {
                    // The file changed since it was hashed: its new content is published
                    // by the scan; this version is no longer here.
                    self.outboards.remove(&hash);
                    return self.send(peer, none);
                }
            }
        }
    }

    pub(super) fn blob_next(&mut self, peer: EndpointId, next: std::io::Result<Next>) {
        match next {
            Ok(Next::Wait) => {}
            Ok(Next::Ask(to, frame)) => self.send(to, frame),
            Ok(Next::Complete(hash)) => {
                debug!(hash = %blob::hex(&hash), "binary content received");
                // Written by the next materialisation.
                self.remote_changed.insert(self.id.folder);
            }
            Err(e) => warn!(peer = %peer.fmt_short(), "binary transfer: {e}"),
        }
    }
}
