//! A text file's first change, written and read without Automerge.
//!
//! Every text file's document starts with one change: make the Text at `text`, insert the
//! content one character after the other ([`crate::FileDoc::create`]). Building it through
//! Automerge inserts each character into its op tree (about 1.25 MB/s per core), and a
//! peer reading it back loads it the same way: for a folder shared for the first time that
//! was most of both peers' work, for files nobody may ever edit.
//!
//! That change is fully determined by its actor, its time and the text, and Automerge's
//! change format is canonical (one encoding per change; its hash is the SHA-256 of it), so
//! it is written here directly: the content's bytes *are* its value column, the other
//! columns are a few run-length-encoded bytes. Reading one back ([`Creation::parse`]) takes
//! the text out of the value column and encodes it again: only bytes equal to the canonical
//! encoding are accepted, so anything else (another shape of change, a tampered column)
//! goes to Automerge as before. The tests check the bytes against Automerge's own.
//!
//! The result is a valid Automerge change chunk: a replica that needs the document as an
//! Automerge document (to edit it, to merge a peer's edit) builds it by
//! [`Creation::to_doc`], which gives the same change and the same hash.

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, ChangeHash, ObjType, ROOT};
use sha2::{Digest, Sha256};

use crate::ModelError;

use crate::chunk::{CHANGE as CHUNK_CHANGE, COMPRESSED_CHANGE as CHUNK_COMPRESSED, MAGIC};

// Column specs of a change chunk: (column id << 4) | type.
const OBJ_ACTOR: u64 = 0x01;
const OBJ_CTR: u64 = 0x02;
const KEY_ACTOR: u64 = 0x11;
const KEY_CTR: u64 = 0x13;
const KEY_STR: u64 = 0x15;
const INSERT: u64 = 0x34;
const ACTION: u64 = 0x42;
const VAL_META: u64 = 0x56;
const VAL_RAW: u64 = 0x57;
const PRED_GROUP: u64 = 0x70;

/// Automerge's action numbers for "make a Text" and "set a value".
const ACTION_MAKE_TEXT: u64 = 4;
const ACTION_SET: u64 = 1;
/// Value metadata of a UTF-8 string: (byte length << 4) | 6.
const VALUE_TYPE_STR: u64 = 6;

/// The Text's key in the document's root map ([`crate::file`]).
pub(crate) const TEXT_KEY: &str = "text";

/// Changes longer than this are stored and sent DEFLATE'd, in Automerge's compressed
/// change chunk (Automerge's own threshold): source text shrinks to about a quarter.
const COMPRESS_OVER: usize = 256;
/// zlib level 3: 25 % faster than the default for 4 % more bytes on source code (the Go
/// tree: 0.26 of the text against 0.25).
const COMPRESSION_LEVEL: u32 = 3;
/// The largest change [`Creation::parse`] inflates (a peer's payload is bounded before
/// it gets here, see `intake`; this bounds the rest).
const MAX_INFLATED: u64 = 1 << 30;

/// A text file's first change, with what it holds.
#[derive(Clone, Debug)]
pub struct Creation {
    /// The change's actor (the creator's).
    pub actor: ActorId,
    /// The change's time, ms since the epoch.
    pub at_ms: i64,
    /// The file's content.
    pub text: String,
    /// The change chunk as stored and sent: Automerge's compressed change chunk when
    /// over [`COMPRESS_OVER`] bytes, else the change itself.
    pub bytes: Vec<u8>,
    /// Its hash.
    pub hash: ChangeHash,
}

impl Creation {
    /// The first change of a document holding `text`, by `actor` at `at_ms`.
    pub fn new(actor: ActorId, text: String, at_ms: i64) -> Creation {
        let (raw, hash) = encode(&actor, at_ms, &text);
        let bytes = if raw.len() > COMPRESS_OVER { compress(&raw) } else { raw };
        Creation { actor, at_ms, text, bytes, hash }
    }

