//! The simulated world: peers, the network between them, the user at each disk, faults,
//! and the checks at the end of a run. See the crate doc of `sim.rs` for the model.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use automerge::ActorId;
use teatime_crdt::ids::{actor_for_member, member_bytes_of_actor};
use teatime_crdt::{DocId, EntryKind, FolderDoc, Strategy};

use super::peer::{Changes, DeleteSees, Node, Peer, name_of, parent_of};
use super::rng::Rng;

/// Names users give files and directories: case variants and a file/directory clash.
const NAMES: [&str; 7] = ["a.md", "A.md", "b.md", "c", "d", "D", "e"];

/// First code point of the marker delimiters (CJK ideographs: one per marker).
const MARK_BASE: u32 = 0x4E00;
const MARK_MAX: u32 = 20_000;
/// A marker is its code point this many times: no character of it is in any other marker.
const MARK_LEN: usize = 3;

/// How a run is shaped; all drawn from the seed unless overridden.
#[derive(Clone, Debug)]
pub struct Config {
    pub peers: usize,
    /// Steps of the safety phase (faults on).
    pub steps: usize,
    pub strategy: Strategy,
    /// Per mille per delivery: lose, duplicate, reorder.
    pub loss: u32,
    pub dup: u32,
    pub reorder: u32,
    /// Whether crashes (and which kinds) happen.
    pub crashes: bool,
    pub crash_mid_flush: bool,
    pub partitions: bool,
    /// Clock skew between peers, ms (each peer gets a fixed offset in ±this).
    pub skew_ms: u64,
    /// Which heads a user's deletion names as seen (the node: the index row's, what the
    /// disk held).
    pub delete_sees: DeleteSees,
    /// Whether the index rows a scan records are persisted with the documents, in one
    /// transaction (the node), or only after materialising.
    pub index_with_docs: bool,
    /// Whether the index row of a file materialisation wrote is durable with the write (the
    /// node: a write intent committed before the rename), or only at the end of the flush.
    pub index_at_write: bool,
    /// Whether an edit's index base is its own change, the version the disk holds (the
    /// node), or the document's heads after merging it with what arrived meanwhile.
    pub edit_base_is_disk: bool,
    /// Whether a restart writes with a fresh actor (the node: a new nonce per process
    /// start), or keeps the one it had.
    pub fresh_actor_per_start: bool,
    /// Round bound of the liveness phase.
    pub max_rounds: usize,
}

impl Config {
    pub fn from_seed(rng: &mut Rng) -> Config {
        let peers = env_usize("TEATIME_SIM_PEERS").unwrap_or_else(|| rng.range(2, 7));
        let strategy = *rng.pick(&[Strategy::Timestamp, Strategy::Priority, Strategy::Interactive]);
        Config {
            peers,
            steps: env_usize("TEATIME_SIM_STEPS").unwrap_or_else(|| rng.range(150, 400)),
            strategy,
            loss: *rng.pick(&[0, 20, 100]),
            dup: *rng.pick(&[0, 20, 100]),
            reorder: *rng.pick(&[0, 100, 400]),
            crashes: rng.chance(700),
            crash_mid_flush: rng.chance(500),
            partitions: rng.chance(600),
            skew_ms: *rng.pick(&[0, 5, 2_000, 86_400_000]),
            delete_sees: DeleteSees::IndexBase,
            index_with_docs: true,
            index_at_write: true,
            edit_base_is_disk: true,
            fresh_actor_per_start: true,
            max_rounds: 40,
        }
        .with_old(&std::env::var("TEATIME_SIM_OLD").unwrap_or_default())
    }

