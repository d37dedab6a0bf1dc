//! Clock skew: peers whose wall clocks are days off (libfaketime, preloaded into the real
//! binary) converge with the others and misattribute nothing. Time is only ever a claim
//! a change carries for history; no decision that must agree between peers may depend
//! on it. Skipped, saying so, where libfaketime is not installed (`.ci/run` installs the
//! Debian package `faketime`).

use std::path::PathBuf;

use serde_json::Value;

use crate::harness::{
    Peer, Tree, numbered_lines, put_file, replace_line, settle, wait_converged_to, wait_for,
};

/// libfaketime's multi-threaded build (teatime has many threads), where Debian puts it.
fn libfaketime() -> Option<PathBuf> {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|dir| dir.path().join("faketime/libfaketimeMT.so.1"))
        .chain([PathBuf::from("/usr/lib/faketime/libfaketimeMT.so.1")])
        .find(|path| path.is_file());
    if found.is_none() {
        eprintln!("SKIPPED: libfaketime is not installed (apt-get install faketime)");
    }
    found
}

/// A peer whose processes see the wall clock moved by `offset` (libfaketime syntax,
/// e.g. `-3d`). The monotonic clock is left alone: timers and deadlines run normally.
/// `env` execs the binary, so the harness's SIGTERM and SIGKILL reach teatime itself.
fn skewed(name: &str, lib: &std::path::Path, offset: &str) -> Peer {
    let mut peer = Peer::new(name);
    let wrapper = [
        "env".to_owned(),
        format!("LD_PRELOAD={}", lib.display()),
        format!("FAKETIME={offset}"),
        "FAKETIME_DONT_FAKE_MONOTONIC=1".to_owned(),
    ];
    peer.set_network("loopback", &wrapper);
    peer
}

/// Stops `peer` syncing and waits until its sessions are gone.
fn pause(peer: &Peer) {
    peer.cli_ok(&["pause", peer.dir_arg()]);
    wait_for(&format!("{} to drop its sessions", peer.name()), || {
        let v = peer.cli_json(&["status", peer.dir_arg(), "--json"]);
        let peers = v["peers"].as_array().cloned().unwrap_or_default();
        if peers.iter().all(|p| p["connected"] == false) { Ok(()) } else { Err(format!("{v}")) }
    });
}

/// The year-month-day of the first log line's timestamp (`2026-11-18T...`).
fn logged_day(peer: &Peer) -> String {
    wait_for(&format!("{} to log a line", peer.name()), || {
        let log = peer.log_text();
        log.lines()
            .find(|l| l.starts_with("20"))
            .map(|l| l[..10].to_owned())
            .ok_or_else(|| "no line yet".into())
    })
}

fn day_offset(days: i64) -> String {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    let t = now + days * 86_400;
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = t.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Who `blame` says wrote each line of `path`, as seen from `peer`.
fn blame(peer: &Peer, path: &str) -> Vec<(String, String)> {
    let v = peer.cli_json(&["blame", peer.dir_arg(), path, "--json"]);
    v.as_array()
        .expect("blame --json is an array")
        .iter()
        .map(|l| (l["line"].as_str().unwrap_or("").to_owned(), l["peer"].as_str().unwrap_or("?").to_owned()))
        .collect()
}

#[test]
fn peers_days_apart_converge_and_attribute_every_change() {
    let Some(lib) = libfaketime() else { return };
    let mut expected = Tree::new();
    put_file(&mut expected, "shared.txt", numbered_lines(6));
    let a = Peer::share_tree("a", &expected);
    let mut b = skewed("b", &lib, "-3d");
    b.start_join(a.ticket());
    let mut c = skewed("c", &lib, "+5d");
    c.start_join(a.ticket());
    let all = [&a, &b, &c];
    wait_converged_to(&all, &expected);
    // libfaketime really moved the binary's clock (its logs are stamped by SystemTime).
    assert_eq!(logged_day(&b), day_offset(-3), "b's clock should be 3 days behind");
    assert_eq!(logged_day(&c), day_offset(5), "c's clock should be 5 days ahead");

    // One after the other: each edit wins, whatever its author's clock says.
    let mut text = numbered_lines(6);
    for (peer, line) in [(&b, 2), (&c, 3), (&a, 1)] {
        text = replace_line(&text, line, &format!("line {line} by {}", peer.name()));
        peer.write("shared.txt", &text);
        put_file(&mut expected, "shared.txt", &text);
        wait_converged_to(&all, &expected);
    }

    // Concurrently (A and C paused: nobody hears anybody): each edits its own line of
    // the file, and creates a file.
    for peer in [&a, &c] {
        pause(peer);
    }
    let mut merged = text.clone();
    for (peer, line) in [(&a, 4), (&b, 5), (&c, 6)] {
        let mine = replace_line(&text, line, &format!("line {line} by {}", peer.name()));
        peer.write("shared.txt", &mine);
        merged = replace_line(&merged, line, &format!("line {line} by {}", peer.name()));
        let own = format!("from-{}.txt", peer.name());
        peer.write(&own, format!("written by {}\n", peer.name()));
        put_file(&mut expected, &own, format!("written by {}\n", peer.name()));
    }
    for peer in [&a, &c] {
        peer.cli_ok(&["resume", peer.dir_arg()]);
    }
    put_file(&mut expected, "shared.txt", &merged);
    settle(&all, &mut expected);

    // Attribution: every peer's blame names the member that wrote each line, and each
    // created file's history is its creator's alone.
    let authors = ["a", "b", "c", "a", "b", "c"];
    for viewer in all {
        let lines = blame(viewer, "shared.txt");
        assert_eq!(lines.len(), 6, "{}: blame of shared.txt: {lines:?}", viewer.name());
        for (n, (line, by)) in lines.iter().enumerate() {
            let want = authors[n];
            assert!(
                by == want,
                "{}'s blame: line {} {line:?} attributed to {by}, written by {want}",
                viewer.name(),
                n + 1
            );
        }
        for author in ["a", "b", "c"] {
            let log = viewer.cli_json(&["log", viewer.dir_arg(), &format!("from-{author}.txt"), "--json"]);
            let changes = log.as_array().expect("log --json is an array");
            assert!(!changes.is_empty(), "{}: no history for from-{author}.txt", viewer.name());
            for change in changes {
                assert_eq!(
                    change["peer"].as_str(),
                    Some(author),
                    "{}: a change of from-{author}.txt attributed elsewhere: {change}",
                    viewer.name()
                );
            }
        }
        // Every change of every file names one of the members, whatever its time.
        let log: Value = viewer.cli_json(&["log", viewer.dir_arg(), "--json"]);
        for change in log.as_array().expect("an array") {
            let by = change["peer"].as_str().unwrap_or("");
            assert!(["a", "b", "c"].contains(&by), "{}: change by {by:?}: {change}", viewer.name());
        }
    }
}
