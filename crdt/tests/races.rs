//! Property test: random creates, renames, deletes and edits on 2 to 5 replicas, merged in
//! random orders, give the same tree on every replica, never two entries at one path, and
//! never lose an edit to a delete that had not seen it.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use automerge::{ActorId, AutoCommit, ChangeHash};
use proptest::prelude::{
    Just, ProptestConfig, TestCaseError, any, prop_assert, prop_assert_eq, prop_oneof, proptest,
};
use proptest::strategy::Strategy as _;
use teatime_crdt::{
    DocId, EntryKind, FileDoc, FileFacts, FolderDoc, FolderView, Stamp, Strategy, Tree, render,
};

const NAMES: [&str; 4] = ["a.md", "A.md", "b.md", "dir"];

#[derive(Debug, Clone)]
enum Op {
    Create { r: usize, name: usize, dir: bool, parent: usize },
    Rename { r: usize, which: usize, name: usize, parent: usize },
    Delete { r: usize, which: usize },
    Edit { r: usize, which: usize },
    Merge { from: usize, to: usize },
}

fn op(n: usize) -> impl proptest::strategy::Strategy<Value = Op> {
    prop_oneof![
        3 => (0..n, 0..NAMES.len(), any::<bool>(), 0..8usize)
            .prop_map(|(r, name, dir, parent)| Op::Create { r, name, dir, parent }),
        2 => (0..n, 0..16usize, 0..NAMES.len(), 0..8usize)
            .prop_map(|(r, which, name, parent)| Op::Rename { r, which, name, parent }),
        2 => (0..n, 0..16usize).prop_map(|(r, which)| Op::Delete { r, which }),
        3 => (0..n, 0..16usize).prop_map(|(r, which)| Op::Edit { r, which }),
        3 => (0..n, 0..n).prop_map(|(from, to)| Op::Merge { from, to }),
    ]
}

struct Replica {
    me: String,
    actor: ActorId,
    folder: FolderDoc,
    files: RefCell<HashMap<DocId, FileDoc>>,
    clock: u64,
}

struct Facts<'a>(&'a RefCell<HashMap<DocId, FileDoc>>);

impl FileFacts for Facts<'_> {
    fn edited_since(&self, id: DocId, seen: &[ChangeHash]) -> bool {
        self.0.borrow_mut().get_mut(&id).is_some_and(|f| f.edited_since(seen))
    }
    fn content(&self, id: DocId) -> Option<[u8; 32]> {
        let text = self.0.borrow_mut().get_mut(&id)?.text()?;
        let mut out = [0u8; 32];
        for (i, b) in text.bytes().enumerate() {
            out[i % 32] = out[i % 32].wrapping_mul(31).wrapping_add(b);
        }
        out[31] ^= text.len() as u8;
        Some(out)
    }
}

impl Replica {
    fn tree(&self) -> Tree {
        let entries = self.folder.entries();
        let members = self.folder.members();
        render(
            &FolderView { entries: &entries, strategy: self.folder.strategy(), members: &members },
            &Facts(&self.files),
        )
    }

    fn stamp(&mut self) -> Stamp {
        self.clock += 1;
        Stamp::new(self.clock, &self.me)
    }

    /// Shown entries in path order.
    fn shown(&self) -> Vec<(String, DocId, EntryKind)> {
        self.tree().by_path.iter().map(|(p, (id, k))| (p.clone(), *id, *k)).collect()
    }

    fn merge_from(&mut self, other: &mut Replica) {
        self.folder.doc_mut().merge(other.folder.doc_mut()).unwrap();
        let theirs = other.files.get_mut();
        let mine = self.files.get_mut();
        for (id, f) in theirs.iter_mut() {
            let bytes = f.doc_mut().save();
            match mine.get_mut(id) {
                Some(m) => {
                    m.doc_mut().load_incremental(&bytes).unwrap();
                }
                None => {
                    let doc = AutoCommit::load(&bytes).unwrap().with_actor(self.actor.clone());
                    mine.insert(*id, FileDoc::from_doc(doc));
                }
            }
        }
    }
}