    /// Models behaviours the node had before a fix instead of what it does now (each
    /// regression test shows its seed failing with one): a comma-separated list of
    /// `delete-sees-doc`, `index-apart`, `index-after-write`, `edit-base-merged`,
    /// `actor-kept` (see the fields).
    pub fn with_old(mut self, old: &str) -> Config {
        for behaviour in old.split(',').map(str::trim).filter(|g| !g.is_empty()) {
            match behaviour {
                "delete-sees-doc" => self.delete_sees = DeleteSees::DocHeads,
                "index-apart" => self.index_with_docs = false,
                "index-after-write" => self.index_at_write = false,
                "edit-base-merged" => self.edit_base_is_disk = false,
                "actor-kept" => self.fresh_actor_per_start = false,
                other => panic!("unknown old behaviour {other:?} in TEATIME_SIM_OLD"),
            }
        }
        self
    }
}

pub fn env_usize(key: &str) -> Option<usize> {
    std::env::var(key).ok().and_then(|v| v.parse().ok())
}

/// A message in flight: a summary opening a session, or changes.
#[derive(Clone, Debug)]
enum Body {
    Summary(Vec<(DocId, Vec<automerge::ChangeHash>)>),
    Changes(Changes),
}

#[derive(Clone, Debug)]
struct Msg {
    from: usize,
    to: usize,
    session: u64,
    body: Body,
}

/// What the oracle knows about one marker.
#[derive(Clone, Debug)]
struct Mark {
    /// Who typed it, at which step.
    by: usize,
    step: usize,
    /// Removed by a user who saw it (an edit deleting its range, or a delete of its file
    /// or directory): it may be missing at the end.
    removed: Option<(usize, usize)>,
}

/// What a run did (reported by the test).
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub peers: usize,
    pub user_ops: usize,
    pub marks: usize,
    pub removed: usize,
    pub delivered: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub crashes: usize,
    pub partitions: usize,
    pub rounds: usize,
    pub paths: usize,
    pub changes: usize,
}

pub struct World {
    pub cfg: Config,
    rng: Rng,
    peers: Vec<Peer>,
    skew: Vec<i64>,
    net: VecDeque<Msg>,
    /// Live sessions by peer pair (low, high).
    sessions: BTreeMap<(usize, usize), u64>,
    next_session: u64,
    /// Partition side of each peer (equal sides can talk).
    side: Vec<u8>,
    step: usize,
    marks: Vec<Mark>,
    trace: bool,
    pub log: Vec<String>,
    pub stats: Stats,
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl World {
    pub fn with_config(seed: u64, cfg: Config, trace: bool) -> World {
        let mut rng = Rng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xA5A5);
        let members: Vec<[u8; 32]> = (0..cfg.peers).map(|_| rng.bytes::<32>()).collect();
        let actors: Vec<ActorId> = members.iter().map(|m| actor_for_member(m, rng.bytes::<8>())).collect();
        let hex = |m: &[u8; 32]| teatime_crdt::ids::to_hex(m);
        let mut owner = FolderDoc::create(actors[0].clone(), &hex(&members[0]), "p0").unwrap();
        owner.set_strategy(cfg.strategy).unwrap();
        for (i, m) in members.iter().enumerate() {
            if i > 0 {
                owner.add_member(&hex(m), &format!("p{i}"), "writer", "").unwrap();
            }
            if cfg.strategy == Strategy::Priority {
                owner.set_tier(&hex(m), rng.below(3) as i64).unwrap();
            }
        }
        owner.commit_at(1_000_000);
        let saved = owner.doc_mut().save();
        // Some members joined before the run (they hold the folder), others join during it.
        let peers: Vec<Peer> = (0..cfg.peers)
            .map(|i| {
                let has = i == 0 || rng.chance(600);
                Peer::new(members[i], actors[i].clone(), has.then_some(saved.as_slice()))
            })
            .collect();
        let skew = (0..cfg.peers)
            .map(|_| {
                if cfg.skew_ms == 0 {
                    0
                } else {
                    rng.below(2 * cfg.skew_ms as usize) as i64 - cfg.skew_ms as i64
                }
            })
            .collect();
        let mut w = World {
            stats: Stats { peers: cfg.peers, ..Stats::default() },
            side: vec![0; cfg.peers],
            cfg,
            rng,
            peers,
            skew,
            net: VecDeque::new(),
            sessions: BTreeMap::new(),
            next_session: 1,
            step: 0,
            marks: Vec::new(),
            trace,
            log: Vec::new(),
        };
        w.note(format!("config {:?}", w.cfg));
        for a in 0..w.cfg.peers {
            for b in a + 1..w.cfg.peers {
                w.connect(a, b);
            }
        }
        w
    }

