//! Binary files end to end: large transfers with bounded memory, resumed transfers,
//! text that turns binary, concurrent binary writes, executable bits, and what is
//! never synced (symlinks, FIFOs, sockets).
//!
//! Large files are never snapshotted with [`Peer::tree`] (it reads every file into
//! memory): they are waited for by size (teatime renames a complete file into place)
//! and compared in chunks.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crate::harness::{
    Peer, STATE_DIR, Tree, connected_pair, deadline, numbered_lines, one_file, put_file, settle,
    wait_converged_to, wait_until, wait_until_within,
};

const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------
// Deterministic content

/// SplitMix64: deterministic pseudo-random bytes, a different stream per seed.
struct Noise(u64);

impl Noise {
    fn new(seed: u64) -> Self {
        Noise(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x5851_f42d_4c95_7f2d)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// `len` pseudo-random bytes from stream `seed`.
fn noise(seed: u64, len: u64) -> Vec<u8> {
    let mut out = vec![0u8; len as usize];
    Noise::new(seed).fill(&mut out);
    out
}

/// Writes `len` pseudo-random bytes from stream `seed` to `path`, 1 MiB at a time.
fn write_noise_file(path: &Path, seed: u64, len: u64) {
    let mut noise = Noise::new(seed);
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB) as usize;
        noise.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).expect("write noise");
        left -= n as u64;
    }
    f.sync_all().expect("fsync noise file");
}

