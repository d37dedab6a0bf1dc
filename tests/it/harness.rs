//! Test harness: peers that run the real binary in temp folders, folder snapshots, and
//! polling waits that explain themselves when they time out.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The per-folder state directory, never part of what is compared.
pub const STATE_DIR: &str = ".teatime";

const POLL: Duration = Duration::from_millis(20);
const LOG_TAIL_LINES: usize = 60;

/// How long any single wait may take: generous, because CI is a loaded 2-core machine.
pub fn deadline() -> Duration {
    let secs = std::env::var("TEATIME_IT_TIMEOUT_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    Duration::from_secs(secs)
}

// ---------------------------------------------------------------------------
// Folder snapshots

/// One entry of a folder snapshot.
#[derive(Clone, PartialEq, Eq)]
pub enum Entry {
    Dir,
    File(Vec<u8>),
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Dir => f.write_str("Dir"),
            Entry::File(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) if text.len() <= 200 => write!(f, "File({text:?})"),
                Ok(text) => {
                    let cut = text.char_indices().nth(200).map_or(text.len(), |(i, _)| i);
                    write!(f, "File({:?}… {} bytes)", &text[..cut], bytes.len())
                }
                Err(_) => write!(f, "File(binary, {} bytes)", bytes.len()),
            },
        }
    }
}

/// A folder's contents keyed by relative path with `/` separators.
pub type Tree = BTreeMap<String, Entry>;

/// Snapshots `dir`, leaving out the top-level state directory. A missing `dir` is empty.
pub fn tree(dir: &Path) -> Tree {
    let mut out = Tree::new();
    walk(dir, "", true, &mut out);
    out
}

fn walk(dir: &Path, prefix: &str, skip_state: bool, out: &mut Tree) {
    // A work list, not recursion: a test may nest directories thousands deep.
    let mut todo = vec![(dir.to_path_buf(), prefix.to_owned())];
    while let Some((dir, prefix)) = todo.pop() {
        // A live peer may change the folder under us: whatever vanishes mid-walk is
        // skipped, and the callers poll until the snapshot is the one they expect.
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if skip_state && prefix.is_empty() && name == STATE_DIR {
                continue;
            }
            let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            let Ok(meta) = fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if meta.is_dir() {
                out.insert(rel.clone(), Entry::Dir);
                todo.push((entry.path(), rel));
            } else if let Ok(bytes) = fs::read(entry.path()) {
                out.insert(rel, Entry::File(bytes));
            }
        }
    }
}

/// Every path under `dir`, the state directory included.
pub fn all_paths(dir: &Path) -> Vec<String> {
    let mut out = Tree::new();
    walk(dir, "", false, &mut out);
    out.into_keys().collect()
}

/// Adds a file, and any missing parent directories, to an expected tree.
pub fn put_file(tree: &mut Tree, path: &str, content: impl AsRef<[u8]>) {
    put_parents(tree, path);
    tree.insert(path.to_owned(), Entry::File(content.as_ref().to_vec()));
}

/// Adds a directory, and any missing parents, to an expected tree.
pub fn put_dir(tree: &mut Tree, path: &str) {
    put_parents(tree, path);
    tree.insert(path.to_owned(), Entry::Dir);
}

/// Removes `path` and everything below it from an expected tree.
pub fn remove(tree: &mut Tree, path: &str) {
    let below = format!("{path}/");
    tree.retain(|k, _| k != path && !k.starts_with(&below));
}

/// Moves `from` (with everything below it) to `to` in an expected tree.
pub fn rename(tree: &mut Tree, from: &str, to: &str) {
    let below = format!("{from}/");
    let moved: Vec<String> = tree.keys().filter(|k| *k == from || k.starts_with(&below)).cloned().collect();
    assert!(!moved.is_empty(), "expected tree has no {from:?} to rename");
    for old in moved {
        let entry = tree.remove(&old).expect("key was just listed");
        tree.insert(format!("{to}{}", &old[from.len()..]), entry);
    }
    put_parents(tree, to);
}

fn put_parents(tree: &mut Tree, path: &str) {
    let mut rest = path;
    while let Some((parent, _)) = rest.rsplit_once('/') {
        tree.insert(parent.to_owned(), Entry::Dir);
        rest = parent;
    }
}