    fn note(&mut self, line: String) {
        if self.trace {
            eprintln!("[{:>5}] {line}", self.step);
        }
        self.log.push(line);
        if self.log.len() > 400 {
            self.log.drain(..100);
        }
    }

    /// Peer `p`'s wall clock, ms: the simulated time plus its skew (never before 1 s).
    fn now(&self, p: usize) -> u64 {
        (2_000_000_000_000i64 + self.step as i64 * 10 + self.skew[p]).max(1000) as u64
    }

    fn new_id(rng: &mut Rng) -> DocId {
        DocId(rng.bytes::<16>())
    }

    // ---- network ----

    fn connect(&mut self, a: usize, b: usize) {
        let key = pair(a, b);
        if a == b || self.sessions.contains_key(&key) {
            return;
        }
        if !self.peers[a].up || !self.peers[b].up || self.side[a] != self.side[b] {
            return;
        }
        let s = self.next_session;
        self.next_session += 1;
        self.sessions.insert(key, s);
        self.note(format!("session {s}: p{a} <-> p{b}"));
        for (x, y) in [(a, b), (b, a)] {
            self.peers[x].known.insert(y, BTreeMap::new());
            let summary = self.peers[x].summary();
            self.net.push_back(Msg { from: x, to: y, session: s, body: Body::Summary(summary) });
        }
    }

    fn disconnect(&mut self, a: usize, b: usize) {
        if let Some(s) = self.sessions.remove(&pair(a, b)) {
            self.note(format!("session {s} closed: p{a} p{b}"));
            self.peers[a].known.remove(&b);
            self.peers[b].known.remove(&a);
        }
    }

    fn session_peers(&self, p: usize) -> Vec<usize> {
        self.sessions.keys().filter_map(|&(a, b)| (a == p).then_some(b).or((b == p).then_some(a))).collect()
    }

    fn send(&mut self, from: usize, to: usize, changes: Changes) {
        let s = self.sessions[&pair(from, to)];
        self.net.push_back(Msg { from, to, session: s, body: Body::Changes(changes) });
    }

    /// Delivers one message (faults: loss, duplication, reordering).
    fn deliver(&mut self, faults: bool) {
        let i = if faults && self.rng.chance(self.cfg.reorder) { self.rng.below(self.net.len()) } else { 0 };
        let Some(msg) = self.net.remove(i) else { return };
        if self.sessions.get(&pair(msg.from, msg.to)) != Some(&msg.session) {
            return; // its session is gone (a closed connection)
        }
        if faults && self.rng.chance(self.cfg.loss) {
            self.stats.lost += 1;
            self.note(format!("lost p{} -> p{}", msg.from, msg.to));
            return;
        }
        if faults && self.rng.chance(self.cfg.dup) {
            self.stats.duplicated += 1;
            let at = self.rng.below(self.net.len() + 1);
            self.net.insert(at, msg.clone());
        }
        self.stats.delivered += 1;
        let (from, to) = (msg.from, msg.to);
        match msg.body {
            Body::Summary(theirs) => {
                let out = self.peers[to].on_summary(from, &theirs);
                for c in out {
                    self.send(to, from, c);
                }
            }
            Body::Changes(c) => {
                if let Err(e) = self.peers[to].receive(from, &c) {
                    panic!("p{to} refused changes from p{from}: {e}");
                }
            }
        }
    }

    // ---- a peer's flush ----