/// Where two files first differ (`Ok` if they are byte for byte the same), read in
/// 1 MiB chunks so neither is ever whole in memory.
fn compare_files(a: &Path, b: &Path) -> Result<(), String> {
    let open = |p: &Path| File::open(p).map_err(|e| format!("open {}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let mut offset = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba).map_err(|e| format!("read {}: {e}", a.display()))?;
        let nb = read_full(&mut fb, &mut bb).map_err(|e| format!("read {}: {e}", b.display()))?;
        if ba[..na] != bb[..nb] {
            let at = ba[..na].iter().zip(&bb[..nb]).position(|(x, y)| x != y).unwrap_or(na.min(nb));
            return Err(format!(
                "{} and {} differ at byte {} (chunk lengths {na} and {nb})",
                a.display(),
                b.display(),
                offset + at as u64
            ));
        }
        if na == 0 {
            return Ok(());
        }
        offset += na as u64;
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The top level of a folder, without the state directory: name to size (directories
/// count as size 0). Reads no content, so it is cheap for large files.
fn listing(dir: &Path) -> BTreeMap<String, u64> {
    let Ok(rd) = fs::read_dir(dir) else { return BTreeMap::new() };
    rd.flatten()
        .filter(|d| d.file_name() != STATE_DIR)
        .filter_map(|d| {
            let meta = fs::symlink_metadata(d.path()).ok()?;
            Some((d.file_name().to_string_lossy().into_owned(), if meta.is_dir() { 0 } else { meta.len() }))
        })
        .collect()
}

/// The size of `path`, if it is there.
fn size_of(path: &Path) -> Option<u64> {
    fs::symlink_metadata(path).ok().map(|m| m.len())
}

/// Waits up to `limit` for `path` to hold exactly `size` bytes; returns how long it took.
fn wait_for_size(limit: Duration, path: &Path, size: u64) -> Duration {
    let start = Instant::now();
    wait_until_within(limit, &format!("{} to reach {size} bytes", path.display()), || {
        size_of(path) == Some(size)
    });
    start.elapsed()
}

/// The partial files in a folder's blob directory.
fn partial_blobs(peer: &Peer) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(peer.path(&format!("{STATE_DIR}/blobs"))) else { return vec![] };
    rd.flatten().map(|d| d.path()).filter(|p| p.extension().is_some_and(|e| e == "part")).collect()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn is_exec(peer: &Peer, rel: &str) -> bool {
    let meta = fs::metadata(peer.path(rel)).unwrap_or_else(|e| panic!("stat {rel} on {}: {e}", peer.name));
    meta.permissions().mode() & 0o111 != 0
}

fn chmod_x(peer: &Peer, rel: &str) {
    let path = peer.path(rel);
    let mode = fs::metadata(&path).expect("stat").permissions().mode();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode | 0o111)).expect("chmod +x");
}

fn append(peer: &Peer, rel: &str, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(peer.path(rel)).expect("open for append");
    f.write_all(bytes).expect("append");
}

fn mtime(path: &Path) -> SystemTime {
    fs::metadata(path).and_then(|m| m.modified()).expect("mtime")
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn binary_files_of_0_1mib_and_200mib_arrive_identical_with_bounded_memory() {
    const BIG: u64 = 200 * MIB;
    let one = noise(1, MIB);
    assert!(one.iter().any(|&b| b != one[0]), "the generator makes varied bytes");
    let mut expected = Tree::new();
    put_file(&mut expected, "zero.bin", b"");
    put_file(&mut expected, "one.bin", &one);
    let a = Peer::share_tree("a", &expected);
    let b = Peer::join("b", a.ticket());
    wait_converged_to(&[&a, &b], &expected);

    // Generated next to the folder, then moved in whole, as a download would be: the
    // transfer time measured is the sync's, not the generator's.
    let staging = a.dir().with_file_name("big.bin.staging");
    write_noise_file(&staging, 200, BIG);
    fs::rename(&staging, a.path("big.bin")).expect("move big.bin into the folder");
    let took = wait_for_size(Duration::from_secs(180), &b.path("big.bin"), BIG);
    compare_files(&a.path("big.bin"), &b.path("big.bin")).unwrap();
    eprintln!(
        "200 MiB binary: arrived in {:.1} s ({:.1} MiB/s)",
        took.as_secs_f64(),
        (BIG / MIB) as f64 / took.as_secs_f64()
    );

    let rss_a = a.peak_rss_kib().expect("a's peak RSS");
    let rss_b = b.peak_rss_kib().expect("b's peak RSS");
    eprintln!("peak RSS: sender a {:.1} MiB, receiver b {:.1} MiB", mib(rss_a), mib(rss_b));
    for (name, kib) in [("a", rss_a), ("b", rss_b)] {
        assert!(kib < 100 * 1024, "{name}'s peak RSS {:.1} MiB is not far below the 200 MiB file", mib(kib));
    }

    // Nothing else landed in B's folder, the small files are intact, and the partial
    // file is gone.
    let want: BTreeMap<String, u64> =
        [("zero.bin", 0), ("one.bin", MIB), ("big.bin", BIG)].map(|(n, s)| (n.to_owned(), s)).into();
    assert_eq!(listing(b.dir()), want);
    assert_eq!(a.read("zero.bin").as_deref(), Some(&b""[..]));
    assert_eq!(b.read("zero.bin").as_deref(), Some(&b""[..]));
    assert!(b.read("one.bin") == Some(one), "one.bin changed on b");
    assert!(partial_blobs(&b).is_empty(), "b kept partial blobs: {:?}", partial_blobs(&b));
}

/// A has a 64 MiB binary; B joins and is SIGKILLed as soon as some of it is on disk,
/// then restarted: the verified prefix is kept and the rest fetched.
#[test]
fn a_transfer_interrupted_by_killing_the_receiver_resumes() {
    const SIZE: u64 = 64 * MIB;
    let a = Peer::share("a");
    let staging = a.dir().with_file_name("big.bin.staging");
    write_noise_file(&staging, 64, SIZE);
    fs::rename(&staging, a.path("big.bin")).expect("move big.bin into the folder");

    let mut b = Peer::join("b", a.ticket());
    // Kill as soon as some verified content is on disk: polled much faster than the
    // harness's waits, as a transfer over loopback is quick.
    let start = Instant::now();
    let part = loop {
        if let Some(p) = partial_blobs(&b).into_iter().find(|p| size_of(p).is_some_and(|s| s > 0)) {
            break p;
        }
        assert!(
            size_of(&b.path("big.bin")).is_none(),
            "big.bin arrived before any partial file was seen: the test cannot interrupt it"
        );
        assert!(start.elapsed() < deadline(), "no partial file appeared on b within {:?}", deadline());
        thread::sleep(Duration::from_millis(1));
    };
    b.kill();
    let kept = size_of(&part).expect("the partial file survives the kill");
    eprintln!("killed b with {kept} of {SIZE} bytes in {}", part.display());
    assert!(kept < SIZE, "the whole file had arrived: nothing left to resume");
    assert!(size_of(&b.path("big.bin")).is_none(), "big.bin must not be in place after the kill");

    // Whatever the killed receiver left starts with the real content (every whole
    // group in it was verified before it was written).
    let whole = (kept / MIB * MIB) as usize;
    let got = fs::read(&part).expect("read the partial file");
    let mut want = vec![0u8; whole];
    File::open(a.path("big.bin")).and_then(|mut f| f.read_exact(&mut want)).expect("read a's prefix");
    assert!(got[..whole] == want[..], "the partial file does not start with the real content");
    drop((got, want));

    b.sync();
    let mut names = vec![("big.bin", SIZE)];
    let took = wait_for_size(Duration::from_secs(120), &b.path("big.bin"), SIZE);
    eprintln!("after the restart big.bin arrived in {:.1} s", took.as_secs_f64());
    compare_files(&a.path("big.bin"), &b.path("big.bin")).unwrap();

    // Everything settles: a later change arrives after the transfer, and nothing else
    // (no temp file, no second copy) is in B's folder.
    a.write("barrier.txt", "done\n");
    names.push(("barrier.txt", 5));
    wait_until("barrier.txt to reach b", || b.read("barrier.txt").as_deref() == Some(b"done\n"));
    let want: BTreeMap<String, u64> = names.into_iter().map(|(n, s)| (n.to_owned(), s)).collect();
    assert_eq!(listing(b.dir()), want);
    assert!(partial_blobs(&b).is_empty(), "b kept partial blobs: {:?}", partial_blobs(&b));
}

#[test]
fn a_text_file_that_grows_past_the_limit_turns_binary_without_loss() {
    let mut text = numbered_lines(100); // under 1 KiB
    let mut expected = one_file("grow.txt", &text);
    let (a, b) = connected_pair(&expected);
    let both = [&a, &b];

    a.cli_ok(&["config", a.dir_arg(), "text-limit", "4096"]);
    wait_until("b to see text-limit 4096", || {
        b.cli_ok(&["config", b.dir_arg(), "text-limit"]).trim() == "4096"
    });

    // Appended in steps: under the limit, just past it, then well past it.
    let mut n = 100;
    for target in [3 * 1024, 5 * 1024, 10 * 1024] {
        let mut more = String::new();
        while text.len() + more.len() < target {
            n += 1;
            more.push_str(&format!("appended line {n}\n"));
        }
        append(&a, "grow.txt", more.as_bytes());
        text.push_str(&more);
        put_file(&mut expected, "grow.txt", &text);
        wait_converged_to(&both, &expected);
    }
    assert!(text.len() >= 10 * 1024);

    // B edits it: still valid text, but over the limit, so a whole-file binary write.
    let edited = text.replace("appended line 150\n", "line 150, edited on b\n");
    assert_ne!(edited, text);
    b.write("grow.txt", &edited);
    put_file(&mut expected, "grow.txt", &edited);
    wait_converged_to(&both, &expected);

    // Shrunk under the limit again, from A: it stays binary, and still no byte is lost.
    a.write("grow.txt", "short again\n");
    put_file(&mut expected, "grow.txt", "short again\n");
    wait_converged_to(&both, &expected);
    settle(&both, &mut expected);
}

#[test]
fn concurrent_binary_writes_keep_the_loser() {
    let v0 = noise(10, 3000);
    let x = noise(11, 5000);
    let y = noise(12, 7000);
    let (a, mut b) = connected_pair(&one_file("pic.bin", ""));
    // Turned binary by content, not by the seed (an empty file is text).
    a.write("pic.bin", &v0);
    let mut expected = Tree::new();
    put_file(&mut expected, "pic.bin", &v0);
    wait_converged_to(&[&a, &b], &expected);

    b.stop();
    a.write("pic.bin", &x);
    // Y is written later than X by the wall clock (and by the files' times, which date
    // a binary write): wait until the clock is clearly past X's time.
    let x_time = mtime(&a.path("pic.bin"));
    wait_until("the clock to pass pic.bin's time on a", || {
        SystemTime::now().duration_since(x_time).is_ok_and(|d| d >= Duration::from_millis(20))
    });
    b.write("pic.bin", &y);
    assert!(mtime(&b.path("pic.bin")) > x_time);
    b.sync();

    put_file(&mut expected, "pic.bin", &y);
    wait_converged_to(&[&a, &b], &expected);

    // A held the loser, X: it is kept aside, named after its hash.
    let kept = a.path(&format!("{STATE_DIR}/versions/pic.bin.{}", &blake3::hash(&x).to_hex()[..12]));
    wait_until("a to keep the losing version", || kept.is_file());
    assert!(fs::read(&kept).expect("read the kept version") == x, "the kept version is not X's bytes");
    let versions = fs::read_dir(a.path(&format!("{STATE_DIR}/versions"))).expect("a's versions").count();
    assert_eq!(versions, 1, "a keeps exactly one losing version");
    // The log line follows the write that kept it aside.
    wait_until("a's log to say a version was kept", || {
        a.log_text().contains("a concurrent binary version lost")
    });
    // B only ever had the winner on disk since the race: it keeps nothing.
    let b_versions: Vec<_> = fs::read_dir(b.path(&format!("{STATE_DIR}/versions")))
        .map(|rd| rd.flatten().map(|d| d.file_name()).collect())
        .unwrap_or_default();
    assert!(b_versions.is_empty(), "b kept versions it should not have: {b_versions:?}");
    settle(&[&a, &b], &mut expected);
}

/// Waits until `peer` reports `value` for folder setting `key`.
fn wait_for_setting(peer: &Peer, key: &str, value: &str) {
    wait_until(&format!("{} to see {key} {value}", peer.name), || {
        peer.cli_ok(&["config", peer.dir_arg(), key]).trim() == value
    });
}

#[test]
fn exec_bit_syncs_only_when_enabled() {
    let mut expected = one_file("run.sh", "#!/bin/sh\necho run\n");
    put_file(&mut expected, "tool.bin", noise(20, 2048));
    let (a, b) = connected_pair(&expected);
    let both = [&a, &b];
    assert_eq!(b.cli_ok(&["config", b.dir_arg(), "sync-exec-bit"]).trim(), "off");

    // Off (the default): a chmod stays local.
    chmod_x(&a, "run.sh");
    chmod_x(&a, "tool.bin");
    a.write("barrier-1.txt", "1\n");
    put_file(&mut expected, "barrier-1.txt", "1\n");
    wait_converged_to(&both, &expected);
    assert!(!is_exec(&b, "run.sh"), "run.sh became executable on b with sync-exec-bit off");
    assert!(!is_exec(&b, "tool.bin"), "tool.bin became executable on b with sync-exec-bit off");

    a.cli_ok(&["config", a.dir_arg(), "sync-exec-bit", "on"]);
    wait_for_setting(&b, "sync-exec-bit", "on");

    // On: a chmod travels, both ways.
    a.write("build.sh", "#!/bin/sh\necho build\n");
    put_file(&mut expected, "build.sh", "#!/bin/sh\necho build\n");
    wait_converged_to(&both, &expected);
    chmod_x(&a, "build.sh");
    wait_until("build.sh to become executable on b", || is_exec(&b, "build.sh"));
    let mode = fs::metadata(b.path("build.sh")).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o755, "b's build.sh mode {mode:o}: every read bit gains its exec bit");

    fs::set_permissions(b.path("build.sh"), fs::Permissions::from_mode(0o644)).expect("chmod -x");
    wait_until("build.sh to lose its exec bit on a", || !is_exec(&a, "build.sh"));
    settle(&both, &mut expected);
    assert!(!is_exec(&a, "build.sh") && !is_exec(&b, "build.sh"));
}

#[test]
fn exec_bit_of_a_binary_file_syncs_when_enabled() {
    let mut expected = Tree::new();
    put_file(&mut expected, "tool.bin", noise(22, 4096));
    let (a, b) = connected_pair(&expected);
    a.cli_ok(&["config", a.dir_arg(), "sync-exec-bit", "on"]);
    wait_for_setting(&b, "sync-exec-bit", "on");

    chmod_x(&a, "tool.bin");
    wait_until("tool.bin to become executable on b", || is_exec(&b, "tool.bin"));
    settle(&[&a, &b], &mut expected);
    assert!(is_exec(&a, "tool.bin") && is_exec(&b, "tool.bin"));
}

#[test]
fn enabling_sync_exec_bit_keeps_executable_bits_set_while_it_was_off() {
    let mut expected = one_file("run.sh", "#!/bin/sh\necho run\n");
    let (a, b) = connected_pair(&expected);
    chmod_x(&a, "run.sh");
    a.write("barrier-1.txt", "1\n");
    put_file(&mut expected, "barrier-1.txt", "1\n");
    wait_converged_to(&[&a, &b], &expected);

    a.cli_ok(&["config", a.dir_arg(), "sync-exec-bit", "on"]);
    wait_for_setting(&b, "sync-exec-bit", "on");
    settle(&[&a, &b], &mut expected);
    assert!(
        is_exec(&a, "run.sh"),
        "a's run.sh lost the exec bit its user set, when sync-exec-bit was turned on"
    );
}

/// Removes what [`Peer::tree`] cannot read (a FIFO blocks it) before the peer's drop
/// dumps its folder, also when a test fails.
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

const SPECIALS: [&str; 3] = ["passwd-link", "pipe.fifo", "control.sock"];

/// A creates a symlink, a FIFO and a socket beside its files, then makes more changes
/// in that directory (one of them a rule file, which rescans the whole folder). Checks
/// that none of the three ever reaches B, and returns A's "not synced" log lines about
/// each, in `SPECIALS` order.
fn special_files_scenario() -> Vec<Vec<String>> {
    let mut expected = one_file("seed.txt", "seed\n");
    let (a, b) = connected_pair(&expected);
    let _cleanup = RemoveOnDrop(SPECIALS.iter().map(|s| a.path(s)).collect());

    std::os::unix::fs::symlink("/etc/passwd", a.path("passwd-link")).expect("symlink");
    let status = Command::new("mkfifo").arg(a.path("pipe.fifo")).status().expect("run mkfifo");
    assert!(status.success(), "mkfifo failed");
    let _listener = UnixListener::bind(a.path("control.sock")).expect("bind a unix socket");
    assert!(fs::symlink_metadata(a.path("pipe.fifo")).expect("fifo").file_type().is_fifo());
    assert!(fs::symlink_metadata(a.path("control.sock")).expect("socket").file_type().is_socket());

    // Barrier: a change made after them arrives; by then they would have too.
    a.write("after.txt", "after\n");
    put_file(&mut expected, "after.txt", "after\n");
    wait_until("after.txt to reach b", || b.read("after.txt").is_some());
    let none_on_b = || {
        for name in SPECIALS {
            assert!(fs::symlink_metadata(b.path(name)).is_err(), "{name} reached b");
        }
    };
    none_on_b();
    wait_converged_to(&[&b], &expected);

    // More scans of the same directory.
    for i in 0..3 {
        a.write(&format!("more-{i}.txt"), format!("{i}\n"));
        put_file(&mut expected, &format!("more-{i}.txt"), format!("{i}\n"));
        wait_converged_to(&[&b], &expected);
    }
    a.write("after.txt", "after, edited\n");
    put_file(&mut expected, "after.txt", "after, edited\n");
    a.write(".sync-ignore", "*.never\n");
    put_file(&mut expected, ".sync-ignore", "*.never\n");
    wait_converged_to(&[&b], &expected);
    a.write("last.txt", "last\n");
    put_file(&mut expected, "last.txt", "last\n");
    wait_converged_to(&[&b], &expected);
    none_on_b();

    let log = a.log_text();
    let reports: Vec<&str> = log.lines().filter(|l| l.contains("not synced")).collect();
    eprintln!("a's reports:\n{}", reports.join("\n"));
    SPECIALS
        .iter()
        .map(|name| {
            let field = format!("path={name:?}");
            reports
                .iter()
                .filter(|l| l.split_whitespace().any(|w| w == field))
                .map(|l| l.to_string())
                .collect()
        })
        .collect()
}

#[test]
fn symlinks_fifos_and_sockets_are_reported_once() {
    for (name, about) in SPECIALS.iter().zip(special_files_scenario()) {
        assert_eq!(about.len(), 1, "{name} should be reported exactly once: {about:#?}");
    }
}
