//! From entries to paths: the deterministic rendering of a folder.
//!
//! Every peer runs [`render`] on the same documents and gets the same tree, whatever order
//! the changes arrived in: the result depends only on the folder document, the folder's
//! [`Strategy`], the members' tiers and two facts about file documents ([`FileFacts`]).
//!
//! Races the CRDT cannot settle alone, and how they are settled:
//!
//! | race | timestamp | priority | interactive |
//! |---|---|---|---|
//! | rename vs rename | later rename's name | higher tier's name, then later | later shown; pending until resolved |
//! | edit vs delete | edit wins: the file stays | same | same |
//! | rename vs delete | later action wins | higher tier, then later | file kept; pending |
//! | create vs create, same path, different content | later creation keeps the name, the other becomes `name (conflict, <creator>).ext` | higher tier keeps the name | both kept as in timestamp; pending |
//! | create vs create, same content | one file (the other entry is a duplicate) | same | same |
//! | file vs directory at one path | the directory keeps the name | same | same; pending |
//! | names differing only in case | as create vs create (one path on case-insensitive disks) | same | same |
//! | directory created twice | one directory holding both sides' children | same | same |
//!
//! Structural rules, under every strategy:
//!
//! 1. An entry is shown when it is alive, or when a shown entry lives inside it (a
//!    directory deleted on one peer while another created or edited a file in it comes
//!    back, so the file is not lost).
//! 2. An entry whose parent is missing or is not a directory lives at the root.
//! 3. Concurrent moves can make a cycle; the cycle member with the smallest id is shown at
//!    the root, which breaks it.
//! 4. Names that are not valid on disk ([`crate::path::check_name`]), and paths longer
//!    than [`MAX_PATH_BYTES`] or deeper than [`MAX_DEPTH`], hide the entry and everything under it; the tree says which
//!    ([`Tree::refused`], [`Tree::hidden`]) so the caller can report them and knows not to
//!    treat them as deleted.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use automerge::ChangeHash;

use crate::DocId;
use crate::folder::{Deletion, Entry, EntryKind, Location, Member, Stamp, Strategy};
use crate::path::{MAX_DEPTH, MAX_PATH_BYTES, Refused, check_name, is_valid_name};

/// What the tree needs to know about file documents.
pub trait FileFacts {
    /// Whether the file's document holds changes not covered by `seen`: an edit a deleter
    /// had not seen. `false` when the document is not here yet.
    fn edited_since(&self, id: DocId, seen: &[ChangeHash]) -> bool;
    /// A fingerprint of the file's current content (equal content, equal fingerprint);
    /// `None` while the document has not arrived.
    fn content(&self, id: DocId) -> Option<[u8; 32]>;
}

/// No facts: for callers that only need the shape (every file counts as unedited and
/// distinct).
pub struct NoFacts;

impl FileFacts for NoFacts {
    fn edited_since(&self, _: DocId, _: &[ChangeHash]) -> bool {
        false
    }
    fn content(&self, _: DocId) -> Option<[u8; 32]> {
        None
    }
}

/// Everything the rendering depends on in the folder document.
pub struct FolderView<'a> {
    /// All entries.
    pub entries: &'a BTreeMap<DocId, Entry>,
    /// The folder's strategy.
    pub strategy: Strategy,
    /// The members (names for conflict copies, tiers for `priority`).
    pub members: &'a BTreeMap<String, Member>,
}

/// A race held for a person to settle (`interactive` strategy), or reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// Concurrent renames of one entry; the first option is shown meanwhile.
    Rename {
        /// The entry.
        entry: DocId,
        /// The names it was given, the shown one first.
        options: Vec<Location>,
    },
    /// A rename raced a delete; the entry is kept meanwhile.
    RenameDelete {
        /// The entry.
        entry: DocId,
        /// Who deleted it.
        deleted_by: Stamp,
    },
    /// Several entries at one path; the first keeps the name meanwhile.
    SamePath {
        /// The contested path.
        path: String,
        /// The entries, the one keeping the name first.
        entries: Vec<DocId>,
    },
}