    /// `crash`: 1 = crash after persisting documents, 2 = after materialising (before
    /// the index is persisted and anything is sent).
    fn flush(&mut self, p: usize, crash: u8) {
        let now = self.now(p);
        let (sees, disk_base) = (self.cfg.delete_sees, self.cfg.edit_base_is_disk);
        let rng = &mut self.rng;
        let log = self.peers[p].scan(now, sees, disk_base, &mut || Self::new_id(rng));
        for l in log {
            self.note(format!("p{p} records {l}"));
        }
        self.peers[p].record_duplicates(now);
        self.peers[p].persist_docs();
        if self.cfg.index_with_docs {
            self.peers[p].persist_index();
        }
        if crash == 1 {
            return self.crash(p, "after persisting documents");
        }
        self.peers[p].materialize();
        if self.cfg.index_at_write {
            self.peers[p].persist_index();
        }
        if crash == 2 {
            return self.crash(p, "after materialising");
        }
        self.peers[p].persist_index();
        for q in self.session_peers(p) {
            for doc in self.peers[p].doc_ids() {
                if let Some(c) = self.peers[p].push(q, doc) {
                    self.send(p, q, c);
                }
            }
        }
    }

    fn crash(&mut self, p: usize, when: &str) {
        self.stats.crashes += 1;
        self.note(format!("p{p} crashes {when}"));
        for q in self.session_peers(p) {
            self.disconnect(p, q);
        }
        self.peers[p].crash();
    }

    fn restart(&mut self, p: usize) {
        // The node writes with a fresh actor after every start, so a store restored from an
        // older copy never reuses a sequence number peers hold (keeping it is safe only
        // because nothing leaves a peer before it is persisted, and only without restores).
        // The nonce is derived, not drawn: a restart does not shift the run's random stream.
        let old = self.peers[p].actor.to_bytes().to_vec();
        let actor = if self.cfg.fresh_actor_per_start {
            let member: [u8; 32] = old[..32].try_into().expect("a member-form actor");
            let nonce = u64::from_le_bytes(old[32..40].try_into().expect("an 8-byte nonce"));
            actor_for_member(&member, nonce.wrapping_add(1).to_le_bytes())
        } else {
            self.peers[p].actor.clone()
        };
        self.note(format!("p{p} restarts"));
        self.peers[p].restart(actor);
        // The startup scan runs before any frame is handled.
        self.flush(p, 0);
        for q in 0..self.cfg.peers {
            self.connect(p, q);
        }
    }

    // ---- the user ----

    fn new_mark(&mut self, p: usize) -> String {
        let k = self.marks.len() as u32;
        assert!(k < MARK_MAX, "too many markers for one run");
        let c = char::from_u32(MARK_BASE + k).expect("a CJK ideograph");
        let text: String = [c; MARK_LEN].iter().collect();
        self.marks.push(Mark { by: p, step: self.step, removed: None });
        text
    }

    /// How the trace and the errors name marker `k`.
    fn mark_name(&self, k: usize) -> String {
        let m = &self.marks[k];
        format!("⟨p{}#{k}⟩", m.by)
    }

    fn remove_marks_in(&mut self, p: usize, text: &str) {
        for k in marks_in(text).into_keys() {
            let m = &mut self.marks[k];
            if m.removed.is_none() {
                m.removed = Some((p, self.step));
            }
        }
    }

    fn free(disk: &BTreeMap<String, Node>, path: &str) -> bool {
        !disk.contains_key(path)
    }

    fn join(dir: Option<&str>, name: &str) -> String {
        match dir {
            Some(d) => format!("{d}/{name}"),
            None => name.to_string(),
        }
    }

