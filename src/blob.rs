//! Binary files: content addressed by BLAKE3, moved between peers in verified groups.
//!
//! A binary file is named by the BLAKE3 hash of its bytes. BLAKE3 is a Merkle tree, so
//! the hash is also the root over the chaining values (CVs) of aligned 1 MiB groups: a
//! receiver first gets the list of group CVs ([`Frame::BlobMeta`]), checks that they
//! combine to the hash it asked for, and then checks every group against its CV as it
//! arrives. Nothing unverified is ever written to a user's file, a peer sending garbage
//! is caught after one group, and a transfer resumes from the last verified group of
//! the partial file (after a dropped connection or a restart).
//!
//! Memory stays bounded whatever the file size: groups are requested in a small window
//! and written to the partial file as they arrive; the sender reads one group at a time.
//!
//! [`Frame::BlobMeta`]: crate::net::wire::Frame::BlobMeta

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};
use iroh::EndpointId;
use teatime_crdt::ids::{from_hex, to_hex};
use teatime_crdt::path::STATE_DIR;

use crate::fsroot::{Dir, Root};

/// Size of one verified group.
pub const GROUP: u64 = 1 << 20;
/// Groups requested at a time per transfer: the most a transfer holds in flight.
pub const WINDOW: u64 = 8;
/// Transfers running at once: what is in flight stays within this many windows.
const MAX_ACTIVE: usize = 4;
/// A transfer that made no progress for this long asks another peer.
const STALL: Duration = Duration::from_secs(30);

/// A BLAKE3 hash.
pub type Hash = [u8; 32];

/// Hex form of a hash (file names, logs).
pub fn hex(hash: &Hash) -> String {
    to_hex(hash)
}

/// A file's BLAKE3 with the chaining value of each group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashed {
    /// BLAKE3 of the whole content.
    pub hash: Hash,
    /// Size in bytes.
    pub size: u64,
    /// One chaining value per group (for a single group: the hash itself).
    pub cvs: Vec<ChainingValue>,
}

/// Number of groups of a file of `size` bytes (an empty file is one empty group).
pub fn groups(size: u64) -> u64 {
    size.div_ceil(GROUP).max(1)
}

/// Length of group `index` of a `size`-byte file.
fn group_len(size: u64, index: u64) -> u64 {
    if index + 1 == groups(size) { size - index * GROUP } else { GROUP }
}

/// Hashes everything `r` yields, one group at a time.
pub fn hash_reader(mut r: impl Read) -> io::Result<Hashed> {
    let mut first = vec![0u8; GROUP as usize];
    let n = read_full(&mut r, &mut first)?;
    let mut buf = vec![0u8; GROUP as usize];
    let mut m = if n as u64 == GROUP { read_full(&mut r, &mut buf)? } else { 0 };
    if m == 0 {
        // The whole content fits one group: its CV is the root hash.
        let h = *blake3::hash(&first[..n]).as_bytes();
        return Ok(Hashed { hash: h, size: n as u64, cvs: vec![h] });
    }
    let mut cvs = vec![group_cv(0, &first)];
    let mut size = GROUP;
    drop(first);
    loop {
        cvs.push(group_cv(size / GROUP, &buf[..m]));
        size += m as u64;
        if (m as u64) < GROUP {
            break;
        }
        m = read_full(&mut r, &mut buf)?;
        if m == 0 {
            break;
        }
    }
    let hash = root_of(&cvs, size).ok_or_else(|| io::Error::other("inconsistent group count"))?;
    Ok(Hashed { hash, size, cvs })
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The chaining value of group `index` holding `data` (not the root: the file has more
/// than one group).
fn group_cv(index: u64, data: &[u8]) -> ChainingValue {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(index * GROUP);
    h.update(data);
    h.finalize_non_root()
}

/// The root hash the group CVs of a `size`-byte file combine to (`None` if their count
/// does not fit the size).
pub fn root_of(cvs: &[ChainingValue], size: u64) -> Option<Hash> {
    if cvs.len() as u64 != groups(size) {
        return None;
    }
    if cvs.len() == 1 {
        return Some(cvs[0]);
    }
    fn subtree(cvs: &[ChainingValue], len: u64, root: bool) -> ChainingValue {
        if cvs.len() == 1 {
            return cvs[0];
        }
        let left_len = left_subtree_len(len);
        let split = (left_len / GROUP) as usize;
        let l = subtree(&cvs[..split], left_len, false);
        let r = subtree(&cvs[split..], len - left_len, false);
        if root {
            *merge_subtrees_root(&l, &r, Mode::Hash).as_bytes()
        } else {
            merge_subtrees_non_root(&l, &r, Mode::Hash)
        }
    }
    Some(subtree(cvs, size, true))
}

/// Whether `data` is group `index` of the file with these CVs.
pub fn verify_group(cvs: &[ChainingValue], size: u64, index: u64, data: &[u8]) -> bool {
    let n = groups(size);
    if index >= n {
        return false;
    }
    if data.len() as u64 != group_len(size, index) {
        return false;
    }
    if n == 1 {
        return *blake3::hash(data).as_bytes() == cvs[0];
    }
    group_cv(index, data) == cvs[index as usize]
}

/// Reads group `index` of `f` and checks it (a file that changed since it was hashed
/// must not be served: `Ok(None)`).
pub fn read_group(f: &File, cvs: &[ChainingValue], size: u64, index: u64) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; group_len(size, index) as usize];
    f.read_exact_at(&mut buf, index * GROUP)?;
    Ok(verify_group(cvs, size, index, &buf).then_some(buf))
}

