//! From entries to paths: the deterministic rendering of a folder document.
//!
//! Every peer runs [`render`] on the same entries and gets the same paths, whatever order
//! the changes arrived in. The rules, in order:
//!
//! 1. An entry is shown when it is not deleted, or when a shown entry lives inside it
//!    (a directory deleted on one peer while another created a file in it comes back, so
//!    the file is not lost).
//! 2. An entry whose parent is missing or is not a directory lives at the root.
//! 3. Concurrent moves can make a cycle (`a` moved into `b` while `b` moved into `a`); the
//!    cycle member with the smallest id is shown at the root, which breaks it.
//! 4. Names from peers that are not valid on disk ([`crate::path::is_valid_name`]) hide the
//!    entry and everything under it.
//! 5. Two shown siblings with the same name: directories before files, then the smaller
//!    id keeps the name; each other one gets `stem (conflict <id8>).ext`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::DocId;
use crate::folder::{Entry, EntryKind};
use crate::path::is_valid_name;

/// The rendered folder: where each shown entry lives on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    /// Relative path (components joined by `/`) to entry, sorted so that a directory
    /// comes before everything inside it.
    pub by_path: BTreeMap<String, (DocId, EntryKind)>,
    /// Entry to relative path.
    pub by_id: HashMap<DocId, String>,
}

impl Tree {
    /// The path where `id` is shown, if it is.
    pub fn path_of(&self, id: DocId) -> Option<&str> {
        self.by_id.get(&id).map(String::as_str)
    }
}

/// Renders entries to paths (see the module docs for the rules).
pub fn render(entries: &BTreeMap<DocId, Entry>) -> Tree {
    let parent_of = effective_parents(entries);

    // Rule 1: live entries and their ancestors.
    let mut shown: BTreeSet<DocId> = BTreeSet::new();
    for (id, e) in entries {
        if e.deleted {
            continue;
        }
        let mut cur = Some(*id);
        while let Some(c) = cur {
            if !shown.insert(c) {
                break;
            }
            cur = parent_of[&c];
        }
    }

    let mut children: BTreeMap<Option<DocId>, Vec<DocId>> = BTreeMap::new();
    for id in &shown {
        children.entry(parent_of[id]).or_default().push(*id);
    }

    let mut tree = Tree::default();
    let mut stack: Vec<(Option<DocId>, String)> = vec![(None, String::new())];
    while let Some((dir, dir_path)) = stack.pop() {
        let Some(kids) = children.get(&dir) else {
            continue;
        };
        for (id, name) in name_siblings(kids, entries) {
            let path = if dir_path.is_empty() { name } else { format!("{dir_path}/{name}") };
            let kind = entries[&id].kind;
            if kind == EntryKind::Dir {
                stack.push((Some(id), path.clone()));
            }
            tree.by_id.insert(id, path.clone());
            tree.by_path.insert(path, (id, kind));
        }
    }
    tree
}

/// Rules 2 and 3: each entry's parent as shown (`None` = root), with no cycles.
fn effective_parents(entries: &BTreeMap<DocId, Entry>) -> HashMap<DocId, Option<DocId>> {
    let mut parent_of: HashMap<DocId, Option<DocId>> = entries
        .iter()
        .map(|(id, e)| {
            let p = e.parent.filter(|p| entries.get(p).is_some_and(|pe| pe.kind == EntryKind::Dir));
            (*id, p)
        })
        .collect();
    // Walk up from every entry; an entry met twice on one walk closes a cycle.
    let mut reaches_root: BTreeSet<DocId> = BTreeSet::new();
    for start in entries.keys() {
        let mut path: Vec<DocId> = Vec::new();
        let mut on_path: BTreeSet<DocId> = BTreeSet::new();
        let mut cur = *start;
        loop {
            if reaches_root.contains(&cur) {
                break;
            }
            if !on_path.insert(cur) {
                // `cur` is on a cycle: break it at the cycle's smallest id.
                let cycle_start = path.iter().position(|x| *x == cur).unwrap_or(0);
                let smallest = *path[cycle_start..].iter().min().unwrap_or(&cur);
                parent_of.insert(smallest, None);
                // Re-walk from the start now that the cycle is broken.
                path.clear();
                on_path.clear();
                cur = *start;
                continue;
            }
            path.push(cur);
            match parent_of[&cur] {
                Some(p) => cur = p,
                None => break,
            }
        }
        reaches_root.extend(path);
    }
    parent_of
}

