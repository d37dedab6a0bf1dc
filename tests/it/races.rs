//! Races on the folder tree, with real processes: one peer is stopped (SIGTERM) while the
//! race happens, acts on its folder offline or not, and is restarted with `sync`. Each test
//! ends with an exact check of every peer's folder, after a barrier written by every peer
//! (a late change, e.g. a conflict copy appearing after convergence, would show up by then).
//!
//! Stamps: an action is stamped with the time the file system gives it (a rename: the
//! inode's ctime; a creation: the mtime; a deletion: the directory's mtime), so what the
//! stopped peer did keeps its real time. [`let_stamps_differ`] separates two actions so
//! that the one made after it is clearly later.
//!
//! The expected outcomes are the table in `crdt/src/tree.rs` and the CLI contract of
//! `config`, `peers`, `conflicts` and `resolve`.

use std::collections::BTreeSet;
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{
    Peer, Tree, connected_pair, numbered_lines, one_file, put_dir, put_file, remove, replace_line, settle,
    wait_converged_to, wait_for,
};

/// More than the watcher's longest debounce (250 ms): an action made before this pause is
/// stamped before one made after it. A spacing of timestamps, never a wait for sync.
const STAMP_GAP: Duration = Duration::from_millis(300);

fn let_stamps_differ() {
    thread::sleep(STAMP_GAP);
}

/// No two paths on `peer`'s disk differ only in letter case.
fn assert_no_case_twins(peer: &Peer) {
    let mut seen = BTreeSet::new();
    for path in peer.tree().into_keys() {
        assert!(
            seen.insert(path.to_lowercase()),
            "{} has two paths differing only in case: {path:?}",
            peer.name
        );
    }
}

// ---------------------------------------------------------------------------
// The CLI: settings, members, conflicts

fn strategy(peer: &Peer) -> String {
    peer.cli_ok(&["config", peer.dir_arg(), "conflict-strategy"]).trim().to_owned()
}

/// Sets the strategy on `setter` and waits until every peer reports it.
fn set_strategy(setter: &Peer, all: &[&Peer], value: &str) {
    setter.cli_ok(&["config", setter.dir_arg(), "conflict-strategy", value]);
    for peer in all {
        wait_for(&format!("{} to report conflict-strategy {value}", peer.name), || {
            let got = strategy(peer);
            if got == value { Ok(()) } else { Err(format!("it reports {got:?}")) }
        });
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    id: String,
    name: String,
    role: String,
    tier: i64,
    me: bool,
}

fn field<'v>(obj: &'v Value, key: &str, raw: &Value) -> &'v Value {
    obj.get(key).unwrap_or_else(|| panic!("no {key:?} in {obj} (whole output: {raw})"))
}

fn str_field(obj: &Value, key: &str, raw: &Value) -> String {
    field(obj, key, raw)
        .as_str()
        .unwrap_or_else(|| panic!("{key:?} is not a string in {obj} (whole output: {raw})"))
        .to_owned()
}

fn array<'v>(value: &'v Value, what: &str) -> &'v Vec<Value> {
    value.as_array().unwrap_or_else(|| panic!("{what} should print a JSON array, got {value}"))
}

/// `teatime peers DIR --json`.
fn members(peer: &Peer) -> Vec<Member> {
    let raw = peer.cli_json(&["peers", peer.dir_arg(), "--json"]);
    array(&raw, "peers --json")
        .iter()
        .map(|m| Member {
            id: str_field(m, "id", &raw),
            name: str_field(m, "name", &raw),
            role: str_field(m, "role", &raw),
            tier: field(m, "tier", &raw)
                .as_i64()
                .unwrap_or_else(|| panic!("\"tier\" is not an integer in {m}")),
            me: field(m, "me", &raw).as_bool().unwrap_or_else(|| panic!("\"me\" is not a boolean in {m}")),
        })
        .collect()
}

