//! Member roles (owner, writer, editor, reader) and per-peer folder modes (send-only,
//! receive-only), with real processes.
//!
//! A restricted peer's own teatime puts its folder back: what its role does not allow is
//! never published, the path is restored to the synced state, and the local bytes are
//! moved to `.teatime/versions/reverted-<ms>/<path>` first. Folder modes are local to one
//! peer and say which way changes flow.
//!
//! Proving that something did *not* reach a peer needs a barrier: an allowed change made
//! afterwards that must travel the same way, waited for until it arrives. Frames from one
//! peer to another go over one ordered session, so once a later change from B has reached
//! A, anything B published before it has reached A too.

use std::collections::BTreeMap;
use std::fs;

use serde_json::Value;

use crate::harness::{
    Entry, Peer, STATE_DIR, Tree, assert_trees, connected_pair, numbered_lines, one_file, put_file,
    replace_line, tree, wait_converged_to, wait_for,
};

// ---------------------------------------------------------------------------
// Helpers

#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    id: String,
    name: String,
    role: String,
}

/// `teatime peers DIR --json`.
fn members(peer: &Peer) -> Vec<Member> {
    let raw = peer.cli_json(&["peers", peer.dir_arg(), "--json"]);
    let text = |m: &Value, key: &str| -> String {
        m.get(key)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no string {key:?} in {m} (whole output: {raw})"))
            .to_owned()
    };
    raw.as_array()
        .unwrap_or_else(|| panic!("peers --json should print a JSON array, got {raw}"))
        .iter()
        .map(|m| Member { id: text(m, "id"), name: text(m, "name"), role: text(m, "role") })
        .collect()
}

/// Every member's role as `peer` lists it, by member name.
fn roles(peer: &Peer) -> BTreeMap<String, String> {
    members(peer).into_iter().map(|m| (m.name, m.role)).collect()
}

/// Waits until every peer lists exactly these members with these roles.
fn wait_roles(peers: &[&Peer], want: &[(&str, &str)]) {
    let want: BTreeMap<String, String> =
        want.iter().map(|(name, role)| ((*name).to_owned(), (*role).to_owned())).collect();
    for peer in peers {
        wait_for(&format!("{} to list the roles {want:?}", peer.name), || {
            let got = roles(peer);
            if got == want { Ok(()) } else { Err(format!("it lists {got:?}")) }
        });
    }
}

/// The full endpoint id of member `name`, as `peer` lists it (waiting until it does).
/// Ids, not names: the harness's one-letter names are also hex digits, so a name can be
/// an ambiguous id prefix.
fn member_id(peer: &Peer, name: &str) -> String {
    wait_for(&format!("{} to list a member named {name}", peer.name), || {
        let listed = members(peer);
        listed.iter().find(|m| m.name == name).map(|m| m.id.clone()).ok_or_else(|| format!("{listed:?}"))
    })
}

/// The owner sets member `name`'s role; waits until every peer lists it, the member
/// itself included (its own teatime enforces what that peer lists).
fn set_role(owner: &Peer, all: &[&Peer], name: &str, role: &str) {
    let id = member_id(owner, name);
    owner.cli_ok(&["peers", "set-role", &id, role, "--dir", owner.dir_arg()]);
    for peer in all {
        wait_for(&format!("{} to list {name} as {role}", peer.name), || {
            let got = roles(peer);
            if got.get(name).map(String::as_str) == Some(role) { Ok(()) } else { Err(format!("{got:?}")) }
        });
    }
}

/// Sets this peer's folder mode and checks it reads back.
fn set_mode(peer: &Peer, mode: &str) {
    peer.cli_ok(&["config", peer.dir_arg(), "mode", mode]);
    let got = peer.cli_ok(&["config", peer.dir_arg(), "mode"]);
    assert_eq!(got.trim(), mode, "{}'s mode should read back", peer.name);
}

fn strategy(peer: &Peer) -> String {
    peer.cli_ok(&["config", peer.dir_arg(), "conflict-strategy"]).trim().to_owned()
}

/// Sets the conflict strategy on `setter` and waits until `reader` reports it: a change
/// of the folder document that travels from `setter` to `reader`, used as a barrier.
fn strategy_barrier(setter: &Peer, reader: &Peer, value: &str) {
    setter.cli_ok(&["config", setter.dir_arg(), "conflict-strategy", value]);
    wait_for(&format!("{} to report conflict-strategy {value}", reader.name), || {
        let got = strategy(reader);
        if got == value { Ok(()) } else { Err(format!("it reports {got:?}")) }
    });
}

