//! Every peer refuses changes outside the sending member's role, even when that member's
//! own client made them (here: edits made while it was offline and demoted meanwhile).

use crate::harness::{Tree, connected_pair, put_file, wait_for, wait_until};

#[test]
fn changes_a_demoted_member_made_offline_are_refused_by_the_others() {
    let mut seed = Tree::new();
    put_file(&mut seed, "notes.md", "one\n");
    put_file(&mut seed, "art.bin", b"\0bytes\xff");
    let (a, mut b) = connected_pair(&seed);
    b.stop();

    // The owner demotes B while B is away; B, not knowing, edits, creates and deletes.
    let members = a.cli_json(&["peers", a.dir_arg(), "--json"]);
    let b_id = members
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == "b")
        .and_then(|m| m["id"].as_str())
        .expect("a lists b")
        .to_string();
    a.cli_ok(&["peers", "set-role", &b_id, "reader", "--dir", a.dir_arg()]);
    b.write("notes.md", "one\nb's offline edit\n");
    b.write("new.md", "made by b offline\n");
    b.write("art.bin", b"\0b's bytes\xfe");
    b.sync();

    // B learns its role; A's own changes still reach B.
    wait_for("b to know it is a reader", || {
        let v = b.cli_json(&["peers", b.dir_arg(), "--json"]);
        let role = v.as_array().into_iter().flatten().find(|m| m["name"] == "b").map(|m| m["role"].clone());
        if role.as_ref().and_then(|r| r.as_str()) == Some("reader") {
            Ok(())
        } else {
            Err(format!("{role:?}"))
        }
    });
    a.write("from-a.md", "after\n");
    wait_until("a's file to reach b", || b.read("from-a.md").is_some());
    wait_until("a to log the refusal", || {
        a.log_text().contains("refusing changes outside their author's role")
    });

    // Nothing of B's reached A.
    assert_eq!(a.read("notes.md").as_deref(), Some(&b"one\n"[..]));
    assert_eq!(a.read("new.md"), None);
    assert_eq!(a.read("art.bin").as_deref(), Some(&b"\0bytes\xff"[..]));
}