/// Sets member `name`'s tier on `setter`, naming it by its full endpoint id, and waits
/// until every peer lists it. (By id because the one-letter names of the harness are also
/// hex digits: `set-tier a` is refused as ambiguous whenever another member's id starts
/// with `a`; name lookups are tested with names that are not hex.)
fn set_tier(setter: &Peer, all: &[&Peer], name: &str, tier: i64) {
    let listed = members(setter);
    let id = listed
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("{} lists no member named {name}: {listed:?}", setter.name))
        .id
        .clone();
    setter.cli_ok(&["peers", "set-tier", &id, &tier.to_string(), "--dir", setter.dir_arg()]);
    for peer in all {
        wait_tier(peer, name, tier);
    }
}

/// Waits until `peer` lists member `name` with `tier`.
fn wait_tier(peer: &Peer, name: &str, tier: i64) {
    wait_for(&format!("{} to list member {name} with tier {tier}", peer.name), || {
        let all = members(peer);
        if all.iter().any(|m| m.name == name && m.tier == tier) { Ok(()) } else { Err(format!("{all:?}")) }
    });
}

/// One pending conflict, as `teatime conflicts DIR --json` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    id: String,
    kind: String,
    path: String,
    options: Vec<String>,
}

fn conflicts(peer: &Peer) -> Vec<Pending> {
    let raw = peer.cli_json(&["conflicts", peer.dir_arg(), "--json"]);
    array(&raw, "conflicts --json")
        .iter()
        .map(|c| Pending {
            id: str_field(c, "id", &raw),
            kind: str_field(c, "kind", &raw),
            path: str_field(c, "path", &raw),
            options: array(field(c, "options", &raw), "\"options\"")
                .iter()
                .map(|o| o.as_str().unwrap_or_else(|| panic!("an option is not a string: {c}")).to_owned())
                .collect(),
        })
        .collect()
}

/// Waits until `peer` lists exactly one conflict, and returns it.
fn wait_one_conflict(peer: &Peer) -> Pending {
    wait_for(&format!("{} to list exactly one conflict", peer.name), || match &conflicts(peer)[..] {
        [one] => Ok(one.clone()),
        other => Err(format!("it lists {other:?}")),
    })
}

fn wait_no_conflicts(peer: &Peer) {
    wait_for(&format!("{} to list no conflicts", peer.name), || {
        let listed = conflicts(peer);
        if listed.is_empty() { Ok(()) } else { Err(format!("it lists {listed:?}")) }
    });
}

fn sorted(options: &[String]) -> Vec<String> {
    let mut v = options.to_vec();
    v.sort();
    v
}

// ---------------------------------------------------------------------------
// 1. rename vs rename

#[test]
fn rename_vs_rename_timestamp_the_later_offline_rename_wins() {
    let base = numbered_lines(5);
    let (a, mut b) = connected_pair(&one_file("notes.md", &base));

    b.stop();
    a.rename("notes.md", "by-a.md");
    let_stamps_differ();
    b.rename("notes.md", "by-b.md");
    b.sync();

    let mut expected = one_file("by-b.md", &base);
    settle(&[&a, &b], &mut expected);
}

#[test]
fn rename_vs_rename_timestamp_a_later_online_rename_beats_an_earlier_offline_one() {
    let base = numbered_lines(5);
    let (a, mut b) = connected_pair(&one_file("notes.md", &base));

    // B renames first, while stopped; A renames later, while running. B only records its
    // rename when it restarts, but the rename it records happened before A's.
    b.stop();
    b.rename("notes.md", "by-b.md");
    let_stamps_differ();
    a.rename("notes.md", "by-a.md");
    let_stamps_differ();
    b.sync();

    let mut expected = one_file("by-a.md", &base);
    settle(&[&a, &b], &mut expected);
}

#[test]
fn rename_vs_rename_priority_the_higher_tier_wins_though_earlier() {
    let base = numbered_lines(5);
    let (a, mut b) = connected_pair(&one_file("notes.md", &base));
    set_strategy(&a, &[&a, &b], "priority");
    // Set on B; both must see it before the race.
    set_tier(&b, &[&a, &b], "a", 5);

    b.stop();
    a.rename("notes.md", "by-a.md");
    let_stamps_differ();
    // Later, so it would win under `timestamp`; A's tier is higher.
    b.rename("notes.md", "by-b.md");
    b.sync();

    let mut expected = one_file("by-a.md", &base);
    settle(&[&a, &b], &mut expected);
    assert_eq!(strategy(&b), "priority");
}

