//! The folder document: which files and directories exist, where, who the members are,
//! and how races on the tree are settled.
//!
//! Layout (all under the root map):
//!
//! ```text
//! entries:  { <entry id hex>: { kind: "file"|"dir",
//!                               created: "<ms>|<by>",
//!                               loc:     "<ms>|<by>|<parent id hex or ''>|<name>",
//!                               del:     "" | "<ms>|<by>|<seen heads hex,...>|<seen locs>",
//!                               blob:    "<ms>|<by>|<blake3 hex>|<size>"   (binary files only)
//!                               exec:    "1" | "" } }
//! members:  { <endpoint id>: { name, role, tier, via, was, since } }
//! settings: { conflict_strategy: "timestamp"|"priority"|"interactive" }
//! ```
//!
//! An entry's id is also its file document's id. Its location is one register (`loc`), so
//! a rename or move is one write, a directory move carries its subtree without touching
//! it, and an edit to the file's document follows the file wherever it goes. Concurrent
//! renames leave several values in the register; [`crate::tree::render`] settles them by the
//! folder's [`Strategy`]. Every write that a strategy may have to weigh carries a
//! [`Stamp`]: when (the writer's wall clock) and by whom.
//!
//! Deletion is a record, not a removal: it names the file-document heads and the
//! locations the deleter had seen, so an edit or a rename the deleter had not seen is
//! recognised as concurrent (an edit always beats a delete; a rename races it).

use std::collections::{BTreeMap, BTreeSet};

use automerge::{
    ActorId, AutoCommit, ChangeHash, ObjId, ObjType, PatchAction, Prop, ROOT, ReadDoc, ScalarValue, Value,
    transaction::Transactable,
};

use crate::{DocId, ModelError};

const ENTRIES: &str = "entries";
const MEMBERS: &str = "members";
const SETTINGS: &str = "settings";
const STRATEGY: &str = "conflict_strategy";
/// Separates the seen locations inside a deletion record (never in a valid name).
const LOC_SEP: char = '\u{1e}';

/// File or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum EntryKind {
    /// A directory: it has children, no document.
    Dir,
    /// A text file, whose content is the file document with the same id.
    File,
}

impl EntryKind {
    fn as_str(self) -> &'static str {
        match self {
            EntryKind::Dir => "dir",
            EntryKind::File => "file",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "dir" => Some(EntryKind::Dir),
            "file" => Some(EntryKind::File),
            _ => None,
        }
    }
}

/// How races the CRDT cannot settle alone are settled (see [`crate::tree`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// The later wall-clock action wins; ties broken by member id.
    #[default]
    Timestamp,
    /// The member with the higher tier wins, then the later action.
    Priority,
    /// Races are held as pending conflicts, both sides kept, until a member resolves them.
    Interactive,
}

impl Strategy {
    /// The setting's text form.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Timestamp => "timestamp",
            Strategy::Priority => "priority",
            Strategy::Interactive => "interactive",
        }
    }

    /// Parses the setting's text form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "timestamp" => Some(Strategy::Timestamp),
            "priority" => Some(Strategy::Priority),
            "interactive" => Some(Strategy::Interactive),
            _ => None,
        }
    }
}

/// When and by whom an action was taken.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Stamp {
    /// The actor's wall clock, ms since the epoch. Used only to weigh races, never for
    /// convergence.
    pub ms: u64,
    /// The member (endpoint id) who acted.
    pub by: String,
}

impl Stamp {
    /// A stamp.
    pub fn new(ms: u64, by: &str) -> Self {
        Stamp { ms, by: by.to_string() }
    }

    fn encode(&self) -> String {
        format!("{}|{}", self.ms, self.by)
    }

    fn decode(s: &str) -> Option<Self> {
        let (ms, by) = s.split_once('|')?;
        Some(Stamp { ms: ms.parse().ok()?, by: by.to_string() })
    }
}

/// One value of an entry's location register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The directory entry it lives in; `None` for the folder root.
    pub parent: Option<DocId>,
    /// Its name in that directory (validated before it reaches disk).
    pub name: String,
    /// Who put it there, when.
    pub stamp: Stamp,
    /// The stored form, compared by deletion records.
    pub raw: String,
}

