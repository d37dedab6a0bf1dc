//! Commands for a folder from the command line: settings, members, conflicts.
//!
//! While a `share`/`join`/`sync` process runs a folder, it listens on a Unix socket at
//! `DIR/.teatime/control.sock` (mode 0600): one JSON [`Request`] per line in, one JSON
//! [`Response`] per line out. The replica answers it between two batches of events, so a
//! change made here is recorded, written to disk and sent to peers like any other. When no
//! process runs the folder, the CLI opens the folder's state itself and does the same
//! (peers learn of it at the next sync).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::replica::Event;

/// The socket's name inside the state directory.
pub const SOCKET: &str = "control.sock";

/// Longest request line accepted (requests are tiny; this bounds a misbehaving client).
const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// A command for a folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Shows a setting, or changes it when a value is given (see [`SETTINGS`]).
    Setting {
        /// The setting.
        key: String,
        /// The new value.
        value: Option<String>,
    },
    /// Whitelist mode: adds paths (relative to the folder) to what this peer syncs.
    Track(Vec<String>),
    /// Whitelist mode: removes paths from what this peer syncs (nothing is deleted).
    Untrack(Vec<String>),
    /// The tracked paths.
    Tracked,
    /// The members.
    Peers,
    /// Sets a member's tier; the member is an endpoint id, a unique prefix of one, or a name.
    SetTier {
        /// Who.
        peer: String,
        /// The tier.
        tier: i64,
    },
    /// Sets a member's role (owner only).
    SetRole {
        /// Who (as for [`Request::SetTier`]).
        peer: String,
        /// `writer`, `editor` or `reader`.
        role: String,
    },
    /// Puts everything changed locally and held back (receive-only) back to the synced
    /// state.
    Revert,
    /// Records the local deletions the mass-delete breaker holds (and any other the
    /// disk shows), so they spread.
    ConfirmDelete,
    /// Takes an advisory lock on a file (path relative to the folder).
    Lock(String),
    /// Releases an advisory lock.
    Unlock(String),
    /// The advisory locks in effect.
    Locks,
    /// A file's changes (or every file's), newest first; with `deleted`, the deleted files.
    Log {
        /// The file (folder-relative); `None`: the whole folder.
        path: Option<String>,
        /// List deleted files instead.
        deleted: bool,
    },
    /// A file as it was at a change or a time.
    Show {
        /// The file.
        path: String,
        /// A change hash prefix or a time.
        at: String,
    },
    /// A unified diff between two points of a file's history (`now`: its current text).
    Diff {
        /// The file.
        path: String,
        /// The older point.
        a: String,
        /// The newer point.
        b: String,
    },
    /// Brings a past version back as a new change (also for deleted files).
    Restore {
        /// The file.
        path: String,
        /// A change hash prefix or a time.
        at: String,
    },
    /// For each line of a file, who last wrote it, and when.
    Blame(String),
    /// Files where concurrent edits were merged.
    Merges,
    /// What the folder is doing: peers, pending work and why, errors.
    Status,
    /// Stops syncing with peers (local changes are still recorded) until `Resume`.
    Pause,
    /// Syncs with peers again.
    Resume,
    /// Pending conflicts.
    Conflicts,
    /// Issues a ticket to invite a peer.
    Ticket {
        /// Grant read only (the `reader` role) instead of write.
        read_only: bool,
        /// Seconds until the ticket stops admitting.
        expires_secs: Option<u64>,
        /// How many peers it admits.
        uses: Option<u32>,
        /// The folder's standing ticket (what `share` prints) rather than a new one.
        standing: bool,
    },
    /// The tickets this node issued.
    Tickets,
    /// Cuts off a member (id, prefix or name) everywhere, or revokes a ticket (id prefix).
    Revoke(String),
    /// Lists the joins waiting for approval, or admits one.
    Approve(Option<String>),
    /// Settles a conflict by keeping one of its options.
    Resolve {
        /// The conflict's id, as listed.
        id: String,
        /// The option kept.
        keep: String,
    },
}

/// Settings `teatime config` knows: name, whether it is the folder's (synced to every peer)
/// or this peer's own, and what it takes.
pub const SETTINGS: &[(&str, &str, &str)] = &[
    ("conflict-strategy", "folder", "timestamp | priority | interactive"),
    ("sync-exec-bit", "folder", "on | off"),
    ("text-limit", "folder", "bytes: larger files sync as binary"),
    ("lock-lease", "folder", "seconds a lock outlives its holder's last renewal"),
    ("join-approval", "folder", "on | off: joins wait for `teatime approve`"),
    ("tracking", "this peer", "all | whitelist"),
    ("mode", "this peer", "send-receive | send-only | receive-only"),
    (
        "mass-delete-percent",
        "this peer",
        "1-100 | off: hold local deletions reaching this share of the files (default 50)",
    ),
    ("mass-delete-min", "this peer", "files: ...and at least this many (default 10)"),
    (
        "min-disk-free",
        "this peer",
        "bytes | N%: write nothing below this free space (default: config.toml's min_disk_free, else 1%)",
    ),
];

/// The answer: a JSON value, or a one-line error.
pub type Response = Result<serde_json::Value, String>;

/// The socket path of a folder.
pub fn socket_path(root: &Path) -> PathBuf {
    root.join(teatime_crdt::path::STATE_DIR).join(SOCKET)
}

/// Serves the control socket of the folder at `root` until `cancel`.
pub fn serve(root: &Path, inbox: mpsc::Sender<Event>, cancel: CancellationToken) -> Result<()> {
    let path = socket_path(root);
    // A socket left by a killed process: nobody listens on it any more (the store's lock
    // guarantees no other process runs this folder).
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => { warn!("control socket: {e}"); continue; }
                },
            };
            let inbox = inbox.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, inbox).await {
                    warn!("control request failed: {e:#}");
                }
            });
        }
        let _ = std::fs::remove_file(&path);
    });
    Ok(())
}

async fn answer(stream: UnixStream, inbox: mpsc::Sender<Event>) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST_BYTES)).read_line(&mut line).await?;
    let response: Response = match serde_json::from_str::<Request>(&line) {
        Ok(req) => {
            let (tx, rx) = oneshot::channel();
            inbox.send(Event::Control(req, tx)).await.context("folder is shutting down")?;
            rx.await.context("folder is shutting down")?
        }
        Err(e) => Err(format!("malformed request: {e}")),
    };
    let mut out = serde_json::to_string(&response)?;
    out.push('\n');
    write.write_all(out.as_bytes()).await?;
    Ok(())
}

/// Sends a request to the process running the folder at `root`; `Ok(None)` when no
/// process runs it.
pub async fn call(root: &Path, req: &Request) -> Result<Option<Response>> {
    call_socket(&socket_path(root), req).await
}

/// Sends one JSON request line to the socket at `path` and reads one answer line;
/// `Ok(None)` when nobody listens there.
pub async fn call_socket(path: &Path, req: &impl Serialize) -> Result<Option<Response>> {
    let stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("connecting to {}", path.display())),
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    write.write_all(line.as_bytes()).await?;
    let mut answer = String::new();
    BufReader::new(read).read_line(&mut answer).await?;
    Ok(Some(serde_json::from_str(&answer).context("malformed answer")?))
}
