//! History a user can see: log, show, diff, blame, merges and restore on a file edited by
//! two peers, concurrently.

use crate::harness::{Peer, Tree, connected_pair, put_file, remove, wait_converged_to, wait_until};

fn json_list(peer: &Peer, args: &[&str]) -> Vec<serde_json::Value> {
    peer.cli_json(args).as_array().cloned().unwrap_or_default()
}

#[test]
fn history_of_a_file_edited_concurrently_by_two_peers() {
    let mut expected = Tree::new();
    put_file(&mut expected, "notes.md", "one\ntwo\nthree\n");
    let (a, mut b) = connected_pair(&expected);
    let dir = a.dir_arg().to_string();

    // Concurrent edits: B, stopped, appends a line while A rewrites the first.
    b.stop();
    a.write("notes.md", "ONE\ntwo\nthree\n");
    b.write("notes.md", "one\ntwo\nthree\nfour\n");
    b.sync();
    put_file(&mut expected, "notes.md", "ONE\ntwo\nthree\nfour\n");
    wait_converged_to(&[&a, &b], &expected);

    // log: every change, with its peer and size; the concurrent pair is marked merged.
    let log = json_list(&a, &["log", &dir, "notes.md", "--json"]);
    assert_eq!(log.len(), 3, "{log:#?}");
    let by = |peer: &str| log.iter().filter(|c| c["peer"] == peer).count();
    assert_eq!((by("a"), by("b")), (2, 1), "{log:#?}");
    let merged: Vec<&serde_json::Value> = log.iter().filter(|c| c["merged"] == true).collect();
    assert_eq!(merged.len(), 2, "the two concurrent edits: {log:#?}");
    let b_edit = log.iter().find(|c| c["peer"] == "b").unwrap();
    assert_eq!((b_edit["added"].as_u64(), b_edit["removed"].as_u64()), (Some(1), Some(0)));
    let first = log.last().unwrap()["change"].as_str().unwrap().to_string();
    // The human form lists the same changes.
    let human = a.cli_ok(&["log", &dir, "notes.md"]);
    assert_eq!(human.lines().count(), 3, "{human}");
    assert!(human.contains("merged with a concurrent edit"), "{human}");

    // blame: who last wrote each line.
    let blame = json_list(&b, &["blame", b.dir_arg(), "notes.md", "--json"]);
    let lines: Vec<(&str, &str)> =
        blame.iter().map(|l| (l["line"].as_str().unwrap(), l["peer"].as_str().unwrap())).collect();
    assert_eq!(lines, [("ONE", "a"), ("two", "a"), ("three", "a"), ("four", "b")]);

    // show and diff, at a change (a short hash prefix works).
    let original = a.cli_ok(&["show", &dir, "notes.md", "--at", &first[..12]]);
    assert_eq!(original, "one\ntwo\nthree\n");
    let diff = a.cli_ok(&["diff", &dir, "notes.md", &first[..12], "now"]);
    assert!(diff.contains("-one\n") && diff.contains("+ONE\n") && diff.contains("+four\n"), "{diff}");
    // A time before the file existed has nothing to show; a malformed point is refused.
    let none = a.cli(&["show", &dir, "notes.md", "--at", "2000-01-01T00:00:00Z"]);
    assert_eq!(none.status.code(), Some(2), "{none:?}");
    let bad = a.cli(&["show", &dir, "notes.md", "--at", "yesterday-ish"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");

    // merges: the file, with both peers.
    let merges = json_list(&a, &["merges", &dir, "--json"]);
    assert_eq!(merges.len(), 1, "{merges:#?}");
    assert_eq!(merges[0]["path"], "notes.md");
    assert_eq!(merges[0]["peers"], serde_json::json!(["a", "b"]));

    // restore: the original comes back as a new change, everywhere.
    a.cli_ok(&["restore", &dir, "notes.md", "--at", &first]);
    put_file(&mut expected, "notes.md", "one\ntwo\nthree\n");
    wait_converged_to(&[&a, &b], &expected);
    assert_eq!(json_list(&a, &["log", &dir, "notes.md", "--json"]).len(), 4);

    // A deleted file is found with --deleted and restored, on every peer.
    b.remove_file("notes.md");
    remove(&mut expected, "notes.md");
    wait_converged_to(&[&a, &b], &expected);
    let deleted = json_list(&a, &["log", &dir, "--deleted", "--json"]);
    assert_eq!(deleted.len(), 1, "{deleted:#?}");
    assert_eq!(
        (deleted[0]["path"].as_str(), deleted[0]["deleted_by"].as_str()),
        (Some("notes.md"), Some("b"))
    );
    a.cli_ok(&["restore", &dir, "notes.md", "--at", &first[..12]]);
    put_file(&mut expected, "notes.md", "one\ntwo\nthree\n");
    wait_converged_to(&[&a, &b], &expected);
    wait_until("the restored file to be listed as alive", || {
        json_list(&a, &["log", &dir, "--deleted", "--json"]).is_empty()
    });
}
