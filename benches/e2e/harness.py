#!/usr/bin/env python3
"""teatime against Syncthing (and rsync) on one machine, in the same run, on 127.0.0.1 only.

Run through benches/e2e/run.sh, which installs what is missing and builds teatime. Every
wait polls the other peer's disk (or its status) with a deadline. Both tools go through
the same steps on the same corpus, one after the other, so a loaded machine slows both.
"""

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
FOLDER_ID = "bench"

TIERS = {
    # name: generated files (None: the Go source tree), latency trials, big-file trials,
    # burst size, idle seconds, restarts, edits for the state-size step, 100k-idle phase
    "small": dict(corpus_files=1000, trials=30, big_trials=3, burst=1000, idle_secs=20,
                  restarts=3, edits=1000, idle_100k=False),
    "full": dict(corpus_files=None, trials=100, big_trials=10, burst=3000, idle_secs=60,
                 restarts=5, edits=1000, idle_100k=True),
}
GO_SRC = Path("/usr/share/go-1.19/src")


# An idle peer is one that has had nothing to do for a while: its memory is measured from
# this long after the last activity, for every tool alike. teatime drops the folder's state
# from memory after 30 s without an event (src/replica/rest.rs); measured from 3-10 s, the
# figure was the tail of the share or the edits, not what an always-on peer holds.
IDLE_SETTLE_S = 45


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine_load():
    one, five, _ = os.getloadavg()
    busy = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True).stdout
    others = [l.strip() for l in busy.splitlines()[1:6] if l.split() and float(l.split()[0]) > 20]
    return {"load1": round(one, 2), "load5": round(five, 2), "busy": others}


# ---------------------------------------------------------------------------------------
# Corpus


def generate_corpus(dest: Path, files: int, seed: int = 9):
    """Source-like text files in directories of 50, ~10 KB each on average (lognormal)."""
    rng = random.Random(seed)
    words = ["let", "value", "return", "match", "self", "into", "iter", "map", "Some", "None",
             "result", "error", "config", "peer", "folder", "index", "store", "change", "await"]
    for i in range(files):
        d = dest / f"pkg{i // 50:04d}"
        d.mkdir(parents=True, exist_ok=True)
        size = min(int(rng.lognormvariate(8.6, 0.9)), 200_000)
        lines, n = [], 0
        while n < size:
            line = "    " * rng.randint(0, 3) + " ".join(rng.choice(words) for _ in range(rng.randint(2, 10)))
            lines.append(line)
            n += len(line) + 1
        (d / f"file{i:05d}.rs").write_text("\n".join(lines) + "\n")


def big_text(size: int, seed: int = 10) -> str:
    rng = random.Random(seed)
    out, n, i = [], 0, 0
    while n < size:
        line = f"{i:08d} " + "".join(rng.choice("abcdefghij klmnopqrstuvwxyz") for _ in range(70))
        out.append(line)
        n += len(line) + 1
        i += 1
    return "\n".join(out) + "\n"


def manifest(root: Path):
    """path -> size of every file, skipping the tools' own state and temp files."""
    out = {}
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except FileNotFoundError:
            continue
        with it:
            for e in it:
                if e.name in (".teatime", ".stfolder", ".stignore") or e.name.startswith(".syncthing."):
                    continue
                if e.name.startswith(".tt-") or e.name.endswith(".tmp"):
                    continue
                try:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(Path(e.path))
                    elif e.is_file(follow_symlinks=False):
                        out[os.path.relpath(e.path, root)] = e.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    pass
    return out


def digest_tree(root: Path, paths):
    h = {}
    for p in paths:
        try:
            h[p] = hashlib.blake2b((root / p).read_bytes(), digest_size=16).hexdigest()
        except (FileNotFoundError, IsADirectoryError):
            h[p] = None
    return h


def dir_bytes(path: Path):
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except FileNotFoundError:
                pass
    return total


def text_bytes(root: Path):
    """Bytes of the text files teatime keeps as documents (as of now)."""
    return sum(sz for rel, sz in manifest(root).items() if is_text(root / rel, 16 << 20))


def is_text(path: Path, limit: int):
    try:
        b = path.read_bytes()
    except OSError:
        return False
    if len(b) > limit or b"\0" in b:
        return False
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# ---------------------------------------------------------------------------------------
# Process measurement