/// Creates `tree` on disk under `dir`.
pub fn write_tree(dir: &Path, tree: &Tree) {
    fs::create_dir_all(dir).expect("create folder");
    for (rel, entry) in tree {
        let path = dir.join(rel);
        match entry {
            Entry::Dir => fs::create_dir_all(&path),
            Entry::File(bytes) => {
                fs::create_dir_all(path.parent().expect("file has a parent")).expect("mkdir -p");
                fs::write(&path, bytes)
            }
        }
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

/// Human-readable differences, `actual` against `expected`.
pub fn diff_trees(actual: &Tree, expected: &Tree) -> String {
    let mut out = String::new();
    for (path, want) in expected {
        match actual.get(path) {
            None => out.push_str(&format!("  missing  {path}: {want:?}\n")),
            Some(got) if got != want => {
                out.push_str(&format!("  differs  {path}: {got:?}, expected {want:?}\n"))
            }
            Some(_) => {}
        }
    }
    for (path, got) in actual {
        if !expected.contains_key(path) {
            out.push_str(&format!("  extra    {path}: {got:?}\n"));
        }
    }
    out
}

fn fmt_tree(tree: &Tree) -> String {
    if tree.is_empty() {
        return "  (empty)\n".to_owned();
    }
    tree.iter().map(|(path, entry)| format!("  {path}: {entry:?}\n")).collect()
}

// ---------------------------------------------------------------------------
// Waiting

/// Polls `check` until it returns `Ok`, panicking after [`deadline`] with its last `Err`.
pub fn wait_for<T>(what: &str, check: impl FnMut() -> Result<T, String>) -> T {
    wait_for_within(deadline(), what, check)
}

/// Polls `check` until it returns `Ok`, panicking after `limit` with its last `Err`.
pub fn wait_for_within<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(value) => return value,
            Err(why) if start.elapsed() > limit => {
                panic!("timed out after {limit:?} waiting for {what}:\n{why}")
            }
            Err(_) => thread::sleep(POLL),
        }
    }
}

/// Polls `check` until it is true, panicking after `limit`.
pub fn wait_until_within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() <= limit, "timed out after {limit:?} waiting for {what}");
        thread::sleep(POLL);
    }
}

/// Polls `check` until it is true, panicking after [`deadline`].
pub fn wait_until(what: &str, check: impl FnMut() -> bool) {
    wait_until_within(deadline(), what, check);
}

/// Waits until every peer's folder is the same, and returns that tree.
pub fn wait_converged(peers: &[&Peer]) -> Tree {
    let (first, rest) = peers.split_first().expect("at least one peer");
    wait_for(&format!("{} to converge", names(peers)), || {
        let reference = first.tree();
        for peer in rest {
            let other = peer.tree();
            if other != reference {
                return Err(format!(
                    "{} against {}:\n{}",
                    peer.name,
                    first.name,
                    diff_trees(&other, &reference)
                ));
            }
        }
        Ok(reference)
    })
}

/// Waits until every peer's folder is exactly `expected`.
pub fn wait_converged_to(peers: &[&Peer], expected: &Tree) {
    wait_converged_to_within(deadline(), peers, expected);
}

/// Waits until every peer's folder is exactly `expected`, for at most `limit`.
pub fn wait_converged_to_within(limit: Duration, peers: &[&Peer], expected: &Tree) {
    wait_for_within(limit, &format!("{} to hold the expected tree", names(peers)), || {
        let report: String = peers
            .iter()
            .filter_map(|peer| {
                let actual = peer.tree();
                (&actual != expected).then(|| {
                    format!(
                        "{}'s folder against the expected tree:\n{}",
                        peer.name,
                        diff_trees(&actual, expected)
                    )
                })
            })
            .collect();
        if report.is_empty() { Ok(()) } else { Err(report) }
    });
}

/// Asserts, without waiting, that every peer's folder is exactly `expected`.
pub fn assert_trees(peers: &[&Peer], expected: &Tree) {
    for peer in peers {
        let actual = peer.tree();
        assert!(
            &actual == expected,
            "{}'s folder against the expected tree:\n{}",
            peer.name,
            diff_trees(&actual, expected)
        );
    }
}