    /// One action of the user at peer `p`'s disk (running or not).
    fn user_op(&mut self, p: usize) {
        self.stats.user_ops += 1;
        let dirs: Vec<String> = self.peers[p]
            .disk
            .iter()
            .filter(|(_, n)| n.kind == EntryKind::Dir)
            .map(|(k, _)| k.clone())
            .collect();
        let files: Vec<String> = self.peers[p]
            .disk
            .iter()
            .filter(|(_, n)| n.kind == EntryKind::File)
            .map(|(k, _)| k.clone())
            .collect();
        let all: Vec<String> = self.peers[p].disk.keys().cloned().collect();
        let op = self.rng.weighted(&[4, 2, 12, 3, 3, 2]);
        match op {
            0 | 1 => {
                let parent = if dirs.is_empty() || self.rng.chance(400) {
                    None
                } else {
                    Some(self.rng.pick(&dirs).clone())
                };
                let name = *self.rng.pick(&NAMES);
                let path = Self::join(parent.as_deref(), name);
                if !Self::free(&self.peers[p].disk, &path) {
                    return;
                }
                let (kind, text) = if op == 0 {
                    (EntryKind::File, format!("{}\n", self.new_mark(p)))
                } else {
                    (EntryKind::Dir, String::new())
                };
                let inode = self.peers[p].inode();
                self.note(format!("user p{p}: create {kind:?} {path:?} {:?}", show(&self.marks, &text)));
                self.peers[p].disk.insert(path, Node { inode, kind, text });
            }
            2 => {
                if files.is_empty() {
                    return;
                }
                let path = self.rng.pick(&files).clone();
                let old = self.peers[p].disk[&path].text.clone();
                let (new, what) = self.edit(p, &old);
                self.note(format!("user p{p}: edit {path:?}: {what}"));
                self.peers[p].disk.get_mut(&path).expect("picked").text = new;
            }
            3 | 4 => {
                if all.is_empty() {
                    return;
                }
                let from = self.rng.pick(&all).clone();
                let case_only = op == 3 && self.rng.chance(400);
                let parent: Option<String> = if op == 3 {
                    parent_of(&from).map(String::from)
                } else {
                    let targets: Vec<&String> =
                        dirs.iter().filter(|d| **d != from && !d.starts_with(&format!("{from}/"))).collect();
                    if targets.is_empty() || self.rng.chance(300) {
                        None
                    } else {
                        Some(self.rng.pick(&targets).to_string())
                    }
                };
                let old_name = name_of(&from);
                let name = if case_only {
                    let flipped: String =
                        old_name
                            .chars()
                            .map(|c| {
                                if c.is_lowercase() { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() }
                            })
                            .collect();
                    flipped
                } else if op == 4 && self.rng.chance(500) {
                    old_name.to_string()
                } else {
                    self.rng.pick(&NAMES).to_string()
                };
                let to = Self::join(parent.as_deref(), &name);
                if to == from || !Self::free(&self.peers[p].disk, &to) {
                    return;
                }
                self.note(format!("user p{p}: move {from:?} -> {to:?}"));
                let disk = &mut self.peers[p].disk;
                let moved: Vec<String> = disk
                    .keys()
                    .filter(|k| **k == from || k.starts_with(&format!("{from}/")))
                    .cloned()
                    .collect();
                for k in moved {
                    let node = disk.remove(&k).expect("listed");
                    disk.insert(format!("{to}{}", &k[from.len()..]), node);
                }
            }
            _ => {
                if all.is_empty() {
                    return;
                }
                let path = self.rng.pick(&all).clone();
                self.note(format!("user p{p}: delete {path:?}"));
                let gone: Vec<String> = self.peers[p]
                    .disk
                    .keys()
                    .filter(|k| **k == path || k.starts_with(&format!("{path}/")))
                    .cloned()
                    .collect();
                for k in gone {
                    let node = self.peers[p].disk.remove(&k).expect("listed");
                    self.remove_marks_in(p, &node.text);
                }
            }
        }
    }

