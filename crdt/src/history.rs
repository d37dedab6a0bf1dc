//! A text file's history, read from its document: every change with its author, time
//! and size, which changes were concurrent (merged by Automerge, not by anyone), the file
//! as it was at any point, and who last wrote each line.
//!
//! Changes are visited in causal order (every change after the ones it depends on). The
//! state after the first `i` changes is the document at the heads of that prefix, so the
//! effect of change `i` *as merged* is the diff between two consecutive prefix states:
//! that is what blame replays, and why it is right across concurrent edits too.

use std::collections::{BTreeSet, HashSet};

use automerge::{ActorId, ChangeHash, PatchAction};

use crate::FileDoc;

/// One change to a text file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    /// The change.
    pub hash: ChangeHash,
    /// Who wrote it (an Automerge actor; the folder document maps it to a member).
    pub actor: ActorId,
    /// When, ms since the epoch, by its author's clock (0: unknown).
    pub time_ms: i64,
    /// Lines added and removed by it, against the version it was made on.
    pub added: usize,
    /// Lines removed.
    pub removed: usize,
    /// Changes made concurrently with it (neither had seen the other): Automerge merged
    /// them.
    pub concurrent_with: Vec<ChangeHash>,
}

/// The file's changes, oldest first (causal order).
pub fn changes(file: &mut FileDoc) -> Vec<FileChange> {
    let all = file.doc_mut().get_changes(&[]);
    let mut out = Vec::with_capacity(all.len());
    // Ancestors of each change, to tell concurrent changes apart (sets of indices).
    let index: std::collections::HashMap<ChangeHash, usize> =
        all.iter().enumerate().map(|(i, c)| (c.hash(), i)).collect();
    let mut ancestors: Vec<HashSet<usize>> = Vec::with_capacity(all.len());
    for c in &all {
        let mut a = HashSet::new();
        for d in c.deps() {
            if let Some(&j) = index.get(d) {
                a.insert(j);
                a.extend(ancestors[j].iter().copied());
            }
        }
        ancestors.push(a);
    }
    for (i, c) in all.iter().enumerate() {
        let before = file.text_at(c.deps()).unwrap_or_default();
        let after = file.text_at(&[c.hash()]).unwrap_or_default();
        let (added, removed) = line_counts(&before, &after);
        let concurrent_with = (0..all.len())
            .filter(|&j| j != i && !ancestors[i].contains(&j) && !ancestors[j].contains(&i))
            .map(|j| all[j].hash())
            .collect();
        out.push(FileChange {
            hash: c.hash(),
            actor: c.actor_id().clone(),
            time_ms: c.timestamp(),
            added,
            removed,
            concurrent_with,
        });
    }
    out
}

fn line_counts(before: &str, after: &str) -> (usize, usize) {
    let diff = similar::TextDiff::from_lines(before, after);
    let mut added = 0;
    let mut removed = 0;
    for change in diff.iter_all_changes() {
        match change.tag() {
            similar::ChangeTag::Insert => added += 1,
            similar::ChangeTag::Delete => removed += 1,
            similar::ChangeTag::Equal => {}
        }
    }
    (added, removed)
}

/// A unified diff between two versions of a text, headed by their labels.
pub fn unified_diff(old: &str, new: &str, old_label: &str, new_label: &str) -> String {
    similar::TextDiff::from_lines(old, new).unified_diff().header(old_label, new_label).to_string()
}

/// The heads of the changes made at or before `time_ms`: the file as it stood then (by
/// its authors' clocks).
pub fn heads_at_time(file: &mut FileDoc, time_ms: i64) -> Vec<ChangeHash> {
    let all = file.doc_mut().get_changes(&[]);
    let kept: Vec<_> = all.iter().filter(|c| c.timestamp() <= time_ms).collect();
    let kept_hashes: BTreeSet<ChangeHash> = kept.iter().map(|c| c.hash()).collect();
    // A change kept whose dependency was not (a clock that ran behind) keeps that too:
    // heads must name a consistent state.
    let depended: HashSet<ChangeHash> = kept.iter().flat_map(|c| c.deps().iter().copied()).collect();
    kept_hashes.into_iter().filter(|h| !depended.contains(h)).collect()
}