impl Location {
    fn encode(parent: Option<DocId>, name: &str, stamp: &Stamp) -> String {
        let parent = parent.map(|p| p.to_string()).unwrap_or_default();
        format!("{}|{}|{}|{}", stamp.ms, stamp.by, parent, name)
    }

    fn decode(raw: &str) -> Option<Self> {
        let mut parts = raw.splitn(4, '|');
        let ms = parts.next()?.parse().ok()?;
        let by = parts.next()?.to_string();
        let parent = match parts.next()? {
            "" => None,
            p => Some(p.parse().ok()?),
        };
        let name = parts.next()?.to_string();
        Some(Location { parent, name, stamp: Stamp { ms, by }, raw: raw.to_string() })
    }
}

/// A deletion record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    /// Who deleted, when.
    pub stamp: Stamp,
    /// The heads of the file's document the deleter had seen (files only): a change not
    /// covered by them is an edit the deleter did not know about, and it wins.
    pub seen_heads: Vec<ChangeHash>,
    /// The location values the deleter had seen: any other value is a concurrent rename.
    pub seen_locs: Vec<String>,
}

impl Deletion {
    fn encode(&self) -> String {
        let heads: Vec<String> = self.seen_heads.iter().map(|h| h.to_string()).collect();
        let locs = self.seen_locs.join(&LOC_SEP.to_string());
        format!("{}|{}|{}", self.stamp.encode(), heads.join(","), locs)
    }

    fn decode(raw: &str) -> Option<Self> {
        let mut parts = raw.splitn(4, '|');
        let ms = parts.next()?.parse().ok()?;
        let by = parts.next()?.to_string();
        let heads = parts.next()?;
        let seen_heads = if heads.is_empty() {
            Vec::new()
        } else {
            heads.split(',').map(|h| h.parse().ok()).collect::<Option<Vec<ChangeHash>>>()?
        };
        let locs = parts.next().unwrap_or("");
        let seen_locs =
            if locs.is_empty() { Vec::new() } else { locs.split(LOC_SEP).map(String::from).collect() };
        Some(Deletion { stamp: Stamp { ms, by }, seen_heads, seen_locs })
    }
}

/// The content of a binary file: a BLAKE3 hash and a size, written whole by one member
/// (last writer wins; concurrent values stay in the register until a later write, so the
/// losing version can be kept).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobRef {
    /// BLAKE3 of the content.
    pub hash: [u8; 32],
    /// Size in bytes.
    pub size: u64,
    /// Who wrote it, when.
    pub stamp: Stamp,
}

impl BlobRef {
    fn encode(&self) -> String {
        let hex = crate::ids::to_hex(&self.hash);
        format!("{}|{hex}|{}", self.stamp.encode(), self.size)
    }

    fn decode(raw: &str) -> Option<Self> {
        let mut parts = raw.splitn(4, '|');
        let ms = parts.next()?.parse().ok()?;
        let by = parts.next()?.to_string();
        let hash = crate::ids::from_hex(parts.next()?)?;
        let size = parts.next()?.parse().ok()?;
        Some(BlobRef { hash, size, stamp: Stamp { ms, by } })
    }

    /// The form a deletion record names a binary version by (a "head" of its content).
    pub fn as_head(&self) -> ChangeHash {
        ChangeHash(self.hash)
    }
}

/// One file or directory of the folder, as the folder document records it, concurrent
/// values included (the tree decides what they mean).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// File or directory.
    pub kind: EntryKind,
    /// Who created it, when.
    pub created: Stamp,
    /// The location register's values (more than one after concurrent renames), sorted.
    pub locs: Vec<Location>,
    /// Deletion records in effect (several after concurrent deletes); empty = alive.
    pub deletions: Vec<Deletion>,
    /// Binary content: the register's values (several after concurrent writes); empty
    /// for text files and directories.
    pub blobs: Vec<BlobRef>,
    /// The executable bit (kept only where the folder syncs it).
    pub exec: bool,
}

impl Entry {
    /// The binary version in effect: the latest write, ties broken by member id.
    pub fn blob(&self) -> Option<&BlobRef> {
        self.blobs.iter().max_by(|a, b| a.stamp.cmp(&b.stamp))
    }

