//! Authorship: every change is signed by the member that wrote it, and every change a
//! peer sends is checked before Automerge applies it.
//!
//! An actor is a member's EndpointId followed by a per-store nonce
//! ([`teatime_crdt::ids::actor_for_member`]), and a change travels with its author's
//! ed25519 signature over the change hash (which covers actor, sequence number,
//! dependencies and operations). So a change names its author, and nobody can write under
//! another member's actor: not a peer that relays it, not a member forging it. The checks,
//! in order:
//!
//! 1. the payload is parsed into changes without applying them (change chunks one by one;
//!    compressed change chunks are refused: this peer never sends them, and inflating them
//!    is unbounded);
//! 2. each change's actor has the member form and its signature verifies under that
//!    member's key ([`Refusal::Forged`] otherwise: the sending peer is disconnected);
//! 3. each author is a member whose role, at the change's time, allows the change
//!    ([`crate::policy`]; [`Refusal::NotAllowed`]), or not known yet
//!    ([`Refusal::UnknownAuthor`]: the frame waits for the folder document).
//!
//! Signatures of our own changes are made when they are first sent (ed25519 is
//! deterministic, so nothing needs storing); other members' are stored with the changes,
//! to relay.

use automerge::Change;
use iroh::{PublicKey, Signature};
use teatime_crdt::chunk::{
    CHANGE as CHUNK_CHANGE, COMPRESSED_CHANGE as CHUNK_COMPRESSED_CHANGE, DOCUMENT as CHUNK_DOCUMENT,
    MAGIC as CHUNK_MAGIC,
};
use teatime_crdt::creation::Creation;

use super::*;

/// Separates teatime change signatures from anything else a node key signs.
const DOMAIN: &[u8] = b"teatime/change/v1";

pub use crate::net::wire::Signed;

/// Why a peer's changes were not applied.
#[derive(Debug)]
pub enum Refusal {
    /// Malformed, unsigned or signed by someone else than its author: the peer is broken or
    /// hostile.
    Forged(String),
    /// Signed, but outside its author's role.
    NotAllowed(String),
    /// Signed by someone this replica does not know as a member yet (its admission is
    /// still on its way).
    UnknownAuthor,
}

/// What the checks need to know of one change.
pub struct ChangeInfo {
    hash: [u8; 32],
    actor: automerge::ActorId,
    timestamp: i64,
}

impl From<&Change> for ChangeInfo {
    fn from(c: &Change) -> Self {
        ChangeInfo { hash: c.hash().0, actor: c.actor_id().clone(), timestamp: c.timestamp() }
    }
}

impl From<automerge::ChangeMetadata<'_>> for ChangeInfo {
    fn from(m: automerge::ChangeMetadata<'_>) -> Self {
        ChangeInfo { hash: m.hash.0, actor: m.actor.into_owned(), timestamp: m.timestamp }
    }
}

/// A peer's payload, parsed but not applied.
pub struct Incoming {
    /// The changes it adds.
    pub infos: Vec<ChangeInfo>,
    /// How to apply them.
    pub apply: Apply,
    /// Signatures of its changes already checked against their authors (by
    /// [`Preloaded::decode`]): (change hash, signature).
    pub verified: Vec<Signed>,
}

/// A new document's payload decoded ahead, off the replica's thread (`Replica::preload`).
pub struct Preloaded {
    /// BLAKE3 of the payload: it stands only for these very bytes.
    payload: [u8; 32],
    /// What [`intake::inspect`] found in it.
    pub(super) inspected: intake::Payload,
    decoded: Decoded,
    /// The changes' signatures that were checked.
    verified: Vec<Signed>,
}

enum Decoded {
    /// A whole document, loaded into Automerge.
    Whole(Box<AutoCommit>),
    /// A text file's first change.
    Created(Creation),
}