impl Conflict {
    /// A stable id for the CLI: the kind and the short id of the entry concerned.
    pub fn id(&self) -> String {
        match self {
            Conflict::Rename { entry, .. } => format!("rename-{}", entry.short()),
            Conflict::RenameDelete { entry, .. } => format!("delete-{}", entry.short()),
            Conflict::SamePath { entries, .. } => format!("path-{}", entries[0].short()),
        }
    }
}

/// The rendered folder: where each shown entry lives on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    /// Relative path (components joined by `/`) to entry, sorted so that a directory
    /// comes before everything inside it.
    pub by_path: BTreeMap<String, (DocId, EntryKind)>,
    /// Entry to relative path (directories created twice map both ids to one path).
    pub by_id: HashMap<DocId, String>,
    /// Pending races (interactive strategy).
    pub conflicts: Vec<Conflict>,
    /// Entries hidden because another entry at the same path holds the same content: the
    /// caller may record them as deleted, which makes that permanent.
    pub duplicates: Vec<DocId>,
    /// File documents whose state the result depends on: re-render when they change.
    pub depends_on: BTreeSet<DocId>,
    /// Entries not shown because their name (or path) may not reach disk, in render order.
    pub refused: Vec<RefusedName>,
    /// Those entries and every shown entry below them: hidden, not deleted.
    pub hidden: BTreeSet<DocId>,
}

/// An entry whose name the tree refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedName {
    /// The entry.
    pub entry: DocId,
    /// The path of the directory it is in (`""`: the root).
    pub parent: String,
    /// Its name, as the peer wrote it (escape it before printing).
    pub name: String,
    /// Why.
    pub reason: Refused,
}

impl Tree {
    /// The path where `id` is shown, if it is.
    pub fn path_of(&self, id: DocId) -> Option<&str> {
        self.by_id.get(&id).map(String::as_str)
    }
}

/// Ranks actions under a strategy: the greater one wins.
struct Ranker<'a> {
    strategy: Strategy,
    members: &'a BTreeMap<String, Member>,
}

impl Ranker<'_> {
    fn cmp(&self, a: &Stamp, b: &Stamp) -> Ordering {
        let tier = |s: &Stamp| match self.strategy {
            Strategy::Priority => self.members.get(&s.by).map_or(0, |m| m.tier),
            _ => 0,
        };
        (tier(a), a.ms, &a.by).cmp(&(tier(b), b.ms, &b.by))
    }
}

