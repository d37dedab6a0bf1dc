//! What teatime writes to stderr when it is not a terminal (a file, a pipe, journald under
//! the systemd units): plain text, no colour escapes.

use std::fs::File;
use std::process::{Command, Stdio};

use crate::harness::*;

#[test]
fn logs_to_a_file_or_pipe_carry_no_colour_codes() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("notes");
    std::fs::create_dir(&dir).unwrap();
    let err_path = root.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_teatime"))
        .arg("--home")
        .arg(root.path().join("home"))
        .args(["--network", "loopback", "share"])
        .arg(&dir)
        // What a service manager gives it: no terminal, no NO_COLOR, the default filter.
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .env_remove("TEATIME_RELAY")
        .env_remove("TEATIME_RELAY_CA")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&err_path).unwrap_or_default();
    wait_until("the sharer to log that it syncs", || read().contains("syncing"));
    let _ = child.kill();
    let _ = child.wait();
    let log = read();
    assert!(!log.contains('\u{1b}'), "escape codes in a log that goes to a file: {log:?}");
}
