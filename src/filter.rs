//! Which paths of the folder are synced on this peer.
//!
//! Three layers, first match wins:
//!
//! 1. built-in names that are never synced: teatime's state and temp files, `.git`, editors'
//!    swap, backup and lock files ([`is_ignored_name`]);
//! 2. `.teatime/ignore`: this peer's own rules, never synced;
//! 3. `.sync-ignore` files anywhere in the folder (synced like any file, so every peer ignores
//!    the same things), with gitignore semantics: a file's patterns are relative to its
//!    directory, a deeper file overrides a shallower one, `!pattern` re-includes, and
//!    nothing below an ignored directory can be re-included.
//!
//! In whitelist mode (a per-peer setting) only tracked paths, everything below them and the
//! directories that lead to them are synced.
//!
//! An excluded path is invisible in both directions: local changes there are not published,
//! and remote changes there are not written. Nothing is ever deleted because it became
//! excluded: a file that becomes ignored simply stops syncing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use teatime_crdt::path::{STATE_DIR, TEMP_PREFIX};

use crate::scan::{is_within, join};

/// The synced ignore file's name.
pub const SYNC_IGNORE: &str = ".sync-ignore";
/// The local-only ignore file, relative to the folder root (inside the state directory).
pub const LOCAL_IGNORE: &str = ".teatime/ignore";

/// Names teatime never syncs: its own state and temp files, `.git`, and the swap, backup
/// and temp files editors write next to the real file.
pub fn is_ignored_name(name: &str, at_root: bool) -> bool {
    (at_root && name == STATE_DIR)
        || name == ".git"
        || name.starts_with(TEMP_PREFIX)
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.ends_with('~')
        || name.starts_with(".#")
        || name == "4913"
        || name.ends_with(".tmp")
}

/// Whether a relative path is ignored (any of its components is).
pub fn is_ignored_path(rel: &str) -> bool {
    rel.split('/').enumerate().any(|(i, c)| is_ignored_name(c, i == 0))
}

/// The rules of one folder on this peer.
#[derive(Default)]
pub struct Filter {
    root: PathBuf,
    /// `.sync-ignore` matchers by the directory holding them (`""`: the root).
    synced: BTreeMap<String, Gitignore>,
    local: Option<Gitignore>,
    /// Whitelist mode: the tracked paths.
    tracked: Option<BTreeSet<String>>,
    /// Lines that could not be parsed, for the log.
    pub problems: Vec<String>,
    /// The rule files read, with their metadata then: a scan checks them first, so a
    /// rule written just before the files it excludes is in force when they are seen.
    read: Vec<(PathBuf, Option<Fingerprint>)>,
}

impl Filter {
    /// Reads every rule file under `root`. `tracked` is the whitelist (`None`: sync all).
    pub fn load(root: &Path, tracked: Option<BTreeSet<String>>) -> Filter {
        let mut f = Filter { root: root.to_path_buf(), tracked, ..Filter::default() };
        let local = root.join(LOCAL_IGNORE);
        f.read.push((local.clone(), fingerprint(&local)));
        if local.is_file() {
            f.local = f.build(root, &local);
        }
        f.load_dir("");
        f
    }

    /// This peer's own exclusions, as announced to peers: the local ignore file's text and
    /// the whitelist.
    pub fn local_rules(&self) -> (String, Option<BTreeSet<String>>) {
        let text = fs::read_to_string(self.root.join(LOCAL_IGNORE)).unwrap_or_default();
        (text, self.tracked.clone())
    }

    /// What another peer syncs: the same synced rules, with its own local rules and
    /// whitelist (as it announced them).
    pub fn for_peer(&self, local_text: &str, tracked: Option<BTreeSet<String>>) -> Filter {
        let mut b = GitignoreBuilder::new(&self.root);
        for line in local_text.lines() {
            // A line another peer's matcher accepted but ours does not is skipped.
            let _ = b.add_line(None, line);
        }
        Filter {
            root: self.root.clone(),
            synced: self.synced.clone(),
            local: b.build().ok(),
            tracked,
            problems: Vec::new(),
            read: Vec::new(),
        }
    }

    /// Whether a rule file read changed since (or a new one appeared where one was
    /// missing).
    pub fn is_stale(&self) -> bool {
        self.read.iter().any(|(path, seen)| fingerprint(path) != *seen)
    }

    fn build(&mut self, dir: &Path, file: &Path) -> Option<Gitignore> {
        let mut b = GitignoreBuilder::new(dir);
        if let Some(e) = b.add(file) {
            self.problems.push(e.to_string());
        }
        match b.build() {
            Ok(g) => Some(g),
            Err(e) => {
                self.problems.push(e.to_string());
                None
            }
        }
    }