/// `writer` writes `name`, which must then arrive everywhere: everything `writer`
/// published before has arrived too.
fn barrier(writer: &Peer, all: &[&Peer], expected: &mut Tree, name: &str) {
    let content = format!("barrier from {}\n", writer.name);
    writer.write(name, &content);
    put_file(expected, name, &content);
    wait_converged_to(all, expected);
}

/// Every file kept under `.teatime/versions/reverted-*/`, as (path in the folder, bytes),
/// in no particular order of reverts.
fn reverted_versions(peer: &Peer) -> Vec<(String, Vec<u8>)> {
    let versions = peer.dir().join(STATE_DIR).join("versions");
    let mut out = Vec::new();
    for entry in fs::read_dir(&versions).into_iter().flatten().flatten() {
        if !entry.file_name().to_string_lossy().starts_with("reverted-") {
            continue;
        }
        for (path, kept) in tree(&entry.path()) {
            if let Entry::File(bytes) = kept {
                out.push((path, bytes));
            }
        }
    }
    out
}

/// Asserts that `peer` kept `content` for `path` under a `reverted-*` directory.
fn assert_kept(peer: &Peer, path: &str, content: impl AsRef<[u8]>) {
    let content = content.as_ref();
    let kept = reverted_versions(peer);
    assert!(
        kept.iter().any(|(p, bytes)| p == path && bytes == content),
        "{} should keep its local {path} ({:?}) under .teatime/versions/reverted-*/; kept: {:?}",
        peer.name,
        String::from_utf8_lossy(content),
        kept.iter().map(|(p, b)| (p, String::from_utf8_lossy(b))).collect::<Vec<_>>(),
    );
}

// ---------------------------------------------------------------------------
// Roles

#[test]
fn reader_receives_but_its_changes_are_put_back() {
    let base = numbered_lines(5);
    let mut expected = one_file("notes.md", &base);
    put_file(&mut expected, "keep.md", "keep\n");
    put_file(&mut expected, "gone.md", "the reader will try to delete this\n");
    let (a, b) = connected_pair(&expected);
    let both = [&a, &b];
    set_role(&a, &both, "b", "reader");

    // What the owner does reaches the reader.
    let by_a = replace_line(&base, 2, "line 2, edited by the owner");
    a.write("notes.md", &by_a);
    a.write("from-a.md", "new from the owner\n");
    put_file(&mut expected, "notes.md", &by_a);
    put_file(&mut expected, "from-a.md", "new from the owner\n");
    wait_converged_to(&both, &expected);

    // What the reader does is put back on its own disk.
    let by_b = replace_line(&by_a, 4, "line 4, edited by the reader");
    b.write("notes.md", &by_b);
    b.write("by-b.md", "created by the reader\n");
    b.remove_file("gone.md");
    wait_converged_to(&[&b], &expected);
    assert_kept(&b, "notes.md", &by_b);
    assert_kept(&b, "by-b.md", "created by the reader\n");

    // Nothing of it reached the owner. First a barrier the owner writes; then one the
    // reader writes once promoted: it travels B -> A after anything B could have sent,
    // and would also carry any refused change B had recorded but not sent.
    barrier(&a, &both, &mut expected, "barrier-1.md");
    set_role(&a, &both, "b", "writer");
    barrier(&b, &both, &mut expected, "barrier-2.md");
    assert_trees(&both, &expected);
}

#[test]
fn editor_may_edit_but_not_create_delete_or_rename() {
    let base = numbered_lines(5);
    let image: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\xff\xfe\0\xc3\x28";
    let mut expected = one_file("notes.md", &base);
    put_file(&mut expected, "image.bin", image);
    put_file(&mut expected, "keep.md", "the editor will try to rename this\n");
    put_file(&mut expected, "gone.md", "the editor will try to delete this\n");
    let (a, b) = connected_pair(&expected);
    let both = [&a, &b];
    set_role(&a, &both, "b", "editor");

    // Content edits of existing files go out: text and binary.
    let by_b = replace_line(&base, 3, "line 3, edited by the editor");
    let new_image: &[u8] = b"\x89PNG rewritten by the editor \0\xff";
    b.write("notes.md", &by_b);
    b.write("image.bin", new_image);
    put_file(&mut expected, "notes.md", &by_b);
    put_file(&mut expected, "image.bin", new_image);
    wait_converged_to(&both, &expected);

    // Creating, renaming and deleting are put back on the editor's disk.
    b.write("new.md", "created by the editor\n");
    b.rename("keep.md", "moved.md");
    b.remove_file("gone.md");
    wait_converged_to(&[&b], &expected);
    assert_kept(&b, "new.md", "created by the editor\n");
    assert_kept(&b, "moved.md", "the editor will try to rename this\n");

    // Barrier: an edit the editor may make, after the refused changes; it reaches A over
    // the same session as anything B published before it.
    let again = replace_line(&by_b, 5, "line 5, the editor's barrier");
    b.write("notes.md", &again);
    put_file(&mut expected, "notes.md", &again);
    wait_converged_to(&both, &expected);
    assert_trees(&both, &expected);
}

