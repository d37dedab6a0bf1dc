//! Where a materialisation pass may look at only what changed (see [`Settled`]).

use std::collections::{BTreeSet, HashSet};

use teatime_crdt::{DocId, EntryKind, Tree};

use crate::store::{Index, IndexEntry};

/// Where the disk (as the index records it) already matches the rendered tree, so that a
/// remote edit of one file is materialised by looking at that file, not at the whole
/// folder (see the `only` of [`materialize`]).
///
/// A whole pass is followed by a check of every row and every shown path; if each row's
/// entry is shown at that row's path, the tree, filter and held paths it ran with become the
/// basis. While they stay the same, the next pass looks only at: the shown paths that were
/// not settled (a document not arrived, a failed write), the index rows changed since (by
/// scans, commands, or the pass itself), and the paths of the changed entries. Everywhere
/// else a whole pass would find each row in place and nothing to write. Anything that
/// looks like a move or a deletion there, a new tree, new rules or held paths: a whole pass.
#[derive(Default)]
pub(super) struct Settled {
    /// (tree generation, filter generation, held paths) of the whole pass that settled.
    basis: Option<(u64, u64, BTreeSet<String>)>,
    /// Shown, not skipped paths whose index row is not their entry's.
    unsettled: BTreeSet<String>,
    /// Index rows persisted since the last pass (rows still to persist are in
    /// `Replica::index_touched`).
    rows_changed: BTreeSet<String>,
}

/// A pass limited to more rows than this is not worth remembering them: a peer that only
/// scans (a sharer importing 100,000 files, which no remote change makes write) would
/// hold every path here, and a whole pass costs less than that memory.
const MAX_ROWS_CHANGED: usize = 4096;