    /// An edit of a text as a user makes it: a new marker inline or on a new line, a
    /// deleted run of lines or tokens, or (rarely) everything replaced.
    fn edit(&mut self, p: usize, old: &str) -> (String, String) {
        let tokens = tokenize(old);
        match self.rng.weighted(&[5, 4, 3, 1]) {
            0 => {
                let at = self.rng.below(tokens.len() + 1);
                let mark = self.new_mark(p);
                let mut out: String = tokens[..at].concat();
                out.push_str(&mark);
                out.push_str(&tokens[at..].concat());
                (out, format!("insert {} at token {at}", show(&self.marks, &mark)))
            }
            1 => {
                let starts: Vec<usize> =
                    (0..=tokens.len()).filter(|&i| i == 0 || tokens[i - 1] == "\n").collect();
                let at = *self.rng.pick(&starts);
                let mark = self.new_mark(p);
                let mut out: String = tokens[..at].concat();
                out.push_str(&mark);
                out.push('\n');
                out.push_str(&tokens[at..].concat());
                (out, format!("insert line {} at token {at}", show(&self.marks, &mark)))
            }
            2 if !tokens.is_empty() => {
                let from = self.rng.below(tokens.len());
                let to = (from + self.rng.range(1, 4)).min(tokens.len());
                let removed: String = tokens[from..to].concat();
                self.remove_marks_in(p, &removed);
                (
                    tokens[..from].concat() + &tokens[to..].concat(),
                    format!("delete {:?}", show(&self.marks, &removed)),
                )
            }
            _ => {
                self.remove_marks_in(p, old);
                let mark = self.new_mark(p);
                let what =
                    format!("replace all of {:?} with {}", show(&self.marks, old), show(&self.marks, &mark));
                (format!("{mark}\n"), what)
            }
        }
    }

    // ---- the run ----

    /// The safety phase: `steps` random actions with faults.
    pub fn safety(&mut self) {
        let n = self.cfg.peers;
        for step in 0..self.cfg.steps {
            self.step = step;
            let w = [
                30,                                       // user
                18,                                       // flush
                if self.net.is_empty() { 0 } else { 45 }, // deliver
                3,                                        // connect
                1,                                        // disconnect
                2 * self.cfg.partitions as u32,           // partition or heal
                self.cfg.crashes as u32,                  // crash
                3 * self.cfg.crashes as u32,              // restart
            ];
            match self.rng.weighted(&w) {
                0 => {
                    let p = self.rng.below(n);
                    self.user_op(p);
                }
                1 => {
                    let p = self.rng.below(n);
                    if self.peers[p].up {
                        let crash = if self.cfg.crash_mid_flush && self.rng.chance(30) {
                            self.rng.range(1, 2) as u8
                        } else {
                            0
                        };
                        self.flush(p, crash);
                    }
                }
                2 => self.deliver(true),
                3 => {
                    let (a, b) = (self.rng.below(n), self.rng.below(n));
                    self.connect(a, b);
                }
                4 => {
                    let (a, b) = (self.rng.below(n), self.rng.below(n));
                    self.disconnect(a, b);
                }
                5 => {
                    if self.side.iter().any(|s| *s != 0) {
                        self.note("partition healed".into());
                        self.side = vec![0; n];
                    } else {
                        self.stats.partitions += 1;
                        self.side = (0..n).map(|_| self.rng.below(2) as u8).collect();
                        self.note(format!("partition {:?}", self.side));
                        for (a, b) in self.sessions.keys().copied().collect::<Vec<_>>() {
                            if self.side[a] != self.side[b] {
                                self.disconnect(a, b);
                            }
                        }
                    }
                }
                6 => {
                    let p = self.rng.below(n);
                    if self.peers[p].up {
                        self.crash(p, "between steps");
                    }
                }
                _ => {
                    let p = self.rng.below(n);
                    if !self.peers[p].up {
                        self.restart(p);
                    }
                }
            }
        }
    }