/// Rules 4 and 5 for the children of one directory: the shown name of each child.
fn name_siblings(kids: &[DocId], entries: &BTreeMap<DocId, Entry>) -> Vec<(DocId, String)> {
    let mut by_name: BTreeMap<&str, Vec<DocId>> = BTreeMap::new();
    for id in kids {
        let e = &entries[id];
        if is_valid_name(&e.name) {
            by_name.entry(e.name.as_str()).or_default().push(*id);
        }
    }
    let taken: BTreeSet<String> = by_name.keys().map(|n| n.to_string()).collect();
    let mut out = Vec::new();
    for (name, mut ids) in by_name {
        ids.sort_by_key(|id| (entries[id].kind, *id));
        let mut rest = ids.into_iter();
        if let Some(winner) = rest.next() {
            out.push((winner, name.to_string()));
        }
        for loser in rest {
            let mut candidate = conflict_name(name, &loser.short());
            let mut n = 2;
            while taken.contains(&candidate) {
                candidate = conflict_name(name, &format!("{} {n}", loser.short()));
                n += 1;
            }
            out.push((loser, candidate));
        }
    }
    out
}

/// `notes.md` -> `notes (conflict <tag>).md`; `Makefile` -> `Makefile (conflict <tag>)`.
pub fn conflict_name(name: &str, tag: &str) -> String {
    match name.rfind('.') {
        Some(dot) if dot > 0 => format!("{} (conflict {tag}){}", &name[..dot], &name[dot..]),
        _ => format!("{name} (conflict {tag})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> DocId {
        DocId([n; 16])
    }

    fn e(parent: Option<u8>, name: &str, kind: EntryKind, deleted: bool) -> Entry {
        Entry { parent: parent.map(id), name: name.into(), kind, deleted }
    }

    #[test]
    fn nested_paths() {
        let entries = BTreeMap::from([
            (id(1), e(None, "a", EntryKind::Dir, false)),
            (id(2), e(Some(1), "b", EntryKind::Dir, false)),
            (id(3), e(Some(2), "c.md", EntryKind::File, false)),
            (id(4), e(None, "gone.md", EntryKind::File, true)),
        ]);
        let t = render(&entries);
        assert_eq!(t.path_of(id(3)), Some("a/b/c.md"));
        assert_eq!(t.path_of(id(4)), None);
        assert_eq!(t.by_path.keys().collect::<Vec<_>>(), ["a", "a/b", "a/b/c.md"]);
    }

    #[test]
    fn deleted_dir_with_live_child_is_shown() {
        let entries = BTreeMap::from([
            (id(1), e(None, "a", EntryKind::Dir, true)),
            (id(2), e(Some(1), "new.md", EntryKind::File, false)),
        ]);
        assert_eq!(render(&entries).path_of(id(2)), Some("a/new.md"));
    }

    #[test]
    fn move_cycle_is_broken_at_smallest_id() {
        let entries = BTreeMap::from([
            (id(1), e(Some(2), "a", EntryKind::Dir, false)),
            (id(2), e(Some(1), "b", EntryKind::Dir, false)),
        ]);
        let t = render(&entries);
        assert_eq!(t.path_of(id(1)), Some("a"));
        assert_eq!(t.path_of(id(2)), Some("a/b"));
    }

    #[test]
    fn same_name_gets_conflict_sibling_and_hostile_names_hide() {
        let entries = BTreeMap::from([
            (id(2), e(None, "notes.md", EntryKind::File, false)),
            (id(1), e(None, "notes.md", EntryKind::File, false)),
            (id(3), e(None, "..", EntryKind::Dir, false)),
            (id(4), e(Some(3), "evil", EntryKind::File, false)),
        ]);
        let t = render(&entries);
        assert_eq!(t.path_of(id(1)), Some("notes.md"));
        assert_eq!(t.path_of(id(2)), Some("notes (conflict 02020202).md"));
        assert_eq!(t.path_of(id(3)), None);
        assert_eq!(t.path_of(id(4)), None);
    }
}
