//! Fault injection for crash-consistency tests: `TEATIME_CRASH_AT=<point>[:<path>]` makes
//! the process abort (no unwinding, no cleanup: what a power cut or SIGKILL leaves) the
//! first time it reaches `<point>` with work on `<path>` (any path if none is given).
//! Always compiled in; when the variable is unset a point costs one atomic load.
//!
//! Points (in the order a flush reaches them):
//!
//! - `after-documents-persisted`: a commit of documents and the index rows recorded with
//!   them is durable; nothing written to the folder or sent yet. `<path>` matches an index
//!   row in the commit, or the indexed path of a document in it.
//! - `before-rename`: a batch of files' new contents are in their temp files and their
//!   write intents are committed; the targets are untouched. `<path>` matches any file
//!   of the batch.
//! - `after-materialise`: files are written; their index rows are not committed yet, and
//!   nothing has been sent.

use std::sync::OnceLock;

/// The named points (see the module doc).
pub const POINTS: [&str; 3] = [AFTER_DOCUMENTS_PERSISTED, BEFORE_RENAME, AFTER_MATERIALISE];
/// See the module doc.
pub const AFTER_DOCUMENTS_PERSISTED: &str = "after-documents-persisted";
/// See the module doc.
pub const BEFORE_RENAME: &str = "before-rename";
/// See the module doc.
pub const AFTER_MATERIALISE: &str = "after-materialise";

/// The point and path asked for, parsed once.
fn armed() -> Option<&'static (String, Option<String>)> {
    static ARMED: OnceLock<Option<(String, Option<String>)>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("TEATIME_CRASH_AT").ok().filter(|s| !s.is_empty())?;
            let (point, path) = match spec.split_once(':') {
                Some((point, path)) => (point.to_string(), Some(path.to_string())),
                None => (spec, None),
            };
            assert!(
                POINTS.contains(&point.as_str()),
                "TEATIME_CRASH_AT: unknown point {point:?} (one of {POINTS:?})"
            );
            Some((point, path))
        })
        .as_ref()
}

/// Aborts the process if `TEATIME_CRASH_AT` names `point` and one of `paths` (or no path).
pub fn point<'a>(point: &str, paths: impl IntoIterator<Item = &'a str>) {
    let Some((armed_point, armed_path)) = armed() else { return };
    if armed_point != point {
        return;
    }
    let hit = match armed_path {
        None => Some(String::new()),
        Some(want) => paths.into_iter().find(|p| p == want).map(|p| format!(" on {p:?}")),
    };
    if let Some(on) = hit {
        eprintln!("TEATIME_CRASH_AT: aborting at {point}{on}");
        std::process::abort();
    }
}