// ---------------------------------------------------------------------------
// 2. rename vs edit

#[test]
fn rename_vs_edit_an_offline_edit_follows_the_file_to_its_new_name() {
    let base = numbered_lines(10);
    let (a, mut b) = connected_pair(&one_file("notes.md", &base));

    b.stop();
    a.rename("notes.md", "renamed.md");
    let_stamps_differ();
    let edited = replace_line(&base, 4, "line 4, edited by B offline");
    b.write("notes.md", &edited);
    b.sync();

    let mut expected = one_file("renamed.md", &edited);
    settle(&[&a, &b], &mut expected);
}

#[test]
fn rename_vs_edit_an_edit_follows_an_offline_rename() {
    let base = numbered_lines(10);
    let (a, mut b) = connected_pair(&one_file("notes.md", &base));

    b.stop();
    let edited = replace_line(&base, 7, "line 7, edited by A");
    a.write("notes.md", &edited);
    let_stamps_differ();
    b.rename("notes.md", "renamed.md");
    b.sync();

    let mut expected = one_file("renamed.md", &edited);
    settle(&[&a, &b], &mut expected);
}

// ---------------------------------------------------------------------------
// 3. delete vs edit: the edit wins under every strategy

#[test]
fn delete_vs_edit_timestamp_an_offline_edit_brings_the_file_back() {
    let base = numbered_lines(10);
    let mut seed = one_file("notes.md", &base);
    put_file(&mut seed, "other.md", "untouched\n");
    let (a, mut b) = connected_pair(&seed);

    b.stop();
    a.remove_file("notes.md");
    let_stamps_differ();
    let edited = replace_line(&base, 3, "line 3, edited by B offline");
    b.write("notes.md", &edited);
    b.sync();

    let mut expected = seed.clone();
    put_file(&mut expected, "notes.md", &edited);
    settle(&[&a, &b], &mut expected);
}

/// A is stopped; B edits notes.md; later, A deletes it offline and restarts. The delete is
/// the later action, and the deleter had not seen the edit: the file stays, edited.
fn edit_beats_a_later_offline_delete(strategy_setup: impl FnOnce(&Peer, &Peer)) -> (Peer, Peer) {
    let base = numbered_lines(10);
    let mut seed = one_file("notes.md", &base);
    put_file(&mut seed, "other.md", "untouched\n");
    let (mut a, b) = connected_pair(&seed);
    strategy_setup(&a, &b);

    a.stop();
    let edited = replace_line(&base, 8, "line 8, edited by B");
    b.write("notes.md", &edited);
    let_stamps_differ();
    a.remove_file("notes.md");
    a.sync();

    let mut expected = seed.clone();
    put_file(&mut expected, "notes.md", &edited);
    settle(&[&a, &b], &mut expected);
    (a, b)
}

#[test]
fn delete_vs_edit_timestamp_an_edit_beats_a_later_offline_delete() {
    edit_beats_a_later_offline_delete(|_, _| {});
}

#[test]
fn delete_vs_edit_priority_an_edit_beats_a_later_delete_by_the_higher_tier() {
    edit_beats_a_later_offline_delete(|a, b| {
        set_strategy(a, &[a, b], "priority");
        set_tier(a, &[a, b], "a", 9);
    });
}

#[test]
fn delete_vs_edit_interactive_the_edit_wins_and_nothing_is_pending() {
    let (a, b) = edit_beats_a_later_offline_delete(|a, b| set_strategy(a, &[a, b], "interactive"));
    // The table settles edit vs delete under every strategy: nothing for a person to do.
    for peer in [&a, &b] {
        assert_eq!(conflicts(peer), vec![], "{} lists conflicts", peer.name);
    }
}

// ---------------------------------------------------------------------------
// 4. rename vs delete

#[test]
fn rename_vs_delete_timestamp_a_later_delete_wins() {
    let mut seed = one_file("notes.md", &numbered_lines(5));
    put_file(&mut seed, "other.md", "untouched\n");
    let (a, mut b) = connected_pair(&seed);

    b.stop();
    a.rename("notes.md", "renamed.md");
    let_stamps_differ();
    b.remove_file("notes.md");
    b.sync();

    let mut expected = one_file("other.md", "untouched\n");
    settle(&[&a, &b], &mut expected);
}

