//! A text file's document: one Automerge Text at the root key `text`.
//!
//! The Text object is created once, by the peer that first saw the file
//! ([`FileDoc::create`]). Every other replica starts from an empty document and receives
//! that object by sync: two replicas that each created their own Text would each hold a
//! different object under the same key, and one side's text would be hidden.
//!
//! A document that holds only that first change (a file nobody has edited since it was
//! shared: most of a folder) is kept as the change itself ([`Creation`]), written and read
//! without Automerge; it becomes an Automerge document the first time something needs one
//! (an edit, a peer's edit, history).

use std::time::Instant;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, ChangeHash, ObjId, ObjType, ROOT, ReadDoc};

use crate::ModelError;
use crate::creation::{Creation, TEXT_KEY};
use crate::text::diff_splices;

/// A text file's document.
#[derive(Debug)]
pub struct FileDoc {
    repr: Repr,
    /// The text at the heads it was read or written at: reading a large Text out of
    /// Automerge costs far more than a one-line edit to it (a 10 MB file is read once,
    /// not at every edit, write and comparison).
    text_cache: Option<(Vec<ChangeHash>, String)>,
}

#[derive(Debug)]
enum Repr {
    /// Only the first change, not built into Automerge yet; `local` is the actor this
    /// replica will write with once it is.
    Created { creation: Creation, local: ActorId },
    /// An Automerge document (boxed: it is far larger than a `Created`).
    Loaded(Box<AutoCommit>),
}

impl FileDoc {
    /// A new file document holding `content`, written by `actor` at `at_ms` (ms since the
    /// epoch: the change's time, for history).
    pub fn create(actor: ActorId, content: &str, at_ms: i64) -> Result<Self, ModelError> {
        let creation = Creation::new(actor.clone(), content.to_string(), at_ms);
        Ok(Self::from_creation(creation, actor))
    }

    /// A document holding only its first change, which this replica (writing as `local`)
    /// received or read back.
    pub fn from_creation(creation: Creation, local: ActorId) -> Self {
        FileDoc { repr: Repr::Created { creation, local }, text_cache: None }
    }

    /// Wraps an existing document (loaded from storage, or empty and waiting for sync).
    pub fn from_doc(doc: AutoCommit) -> Self {
        FileDoc { repr: Repr::Loaded(Box::new(doc)), text_cache: None }
    }

    /// The first change, while the document holds nothing else and is not built into
    /// Automerge: what to store and send instead of a `save()`.
    pub fn creation(&self) -> Option<&Creation> {
        match &self.repr {
            Repr::Created { creation, .. } => Some(creation),
            Repr::Loaded(_) => None,
        }
    }

    /// The underlying Automerge document, for sync and storage (built now from the first
    /// change if it was not yet).
    pub fn doc_mut(&mut self) -> &mut AutoCommit {
        self.doc()
    }

    fn doc(&mut self) -> &mut AutoCommit {
        if let Repr::Created { creation, local } = &self.repr {
            // The bytes were written or checked by `Creation`, which only accepts
            // Automerge's own encoding: Automerge reads them.
            let doc = creation.to_doc(local.clone()).expect("a canonical first change builds");
            let Repr::Created { creation, .. } =
                std::mem::replace(&mut self.repr, Repr::Loaded(Box::new(doc)))
            else {
                unreachable!()
            };
            self.text_cache = Some((vec![creation.hash], creation.text));
        }
        match &mut self.repr {
            Repr::Loaded(doc) => doc,
            Repr::Created { .. } => unreachable!("built above"),
        }
    }

    /// Whether changes wait in the document for dependencies that have not arrived.
    pub fn has_waiting_changes(&mut self) -> bool {
        match &mut self.repr {
            Repr::Created { .. } => false,
            Repr::Loaded(doc) => !doc.get_missing_deps(&[]).is_empty(),
        }
    }

    /// The document as bytes for storage or for a peer that lacks it: the first change
    /// itself while it is all the document holds, else a `save()`.
    pub fn save(&mut self) -> Vec<u8> {
        match &mut self.repr {
            Repr::Created { creation, .. } => creation.bytes.clone(),
            Repr::Loaded(doc) => doc.save(),
        }
    }

    fn text_obj(&mut self) -> Option<ObjId> {
        match self.doc().get(ROOT, TEXT_KEY) {
            Ok(Some((automerge::Value::Object(ObjType::Text), id))) => Some(id),
            _ => None,
        }
    }