impl Settled {
    /// Index rows were persisted: the next pass looks at them. Not kept without a basis
    /// (the next pass is a whole one anyway), nor past [`MAX_ROWS_CHANGED`].
    pub(super) fn rows_persisted<'a>(&mut self, rows: impl IntoIterator<Item = &'a String>) {
        if self.basis.is_none() {
            return;
        }
        self.rows_changed.extend(rows.into_iter().cloned());
        if self.rows_changed.len() > MAX_ROWS_CHANGED {
            *self = Settled::default();
        }
    }

    /// The paths the next pass must look at, or `None` for a whole pass.
    pub(super) fn scope(
        &self,
        basis: (u64, u64, &BTreeSet<String>),
        tree: &Tree,
        index: &Index,
        changed: &HashSet<DocId>,
        touched: &BTreeSet<String>,
    ) -> Option<BTreeSet<String>> {
        let (generation, filter_generation, held) = self.basis.as_ref()?;
        if (*generation, *filter_generation, held) != basis {
            return None;
        }
        let mut paths = self.unsettled.clone();
        paths.extend(self.rows_changed.iter().chain(touched).cloned());
        paths.extend(changed.iter().filter_map(|id| tree.path_of(*id)).map(str::to_string));
        // A row whose entry is shown elsewhere or not at all: a move or a deletion.
        let misplaced = |p: &String| index.get(p).is_some_and(|e| tree.path_of(e.id) != Some(p.as_str()));
        if paths.iter().any(misplaced) {
            return None;
        }
        Some(paths)
    }

    /// Records what a pass left: `looked_at` the paths it looked at (`None`: all).
    pub(super) fn after_pass(
        &mut self,
        basis: (u64, u64, &BTreeSet<String>),
        tree: &Tree,
        index: &Index,
        skip: &dyn Fn(&str, bool) -> bool,
        looked_at: Option<&BTreeSet<String>>,
    ) {
        self.rows_changed.clear();
        let unsettled = |p: &str| {
            tree.by_path.get(p).is_some_and(|&(id, kind)| {
                !skip(p, kind == EntryKind::Dir) && index.get(p).is_none_or(|e| e.id != id)
            })
        };
        let misplaced = |p: &str, e: &IndexEntry| tree.path_of(e.id) != Some(p);
        match looked_at {
            None => {
                if index.iter().any(|(p, e)| misplaced(p, e)) {
                    self.basis = None;
                    return;
                }
                self.unsettled = tree.by_path.keys().filter(|p| unsettled(p)).cloned().collect();
                self.basis = Some((basis.0, basis.1, basis.2.clone()));
            }
            Some(paths) => {
                for p in paths {
                    if index.get(p).is_some_and(|e| misplaced(p, e)) {
                        self.basis = None;
                        return;
                    }
                    if unsettled(p) {
                        self.unsettled.insert(p.clone());
                    } else {
                        self.unsettled.remove(p);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Stat;

    fn id(n: u8) -> DocId {
        DocId([n; 16])
    }

    fn tree(files: &[(&str, u8)]) -> Tree {
        let mut t = Tree::default();
        for (path, n) in files {
            t.by_path.insert(path.to_string(), (id(*n), EntryKind::File));
            t.by_id.insert(id(*n), path.to_string());
        }
        t
    }

    fn index(rows: &[(&str, u8)]) -> Index {
        rows.iter()
            .map(|(p, n)| (p.to_string(), IndexEntry::file(id(*n), Stat::default(), [0; 32], vec![])))
            .collect()
    }

    const NOTHING_SKIPPED: &dyn Fn(&str, bool) -> bool = &|_, _| false;

    /// A whole pass that left a.txt in place and b.txt not written (its document has not arrived).
    fn settled_with_b_unwritten(held: &BTreeSet<String>) -> (Settled, Tree, Index) {
        let t = tree(&[("a.txt", 1), ("b.txt", 2), ("c.txt", 3)]);
        let i = index(&[("a.txt", 1), ("c.txt", 3)]);
        let mut s = Settled::default();
        assert!(s.scope((1, 0, held), &t, &i, &HashSet::new(), &BTreeSet::new()).is_none(), "no basis yet");
        s.after_pass((1, 0, held), &t, &i, NOTHING_SKIPPED, None);
        (s, t, i)
    }

    #[test]
    fn after_a_settled_pass_only_the_changed_and_unsettled_paths_are_looked_at() {
        let held = BTreeSet::new();
        let (mut s, t, i) = settled_with_b_unwritten(&held);
        let changed = HashSet::from([id(3)]);
        let scope = s.scope((1, 0, &held), &t, &i, &changed, &BTreeSet::new()).expect("a limited pass");
        assert_eq!(scope, BTreeSet::from(["b.txt".to_string(), "c.txt".to_string()]));
        // A row persisted since (a scan saw a.txt change) is looked at too.
        s.rows_persisted(&["a.txt".to_string()]);
        let scope = s.scope((1, 0, &held), &t, &i, &HashSet::new(), &BTreeSet::new()).unwrap();
        assert_eq!(scope, BTreeSet::from(["a.txt".to_string(), "b.txt".to_string()]));
        // Once b.txt is written, it is settled.
        let i = index(&[("a.txt", 1), ("b.txt", 2), ("c.txt", 3)]);
        s.after_pass((1, 0, &held), &t, &i, NOTHING_SKIPPED, Some(&BTreeSet::from(["b.txt".to_string()])));
        let scope = s.scope((1, 0, &held), &t, &i, &HashSet::new(), &BTreeSet::new()).unwrap();
        assert!(scope.is_empty(), "{scope:?}");
    }

    #[test]
    fn a_new_rendering_new_rules_or_held_paths_mean_a_whole_pass() {
        let held = BTreeSet::new();
        let (s, t, i) = settled_with_b_unwritten(&held);
        let none = HashSet::new();
        let no_rows = BTreeSet::new();
        assert!(s.scope((2, 0, &held), &t, &i, &none, &no_rows).is_none(), "tree rendered again");
        assert!(s.scope((1, 1, &held), &t, &i, &none, &no_rows).is_none(), "rules read again");
        let held_now = BTreeSet::from(["a.txt".to_string()]);
        assert!(s.scope((1, 0, &held_now), &t, &i, &none, &no_rows).is_none(), "a path held");
    }

    #[test]
    fn a_row_that_looks_moved_or_deleted_means_a_whole_pass() {
        let held = BTreeSet::new();
        let (s, _, i) = settled_with_b_unwritten(&held);
        // The same rendering generation cannot show c.txt elsewhere, but a row touched by a
        // scan can name an entry the tree shows at another path: a move on disk.
        let mut moved = i.clone();
        moved.insert("d.txt".into(), IndexEntry::file(id(3), Stat::default(), [0; 32], vec![]));
        let t = tree(&[("a.txt", 1), ("b.txt", 2), ("c.txt", 3)]);
        let touched = BTreeSet::from(["d.txt".to_string()]);
        assert!(s.scope((1, 0, &held), &t, &moved, &HashSet::new(), &touched).is_none());
    }

    #[test]
    fn a_whole_pass_that_leaves_a_row_out_of_place_sets_no_basis() {
        let held = BTreeSet::new();
        let t = tree(&[("a.txt", 1)]);
        // A row left where the tree no longer shows its entry (a move that failed).
        let i = index(&[("old.txt", 1)]);
        let mut s = Settled::default();
        s.after_pass((1, 0, &held), &t, &i, NOTHING_SKIPPED, None);
        assert!(s.scope((1, 0, &held), &t, &i, &HashSet::new(), &BTreeSet::new()).is_none());
    }

    #[test]
    fn rows_are_remembered_only_with_a_basis_and_not_without_bound() {
        let held = BTreeSet::new();
        let mut s = Settled::default();
        s.rows_persisted(&["a.txt".to_string()]);
        assert!(s.rows_changed.is_empty(), "no basis: the next pass is whole anyway");
        let (mut s, t, i) = settled_with_b_unwritten(&held);
        let many: Vec<String> = (0..=MAX_ROWS_CHANGED).map(|n| format!("f{n}.txt")).collect();
        s.rows_persisted(&many);
        assert!(s.rows_changed.is_empty());
        assert!(s.scope((1, 0, &held), &t, &i, &HashSet::new(), &BTreeSet::new()).is_none(), "a whole pass");
    }

    #[test]
    fn skipped_paths_are_never_unsettled() {
        let held = BTreeSet::new();
        let t = tree(&[("a.txt", 1), ("build/x.o", 2)]);
        let i = index(&[("a.txt", 1)]);
        let mut s = Settled::default();
        let skip: &dyn Fn(&str, bool) -> bool = &|p, _| p.starts_with("build/");
        s.after_pass((1, 0, &held), &t, &i, skip, None);
        let scope = s.scope((1, 0, &held), &t, &i, &HashSet::new(), &BTreeSet::new()).unwrap();
        assert!(scope.is_empty(), "{scope:?}");
    }
}