#[test]
fn rename_vs_delete_timestamp_a_later_rename_wins() {
    let base = numbered_lines(5);
    let mut seed = one_file("notes.md", &base);
    put_file(&mut seed, "other.md", "untouched\n");
    let (a, mut b) = connected_pair(&seed);

    b.stop();
    a.remove_file("notes.md");
    let_stamps_differ();
    b.rename("notes.md", "renamed.md");
    b.sync();

    let mut expected = one_file("other.md", "untouched\n");
    put_file(&mut expected, "renamed.md", &base);
    settle(&[&a, &b], &mut expected);
}

#[test]
fn rename_vs_delete_priority_an_earlier_delete_by_the_higher_tier_wins() {
    let mut seed = one_file("notes.md", &numbered_lines(5));
    put_file(&mut seed, "other.md", "untouched\n");
    let (a, mut b) = connected_pair(&seed);
    set_strategy(&a, &[&a, &b], "priority");
    set_tier(&a, &[&a, &b], "a", 5);

    b.stop();
    a.remove_file("notes.md");
    let_stamps_differ();
    // Later, so it would win under `timestamp`; A's tier is higher.
    b.rename("notes.md", "renamed.md");
    b.sync();

    let mut expected = one_file("other.md", "untouched\n");
    settle(&[&a, &b], &mut expected);
}

// ---------------------------------------------------------------------------
// 5. directory rename vs create inside it

#[test]
fn directory_rename_vs_offline_create_inside_it() {
    let mut seed = Tree::new();
    put_file(&mut seed, "dir/old.md", "old\n");
    put_file(&mut seed, "dir/sub/deep.md", "deep\n");
    put_dir(&mut seed, "dir/empty");
    let (a, mut b) = connected_pair(&seed);

    b.stop();
    a.rename("dir", "moved");
    let_stamps_differ();
    b.write("dir/new.md", "created by B offline\n");
    b.sync();

    let mut expected = Tree::new();
    put_file(&mut expected, "moved/old.md", "old\n");
    put_file(&mut expected, "moved/sub/deep.md", "deep\n");
    put_dir(&mut expected, "moved/empty");
    put_file(&mut expected, "moved/new.md", "created by B offline\n");
    settle(&[&a, &b], &mut expected);
}

#[test]
fn directory_delete_vs_offline_create_inside_it_keeps_the_new_file() {
    let mut seed = Tree::new();
    put_file(&mut seed, "dir/old.md", "old\n");
    put_file(&mut seed, "keep.md", "keep\n");
    let (a, mut b) = connected_pair(&seed);

    b.stop();
    a.remove_dir_all("dir");
    let_stamps_differ();
    b.write("dir/new.md", "created by B offline\n");
    b.sync();

    // The directory comes back for the file created in it; what A deleted stays deleted.
    let mut expected = seed.clone();
    remove(&mut expected, "dir/old.md");
    put_file(&mut expected, "dir/new.md", "created by B offline\n");
    settle(&[&a, &b], &mut expected);
}

// ---------------------------------------------------------------------------
// 6-9. two entries at one path

#[test]
fn create_vs_create_the_later_offline_creation_keeps_the_name() {
    let (a, mut b) = connected_pair(&one_file("other.md", "x\n"));

    b.stop();
    a.write("notes.md", "created by a\n");
    let_stamps_differ();
    b.write("notes.md", "created by b\n");
    b.sync();

    let mut expected = one_file("other.md", "x\n");
    put_file(&mut expected, "notes.md", "created by b\n");
    put_file(&mut expected, "notes (conflict, a).md", "created by a\n");
    settle(&[&a, &b], &mut expected);
}