/// Two distinct replicas, mutably: `(from, to)`.
fn two(reps: &mut [Replica], from: usize, to: usize) -> (&mut Replica, &mut Replica) {
    assert_ne!(from, to);
    if from < to {
        let (lo, hi) = reps.split_at_mut(to);
        (&mut lo[from], &mut hi[0])
    } else {
        let (lo, hi) = reps.split_at_mut(from);
        (&mut hi[0], &mut lo[to])
    }
}

/// Markers each deletion had seen, per file (the oracle for "no edit lost").
type SeenByDeletes = HashMap<DocId, Vec<BTreeSet<String>>>;

fn markers_in(text: &str) -> BTreeSet<String> {
    text.split('<').skip(1).filter_map(|s| s.split_once('>')).map(|(m, _)| format!("<{m}>")).collect()
}

fn run(n: usize, strategy: Strategy, ops: &[Op], order: &[usize]) -> Result<(), TestCaseError> {
    let mut origin = FolderDoc::create(ActorId::from([200; 16]), "r0", "r0").unwrap();
    origin.set_strategy(strategy).unwrap();
    for i in 1..n {
        origin.add_member(&format!("r{i}"), &format!("r{i}"), "writer", "").unwrap();
    }
    origin.commit();
    let saved = origin.doc_mut().save();
    let mut reps: Vec<Replica> = (0..n)
        .map(|i| {
            let actor = ActorId::from([i as u8 + 1; 16]);
            Replica {
                me: format!("r{i}"),
                actor: actor.clone(),
                folder: FolderDoc::from_doc(AutoCommit::load(&saved).unwrap().with_actor(actor)),
                files: RefCell::new(HashMap::new()),
                clock: 0,
            }
        })
        .collect();
    let later = || Instant::now() + Duration::from_secs(5);
    let mut seen_by_deletes: SeenByDeletes = HashMap::new();

    for (k, op) in ops.iter().enumerate() {
        match *op {
            Op::Create { r, name, dir, parent } => {
                let shown = reps[r].shown();
                let dirs: Vec<DocId> = shown.iter().filter(|s| s.2 == EntryKind::Dir).map(|s| s.1).collect();
                let parent = (parent < dirs.len()).then(|| dirs[parent]);
                let id = DocId([k as u8, r as u8, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7]);
                let stamp = reps[r].stamp();
                let kind = if dir { EntryKind::Dir } else { EntryKind::File };
                if !dir {
                    let doc = FileDoc::create(reps[r].actor.clone(), &format!("file {k}\n"), 0).unwrap();
                    reps[r].files.get_mut().insert(id, doc);
                }
                reps[r].folder.create_entry(id, parent, NAMES[name], kind, &stamp).unwrap();
                reps[r].folder.commit();
            }
            Op::Rename { r, which, name, parent } => {
                let shown = reps[r].shown();
                if shown.is_empty() {
                    continue;
                }
                let (path, id, _) = shown[which % shown.len()].clone();
                // A local move never puts a directory inside itself.
                let dirs: Vec<DocId> = shown
                    .iter()
                    .filter(|s| s.2 == EntryKind::Dir && s.0 != path && !s.0.starts_with(&format!("{path}/")))
                    .map(|s| s.1)
                    .collect();
                let parent = (parent < dirs.len()).then(|| dirs[parent]);
                let stamp = reps[r].stamp();
                reps[r].folder.move_entry(id, parent, NAMES[name], &stamp).unwrap();
                reps[r].folder.commit();
            }
            Op::Delete { r, which } => {
                let shown = reps[r].shown();
                if shown.is_empty() {
                    continue;
                }
                let (path, _, _) = shown[which % shown.len()].clone();
                // Like a scan: the entry and everything under it, children first.
                let doomed: Vec<(DocId, EntryKind)> = shown
                    .iter()
                    .filter(|s| s.0 == path || s.0.starts_with(&format!("{path}/")))
                    .rev()
                    .map(|s| (s.1, s.2))
                    .collect();
                for (id, kind) in doomed {
                    let stamp = reps[r].stamp();
                    let heads = match kind {
                        EntryKind::File => {
                            let mut files = reps[r].files.borrow_mut();
                            let f = files.get_mut(&id).expect("shown files are here");
                            seen_by_deletes.entry(id).or_default().push(markers_in(&f.text().unwrap()));
                            f.heads()
                        }
                        EntryKind::Dir => vec![],
                    };
                    reps[r].folder.delete_entry(id, &stamp, heads).unwrap();
                }
                reps[r].folder.commit();
            }
            Op::Edit { r, which } => {
                let shown = reps[r].shown();
                let files: Vec<DocId> =
                    shown.iter().filter(|s| s.2 == EntryKind::File).map(|s| s.1).collect();
                if files.is_empty() {
                    continue;
                }
                let id = files[which % files.len()];
                let mut map = reps[r].files.borrow_mut();
                let f = map.get_mut(&id).unwrap();
                let text = f.text().unwrap();
                f.ingest(&format!("{text}<m{k}>\n"), later(), 0).unwrap();
            }
            Op::Merge { from, to } if from != to => {
                let (a, b) = two(&mut reps, from, to);
                b.merge_from(a);
            }
            Op::Merge { .. } => {}
        }
    }
    // Everyone sees everything, merged in the given order, twice around.
    for _ in 0..2 {
        for w in order.windows(2) {
            let (from, to) = (w[0], w[1]);
            let (a, b) = two(&mut reps, from, to);
            b.merge_from(a);
        }
        let (last, first) = (*order.last().unwrap(), order[0]);
        let (a, b) = two(&mut reps, last, first);
        b.merge_from(a);
    }

    let trees: Vec<Tree> = reps.iter().map(|r| r.tree()).collect();
    for t in &trees {
        prop_assert_eq!(&t.by_path, &trees[0].by_path);
        prop_assert_eq!(&t.conflicts, &trees[0].conflicts);
    }
    // No two entries at one path, case-insensitively.
    let lower: BTreeSet<String> = trees[0].by_path.keys().map(|p| p.to_lowercase()).collect();
    prop_assert_eq!(lower.len(), trees[0].by_path.len());
    // No edit lost to a delete that had not seen it.
    let shown: BTreeSet<DocId> = trees[0].by_id.keys().copied().collect();
    let entries = reps[0].folder.entries();
    let mut files = reps[0].files.borrow_mut();
    for (id, e) in &entries {
        if e.kind != EntryKind::File || shown.contains(id) || trees[0].duplicates.contains(id) {
            continue;
        }
        let markers = markers_in(&files.get_mut(id).expect("a document per file").text().unwrap());
        let covered =
            seen_by_deletes.get(id).is_some_and(|seen| seen.iter().any(|s| s.is_superset(&markers)));
        prop_assert!(covered, "file {:?} hidden but edits {:?} were never seen by a delete", id, markers);
    }
    Ok(())
}

