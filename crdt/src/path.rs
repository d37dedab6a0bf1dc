//! Which names may appear on disk. Every name that comes from a peer passes through
//! [`is_valid_name`] before [`crate::tree::render`] gives it a path, so a hostile entry
//! can never name something outside the folder or inside teatime's own state.

/// The folder's state directory, at the folder root. Never synced, never written by peers.
pub const STATE_DIR: &str = ".teatime";

/// Prefix of teatime's temporary files (atomic writes). Reserved: never synced, and a
/// peer may not name a file with it.
pub const TEMP_PREFIX: &str = ".teatime-tmp";

/// Longest file name most file systems accept, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// Whether `name` is acceptable as one path component from a peer: not empty, not `.`
/// or `..`, no separator, no NUL or control character, at most [`MAX_NAME_BYTES`], not
/// teatime's state directory nor a temp-file name.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= MAX_NAME_BYTES
        && name != STATE_DIR
        && !name.starts_with(TEMP_PREFIX)
        && !name.chars().any(|c| c == '/' || c == '\\' || c.is_control())
}

/// Whether a local relative path (components joined by `/`) belongs to teatime itself
/// and must never be scanned or synced.
pub fn is_reserved_local(rel: &str) -> bool {
    let first = rel.split('/').next().unwrap_or("");
    first == STATE_DIR || rel.rsplit('/').next().unwrap_or("").starts_with(TEMP_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a\\b",
            "x\0y",
            "tab\there",
            "\u{7f}",
            ".teatime",
            ".teatime-tmp.123",
            &"x".repeat(256),
        ] {
            assert!(!is_valid_name(bad), "{bad:?} accepted");
        }
        for good in ["notes.md", "café", "日本語.txt", ".hidden", "a b", "..x"] {
            assert!(is_valid_name(good), "{good:?} refused");
        }
    }

    #[test]
    fn state_and_temp_paths_are_reserved() {
        assert!(is_reserved_local(".teatime/state.redb"));
        assert!(is_reserved_local("dir/.teatime-tmp.abc"));
        assert!(!is_reserved_local("dir/.teatime/ok"));
        assert!(!is_reserved_local("notes.md"));
    }
}