fn names(peers: &[&Peer]) -> String {
    peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
}

/// Watches, from a background thread, whether a path is ever missing.
pub struct AbsenceWatch {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<bool>>,
}

impl AbsenceWatch {
    pub fn start(path: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            let mut seen_absent = false;
            while !flag.load(Ordering::Relaxed) {
                // Polling much faster than the waits do, to catch a brief delete+recreate.
                seen_absent |= fs::symlink_metadata(&path).is_err();
                thread::sleep(Duration::from_millis(1));
            }
            seen_absent
        });
        Self { stop, handle: Some(handle) }
    }

    /// Stops watching; true if the path was ever missing.
    pub fn finish(mut self) -> bool {
        self.stop.store(true, Ordering::Relaxed);
        let handle = self.handle.take().expect("finished once");
        handle.join().expect("watch thread")
    }
}

impl Drop for AbsenceWatch {
    fn drop(&mut self) {
        // Also on a failed test, so the thread does not outlive it.
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------
// Peers

/// How a run that was expected to finish by itself ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// What every test peer's `config.toml` holds. The free space a peer keeps is fixed, not
/// 1% of the disk: a test must not fail because the machine's shared disk is nearly full
/// (CI saw 1.4 GB free of 252 GB, below 1%, and every sync waited). The disk-full tests set
/// their own threshold per folder.
pub const TEST_CONFIG: &str = "min_disk_free = \"16777216\"\n";

/// One teatime installation: its own temp home and folder, and at most one running process.
pub struct Peer {
    pub name: String,
    root: Option<TempDir>,
    home: PathBuf,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    stdout: Option<Receiver<String>>,
    ticket: Option<String>,
    runs: u32,
    /// `--network` for every process (default `loopback`).
    network: String,
    /// A command every process runs behind, e.g. `nsenter -t PID -n --` (default none).
    wrapper: Vec<String>,
    /// Environment variables for the next processes (see [`Peer::set_env`]).
    env: Vec<(String, String)>,
}

impl Peer {
    /// A peer that is not running yet; neither its home nor its folder exists.
    pub fn new(name: &str) -> Self {
        let root = tempfile::Builder::new()
            .prefix(&format!("teatime-it-{name}-"))
            .tempdir()
            .expect("create temp dir");
        let home = root.path().join("home");
        let dir = root.path().join(name);
        let log = root.path().join(format!("{name}.log"));
        Self {
            name: name.to_owned(),
            root: Some(root),
            home,
            dir,
            log,
            child: None,
            stdout: None,
            ticket: None,
            runs: 0,
            network: "loopback".to_owned(),
            wrapper: Vec::new(),
            env: Vec::new(),
        }
    }

    /// A peer that is not running yet, whose folder will be `folder` (relative) inside its
    /// temp dir, so a test can put things around the folder (see [`Peer::temp_root`]).
    pub fn new_in(name: &str, folder: &str) -> Self {
        let mut peer = Self::new(name);
        peer.dir = peer.root_path().join(folder);
        peer
    }

    /// The peer's own temp dir: its home, log and folder are inside.
    pub fn temp_root(&self) -> &Path {
        self.root_path()
    }

    /// Runs this peer's processes with `--network MODE`, each behind `wrapper` (a command
    /// that runs the rest of its arguments, e.g. in a network namespace). Only for a
    /// network that cannot reach anything beyond this machine.
    pub fn set_network(&mut self, mode: &str, wrapper: &[String]) {
        self.network = mode.to_owned();
        self.wrapper = wrapper.to_vec();
    }

    /// Sets (`Some`) or unsets an environment variable for this peer's next processes, e.g.
    /// `TEATIME_CRASH_AT`.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(value) = value {
            self.env.push((key.to_owned(), value.to_owned()));
        }
    }

    /// A peer sharing a new empty folder.
    pub fn share(name: &str) -> Self {
        let mut peer = Self::new(name);
        fs::create_dir_all(&peer.dir).expect("create folder");
        peer.start_share();
        peer
    }

