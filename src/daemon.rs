//! `teatime daemon`: every folder registered in the home, headless, in one process.
//!
//! ```text
//! HOME/daemon.lock   flock'd by the running daemon (a second one refuses to start)
//! HOME/daemon.sock   Unix socket, mode 0600: one JSON DaemonRequest per line, one answer
//! ```
//!
//! While a daemon runs, `share`, `join` and `sync` hand the folder to it (and return)
//! instead of starting a second node; `unshare` asks it to stop a folder. Commands on one
//! folder (`config`, `peers`, ...) reach it through the folder's own control socket, which
//! the daemon serves like a foreground process does.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::control::Response;
use crate::node::{Node, NodeOptions, Start, wait_for_signal};
use crate::ticket::{Grant, Ticket};

/// The daemon's socket, in the home.
pub const SOCKET: &str = "daemon.sock";
const LOCK: &str = "daemon.lock";
const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// First and longest wait before trying again a folder that could not start.
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(1);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// A request to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DaemonRequest {
    /// Start sharing a folder (registering it); answers with the ticket.
    Share {
        /// The folder.
        dir: PathBuf,
        /// Answer with the read-only ticket.
        read_only: bool,
    },
    /// Join a folder with a ticket.
    Join {
        /// The ticket, as printed by `share`.
        ticket: String,
        /// Where the folder goes.
        dir: PathBuf,
    },
    /// Resume syncing a folder shared or joined before.
    Sync(PathBuf),
    /// Stop syncing a folder and forget it (its files and state stay).
    Unshare(PathBuf),
    /// The folders being synced.
    Folders,
}

/// The daemon socket of a home.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join(SOCKET)
}

/// Runs the daemon until SIGINT/SIGTERM.
pub async fn run(opts: NodeOptions) -> Result<()> {
    let home_dir = opts.home.clone();
    fs::create_dir_all(&home_dir).with_context(|| format!("creating home {}", home_dir.display()))?;
    let _lock = lock_home(&home_dir)?;
    let mut node = Node::start(opts).await?;
    // Folders that could not start (a disk not mounted yet) are tried again, with backoff.
    let mut waiting = Vec::new();
    for folder in node.home().folders() {
        if let Err(e) = node.open_folder(&folder, Start::Sync).await {
            warn!("not syncing {} for now (tried again later): {e:#}", folder.display());
            waiting.push(folder);
        }
    }
    let mut retry_in = RETRY_FIRST;
    let (tx, mut rx) = mpsc::channel::<(DaemonRequest, oneshot::Sender<Response>)>(16);
    let socket = socket_path(&home_dir);
    let _ = fs::remove_file(&socket); // left by a killed daemon: the lock says none runs
    let listener = UnixListener::bind(&socket).with_context(|| format!("binding {}", socket.display()))?;
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o600))?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, tx).await {
                    warn!("daemon request failed: {e:#}");
                }
            });
        }
    });
    info!(folders = node.folders().count(), "daemon running");
    let signal = wait_for_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            r = &mut signal => { r?; break; }
            Some((req, reply)) = rx.recv() => {
                let _ = reply.send(handle(&mut node, req).await);
            }
            _ = tokio::time::sleep(retry_in), if !waiting.is_empty() => {
                let registered = node.home().folders();
                let mut still = Vec::new();
                for folder in std::mem::take(&mut waiting) {
                    if !registered.contains(&folder) || node.folders().any(|f| f == folder) {
                        continue; // unshared, or started by a request meanwhile
                    }
                    match node.open_folder(&folder, Start::Sync).await {
                        Ok(_) => info!("{} is back: syncing it", folder.display()),
                        Err(_) => still.push(folder),
                    }
                }
                waiting = still;
                retry_in = (retry_in * 2).min(RETRY_MAX);
            }
        }
    }
    info!("daemon shutting down");
    let _ = fs::remove_file(&socket);
    node.shutdown().await;
    Ok(())
}

async fn handle(node: &mut Node, req: DaemonRequest) -> Response {
    let err = |e: anyhow::Error| format!("{e:#}");
    match req {
        DaemonRequest::Share { dir, read_only } => {
            let grant = if read_only { Grant::Read } else { Grant::Write };
            let (root, ticket) = node.open_folder(&dir, Start::Share(grant)).await.map_err(err)?;
            Ok(json!({"folder": root, "ticket": ticket}))
        }
        DaemonRequest::Join { ticket, dir } => {
            let t = Ticket::decode(&ticket).map_err(|e| e.to_string())?;
            let (root, _) = node.open_folder(&dir, Start::Join(t)).await.map_err(err)?;
            Ok(json!({"folder": root}))
        }
        DaemonRequest::Sync(dir) => {
            let (root, _) = node.open_folder(&dir, Start::Sync).await.map_err(err)?;
            Ok(json!({"folder": root}))
        }
        DaemonRequest::Unshare(dir) => {
            let root = dir.canonicalize().map_err(|e| format!("{}: {e}", dir.display()))?;
            let running = node.folders().any(|f| f == root);
            if running {
                node.close_folder(&root).await.map_err(err)?;
            }
            let known = node.home().unregister_folder(&root).map_err(err)?;
            if !running && !known {
                return Err(format!("{} is not a shared folder", root.display()));
            }
            Ok(json!({"folder": root}))
        }
        DaemonRequest::Folders => Ok(json!(node.folders().collect::<Vec<_>>())),
    }
}

async fn answer(
    stream: UnixStream,
    tx: mpsc::Sender<(DaemonRequest, oneshot::Sender<Response>)>,
) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST_BYTES)).read_line(&mut line).await?;
    if line.is_empty() {
        return Ok(()); // a probe: connected, asked nothing
    }
    let response: Response = match serde_json::from_str::<DaemonRequest>(&line) {
        Ok(req) => {
            let (reply, rx) = oneshot::channel();
            tx.send((req, reply)).await.context("daemon is shutting down")?;
            rx.await.context("daemon is shutting down")?
        }
        Err(e) => Err(format!("malformed request: {e}")),
    };
    let mut out = serde_json::to_string(&response)?;
    out.push('\n');
    write.write_all(out.as_bytes()).await?;
    Ok(())
}

/// Takes the home's daemon lock (held until the file is closed, i.e. the process ends,
/// however it ends).
fn lock_home(home: &Path) -> Result<File> {
    use rustix::fs::{FlockOperation, flock};
    let path = home.join(LOCK);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    if flock(&f, FlockOperation::NonBlockingLockExclusive).is_err() {
        let pid = fs::read_to_string(&path).unwrap_or_default();
        bail!("a teatime daemon already runs on the home {} (pid {})", home.display(), pid.trim());
    }
    f.set_len(0)?;
    write!(f, "{}", std::process::id())?;
    Ok(f)
}