/// The change whose hash starts with `prefix` (hex), if exactly one does.
pub fn find_change(file: &mut FileDoc, prefix: &str) -> Option<ChangeHash> {
    let prefix = prefix.to_ascii_lowercase();
    let found: Vec<ChangeHash> = file
        .doc_mut()
        .get_changes(&[])
        .iter()
        .map(|c| c.hash())
        .filter(|h| h.to_string().starts_with(&prefix))
        .collect();
    match found.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// For each line of the current text, the change that last wrote any of its characters.
pub fn blame(file: &mut FileDoc) -> Vec<(String, Option<ChangeHash>)> {
    let Some(text) = file.text() else { return vec![] };
    let all = file.doc_mut().get_changes(&[]);
    // Who wrote each character (code point) of the text as it stands after each prefix.
    let mut by: Vec<Option<ChangeHash>> = Vec::new();
    let mut heads: Vec<ChangeHash> = Vec::new();
    for c in &all {
        let mut next: Vec<ChangeHash> = heads.iter().filter(|h| !c.deps().contains(h)).copied().collect();
        next.push(c.hash());
        for patch in file.doc_mut().diff(&heads, &next) {
            match patch.action {
                PatchAction::SpliceText { index, value, .. } => {
                    let n = value.make_string().chars().count();
                    let at = index.min(by.len());
                    by.splice(at..at, std::iter::repeat_n(Some(c.hash()), n));
                }
                PatchAction::DeleteSeq { index, length } => {
                    let at = index.min(by.len());
                    by.drain(at..(at + length).min(by.len()));
                }
                _ => {}
            }
        }
        heads = next;
    }
    // "Last" is causal, never the wall clock a change claims (a peer whose clock is days
    // behind must still get its edit of a line attributed): a change is deeper than every
    // change it has seen; concurrent ones are ordered by hash, the same on every peer.
    let mut depth: std::collections::HashMap<ChangeHash, u64> = std::collections::HashMap::new();
    for c in &all {
        let d = c.deps().iter().filter_map(|d| depth.get(d)).max().map_or(0, |d| d + 1);
        depth.insert(c.hash(), d);
    }
    let mut out = Vec::new();
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let n = line.chars().count();
        let writer = by
            .get(pos..(pos + n).min(by.len()))
            .unwrap_or_default()
            .iter()
            .flatten()
            .max_by_key(|h| (depth.get(h).copied().unwrap_or(0), **h))
            .copied();
        out.push((line.trim_end_matches('\n').to_string(), writer));
        pos += n;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use automerge::ActorId;

    use super::*;

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn log_blame_and_time_travel_across_concurrent_edits() {
        let mut a = FileDoc::create(ActorId::from(&[1u8][..]), "one\ntwo\nthree\n", 1_000).unwrap();
        let mut b = FileDoc::from_doc(a.doc_mut().fork().with_actor(ActorId::from(&[2u8][..])));
        a.ingest("ONE\ntwo\nthree\n", later(), 2_000).unwrap();
        b.ingest("one\ntwo\nthree\nfour\n", later(), 3_000).unwrap();
        a.doc_mut().merge(b.doc_mut()).unwrap();
        assert_eq!(a.text().unwrap(), "ONE\ntwo\nthree\nfour\n");

        let log = changes(&mut a);
        assert_eq!(log.len(), 3);
        assert_eq!((log[0].added, log[0].removed, log[0].time_ms), (3, 0, 1_000));
        assert!(log[0].concurrent_with.is_empty());
        let edit_a = log.iter().find(|c| c.time_ms == 2_000).unwrap();
        let edit_b = log.iter().find(|c| c.time_ms == 3_000).unwrap();
        assert_eq!((edit_a.added, edit_a.removed), (1, 1));
        assert_eq!((edit_b.added, edit_b.removed), (1, 0));
        assert_eq!(edit_a.concurrent_with, vec![edit_b.hash]);

        let blamed = blame(&mut a);
        let who: Vec<(&str, i64)> = blamed
            .iter()
            .map(|(l, h)| (l.as_str(), log.iter().find(|c| Some(c.hash) == *h).unwrap().time_ms))
            .collect();
        assert_eq!(who, [("ONE", 2_000), ("two", 1_000), ("three", 1_000), ("four", 3_000)]);

        let at = heads_at_time(&mut a, 2_500);
        assert_eq!(a.text_at(&at).unwrap(), "ONE\ntwo\nthree\n");
        let prefix = &edit_b.hash.to_string()[..10];
        let h = find_change(&mut a, prefix).unwrap();
        assert_eq!(a.text_at(&[h]).unwrap(), "one\ntwo\nthree\nfour\n");
    }

    #[test]
    fn blame_follows_causality_not_a_skewed_clock() {
        // The creator's clock is days ahead of the editor's: the edit still wins its line.
        let mut a = FileDoc::create(ActorId::from(&[1u8][..]), "one\ntwo\n", 900_000_000).unwrap();
        let mut b = FileDoc::from_doc(a.doc_mut().fork().with_actor(ActorId::from(&[2u8][..])));
        b.ingest("one\ntwo, edited\n", later(), 1_000).unwrap();
        let edit = b.heads()[0];
        let blamed = blame(&mut b);
        assert_eq!(blamed[1], ("two, edited".to_string(), Some(edit)));
        assert_ne!(blamed[0].1, Some(edit));
    }
}