impl Preloaded {
    /// Decodes a payload that would start an empty document, if it passes the intake
    /// checks and is a whole document or a text file's first change, and checks the
    /// signatures that come with it. `None`: leave it to the one-by-one path.
    pub(super) fn decode(
        folder: DocId,
        actor: &automerge::ActorId,
        data: &[u8],
        signatures: &[Signed],
        limits: &intake::Limits,
    ) -> Option<Preloaded> {
        let inspected = intake::inspect(data, limits).ok()?;
        let chunks = chunks(data).ok()?;
        let (decoded, changes): (Decoded, Vec<([u8; 32], automerge::ActorId)>) = match chunks.as_slice() {
            [(CHUNK_DOCUMENT, _)] => {
                let load = || {
                    let mut d = AutoCommit::new().with_actor(actor.clone());
                    d.load_incremental(data).ok().map(|_| d)
                };
                let mut d = intake::decode_isolated(load).ok().flatten()?;
                let changes =
                    d.get_changes_meta(&[]).into_iter().map(|c| (c.hash.0, c.actor.into_owned())).collect();
                (Decoded::Whole(Box::new(d)), changes)
            }
            [(CHUNK_CHANGE | CHUNK_COMPRESSED_CHANGE, bytes)] => {
                let first = intake::decode_isolated(|| Creation::parse(bytes)).ok().flatten()?;
                let changes = vec![(first.hash.0, first.actor.clone())];
                (Decoded::Created(first), changes)
            }
            _ => return None,
        };
        let sigs: HashMap<[u8; 32], Signature> = signatures.iter().copied().collect();
        let verified = changes
            .iter()
            .filter_map(|(hash, actor)| {
                let author = author_of(actor)?;
                let sig = sigs.get(hash)?;
                author.verify(&message(folder, hash), sig).ok().map(|()| (*hash, *sig))
            })
            .collect();
        Some(Preloaded { payload: *blake3::hash(data).as_bytes(), inspected, decoded, verified })
    }

    /// Whether it was decoded from `data`.
    pub(super) fn is_of(&self, data: &[u8]) -> bool {
        self.payload == *blake3::hash(data).as_bytes()
    }
}

/// The member whose key an actor id carries, if it carries one.
fn author_of(actor: &automerge::ActorId) -> Option<PublicKey> {
    teatime_crdt::ids::member_bytes_of_actor(actor).and_then(|b| PublicKey::from_bytes(&b).ok())
}

impl Incoming {
    fn new(infos: Vec<ChangeInfo>, apply: Apply) -> Incoming {
        Incoming { infos, apply, verified: Vec::new() }
    }
}

/// How a checked payload is applied.
pub enum Apply {
    /// Changes, applied one by one.
    Changes(Vec<Change>),
    /// A whole document (`save()`), already loaded (and merged with ours): it replaces
    /// ours, so nothing is decoded twice.
    Replace(Box<AutoCommit>),
    /// A text document's first change, for a document we lack: it becomes the document,
    /// not built into Automerge ([`FileDoc::from_creation`]).
    Created(Box<Creation>),
}

fn message(folder: DocId, hash: &[u8; 32]) -> Vec<u8> {
    [DOMAIN, &folder.0, hash].concat()
}

/// A member's signature of one of its changes in `folder`.
pub fn sign_change(key: &iroh::SecretKey, folder: DocId, hash: &ChangeHash) -> Signature {
    key.sign(&message(folder, &hash.0))
}

/// Splits a payload into Automerge chunks: (type, whole chunk bytes).
fn chunks(mut data: &[u8]) -> Result<Vec<(u8, &[u8])>, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < 9 || data[..4] != CHUNK_MAGIC {
            return Err("not an Automerge chunk".into());
        }
        let kind = data[8];
        let (len, leb_bytes) = uleb(&data[9..]).ok_or("bad chunk length")?;
        let end = 9usize
            .checked_add(leb_bytes)
            .and_then(|h| h.checked_add(usize::try_from(len).ok()?))
            .filter(|end| *end <= data.len())
            .ok_or("truncated chunk")?;
        out.push((kind, &data[..end]));
        data = &data[end..];
    }
    Ok(out)
}