fn scenario() -> impl proptest::strategy::Strategy<Value = (usize, Vec<Op>, Vec<usize>, u8)> {
    (2usize..=5).prop_flat_map(|n| {
        (
            Just(n),
            proptest::collection::vec(op(n), 1..40),
            Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
            0u8..3,
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn replicas_converge_without_losing_edits((n, ops, order, s) in scenario()) {
        let strategy = [Strategy::Timestamp, Strategy::Priority, Strategy::Interactive][s as usize];
        run(n, strategy, &ops, &order)?;
    }
}

#[test]
fn an_edit_the_deleter_had_not_seen_brings_the_file_back() {
    let ops = vec![
        Op::Create { r: 0, name: 0, dir: false, parent: 9 },
        Op::Merge { from: 0, to: 1 },
        Op::Delete { r: 0, which: 0 },
        Op::Edit { r: 1, which: 0 },
    ];
    run(2, Strategy::Timestamp, &ops, &[0, 1]).unwrap();
}

#[test]
fn replicas_agree_on_a_hand_written_race() {
    // Two replicas create the same name with different content, then one renames the
    // other's file while the first deletes it.
    let ops = vec![
        Op::Create { r: 0, name: 0, dir: false, parent: 9 },
        Op::Create { r: 1, name: 1, dir: false, parent: 9 },
        Op::Merge { from: 0, to: 1 },
        Op::Merge { from: 1, to: 0 },
        Op::Rename { r: 1, which: 0, name: 2, parent: 9 },
        Op::Delete { r: 0, which: 0 },
    ];
    for strategy in [Strategy::Timestamp, Strategy::Priority, Strategy::Interactive] {
        run(2, strategy, &ops, &[1, 0]).unwrap();
    }
}
