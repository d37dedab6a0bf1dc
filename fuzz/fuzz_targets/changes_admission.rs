//! A peer's `Changes` bytes -> the replica's capped load path: `intake::inspect`, then
//! Automerge's `load_incremental` on a fork of a document (and on an empty one), behind
//! `catch_unwind`.
//!
//! Before inspecting, the chunk checksums in the input are recomputed (for inputs whose
//! first byte is odd), so mutations reach the column parsers and Automerge instead of
//! stopping at a checksum mismatch. Invariants: nothing escapes `decode_isolated` (a panic
//! inside Automerge is caught, as in the node, and reported once on stderr); what passes
//! the caps loads within libFuzzer's memory and time limits. With
//! `TEATIME_FUZZ_AUTOMERGE_PANICS=1` in the environment, a panic inside Automerge is a
//! crash instead (to find and report Automerge's own bugs).
#![no_main]

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use teatime_crdt::FileDoc;
use teatime_crdt::automerge::{ActorId, AutoCommit};
use teatime_fuzz::intake::{self, Limits};

/// Small caps, so that what passes them is cheap to load.
const LIMITS: Limits = Limits {
    max_bytes: 1 << 20,
    max_changes: 10_000,
    max_ops: 200_000,
    max_waiting_changes: 10_000,
    max_waiting_bytes: 1 << 20,
};

thread_local! {
    /// A document with a little history, to load changes into.
    static BASE: RefCell<AutoCommit> = RefCell::new({
        let mut f = FileDoc::create(ActorId::from([1; 16]), "one\ntwo\nthree\n", 0).expect("doc");
        f.ingest("one\n2\nthree\nfour\n", std::time::Instant::now() + std::time::Duration::from_secs(5), 1)
            .expect("edit");
        f.doc_mut().clone()
    });
}

static REPORTED: AtomicBool = AtomicBool::new(false);

/// Overwrites each chunk's checksum with the right one (compressed chunks aside: theirs
/// covers the inflated bytes).
fn fix_checksums(data: &mut [u8]) {
    let mut at = 0;
    while data.len() >= at + 10 && data[at..at + 4] == [0x85, 0x6f, 0x4a, 0x83] {
        let kind = data[at + 8];
        let (mut len, mut shift, mut i) = (0u64, 0, at + 9);
        while i < data.len() && shift < 64 {
            len |= u64::from(data[i] & 0x7f) << shift;
            shift += 7;
            i += 1;
            if data[i - 1] & 0x80 == 0 {
                break;
            }
        }
        let Some(end) = usize::try_from(len).ok().and_then(|l| i.checked_add(l)).filter(|e| *e <= data.len())
        else {
            return;
        };
        if kind != 2 {
            let mut h = Sha256::new();
            h.update([kind]);
            h.update(&data[at + 9..i]);
            h.update(&data[i..end]);
            let sum: [u8; 32] = h.finalize().into();
            data[at + 4..at + 8].copy_from_slice(&sum[..4]);
        }
        at = end;
    }
}

fn load(doc: &mut AutoCommit, data: &[u8]) {
    if std::env::var_os("TEATIME_FUZZ_AUTOMERGE_PANICS").is_some() {
        // Hunting Automerge's own bugs: its panics are crashes, with the input saved.
        let _ = doc.load_incremental(data);
        return;
    }
    // libFuzzer's panic hook aborts even on a panic that is caught: set a quiet one while
    // Automerge decodes, as the node survives such a panic.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = intake::decode_isolated(|| doc.load_incremental(data));
    std::panic::set_hook(hook);
    if let Err(panic) = result
        && !REPORTED.swap(true, Ordering::Relaxed)
    {
        eprintln!("caught (the node survives it; reported once per run): {panic}");
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else { return };
    let mut data = rest.to_vec();
    if mode & 1 == 1 {
        fix_checksums(&mut data);
    }
    if intake::inspect(&data, &LIMITS).is_err() {
        return;
    }
    let mut fork = BASE.with(|b| b.borrow_mut().fork());
    load(&mut fork, &data);
    load(&mut AutoCommit::new(), &data);
});
