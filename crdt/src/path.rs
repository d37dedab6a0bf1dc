//! Which names and paths may reach disk: the one validator every peer-supplied name
//! passes before it becomes a path.
//!
//! [`crate::tree::render`] checks every entry's name with [`check_name`] (and the joined
//! path's length) before it gives the entry a path, so a hostile entry can never name
//! something outside the folder, inside teatime's own state, or a twin of either. The local
//! scan uses the same checks, so a name that peers would refuse is never published.
//!
//! A name is refused when it is:
//!
//! - empty, `.` or `..`, or holds a separator (`/` or `\`);
//! - longer than [`MAX_NAME_BYTES`] (and a path longer than [`MAX_PATH_BYTES`], or
//!   deeper than [`MAX_DEPTH`]: a peer nesting directories thousands deep would make every
//!   walk, index lookup and path resolution on every peer quadratic or worse);
//! - holding a control character (C0, C1, DEL, line and paragraph separators) or an
//!   invisible formatting character (bidi embeddings, overrides and isolates, zero-width
//!   space, word joiner, BOM, tags...; zero-width (non-)joiners stay: scripts and emoji
//!   need them);
//! - not in Unicode NFC (a decomposed twin of another name);
//! - Windows-hostile: a drive prefix (`C:`), a device name (`CON`, `nul.txt`, `COM1.md`,
//!   any case, any extension), a trailing dot or space;
//! - reserved: teatime's state directory [`STATE_DIR`], its temp prefix [`TEMP_PREFIX`],
//!   or `.git`.
//!
//! The syntactic checks run twice: on the name, and on its NFKC compatibility folding, so
//! fullwidth or leader-dot look-alikes (`．．`, `\u{2024}\u{2024}`, `a／b`) are refused like
//! what they fold to. Reserved names are compared case-insensitively, on that folding,
//! ignoring the zero-width joiners HFS+ ignores and anything after a `:` (an NTFS stream
//! of the name), so `.TEATIME`, `．teatime`, `.g\u{200c}it` and `.git::$INDEX_ALLOCATION`
//! are all refused.

use std::borrow::Cow;
use std::fmt;

use unicode_normalization::{UnicodeNormalization, is_nfc};

/// The folder's state directory, at the folder root. Never synced, never written by peers.
pub const STATE_DIR: &str = ".teatime";

/// Prefix of teatime's temporary files (atomic writes). Reserved: never synced, and a
/// peer may not name a file with it.
pub const TEMP_PREFIX: &str = ".teatime-tmp";

/// Git's directory: a peer planting hooks there would run code on the next checkout.
pub const GIT_DIR: &str = ".git";

/// Longest file name most file systems accept, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// Longest relative path accepted, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;

/// Most components a path may have. Real trees (even `node_modules`) stay far below.
pub const MAX_DEPTH: usize = 128;

/// Why a name or path may not reach disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refused {
    /// An empty name (or an empty component: `a//b`, a trailing `/`).
    Empty,
    /// `.` or `..`, or something that folds to one.
    DotName,
    /// A `/` or `\` inside a name, or something that folds to one.
    Separator,
    /// A path starting with `/`.
    Absolute,
    /// NUL, another control character, or a line or paragraph separator.
    ControlChar,
    /// An invisible formatting character: bidi controls, zero-width space, BOM, tags.
    FormatChar,
    /// Longer than [`MAX_NAME_BYTES`].
    NameTooLong,
    /// Longer than [`MAX_PATH_BYTES`].
    PathTooLong,
    /// More than [`MAX_DEPTH`] components.
    TooDeep,
    /// Not in Unicode NFC.
    NotNfc,
    /// A drive prefix such as `C:`.
    DrivePrefix,
    /// A Windows device name (`CON`, `NUL`, `COM1`...), with or without an extension.
    DeviceName,
    /// Ends in a dot or a space (Windows strips them: a twin of another name).
    TrailingDotOrSpace,
    /// teatime's state directory, a temp-file name, or `.git`, in any case or folding.
    Reserved,
}

