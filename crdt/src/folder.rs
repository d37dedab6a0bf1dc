//! The folder document: which files and directories exist, where, and who the members are.
//!
//! Layout (all under the root map):
//!
//! ```text
//! entries: { <entry id hex>: { parent: <dir entry id hex or "">, name, kind: "file"|"dir",
//!                              deleted: bool } }
//! members: { <endpoint id>: { name, role } }
//! actors:  { <automerge actor hex>: <endpoint id> }
//! ```
//!
//! An entry's id is also its file document's id. Its location is `(parent, name)`, so a
//! rename or move is one write, a directory move carries its children without touching
//! them, and an edit to the file's document follows the file wherever it goes.
//! Deletion is a flag, not a removal: history keeps the content and the entry can come back.

use std::collections::BTreeMap;

use automerge::{
    ActorId, AutoCommit, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value, transaction::Transactable,
};

use crate::{DocId, ModelError};

const ENTRIES: &str = "entries";
const MEMBERS: &str = "members";
const ACTORS: &str = "actors";

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

/// One file or directory of the folder, as the folder document records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The directory entry it lives in; `None` for the folder root.
    pub parent: Option<DocId>,
    /// Its name in that directory (validated before it reaches disk).
    pub name: String,
    /// File or directory.
    pub kind: EntryKind,
    /// Deleted entries keep their history; they are not on disk.
    pub deleted: bool,
}

/// A member of the folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The name the member's node gave itself.
    pub name: String,
    /// `owner`, `writer` or `reader`.
    pub role: String,
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
        doc.put_object(ROOT, ACTORS, ObjType::Map)?;
        let mut folder = FolderDoc { doc };
        folder.add_member(owner, owner_name, "owner")?;
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

    fn bool_at(&self, obj: &ObjId, key: &str) -> Option<bool> {
        match self.doc.get(obj, key) {
            Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
                ScalarValue::Boolean(b) => Some(*b),
                _ => None,
            },
            _ => None,
        }
    }

    /// Every entry, deleted ones included. Entries whose fields are malformed (written
    /// by a buggy or hostile peer) are left out rather than guessed at.
    pub fn entries(&self) -> BTreeMap<DocId, Entry> {
        let mut out = BTreeMap::new();
        let Some(entries) = self.map(ENTRIES) else {
            return out;
        };
        for key in self.doc.keys(&entries) {
            let Ok(id) = key.parse::<DocId>() else {
                continue;
            };
            if let Some(entry) = self.entry(id) {
                out.insert(id, entry);
            }
        }
        out
    }

    /// One entry, if it exists and is well formed.
    pub fn entry(&self, id: DocId) -> Option<Entry> {
        let obj = self.entry_obj(id).ok()?;
        let parent = match self.str_at(&obj, "parent")?.as_str() {
            "" => None,
            p => Some(p.parse::<DocId>().ok()?),
        };
        let name = self.str_at(&obj, "name")?;
        let kind = EntryKind::parse(&self.str_at(&obj, "kind")?)?;
        let deleted = self.bool_at(&obj, "deleted").unwrap_or(false);
        Some(Entry { parent, name, kind, deleted })
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
    ) -> Result<(), ModelError> {
        let entries = self.map(ENTRIES).ok_or(ModelError::Missing("entries"))?;
        let obj = self.doc.put_object(&entries, id.to_string(), ObjType::Map)?;
        self.doc.put(&obj, "parent", parent.map(|p| p.to_string()).unwrap_or_default())?;
        self.doc.put(&obj, "name", name)?;
        self.doc.put(&obj, "kind", kind.as_str())?;
        self.doc.put(&obj, "deleted", false)?;
        Ok(())
    }

    /// Moves or renames an entry (one write per changed field).
    pub fn move_entry(&mut self, id: DocId, parent: Option<DocId>, name: &str) -> Result<(), ModelError> {
        let obj = self.entry_obj(id)?;
        let parent = parent.map(|p| p.to_string()).unwrap_or_default();
        if self.str_at(&obj, "parent").as_deref() != Some(parent.as_str()) {
            self.doc.put(&obj, "parent", parent)?;
        }
        if self.str_at(&obj, "name").as_deref() != Some(name) {
            self.doc.put(&obj, "name", name)?;
        }
        Ok(())
    }

    /// Marks an entry deleted (or alive again).
    pub fn set_deleted(&mut self, id: DocId, deleted: bool) -> Result<(), ModelError> {
        let obj = self.entry_obj(id)?;
        if self.bool_at(&obj, "deleted") != Some(deleted) {
            self.doc.put(&obj, "deleted", deleted)?;
        }
        Ok(())
    }

    /// Adds (or renames) a member.
    pub fn add_member(&mut self, endpoint: &str, name: &str, role: &str) -> Result<(), ModelError> {
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
        }
        Ok(())
    }

    /// The members, by endpoint id.
    pub fn members(&self) -> BTreeMap<String, Member> {
        let mut out = BTreeMap::new();
        let Some(members) = self.map(MEMBERS) else {
            return out;
        };
        for key in self.doc.keys(&members) {
            if let Ok(Some((Value::Object(ObjType::Map), obj))) = self.doc.get(&members, &key) {
                let name = self.str_at(&obj, "name").unwrap_or_default();
                let role = self.str_at(&obj, "role").unwrap_or_default();
                out.insert(key, Member { name, role });
            }
        }
        out
    }

    /// Records that `actor` writes on behalf of member `endpoint`, so history can say who
    /// wrote what.
    pub fn bind_actor(&mut self, actor: &ActorId, endpoint: &str) -> Result<(), ModelError> {
        let actors = self.map(ACTORS).ok_or(ModelError::Missing("actors"))?;
        let key = actor.to_hex_string();
        if self.str_at(&actors, &key).as_deref() != Some(endpoint) {
            self.doc.put(&actors, key, endpoint)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> DocId {
        DocId([n; 16])
    }

    #[test]
    fn rename_is_one_field_and_follows_concurrent_edit_of_location() {
        let mut a = FolderDoc::create(ActorId::from([1; 16]), "a", "alice").unwrap();
        a.create_entry(id(1), None, "dir", EntryKind::Dir).unwrap();
        a.create_entry(id(2), Some(id(1)), "f.md", EntryKind::File).unwrap();
        a.commit();
        let mut b = FolderDoc::from_doc(
            AutoCommit::load(&a.doc_mut().save()).unwrap().with_actor(ActorId::from([2; 16])),
        );
        a.move_entry(id(1), None, "renamed").unwrap();
        a.commit();
        b.create_entry(id(3), Some(id(1)), "new.md", EntryKind::File).unwrap();
        b.commit();
        let mut fork = b.doc_mut().fork();
        a.doc_mut().merge(&mut fork).unwrap();
        let tree = crate::render(&a.entries());
        assert_eq!(tree.path_of(id(3)), Some("renamed/new.md"));
        assert_eq!(tree.path_of(id(2)), Some("renamed/f.md"));
    }
}