#[test]
fn only_the_owner_sets_roles() {
    let mut expected = one_file("seed.md", "seed\n");
    let (a, mut b) = connected_pair(&expected);
    let c = Peer::join("c", a.ticket());
    wait_converged_to(&[&a, &b, &c], &expected);
    let initial = [("a", "owner"), ("b", "writer"), ("c", "writer")];
    wait_roles(&[&a, &b, &c], &initial);

    let refused = |b: &Peer, target: &str, role: &str| {
        let id = member_id(b, target);
        let out = b.cli(&["peers", "set-role", &id, role, "--dir", b.dir_arg()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "a writer setting {target}'s role to {role}: exit status; stdout {:?}, stderr {stderr:?}",
            String::from_utf8_lossy(&out.stdout),
        );
        assert!(stderr.contains("error") && stderr.contains("owner"), "stderr should say why: {stderr:?}");
    };
    // Neither another writer's role, nor the owner's, nor its own.
    refused(&b, "c", "reader");
    refused(&b, "a", "reader");
    refused(&b, "b", "editor");

    // Had anything been written, B's later change would carry it after it.
    barrier(&b, &[&a, &b, &c], &mut expected, "barrier-1.md");
    wait_roles(&[&a, &b, &c], &initial);

    // The same with B's process stopped: the command works on the saved state.
    b.stop();
    refused(&b, "c", "reader");
    b.sync();
    barrier(&b, &[&a, &b, &c], &mut expected, "barrier-2.md");
    wait_roles(&[&a, &b, &c], &initial);
    assert_trees(&[&a, &b, &c], &expected);
}

// ---------------------------------------------------------------------------
// Folder modes

#[test]
fn send_only_peer_publishes_but_does_not_apply() {
    let mut expected = one_file("seed.md", "seed\n");
    let (a, b) = connected_pair(&expected);
    let c = Peer::join("c", a.ticket());
    let all = [&a, &b, &c];
    wait_converged_to(&all, &expected);
    set_mode(&b, "send-only");

    // B's changes go out.
    b.write("b1.md", "from the send-only peer\n");
    put_file(&mut expected, "b1.md", "from the send-only peer\n");
    wait_converged_to(&all, &expected);

    // A's changes are not written on B. `on_b` is what B's disk must keep holding;
    // `everywhere_else` what A and C hold.
    let mut on_b = expected.clone();
    let mut everywhere_else = expected.clone();
    a.write("a1.md", "from the owner\n");
    a.write("seed.md", "seed, edited by the owner\n");
    put_file(&mut everywhere_else, "a1.md", "from the owner\n");
    put_file(&mut everywhere_else, "seed.md", "seed, edited by the owner\n");
    // 1. C holds A's changes: A has recorded and published them.
    wait_converged_to(&[&a, &c], &everywhere_else);
    // 2. A then changes a setting, and B reports it: that change of the folder document
    //    depends on the one that added a1.md, so B holds A's changes in its documents.
    strategy_barrier(&a, &b, "priority");
    // 3. B then publishes a change of its own and A receives it: B has run the flush that
    //    would have written A's changes to its disk, had it applied them.
    b.write("b2.md", "later from the send-only peer\n");
    put_file(&mut on_b, "b2.md", "later from the send-only peer\n");
    put_file(&mut everywhere_else, "b2.md", "later from the send-only peer\n");
    wait_converged_to(&[&a, &c], &everywhere_else);
    assert_trees(&[&b], &on_b);

    // Back to send-receive: what B held back in its documents is written.
    set_mode(&b, "send-receive");
    wait_converged_to(&all, &everywhere_else);
    assert_trees(&all, &everywhere_else);
}

#[test]
fn receive_only_holds_local_changes_until_revert() {
    let base = numbered_lines(5);
    let mut expected = one_file("notes.md", &base);
    put_file(&mut expected, "other.md", "other\n");
    let (a, b) = connected_pair(&expected);
    let both = [&a, &b];
    set_mode(&b, "receive-only");

    // A's changes reach B.
    a.write("from-a.md", "from the owner\n");
    a.write("other.md", "other, edited by the owner\n");
    put_file(&mut expected, "from-a.md", "from the owner\n");
    put_file(&mut expected, "other.md", "other, edited by the owner\n");
    wait_converged_to(&both, &expected);

    // B's changes are held: its disk keeps them, nothing is published.
    let by_b = replace_line(&base, 2, "line 2, edited on the receive-only peer");
    b.write("notes.md", &by_b);
    b.write("mine.md", "made on the receive-only peer\n");
    let mut on_b = expected.clone();
    put_file(&mut on_b, "notes.md", &by_b);
    put_file(&mut on_b, "mine.md", "made on the receive-only peer\n");

    // A remote change to the held path does not overwrite it. Once barrier-1.md reached B,
    // B has applied A's edit of notes.md (everywhere but on its held copy).
    let by_a = replace_line(&base, 4, "line 4, edited by the owner meanwhile");
    a.write("notes.md", &by_a);
    put_file(&mut expected, "notes.md", &by_a);
    a.write("barrier-1.md", "barrier\n");
    put_file(&mut expected, "barrier-1.md", "barrier\n");
    put_file(&mut on_b, "barrier-1.md", "barrier\n");
    wait_converged_to(&[&a], &expected);
    wait_converged_to(&[&b], &on_b);

    // B -> A barrier: a setting B changes (a folder-document change, which receive-only
    // does not hold back) reaches A after anything B published before it. B has looked at
    // its changes by now: it scans a locally edited path before writing a remote change
    // there, and its watcher reported both files long before barrier-1.md arrived.
    strategy_barrier(&b, &a, "priority");
    assert_trees(&[&a], &expected);
    assert_trees(&[&b], &on_b);

    // `revert` puts the synced state back and keeps both local versions.
    let out = b.cli_ok(&["revert", b.dir_arg()]);
    assert_eq!(out.trim(), "2 paths put back", "revert's report");
    wait_converged_to(&both, &expected);
    assert_kept(&b, "notes.md", &by_b);
    assert_kept(&b, "mine.md", "made on the receive-only peer\n");

    // Still receive-only, still in sync.
    barrier(&a, &both, &mut expected, "barrier-2.md");
    strategy_barrier(&b, &a, "timestamp");
    assert_trees(&both, &expected);
}

// ---------------------------------------------------------------------------
// Directories

/// A refused rename of a non-empty directory: the renamed copy is kept aside whole and
/// the synced directory comes back.
#[test]
fn reader_directory_rename_is_put_back() {
    let mut expected = one_file("docs/notes.md", "synced\n");
    put_file(&mut expected, "top.md", "top\n");
    let (a, b) = connected_pair(&expected);
    let both = [&a, &b];
    set_role(&a, &both, "b", "reader");

    b.rename("docs", "renamed");
    wait_converged_to(&[&b], &expected);
    assert_kept(&b, "renamed/notes.md", "synced\n");

    barrier(&a, &both, &mut expected, "barrier-1.md");
    set_role(&a, &both, "b", "writer");
    barrier(&b, &both, &mut expected, "barrier-2.md");
    assert_trees(&both, &expected);
}

#[test]
fn receive_only_revert_puts_back_a_renamed_directory() {
    let mut expected = one_file("docs/notes.md", "synced\n");
    put_file(&mut expected, "top.md", "top\n");
    let (a, b) = connected_pair(&expected);
    let both = [&a, &b];
    set_mode(&b, "receive-only");

    b.rename("docs", "renamed");
    let mut on_b = expected.clone();
    crate::harness::rename(&mut on_b, "docs", "renamed");
    // B -> A barrier: the rename, had it been published, would have reached A first.
    strategy_barrier(&b, &a, "priority");
    assert_trees(&[&a], &expected);
    assert_trees(&[&b], &on_b);

    b.cli_ok(&["revert", b.dir_arg()]);
    wait_converged_to(&both, &expected);
    assert_kept(&b, "renamed/notes.md", "synced\n");
    barrier(&a, &both, &mut expected, "barrier-1.md");
    assert_trees(&both, &expected);
}