    /// Whether the file is binary (once binary, always binary: no flip-flopping).
    pub fn is_binary(&self) -> bool {
        !self.blobs.is_empty()
    }

    /// The location Automerge ranks first (callers that need a strategy use the tree).
    pub fn any_loc(&self) -> &Location {
        &self.locs[0]
    }
}

/// A member of the folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The name the member's node gave itself.
    pub name: String,
    /// `owner`, `writer`, `editor`, `reader` or `revoked`.
    pub role: String,
    /// The ticket (id hex) the member was admitted with; empty for the owner.
    pub via: String,
    /// The role before the owner last changed it (empty if never changed).
    pub was: String,
    /// When the owner last changed the role (ms since the epoch, the owner's clock; 0 if
    /// never): changes the member made before then are judged by `was`.
    pub since_ms: i64,
    /// Rank under the `priority` strategy (higher wins).
    pub tier: i64,
}

/// The map key a patch writes or deletes, if it is one.
fn patch_key(action: &PatchAction) -> Option<&str> {
    match action {
        PatchAction::PutMap { key, .. } | PatchAction::DeleteMap { key } => Some(key),
        PatchAction::Conflict { prop: Prop::Map(key) } => Some(key),
        _ => None,
    }
}

/// The folder document.
#[derive(Debug)]
pub struct FolderDoc {
    doc: AutoCommit,
}

impl FolderDoc {
    /// A new folder, created by its owner.
    pub fn create(actor: ActorId, owner: &str, owner_name: &str) -> Result<Self, ModelError> {
        let mut doc = AutoCommit::new().with_actor(actor);
        doc.put_object(ROOT, ENTRIES, ObjType::Map)?;
        doc.put_object(ROOT, MEMBERS, ObjType::Map)?;
        let settings = doc.put_object(ROOT, SETTINGS, ObjType::Map)?;
        doc.put(&settings, STRATEGY, Strategy::Timestamp.as_str())?;
        let mut folder = FolderDoc { doc };
        folder.add_member(owner, owner_name, "owner", "")?;
        folder.commit();
        Ok(folder)
    }

    /// Wraps an existing document (loaded from storage, or empty and waiting for sync).
    pub fn from_doc(doc: AutoCommit) -> Self {
        FolderDoc { doc }
    }

    /// The underlying Automerge document, for sync and storage.
    pub fn doc_mut(&mut self) -> &mut AutoCommit {
        &mut self.doc
    }

    /// Closes the pending transaction into one change.
    pub fn commit(&mut self) {
        self.doc.commit();
    }

    /// Closes the pending transaction into one change made at `at_ms` (ms since the
    /// epoch, for history).
    pub fn commit_at(&mut self, at_ms: i64) {
        // Nothing pending, no change. Automerge would still open and close a transaction,
        // which adds this process's actor to the document and takes it out again: a
        // rewrite of the whole op set, paid by every scan that recorded nothing here.
        if self.doc.pending_ops() == 0 {
            return;
        }
        self.doc.commit_with(automerge::transaction::CommitOptions::default().with_time(at_ms));
    }

    /// Whether the owner's initial change has arrived (a joiner starts empty).
    pub fn is_ready(&self) -> bool {
        self.map(ENTRIES).is_some()
    }

    fn map(&self, key: &str) -> Option<ObjId> {
        match self.doc.get(ROOT, key) {
            Ok(Some((Value::Object(ObjType::Map), id))) => Some(id),
            _ => None,
        }
    }

