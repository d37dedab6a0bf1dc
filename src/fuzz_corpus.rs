//! Writes the seed corpora of the fuzz targets (`fuzz/corpus/<target>/`) from real data:
//! frames, tickets and Automerge payloads as teatime makes them. Run by hand after a
//! format change: `cargo test --lib fuzz_corpus -- --ignored`.

use std::path::Path;
use std::time::{Duration, Instant};

use automerge::ActorId;
use iroh::{EndpointAddr, RelayUrl, SecretKey};
use teatime_crdt::{DocId, EntryKind, FileDoc, FolderDoc, Stamp};

use crate::net::wire::{Frame, encode_frame};
use crate::ticket::Ticket;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("seed");
}

fn addr(n: u8) -> EndpointAddr {
    EndpointAddr::new(SecretKey::from_bytes(&[n; 32]).public())
        .with_ip_addr("127.0.0.1:4242".parse().expect("addr"))
        .with_ip_addr("[::1]:4243".parse().expect("addr"))
}

#[test]
#[ignore = "writes fuzz/corpus; run by hand"]
fn write_fuzz_corpus() {
    let later = || Instant::now() + Duration::from_secs(5);
    // Documents: a file with a little history, and a folder with an entry.
    let mut file = FileDoc::create(ActorId::from([1; 16]), "one\ntwo\nthree\n", 1).unwrap();
    let heads = file.heads();
    file.ingest("one\n2\nthree\nfour\n", later(), 2).unwrap();
    let whole = file.doc_mut().save();
    let after = file.doc_mut().save_after(&heads);
    let compressed: Vec<u8> = {
        let big = FileDoc::create(ActorId::from([2; 16]), &"some text\n".repeat(100), 3).unwrap();
        let mut big = big;
        big.doc_mut().get_changes(&[]).iter_mut().flat_map(|c| c.bytes().to_vec()).collect()
    };
    let mut folder = FolderDoc::create(ActorId::from([3; 16]), "owner-id", "laptop").unwrap();
    folder
        .create_entry(DocId([4; 16]), None, "notes.md", EntryKind::File, &Stamp::new(5, "owner-id"))
        .unwrap();
    folder.commit_at(5);
    let folder_bytes = folder.doc_mut().save();
    for (name, bytes) in [
        ("file-save", &whole),
        ("file-save-after", &after),
        ("compressed-change", &compressed),
        ("folder-save", &folder_bytes),
    ] {
        // The target's first byte: odd recomputes checksums, even keeps them.
        write("changes_admission", name, &[&[0u8][..], bytes].concat());
        write("changes_admission", &format!("{name}-fix"), &[&[1u8][..], bytes].concat());
    }

    // Frames, one per file, and a stream of several.
    let doc = DocId([9; 16]);
    let frames = [
        (
            "hello",
            Frame::Hello {
                folder: doc,
                name: "laptop".into(),
                addr: addr(1),
                ticket: None,
                credentials: None,
            },
        ),
        (
            "hello-ticket",
            Frame::Hello {
                folder: doc,
                name: "laptop".into(),
                addr: addr(1),
                ticket: Some([4; 16]),
                credentials: None,
            },
        ),
        ("challenge", Frame::Challenge { nonce: [7; 32] }),
        ("proof", Frame::Proof { mac: [8; 32] }),
        ("welcome", Frame::Welcome { name: "desktop".into() }),
        ("refused", Frame::Refused { reason: "wrong proof".into() }),
        ("summary", Frame::Summary { docs: vec![(doc, vec![[1; 32]]), (DocId([2; 16]), vec![])] }),
        (
            "changes",
            Frame::Changes {
                doc,
                data: after.clone(),
                heads: vec![[3; 32]],
                signatures: vec![([3; 32], iroh::Signature::from_bytes(&[9; 64]))],
            },
        ),
        ("peers", Frame::Peers { peers: vec![addr(2), addr(3)] }),
        ("blob-get", Frame::BlobGet { hash: [4; 32], from: 2, count: 16, meta: true }),
        ("blob-meta", Frame::BlobMeta { hash: [4; 32], size: 1 << 20, cvs: vec![[5; 32]; 3] }),
        ("blob-data", Frame::BlobData { hash: [4; 32], group: 1, data: vec![6; 100] }),
        ("blob-none", Frame::BlobNone { hash: [4; 32] }),
        ("excludes", Frame::Excludes { local: "*.log\nbuild/\n".into(), tracked: Some(vec!["a.md".into()]) }),
        ("locks", Frame::Locks { locks: vec![(doc, 30_000), (DocId([2; 16]), 0)] }),
    ];
    let mut stream = Vec::new();
    for (name, frame) in &frames {
        let bytes = encode_frame(frame).unwrap();
        write("frame_decoder", name, &bytes);
        stream.extend_from_slice(&bytes);
    }
    write("frame_decoder", "stream", &stream);

    // Tickets.
    let secret = [5; 32];
    let plain = Ticket {
        folder: doc,
        id: [1; 16],
        secret,
        grant: crate::ticket::Grant::Write,
        expires_ms: Some(1_800_000_000_000),
        name: "laptop".into(),
        addr: addr(1),
    };
    let relay: RelayUrl = "https://relay.example.org".parse().unwrap();
    let relayed = Ticket { addr: addr(2).with_relay_url(relay), name: "desktop".into(), ..plain.clone() };
    let text = plain.encode();
    write("ticket_parser", "plain", text.as_bytes());
    write("ticket_parser", "relay", relayed.encode().as_bytes());
    write("ticket_parser", "padded", format!("  {text}\n").as_bytes());
    write("ticket_parser", "truncated", &text.as_bytes()[..text.len() - 5]);

    // Names.
    for (i, name) in
        ["notes.md", "café", "日本語.txt", ".hidden", "a b", "..x", "x.", ".teatime-tmp.1", "a/b"]
            .iter()
            .enumerate()
    {
        write("path_validator", &format!("name-{i}"), name.as_bytes());
    }
}