#[test]
fn create_vs_create_the_later_creation_by_the_restarted_sharer_keeps_the_name() {
    let (mut a, b) = connected_pair(&one_file("other.md", "x\n"));

    a.stop();
    b.write("notes.md", "created by b\n");
    let_stamps_differ();
    a.write("notes.md", "created by a\n");
    a.sync();

    let mut expected = one_file("other.md", "x\n");
    put_file(&mut expected, "notes.md", "created by a\n");
    put_file(&mut expected, "notes (conflict, b).md", "created by b\n");
    settle(&[&a, &b], &mut expected);
}

#[test]
fn create_vs_create_priority_the_higher_tier_keeps_the_name_though_earlier() {
    let (a, mut b) = connected_pair(&one_file("other.md", "x\n"));
    set_strategy(&b, &[&a, &b], "priority");
    set_tier(&b, &[&a, &b], "a", 5);

    b.stop();
    a.write("notes.md", "created by a\n");
    let_stamps_differ();
    b.write("notes.md", "created by b\n");
    b.sync();

    let mut expected = one_file("other.md", "x\n");
    put_file(&mut expected, "notes.md", "created by a\n");
    put_file(&mut expected, "notes (conflict, b).md", "created by b\n");
    settle(&[&a, &b], &mut expected);
}

#[test]
fn create_vs_create_with_identical_content_is_one_file() {
    let (a, mut b) = connected_pair(&one_file("other.md", "x\n"));

    b.stop();
    a.write("notes.md", "the same words\n");
    let_stamps_differ();
    b.write("notes.md", "the same words\n");
    b.sync();

    let mut expected = one_file("other.md", "x\n");
    put_file(&mut expected, "notes.md", "the same words\n");
    settle(&[&a, &b], &mut expected);
    // Still one file once both edit it: the duplicate entry is gone, not merely hidden.
    a.write("notes.md", "the same words\nand more from a\n");
    put_file(&mut expected, "notes.md", "the same words\nand more from a\n");
    settle(&[&a, &b], &mut expected);
}

#[test]
fn file_vs_directory_the_directory_keeps_the_name_and_the_file_keeps_its_extension() {
    let (a, mut b) = connected_pair(&one_file("other.md", "x\n"));

    b.stop();
    a.write("x.md/inside.txt", "in the directory\n");
    let_stamps_differ();
    b.write("x.md", "a file by b\n");
    b.sync();

    let mut expected = one_file("other.md", "x\n");
    put_file(&mut expected, "x.md/inside.txt", "in the directory\n");
    put_file(&mut expected, "x (conflict, b).md", "a file by b\n");
    settle(&[&a, &b], &mut expected);
}

#[test]
fn file_vs_directory_a_file_without_extension_gets_a_plain_conflict_name() {
    let (mut a, b) = connected_pair(&one_file("other.md", "x\n"));

    // This time the file is the running peer's and the directory the restarted sharer's.
    a.stop();
    b.write("build", "a file by b\n");
    let_stamps_differ();
    a.write("build/out.txt", "in the directory\n");
    a.sync();

    let mut expected = one_file("other.md", "x\n");
    put_file(&mut expected, "build/out.txt", "in the directory\n");
    put_file(&mut expected, "build (conflict, b)", "a file by b\n");
    settle(&[&a, &b], &mut expected);
}

#[test]
fn names_differing_only_in_case_become_a_file_and_a_conflict_copy() {
    let (a, mut b) = connected_pair(&one_file("other.md", "x\n"));

    b.stop();
    a.write("Notes.md", "capital, by a\n");
    let_stamps_differ();
    b.write("notes.md", "small, by b\n");
    b.sync();

    // As create vs create: the later creation keeps its name.
    let mut expected = one_file("other.md", "x\n");
    put_file(&mut expected, "notes.md", "small, by b\n");
    put_file(&mut expected, "Notes (conflict, a).md", "capital, by a\n");
    settle(&[&a, &b], &mut expected);
    for peer in [&a, &b] {
        assert_no_case_twins(peer);
    }
}

// ---------------------------------------------------------------------------
// 10. interactive