impl Refused {
    /// A short reason, for logs and `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Empty => "empty name",
            Refused::DotName => "`.` or `..`",
            Refused::Separator => "path separator inside a name",
            Refused::Absolute => "absolute path",
            Refused::ControlChar => "control character in the name",
            Refused::FormatChar => "invisible formatting character (bidi or zero-width) in the name",
            Refused::NameTooLong => "name longer than 255 bytes",
            Refused::PathTooLong => "path longer than 4096 bytes",
            Refused::TooDeep => "path more than 128 directories deep",
            Refused::NotNfc => "name not in Unicode NFC",
            Refused::DrivePrefix => "drive prefix",
            Refused::DeviceName => "Windows device name",
            Refused::TrailingDotOrSpace => "trailing dot or space",
            Refused::Reserved => "reserved name (teatime state or temp file, .git)",
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for Refused {}

/// Checks one path component from a peer (or from the local disk, before publishing it).
pub fn check_name(name: &str) -> Result<(), Refused> {
    if name.is_empty() {
        return Err(Refused::Empty);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(Refused::NameTooLong);
    }
    check_chars(name)?;
    // ASCII is its own NFC and NFKC form: most names skip the tables.
    if !name.is_ascii() && !is_nfc(name) {
        return Err(Refused::NotNfc);
    }
    check_syntax(name)?;
    let folded: Cow<'_, str> = if name.is_ascii() { Cow::Borrowed(name) } else { name.nfkc().collect() };
    if folded != name {
        check_chars(&folded)?;
        check_syntax(&folded)?;
    }
    if is_reserved_key(&reserved_key(&folded)) {
        return Err(Refused::Reserved);
    }
    Ok(())
}

/// Checks a relative path of components joined by `/`.
pub fn check_path(path: &str) -> Result<(), Refused> {
    if path.is_empty() {
        return Err(Refused::Empty);
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(Refused::PathTooLong);
    }
    if path.starts_with('/') {
        return Err(Refused::Absolute);
    }
    if path.split('/').count() > MAX_DEPTH {
        return Err(Refused::TooDeep);
    }
    path.split('/').try_for_each(check_name)
}

/// Whether `name` is acceptable as one path component (see [`check_name`]).
pub fn is_valid_name(name: &str) -> bool {
    check_name(name).is_ok()
}

/// Whether a local relative path (components joined by `/`) belongs to teatime itself
/// and must never be scanned or synced.
pub fn is_reserved_local(rel: &str) -> bool {
    let first = rel.split('/').next().unwrap_or("");
    first == STATE_DIR || rel.rsplit('/').next().unwrap_or("").starts_with(TEMP_PREFIX)
}

fn check_chars(name: &str) -> Result<(), Refused> {
    for c in name.chars() {
        if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
            return Err(Refused::ControlChar);
        }
        if is_invisible_format(c) {
            return Err(Refused::FormatChar);
        }
    }
    Ok(())
}

/// Unicode format characters (category Cf) except the zero-width joiner and non-joiner,
/// which Arabic, Indic scripts and emoji sequences need.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{180E}'
            | '\u{200B}'
            | '\u{200E}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
    )
}

/// The checks on a name's shape, run on the name and on its NFKC folding.
fn check_syntax(name: &str) -> Result<(), Refused> {
    if name.contains(['/', '\\']) {
        return Err(Refused::Separator);
    }
    if name == "." || name == ".." {
        return Err(Refused::DotName);
    }
    let mut chars = name.chars();
    if let (Some(letter), Some(':')) = (chars.next(), chars.next())
        && letter.is_ascii_alphabetic()
    {
        return Err(Refused::DrivePrefix);
    }
    if name.ends_with(['.', ' ']) {
        return Err(Refused::TrailingDotOrSpace);
    }
    if is_device_name(name) {
        return Err(Refused::DeviceName);
    }
    Ok(())
}

/// What a case-insensitive file system (NTFS, APFS, HFS+) compares: the name folded to
/// one case, without the joiners HFS+ ignores, cut at an NTFS stream separator.
fn reserved_key(folded: &str) -> String {
    let stream_cut = folded.split(':').next().unwrap_or(folded);
    let visible: String = stream_cut.chars().filter(|c| !matches!(c, '\u{200C}' | '\u{200D}')).collect();
    visible.to_uppercase().to_lowercase().trim_end_matches(['.', ' ']).to_string()
}

fn is_reserved_key(key: &str) -> bool {
    key == STATE_DIR
        || key.starts_with(TEMP_PREFIX)
        || key == GIT_DIR
        // NTFS's 8.3 short name of `.git`.
        || key == "git~1"
}

