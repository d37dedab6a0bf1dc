//! Capabilities and admission with real processes: tickets that grant read or write,
//! expire and run out; revocation; join approval; read-only members.
//!
//! Each refusal is checked where it matters: nothing reaches the refused peer's disk, and
//! nothing it writes reaches anyone else's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use teatime::ticket::Ticket;

use crate::harness::{Peer, Tree, assert_trees, put_file, wait_converged_to, wait_for, wait_until};

fn private_tree() -> Tree {
    let mut tree = Tree::new();
    put_file(&mut tree, "diary.md", "dear diary\n");
    put_file(&mut tree, "server/config.toml", "password = \"hunter2\"\n");
    tree
}

/// `teatime ticket DIR ARGS…` on `peer`: the ticket printed.
fn new_ticket(peer: &Peer, args: &[&str]) -> String {
    let mut all = vec!["ticket", peer.dir_arg()];
    all.extend_from_slice(args);
    let out = peer.cli_ok(&all);
    let ticket = out.trim().to_string();
    Ticket::decode(&ticket).unwrap_or_else(|e| panic!("`teatime ticket` printed {out:?}: {e}"));
    ticket
}

/// Waits until `peer`'s log says it was refused for `reason`.
fn wait_refused(peer: &Peer, reason: &str) {
    wait_until(&format!("{} to be refused: {reason}", peer.name()), || {
        peer.log_text().contains(&format!("refused: {reason}"))
    });
}

/// Whether `peer`'s folder holds nothing but teatime's own state.
fn holds_nothing(peer: &Peer) -> bool {
    peer.tree().keys().all(|p| p.starts_with(".teatime"))
}