    /// Whether the Text object has arrived (a replica that only heard of the file has
    /// an empty document until the creator's first change reaches it).
    pub fn is_ready(&mut self) -> bool {
        self.creation().is_some() || self.text_obj().is_some()
    }

    /// The file's content, or `None` while the document is not ready.
    pub fn text(&mut self) -> Option<String> {
        if let Some(c) = self.creation() {
            return Some(c.text.clone());
        }
        let heads = self.doc().get_heads();
        if let Some((at, text)) = &self.text_cache
            && *at == heads
        {
            return Some(text.clone());
        }
        let obj = self.text_obj()?;
        let text = self.doc().text(&obj).ok()?;
        self.text_cache = Some((heads, text.clone()));
        Some(text)
    }

    /// The content as it was at `heads`, or `None` when those changes are not all here.
    pub fn text_at(&mut self, heads: &[ChangeHash]) -> Option<String> {
        if let Some(c) = self.creation()
            && heads == [c.hash]
        {
            return Some(c.text.clone());
        }
        if !self.doc().get_missing_deps(heads).is_empty() {
            return None;
        }
        let obj = self.text_obj()?;
        self.doc().text_at(&obj, heads).ok()
    }

    /// The document's current heads.
    pub fn heads(&mut self) -> Vec<ChangeHash> {
        match &mut self.repr {
            Repr::Created { creation, .. } => vec![creation.hash],
            Repr::Loaded(doc) => doc.get_heads(),
        }
    }

    /// Whether the document holds changes not covered by `seen` (an edit made without
    /// knowing that version). `false` while `seen` names changes not here yet: this
    /// replica cannot tell, and the answer settles once they arrive.
    pub fn edited_since(&mut self, seen: &[ChangeHash]) -> bool {
        if self.creation().is_some() {
            // Its one change is covered by `seen` if named there; an empty `seen` covers
            // nothing; other hashes are changes not here yet.
            return seen.is_empty();
        }
        let heads = self.doc().get_heads();
        if heads.as_slice() == seen {
            return false;
        }
        if !self.doc().get_missing_deps(seen).is_empty() {
            return false;
        }
        !self.doc().get_changes(seen).is_empty()
    }

    /// Records `content` as an edit made to the version at `base` (the heads of the
    /// content the file held when it was last read or written). When the document has
    /// moved on since (a peer's change arrived while the user was editing), the edit is
    /// made against `base` and merged, so neither side's change is lost: diffing the
    /// file against the *current* text would undo the peer's change.
    pub fn ingest_from(
        &mut self,
        content: &str,
        base: &[ChangeHash],
        deadline: Instant,
        at_ms: i64,
    ) -> Result<bool, ModelError> {
        let current = self.doc().get_heads();
        // A change-graph lookup (get_change_by_hash would rebuild each change, O(document));
        // exact only while nothing is queued, since queued changes count as present.
        let base_known = !base.is_empty()
            && if self.doc().get_missing_deps(&[]).is_empty() {
                self.doc().get_missing_deps(base).is_empty()
            } else {
                base.iter().all(|h| self.doc().get_change_by_hash(h).is_some())
            };
        if base == current.as_slice() || !base_known {
            return self.ingest(content, deadline, at_ms);
        }
        let base = self.with_own_changes(base);
        if self.doc().get_changes_meta(&base).is_empty() {
            return self.ingest(content, deadline, at_ms);
        }
        self.doc().isolate(&base);
        // Isolated, the document shows the text at `base`, while its heads stay the
        // latest: the cache (keyed by heads) must not be used.
        let result = self.text_obj().ok_or(ModelError::Missing("text")).and_then(|obj| {
            let old = self.doc().text(&obj)?;
            self.splice_to(&obj, &old, content, deadline, at_ms)
        });
        self.doc().integrate();
        result
    }

    /// `base` plus the latest change this replica's actor made, when `base` does not cover
    /// it. The content always holds this replica's own changes: every one of them was
    /// ingested from the file, or written to it before the file is read again. A base that
    /// lacks one (an index persisted before a crash, older than the documents) must not
    /// make the edit be applied a second time, concurrently with itself. And Automerge
    /// writes a change isolated at heads that lack its actor's latest change under a
    /// derived actor (its "concurrency" actor: magic bytes, a level, then the actor),
    /// which is no member's actor: peers would refuse it as forged.
    fn with_own_changes(&mut self, base: &[ChangeHash]) -> Vec<ChangeHash> {
        let me = self.doc().get_actor().clone();
        let own = self
            .doc()
            .get_changes_meta(base)
            .into_iter()
            .filter(|m| *m.actor == me)
            .max_by_key(|m| m.seq)
            .map(|m| m.hash);
        let mut out = base.to_vec();
        out.extend(own);
        out
    }