#[test]
fn interactive_rename_race_is_listed_once_and_resolved_everywhere() {
    let base = numbered_lines(5);
    let (a, mut b) = connected_pair(&one_file("notes.md", &base));
    set_strategy(&b, &[&a, &b], "interactive");

    b.stop();
    a.rename("notes.md", "from-a.md");
    let_stamps_differ();
    b.rename("notes.md", "from-b.md");
    b.sync();

    // Pending: the later name is shown meanwhile.
    let mut expected = one_file("from-b.md", &base);
    wait_converged_to(&[&a, &b], &expected);
    let on_a = wait_one_conflict(&a);
    let on_b = wait_one_conflict(&b);
    assert_eq!(on_a, on_b, "both peers list the same conflict");
    assert_eq!(on_a.kind, "rename", "{on_a:?}");
    assert_eq!(on_a.path, "from-b.md", "{on_a:?}");
    assert_eq!(sorted(&on_a.options), ["from-a.md", "from-b.md"], "{on_a:?}");

    // An option that is not listed is refused, with one line on stderr.
    let refused = a.cli(&["resolve", a.dir_arg(), &on_a.id, "--keep", "nonsense.md"]);
    assert!(!refused.status.success(), "resolve --keep nonsense.md should fail");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "one-line error, got {stderr:?}");
    assert_eq!(wait_one_conflict(&a), on_a, "a refused resolve changes nothing");

    // The name not shown meanwhile, so settling it is visible on disk.
    a.cli_ok(&["resolve", a.dir_arg(), &on_a.id, "--keep", "from-a.md"]);
    expected = one_file("from-a.md", &base);
    wait_converged_to(&[&a, &b], &expected);
    wait_no_conflicts(&a);
    wait_no_conflicts(&b);
    settle(&[&a, &b], &mut expected);

    // The saved state says the same with no process running.
    b.stop();
    assert_eq!(conflicts(&b), vec![]);
    assert_eq!(strategy(&b), "interactive");
}

#[test]
fn interactive_same_path_keeps_both_until_resolved_for_the_copy() {
    let (a, mut b) = connected_pair(&one_file("other.md", "x\n"));
    set_strategy(&a, &[&a, &b], "interactive");

    b.stop();
    a.write("notes.md", "created by a\n");
    let_stamps_differ();
    b.write("notes.md", "created by b\n");
    b.sync();

    // Pending: both contents on disk, the later creation under the name.
    let mut expected = one_file("other.md", "x\n");
    put_file(&mut expected, "notes.md", "created by b\n");
    put_file(&mut expected, "notes (conflict, a).md", "created by a\n");
    wait_converged_to(&[&a, &b], &expected);
    let on_a = wait_one_conflict(&a);
    assert_eq!(wait_one_conflict(&b), on_a, "both peers list the same conflict");
    assert_eq!(on_a.kind, "same-path", "{on_a:?}");
    assert_eq!(sorted(&on_a.options), ["notes (conflict, a).md", "notes.md"], "{on_a:?}");

    // Keep the copy: it takes the name, the other becomes the conflict copy, for good.
    b.cli_ok(&["resolve", b.dir_arg(), &on_a.id, "--keep", "notes (conflict, a).md"]);
    let mut expected = one_file("other.md", "x\n");
    put_file(&mut expected, "notes.md", "created by a\n");
    put_file(&mut expected, "notes (conflict, b).md", "created by b\n");
    wait_converged_to(&[&a, &b], &expected);
    wait_no_conflicts(&a);
    wait_no_conflicts(&b);
    settle(&[&a, &b], &mut expected);
}

#[test]
fn interactive_rename_vs_delete_keeps_the_file_until_resolved_as_delete() {
    let base = numbered_lines(5);
    let mut seed = one_file("notes.md", &base);
    put_file(&mut seed, "other.md", "untouched\n");
    let (a, mut b) = connected_pair(&seed);
    set_strategy(&a, &[&a, &b], "interactive");

    b.stop();
    a.remove_file("notes.md");
    let_stamps_differ();
    b.rename("notes.md", "kept.md");
    b.sync();

    let mut expected = one_file("other.md", "untouched\n");
    put_file(&mut expected, "kept.md", &base);
    wait_converged_to(&[&a, &b], &expected);
    let on_a = wait_one_conflict(&a);
    let on_b = wait_one_conflict(&b);
    assert_eq!(on_a, on_b, "both peers list the same conflict");
    assert_eq!(on_a.kind, "rename-delete", "{on_a:?}");
    assert_eq!(on_a.path, "kept.md", "{on_a:?}");
    assert_eq!(on_a.options, ["keep", "delete"], "{on_a:?}");

    b.cli_ok(&["resolve", b.dir_arg(), &on_b.id, "--keep", "delete"]);
    remove(&mut expected, "kept.md");
    wait_converged_to(&[&a, &b], &expected);
    wait_no_conflicts(&a);
    wait_no_conflicts(&b);
    settle(&[&a, &b], &mut expected);
}