def tree_pids(pid):
    """pid and its descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def proc_cpu_secs(pid):
    total = 0.0
    for p in tree_pids(pid):
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / CLK_TCK
        except (OSError, IndexError):
            pass
    return total


def proc_status_kb(pid, key):
    total = 0
    for p in tree_pids(pid):
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def proc_rchar(pid):
    total = 0
    for p in tree_pids(pid):
        try:
            for line in open(f"/proc/{p}/io"):
                if line.startswith("rchar:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


class Sampler:
    """Samples RSS of a process tree every `every` seconds (peak RSS of a tree is the peak
    of the sum, which VmHWM per process cannot give)."""

    def __init__(self, pid, every=0.25):
        self.pid, self.every, self.samples, self._stop = pid, every, [], threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self._stop.is_set():
            self.samples.append(proc_status_kb(self.pid, "VmRSS"))
            self._stop.wait(self.every)

    def stop(self):
        self._stop.set()
        self.t.join()
        return max(self.samples or [0]) / 1024


class SocketWatch:
    """Every few seconds, lists the sockets of the benchmarked processes (`ss`) and keeps
    any whose peer address is not loopback: the proof that nothing left 127.0.0.1."""

    def __init__(self):
        self.pids, self.bad, self.seen, self._stop = set(), set(), 0, threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self._stop.is_set():
            self.check()
            self._stop.wait(2)

    def check(self):
        pids = set()
        for p in list(self.pids):
            pids.update(tree_pids(p))
        out = subprocess.run(["ss", "-tunapH"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            m = re.findall(r"pid=(\d+)", line)
            if not m or not pids.intersection(int(x) for x in m):
                continue
            self.seen += 1
            cols = line.split()
            peer = cols[5] if len(cols) > 5 else ""
            host = peer.rsplit(":", 1)[0].strip("[]")
            if host not in ("127.0.0.1", "::ffff:127.0.0.1", "*", "0.0.0.0", "::", "", "::1"):
                self.bad.add(line)

    def stop(self):
        self._stop.set()
        self.t.join()


SOCKETS = None


# ---------------------------------------------------------------------------------------
# Tools


class Teatime:
    name = "teatime"

    def __init__(self, work: Path, binary: str):
        self.bin, self.work = binary, work
        self.homes = {p: work / f"home-{p}" for p in "ab"}
        self.dirs = {p: work / f"dir-{p}" for p in "ab"}
        self.procs, self.ticket, self.log_from = {}, None, {}
        for h in self.homes.values():
            h.mkdir(parents=True)
            # 16 MiB: the 10 MB file of the large-file step stays a text document.
            (h / "config.toml").write_text("text_limit = 16777216\n")

    def cmd(self, peer, *args):
        return [self.bin, "--home", str(self.homes[peer]), "--network", "loopback", "--name", peer, *args]

    def _spawn(self, peer, *args):
        logf = open(self.work / f"{peer}.log", "ab")
        env = dict(os.environ, NO_COLOR="1", RUST_LOG=os.environ.get("RUST_LOG", "info"))
        p = subprocess.Popen(self.cmd(peer, *args), stdout=subprocess.PIPE, stderr=logf, stdin=subprocess.DEVNULL, env=env)
        self.procs[peer] = p
        SOCKETS.pids.add(p.pid)
        return p

    def start_pair(self):
        a = self._spawn("a", "share", str(self.dirs["a"]))
        self.ticket = a.stdout.readline().decode().strip()
        assert self.ticket, "no ticket from share (see a.log)"
        threading.Thread(target=a.stdout.read, daemon=True).start()
        b = self._spawn("b", "join", self.ticket, str(self.dirs["b"]))
        threading.Thread(target=b.stdout.read, daemon=True).start()

    def stop(self, peer):
        p = self.procs.pop(peer)
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)

    def start(self, peer):
        self.log_from[peer] = (self.work / f"{peer}.log").stat().st_size
        p = self._spawn(peer, "sync", str(self.dirs[peer]))
        threading.Thread(target=p.stdout.read, daemon=True).start()
        return p

    def ready(self, peer):
        # `status` on a folder whose process has not opened its store yet would open the
        # store itself and make that start fail (redb's single-instance lock): ask only
        # once this run of the peer has logged its session.
        with open(self.work / f"{peer}.log", "rb") as f:
            f.seek(self.log_from.get(peer, 0))
            if b"session: connected peer=" not in f.read():
                return False
        r = subprocess.run(self.cmd(peer, "status", str(self.dirs[peer]), "--json"), capture_output=True, text=True)
        if r.returncode != 0:
            return False
        try:
            s = json.loads(r.stdout)
        except json.JSONDecodeError:
            return False
        return s.get("running") and any(p["connected"] and p["pending_out"] == 0 for p in s["peers"])

    def state_bytes(self, peer):
        return dir_bytes(self.dirs[peer] / ".teatime")

    def shutdown(self):
        for peer in list(self.procs):
            self.stop(peer)


class Syncthing:
    name = "syncthing"

    def __init__(self, work: Path):
        self.work = work
        self.homes = {p: work / f"st-home-{p}" for p in "ab"}
        self.dirs = {p: work / f"st-dir-{p}" for p in "ab"}
        self.listen = {p: free_port() for p in "ab"}
        self.gui = {p: free_port() for p in "ab"}
        self.apikey = "teatime-bench-key"
        self.procs, self.ids = {}, {}
        for p, home in self.homes.items():
            subprocess.run(["syncthing", "generate", "--home", str(home), "--no-default-folder", "--skip-port-probing"],
                           check=True, capture_output=True)
            self.ids[p] = subprocess.run(["syncthing", "serve", "--home", str(home), "--device-id"],
                                         check=True, capture_output=True, text=True).stdout.strip()
        for p in "ab":
            self._configure(p)

    def _configure(self, p):
        other = "b" if p == "a" else "a"
        path = self.homes[p] / "config.xml"
        tree = ET.parse(path)
        root = tree.getroot()
        opts = root.find("options")
        settings = {
            "listenAddress": f"tcp://127.0.0.1:{self.listen[p]}",
            "globalAnnounceServer": "", "globalAnnounceEnabled": "false",
            "localAnnounceEnabled": "false", "relaysEnabled": "false", "natEnabled": "false",
            "urAccepted": "-1", "urURL": "", "autoUpgradeIntervalH": "0", "releasesURL": "",
            "crashReportingEnabled": "false", "crashReportingURL": "", "stunServer": "",
            "announceLANAddresses": "false", "startBrowser": "false", "restartOnWakeup": "false",
            # Syncthing lowers its own priority by default; teatime does not: same footing.
            "setLowPriority": "false",
        }
        for key, value in settings.items():
            el = opts.find(key)
            if el is None:
                el = ET.SubElement(opts, key)
            el.text = value
        # One of each: remove duplicates of the multi-valued settings.
        for key in ("listenAddress", "globalAnnounceServer", "stunServer"):
            for extra in opts.findall(key)[1:]:
                opts.remove(extra)
        gui = root.find("gui")
        gui.find("address").text = f"127.0.0.1:{self.gui[p]}"
        gui.find("apikey").text = self.apikey
        dev = ET.SubElement(root, "device", id=self.ids[other], name=other, compression="metadata",
                            introducer="false", skipIntroductionRemovals="false", introducedBy="")
        ET.SubElement(dev, "address").text = f"tcp://127.0.0.1:{self.listen[other]}"
        ET.SubElement(dev, "paused").text = "false"
        ET.SubElement(dev, "autoAcceptFolders").text = "false"
        folder = ET.SubElement(root, "folder", id=FOLDER_ID, label=FOLDER_ID, path=str(self.dirs[p]),
                               type="sendreceive", rescanIntervalS="3600", fsWatcherEnabled="true",
                               fsWatcherDelayS="1", ignorePerms="false", autoNormalize="true")
        for d in (self.ids[p], self.ids[other]):
            ET.SubElement(folder, "device", id=d, introducedBy="")
        ET.SubElement(folder, "markerName").text = ".stfolder"
        tree.write(path)

    def _spawn(self, peer):
        self.dirs[peer].mkdir(parents=True, exist_ok=True)
        (self.dirs[peer] / ".stfolder").mkdir(exist_ok=True)
        logf = open(self.work / f"st-{peer}.log", "ab")
        env = dict(os.environ, STNOUPGRADE="1", STNODEFAULTFOLDER="1", STNORESTART="1")
        p = subprocess.Popen(["syncthing", "serve", "--home", str(self.homes[peer]), "--no-browser", "--no-restart",
                              "--no-upgrade"], stdout=logf, stderr=logf, stdin=subprocess.DEVNULL, env=env)
        self.procs[peer] = p
        SOCKETS.pids.add(p.pid)
        return p

    def start_pair(self):
        self._spawn("a")
        self._spawn("b")

    def start(self, peer):
        return self._spawn(peer)

    def stop(self, peer):
        p = self.procs.pop(peer)
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)

    def api(self, peer, path):
        req = urllib.request.Request(f"http://127.0.0.1:{self.gui[peer]}{path}", headers={"X-API-Key": self.apikey})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def ready(self, peer):
        other = "b" if peer == "a" else "a"
        try:
            conns = self.api(peer, "/rest/system/connections")["connections"]
            status = self.api(peer, f"/rest/db/status?folder={FOLDER_ID}")
        except Exception:
            return False
        return conns.get(self.ids[other], {}).get("connected") and status.get("state") == "idle" \
            and status.get("needFiles", 1) == 0

    def state_bytes(self, peer):
        return dir_bytes(self.homes[peer])

    def network_evidence(self):
        out = {}
        try:
            out["discovery_cache"] = self.api("a", "/rest/system/discovery")
            st = self.api("a", "/rest/system/status")
            out["listeners"] = st.get("connectionServiceStatus")
            out["discoveryEnabled"] = st.get("discoveryEnabled")
            out["discoveryMethods"] = st.get("discoveryMethods")
        except Exception as e:
            out["error"] = str(e)
        lines = []
        for p in "ab":
            for line in open(self.work / f"st-{p}.log", errors="replace"):
                if re.search(r"relay|announce|discover|upnp|nat-pmp|stun|upgrade|usage|http", line, re.I):
                    lines.append(f"{p}: {line.strip()}")
        out["log_lines"] = lines[:40]
        return out

    def shutdown(self):
        for peer in list(self.procs):
            self.stop(peer)


# ---------------------------------------------------------------------------------------
# Steps


def wait_until(what, check, deadline, every=0.05):
    """Polls `check` every `every` s, or less often when the check itself is costly: on
    two cores, walking a 100k-file tree every 0.5 s took most of a core from the tools
    being measured. Sleeping four times as long as the check took keeps the harness under
    a fifth of a core."""
    start = time.monotonic()
    while True:
        t = time.monotonic()
        if check():
            return time.monotonic() - start
        cost = time.monotonic() - t
        if time.monotonic() - start > deadline:
            raise TimeoutError(f"{what}: not within {deadline}s")
        time.sleep(max(every, 4 * cost))


def atomic_write(path: Path, data: str):
    """As an editor saves: a temp file beside it, renamed over it."""
    tmp = path.with_name(f".tt-{path.name}.tmp")
    tmp.write_text(data)
    os.replace(tmp, path)


def initial_share(tool, expected, deadline):
    t0 = time.monotonic()
    tool.start_pair()
    samplers = {p: Sampler(tool.procs[p].pid) for p in "ab"}
    dst = tool.dirs["b"]
    want_count, want_bytes = len(expected), sum(expected.values())

    def done():
        m = manifest(dst)
        return len(m) >= want_count and sum(m.values()) >= want_bytes and m == expected

    wait_until("initial share", done, deadline, every=0.5)
    wall = time.monotonic() - t0
    cpu = {p: proc_cpu_secs(tool.procs[p].pid) for p in "ab"}
    rss = {p: samplers[p].stop() for p in "ab"}
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": rss}


def edit_latency(tool, files, trials, deadline, rng, pause=0.3):
    lat = []
    for i in range(trials):
        rel = files[i % len(files)]
        src, dst = tool.dirs["a"] / rel, tool.dirs["b"] / rel
        lines = src.read_text().split("\n")
        k = rng.randrange(max(1, len(lines) - 1))
        lines[k] = f"// {tool.name} edit {i} {rng.random()}"
        new = "\n".join(lines)
        want = new.encode()
        t0 = time.monotonic()
        atomic_write(src, new)
        while True:
            try:
                with open(dst, "rb") as f:
                    if f.read() == want:
                        break
            except FileNotFoundError:
                pass
            if time.monotonic() - t0 > deadline:
                raise TimeoutError(f"{tool.name}: edit {i} of {rel} not on the other disk within {deadline}s")
            time.sleep(0.001)
        lat.append((time.monotonic() - t0) * 1000)
        time.sleep(pause + rng.random() * 0.1)
    return lat


def pct(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def converge(tool, paths_content, deadline):
    """Waits until every path holds its content on peer b (None: absent)."""
    dst = tool.dirs["b"]
    pending = dict(paths_content)

    def check():
        for rel in list(pending):
            want = pending[rel]
            p = dst / rel
            try:
                st = os.stat(p)
                if want is not None and st.st_size == len(want) and p.read_bytes() == want:
                    del pending[rel]
            except FileNotFoundError:
                if want is None:
                    del pending[rel]
        return not pending

    return wait_until(f"{len(paths_content)} paths converged", check, deadline, every=0.1)


def git(gitdir, work, *args, **kw):
    return subprocess.run(["git", f"--git-dir={gitdir}", f"--work-tree={work}", *args],
                          check=True, capture_output=True, **kw)


def prepare_burst(tool, n, rng):
    """A commit of the current folder and one that changes n files, adds and deletes
    n/10: `git checkout` between them is the burst (the repository lives outside the
    folder, so neither tool syncs it)."""
    gitdir, work = tool.work / f"{tool.name}.git", tool.dirs["a"]
    subprocess.run(["git", "init", "-q", "--bare", str(gitdir)], check=True)
    (gitdir / "info").mkdir(exist_ok=True)
    (gitdir / "info" / "exclude").write_text(".teatime/\n.stfolder/\n.stignore\n.tt-*\n")
    env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@b", GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@b")
    git(gitdir, work, "add", "-A", env=env)
    git(gitdir, work, "commit", "-qm", "base", env=env)
    texts = sorted(p for p in manifest(work) if p.endswith((".rs", ".go", ".txt")) and not p.startswith("big/"))
    rng.shuffle(texts)
    changed, deleted = texts[:n], texts[n:n + n // 10]
    expect = {}
    idx = os.environ.copy()
    idx.update(env, GIT_INDEX_FILE=str(tool.work / "burst.index"))
    subprocess.run(["git", f"--git-dir={gitdir}", "read-tree", "HEAD"], check=True, env=idx)
    infos = []
    for rel in changed:
        data = (work / rel).read_bytes() + f"// burst change to {rel}\n".encode()
        expect[rel] = data
    for k in range(n // 10):
        rel = f"burst-new/d{k // 50}/new{k}.txt"
        expect[rel] = f"new file {k}\n".encode() * 20
    for rel, data in expect.items():
        sha = subprocess.run(["git", f"--git-dir={gitdir}", "hash-object", "-w", "--stdin"], input=data,
                             check=True, capture_output=True).stdout.decode().strip()
        infos.append(f"100644 {sha}\t{rel}")
    for rel in deleted:
        infos.append(f"0 {'0' * 40}\t{rel}")
        expect[rel] = None
    subprocess.run(["git", f"--git-dir={gitdir}", "update-index", "--index-info"], input="\n".join(infos).encode(),
                   check=True, env=idx)
    tree = subprocess.run(["git", f"--git-dir={gitdir}", "write-tree"], check=True, capture_output=True,
                          env=idx).stdout.decode().strip()
    commit = subprocess.run(["git", f"--git-dir={gitdir}", "commit-tree", tree, "-p", "HEAD", "-m", "burst"],
                            check=True, capture_output=True, env=idx).stdout.decode().strip()
    subprocess.run(["git", f"--git-dir={gitdir}", "update-ref", "refs/heads/burst", commit], check=True)
    return gitdir, expect


def run_tool(tool, corpus: Path, cfg, args, rng):
    r = {"load_before": machine_load()}
    deadline = args.deadline
    shutil.copytree(corpus, tool.dirs["a"], symlinks=True)
    if isinstance(tool, Syncthing):
        tool.dirs["b"].mkdir(parents=True, exist_ok=True)
    expected = manifest(tool.dirs["a"])
    raw = sum(expected.values())
    text_raw = sum(sz for rel, sz in expected.items() if is_text(tool.dirs["a"] / rel, 16 << 20))
    r["corpus"] = {"files": len(expected), "bytes": raw, "text_bytes": text_raw}

    log(tool.name, "initial share of", len(expected), "files,", raw // 1_000_000, "MB")
    r["initial"] = initial_share(tool, expected, deadline * 20)
    log(tool.name, "initial share", r["initial"])
    # Contents, not just sizes, must match.
    sample = sorted(expected)[:: max(1, len(expected) // 500)]
    assert digest_tree(tool.dirs["a"], sample) == digest_tree(tool.dirs["b"], sample), "contents differ after share"
    wait_until("peer b ready", lambda: tool.ready("b"), deadline)
    time.sleep(2)
    r["state_after_import"] = {p: tool.state_bytes(p) for p in "ab"}
    r["text_bytes_after_import"] = text_bytes(tool.dirs["a"])

    files = sorted(p for p in expected if p.endswith((".rs", ".go")) and 2_000 < expected[p] < 50_000)[:: 37][:10]
    log(tool.name, f"one-line edit latency, {cfg['trials']} trials")
    r["edit_ms"] = edit_latency(tool, files, cfg["trials"], deadline, rng)
    log(tool.name, "edit p50/p99 ms", pct(r["edit_ms"], 50), pct(r["edit_ms"], 99))

    # Idle.
    time.sleep(IDLE_SETTLE_S)
    c0 = {p: proc_cpu_secs(tool.procs[p].pid) for p in "ab"}
    rss = {p: [] for p in "ab"}
    t0 = time.monotonic()
    while time.monotonic() - t0 < cfg["idle_secs"]:
        for p in "ab":
            rss[p].append(proc_status_kb(tool.procs[p].pid, "VmRSS") / 1024)
        time.sleep(1)
    el = time.monotonic() - t0
    r["idle"] = {p: {"cpu_pct": (proc_cpu_secs(tool.procs[p].pid) - c0[p]) / el * 100,
                     "rss_mb": max(rss[p])} for p in "ab"}
    log(tool.name, "idle", r["idle"])

    # Restart of b with nothing changed.
    r["restart"] = []
    for k in range(cfg["restarts"]):
        tool.stop("b")
        time.sleep(1)
        t0 = time.monotonic()
        p = tool.start("b")
        secs = wait_until("ready after restart", lambda: tool.ready("b"), deadline * 6, every=0.05)
        r["restart"].append({"ready_s": secs, "cpu_s": proc_cpu_secs(p.pid), "rchar_mb": proc_rchar(p.pid) / 1e6})
        log(tool.name, "restart", r["restart"][-1])
        time.sleep(2)
    # 10 MB text file: arrival, then one-line edits.
    big = tool.dirs["a"] / "big" / "large.txt"
    big.parent.mkdir(exist_ok=True)
    content = big_text(10_000_000)
    t0 = time.monotonic()
    atomic_write(big, content)
    converge(tool, {"big/large.txt": content.encode()}, deadline * 6)
    r["big_arrival_s"] = time.monotonic() - t0
    log(tool.name, "10 MB file arrived in", r["big_arrival_s"])
    r["big_edit_ms"] = edit_latency(tool, ["big/large.txt"], cfg["big_trials"], deadline * 6, rng, pause=1.0)
    log(tool.name, "10 MB edit ms", r["big_edit_ms"])

    # Many edits, then the state size again.
    log(tool.name, f"{cfg['edits']} edits for the state-size step")
    targets = files * 10
    final = {}
    for i in range(cfg["edits"]):
        rel = targets[i % len(targets)]
        p = tool.dirs["a"] / rel
        lines = p.read_text().split("\n")
        k = (i * 7) % max(1, len(lines) - 1)
        lines[k] = lines[k] + f" /* {i} */"
        data = "\n".join(lines)
        atomic_write(p, data)
        final[rel] = data.encode()
        time.sleep(0.01)
    converge(tool, final, deadline * 6)
    wait_until("quiet after edits", lambda: tool.ready("b"), deadline)
    time.sleep(3)
    r["state_after_edits"] = {p: tool.state_bytes(p) for p in "ab"}
    r["text_bytes_after_edits"] = text_bytes(tool.dirs["a"])

    # git checkout burst.
    gitdir, expect = prepare_burst(tool, cfg["burst"], rng)
    log(tool.name, f"git checkout burst: {len(expect)} paths")
    t0 = time.monotonic()
    git(gitdir, tool.dirs["a"], "checkout", "-q", "burst")
    r["burst_checkout_s"] = time.monotonic() - t0
    converge(tool, expect, deadline * 20)
    r["burst_s"] = time.monotonic() - t0
    r["burst_paths"] = len(expect)
    wait_until("quiet after burst", lambda: tool.ready("b"), deadline * 6)
    a_m, b_m = manifest(tool.dirs["a"]), manifest(tool.dirs["b"])
    r["burst_identical"] = a_m == b_m and digest_tree(tool.dirs["a"], list(expect)) == digest_tree(tool.dirs["b"], list(expect))
    log(tool.name, "burst", r["burst_s"], "s, identical:", r["burst_identical"])

    r["rss_end_mb"] = {p: proc_status_kb(tool.procs[p].pid, "VmRSS") / 1024 for p in "ab"}
    r["load_after"] = machine_load()
    if isinstance(tool, Syncthing):
        r["network_evidence"] = tool.network_evidence()
    return r


def rsync_run(corpus: Path, work: Path):
    dst, port = work / "rsync-dst", free_port()
    dst.mkdir()
    conf = work / "rsyncd.conf"
    conf.write_text(f"use chroot = no\n[bench]\n path = {dst}\n read only = no\n uid = root\n gid = root\n")
    d = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--address=127.0.0.1", f"--port={port}",
                          f"--config={conf}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    SOCKETS.pids.add(d.pid)
    time.sleep(0.5)
    out = {}
    try:
        for label in ("initial_s", "no_change_s"):
            ru0 = os.times()
            t0 = time.monotonic()
            subprocess.run(["rsync", "-a", "--delete", f"{corpus}/", f"rsync://127.0.0.1:{port}/bench/"], check=True)
            out[label] = time.monotonic() - t0
            ru1 = os.times()
            out[label.replace("_s", "_client_cpu_s")] = (ru1.children_user - ru0.children_user) + (ru1.children_system - ru0.children_system)
    finally:
        d.terminate()
        d.wait()
    return out


def idle_100k(tool_factory, name, work, files, secs, deadline):
    """One peer pair over `files` small files, left idle: CPU % and RSS."""
    corpus = work / "corpus-100k"
    if not corpus.exists():
        log("generating", files, "small files")
        rng = random.Random(100)
        for i in range(files):
            d = corpus / f"d{i // 100:04d}"
            if i % 100 == 0:
                d.mkdir(parents=True)
            (d / f"n{i:06d}.txt").write_text(f"note {i}\n" + "x" * rng.randint(100, 1500) + "\n")
    tool = tool_factory()
    shutil.copytree(corpus, tool.dirs["a"])
    if isinstance(tool, Syncthing):
        tool.dirs["b"].mkdir(parents=True, exist_ok=True)
    expected = manifest(tool.dirs["a"])
    try:
        res = initial_share(tool, expected, deadline)
        wait_until("ready", lambda: tool.ready("b"), deadline)
        time.sleep(IDLE_SETTLE_S)
        c0 = {p: proc_cpu_secs(tool.procs[p].pid) for p in "ab"}
        rss = {p: [] for p in "ab"}
        t0 = time.monotonic()
        while time.monotonic() - t0 < secs:
            for p in "ab":
                rss[p].append(proc_status_kb(tool.procs[p].pid, "VmRSS") / 1024)
            time.sleep(1)
        el = time.monotonic() - t0
        res["idle"] = {p: {"cpu_pct": (proc_cpu_secs(tool.procs[p].pid) - c0[p]) / el * 100, "rss_mb": max(rss[p])}
                       for p in "ab"}
        res["state_bytes"] = {p: tool.state_bytes(p) for p in "ab"}
        res["raw_bytes"] = sum(expected.values())
    finally:
        tool.shutdown()
    log(name, "100k idle", res)
    return res


# ---------------------------------------------------------------------------------------
# Report


def fmt(v, unit=""):
    if isinstance(v, float):
        return f"{v:.3g}{unit}" if v < 100 else f"{v:.0f}{unit}"
    return f"{v}{unit}"


def ratio(t, s):
    return f"{t / s:.2g}x" if s else "-"


def report(res, args):
    rows, extra = [], []

    def row(what, tv, sv, unit="", target=""):
        rows.append(f"| {what} | {fmt(tv, unit)} | {fmt(sv, unit)} | {ratio(tv, sv)} | {target} |")

    if "teatime" in res:
        report_main(res, row, extra)
    if "idle_100k" in res:
        i = res["idle_100k"]
        for p, label in (("a", "sharer"), ("b", "joiner")):
            row(f"idle CPU, 100k files ({label})", i["teatime"]["idle"][p]["cpu_pct"], i["syncthing"]["idle"][p]["cpu_pct"],
                " %", "< 0.5 %")
            row(f"idle RSS, 100k files ({label})", i["teatime"]["idle"][p]["rss_mb"], i["syncthing"]["idle"][p]["rss_mb"],
                " MB", "< 200 MB")
        row("initial share, 100k files", i["teatime"]["wall_s"], i["syncthing"]["wall_s"], " s")
    head = ["| scenario | teatime | Syncthing | teatime/Syncthing | target |", "|---|---|---|---|---|"]
    extra.append(f"sockets of the benchmarked processes seen: {res['sockets_seen']}; "
                 f"with a non-loopback peer address: {len(res['sockets_bad'])}")
    return "\n".join(head + rows) + "\n\n" + "\n".join(f"- {e}" for e in extra) + "\n"


def report_main(res, row, extra):
    """The rows of the scenarios on the main corpus."""
    t, s = res["teatime"], res["syncthing"]
    row("one-line edit to other disk, p50", pct(t["edit_ms"], 50), pct(s["edit_ms"], 50), " ms", "≤ 50 ms")
    row("one-line edit to other disk, p99", pct(t["edit_ms"], 99), pct(s["edit_ms"], 99), " ms", "≤ 250 ms")
    row("initial share, wall", t["initial"]["wall_s"], s["initial"]["wall_s"], " s", "< Syncthing, ≤ 5x rsync")
    for p, label in (("a", "sharer"), ("b", "joiner")):
        row(f"initial share, CPU ({label})", t["initial"]["cpu_s"][p], s["initial"]["cpu_s"][p], " s")
        row(f"initial share, peak RSS ({label})", t["initial"]["peak_rss_mb"][p], s["initial"]["peak_rss_mb"][p], " MB")
    tr = statistics.median(x["ready_s"] for x in t["restart"])
    sr = statistics.median(x["ready_s"] for x in s["restart"])
    row("restart, nothing changed: until ready (median)", tr, sr, " s", "< Syncthing")
    row("restart: CPU until ready (median)", statistics.median(x["cpu_s"] for x in t["restart"]),
        statistics.median(x["cpu_s"] for x in s["restart"]), " s")
    row("restart: bytes read by read() (median)", statistics.median(x["rchar_mb"] for x in t["restart"]),
        statistics.median(x["rchar_mb"] for x in s["restart"]), " MB")
    for p, label in (("a", "sharer"), ("b", "joiner")):
        row(f"idle CPU, {t['corpus']['files']} files ({label})", t["idle"][p]["cpu_pct"], s["idle"][p]["cpu_pct"], " %",
            "< 0.5 %")
        row(f"idle RSS, {t['corpus']['files']} files ({label})", t["idle"][p]["rss_mb"], s["idle"][p]["rss_mb"], " MB",
            "< 200 MB")
    for when in ("import", "edits"):
        key, raw = f"state_after_{when}", f"text_bytes_after_{when}"
        row(f"state on disk / raw text, after {when} (joiner)", t[key]["b"] / t[raw], s[key]["b"] / s[raw], "x",
            "≤ 1.5x")
    for p, label in (("a", "sharer"), ("b", "joiner")):
        row(f"RSS at the end, after the 10 MB file and the burst ({label})", t["rss_end_mb"][p], s["rss_end_mb"][p],
            " MB")
    row("10 MB file arrives on the other disk", t["big_arrival_s"], s["big_arrival_s"], " s")
    row("one-line edit in the 10 MB file, p50", pct(t["big_edit_ms"], 50), pct(s["big_edit_ms"], 50), " ms",
        "≤ 250 ms")
    row(f"git checkout burst ({t['burst_paths']} paths) converged", t["burst_s"], s["burst_s"], " s",
        "≤ 2x Syncthing")
    rs = res.get("rsync", {})
    if rs:
        extra.append(f"rsync daemon on 127.0.0.1, same corpus: initial copy {rs['initial_s']:.2f} s, "
                     f"no-change pass {rs['no_change_s']:.2f} s; teatime initial share = "
                     f"{t['initial']['wall_s'] / rs['initial_s']:.1f}x rsync, Syncthing = "
                     f"{s['initial']['wall_s'] / rs['initial_s']:.1f}x rsync.")
    extra.append(f"burst identical on both sides afterwards: teatime {t['burst_identical']}, "
                 f"Syncthing {s['burst_identical']}.")
    extra.append(f"corpus: {t['corpus']['files']} files, {t['corpus']['bytes'] / 1e6:.1f} MB "
                 f"({t['corpus']['text_bytes'] / 1e6:.1f} MB text).")
    extra.append(f"machine load (1-min loadavg) teatime steps: {t['load_before']['load1']} → {t['load_after']['load1']}; "
                 f"Syncthing steps: {s['load_before']['load1']} → {s['load_after']['load1']}; "
                 f"busy processes seen: {sorted(set(t['load_before']['busy'] + s['load_before']['busy'] + t['load_after']['busy'] + s['load_after']['busy']))}")


def plot(res, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no plot")
        return False
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, color in (("teatime", "tab:green"), ("syncthing", "tab:blue")):
        v = sorted(res[name]["edit_ms"])
        ax.step(v, [(i + 1) / len(v) for i in range(len(v))], where="post", color=color,
                label=f"{name}: p50 {pct(v, 50):.0f} ms, p99 {pct(v, 99):.0f} ms (n={len(v)})")
    ax.axvline(50, color="grey", ls="--", lw=0.8)
    ax.axvline(250, color="grey", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("one-line edit → file on the other peer's disk (ms, log scale); dashed: 50 ms target, dotted: 250 ms")
    ax.set_ylabel("fraction of trials")
    ax.set_title(f"Edit latency, warm, 127.0.0.1 ({res['tier']} tier, Syncthing fsWatcherDelayS=1)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main():
    global SOCKETS
    ap = argparse.ArgumentParser()
    ap.add_argument("--tier", choices=TIERS, default="small")
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--deadline", type=float, default=30.0)
    ap.add_argument("--only", choices=["teatime", "syncthing"], help="one tool (no ratio)")
    ap.add_argument("--only-100k", action="store_true", help="only the 100k-file share and idle phase, both tools")
    args = ap.parse_args()
    cfg = TIERS[args.tier]
    # SIGTERM unwinds like Ctrl-C, so every peer started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work, out = Path(args.work), Path(args.out)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    SOCKETS = SocketWatch()

    corpus = work / "corpus"
    if args.only_100k:
        cfg = dict(cfg, idle_100k=True)
    elif cfg["corpus_files"] is None:
        if not GO_SRC.is_dir():
            sys.exit(f"{GO_SRC} missing: apt-get install golang-1.19-src")
        shutil.copytree(GO_SRC, corpus, symlinks=True)
    else:
        generate_corpus(corpus, cfg["corpus_files"])
    # Symlinks are synced by neither tool the same way: leave them out of the corpus.
    for dirpath, dirs, files in os.walk(corpus):
        for f in files + dirs:
            if os.path.islink(os.path.join(dirpath, f)):
                os.unlink(os.path.join(dirpath, f))

    res = {"tier": args.tier, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "teatime_version": subprocess.run([args.bin, "--version"], capture_output=True, text=True).stdout.strip(),
           "syncthing_version": subprocess.run(["syncthing", "--version"], capture_output=True, text=True).stdout.strip()}
    if not args.only_100k:
        res["rsync"] = rsync_run(corpus, work)
        log("rsync", res["rsync"])
    rng = random.Random(42)
    tools = [("teatime", lambda w: Teatime(w, args.bin)), ("syncthing", lambda w: Syncthing(w))]
    for name, make in tools:
        if args.only_100k or args.only and name != args.only:
            continue
        tw = work / name
        tw.mkdir()
        tool = make(tw)
        try:
            res[name] = run_tool(tool, corpus, cfg, args, rng)
        finally:
            tool.shutdown()
        (out / "results.json").write_text(json.dumps(res, indent=1))
    if cfg["idle_100k"]:
        res["idle_100k"] = {}
        for name, make in tools:
            tw = work / f"{name}-100k"
            tw.mkdir()
            res["idle_100k"][name] = idle_100k(lambda: make(tw), name, work, 100_000, cfg["idle_secs"], args.deadline * 60)
            (out / "results.json").write_text(json.dumps(res, indent=1))
    SOCKETS.check()
    SOCKETS.stop()
    res["sockets_seen"], res["sockets_bad"] = SOCKETS.seen, sorted(SOCKETS.bad)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    if args.only:
        return
    table = report(res, args)
    (out / "table.md").write_text(table)
    if not args.only_100k and plot(res, out / f"latency-{args.tier}.png"):
        log("plot:", out / f"latency-{args.tier}.png")
    print(table)


if __name__ == "__main__":
    main()
