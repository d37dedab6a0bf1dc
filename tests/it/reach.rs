//! Reaching peers again: restarts on new ports, and members introducing each other.

use std::ffi::OsStr;
use std::net::UdpSocket;

use serde_json::Value;
use teatime::ticket::Ticket;

use crate::harness::*;

/// The port `peer`'s node bound last (the node reuses it at the next start if it can).
pub fn last_port(peer: &Peer) -> u16 {
    let text = std::fs::read_to_string(peer.home().join("port")).expect("the node saved its port");
    text.trim().parse().expect("a port number")
}

/// Holds `peer`'s last port, so its next start has to bind another one; returns the
/// socket (keep it alive) and the port it holds.
fn occupy_last_port(peer: &Peer) -> (UdpSocket, u16) {
    let port = last_port(peer);
    let socket = UdpSocket::bind(("127.0.0.1", port)).expect("occupy the peer's old port");
    (socket, port)
}

/// Waits until `peer` runs on a port other than `old`, and returns it.
pub fn wait_new_port(peer: &Peer, old: u16) -> u16 {
    let port_file = peer.home().join("port");
    wait_for(&format!("{} to bind a new port", peer.name), || {
        match std::fs::read_to_string(&port_file).ok().and_then(|t| t.trim().parse::<u16>().ok()) {
            Some(p) if p != old => Ok(p),
            other => Err(format!("port file: {other:?}")),
        }
    })
}

/// `peer`'s entry for the member named `name` in `peers --json`.
fn member(peer: &Peer, name: &str) -> Result<Value, String> {
    let v = peer.cli_json(&["peers", peer.dir_arg(), "--json"]);
    v.as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == name).cloned())
        .ok_or_else(|| format!("no member {name} in {v}"))
}

/// Waits until `peer` lists `name` as connected, on an address with `port`: both in
/// `peers --json` (what it saved) and in `status --json` (the path in use).
fn wait_connected_on_port(peer: &Peer, name: &str, port: u16) {
    let want = format!("127.0.0.1:{port}");
    wait_for(&format!("{} to be connected to {name} at {want}", peer.name), || {
        let m = member(peer, name)?;
        let addrs = m["addrs"].as_array().cloned().unwrap_or_default();
        if m["connected"] != true || !addrs.iter().any(|a| a.as_str().is_some_and(|a| a.contains(&want))) {
            return Err(format!("peers: {m}"));
        }
        let status = peer.cli_json(&["status", peer.dir_arg(), "--json"]);
        let p = status["peers"].as_array().and_then(|p| p.iter().find(|p| p["name"] == name).cloned());
        match p {
            Some(p) if p["path"]["addr"].as_str().is_some_and(|a| a.contains(&want)) => Ok(()),
            other => Err(format!("status: {other:?}")),
        }
    });
}

/// Waits until `peer` lists `name` as connected.
pub fn wait_connected(peer: &Peer, name: &str) {
    wait_for(&format!("{} to be connected to {name}", peer.name), || {
        let m = member(peer, name)?;
        if m["connected"] == true { Ok(()) } else { Err(format!("{m}")) }
    });
}

#[test]
fn a_peer_that_restarts_on_a_new_port_is_reached_again() {
    let mut expected = one_file("notes.md", "one\n");
    let (mut a, mut b) = connected_pair(&expected);

    // B goes away; A changes things meanwhile; B comes back on another port (its old one
    // is taken), with offline changes of its own. B still knows where A is, so B dials.
    b.stop();
    let (_b_old, b_old_port) = occupy_last_port(&b);
    a.write("notes.md", "one\ntwo, while b was away\n");
    b.write("offline-b.md", "written while b was stopped\n");
    b.sync();
    let b_port = wait_new_port(&b, b_old_port);
    put_file(&mut expected, "notes.md", "one\ntwo, while b was away\n");
    put_file(&mut expected, "offline-b.md", "written while b was stopped\n");
    wait_converged_to(&[&a, &b], &expected);
    // A has B's new address, and uses it.
    wait_connected_on_port(&a, "b", b_port);
    // Live edits flow both ways on the new session.
    a.write("live-a.md", "a\n");
    b.write("live-b.md", "b\n");
    put_file(&mut expected, "live-a.md", "a\n");
    put_file(&mut expected, "live-b.md", "b\n");
    wait_converged_to(&[&a, &b], &expected);

    // Now A moves too. B only knows A's old port (taken by someone else now), so the two
    // meet again only if A saved B's new address and dials it.
    a.stop();
    let (_a_old, a_old_port) = occupy_last_port(&a);
    b.write("offline-a.md", "written while a was stopped\n");
    a.write("notes.md", "one\ntwo, while b was away\nthree, while a was stopped\n");
    a.sync();
    let a_port = wait_new_port(&a, a_old_port);
    put_file(&mut expected, "offline-a.md", "written while a was stopped\n");
    put_file(&mut expected, "notes.md", "one\ntwo, while b was away\nthree, while a was stopped\n");
    wait_converged_to(&[&a, &b], &expected);
    wait_connected_on_port(&b, "a", a_port);
    settle(&[&a, &b], &mut expected);
}