// ---------------------------------------------------------------------------
// 11. the same outside change on two peers

#[test]
fn the_same_change_made_on_two_peers_is_kept_once() {
    let base = numbered_lines(10);
    let (a, mut b) = connected_pair(&one_file("notes.md", &base));

    // Both take in the same change (both pulled the same commit, say), one of them offline.
    let appended = format!("{base}appended 1\nappended 2\nappended 3\n");
    b.stop();
    a.write("notes.md", &appended);
    let_stamps_differ();
    b.write("notes.md", &appended);
    b.sync();

    let mut expected = one_file("notes.md", &appended);
    settle(&[&a, &b], &mut expected);
}

// ---------------------------------------------------------------------------
// The members list, which `priority` relies on

#[test]
fn peers_lists_both_members_and_set_tier_takes_a_name_or_an_id_prefix() {
    // Names with letters that are not hex digits, so a name is never also an id prefix.
    let ann = Peer::share_tree("ann", &one_file("other.md", "x\n"));
    let mut bob = Peer::join("bob", ann.ticket());
    wait_converged_to(&[&ann, &bob], &one_file("other.md", "x\n"));

    let seen_by = |peer: &Peer| {
        wait_for(&format!("{} to list both members", peer.name), || {
            let mut all = members(peer);
            all.sort_by(|x, y| x.name.cmp(&y.name));
            if all.iter().map(|m| m.name.as_str()).eq(["ann", "bob"]) {
                Ok(all)
            } else {
                Err(format!("{all:?}"))
            }
        })
    };
    let on_ann = seen_by(&ann);
    let on_bob = seen_by(&bob);
    for (peer, list) in [(&ann, &on_ann), (&bob, &on_bob)] {
        let me: Vec<&str> = list.iter().filter(|m| m.me).map(|m| m.name.as_str()).collect();
        assert_eq!(me, [peer.name.as_str()], "{}'s `me` flags: {list:?}", peer.name);
        for m in list {
            assert_eq!(m.tier, 0, "default tier: {list:?}");
            assert!(!m.id.is_empty() && !m.role.is_empty(), "{list:?}");
        }
    }
    let ids = |list: &[Member]| list.iter().map(|m| (m.name.clone(), m.id.clone())).collect::<Vec<_>>();
    assert_eq!(ids(&on_ann), ids(&on_bob), "both peers name the same endpoint ids");
    assert_ne!(on_ann[0].id, on_ann[1].id);

    // A unique prefix of Bob's id, given on Ann.
    let bob_id = &on_ann[1].id;
    ann.cli_ok(&["peers", "set-tier", &bob_id[..12], "3", "--dir", ann.dir_arg()]);
    wait_tier(&ann, "bob", 3);
    wait_tier(&bob, "bob", 3);

    // A member name, given on Bob.
    bob.cli_ok(&["peers", "set-tier", "ann", "2", "--dir", bob.dir_arg()]);
    wait_tier(&bob, "ann", 2);
    wait_tier(&ann, "ann", 2);

    // On Bob's saved state while Bob is stopped: Ann learns it when Bob syncs again.
    bob.stop();
    bob.cli_ok(&["peers", "set-tier", "ann", "7", "--dir", bob.dir_arg()]);
    wait_tier(&bob, "ann", 7);
    bob.sync();
    wait_tier(&ann, "ann", 7);

    let unknown = ann.cli(&["peers", "set-tier", "nobody-by-that-name", "1", "--dir", ann.dir_arg()]);
    assert!(!unknown.status.success(), "set-tier for an unknown member should fail");
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "one-line error, got {stderr:?}");
}
