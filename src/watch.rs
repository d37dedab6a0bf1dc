//! The file watcher: turns inotify events into scan hints for the replica.
//!
//! Events only say where to look ([`Scope`]); the scan decides what happened. Events in
//! teatime's own state directory and temp files are dropped here, so our own bookkeeping
//! never wakes the scanner. When the kernel queue overflowed (or notify asks for a
//! rescan) the whole folder is scanned.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::filter::{LOCAL_IGNORE, is_ignored_path};
use crate::replica::Event;
use crate::scan::Scope;

/// Watches `root` recursively until the returned watcher is dropped.
pub fn start(root: &Path, inbox: mpsc::Sender<Event>) -> Result<RecommendedWatcher> {
    let base: PathBuf = root.to_path_buf();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let scope = match res {
            Ok(ev) if ev.need_rescan() => Some(Scope::All),
            // Reads (ours included, while scanning) change nothing.
            Ok(ev) if matches!(ev.kind, notify::EventKind::Access(_)) => None,
            Ok(ev) => {
                let paths: BTreeSet<String> = ev.paths.iter().filter_map(|p| relative(&base, p)).collect();
                (!paths.is_empty()).then_some(Scope::Paths(paths))
            }
            Err(_) => Some(Scope::All),
        };
        if let Some(scope) = scope {
            // The replica may be shutting down; then nobody needs the hint.
            let _ = inbox.blocking_send(Event::Hint(scope));
        }
    })
    .context("starting the file watcher")?;
    watcher.watch(root, RecursiveMode::Recursive).with_context(|| format!("watching {}", root.display()))?;
    Ok(watcher)
}

/// The path relative to the folder root, `/`-joined; `None` for the root itself, paths
/// outside it and ignored paths. A non-UTF-8 name maps to its parent (scanned, reported).
fn relative(base: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(base).ok()?;
    let mut parts = Vec::new();
    for comp in rel.components() {
        match comp.as_os_str().to_str() {
            Some(s) => parts.push(s),
            None => break,
        }
    }
    let rel = parts.join("/");
    // The local ignore file lives in the state directory but changes what is synced.
    (!rel.is_empty() && (rel == LOCAL_IGNORE || !is_ignored_path(&rel))).then_some(rel)
}