    /// Finds `.sync-ignore` files top-down, skipping directories already ignored (git does
    /// not read ignore files inside ignored directories either).
    fn load_dir(&mut self, rel: &str) {
        let abs = self.root.join(rel);
        let file = abs.join(SYNC_IGNORE);
        self.read.push((file.clone(), fingerprint(&file)));
        if fs::symlink_metadata(&file).is_ok_and(|m| m.is_file())
            && let Some(g) = self.build(&abs, &file)
        {
            self.synced.insert(rel.to_string(), g);
        }
        let Ok(rd) = fs::read_dir(&abs) else { return };
        let mut subdirs: Vec<String> = rd
            .flatten()
            .filter(|d| d.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|d| d.file_name().to_str().map(str::to_string))
            .filter(|name| !is_ignored_name(name, rel.is_empty()))
            .collect();
        subdirs.sort();
        for name in subdirs {
            let child = join(rel, &name);
            if !self.is_ignored(&child, true) {
                self.load_dir(&child);
            }
        }
    }

    /// Whether `rel` is synced on this peer.
    pub fn excludes(&self, rel: &str, is_dir: bool) -> bool {
        self.is_ignored(rel, is_dir) || !self.is_tracked(rel, is_dir)
    }

    /// Whether ignore rules (built-in, local or synced) exclude `rel`.
    pub fn is_ignored(&self, rel: &str, is_dir: bool) -> bool {
        if rel.is_empty() {
            return false;
        }
        if is_ignored_path(rel) {
            return true;
        }
        // Ancestors first: nothing below an ignored directory can be re-included.
        let mut end = 0;
        loop {
            let next = rel[end..].find('/').map(|i| end + i);
            let (prefix, prefix_is_dir) = match next {
                Some(i) => (&rel[..i], true),
                None => (rel, is_dir),
            };
            if self.rule(prefix, prefix_is_dir) == Some(true) {
                return true;
            }
            match next {
                Some(i) => end = i + 1,
                None => return false,
            }
        }
    }

    /// What the rules say of `rel` itself: `Some(true)` ignored, `Some(false)` re-included.
    fn rule(&self, rel: &str, is_dir: bool) -> Option<bool> {
        let abs = self.root.join(rel);
        let verdict = |g: &Gitignore| {
            let m = g.matched(&abs, is_dir);
            if m.is_ignore() {
                Some(true)
            } else if m.is_whitelist() {
                Some(false)
            } else {
                None
            }
        };
        if let Some(v) = self.local.as_ref().and_then(verdict) {
            return Some(v);
        }
        // Deepest file first (BTreeMap order puts "a" before "a/b": iterate backwards).
        self.synced
            .iter()
            .rev()
            .filter(|(dir, _)| dir.is_empty() || (is_within(rel, dir) && rel != dir.as_str()))
            .find_map(|(_, g)| verdict(g))
    }

    /// Whitelist mode: whether `rel` is tracked, below a tracked path, or a directory on
    /// the way to one.
    fn is_tracked(&self, rel: &str, is_dir: bool) -> bool {
        let Some(tracked) = &self.tracked else { return true };
        tracked.iter().any(|t| is_within(rel, t) || (is_dir && is_within(t, rel)))
    }

    /// Whether a change at `rel` (a path the scan or a peer touched) changes the rules.
    pub fn is_rule_file(rel: &str) -> bool {
        rel == SYNC_IGNORE || rel == LOCAL_IGNORE || rel.ends_with(&format!("/{SYNC_IGNORE}"))
    }
}

/// Size and modification time (s, ns) of a file.
type Fingerprint = (u64, i64, i64);

/// The [`Fingerprint`] of a file (`None`: absent).
fn fingerprint(path: &Path) -> Option<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path).ok().map(|m| (m.size(), m.mtime(), m.mtime_nsec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitignore_semantics_nested_files_and_whitelist() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("src/gen")).unwrap();
        fs::create_dir_all(root.join("build")).unwrap();
        fs::create_dir_all(root.join(STATE_DIR)).unwrap();
        fs::write(root.join(SYNC_IGNORE), "*.log\nbuild/\n!keep.log\n").unwrap();
        fs::write(root.join("src").join(SYNC_IGNORE), "gen/\n!important.log\n").unwrap();
        fs::write(root.join(LOCAL_IGNORE), "private.md\n").unwrap();
        let f = Filter::load(root, None);
        assert!(f.problems.is_empty(), "{:?}", f.problems);
        assert!(f.excludes("a.log", false));
        assert!(!f.excludes("keep.log", false));
        assert!(f.excludes("build", true));
        assert!(f.excludes("build/x.md", false));
        assert!(f.excludes("src/gen/x.rs", false));
        assert!(!f.excludes("src/important.log", false), "deeper file re-includes");
        assert!(f.excludes("src/other.log", false));
        assert!(f.excludes("private.md", false));
        assert!(f.excludes("notes/x.swp", false));
        assert!(f.excludes(".git/config", false));
        assert!(!f.excludes("notes/a.md", false));
        assert!(!f.excludes(SYNC_IGNORE, false));

        let f = Filter::load(root, Some(["docs/a".to_string()].into()));
        assert!(!f.excludes("docs", true), "a directory on the way to a tracked path");
        assert!(!f.excludes("docs/a", true));
        assert!(!f.excludes("docs/a/b.md", false));
        assert!(f.excludes("docs/b.md", false));
        assert!(f.excludes("other.md", false));
    }
}