    /// Reads `bytes` as a document's first change when it is exactly one canonical creation
    /// change (one chunk, nothing before or after; compressed or not); `None` for anything
    /// else.
    pub fn parse(bytes: &[u8]) -> Option<Creation> {
        let inflated;
        let raw = if bytes.get(8) == Some(&CHUNK_COMPRESSED) {
            inflated = inflate(bytes)?;
            &inflated
        } else {
            bytes
        };
        let (actor, at_ms, text) = read_fields(raw)?;
        let (again, hash) = encode(&actor, at_ms, &text);
        (again == raw).then(|| Creation { actor, at_ms, text, bytes: bytes.to_vec(), hash })
    }

    /// The change as Automerge's, to apply to a document that has others.
    pub fn to_change(&self) -> Result<automerge::Change, ModelError> {
        let (raw, _) = encode(&self.actor, self.at_ms, &self.text);
        automerge::Change::from_bytes(raw).map_err(|_| ModelError::Missing("a readable first change"))
    }

    /// The same document as an Automerge document, for editing and merging (costs what
    /// building it through Automerge costs). Its actor is `local`, ours.
    pub fn to_doc(&self, local: ActorId) -> Result<AutoCommit, ModelError> {
        let mut doc = AutoCommit::new().with_actor(self.actor.clone());
        let text = doc.put_object(ROOT, TEXT_KEY, ObjType::Text)?;
        if !self.text.is_empty() {
            doc.splice_text(&text, 0, 0, &self.text)?;
        }
        doc.commit_with(CommitOptions::default().with_time(self.at_ms));
        if doc.get_heads() != [self.hash] {
            // Cannot happen while this module writes Automerge's encoding (the tests check
            // it); if a new Automerge wrote another one, reading the bytes is still exact.
            let mut loaded = AutoCommit::new();
            loaded.load_incremental(&self.bytes)?;
            return Ok(loaded.with_actor(local));
        }
        Ok(doc.with_actor(local))
    }
}

