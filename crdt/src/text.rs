//! Turning "the file now holds this" into the few splices that produce it.
//!
//! Automerge's own `update_text` diffs with no time limit (a 50k-character rewrite took
//! 14 s in our measurements), so we diff ourselves: strip the common prefix and suffix,
//! diff the middle by lines, then by characters inside each changed hunk, all under a
//! deadline. Past the deadline `similar` returns a coarser (still correct) diff, so the
//! worst case is a bigger splice, never a stall.
//!
//! Positions are Unicode code points, Automerge's default text encoding.

use std::time::Instant;

use similar::{Algorithm, DiffOp, TextDiff};

/// Character diffs inside a changed hunk only pay off for hunks this small; larger
/// hunks are replaced whole (a rewrite of a big block is what the user did anyway).
const MAX_CHAR_DIFF_HUNK_CHARS: usize = 16 * 1024;

/// One edit of a text: at `pos` (code points, in the *old* text), delete `delete`
/// code points and insert `insert`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splice {
    /// Where the edit starts, in code points of the old text.
    pub pos: usize,
    /// How many code points to delete.
    pub delete: usize,
    /// What to insert.
    pub insert: String,
}

/// The splices that turn `old` into `new`, in ascending `pos` order, positions relative
/// to `old`. Apply them from last to first (see [`apply_splices`]) so that each
/// position stays valid.
pub fn diff_splices(old: &str, new: &str, deadline: Instant) -> Vec<Splice> {
    if old == new {
        return Vec::new();
    }
    let (prefix_bytes, prefix_chars) = common_prefix(old, new);
    let (old_rest, new_rest) = (&old[prefix_bytes..], &new[prefix_bytes..]);
    let suffix_bytes = common_suffix(old_rest, new_rest);
    let old_mid = &old_rest[..old_rest.len() - suffix_bytes];
    let new_mid = &new_rest[..new_rest.len() - suffix_bytes];

    let mut out = Vec::new();
    if old_mid.is_empty() || new_mid.is_empty() || !(old_mid.contains('\n') || new_mid.contains('\n')) {
        diff_chars_into(old_mid, new_mid, prefix_chars, deadline, &mut out);
        return out;
    }

    let lines =
        TextDiff::configure().algorithm(Algorithm::Myers).deadline(deadline).diff_lines(old_mid, new_mid);
    let old_lines: Vec<&str> = lines.iter_old_slices().collect();
    let new_lines: Vec<&str> = lines.iter_new_slices().collect();
    // Code-point offset of each old line start, relative to old_mid.
    let mut old_line_pos = Vec::with_capacity(old_lines.len() + 1);
    let mut acc = 0usize;
    for line in &old_lines {
        old_line_pos.push(acc);
        acc += line.chars().count();
    }
    old_line_pos.push(acc);

    for op in lines.ops() {
        let (old_range, new_range) = match *op {
            DiffOp::Equal { .. } => continue,
            DiffOp::Delete { old_index, old_len, new_index } => {
                (old_index..old_index + old_len, new_index..new_index)
            }
            DiffOp::Insert { old_index, new_index, new_len } => {
                (old_index..old_index, new_index..new_index + new_len)
            }
            DiffOp::Replace { old_index, old_len, new_index, new_len } => {
                (old_index..old_index + old_len, new_index..new_index + new_len)
            }
        };
        let old_hunk: String = old_lines[old_range.clone()].concat();
        let new_hunk: String = new_lines[new_range].concat();
        let base = prefix_chars + old_line_pos[old_range.start];
        diff_chars_into(&old_hunk, &new_hunk, base, deadline, &mut out);
    }
    out
}

