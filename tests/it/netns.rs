//! The `internet` and `lan` modes for real, in a network namespace of the test's own whose
//! only interface is loopback: mDNS, relays and DNS all run, and nothing can leave the
//! machine (there is no route out). Needs `unshare`, `nsenter` and `ip`, and the right to
//! create a namespace (root, as on CI); without them each test says it is skipped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::reach::{last_port, wait_connected, wait_new_port};

/// Loopback up, with multicast (for mDNS), and nothing else.
const SETUP: &str = "ip link set lo up && ip link set lo multicast on && ip route add 224.0.0.0/4 dev lo \
                     && echo ready && exec sleep 3600";

/// A network namespace kept alive by a sleeping process; processes join it via `wrapper`.
struct Netns {
    holder: Child,
    wrapper: Vec<String>,
}

impl Netns {
    /// `None` when this machine does not let us make one.
    fn new() -> Option<Netns> {
        let mut holder = Command::new("unshare")
            .args(["-n", "--", "sh", "-c", SETUP])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        // The script prints `ready` or exits at once: this read cannot hang.
        let mut line = String::new();
        let ready =
            BufReader::new(holder.stdout.take()?).read_line(&mut line).is_ok() && line.trim() == "ready";
        let wrapper = ["nsenter", "-t", &holder.id().to_string(), "-n", "--"].map(String::from).to_vec();
        let ns = Netns { holder, wrapper };
        if !ready {
            return None;
        }
        Some(ns)
    }

    /// A peer whose processes run in this namespace with `--network mode`.
    fn peer(&self, name: &str, mode: &str) -> Peer {
        let mut peer = Peer::new(name);
        peer.set_network(mode, &self.wrapper);
        peer
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

fn skipped(test: &str) {
    eprintln!("{test}: skipped, this machine does not let the test make a network namespace");
}

#[test]
fn lan_peers_that_both_moved_find_each_other_by_mdns() {
    let Some(ns) = Netns::new() else { return skipped("lan_peers_that_both_moved_find_each_other_by_mdns") };
    let mut expected = one_file("notes.md", "one\n");
    let mut a = ns.peer("a", "lan");
    write_tree(a.dir(), &expected);
    a.start_share();
    let mut b = ns.peer("b", "lan");
    b.start_join(a.ticket());
    wait_converged_to(&[&a, &b], &expected);

    // Both stop and forget their ports: each comes back on a new one, and what each saved
    // about the other is stale. Only mDNS can bring them together again.
    a.stop();
    b.stop();
    let (a_old, b_old) = (last_port(&a), last_port(&b));
    std::fs::remove_file(a.home().join("port")).expect("forget a's port");
    std::fs::remove_file(b.home().join("port")).expect("forget b's port");
    a.write("notes.md", "one\ntwo, from a while apart\n");
    b.write("from-b.md", "b, while apart\n");
    a.sync();
    b.sync();
    wait_new_port(&a, a_old);
    wait_new_port(&b, b_old);
    put_file(&mut expected, "notes.md", "one\ntwo, from a while apart\n");
    put_file(&mut expected, "from-b.md", "b, while apart\n");
    wait_converged_to(&[&a, &b], &expected);
    wait_connected(&a, "b");
    settle(&[&a, &b], &mut expected);
}

#[test]
fn internet_mode_without_internet_never_hangs() {
    let Some(ns) = Netns::new() else { return skipped("internet_mode_without_internet_never_hangs") };
    let mut expected = one_file("notes.md", "one\n");
    let mut a = ns.peer("a", "internet");
    write_tree(a.dir(), &expected);
    // No relay answers: the ticket comes after the bounded wait for one, with direct
    // addresses only.
    let started = Instant::now();
    a.start_share();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "share took {took:?} to print a ticket offline");

    let mut b = ns.peer("b", "internet");
    b.start_join(a.ticket());
    wait_converged_to(&[&a, &b], &expected);
    b.write("from-b.md", "b\n");
    put_file(&mut expected, "from-b.md", "b\n");
    wait_converged_to(&[&a, &b], &expected);

    // Commands answer at once, running or not; stopping and restarting are prompt.
    for peer in [&a, &b] {
        let started = Instant::now();
        peer.cli_json(&["status", peer.dir_arg(), "--json"]);
        assert!(started.elapsed() < Duration::from_secs(5), "status took {:?}", started.elapsed());
    }
    let started = Instant::now();
    b.stop();
    assert!(started.elapsed() < Duration::from_secs(5), "stopping took {:?}", started.elapsed());
    let started = Instant::now();
    b.cli_json(&["status", b.dir_arg(), "--json"]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "status of a stopped folder took {:?}",
        started.elapsed()
    );
    a.write("while-b-stopped.md", "a\n");
    put_file(&mut expected, "while-b-stopped.md", "a\n");
    b.sync();
    wait_converged_to(&[&a, &b], &expected);
    a.stop();
    b.stop();
}