    /// The liveness phase: faults stop, everyone restarts and reconnects (fresh sessions:
    /// a connection that lost a message is one that broke), and peers flush and exchange
    /// until nothing is in flight and nothing changes. Returns the rounds it took.
    pub fn liveness(&mut self) -> Result<usize, String> {
        let n = self.cfg.peers;
        self.step = self.cfg.steps;
        self.note("---- liveness ----".into());
        self.side = vec![0; n];
        for p in 0..n {
            if !self.peers[p].up {
                self.restart(p);
            }
        }
        for (a, b) in self.sessions.keys().copied().collect::<Vec<_>>() {
            self.disconnect(a, b);
        }
        self.net.clear();
        for a in 0..n {
            for b in a + 1..n {
                self.connect(a, b);
            }
        }
        for round in 1..=self.cfg.max_rounds {
            self.step += 1;
            let before: Vec<Vec<(DocId, Vec<automerge::ChangeHash>)>> =
                self.peers.iter_mut().map(|p| p.summary()).collect();
            let disks_before: Vec<BTreeMap<String, Node>> =
                self.peers.iter().map(|p| p.disk.clone()).collect();
            for p in 0..n {
                self.flush(p, 0);
            }
            let mut sent = false;
            while !self.net.is_empty() {
                sent = true;
                self.deliver(false);
            }
            let after: Vec<Vec<(DocId, Vec<automerge::ChangeHash>)>> =
                self.peers.iter_mut().map(|p| p.summary()).collect();
            let disks: Vec<BTreeMap<String, Node>> = self.peers.iter().map(|p| p.disk.clone()).collect();
            if !sent && before == after && disks_before == disks {
                self.stats.rounds = round;
                return Ok(round);
            }
        }
        Err(format!("not quiescent after {} rounds of exchange without faults", self.cfg.max_rounds))
    }