    /// Makes the document hold `content` by the smallest splices found before
    /// `deadline`, committed as one change at `at_ms`. Returns whether anything changed.
    pub fn ingest(&mut self, content: &str, deadline: Instant, at_ms: i64) -> Result<bool, ModelError> {
        let old = self.text().ok_or(ModelError::Missing("text"))?;
        let obj = self.text_obj().ok_or(ModelError::Missing("text"))?;
        let changed = self.splice_to(&obj, &old, content, deadline, at_ms)?;
        if changed {
            self.text_cache = Some((self.doc().get_heads(), content.to_string()));
        }
        Ok(changed)
    }

    /// Splices the Text `obj`, holding `old`, into `content` and commits.
    fn splice_to(
        &mut self,
        obj: &ObjId,
        old: &str,
        content: &str,
        deadline: Instant,
        at_ms: i64,
    ) -> Result<bool, ModelError> {
        let splices = diff_splices(old, content, deadline);
        if splices.is_empty() {
            return Ok(false);
        }
        for s in splices.iter().rev() {
            self.doc().splice_text(obj, s.pos, s.delete as isize, &s.insert)?;
        }
        self.doc().commit_with(CommitOptions::default().with_time(at_ms));
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn actor(n: u8) -> ActorId {
        ActorId::from([n; 16])
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    /// Random concurrent edit sequences on 2..=5 replicas, merged in random orders, end
    /// with the same text everywhere, and every marker inserted and not deleted by a later
    /// edit of the same replica is still there.
    #[derive(Debug, Clone)]
    enum Op {
        /// Replica inserts a unique marker at a fraction of its text length.
        Insert { replica: usize, at: f64 },
        /// Replica deletes a range that contains no marker it must keep (plain filler).
        DeleteFiller { replica: usize, at: f64 },
        /// Replica `from` merges into `to`.
        Merge { from: usize, to: usize },
    }

    fn op(replicas: usize) -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..replicas, 0.0..1.0f64).prop_map(|(replica, at)| Op::Insert { replica, at }),
            1 => (0..replicas, 0.0..1.0f64).prop_map(|(replica, at)| Op::DeleteFiller { replica, at }),
            3 => (0..replicas, 0..replicas).prop_map(|(from, to)| Op::Merge { from, to }),
        ]
    }

    fn scenario() -> impl Strategy<Value = (usize, Vec<Op>, Vec<usize>)> {
        (2usize..=5).prop_flat_map(|n| {
            (
                Just(n),
                proptest::collection::vec(op(n), 1..60),
                Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn concurrent_edits_converge_and_keep_markers((n, ops, merge_order) in scenario()) {
            let mut origin = FileDoc::create(actor(100), "filler one\nfiller two\n", 0).unwrap();
            let saved = origin.doc_mut().save();
            let mut replicas: Vec<FileDoc> = (0..n)
                .map(|i| FileDoc::from_doc(AutoCommit::load(&saved).unwrap().with_actor(actor(i as u8))))
                .collect();
            let mut markers = Vec::new();
            for (k, op) in ops.iter().enumerate() {
                match *op {
                    Op::Insert { replica, at } => {
                        let text = replicas[replica].text().unwrap();
                        let chars: Vec<char> = text.chars().collect();
                        // Only between markers, never inside one.
                        let mut gaps = filler_positions(&text);
                        gaps.push(chars.len());
                        let pos = gaps[(at * gaps.len() as f64) as usize % gaps.len()];
                        let marker = format!("<m{k}>");
                        let new: String = chars[..pos].iter().chain(marker.chars().collect::<Vec<_>>().iter()).chain(chars[pos..].iter()).collect();
                        replicas[replica].ingest(&new, later(), 0).unwrap();
                        markers.push(marker);
                    }
                    Op::DeleteFiller { replica, at } => {
                        // Delete one filler character (never inside a marker).
                        let text = replicas[replica].text().unwrap();
                        let filler: Vec<usize> = filler_positions(&text);
                        if filler.is_empty() { continue; }
                        let victim = filler[(at * filler.len() as f64) as usize % filler.len()];
                        let mut chars: Vec<char> = text.chars().collect();
                        chars.remove(victim);
                        replicas[replica].ingest(&chars.into_iter().collect::<String>(), later(), 0).unwrap();
                    }
                    Op::Merge { from, to } if from != to => {
                        let mut src = replicas[from].doc_mut().fork();
                        replicas[to].doc_mut().merge(&mut src).unwrap();
                    }
                    Op::Merge { .. } => {}
                }
            }
            // Merge everything in the shuffled order, twice around, so all see all.
            for _ in 0..2 {
                for w in merge_order.windows(2) {
                    let mut src = replicas[w[0]].doc_mut().fork();
                    replicas[w[1]].doc_mut().merge(&mut src).unwrap();
                }
                let (last, first) = (*merge_order.last().unwrap(), merge_order[0]);
                let mut src = replicas[last].doc_mut().fork();
                replicas[first].doc_mut().merge(&mut src).unwrap();
            }
            let texts: Vec<String> = replicas.iter_mut().map(|r| r.text().unwrap()).collect();
            for t in &texts {
                prop_assert_eq!(t, &texts[0]);
            }
            for m in &markers {
                prop_assert!(texts[0].contains(m.as_str()), "marker {} lost: {:?}", m, texts[0]);
            }
        }
    }

    /// Positions of characters outside `<m..>` markers.
    fn filler_positions(text: &str) -> Vec<usize> {
        let mut inside = false;
        let mut out = Vec::new();
        for (i, c) in text.chars().enumerate() {
            match c {
                '<' => inside = true,
                '>' => inside = false,
                _ if !inside => out.push(i),
                _ => {}
            }
        }
        out
    }

    #[test]
    fn an_edit_made_against_an_old_version_keeps_the_newer_changes() {
        let mut a = FileDoc::create(actor(1), "one\ntwo\nthree\n", 0).unwrap();
        let base = a.heads();
        let mut b = FileDoc::from_doc(AutoCommit::load(&a.doc_mut().save()).unwrap().with_actor(actor(2)));
        b.ingest("ONE\ntwo\nthree\n", later(), 0).unwrap();
        a.doc_mut().merge(b.doc_mut()).unwrap();
        // The file on disk still derives from `base`: its author changed line three.
        assert!(a.ingest_from("one\ntwo\nTHREE\n", &base, later(), 0).unwrap());
        assert_eq!(a.text().unwrap(), "ONE\ntwo\nTHREE\n");
        // And further edits continue normally from the merged state.
        let now = a.heads();
        a.ingest_from("ONE\ntwo\nTHREE\nfour\n", &now, later(), 0).unwrap();
        assert_eq!(a.text().unwrap(), "ONE\ntwo\nTHREE\nfour\n");
    }

    #[test]
    fn an_edit_from_a_base_older_than_our_own_change_neither_doubles_it_nor_changes_actor() {
        // Found by the simulator (seed 4): the index was persisted before a crash, older
        // than the documents, so the file's base lacked our own last edit.
        let mut a = FileDoc::create(actor(1), "one\n", 0).unwrap();
        let old_base = a.heads();
        a.ingest("one\ntwo\n", later(), 0).unwrap(); // our edit, persisted, never indexed
        let mut b = FileDoc::from_doc(AutoCommit::load(&a.doc_mut().save()).unwrap().with_actor(actor(2)));
        b.ingest("zero\none\ntwo\n", later(), 0).unwrap();
        a.doc_mut().merge(b.doc_mut()).unwrap();
        // The file holds our edit and one more line, typed against the old base.
        assert!(a.ingest_from("one\ntwo\nthree\n", &old_base, later(), 0).unwrap());
        assert_eq!(a.text().unwrap(), "zero\none\ntwo\nthree\n", "no line applied twice");
        let actors: std::collections::BTreeSet<ActorId> =
            a.doc_mut().get_changes(&[]).iter().map(|c| c.actor_id().clone()).collect();
        assert_eq!(actors, [actor(1), actor(2)].into_iter().collect(), "no derived actor");
    }

    #[test]
    fn empty_doc_is_not_ready_until_synced() {
        let mut a = FileDoc::create(actor(1), "hi", 0).unwrap();
        let mut b = FileDoc::from_doc(AutoCommit::new().with_actor(actor(2)));
        assert!(!b.is_ready());
        b.doc_mut().load_incremental(&a.doc_mut().save()).unwrap();
        assert_eq!(b.text().as_deref(), Some("hi"));
    }
}
