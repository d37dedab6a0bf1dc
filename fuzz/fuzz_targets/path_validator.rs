//! A name from a peer -> accepted or not as one path component on disk.
//!
//! Invariant: an accepted name is one normal component: not empty, not `.` or `..`, no
//! `/`, no NUL, and joined under a root it names a direct child of that root.
#![no_main]

use std::ffi::OsStr;
use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use teatime_crdt::path::is_valid_name;

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else { return };
    if !is_valid_name(name) {
        return;
    }
    assert!(!name.is_empty() && name != "." && name != "..", "accepted {name:?}");
    assert!(!name.contains('/') && !name.contains('\0'), "accepted {name:?}");
    let root = Path::new("/fuzz-root");
    let joined = root.join(name);
    assert_eq!(joined.parent(), Some(root), "{name:?} leaves its directory");
    let below: Vec<Component<'_>> = joined.strip_prefix(root).expect("under the root").components().collect();
    assert!(
        matches!(below.as_slice(), [Component::Normal(n)] if *n == OsStr::new(name)),
        "{name:?} is not one normal component: {below:?}"
    );
});