/// Unsigned LEB128: the value and how many bytes it took.
fn uleb(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    for (i, b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f).checked_shl(7 * i as u32)?;
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

impl Replica {
    /// Signs our own change.
    fn sign(&self, hash: &ChangeHash) -> Signature {
        sign_change(&self.key, self.id.folder, hash)
    }

    /// The signatures that go with changes (hash, actor) when they are sent: ours made
    /// now, others' from the store. A change without one is sent unsigned (peers will
    /// refuse it).
    pub(super) fn signatures_for(
        &mut self,
        changes: impl Iterator<Item = (ChangeHash, bool)>,
    ) -> Vec<Signed> {
        let mut out = Vec::new();
        let mut theirs = Vec::new();
        for (hash, mine) in changes {
            if mine {
                out.push((hash.0, self.sign(&hash)));
            } else if let Some(sig) = self.unsaved_signatures.get(&hash.0) {
                out.push((hash.0, *sig));
            } else {
                theirs.push(hash.0);
            }
        }
        if !theirs.is_empty() {
            match self.store.signatures(&theirs) {
                Ok(found) => {
                    for (hash, sig) in theirs.iter().zip(found) {
                        if let Some(sig) = sig {
                            out.push((*hash, Signature::from_bytes(&sig)));
                        }
                    }
                }
                Err(e) => warn!("could not read signatures: {e:#}"),
            }
        }
        out
    }

    /// What to send `peer`-side for `doc` past `base` (our heads it has): the payload, and
    /// each change's signature. Nothing when it has everything.
    pub(super) fn outgoing(&mut self, doc: DocId, base: &[ChangeHash]) -> Option<(Vec<u8>, Vec<Signed>)> {
        // Ours: any actor of this member (a fresh one per process start, see `node.rs`),
        // signed now with our key.
        let me = *self.me.as_bytes();
        let mine =
            move |actor: &automerge::ActorId| teatime_crdt::ids::member_bytes_of_actor(actor) == Some(me);
        if doc != self.id.folder
            && let Some(first) = self.files.get_or_new(&self.store, doc).creation()
        {
            // The document holds only its first change, which `base` (heads we have) covers
            // unless empty: the change itself is the whole document.
            if !base.is_empty() {
                return None;
            }
            let (data, meta) = (first.bytes.clone(), (first.hash, mine(&first.actor)));
            return Some((data, self.signatures_for(std::iter::once(meta))));
        }
        let d = self.doc_mut(doc);
        if base.is_empty() {
            // A whole document: its save() is far smaller than its changes, and the
            // change metadata (no operations) is enough to sign.
            let heads = d.get_heads();
            let data = match self.fresh_saves.get(&doc) {
                Some((at, bytes)) if *at == heads => bytes.clone(),
                _ => self.doc_mut(doc).save(),
            };
            let d = self.doc_mut(doc);
            let metas: Vec<(ChangeHash, bool)> =
                d.get_changes_meta(&[]).into_iter().map(|m| (m.hash, mine(&m.actor))).collect();
            if metas.is_empty() {
                return None;
            }
            let sigs = self.signatures_for(metas.into_iter());
            return Some((data, sigs));
        }
        let changes = d.get_changes(base);
        if changes.is_empty() {
            return None;
        }
        let data: Vec<u8> = changes.iter().flat_map(|c| c.raw_bytes().iter().copied()).collect();
        let sigs = self.signatures_for(changes.iter().map(|c| (c.hash(), mine(c.actor_id()))));
        Some((data, sigs))
    }

    /// Parses a peer's payload for `doc` into the changes it would add, taking what
    /// `preload` decoded from these bytes (`ahead`), if it did.
    pub(super) fn incoming(
        &mut self,
        doc: DocId,
        data: &[u8],
        ahead: Option<Preloaded>,
    ) -> Result<Incoming, String> {
        let (decoded, verified) = ahead.map_or((None, Vec::new()), |p| (Some(p.decoded), p.verified));
        let mut incoming = self.decode_payload(doc, data, decoded)?;
        incoming.verified = verified;
        Ok(incoming)
    }

    fn decode_payload(
        &mut self,
        doc: DocId,
        data: &[u8],
        ahead: Option<Decoded>,
    ) -> Result<Incoming, String> {
        let (mut created_ahead, whole_ahead) = match ahead {
            Some(Decoded::Created(c)) => (Some(c), None),
            Some(Decoded::Whole(d)) => (None, Some(d)),
            None => (None, None),
        };
        let chunks = chunks(data)?;
        if let [(CHUNK_CHANGE | CHUNK_COMPRESSED_CHANGE, bytes)] = chunks.as_slice()
            && doc != self.id.folder
            && let Some(first) = created_ahead.take().or_else(|| Creation::parse(bytes))
        {
            // A text document's first change, read without Automerge (most of a join).
            let heads = self.current_heads(doc);
            let info = ChangeInfo { hash: first.hash.0, actor: first.actor.clone(), timestamp: first.at_ms };
            if heads.is_empty() {
                return Ok(Incoming::new(vec![info], Apply::Created(Box::new(first))));
            }
            // We have the document: usually with this change (it starts every history),
            // then there is nothing to add; else it is applied like any change.
            let known = heads.contains(&first.hash) || {
                let d = self.doc_mut(doc);
                d.get_missing_deps(&[]).is_empty() && d.get_missing_deps(&[first.hash]).is_empty()
            };
            if known {
                return Ok(Incoming::new(Vec::new(), Apply::Changes(Vec::new())));
            }
            let change = first.to_change().map_err(|e| format!("unreadable change: {e}"))?;
            return Ok(Incoming::new(vec![info], Apply::Changes(vec![change])));
        }
        if chunks.iter().all(|(kind, _)| *kind == CHUNK_CHANGE) {
            let changes = chunks
                .into_iter()
                .map(|(_, bytes)| Change::try_from(bytes).map_err(|e| format!("unreadable change: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            let infos = changes.iter().map(ChangeInfo::from).collect();
            return Ok(Incoming::new(infos, Apply::Changes(changes)));
        }
        if chunks.len() != 1 || chunks[0].0 != CHUNK_DOCUMENT {
            return Err("a payload mixing documents and changes, or a compressed change".into());
        }
        let actor = self.id.actor.clone();
        let d = self.doc_mut(doc);
        let ours = d.get_heads();
        if ours.is_empty()
            && let Some(mut whole) = whole_ahead
        {
            // Loaded ahead from these very bytes (`Replica::preload`).
            let infos = whole.get_changes_meta(&[]).into_iter().map(ChangeInfo::from).collect();
            return Ok(Incoming::new(infos, Apply::Replace(whole)));
        }
        // A whole document, usually for one we lack; for one we have (the sender did not
        // know our heads), what it adds is what a copy of ours gains from it.
        // (A fork gets a random actor: ours is set back, it replaces our document.)
        let mut merged = if ours.is_empty() { AutoCommit::new() } else { d.fork() }.with_actor(actor);
        merged.load_incremental(data).map_err(|e| format!("unreadable document: {e}"))?;
        let infos = merged.get_changes_meta(&ours).into_iter().map(ChangeInfo::from).collect();
        Ok(Incoming::new(infos, Apply::Replace(Box::new(merged))))
    }

    /// Checks each change's signature against its author, and the author's role.
    /// Returns the signatures to keep (to relay the changes).
    pub(super) fn check_authorship(
        &mut self,
        doc: DocId,
        incoming: &Incoming,
        signatures: &[Signed],
    ) -> Result<Vec<Signed>, Refusal> {
        let sigs: HashMap<[u8; 32], Signature> = signatures.iter().copied().collect();
        let mut kept = Vec::with_capacity(incoming.infos.len());
        let mut authors: BTreeMap<String, i64> = BTreeMap::new();
        for c in &incoming.infos {
            let hash = c.hash;
            let author = author_of(&c.actor).ok_or_else(|| {
                Refusal::Forged(format!("change by actor {} which is no member's", c.actor))
            })?;
            let sig = sigs.get(&hash).ok_or_else(|| Refusal::Forged("an unsigned change".into()))?;
            // The author comes from the actor, which the hash covers: a (hash, signature)
            // pair checked ahead needs no second check.
            if !incoming.verified.contains(&(hash, *sig)) {
                author.verify(&message(self.id.folder, &hash), sig).map_err(|_| {
                    Refusal::Forged(format!("a change not signed by its author {}", author.fmt_short()))
                })?;
            }
            kept.push((hash, *sig));
            // Each author is judged at the time of its latest change here: a role the owner
            // took away applies from then on.
            let at = authors.entry(author.to_string()).or_insert(i64::MIN);
            *at = (*at).max(c.timestamp);
        }
        if !self.folder.is_ready() {
            // Joining: the folder (and who may do what) comes from the ticket's issuer.
            return Ok(kept);
        }
        let members = self.folder.members();
        if doc == self.id.folder {
            self.check_folder_authors(&authors, &incoming.apply)?;
        } else {
            let none = BTreeMap::new();
            for (author, at) in &authors {
                if !members.contains_key(author) {
                    return Err(Refusal::UnknownAuthor);
                }
                let role = Role::at(&members, author, *at);
                // Only an editor's right depends on the entry (rendering the tree reads
                // every entry: per frame of a join, that was most of the joiner's work).
                let entries = if role == Role::Editor {
                    self.tree.get_entries(&mut self.folder, &mut self.files, &self.store)
                } else {
                    &none
                };
                if !policy::allows_file_change(role, doc, entries) {
                    return Err(Refusal::NotAllowed(format!(
                        "a {} may not change the content of this file",
                        role.as_str()
                    )));
                }
            }
        }
        Ok(kept)
    }

    /// Folder-document changes are tried on a copy: the owner's are taken as they are,
    /// then the rest must pass [`policy::check_folder_change`] for the least privileged
    /// of their authors (as our folder records them; a new member's first changes may come
    /// with the admission another member recorded).
    fn check_folder_authors(
        &mut self,
        authors: &BTreeMap<String, i64>,
        apply: &Apply,
    ) -> Result<(), Refusal> {
        let before_heads = self.folder.doc_mut().get_heads();
        let mut after = FolderDoc::from_doc(match apply {
            Apply::Replace(whole) => (**whole).clone(),
            Apply::Changes(changes) => {
                let mut after = self.folder.doc_mut().fork();
                after.apply_changes(changes.iter().cloned()).map_err(|e| Refusal::Forged(e.to_string()))?;
                after
            }
            Apply::Created(_) => {
                return Err(Refusal::Forged("a text file's change to the folder document".into()));
            }
        });
        // Roles come from the folder as it was: nobody vouches for itself. An author not
        // recorded there may have been admitted in this very batch, by a member we know:
        // it is looked up in our folder plus the changes of the authors we know.
        let known = self.folder.members();
        let new_changes = after.doc_mut().get_changes(&before_heads);
        let vouched = if authors.keys().all(|a| known.contains_key(a)) {
            known.clone()
        } else {
            let mut vouched = self.folder.doc_mut().fork();
            let by_known: Vec<automerge::Change> = new_changes
                .iter()
                .filter(|c| {
                    teatime_crdt::ids::member_of_actor(c.actor_id()).is_some_and(|m| known.contains_key(&m))
                })
                .cloned()
                .collect();
            vouched.apply_changes(by_known).map_err(|e| Refusal::Forged(e.to_string()))?;
            FolderDoc::from_doc(vouched).members()
        };
        let owner = |id: &str| known.get(id).is_some_and(|m| m.role == Role::Owner.as_str());
        let mut least = Role::Owner;
        for (author, at) in authors {
            if owner(author) {
                continue;
            }
            let role = if known.contains_key(author) {
                Role::at(&known, author, *at)
            } else if vouched.contains_key(author) {
                Role::at(&vouched, author, *at)
            } else {
                return Err(Refusal::UnknownAuthor);
            };
            least = least.min(role);
        }
        if least == Role::Owner {
            return Ok(());
        }
        let mut base = self.folder.doc_mut().fork();
        let by_owner: Vec<automerge::Change> = new_changes
            .into_iter()
            .filter(|c| teatime_crdt::ids::member_of_actor(c.actor_id()).is_some_and(|m| owner(&m)))
            .collect();
        base.apply_changes(by_owner).map_err(|e| Refusal::Forged(e.to_string()))?;
        policy::check_folder_change(least, &FolderDoc::from_doc(base), &after).map_err(Refusal::NotAllowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_split_into_their_changes() {
        let mut doc = AutoCommit::new();
        automerge::transaction::Transactable::put(&mut doc, automerge::ROOT, "a", 1).unwrap();
        doc.commit();
        let first = doc.get_heads();
        automerge::transaction::Transactable::put(&mut doc, automerge::ROOT, "b", "x".repeat(300)).unwrap();
        doc.commit();
        automerge::transaction::Transactable::put(&mut doc, automerge::ROOT, "c", 3).unwrap();
        doc.commit();
        let after = doc.save_after(&first);
        let parts = chunks(&after).unwrap();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|(k, _)| *k == CHUNK_CHANGE));
        assert_eq!(chunks(&doc.save()).unwrap().len(), 1);
        assert!(chunks(&after[..after.len() - 1]).is_err(), "a truncated payload");
        assert!(chunks(b"garbage garbage").is_err());
    }

    #[test]
    fn only_signatures_that_verify_are_taken_as_checked_ahead() {
        let folder = DocId([3; 16]);
        let (author, stranger) =
            (iroh::SecretKey::from_bytes(&[1; 32]), iroh::SecretKey::from_bytes(&[2; 32]));
        let actor = teatime_crdt::ids::actor_for_member(author.public().as_bytes(), [0; 8]);
        let first = Creation::new(actor.clone(), "some text\n".repeat(40), 1_000);
        let hash = ChangeHash(first.hash.0);
        let decode = |sigs: &[Signed]| {
            Preloaded::decode(folder, &actor, &first.bytes, sigs, &intake::Limits::default())
                .expect("decodes")
        };
        let good = (hash.0, sign_change(&author, folder, &hash));
        let forged = (hash.0, sign_change(&stranger, folder, &hash));
        let elsewhere = (hash.0, sign_change(&author, DocId([4; 16]), &hash));
        assert_eq!(decode(&[good]).verified, vec![good]);
        for bad in [forged, elsewhere] {
            let p = decode(&[bad]);
            assert!(p.verified.is_empty(), "a signature that does not verify is left to check_authorship");
            assert!(matches!(p.decoded, Decoded::Created(_)) && p.is_of(&first.bytes));
        }
        assert!(decode(&[]).verified.is_empty());
    }
}