#[test]
fn a_member_introduces_a_newcomer_to_the_whole_mesh() {
    let mut expected = one_file("from-a.md", "a\n");
    let (a, mut b) = connected_pair(&expected);

    // Any member prints a ticket for the folder by sharing it again: a running one
    // answers at once and keeps running. C knows only B.
    let out = b.run_to_end(&[OsStr::new("share"), b.dir().as_os_str()]);
    assert!(out.status.success(), "share on a running member: {out:?}");
    assert!(b.is_running(), "b should keep running");
    let b_ticket = out.stdout.trim().to_owned();
    let (decoded, a_ticket) =
        (Ticket::decode(&b_ticket).expect("b's ticket"), Ticket::decode(a.ticket()).expect("a's"));
    assert_eq!(decoded.folder, a_ticket.folder);
    assert_ne!(decoded.addr.id, a_ticket.addr.id, "b's ticket should name b");
    let b_addr = std::net::SocketAddr::from(([127, 0, 0, 1], last_port(&b)));
    assert!(
        decoded.addr.ip_addrs().any(|a| *a == b_addr),
        "b's ticket should hold {b_addr}: {:?}",
        decoded.addr
    );
    let c = Peer::join("c", &b_ticket);
    wait_converged_to(&[&a, &b, &c], &expected);
    // B told C about A (and A about C): they meet without B's help.
    wait_connected(&a, "c");
    wait_connected(&c, "a");

    b.stop();
    a.write("a-without-b.md", "a\n");
    c.write("c-without-b.md", "c\n");
    put_file(&mut expected, "a-without-b.md", "a\n");
    put_file(&mut expected, "c-without-b.md", "c\n");
    wait_converged_to(&[&a, &c], &expected);
    wait_connected(&a, "c");
}

#[test]
fn a_newcomer_meets_members_that_are_offline_when_it_joins() {
    let mut expected = one_file("from-a.md", "a\n");
    let (mut a, mut b) = connected_pair(&expected);

    // A is away when C joins through B: B passes on where A was last seen.
    a.stop();
    b.stop();
    let b_ticket = b.start_share();
    let c = Peer::join("c", &b_ticket);
    wait_converged_to(&[&b, &c], &expected);
    b.stop();

    // A comes back (same port) knowing nothing of C, and B is gone: only C can dial.
    a.sync();
    a.write("a-back.md", "a\n");
    c.write("c-new.md", "c\n");
    put_file(&mut expected, "a-back.md", "a\n");
    put_file(&mut expected, "c-new.md", "c\n");
    wait_converged_to(&[&a, &c], &expected);
    wait_connected(&a, "c");
}

#[test]
fn a_relay_that_does_not_answer_leaves_direct_sync_alone() {
    // A closed port on this machine: the relay never answers (nothing leaves 127.0.0.1).
    let closed = UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("a free port").port();
    let relay = format!("relay = \"http://127.0.0.1:{closed}\"\n");
    let mut expected = one_file("notes.md", "one\n");
    let mut a = Peer::new("a");
    a.write_config(&relay);
    write_tree(a.dir(), &expected);
    // The ticket waits a bounded time for the relay, then holds direct addresses.
    let started = std::time::Instant::now();
    a.start_share();
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "share took {:?}", started.elapsed());
    assert!(a.log_text().contains("no relay reachable yet"), "the configured relay was not used");
    let mut b = Peer::new("b");
    b.write_config(&relay);
    b.start_join(a.ticket());
    wait_converged_to(&[&a, &b], &expected);
    b.write("from-b.md", "b\n");
    put_file(&mut expected, "from-b.md", "b\n");
    wait_converged_to(&[&a, &b], &expected);
    wait_connected(&a, "b");
}

#[test]
fn a_killed_peer_comes_back_without_a_reconnection_storm() {
    let mut expected = one_file("log.md", "0\n");
    let (mut a, b) = connected_pair(&expected);
    for round in 1..=3 {
        // B keeps the dead session until QUIC notices, while A redials at startup: the
        // two must settle on one session, not close each other's in a loop.
        a.kill();
        let text = (0..=round).map(|i| format!("{i}\n")).collect::<String>();
        a.write("log.md", &text);
        a.sync();
        put_file(&mut expected, "log.md", &text);
        wait_converged_to(&[&a, &b], &expected);
    }
    settle(&[&a, &b], &mut expected);
    let sessions = a.log_text().matches("session: connected peer=").count();
    eprintln!("{sessions} sessions for 4 starts");
    // One per start, plus a few for a simultaneous dial now and then.
    assert!(sessions <= 4 * 3, "{sessions} sessions for 4 starts: a reconnection storm");
}
