//! A full scan of a folder where nothing changed: 10k files must be recognised by
//! metadata alone (never read). `cargo bench --bench scan`; see README (Develop).

use std::fs;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use teatime::filter::Filter;
use teatime::fsroot::Root;
use teatime::scan::{DEFAULT_TEXT_LIMIT_BYTES, LocalOp, Scope, reconcile};
use teatime::store::{Index, IndexEntry};
use teatime_crdt::DocId;

const FILES: usize = 10_000;
const PER_DIR: usize = 100;

fn ids() -> impl FnMut() -> DocId {
    let mut n = 0u128;
    move || {
        n += 1;
        DocId(n.to_le_bytes())
    }
}

/// The index the replica would hold after recording `ops` (what it learns from a scan).
fn index_of(ops: Vec<LocalOp>) -> Index {
    let mut index = Index::new();
    for op in ops {
        match op {
            LocalOp::CreateDir { id, path, stat } => {
                index.insert(path, IndexEntry::dir(id, stat));
            }
            LocalOp::CreateFile { id, path, stat, hash, .. } => {
                index.insert(path, IndexEntry::file(id, stat, hash, vec![]));
            }
            other => panic!("a scan of new files found {other:?}"),
        }
    }
    index
}

fn unchanged_folder(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    for i in 0..FILES {
        let sub = dir.path().join(format!("d{:03}", i / PER_DIR));
        fs::create_dir_all(&sub).expect("mkdir");
        fs::write(sub.join(format!("f{i:05}.txt")), format!("file {i}\n").repeat(40)).expect("write");
    }
    // Files written within the racy window would be read again on purpose; the bench
    // measures the settled case.
    std::thread::sleep(Duration::from_millis(200));
    let root = Root::open(dir.path()).expect("root");
    let filter = Filter::load(dir.path(), None);
    let first = reconcile(&root, &Index::new(), &Scope::All, &filter, DEFAULT_TEXT_LIMIT_BYTES, &mut ids());
    let index = index_of(first.ops);
    assert_eq!(index.len(), FILES + FILES / PER_DIR);

    let mut group = c.benchmark_group("scan");
    group.sample_size(20);
    group.bench_function("10k_unchanged_files", |b| {
        b.iter(|| {
            let again = reconcile(&root, &index, &Scope::All, &filter, DEFAULT_TEXT_LIMIT_BYTES, &mut ids());
            assert!(again.ops.is_empty(), "unchanged folder reported {} changes", again.ops.len());
        })
    });
    group.finish();
}

criterion_group!(benches, unchanged_folder);
criterion_main!(benches);