    /// A peer sharing a folder that starts as `tree`.
    pub fn share_tree(name: &str, tree: &Tree) -> Self {
        let mut peer = Self::new(name);
        write_tree(&peer.dir, tree);
        peer.start_share();
        peer
    }

    /// A peer joining `ticket` into a folder that does not exist yet.
    pub fn join(name: &str, ticket: &str) -> Self {
        let mut peer = Self::new(name);
        peer.start_join(ticket);
        peer
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Writes the home's `config.toml`: `extra` after what every test peer has. A peer
    /// started without one gets that much (see [`TEST_CONFIG`]).
    pub fn write_config(&self, extra: &str) {
        fs::create_dir_all(&self.home).expect("create home");
        fs::write(self.home.join("config.toml"), format!("{TEST_CONFIG}{extra}")).expect("write config.toml");
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn tree(&self) -> Tree {
        tree(&self.dir)
    }

    /// The ticket printed by the latest `share`.
    pub fn ticket(&self) -> &str {
        self.ticket.as_deref().expect("peer has not shared")
    }

    /// Runs `share` on this peer's folder and returns the ticket it prints.
    pub fn start_share(&mut self) -> String {
        let dir = self.dir.clone();
        self.spawn(&[OsStr::new("share"), dir.as_os_str()]);
        let ticket = self.read_ticket();
        self.ticket = Some(ticket.clone());
        ticket
    }

    /// Runs `join TICKET` into this peer's folder.
    pub fn start_join(&mut self, ticket: &str) {
        let dir = self.dir.clone();
        self.spawn(&[OsStr::new("join"), OsStr::new(ticket), dir.as_os_str()]);
    }

    /// Runs `daemon` on this peer's home (its log goes to the peer's log) and waits until
    /// its socket answers.
    pub fn start_daemon(&mut self) {
        self.spawn(&[OsStr::new("daemon")]);
        let socket = self.home.join("daemon.sock");
        wait_until(&format!("{}'s daemon socket", self.name), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
    }

    /// Restarts syncing this peer's folder, with no ticket.
    pub fn sync(&mut self) {
        let dir = self.dir.clone();
        self.spawn(&[OsStr::new("sync"), dir.as_os_str()]);
    }

    /// Sends SIGTERM and asserts a clean exit (status 0) within the deadline.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("peer is not running");
        let status =
            Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.name);
        let exited = wait_exit(&mut child, deadline());
        self.stdout = None;
        match exited {
            Some(status) => assert!(status.success(), "{} should exit 0 on SIGTERM, got {status}", self.name),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not exit within {:?} of SIGTERM", self.name, deadline());
            }
        }
    }