/// Where a folder keeps binary content in transit (`.teatime/blobs/`, reached through the
/// folder's directory handle like every other write).
pub struct BlobDir {
    root: Root,
}

impl BlobDir {
    /// The blob directory of the folder at `root` (created on first use).
    pub fn new(root: &Root) -> Self {
        BlobDir { root: root.clone() }
    }

    fn rel() -> String {
        format!("{STATE_DIR}/blobs")
    }

    fn dir(&self) -> io::Result<Dir> {
        self.root.dir(&Self::rel())
    }

    fn partial(hash: &Hash) -> String {
        format!("{}.part", hex(hash))
    }

    /// A completely received, verified blob, opened for reading.
    pub fn open_complete(&self, hash: &Hash) -> Option<File> {
        self.dir().and_then(|d| d.open_file(&hex(hash))).ok()
    }

    /// Whether a verified copy of `hash` is here.
    pub fn has(&self, hash: &Hash) -> bool {
        self.dir().and_then(|d| d.metadata(&hex(hash))).is_ok_and(|m| m.is_file())
    }

    /// Removes the copy of `hash` (it has been written everywhere it was needed).
    pub fn remove(&self, hash: &Hash) {
        let _ = self.dir().and_then(|d| d.unlink(&hex(hash)));
    }

    /// The hashes of complete blobs held.
    pub fn held(&self) -> Vec<Hash> {
        let Ok(entries) = self.dir().and_then(|d| d.entries()) else { return vec![] };
        entries.into_iter().filter_map(|(name, _)| from_hex(name.to_str()?)).collect()
    }

    fn partial_len(&self, hash: &Hash) -> u64 {
        self.dir().and_then(|d| d.metadata(&Self::partial(hash))).map_or(0, |m| m.len())
    }

    fn remove_partial(&self, hash: &Hash) {
        let _ = self.dir().and_then(|d| d.unlink(&Self::partial(hash)));
    }
}

/// One blob being received.
struct Fetch {
    size: u64,
    cvs: Option<Vec<ChainingValue>>,
    /// Groups received and verified, from the start.
    have: u64,
    /// Groups asked for so far (`have..asked` are in flight).
    asked: u64,
    source: Option<EndpointId>,
    /// Peers that said they cannot serve it (cleared when all have been tried).
    refused: HashSet<EndpointId>,
    progress_at: Instant,
}

/// What the replica should do after a blob frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing.
    Wait,
    /// Send this request to this peer.
    Ask(EndpointId, crate::net::wire::Frame),
    /// The blob is complete and verified: write it where it belongs.
    Complete(Hash),
}