/// The canonical change chunk of a document's first change: make the Text at `text`, then
/// insert each character of `text` after the previous one. Returns it and its hash.
fn encode(actor: &ActorId, at_ms: i64, text: &str) -> (Vec<u8>, ChangeHash) {
    let chars = text.chars().count() as u64;
    let mut columns: Vec<(u64, Vec<u8>)> = Vec::with_capacity(10);
    let column = |columns: &mut Vec<(u64, Vec<u8>)>, spec: u64, rle: Rle| {
        let data = rle.finish();
        if !data.is_empty() {
            columns.push((spec, data));
        }
    };
    // Op 1 (make the Text) is in the root object, at map key `text`; ops 2.. insert into
    // the Text (object 1@actor, actor index 0), the first after the head (counter 0), each
    // next after the one before (counter 2, 3, ...: deltas 2, then 1).
    let mut obj_actor = Rle::default();
    let mut obj_ctr = Rle::default();
    let mut key_actor = Rle::default();
    let mut key_ctr = Rle::default();
    let mut key_str = Rle::default();
    let mut action = Rle::default();
    obj_actor.null();
    obj_ctr.null();
    key_actor.null();
    key_ctr.null();
    key_str.string(TEXT_KEY);
    action.value(ACTION_MAKE_TEXT);
    if chars > 0 {
        obj_actor.values(0, chars);
        obj_ctr.values(1, chars);
        key_actor.null();
        key_actor.values(0, chars - 1);
        key_ctr.value(0);
        if chars > 1 {
            key_ctr.value(2);
            key_ctr.values(1, chars - 2);
        }
        key_str.nulls(chars);
        action.values(ACTION_SET, chars);
    }
    column(&mut columns, OBJ_ACTOR, obj_actor);
    column(&mut columns, OBJ_CTR, obj_ctr);
    column(&mut columns, KEY_ACTOR, key_actor);
    column(&mut columns, KEY_CTR, key_ctr);
    column(&mut columns, KEY_STR, key_str);
    // Booleans are alternating run lengths, starting with `false`: one false (the make),
    // then a true per character.
    let mut insert = Vec::new();
    uleb(&mut insert, 1);
    if chars > 0 {
        uleb(&mut insert, chars);
    }
    columns.push((INSERT, insert));
    column(&mut columns, ACTION, action);
    let mut meta = Rle::default();
    meta.value(0); // the make carries no value
    // One value per character (its UTF-8 length), pushed a run at a time: a source file
    // is mostly one long run of one-byte characters.
    let mut run: Option<(u64, u64)> = None;
    for c in text.chars() {
        let value = ((c.len_utf8() as u64) << 4) | VALUE_TYPE_STR;
        run = match run {
            Some((v, n)) if v == value => Some((v, n + 1)),
            Some((v, n)) => {
                meta.values(v, n);
                Some((value, 1))
            }
            None => Some((value, 1)),
        };
    }
    if let Some((v, n)) = run {
        meta.values(v, n);
    }
    column(&mut columns, VAL_META, meta);
    if !text.is_empty() {
        columns.push((VAL_RAW, Vec::new())); // the text itself, appended below
    }
    let mut preds = Rle::default();
    preds.values(0, chars + 1);
    column(&mut columns, PRED_GROUP, preds);

    let mut body = Vec::with_capacity(text.len() + 128);
    uleb(&mut body, 0); // no dependencies
    uleb(&mut body, actor.to_bytes().len() as u64);
    body.extend_from_slice(actor.to_bytes());
    uleb(&mut body, 1); // seq
    uleb(&mut body, 1); // start op
    sleb(&mut body, at_ms);
    uleb(&mut body, 0); // no message
    uleb(&mut body, 0); // no other actors
    uleb(&mut body, columns.len() as u64);
    for (spec, data) in &columns {
        uleb(&mut body, *spec);
        let len = if *spec == VAL_RAW { text.len() } else { data.len() };
        uleb(&mut body, len as u64);
    }
    for (spec, data) in &columns {
        if *spec == VAL_RAW {
            body.extend_from_slice(text.as_bytes());
        } else {
            body.extend_from_slice(data);
        }
    }

    let mut hashed = Vec::with_capacity(body.len() + 11);
    hashed.push(CHUNK_CHANGE);
    uleb(&mut hashed, body.len() as u64);
    hashed.extend_from_slice(&body);
    drop(body);
    let hash: [u8; 32] = Sha256::digest(&hashed).into();
    let mut out = Vec::with_capacity(hashed.len() + 8);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&hash[..4]);
    out.extend_from_slice(&hashed);
    (out, ChangeHash(hash))
}

/// The length of a chunk's header: magic, checksum, type, then the body's length.
fn header_len(chunk: &[u8]) -> Option<usize> {
    let mut r = Reader(chunk.get(9..)?);
    let before = r.0.len();
    r.uleb()?;
    Some(9 + before - r.0.len())
}

/// `raw` (a change chunk) as Automerge's compressed change chunk: the same checksum, type
/// 2, the body DEFLATE'd.
fn compress(raw: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let body = &raw[header_len(raw).expect("a chunk written by `encode`")..];
    let mut deflate = flate2::write::DeflateEncoder::new(
        Vec::with_capacity(body.len() / 3),
        flate2::Compression::new(COMPRESSION_LEVEL),
    );
    deflate.write_all(body).expect("writing to memory");
    let deflated = deflate.finish().expect("writing to memory");
    let mut out = Vec::with_capacity(deflated.len() + 16);
    out.extend_from_slice(&raw[..8]);
    out.push(CHUNK_COMPRESSED);
    uleb(&mut out, deflated.len() as u64);
    out.extend_from_slice(&deflated);
    out
}