/// Renders the folder (see the module docs for the rules).
pub fn render(view: &FolderView<'_>, facts: &dyn FileFacts) -> Tree {
    let entries = view.entries;
    let ranker = Ranker { strategy: view.strategy, members: view.members };
    let interactive = view.strategy == Strategy::Interactive;
    let mut tree = Tree::default();

    // Each entry's location and liveness.
    let mut loc_of: HashMap<DocId, &Location> = HashMap::new();
    let mut alive: BTreeSet<DocId> = BTreeSet::new();
    for (id, e) in entries {
        let loc =
            e.locs.iter().max_by(|a, b| ranker.cmp(&a.stamp, &b.stamp)).expect("entries have a location");
        if e.locs.len() > 1 && interactive {
            let mut options = e.locs.clone();
            options.sort_by(|a, b| ranker.cmp(&b.stamp, &a.stamp));
            tree.conflicts.push(Conflict::Rename { entry: *id, options });
        }
        loc_of.insert(*id, loc);
        if is_alive(*id, e, loc, &ranker, interactive, facts, &mut tree) {
            alive.insert(*id);
        }
    }

    let parent_of = effective_parents(entries, &loc_of);

    // Rule 1: live entries and their ancestors.
    let mut shown: BTreeSet<DocId> = BTreeSet::new();
    for id in &alive {
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

    // Top-down; a directory created twice is one group rendered at one path.
    let mut stack: Vec<(Vec<Option<DocId>>, String, usize)> = vec![(vec![None], String::new(), 0)];
    while let Some((dirs, dir_path, depth)) = stack.pop() {
        let (kids, refused): (Vec<DocId>, Vec<DocId>) = dirs
            .iter()
            .filter_map(|d| children.get(d))
            .flatten()
            .copied()
            .partition(|id| is_valid_name(&loc_of[id].name));
        for id in refused {
            let name = loc_of[&id].name.clone();
            let reason = check_name(&name).expect_err("partitioned as refused");
            tree.refused.push(RefusedName { entry: id, parent: dir_path.clone(), name, reason });
        }
        for (group, name) in
            name_siblings(&kids, entries, &loc_of, &ranker, interactive, view.members, facts, &mut tree)
        {
            // A conflict name is built from a valid one but may be too long.
            let reason = check_name(&name)
                .err()
                .or((dir_path.len() + 1 + name.len() > MAX_PATH_BYTES).then_some(Refused::PathTooLong))
                .or((depth + 1 > MAX_DEPTH).then_some(Refused::TooDeep));
            if let Some(reason) = reason {
                for id in group {
                    tree.refused.push(RefusedName {
                        entry: id,
                        parent: dir_path.clone(),
                        name: name.clone(),
                        reason,
                    });
                }
                continue;
            }
            let path = if dir_path.is_empty() { name } else { format!("{dir_path}/{name}") };
            let kind = entries[&group[0]].kind;
            for id in &group {
                tree.by_id.insert(*id, path.clone());
            }
            tree.by_path.insert(path.clone(), (group[0], kind));
            if kind == EntryKind::Dir {
                stack.push((group.into_iter().map(Some).collect(), path, depth + 1));
            }
        }
    }
    let mut below: Vec<DocId> = tree.refused.iter().map(|r| r.entry).collect();
    while let Some(id) = below.pop() {
        if tree.hidden.insert(id) {
            below.extend(children.get(&Some(id)).into_iter().flatten());
        }
    }
    tree
}

/// Whether an entry is alive, settling edit-vs-delete and rename-vs-delete.
fn is_alive(
    id: DocId,
    e: &Entry,
    loc: &Location,
    ranker: &Ranker<'_>,
    interactive: bool,
    facts: &dyn FileFacts,
    tree: &mut Tree,
) -> bool {
    if e.deletions.is_empty() {
        return true;
    }
    // A deletion counts only if it had seen every edit: an edit beats a delete.
    let effective: Vec<&Deletion> = e
        .deletions
        .iter()
        .filter(|d| {
            e.kind == EntryKind::Dir || {
                tree.depends_on.insert(id);
                !facts.edited_since(id, &d.seen_heads)
            }
        })
        .collect();
    let Some(del) = effective.into_iter().max_by(|a, b| ranker.cmp(&a.stamp, &b.stamp)) else {
        return true;
    };
    let renamed_meanwhile = e.locs.iter().any(|l| !del.seen_locs.contains(&l.raw));
    if !renamed_meanwhile {
        return false;
    }
    if interactive {
        tree.conflicts.push(Conflict::RenameDelete { entry: id, deleted_by: del.stamp.clone() });
        return true;
    }
    ranker.cmp(&loc.stamp, &del.stamp) == Ordering::Greater
}

/// Rules 2 and 3: each entry's parent as shown (`None` = root), with no cycles.
fn effective_parents(
    entries: &BTreeMap<DocId, Entry>,
    loc_of: &HashMap<DocId, &Location>,
) -> HashMap<DocId, Option<DocId>> {
    let mut parent_of: HashMap<DocId, Option<DocId>> = entries
        .keys()
        .map(|id| {
            let p = loc_of[id].parent.filter(|p| entries.get(p).is_some_and(|pe| pe.kind == EntryKind::Dir));
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
                // `cur` is on a cycle: break it at the cycle's smallest id, then re-walk.
                let cycle_start = path.iter().position(|x| *x == cur).unwrap_or(0);
                let smallest = *path[cycle_start..].iter().min().unwrap_or(&cur);
                parent_of.insert(smallest, None);
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

/// Names the children of one directory (whose names are valid): groups of entries shown
/// at one name (several only for a directory created twice), with that name.
#[allow(clippy::too_many_arguments)] // the render context, passed down explicitly
fn name_siblings(
    kids: &[DocId],
    entries: &BTreeMap<DocId, Entry>,
    loc_of: &HashMap<DocId, &Location>,
    ranker: &Ranker<'_>,
    interactive: bool,
    members: &BTreeMap<String, Member>,
    facts: &dyn FileFacts,
    tree: &mut Tree,
) -> Vec<(Vec<DocId>, String)> {
    // Names that differ only in case are one path on case-insensitive disks: one group.
    let mut by_key: BTreeMap<String, Vec<DocId>> = BTreeMap::new();
    for id in kids {
        by_key.entry(loc_of[id].name.to_lowercase()).or_default().push(*id);
    }
    let mut out: Vec<(Vec<DocId>, String)> = Vec::new();
    let mut losers: Vec<DocId> = Vec::new();
    for ids in by_key.values() {
        let (dirs, files): (Vec<DocId>, Vec<DocId>) =
            ids.iter().partition(|id| entries[id].kind == EntryKind::Dir);
        if !dirs.is_empty() {
            // Directories merge; the oldest id names the group. Files here lose the name.
            let mut dirs = dirs;
            dirs.sort();
            let name = loc_of[&dirs[0]].name.clone();
            if interactive && !files.is_empty() {
                let mut all = dirs.clone();
                all.extend(&files);
                tree.conflicts.push(Conflict::SamePath { path: name.clone(), entries: all });
            }
            out.push((dirs, name));
            losers.extend(files);
            continue;
        }
        // Files: one per distinct content (identical content is one file), the winner of
        // the creation race keeps the name.
        let mut ranked = files;
        ranked.sort_by(|a, b| ranker.cmp(&entries[b].created, &entries[a].created).then(a.cmp(b)));
        let mut kept: Vec<DocId> = Vec::new();
        let mut contents: Vec<[u8; 32]> = Vec::new();
        for id in ranked {
            if ids.len() > 1 {
                tree.depends_on.insert(id);
                if let Some(c) = facts.content(id) {
                    if contents.contains(&c) {
                        tree.duplicates.push(id);
                        continue;
                    }
                    contents.push(c);
                }
            }
            kept.push(id);
        }
        if interactive && kept.len() > 1 {
            tree.conflicts
                .push(Conflict::SamePath { path: loc_of[&kept[0]].name.clone(), entries: kept.clone() });
        }
        out.push((vec![kept[0]], loc_of[&kept[0]].name.clone()));
        losers.extend(&kept[1..]);
    }
    let mut taken: BTreeSet<String> = by_key.keys().cloned().collect();
    losers.sort();
    for loser in losers {
        let creator = members.get(&entries[&loser].created.by).map_or("unknown", |m| m.name.as_str());
        let base = conflict_name(&loc_of[&loser].name, creator);
        let mut candidate = base.clone();
        let mut n = 2;
        while taken.contains(&candidate.to_lowercase()) || !is_valid_name(&candidate) {
            candidate = conflict_name(&loc_of[&loser].name, &format!("{} {n}", sanitize(creator)));
            n += 1;
            if n > 1000 {
                candidate = conflict_name(&loc_of[&loser].name, &loser.short());
                break;
            }
        }
        taken.insert(candidate.to_lowercase());
        out.push((vec![loser], candidate));
    }
    out
}

/// A peer-chosen name made safe to appear inside a file name.
fn sanitize(name: &str) -> String {
    let s: String = name.chars().filter(|c| !c.is_control() && *c != '/' && *c != '\\').take(40).collect();
    if s.is_empty() { "unknown".to_string() } else { s }
}

/// `notes.md` -> `notes (conflict, laptop).md`; `Makefile` -> `Makefile (conflict, laptop)`.
pub fn conflict_name(name: &str, who: &str) -> String {
    let who = sanitize(who);
    match name.rfind('.') {
        Some(dot) if dot > 0 => format!("{} (conflict, {who}){}", &name[..dot], &name[dot..]),
        _ => format!("{name} (conflict, {who})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> DocId {
        DocId([n; 16])
    }

    fn stamp(ms: u64, by: &str) -> Stamp {
        Stamp::new(ms, by)
    }

    fn loc(parent: Option<u8>, name: &str, s: Stamp) -> Location {
        let raw =
            format!("{}|{}|{}|{}", s.ms, s.by, parent.map(|p| id(p).to_string()).unwrap_or_default(), name);
        Location { parent: parent.map(id), name: name.into(), stamp: s, raw }
    }

    fn e(parent: Option<u8>, name: &str, kind: EntryKind, deleted: bool) -> Entry {
        let s = stamp(1, "a");
        let l = loc(parent, name, s.clone());
        let deletions = if deleted {
            vec![Deletion { stamp: stamp(2, "a"), seen_heads: vec![], seen_locs: vec![l.raw.clone()] }]
        } else {
            vec![]
        };
        Entry { kind, created: s, locs: vec![l], deletions, blobs: vec![], exec: false }
    }

    fn members() -> BTreeMap<String, Member> {
        BTreeMap::from([
            (
                "a".to_string(),
                Member {
                    name: "alice".into(),
                    role: "owner".into(),
                    tier: 1,
                    via: String::new(),
                    was: String::new(),
                    since_ms: 0,
                },
            ),
            (
                "b".to_string(),
                Member {
                    name: "bob".into(),
                    role: "writer".into(),
                    tier: 5,
                    via: String::new(),
                    was: String::new(),
                    since_ms: 0,
                },
            ),
        ])
    }

    fn show(entries: &BTreeMap<DocId, Entry>, strategy: Strategy) -> Tree {
        let m = members();
        render(&FolderView { entries, strategy, members: &m }, &NoFacts)
    }

    #[test]
    fn nested_paths() {
        let entries = BTreeMap::from([
            (id(1), e(None, "a", EntryKind::Dir, false)),
            (id(2), e(Some(1), "b", EntryKind::Dir, false)),
            (id(3), e(Some(2), "c.md", EntryKind::File, false)),
            (id(4), e(None, "gone.md", EntryKind::File, true)),
        ]);
        let t = show(&entries, Strategy::Timestamp);
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
        assert_eq!(show(&entries, Strategy::Timestamp).path_of(id(2)), Some("a/new.md"));
    }

    #[test]
    fn move_cycle_is_broken_at_smallest_id() {
        let entries = BTreeMap::from([
            (id(1), e(Some(2), "a", EntryKind::Dir, false)),
            (id(2), e(Some(1), "b", EntryKind::Dir, false)),
        ]);
        let t = show(&entries, Strategy::Timestamp);
        assert_eq!(t.path_of(id(1)), Some("a"));
        assert_eq!(t.path_of(id(2)), Some("a/b"));
    }

    #[test]
    fn rename_race_follows_the_strategy() {
        let mut f = e(None, "f.md", EntryKind::File, false);
        f.locs = vec![loc(None, "by-a.md", stamp(9, "a")), loc(None, "by-b.md", stamp(5, "b"))];
        let entries = BTreeMap::from([(id(1), f)]);
        assert_eq!(show(&entries, Strategy::Timestamp).path_of(id(1)), Some("by-a.md"));
        assert_eq!(
            show(&entries, Strategy::Priority).path_of(id(1)),
            Some("by-b.md"),
            "bob has the higher tier"
        );
        let t = show(&entries, Strategy::Interactive);
        assert_eq!(t.path_of(id(1)), Some("by-a.md"));
        assert!(matches!(&t.conflicts[..], [Conflict::Rename { options, .. }] if options.len() == 2));
    }

    #[test]
    fn rename_vs_delete_follows_the_strategy() {
        let mut f = e(None, "f.md", EntryKind::File, false);
        let old = f.locs[0].raw.clone();
        f.locs = vec![loc(None, "renamed.md", stamp(5, "b"))];
        f.deletions = vec![Deletion { stamp: stamp(9, "a"), seen_heads: vec![], seen_locs: vec![old] }];
        let entries = BTreeMap::from([(id(1), f)]);
        assert_eq!(show(&entries, Strategy::Timestamp).path_of(id(1)), None, "the later delete wins");
        assert_eq!(
            show(&entries, Strategy::Priority).path_of(id(1)),
            Some("renamed.md"),
            "bob outranks alice"
        );
        let t = show(&entries, Strategy::Interactive);
        assert_eq!(t.path_of(id(1)), Some("renamed.md"));
        assert!(matches!(&t.conflicts[..], [Conflict::RenameDelete { .. }]));
    }

    #[test]
    fn same_name_gets_a_conflict_sibling_named_after_its_creator() {
        let mut older = e(None, "notes.md", EntryKind::File, false);
        older.created = stamp(1, "a");
        let mut newer = e(None, "Notes.md", EntryKind::File, false);
        newer.created = stamp(2, "b");
        let entries = BTreeMap::from([
            (id(1), older),
            (id(2), newer),
            (id(3), e(None, "..", EntryKind::Dir, false)),
            (id(4), e(Some(3), "evil", EntryKind::File, false)),
        ]);
        let t = show(&entries, Strategy::Timestamp);
        assert_eq!(t.path_of(id(2)), Some("Notes.md"), "the later creation keeps the name");
        assert_eq!(t.path_of(id(1)), Some("notes (conflict, alice).md"));
        assert_eq!(t.path_of(id(3)), None);
        assert_eq!(t.path_of(id(4)), None);
        assert_eq!(
            t.refused,
            [RefusedName {
                entry: id(3),
                parent: String::new(),
                name: "..".into(),
                reason: Refused::DotName
            }]
        );
        assert_eq!(t.hidden, BTreeSet::from([id(3), id(4)]), "the refused entry hides its subtree");
    }

    #[test]
    fn a_path_over_the_limit_is_refused_with_its_subtree() {
        let long = "d".repeat(250);
        let mut entries = BTreeMap::new();
        for n in 1..=17u8 {
            entries.insert(id(n), e((n > 1).then(|| n - 1), &long, EntryKind::Dir, false));
        }
        entries.insert(id(18), e(Some(17), "f.md", EntryKind::File, false));
        let t = show(&entries, Strategy::Timestamp);
        assert!(t.path_of(id(16)).is_some_and(|p| p.len() <= MAX_PATH_BYTES));
        assert_eq!(t.path_of(id(17)), None);
        assert_eq!(
            t.refused.iter().map(|r| (r.entry, r.reason)).collect::<Vec<_>>(),
            [(id(17), Refused::PathTooLong)]
        );
        assert_eq!(t.hidden, BTreeSet::from([id(17), id(18)]));
    }

    #[test]
    fn directories_created_twice_merge_and_beat_a_file() {
        let entries = BTreeMap::from([
            (id(1), e(None, "src", EntryKind::Dir, false)),
            (id(2), e(None, "src", EntryKind::Dir, false)),
            (id(3), e(Some(1), "a.rs", EntryKind::File, false)),
            (id(4), e(Some(2), "b.rs", EntryKind::File, false)),
            (id(5), e(None, "src", EntryKind::File, false)),
        ]);
        let t = show(&entries, Strategy::Timestamp);
        assert_eq!(t.path_of(id(3)), Some("src/a.rs"));
        assert_eq!(t.path_of(id(4)), Some("src/b.rs"));
        assert_eq!(t.path_of(id(5)), Some("src (conflict, alice)"));
    }
}