/// Every blob this folder is receiving.
pub struct Fetches {
    blobs: BlobDir,
    active: HashMap<Hash, Fetch>,
}

impl Fetches {
    /// No transfers yet.
    pub fn new(root: &Root) -> Self {
        Fetches { blobs: BlobDir::new(root), active: HashMap::new() }
    }

    /// The folder's blob directory.
    pub fn dir(&self) -> &BlobDir {
        &self.blobs
    }

    /// Transfers under way: hash, bytes verified so far, size.
    pub fn progress(&self) -> Vec<(Hash, u64, u64)> {
        self.active.iter().map(|(h, f)| (*h, (f.have * GROUP).min(f.size), f.size)).collect()
    }

    /// Whether anything is being received.
    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Asks for `hash` (of `size` bytes) unless it is here or on its way.
    pub fn want(&mut self, hash: Hash, size: u64) {
        if self.blobs.has(&hash) || self.active.contains_key(&hash) {
            return;
        }
        self.active.insert(
            hash,
            Fetch {
                size,
                cvs: None,
                have: 0,
                asked: 0,
                source: None,
                refused: HashSet::new(),
                progress_at: Instant::now(),
            },
        );
    }

    /// Stops receiving blobs no longer wanted (the file changed again, or was deleted).
    pub fn retain(&mut self, wanted: &HashSet<Hash>) {
        let dropped: Vec<Hash> = self.active.keys().filter(|h| !wanted.contains(*h)).copied().collect();
        for h in dropped {
            self.active.remove(&h);
            self.blobs.remove_partial(&h);
        }
    }

    /// Starts (or restarts) transfers that have no source, or whose source went quiet,
    /// with one of `peers`.
    pub fn assign(&mut self, peers: &[EndpointId]) -> Vec<(EndpointId, crate::net::wire::Frame)> {
        let mut out = Vec::new();
        let mut running =
            self.active.values().filter(|f| f.source.is_some_and(|s| peers.contains(&s))).count();
        for (hash, f) in &mut self.active {
            let stalled = f.source.is_some() && f.progress_at.elapsed() > STALL;
            if stalled {
                f.refused.extend(f.source.take());
                running -= 1;
            }
            if f.source.is_some_and(|s| peers.contains(&s)) {
                continue;
            }
            f.source = None;
            if running >= MAX_ACTIVE {
                continue;
            }
            if peers.iter().all(|p| f.refused.contains(p)) {
                f.refused.clear(); // everyone was tried: start over (content may have arrived)
                continue;
            }
            let Some(peer) = peers.iter().find(|p| !f.refused.contains(*p)).copied() else { continue };
            running += 1;
            f.source = Some(peer);
            f.progress_at = Instant::now();
            // The CVs come first: they also verify what a partial file already holds.
            // With nothing received yet, the first window is asked for at once.
            f.cvs = None;
            let partial = self.blobs.partial_len(hash);
            let count = if partial == 0 { WINDOW.min(groups(f.size)) } else { 0 };
            f.have = 0;
            f.asked = count;
            out.push((
                peer,
                crate::net::wire::Frame::BlobGet { hash: *hash, from: 0, count: count as u32, meta: true },
            ));
        }
        out
    }

    /// A peer went away: its transfers look for another source.
    pub fn peer_gone(&mut self, peer: EndpointId) {
        for f in self.active.values_mut() {
            if f.source == Some(peer) {
                f.source = None;
            }
        }
    }

    /// `peer` cannot serve `hash`.
    pub fn refused(&mut self, peer: EndpointId, hash: Hash) {
        if let Some(f) = self.active.get_mut(&hash)
            && f.source == Some(peer)
        {
            f.refused.insert(peer);
            f.source = None;
        }
    }

