//! Text documents: ingesting an edited file (diff + splice), building the Automerge
//! document of a never-edited file (what its first edit costs), merging two forks, and
//! replaying real editing traces. `cargo bench --bench text`; see README (Develop).

use std::hint::black_box;
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ChangeHash, ObjType, ROOT, ReadDoc};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use teatime_crdt::FileDoc;
use teatime_crdt::creation::Creation;
use teatime_crdt::text::diff_splices;

/// Source-like text of about `bytes` bytes: numbered lines, so every line is distinct
/// (a line diff then has one obvious answer, as in real files).
fn source_text(bytes: usize) -> String {
    let mut out = String::with_capacity(bytes + 100);
    let mut n = 0u64;
    while out.len() < bytes {
        out.push_str(&format!("    let value_{n} = compute(input_{n}, {}); // step {n}\n", n * 7919 % 1000));
        n += 1;
    }
    out
}

/// `text` with one line in the middle changed, as an editor saving a one-line edit.
fn one_line_edit(text: &str, round: usize) -> String {
    let mid = text.len() / 2;
    let start = text[..mid].rfind('\n').map_or(0, |i| i + 1);
    let end = start + text[start..].find('\n').unwrap_or(text.len() - start);
    format!("{}    edited_line({round});{}", &text[..start], &text[end..])
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

fn actor(n: u8) -> ActorId {
    ActorId::from([n; 16])
}

fn ingest(c: &mut Criterion) {
    let mut group = c.benchmark_group("ingest_one_line_edit");
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    for (label, bytes) in [("1KB", 1_000), ("100KB", 100_000), ("10MB", 10_000_000)] {
        let base = source_text(bytes);
        let edits = [one_line_edit(&base, 1), one_line_edit(&base, 2)];
        group.throughput(Throughput::Bytes(base.len() as u64));
        group.bench_function(format!("diff_only/{label}"), |b| {
            b.iter(|| black_box(diff_splices(&base, &edits[0], far())))
        });
        let mut doc = FileDoc::create(actor(1), &base, 0).expect("create");
        let mut round = 0usize;
        // Each iteration is a real edit (alternating between two versions), so the
        // document's history grows as it does for a user saving again and again.
        group.bench_function(format!("diff_and_splice/{label}"), |b| {
            b.iter(|| {
                round += 1;
                assert!(doc.ingest(&edits[round % 2], far(), 0).expect("ingest"));
            })
        });
        // A filter that skips the bench leaves the document at `base`.
        let expected = if round == 0 { &base } else { &edits[round % 2] };
        assert_eq!(doc.text().as_ref(), Some(expected));
    }
    group.finish();
}

/// A never-edited file's document is its first change alone ([`Creation`]); its first edit
/// needs it as an Automerge document, built by splicing the text in (what `to_doc` does),
/// against loading the same document from Automerge's own saved bytes.
fn first_edit_document(c: &mut Criterion) {
    let mut group = c.benchmark_group("first_edit_document");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    let text = source_text(1_000_000);
    group.throughput(Throughput::Bytes(text.len() as u64));
    let creation = Creation::new(actor(1), text, 0);
    group.bench_function("to_doc/1MB", |b| b.iter(|| black_box(creation.to_doc(actor(2)).expect("to_doc"))));
    let saved = creation.to_doc(actor(2)).expect("to_doc").save();
    group.bench_function("load_saved/1MB", |b| b.iter(|| black_box(AutoCommit::load(&saved).expect("load"))));
    group.finish();
}

fn merge(c: &mut Criterion) {
    let mut group = c.benchmark_group("merge_two_forks");
    group.sample_size(10);
    let base = source_text(100_000);
    let mut original = FileDoc::create(actor(1), &base, 0).expect("create");
    // Two replicas each make 100 one-line insertions, concurrently, into the same 100 KB file.
    let mut fork = |n: u8| {
        let mut doc = original.doc_mut().fork().with_actor(actor(n));
        let obj = text_obj(&doc);
        for i in 0..100usize {
            let at = (i * 997 + n as usize * 31) % doc.length(&obj);
            doc.splice_text(&obj, at, 0, &format!("[edit {n}/{i}]\n")).expect("splice");
            doc.commit();
        }
        doc
    };
    let (left, right) = (fork(2), fork(3));
    group.bench_function("100KB_100_edits_each_side", |b| {
        b.iter_batched(
            || (left.clone(), right.clone()),
            |(mut left, mut right)| {
                left.merge(&mut right).expect("merge");
                left
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn text_obj(doc: &AutoCommit) -> automerge::ObjId {
    match doc.get(ROOT, "text").expect("get") {
        Some((_, id)) => id,
        None => panic!("document has no text"),
    }
}

/// The traces live outside the repository (1 MB, CC BY 4.0, see their ATTRIBUTION.md):
/// `../shared/data/traces` from the project root, or `TEATIME_TRACES`.
fn traces_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("TEATIME_TRACES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/traces"));
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "editing traces not found at {} (set TEATIME_TRACES): trace replay benchmarks SKIPPED",
            dir.display()
        );
        None
    }
}

fn load_trace(dir: &std::path::Path, name: &str) -> serde_json::Value {
    let file = std::fs::File::open(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut json = String::new();
    flate2::read::GzDecoder::new(file).read_to_string(&mut json).expect("gunzip");
    serde_json::from_str(&json).expect("trace json")
}

/// (position, deleted, inserted) in Unicode scalar values.
fn patches(txn: &serde_json::Value) -> impl Iterator<Item = (usize, isize, &str)> {
    txn["patches"].as_array().expect("patches").iter().map(|p| {
        (
            p[0].as_u64().expect("pos") as usize,
            p[1].as_i64().expect("del") as isize,
            p[2].as_str().expect("ins"),
        )
    })
}

/// A sequential trace: every transaction one Automerge change, as if each keystroke
/// were saved and ingested.
fn replay_sequential(trace: &serde_json::Value) -> AutoCommit {
    let mut doc = AutoCommit::new().with_actor(actor(1));
    let obj = doc.put_object(ROOT, "text", ObjType::Text).expect("text");
    doc.splice_text(&obj, 0, 0, trace["startContent"].as_str().expect("start")).expect("splice");
    doc.commit();
    for txn in trace["txns"].as_array().expect("txns") {
        for (pos, del, ins) in patches(txn) {
            doc.splice_text(&obj, pos, del, ins).expect("splice");
        }
        doc.commit();
    }
    doc
}

/// A concurrent trace: each transaction is made by its agent on the version its
/// `parents` lead to (isolated there), then merged.
fn replay_concurrent(trace: &serde_json::Value) -> AutoCommit {
    let mut doc = AutoCommit::new().with_actor(actor(200));
    let obj = doc.put_object(ROOT, "text", ObjType::Text).expect("text");
    let root = doc.commit().expect("root change");
    let txns = trace["txns"].as_array().expect("txns");
    let mut versions: Vec<Vec<ChangeHash>> = Vec::with_capacity(txns.len());
    for txn in txns {
        let mut at: Vec<ChangeHash> = vec![root];
        for p in txn["parents"].as_array().expect("parents") {
            at.extend(versions[p.as_u64().expect("parent") as usize].iter().copied());
        }
        at.sort();
        at.dedup();
        doc.isolate(&at);
        doc.set_actor(actor(txn["agent"].as_u64().expect("agent") as u8 + 1));
        for (pos, del, ins) in patches(txn) {
            doc.splice_text(&obj, pos, del, ins).expect("splice");
        }
        versions.push(doc.commit().map_or(at, |hash| vec![hash]));
        doc.integrate();
    }
    doc
}

fn traces(c: &mut Criterion) {
    let Some(dir) = traces_dir() else { return };
    let mut group = c.benchmark_group("trace_replay");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    for (name, concurrent) in [
        ("seph-blog1.json.gz", false),
        ("friendsforever_flat.json.gz", false),
        ("friendsforever.json.gz", true),
    ] {
        let trace = load_trace(&dir, name);
        let replay =
            |t: &serde_json::Value| if concurrent { replay_concurrent(t) } else { replay_sequential(t) };
        let end = trace["endContent"].as_str().expect("endContent");
        let mut doc = replay(&trace);
        assert!(doc.text(text_obj(&doc)).expect("text") == end, "{name}: replay does not give endContent");
        let saved = doc.save().len();
        eprintln!(
            "{name}: {} changes, save() {saved} bytes = {:.2}x the final text ({} bytes)",
            doc.get_changes(&[]).len(),
            saved as f64 / end.len() as f64,
            end.len()
        );
        group.bench_function(name.trim_end_matches(".json.gz"), |b| b.iter(|| black_box(replay(&trace))));
    }
    group.finish();
}

criterion_group!(benches, ingest, first_edit_document, merge, traces);
criterion_main!(benches);