    /// Whether this peer's process is still running (not exited, not stopped).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// SIGKILL, no questions asked.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("peer is not running");
        let _ = child.kill();
        let _ = child.wait();
        self.stdout = None;
    }

    /// Runs a command with this peer's home that must end by itself, e.g. a failing `join`.
    /// `RUST_LOG` is unset so stderr is what a user would see.
    pub fn run_to_end(&self, args: &[&OsStr]) -> Finished {
        let (status, stdout, stderr) = self.run_captured(args, "run");
        let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
        Finished { status, stdout: text(stdout), stderr: text(stderr) }
    }

    /// Runs a command with this peer's home (`RUST_LOG` unset), its output captured in
    /// files named after `tag`; panics if it is still running after [`deadline`].
    fn run_captured(&self, args: &[&OsStr], tag: &str) -> (ExitStatus, Vec<u8>, Vec<u8>) {
        let root = self.root_path();
        let out_path = root.join(format!("{tag}.stdout"));
        let err_path = root.join(format!("{tag}.stderr"));
        let mut child = self
            .command(args)
            .env_remove("RUST_LOG")
            .stdout(File::create(&out_path).expect("create stdout file"))
            .stderr(File::create(&err_path).expect("create stderr file"))
            .spawn()
            .expect("spawn teatime");
        let Some(status) = wait_exit(&mut child, deadline()) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`teatime {args:?}` on {} still running after {:?}", self.name, deadline());
        };
        let stdout = fs::read(&out_path).expect("read stdout");
        let stderr = fs::read(&err_path).expect("read stderr");
        let _ = fs::remove_file(&out_path);
        let _ = fs::remove_file(&err_path);
        (status, stdout, stderr)
    }

    /// This peer's folder as a command-line argument.
    pub fn dir_arg(&self) -> &str {
        self.dir.to_str().expect("temp paths are UTF-8")
    }

    /// Runs a one-shot command (`config`, `peers`, `conflicts`, `resolve`...) with this
    /// peer's home, network and name, whether or not the peer is running, and returns how
    /// it ended. Panics if it is still running after [`deadline`]. The call and its output
    /// go to the peer's log, so a failing test's dump shows them.
    pub fn cli(&self, args: &[&str]) -> Output {
        static CALLS: AtomicU32 = AtomicU32::new(0);
        let n = CALLS.fetch_add(1, Ordering::Relaxed);
        let os_args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let (status, stdout, stderr) = self.run_captured(&os_args, &format!("cli-{n}"));
        if let Ok(mut log) = OpenOptions::new().create(true).append(true).open(&self.log) {
            let _ = writeln!(
                log,
                "----- cli: teatime {} -> {status}\n  stdout: {:?}\n  stderr: {:?}",
                args.join(" "),
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr),
            );
        }
        Output { status, stdout, stderr }
    }

    /// Runs [`Peer::cli`] and insists on success; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "`teatime {}` on {} failed ({}): stdout {:?}, stderr {:?}",
            args.join(" "),
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        String::from_utf8(out.stdout)
            .unwrap_or_else(|e| panic!("`teatime {}` stdout is not UTF-8: {e}", args.join(" ")))
    }

    /// Runs [`Peer::cli`], insists on success, and parses stdout as JSON.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let stdout = self.cli_ok(args);
        serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!("`teatime {}` on {} printed no JSON ({e}): {stdout:?}", args.join(" "), self.name)
        })
    }

    /// Everything this peer's processes wrote to stderr so far.
    pub fn log_text(&self) -> String {
        fs::read(&self.log).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default()
    }

    // File operations on this peer's folder, as a user would do them.

    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().expect("file has a parent")).expect("mkdir -p");
        fs::write(&path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    pub fn read(&self, rel: &str) -> Option<Vec<u8>> {
        fs::read(self.path(rel)).ok()
    }

    pub fn mkdir(&self, rel: &str) {
        fs::create_dir_all(self.path(rel)).expect("mkdir -p");
    }

    pub fn remove_file(&self, rel: &str) {
        fs::remove_file(self.path(rel)).unwrap_or_else(|e| panic!("rm {rel}: {e}"));
    }

    pub fn remove_dir_all(&self, rel: &str) {
        fs::remove_dir_all(self.path(rel)).unwrap_or_else(|e| panic!("rm -r {rel}: {e}"));
    }

    pub fn rename(&self, from: &str, to: &str) {
        fs::rename(self.path(from), self.path(to)).unwrap_or_else(|e| panic!("mv {from} {to}: {e}"));
    }

    fn root_path(&self) -> &Path {
        self.root.as_ref().expect("temp dir kept").path()
    }

    fn command(&self, args: &[&OsStr]) -> Command {
        let bin = env!("CARGO_BIN_EXE_teatime");
        let mut cmd = match self.wrapper.split_first() {
            None => Command::new(bin),
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(bin);
                cmd
            }
        };
        cmd.arg("--home")
            .arg(&self.home)
            .args(["--network", &self.network])
            // Peers see each other under their labels, e.g. in conflict copies' names.
            .arg("--name")
            .arg(&self.name)
            .args(args)
            // Flags are explicit; the developer's own settings must not leak in.
            .env_remove("TEATIME_HOME")
            .env_remove("TEATIME_NETWORK")
            .env_remove("TEATIME_RELAY")
            .env_remove("TEATIME_NAME")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        if std::env::var_os("RUST_LOG").is_none() && !self.env.iter().any(|(k, _)| k == "RUST_LOG") {
            cmd.env("RUST_LOG", "info");
        }
        if std::env::var_os("RUST_BACKTRACE").is_none() {
            cmd.env("RUST_BACKTRACE", "1");
        }
        cmd
    }

    fn spawn(&mut self, args: &[&OsStr]) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        if !self.home.join("config.toml").exists() {
            self.write_config("");
        }
        self.runs += 1;
        let mut log = OpenOptions::new().create(true).append(true).open(&self.log).expect("open log");
        writeln!(log, "===== run {}: teatime {args:?} =====", self.runs).expect("write log");
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            // A file, not a pipe: a chatty peer must never block on a full pipe.
            .stderr(log)
            .spawn()
            .expect("spawn teatime");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            // Drain to EOF even once nobody listens, so the peer never blocks on stdout.
            while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let _ = tx.send(String::from_utf8_lossy(&line).trim_end().to_owned());
                line.clear();
            }
        });
        self.child = Some(child);
        self.stdout = Some(rx);
    }

    fn read_ticket(&mut self) -> String {
        let rx = self.stdout.as_ref().expect("running");
        let line = match rx.recv_timeout(deadline()) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                panic!("{} printed no ticket within {:?}", self.name, deadline())
            }
            Err(RecvTimeoutError::Disconnected) => {
                let child = self.child.as_mut().expect("running");
                let status = wait_exit(child, deadline())
                    .map_or_else(|| "still running".to_owned(), |s| s.to_string());
                panic!("{} closed stdout without a ticket ({status})", self.name)
            }
        };
        assert!(
            !line.is_empty() && !line.contains(char::is_whitespace),
            "{}'s first stdout line should be the ticket alone, got {line:?}",
            self.name
        );
        line
    }

    fn dump(&self, state: &str) {
        let log = self.log_text();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
        eprintln!(
            "===== peer {} ({state}), folder {} =====\n{}----- last {} log lines of {} -----\n{}\n",
            self.name,
            self.dir.display(),
            fmt_tree(&self.tree()),
            tail.len(),
            self.log.display(),
            tail.join("\n"),
        );
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let state = match self.child.take() {
            None => "not running".to_owned(),
            Some(mut child) => match child.try_wait() {
                Ok(Some(status)) => format!("had exited by itself: {status}"),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    "was running".to_owned()
                }
            },
        };
        if thread::panicking() {
            self.dump(&state);
            if std::env::var_os("TEATIME_IT_KEEP").is_some()
                && let Some(root) = self.root.take()
            {
                eprintln!("kept {}", root.keep().display());
            }
        }
    }
}