/// A compressed change chunk back as the change chunk it stands for (checked by the
/// caller, which compares it with the canonical encoding).
fn inflate(chunk: &[u8]) -> Option<Vec<u8>> {
    use std::io::Read;
    let start = header_len(chunk)?;
    let mut r = Reader(chunk.get(9..)?);
    if usize::try_from(r.uleb()?).ok()? != chunk.len() - start {
        return None;
    }
    let mut body = Vec::new();
    flate2::read::DeflateDecoder::new(&chunk[start..]).take(MAX_INFLATED).read_to_end(&mut body).ok()?;
    let mut raw = Vec::with_capacity(body.len() + 16);
    raw.extend_from_slice(&chunk[..8]);
    raw.push(CHUNK_CHANGE);
    uleb(&mut raw, body.len() as u64);
    raw.extend_from_slice(&body);
    Some(raw)
}

/// The actor, time and text a creation change would hold, read without checking the rest
/// (the caller encodes them again and compares).
fn read_fields(bytes: &[u8]) -> Option<(ActorId, i64, String)> {
    let mut r = Reader(bytes);
    if r.take(4)? != MAGIC {
        return None;
    }
    r.take(4)?; // checksum: covered by comparing the whole encoding
    if r.take(1)? != [CHUNK_CHANGE] {
        return None;
    }
    let len = r.uleb()?;
    if usize::try_from(len).ok()? != r.0.len() {
        return None;
    }
    if r.uleb()? != 0 {
        return None; // dependencies: a first change has none
    }
    let actor_len = usize::try_from(r.uleb()?).ok()?;
    let actor = ActorId::from(r.take(actor_len)?);
    let (_seq, _start_op) = (r.uleb()?, r.uleb()?);
    let at_ms = r.sleb()?;
    let message_len = usize::try_from(r.uleb()?).ok()?;
    r.take(message_len)?;
    let others = r.uleb()?;
    for _ in 0..others {
        let n = usize::try_from(r.uleb()?).ok()?;
        r.take(n)?;
    }
    let count = r.uleb()?;
    let mut raw = None;
    let mut offset = 0usize;
    for _ in 0..count.min(64) {
        let (spec, len) = (r.uleb()?, usize::try_from(r.uleb()?).ok()?);
        if spec == VAL_RAW {
            raw = Some(offset..offset.checked_add(len)?);
        }
        offset = offset.checked_add(len)?;
    }
    let data = r.take(offset)?;
    let text = match raw {
        Some(range) => std::str::from_utf8(data.get(range)?).ok()?.to_string(),
        None => String::new(),
    };
    Some((actor, at_ms, text))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn uleb(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.take(1)?.first()?;
            value |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn sleb(&mut self) -> Option<i64> {
        let mut value = 0i64;
        for shift in (0..64).step_by(7) {
            let b = *self.take(1)?.first()?;
            value |= i64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                if shift + 7 < 64 && b & 0x40 != 0 {
                    value |= -1i64 << (shift + 7);
                }
                return Some(value);
            }
        }
        None
    }
}