    fn str_at(&self, obj: &ObjId, key: &str) -> Option<String> {
        match self.doc.get(obj, key) {
            Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
                ScalarValue::Str(s) => Some(s.to_string()),
                _ => None,
            },
            _ => None,
        }
    }

    /// Every value of a register, concurrent ones included, sorted (so the result does
    /// not depend on Automerge's internal order).
    fn all_strs(&self, obj: &ObjId, key: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .doc
            .get_all(obj, key)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(v, _)| match v {
                Value::Scalar(s) => match s.as_ref() {
                    ScalarValue::Str(s) => Some(s.to_string()),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        out.sort();
        out
    }

    /// Every entry, deleted ones included. Entries whose fields are malformed (written
    /// by a buggy or hostile peer) are left out rather than guessed at.
    pub fn entries(&self) -> BTreeMap<DocId, Entry> {
        let mut out = BTreeMap::new();
        let Some(entries) = self.map(ENTRIES) else { return out };
        for key in self.doc.keys(&entries) {
            let Ok(id) = key.parse::<DocId>() else { continue };
            if let Some(entry) = self.entry(id) {
                out.insert(id, entry);
            }
        }
        out
    }

    /// Brings `entries`, read at heads `at` (from [`Self::entries`], then kept up to date
    /// by this), to the document's current heads, and starts tracking what changes next.
    /// Only the entries changed since are read again when the document has tracked its
    /// changes since `at` (Automerge's patch log: every op applied, local or a peer's,
    /// is logged); otherwise, or when `at` is `None`, every entry is read. Reading every
    /// entry of a 100k-file folder after each change was most of an import's work.
    /// Returns whether only the changed entries were read.
    pub fn refresh_entries(
        &mut self,
        entries: &mut BTreeMap<DocId, Entry>,
        at: Option<&[ChangeHash]>,
    ) -> bool {
        let changed = at.and_then(|at| self.entries_changed_since(at));
        let incremental = changed.is_some();
        match changed {
            Some(changed) => {
                for id in changed {
                    match self.entry(id) {
                        Some(entry) => entries.insert(id, entry),
                        None => entries.remove(&id),
                    };
                }
                #[cfg(debug_assertions)]
                assert_eq!(*entries, self.entries(), "entries kept up to date differ from a full read");
            }
            None => *entries = self.entries(),
        }
        self.doc.update_diff_cursor();
        incremental
    }

    /// Stops logging changes for [`Self::refresh_entries`] until its next call, which then
    /// reads every entry: for a change that rewrites much of the folder (a peer's first
    /// copy of it), logging each op and reading back its path costs more than reading
    /// every entry once.
    pub fn stop_tracking(&mut self) {
        self.doc.reset_diff_cursor();
    }

    /// The ids of the entries changed since `at`, if the patch log covers exactly that.
    fn entries_changed_since(&mut self, at: &[ChangeHash]) -> Option<BTreeSet<DocId>> {
        if at.is_empty() || self.doc.diff_cursor() != at {
            return None;
        }
        let list = self.map(ENTRIES)?;
        let heads = self.doc.get_heads();
        let mut changed = BTreeSet::new();
        for patch in self.doc.diff(at, &heads) {
            let key = if patch.obj == list {
                // An entry added, replaced or removed.
                patch_key(&patch.action)?.to_string()
            } else if let Some((parent, Prop::Map(key))) = patch.path.last()
                && *parent == list
            {
                // A field of an entry.
                key.clone()
            } else if patch.path.iter().any(|(obj, _)| *obj == list)
                || (patch.obj == ROOT && patch_key(&patch.action) == Some(ENTRIES))
            {
                // Deeper inside an entry (entries hold no objects), or the list itself
                // replaced: cannot tell which, read them all.
                return None;
            } else {
                // Members, settings: read whole at each rendering.
                continue;
            };
            changed.insert(key.parse::<DocId>().ok()?);
        }
        Some(changed)
    }

    /// One entry, if it exists and is well formed.
    pub fn entry(&self, id: DocId) -> Option<Entry> {
        let obj = self.entry_obj(id).ok()?;
        let kind = EntryKind::parse(&self.str_at(&obj, "kind")?)?;
        let created = Stamp::decode(&self.str_at(&obj, "created")?)?;
        let locs: Vec<Location> =
            self.all_strs(&obj, "loc").iter().filter_map(|r| Location::decode(r)).collect();
        if locs.is_empty() {
            return None;
        }
        let deletions = self
            .all_strs(&obj, "del")
            .iter()
            .filter(|r| !r.is_empty())
            .filter_map(|r| Deletion::decode(r))
            .collect();
        let blobs = self.all_strs(&obj, "blob").iter().filter_map(|r| BlobRef::decode(r)).collect();
        let exec = self.str_at(&obj, "exec").as_deref() == Some("1");
        Some(Entry { kind, created, locs, deletions, blobs, exec })
    }

    fn entry_obj(&self, id: DocId) -> Result<ObjId, ModelError> {
        let entries = self.map(ENTRIES).ok_or(ModelError::Missing("entries"))?;
        match self.doc.get(&entries, id.to_string())? {
            Some((Value::Object(ObjType::Map), obj)) => Ok(obj),
            _ => Err(ModelError::Missing("entry")),
        }
    }

    /// Records a new file or directory at `(parent, name)`.
    pub fn create_entry(
        &mut self,
        id: DocId,
        parent: Option<DocId>,
        name: &str,
        kind: EntryKind,
        stamp: &Stamp,
    ) -> Result<(), ModelError> {
        let entries = self.map(ENTRIES).ok_or(ModelError::Missing("entries"))?;
        let obj = self.doc.put_object(&entries, id.to_string(), ObjType::Map)?;
        self.doc.put(&obj, "kind", kind.as_str())?;
        self.doc.put(&obj, "created", stamp.encode())?;
        self.doc.put(&obj, "loc", Location::encode(parent, name, stamp))?;
        self.doc.put(&obj, "del", "")?;
        Ok(())
    }

    /// Moves or renames an entry: one write, which also settles any concurrent renames
    /// this replica had seen.
    pub fn move_entry(
        &mut self,
        id: DocId,
        parent: Option<DocId>,
        name: &str,
        stamp: &Stamp,
    ) -> Result<(), ModelError> {
        let obj = self.entry_obj(id)?;
        let current = self.all_strs(&obj, "loc");
        let unchanged = current.len() == 1
            && Location::decode(&current[0]).is_some_and(|l| l.parent == parent && l.name == name);
        if !unchanged {
            self.doc.put(&obj, "loc", Location::encode(parent, name, stamp))?;
        }
        Ok(())
    }

    /// Marks an entry deleted. `seen_heads` are the file document's heads as this replica
    /// had them (empty for directories).
    pub fn delete_entry(
        &mut self,
        id: DocId,
        stamp: &Stamp,
        seen_heads: Vec<ChangeHash>,
    ) -> Result<(), ModelError> {
        let obj = self.entry_obj(id)?;
        let seen_locs = self.all_strs(&obj, "loc");
        let del = Deletion { stamp: stamp.clone(), seen_heads, seen_locs };
        self.doc.put(&obj, "del", del.encode())?;
        Ok(())
    }

    /// Sets a file's binary content (a whole-file write: it supersedes every value this
    /// replica has seen).
    pub fn set_blob(&mut self, id: DocId, blob: &BlobRef) -> Result<(), ModelError> {
        let obj = self.entry_obj(id)?;
        self.doc.put(&obj, "blob", blob.encode())?;
        Ok(())
    }

    /// Sets a file's executable bit.
    pub fn set_exec(&mut self, id: DocId, exec: bool) -> Result<(), ModelError> {
        let obj = self.entry_obj(id)?;
        if (self.str_at(&obj, "exec").as_deref() == Some("1")) != exec {
            self.doc.put(&obj, "exec", if exec { "1" } else { "" })?;
        }
        Ok(())
    }

    /// A folder setting (absent: `None`).
    pub fn setting(&self, key: &str) -> Option<String> {
        self.str_at(&self.map(SETTINGS)?, key)
    }

    /// Sets a folder setting.
    pub fn set_setting(&mut self, key: &str, value: &str) -> Result<(), ModelError> {
        let settings = self.map(SETTINGS).ok_or(ModelError::Missing("settings"))?;
        if self.str_at(&settings, key).as_deref() != Some(value) {
            self.doc.put(&settings, key, value)?;
        }
        Ok(())
    }

    /// Makes a deleted entry alive again (a restore, or a local edit or move of it).
    pub fn undelete(&mut self, id: DocId) -> Result<(), ModelError> {
        let obj = self.entry_obj(id)?;
        if self.all_strs(&obj, "del").iter().any(|d| !d.is_empty()) {
            self.doc.put(&obj, "del", "")?;
        }
        Ok(())
    }

    /// The folder's conflict strategy.
    pub fn strategy(&self) -> Strategy {
        self.map(SETTINGS)
            .and_then(|s| self.str_at(&s, STRATEGY))
            .and_then(|s| Strategy::parse(&s))
            .unwrap_or_default()
    }

    /// Sets the folder's conflict strategy.
    pub fn set_strategy(&mut self, strategy: Strategy) -> Result<(), ModelError> {
        let settings = match self.map(SETTINGS) {
            Some(s) => s,
            None => self.doc.put_object(ROOT, SETTINGS, ObjType::Map)?,
        };
        self.doc.put(&settings, STRATEGY, strategy.as_str())?;
        Ok(())
    }

    /// Adds (or renames) a member; `via` is the ticket that admitted it.
    pub fn add_member(
        &mut self,
        endpoint: &str,
        name: &str,
        role: &str,
        via: &str,
    ) -> Result<(), ModelError> {
        let members = self.map(MEMBERS).ok_or(ModelError::Missing("members"))?;
        let obj = match self.doc.get(&members, endpoint)? {
            Some((Value::Object(ObjType::Map), obj)) => obj,
            _ => self.doc.put_object(&members, endpoint, ObjType::Map)?,
        };
        if self.str_at(&obj, "name").as_deref() != Some(name) {
            self.doc.put(&obj, "name", name)?;
        }
        if self.str_at(&obj, "role").is_none() {
            self.doc.put(&obj, "role", role)?;
            if !via.is_empty() {
                self.doc.put(&obj, "via", via)?;
            }
        }
        Ok(())
    }

    /// Sets a member's role (the owner's decision) as of `at_ms`, keeping the role it
    /// replaces for judging the member's earlier changes.
    pub fn set_role(&mut self, endpoint: &str, role: &str, at_ms: i64) -> Result<(), ModelError> {
        let members = self.map(MEMBERS).ok_or(ModelError::Missing("members"))?;
        match self.doc.get(&members, endpoint)? {
            Some((Value::Object(ObjType::Map), obj)) => {
                let old = self.str_at(&obj, "role").unwrap_or_default();
                if old == role {
                    return Ok(());
                }
                self.doc.put(&obj, "was", old)?;
                self.doc.put(&obj, "since", at_ms)?;
                self.doc.put(&obj, "role", role)?;
                Ok(())
            }
            _ => Err(ModelError::Missing("member")),
        }
    }

    /// Sets a member's tier (rank under the `priority` strategy).
    pub fn set_tier(&mut self, endpoint: &str, tier: i64) -> Result<(), ModelError> {
        let members = self.map(MEMBERS).ok_or(ModelError::Missing("members"))?;
        match self.doc.get(&members, endpoint)? {
            Some((Value::Object(ObjType::Map), obj)) => {
                self.doc.put(&obj, "tier", tier)?;
                Ok(())
            }
            _ => Err(ModelError::Missing("member")),
        }
    }

    /// The members, by endpoint id.
    pub fn members(&self) -> BTreeMap<String, Member> {
        let mut out = BTreeMap::new();
        let Some(members) = self.map(MEMBERS) else { return out };
        for key in self.doc.keys(&members) {
            if let Ok(Some((Value::Object(ObjType::Map), obj))) = self.doc.get(&members, &key) {
                let name = self.str_at(&obj, "name").unwrap_or_default();
                let role = self.str_at(&obj, "role").unwrap_or_default();
                let via = self.str_at(&obj, "via").unwrap_or_default();
                let was = self.str_at(&obj, "was").unwrap_or_default();
                let int = |field: &str| match self.doc.get(&obj, field) {
                    Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
                        ScalarValue::Int(i) => *i,
                        ScalarValue::Uint(u) => *u as i64,
                        _ => 0,
                    },
                    _ => 0,
                };
                let (tier, since_ms) = (int("tier"), int("since"));
                out.insert(key, Member { name, role, tier, via, was, since_ms });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> DocId {
        DocId([n; 16])
    }

    #[test]
    fn records_round_trip() {
        let s = Stamp::new(42, "peer");
        let loc = Location::decode(&Location::encode(Some(id(1)), "a|b.md", &s)).unwrap();
        assert_eq!((loc.parent, loc.name.as_str(), loc.stamp.ms), (Some(id(1)), "a|b.md", 42));
        let d = Deletion {
            stamp: s,
            seen_heads: vec![ChangeHash([7; 32])],
            seen_locs: vec!["x|y".into(), "z".into()],
        };
        assert_eq!(Deletion::decode(&d.encode()), Some(d));
    }

    /// Entries kept up to date by `refresh_entries` equal a full read after local writes,
    /// a peer's concurrent writes merged in, and a document replaced wholesale (the
    /// function itself asserts that in debug builds; checked here in any build).
    #[test]
    fn entries_refreshed_from_the_changes_equal_a_full_read() {
        let mut a = FolderDoc::create(ActorId::from([1; 16]), "a", "alice").unwrap();
        let mut b = FolderDoc::from_doc(
            AutoCommit::load(&a.doc_mut().save()).unwrap().with_actor(ActorId::from([2; 16])),
        );
        let mut entries = BTreeMap::new();
        let mut at: Option<Vec<ChangeHash>> = None;
        let refresh =
            |f: &mut FolderDoc, entries: &mut BTreeMap<DocId, Entry>, at: &mut Option<Vec<ChangeHash>>| {
                let incremental = f.refresh_entries(entries, at.as_deref());
                *at = Some(f.doc_mut().get_heads());
                assert_eq!(*entries, f.entries());
                incremental
            };
        assert!(!refresh(&mut a, &mut entries, &mut at), "the first read is whole");
        for round in 0..6u8 {
            let s = |ms| Stamp::new(ms, "x");
            a.create_entry(id(10 + round), None, &format!("a{round}.md"), EntryKind::File, &s(round as u64))
                .unwrap();
            b.create_entry(id(40 + round), None, &format!("b{round}.md"), EntryKind::File, &s(round as u64))
                .unwrap();
            a.commit();
            b.commit();
            assert!(refresh(&mut a, &mut entries, &mut at), "a local write is read alone");
            // Concurrent renames of one entry on both sides, a delete, a blob, exec.
            a.doc_mut().merge(b.doc_mut()).unwrap();
            b.doc_mut().merge(a.doc_mut()).unwrap();
            a.move_entry(id(10 + round), None, &format!("by-a{round}.md"), &s(100)).unwrap();
            b.move_entry(id(10 + round), None, &format!("by-b{round}.md"), &s(101)).unwrap();
            b.set_exec(id(40 + round), true).unwrap();
            if round > 0 {
                a.delete_entry(id(40 + round - 1), &s(102), vec![]).unwrap();
            }
            a.commit();
            b.commit();
            assert!(refresh(&mut a, &mut entries, &mut at));
            a.doc_mut().merge(b.doc_mut()).unwrap();
            assert!(refresh(&mut a, &mut entries, &mut at), "a peer's changes are read alone");
        }
        // Replaced wholesale (a peer's whole document): no patch log, a full read.
        let copy = AutoCommit::load(&b.doc_mut().save()).unwrap();
        *a.doc_mut() = copy;
        assert!(!refresh(&mut a, &mut entries, &mut at), "a replaced document is read whole");
    }

    #[test]
    fn concurrent_renames_are_all_kept_until_one_is_written_over() {
        let mut a = FolderDoc::create(ActorId::from([1; 16]), "a", "alice").unwrap();
        a.create_entry(id(2), None, "f.md", EntryKind::File, &Stamp::new(1, "a")).unwrap();
        a.commit();
        let mut b = FolderDoc::from_doc(
            AutoCommit::load(&a.doc_mut().save()).unwrap().with_actor(ActorId::from([2; 16])),
        );
        a.move_entry(id(2), None, "by-a.md", &Stamp::new(5, "a")).unwrap();
        a.commit();
        b.move_entry(id(2), None, "by-b.md", &Stamp::new(6, "b")).unwrap();
        b.commit();
        a.doc_mut().merge(b.doc_mut()).unwrap();
        assert_eq!(a.entry(id(2)).unwrap().locs.len(), 2);
        a.move_entry(id(2), None, "settled.md", &Stamp::new(7, "a")).unwrap();
        a.commit();
        let e = a.entry(id(2)).unwrap();
        assert_eq!((e.locs.len(), e.locs[0].name.as_str()), (1, "settled.md"));
    }
}