/// Waits up to `limit` for `child` to exit.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if start.elapsed() > limit {
            return None;
        }
        thread::sleep(POLL);
    }
}

/// `count` numbered lines, each ending in `\n`.
pub fn numbered_lines(count: usize) -> String {
    (1..=count).map(|i| format!("line {i}\n")).collect()
}

/// `text` with its 1-based line `number` replaced by `new`.
pub fn replace_line(text: &str, number: usize, new: &str) -> String {
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let line = if i + 1 == number { new } else { line };
            format!("{line}\n")
        })
        .collect()
}

/// A tree holding one file.
pub fn one_file(path: &str, content: &str) -> Tree {
    let mut tree = Tree::new();
    put_file(&mut tree, path, content);
    tree
}

/// A (named "a") shares a folder that starts as `seed`, B (named "b") joins it; both hold
/// `seed` on return.
pub fn connected_pair(seed: &Tree) -> (Peer, Peer) {
    let a = Peer::share_tree("a", seed);
    let b = Peer::join("b", a.ticket());
    wait_converged_to(&[&a, &b], seed);
    (a, b)
}

/// Waits until every peer holds `expected`; then each peer writes a barrier file, which
/// arrives everywhere after anything still in flight; then asserts the exact tree.
pub fn settle(peers: &[&Peer], expected: &mut Tree) {
    wait_converged_to(peers, expected);
    for peer in peers {
        let path = format!("barrier-{}.txt", peer.name);
        peer.write(&path, "done\n");
        put_file(expected, &path, "done\n");
    }
    wait_converged_to(peers, expected);
    assert_trees(peers, expected);
}

impl Peer {
    /// The running process's peak resident set size (`VmHWM` in `/proc/PID/status`), in
    /// KiB; `None` when the peer is not running or the kernel does not say.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let value = status.lines().find_map(|line| line.strip_prefix("VmHWM:"))?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    }
}