fn member_ids(peer: &Peer) -> Vec<(String, String, bool)> {
    let list = peer.cli_json(&["peers", peer.dir_arg(), "--json"]);
    list.as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_string(),
                p["role"].as_str().unwrap_or("").to_string(),
                p["connected"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

#[test]
fn an_expired_ticket_admits_nobody() {
    let expected = private_tree();
    let sharer = Peer::share_tree("sharer", &expected);
    let ticket = new_ticket(&sharer, &["--expires", "1s"]);
    let expires_ms = Ticket::decode(&ticket).unwrap().expires_ms.expect("the ticket carries its expiry");
    // Waiting for a wall-clock instant, not for a guess: the ticket's own expiry.
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    std::thread::sleep(Duration::from_millis(expires_ms.saturating_sub(now_ms) + 50));

    let late = Peer::join("late", &ticket);
    wait_refused(&late, "ticket expired");
    assert!(holds_nothing(&late), "an expired ticket let folder data through: {:?}", late.tree().keys());
    assert!(!sharer.log_text().contains("new member admitted"), "the sharer admitted someone");
    assert_eq!(member_ids(&sharer).len(), 1, "the sharer's member list grew");
}

#[test]
fn a_ticket_admits_only_as_many_peers_as_its_uses() {
    let expected = private_tree();
    let sharer = Peer::share_tree("sharer", &expected);
    let ticket = new_ticket(&sharer, &["--uses", "1"]);
    let first = Peer::join("first", &ticket);
    wait_converged_to(&[&sharer, &first], &expected);

    let second = Peer::join("second", &ticket);
    wait_refused(&second, "ticket used up");
    assert!(holds_nothing(&second), "a used-up ticket let folder data through");
    let tickets = sharer.cli_json(&["tickets", sharer.dir_arg(), "--json"]);
    let limited = tickets
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["standing"] == false)
        .expect("the limited ticket is listed")
        .clone();
    assert_eq!(limited["used"], 1, "{tickets}");
    assert_eq!(limited["state"], "ticket used up", "{tickets}");
    assert_eq!(limited["admitted"], serde_json::json!(["first"]), "{tickets}");
}

#[test]
fn a_revoked_peer_is_cut_off_everywhere_and_cannot_come_back() {
    let mut expected = private_tree();
    let owner = Peer::share_tree("owner", &expected);
    let mut mallory = Peer::join("mallory", owner.ticket());
    let carol = Peer::join("carol", owner.ticket());
    wait_converged_to(&[&owner, &mallory, &carol], &expected);

    owner.cli_ok(&["revoke", owner.dir_arg(), "mallory"]);
    for peer in [&owner, &carol] {
        wait_for(&format!("{} to see mallory revoked and disconnected", peer.name()), || {
            let members = member_ids(peer);
            match members.iter().find(|(n, _, _)| n == "mallory") {
                Some((_, role, false)) if role == "revoked" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
    }

    // Nothing goes either way any more.
    mallory.write("diary.md", "mallory was here\n");
    mallory.write("planted.sh", "rm -rf ~\n");
    owner.write("after-revocation.md", "not for mallory\n");
    put_file(&mut expected, "after-revocation.md", "not for mallory\n");
    wait_converged_to(&[&owner, &carol], &expected);
    wait_until("mallory to be refused when it reconnects", || {
        mallory.log_text().contains("refused: revoked")
    });
    assert!(mallory.read("after-revocation.md").is_none(), "a revoked peer still receives changes");

    // Restarted, it is still refused; and the ticket it joined with no longer admits a
    // fresh identity.
    mallory.stop();
    mallory.sync();
    let twin = Peer::join("twin", owner.ticket());
    // With no ticket live the owner closes on strangers before the handshake.
    wait_until("twin to be refused", || {
        let log = twin.log_text();
        log.contains("refused: ticket revoked") || log.contains("refused: not a member")
    });
    assert!(holds_nothing(&twin), "a revoked ticket let folder data through");
    assert_trees(&[&owner, &carol], &expected);
}

#[test]
fn a_reader_admitted_with_a_read_only_ticket_changes_nothing_anywhere() {
    let expected = private_tree();
    let owner = Peer::share_tree("owner", &expected);
    let read_only = new_ticket(&owner, &["--read-only"]);
    let reader = Peer::join("reader", &read_only);
    let writer = Peer::join("writer", owner.ticket());
    wait_converged_to(&[&owner, &reader, &writer], &expected);
    let roles: Vec<(String, String)> = member_ids(&owner).into_iter().map(|(n, r, _)| (n, r)).collect();
    assert!(roles.contains(&("reader".into(), "reader".into())), "{roles:?}");
    assert!(roles.contains(&("writer".into(), "writer".into())), "{roles:?}");

    // The reader's own client puts its changes back; nobody else ever sees them.
    reader.write("diary.md", "rewritten by the reader\n");
    reader.write("new-from-reader.md", "hello\n");
    wait_converged_to(&[&owner, &reader, &writer], &expected);
    assert!(reader.log_text().contains("role does not allow"), "the reader's client did not say why");
}

#[test]
fn a_join_waits_for_the_owners_approval() {
    let expected = private_tree();
    let owner = Peer::share_tree("owner", &expected);
    owner.cli_ok(&["config", owner.dir_arg(), "join-approval", "on"]);
    let guest = Peer::join("guest", owner.ticket());
    let request = wait_for("the owner to list the guest's request", || {
        let list = owner.cli_json(&["approve", owner.dir_arg(), "--json"]);
        match list.as_array().and_then(|l| l.first()) {
            Some(r) if r["name"] == "guest" && r["grant"] == "writer" => {
                Ok(r["request"].as_str().unwrap_or_default().to_string())
            }
            _ => Err(format!("{list}")),
        }
    });
    wait_refused(&guest, "awaiting approval");
    assert!(holds_nothing(&guest), "a join waiting for approval received folder data");

    let answer = owner.cli_ok(&["approve", owner.dir_arg(), &request]);
    assert!(answer.contains("guest admitted as writer"), "{answer}");
    wait_converged_to(&[&owner, &guest], &expected);
    let list = owner.cli_json(&["approve", owner.dir_arg(), "--json"]);
    assert_eq!(list, serde_json::json!([]), "the request is still listed");
}

#[test]
fn ticket_commands_refuse_bad_input_without_side_effects() {
    let sharer = Peer::share_tree("sharer", &private_tree());
    for args in [
        vec!["ticket", sharer.dir_arg(), "--expires", "soon"],
        vec!["ticket", sharer.dir_arg(), "--expires", "0m"],
        vec!["ticket", sharer.dir_arg(), "--uses", "0"],
        vec!["revoke", sharer.dir_arg(), "nobody-by-that-name"],
        vec!["approve", sharer.dir_arg(), "deadbeef"],
    ] {
        let out = sharer.cli(&args);
        assert_eq!(out.status.code(), Some(2), "teatime {args:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "teatime {args:?} said nothing");
    }
    let tickets = sharer.cli_json(&["tickets", sharer.dir_arg(), "--json"]);
    assert_eq!(tickets.as_array().map(|t| t.len()), Some(1), "only the standing ticket: {tickets}");
}