fn uleb(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn sleb(out: &mut Vec<u8>, mut v: i64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if (v == 0 && byte & 0x40 == 0) || (v == -1 && byte & 0x40 != 0) {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A value of a run-length-encoded column.
#[derive(Clone, PartialEq)]
enum Val {
    Int(u64),
    Str(&'static str),
}

/// Automerge's run-length encoding, as its encoder decides it: a repeated value is a run
/// (count, value), values that do not repeat are a literal run (-count, values...), nulls
/// are a null run (0, count). Nulls before the first value are written only once a value
/// follows (a column of nulls alone is empty, and left out of the change).
#[derive(Default)]
struct Rle {
    out: Vec<u8>,
    state: State,
}

#[derive(Default)]
enum State {
    #[default]
    Empty,
    InitialNulls(u64),
    Nulls(u64),
    Lone(Val),
    Run(Val, u64),
    Literal(Val, Vec<Val>),
}

impl Rle {
    fn null(&mut self) {
        self.nulls(1);
    }

    fn nulls(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        self.state = match std::mem::take(&mut self.state) {
            State::Empty => State::InitialNulls(n),
            State::InitialNulls(c) => State::InitialNulls(c + n),
            State::Nulls(c) => State::Nulls(c + n),
            other => {
                self.flush(other);
                State::Nulls(n)
            }
        };
    }

    fn value(&mut self, v: u64) {
        self.push(Val::Int(v));
    }

    fn values(&mut self, v: u64, n: u64) {
        for _ in 0..n.min(2) {
            self.push(Val::Int(v));
        }
        if n > 2
            && let State::Run(_, c) = &mut self.state
        {
            *c += n - 2;
        }
    }

    fn string(&mut self, s: &'static str) {
        self.push(Val::Str(s));
    }

    fn push(&mut self, v: Val) {
        self.state = match std::mem::take(&mut self.state) {
            State::Empty => State::Lone(v),
            State::InitialNulls(c) | State::Nulls(c) => {
                self.null_run(c);
                State::Lone(v)
            }
            State::Lone(prev) if prev == v => State::Run(v, 2),
            State::Lone(prev) => State::Literal(v, vec![prev]),
            State::Run(prev, c) if prev == v => State::Run(v, c + 1),
            State::Run(prev, c) => {
                self.run(&prev, c);
                State::Lone(v)
            }
            State::Literal(last, run) if last == v => {
                self.literal(&run);
                State::Run(v, 2)
            }
            State::Literal(last, mut run) => {
                run.push(last);
                State::Literal(v, run)
            }
        };
    }

    fn flush(&mut self, state: State) {
        match state {
            State::Empty | State::InitialNulls(_) => {}
            State::Nulls(c) => self.null_run(c),
            State::Lone(v) => self.literal(&[v]),
            State::Run(v, c) => self.run(&v, c),
            State::Literal(last, mut run) => {
                run.push(last);
                self.literal(&run);
            }
        }
    }

    fn finish(mut self) -> Vec<u8> {
        let state = std::mem::take(&mut self.state);
        self.flush(state);
        self.out
    }

    fn null_run(&mut self, n: u64) {
        self.out.push(0);
        uleb(&mut self.out, n);
    }

    fn run(&mut self, v: &Val, n: u64) {
        sleb(&mut self.out, n as i64);
        self.write(v);
    }

    fn literal(&mut self, vals: &[Val]) {
        sleb(&mut self.out, -(vals.len() as i64));
        for v in vals {
            self.write(v);
        }
    }

    fn write(&mut self, v: &Val) {
        match v {
            Val::Int(i) => uleb(&mut self.out, *i),
            Val::Str(s) => {
                uleb(&mut self.out, s.len() as u64);
                self.out.extend_from_slice(s.as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::ReadDoc;
    use proptest::prelude::*;

    fn automerge_creation(actor: &ActorId, text: &str, at_ms: i64) -> Vec<u8> {
        let mut doc = AutoCommit::new().with_actor(actor.clone());
        let obj = doc.put_object(ROOT, TEXT_KEY, ObjType::Text).unwrap();
        if !text.is_empty() {
            doc.splice_text(&obj, 0, 0, text).unwrap();
        }
        doc.commit_with(CommitOptions::default().with_time(at_ms));
        doc.get_last_local_change().unwrap().raw_bytes().to_vec()
    }

    fn same_as_automerge(actor: &ActorId, text: &str, at_ms: i64) {
        let ours = Creation::new(actor.clone(), text.to_string(), at_ms);
        let (raw, hash) = encode(actor, at_ms, text);
        assert_eq!(raw, automerge_creation(actor, text, at_ms), "text {text:?}");
        assert_eq!(hash, ours.hash);
        let uncompressed = Creation::parse(&raw).expect("the uncompressed chunk parses");
        assert_eq!((uncompressed.text.as_str(), uncompressed.hash), (text, hash));
        let parsed = Creation::parse(&ours.bytes).expect("our own encoding parses");
        assert_eq!((parsed.text.as_str(), parsed.at_ms, parsed.hash), (text, at_ms, ours.hash));
        let mut doc = ours.to_doc(ActorId::from([9; 16])).unwrap();
        assert_eq!(doc.get_heads(), vec![ours.hash]);
        let mut loaded = AutoCommit::new();
        loaded.load_incremental(&ours.bytes).unwrap();
        assert_eq!(loaded.get_heads(), vec![ours.hash]);
        let obj = loaded.get(ROOT, TEXT_KEY).unwrap().unwrap().1;
        assert_eq!(loaded.text(&obj).unwrap(), text);
    }

    #[test]
    fn the_bytes_are_automerges_own() {
        let actor = ActorId::from([7; 24]);
        let cases = [
            "",
            "a",
            "ab",
            "abc",
            "abcd",
            "héllo",
            "aé€😀x",
            "éé",
            "ééa",
            "aéé",
            "line one\r\nline two\n",
            "\u{feff}bom\n",
            "日本語のテキスト\n",
        ];
        for text in cases {
            for at_ms in [0, 1, -5, 1_763_000_000_000, i64::MAX, i64::MIN] {
                same_as_automerge(&actor, text, at_ms);
            }
        }
        same_as_automerge(&actor, &"x".repeat(100_000), 3);
        same_as_automerge(&ActorId::from(vec![1u8; 200]), "long actor", 3);
    }

    proptest! {
        #[test]
        fn any_text_is_encoded_as_automerge_encodes_it(
            text in "(\\PC|\r|\n|\t){0,300}",
            at_ms in any::<i64>(),
            actor in prop::collection::vec(any::<u8>(), 1..40),
        ) {
            same_as_automerge(&ActorId::from(actor), &text, at_ms);
        }

        #[test]
        fn runs_of_mixed_widths_are_encoded_as_automerge_encodes_them(
            parts in prop::collection::vec((prop::sample::select(vec!['a', 'é', '€', '😀']), 1usize..5), 0..30),
        ) {
            let text: String = parts.iter().flat_map(|(c, n)| std::iter::repeat_n(*c, *n)).collect();
            same_as_automerge(&ActorId::from([3; 16]), &text, 7);
        }
    }

    #[test]
    fn anything_but_a_canonical_creation_is_not_read_as_one() {
        let actor = ActorId::from([7; 16]);
        let good = encode(&actor, 5, "hello\nworld\n").0;
        // Every single-byte change, and every truncation, is refused.
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(Creation::parse(&bad).is_none(), "byte {i} flipped");
            assert!(Creation::parse(&good[..i]).is_none(), "cut at {i}");
        }
        // Compressed: a flipped byte either fails to inflate or inflates to other bytes.
        let compressed = Creation::new(actor.clone(), "compressed\n".repeat(100), 5).bytes;
        assert_eq!(compressed[8], CHUNK_COMPRESSED);
        for i in 0..compressed.len() {
            let mut bad = compressed.clone();
            bad[i] ^= 0x01;
            assert!(Creation::parse(&bad).is_none_or(|c| c.text == "compressed\n".repeat(100)), "byte {i}");
            assert!(Creation::parse(&compressed[..i]).is_none(), "cut at {i}");
        }
        let mut two = good.clone();
        two.extend_from_slice(&good);
        assert!(Creation::parse(&two).is_none(), "two chunks");
        // A later change, or a whole document, is not a creation.
        let mut doc = Creation::new(actor.clone(), "hello\n".into(), 5).to_doc(actor).unwrap();
        let obj = doc.get(ROOT, TEXT_KEY).unwrap().unwrap().1;
        doc.splice_text(&obj, 0, 0, "x").unwrap();
        doc.commit();
        let edit = doc.get_last_local_change().unwrap().raw_bytes().to_vec();
        assert!(Creation::parse(&edit).is_none());
        assert!(Creation::parse(&doc.save()).is_none());
    }
}