/// Diff two hunks by characters when they are small, else replace the hunk whole.
fn diff_chars_into(old: &str, new: &str, base: usize, deadline: Instant, out: &mut Vec<Splice>) {
    let old_chars = old.chars().count();
    if old.is_empty() || new.is_empty() || old_chars + new.len() > MAX_CHAR_DIFF_HUNK_CHARS {
        out.push(Splice { pos: base, delete: old_chars, insert: new.to_string() });
        return;
    }
    let chars = TextDiff::configure().algorithm(Algorithm::Myers).deadline(deadline).diff_chars(old, new);
    let new_slices: Vec<&str> = chars.iter_new_slices().collect();
    let mut old_pos = base;
    let mut pending: Option<Splice> = None;
    for op in chars.ops() {
        match *op {
            DiffOp::Equal { len, .. } => {
                out.extend(pending.take());
                old_pos += len;
            }
            DiffOp::Delete { old_len, .. } => {
                let s = pending.get_or_insert(Splice { pos: old_pos, delete: 0, insert: String::new() });
                s.delete += old_len;
                old_pos += old_len;
            }
            DiffOp::Insert { new_index, new_len, .. } => {
                let s = pending.get_or_insert(Splice { pos: old_pos, delete: 0, insert: String::new() });
                s.insert.extend(new_slices[new_index..new_index + new_len].iter().copied());
            }
            DiffOp::Replace { old_len, new_index, new_len, .. } => {
                let s = pending.get_or_insert(Splice { pos: old_pos, delete: 0, insert: String::new() });
                s.delete += old_len;
                s.insert.extend(new_slices[new_index..new_index + new_len].iter().copied());
                old_pos += old_len;
            }
        }
    }
    out.extend(pending);
}

/// Applies splices from [`diff_splices`] to a `String` (the oracle used by tests, and a
/// reference for how a document applies them).
pub fn apply_splices(text: &str, splices: &[Splice]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for s in splices.iter().rev() {
        chars.splice(s.pos..s.pos + s.delete, s.insert.chars());
    }
    chars.into_iter().collect()
}

/// Length in bytes and in code points of the longest common prefix.
fn common_prefix(a: &str, b: &str) -> (usize, usize) {
    let mut bytes = 0;
    let mut chars = 0;
    for (ca, cb) in a.chars().zip(b.chars()) {
        if ca != cb {
            break;
        }
        bytes += ca.len_utf8();
        chars += 1;
    }
    (bytes, chars)
}

/// Length in bytes of the longest common suffix.
fn common_suffix(a: &str, b: &str) -> usize {
    a.chars().rev().zip(b.chars().rev()).take_while(|(ca, cb)| ca == cb).map(|(c, _)| c.len_utf8()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn one_line_edit_is_one_small_splice() {
        let old = "alpha\nbeta\ngamma\n";
        let new = "alpha\nbeta two\ngamma\n";
        let s = diff_splices(old, new, later());
        assert_eq!(s, vec![Splice { pos: 10, delete: 0, insert: " two".into() }]);
        assert_eq!(apply_splices(old, &s), new);
    }

    #[test]
    fn crlf_bom_and_missing_newline_survive() {
        let old = "\u{feff}a\r\nb\r\nc";
        let new = "\u{feff}a\r\nB\r\nc\r\nd";
        assert_eq!(apply_splices(old, &diff_splices(old, new, later())), new);
    }

    #[test]
    fn expired_deadline_still_gives_a_correct_diff() {
        let old: String = (0..2000).map(|i| format!("line {i}\n")).collect();
        let new: String = (0..2000).map(|i| format!("line {}\n", i * 7 % 1999)).collect();
        let s = diff_splices(&old, &new, Instant::now());
        assert_eq!(apply_splices(&old, &s), new);
    }

    proptest! {
        #[test]
        fn splices_reproduce_the_new_text(
            old in "(\\PC|\r|\n){0,200}",
            new in "(\\PC|\r|\n){0,200}",
        ) {
            let s = diff_splices(&old, &new, later());
            prop_assert_eq!(apply_splices(&old, &s), new);
            for w in s.windows(2) {
                prop_assert!(w[0].pos + w[0].delete <= w[1].pos);
            }
        }
    }
}