/// `CON`, `PRN`, `AUX`, `NUL`, `COM0`-`COM9`, `LPT0`-`LPT9`, `CONIN$`, `CONOUT$`, in any
/// case, before any extension (Windows ignores what follows the first dot, and trailing
/// spaces before it).
fn is_device_name(name: &str) -> bool {
    let stem = name.split(['.', ':']).next().unwrap_or(name).trim_end_matches(' ').to_ascii_lowercase();
    match stem.as_str() {
        "con" | "prn" | "aux" | "nul" | "conin$" | "conout$" => true,
        s if s.len() == 4 && (s.starts_with("com") || s.starts_with("lpt")) => {
            s.as_bytes()[3].is_ascii_digit()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused_with_their_reason() {
        for (bad, why) in [
            ("", Refused::Empty),
            (".", Refused::DotName),
            ("..", Refused::DotName),
            ("\u{FF0E}\u{FF0E}", Refused::DotName),
            ("\u{2024}\u{2024}", Refused::DotName),
            ("a/b", Refused::Separator),
            ("a\\b", Refused::Separator),
            ("a\u{FF0F}b", Refused::Separator),
            ("x\0y", Refused::ControlChar),
            ("tab\there", Refused::ControlChar),
            ("\u{7f}", Refused::ControlChar),
            ("\u{85}", Refused::ControlChar),
            ("a\u{2028}b", Refused::ControlChar),
            ("evil\u{202E}txt.exe", Refused::FormatChar),
            ("zero\u{200B}width", Refused::FormatChar),
            ("\u{FEFF}bom", Refused::FormatChar),
            ("cafe\u{301}", Refused::NotNfc),
            ("C:", Refused::DrivePrefix),
            ("c:x", Refused::DrivePrefix),
            ("CON", Refused::DeviceName),
            ("nul.txt", Refused::DeviceName),
            ("COM1.md", Refused::DeviceName),
            ("lpt9", Refused::DeviceName),
            ("aux .c", Refused::DeviceName),
            ("COM\u{B9}", Refused::DeviceName),
            ("notes.", Refused::TrailingDotOrSpace),
            ("notes ", Refused::TrailingDotOrSpace),
            (".teatime", Refused::Reserved),
            (".TEATIME", Refused::Reserved),
            ("\u{FF0E}teatime", Refused::Reserved),
            (".teatime-tmp.123", Refused::Reserved),
            (".teatime-TMP.1", Refused::Reserved),
            (".git", Refused::Reserved),
            (".Git", Refused::Reserved),
            (".g\u{200C}it", Refused::Reserved),
            (".git::$INDEX_ALLOCATION", Refused::Reserved),
            ("GIT~1", Refused::Reserved),
            (&"x".repeat(256), Refused::NameTooLong),
        ] {
            assert_eq!(check_name(bad), Err(why), "{bad:?}");
        }
    }

    #[test]
    fn ordinary_names_are_accepted() {
        for good in [
            "notes.md",
            "café",
            "日本語.txt",
            ".hidden",
            "a b",
            "..x",
            ".gitignore",
            ".github",
            ".teatimes",
            "console.log",
            "com10",
            "Meeting 10:30.md",
            "नमस्ते",
            "👨\u{200D}👩\u{200D}👧.png",
            &"x".repeat(255),
        ] {
            assert_eq!(check_name(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn paths_are_checked_whole_and_by_component() {
        assert_eq!(check_path("a/b/c.md"), Ok(()));
        assert_eq!(check_path("/etc/passwd"), Err(Refused::Absolute));
        assert_eq!(check_path("a//b"), Err(Refused::Empty));
        assert_eq!(check_path("a/../../x"), Err(Refused::DotName));
        assert_eq!(check_path("docs/.git/hooks/post-checkout"), Err(Refused::Reserved));
        let long = vec!["d".repeat(200); 21].join("/");
        assert_eq!(check_path(&long), Err(Refused::PathTooLong));
        assert_eq!(check_path(&vec!["d"; MAX_DEPTH].join("/")), Ok(()));
        assert_eq!(check_path(&vec!["d"; MAX_DEPTH + 1].join("/")), Err(Refused::TooDeep));
    }

    /// `fixtures/hostile-paths.txt`: every path, except those through the symlink the
    /// end-to-end test plants, is refused whole; none is a valid single name.
    #[test]
    fn the_hostile_path_corpus_is_refused() {
        let corpus = include_str!("../../fixtures/hostile-paths.txt");
        let paths: Vec<String> = corpus
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("corpus line {l}: {e}")))
            .collect();
        assert!(paths.len() >= 200, "the corpus has only {} paths", paths.len());
        for path in &paths {
            assert!(!is_valid_name(path), "{path:?} accepted as a name");
            if path.starts_with("link-out/") {
                assert_eq!(check_path(path), Ok(()), "{path:?} should only be stopped by the file system");
            } else {
                assert!(check_path(path).is_err(), "{path:?} accepted as a path");
            }
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