    /// The CVs of `hash` arrived: check them and what the partial file already holds,
    /// then ask for the first window.
    pub fn meta(
        &mut self,
        peer: EndpointId,
        hash: Hash,
        size: u64,
        cvs: Vec<ChainingValue>,
    ) -> io::Result<Next> {
        let Some(f) = self.active.get_mut(&hash).filter(|f| f.source == Some(peer)) else {
            return Ok(Next::Wait);
        };
        if size != f.size || root_of(&cvs, size) != Some(hash) {
            f.refused.insert(peer);
            f.source = None;
            return Err(io::Error::other("blob verification data does not match its hash"));
        }
        let file =
            self.blobs.root.create_dir_all(&BlobDir::rel())?.open_rw(&BlobDir::partial(&hash), true)?;
        // Resume: keep the verified prefix of what an earlier transfer left.
        let on_disk = file.metadata()?.len();
        let mut have = 0;
        while have < groups(size) {
            let len = group_len(size, have);
            if have * GROUP + len > on_disk {
                break;
            }
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, have * GROUP)?;
            if !verify_group(&cvs, size, have, &buf) {
                break;
            }
            have += 1;
        }
        file.set_len((have * GROUP).min(size))?;
        f.cvs = Some(cvs);
        f.have = have;
        // Groups already asked for along with the CVs are on their way.
        f.asked = f.asked.max(have);
        f.progress_at = Instant::now();
        if have == groups(size) {
            return self.finish(hash);
        }
        Ok(self.ask_more(hash))
    }

    fn ask_more(&mut self, hash: Hash) -> Next {
        let Some(f) = self.active.get_mut(&hash) else { return Next::Wait };
        let (Some(source), n) = (f.source, groups(f.size)) else { return Next::Wait };
        if f.asked >= n || f.asked - f.have > WINDOW / 2 {
            return Next::Wait;
        }
        let count = (f.have + WINDOW).min(n) - f.asked;
        let from = f.asked;
        f.asked += count;
        Next::Ask(source, crate::net::wire::Frame::BlobGet { hash, from, count: count as u32, meta: false })
    }

    /// One group arrived: verify, append, ask for more or finish.
    pub fn data(&mut self, peer: EndpointId, hash: Hash, group: u64, data: &[u8]) -> io::Result<Next> {
        let Some(f) = self.active.get_mut(&hash).filter(|f| f.source == Some(peer)) else {
            return Ok(Next::Wait);
        };
        let Some(cvs) = &f.cvs else { return Ok(Next::Wait) };
        if group != f.have {
            return Ok(Next::Wait); // a leftover of an earlier request
        }
        if !verify_group(cvs, f.size, group, data) {
            f.refused.insert(peer);
            f.source = None;
            return Err(io::Error::other("a group of binary content failed verification"));
        }
        let file = self.blobs.dir()?.open_rw(&BlobDir::partial(&hash), false)?;
        file.write_all_at(data, group * GROUP)?;
        f.have += 1;
        f.progress_at = Instant::now();
        if f.have == groups(f.size) {
            file.sync_all()?;
            return self.finish(hash);
        }
        Ok(self.ask_more(hash))
    }

    fn finish(&mut self, hash: Hash) -> io::Result<Next> {
        self.active.remove(&hash);
        let dir = self.blobs.dir()?;
        let partial = BlobDir::partial(&hash);
        dir.open_rw(&partial, false)?.sync_all()?;
        dir.rename(&partial, &dir, &hex(&hash), rustix::fs::RenameFlags::empty())?;
        dir.fsync();
        Ok(Next::Complete(hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 1000) as u8).collect()
    }

    #[test]
    fn group_cvs_combine_to_the_plain_blake3_hash() {
        for len in
            [0, 1, 1024, GROUP as usize - 1, GROUP as usize, GROUP as usize + 1, 3 * GROUP as usize + 5]
        {
            let data = bytes(len);
            let h = hash_reader(&data[..]).unwrap();
            assert_eq!(h.hash, *blake3::hash(&data).as_bytes(), "len {len}");
            assert_eq!(h.size, len as u64);
            assert_eq!(root_of(&h.cvs, h.size), Some(h.hash));
            for (i, chunk) in data.chunks(GROUP as usize).enumerate() {
                assert!(verify_group(&h.cvs, h.size, i as u64, chunk));
                let mut bad = chunk.to_vec();
                bad[0] ^= 1;
                assert!(!verify_group(&h.cvs, h.size, i as u64, &bad));
            }
        }
    }
}