    /// The invariants, checked after the liveness phase.
    pub fn check(&mut self) -> Result<(), String> {
        let n = self.cfg.peers;
        let disk: Vec<String> = self.peers[0]
            .disk
            .iter()
            .map(|(k, v)| format!("{k:?}: {:?}", show(&self.marks, &v.text)))
            .collect();
        self.note(format!("final disk of p0: {disk:#?}"));
        // 1. Same documents, same heads.
        let reference = self.peers[0].summary();
        for p in 1..n {
            let theirs = self.peers[p].summary();
            if theirs != reference {
                let a: BTreeSet<DocId> = reference.iter().map(|d| d.0).collect();
                let b: BTreeSet<DocId> = theirs.iter().map(|d| d.0).collect();
                return Err(format!(
                    "p{p} differs from p0 in documents or heads (p0 only: {:?}, p{p} only: {:?})",
                    a.difference(&b).collect::<Vec<_>>(),
                    b.difference(&a).collect::<Vec<_>>()
                ));
            }
        }
        for p in 0..n {
            for id in self.peers[p].doc_ids() {
                if self.peers[p].has_queued(id) {
                    return Err(format!("p{p} still has changes of {} waiting for dependencies", id.short()));
                }
            }
        }
        // 2. Same tree, same bytes on every disk; the tree is what the documents render.
        let tree = self.peers[0].tree();
        for p in 0..n {
            let t = self.peers[p].tree();
            if t.by_path != tree.by_path || t.conflicts != tree.conflicts {
                return Err(format!("p{p} renders another tree than p0"));
            }
            let disk: BTreeMap<&String, (&EntryKind, &String)> =
                self.peers[p].disk.iter().map(|(k, v)| (k, (&v.kind, &v.text))).collect();
            let disk0: BTreeMap<&String, (&EntryKind, &String)> =
                self.peers[0].disk.iter().map(|(k, v)| (k, (&v.kind, &v.text))).collect();
            if disk != disk0 {
                return Err(format!("p{p}'s disk differs from p0's: {disk:?} vs {disk0:?}"));
            }
            let shown: BTreeSet<&String> = tree.by_path.keys().collect();
            let on_disk: BTreeSet<&String> = self.peers[p].disk.keys().collect();
            if shown != on_disk {
                return Err(format!("p{p}'s disk is not the rendered tree: {on_disk:?} vs {shown:?}"));
            }
        }
        let lower: BTreeSet<String> = tree.by_path.keys().map(|k| k.to_lowercase()).collect();
        if lower.len() != tree.by_path.len() {
            return Err(format!(
                "two paths differ only in case: {:?}",
                tree.by_path.keys().collect::<Vec<_>>()
            ));
        }
        // 3. Every change is written by a member's actor (the real node refuses others).
        for id in self.peers[0].doc_ids() {
            for actor in self.peers[0].actors(id) {
                if member_bytes_of_actor(&actor).is_none() {
                    return Err(format!(
                        "document {} holds a change by a non-member actor {actor}",
                        id.short()
                    ));
                }
            }
        }
        // 4. No marker lost unless a user who saw it removed it; none doubled.
        let mut count: BTreeMap<usize, usize> = BTreeMap::new();
        for node in self.peers[0].disk.values() {
            for (k, c) in marks_in(&node.text) {
                *count.entry(k).or_default() += c;
            }
        }
        for (k, m) in self.marks.iter().enumerate() {
            let c = count.get(&k).copied().unwrap_or(0);
            if c > 1 {
                return Err(format!("marker {} (step {}) appears {c} times", self.mark_name(k), m.step));
            }
            if c == 0 && m.removed.is_none() {
                let tree = self.peers[0].tree();
                let entries = self.peers[0].folder.entries();
                let holders: Vec<String> = self.peers[0]
                    .files
                    .borrow_mut()
                    .iter_mut()
                    .filter_map(|(id, f)| f.text().map(|t| (id, t)))
                    .filter(|(_, t)| marks_in(t).contains_key(&k))
                    .map(|(id, _)| {
                        format!(
                            "{} shown at {:?}, entry {:?}",
                            id.short(),
                            tree.path_of(*id),
                            entries.get(id).map(|e| (&e.locs, &e.deletions))
                        )
                    })
                    .collect();
                return Err(format!(
                    "marker {} typed at step {} is lost (no user removed it); documents holding it: {holders:?}",
                    self.mark_name(k),
                    m.step
                ));
            }
        }
        self.stats.marks = self.marks.len();
        self.stats.removed = self.marks.iter().filter(|m| m.removed.is_some()).count();
        self.stats.paths = tree.by_path.len();
        self.stats.changes = self.peers[0].change_count();
        Ok(())
    }
}

/// A text as the user sees it: markers (one token each) and single other characters.
fn tokenize(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if is_delim(c) && chars.len() >= i + MARK_LEN && chars[i..i + MARK_LEN].iter().all(|d| *d == c) {
            out.push(chars[i..i + MARK_LEN].iter().collect());
            i += MARK_LEN;
            continue;
        }
        out.push(c.to_string());
        i += 1;
    }
    out
}

fn is_delim(c: char) -> bool {
    (MARK_BASE..MARK_BASE + MARK_MAX).contains(&(c as u32))
}

/// Intact markers in a text: marker number → occurrences.
fn marks_in(text: &str) -> BTreeMap<usize, usize> {
    let mut out = BTreeMap::new();
    for t in tokenize(text) {
        let first = t.chars().next().expect("tokens are not empty");
        if t.chars().count() == MARK_LEN && is_delim(first) {
            *out.entry((first as u32 - MARK_BASE) as usize).or_default() += 1;
        }
    }
    out
}

/// A text with its markers named (`⟨p3#17⟩`), for the trace.
fn show(marks: &[Mark], text: &str) -> String {
    tokenize(text)
        .into_iter()
        .map(|t| {
            let first = t.chars().next().expect("tokens are not empty");
            if t.chars().count() == MARK_LEN && is_delim(first) {
                let k = (first as u32 - MARK_BASE) as usize;
                format!("⟨p{}#{k}⟩", marks[k].by)
            } else {
                t
            }
        })
        .collect()
}
