//! One teatime process syncing one folder in the foreground: wiring and shutdown.
//!
//! ```text
//! notify watcher --Hint--> replica thread <--Frame/PeerUp/PeerDown-- sessions (iroh Router)
//!                          replica thread --dial requests--> dialer --> sessions
//!                          replica thread --frames--> session outboxes
//! ```
//!
//! The replica runs on its own thread (its work blocks: disk, redb, Automerge); the
//! network runs on the main tokio runtime. SIGINT or SIGTERM cancels everything; the
//! replica finishes its current batch, flushes, and the process exits 0.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use automerge::ActorId;
use iroh::protocol::Router;
use teatime_crdt::DocId;
use teatime_crdt::path::STATE_DIR;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::home::Home;
use crate::net::Links;
use crate::net::dial::{DIAL_QUEUE_CAPACITY, run_dialer};
use crate::net::endpoint::{self, NetworkMode};
use crate::net::session::{FolderAccess, Hub, Membership};
use crate::net::wire::ALPN;
use crate::replica::{INBOX_CAPACITY, Identity, Replica};
use crate::store::Store;
use crate::ticket::{Grant, Ticket};

/// How to start a folder.
pub enum Start {
    /// Share it (create its state if needed) and print its standing ticket for the grant.
    Share(Grant),
    /// Join with a ticket.
    Join(Ticket),
    /// Resume a folder shared or joined before.
    Sync,
}

/// Node-wide settings from the command line.
pub struct NodeOptions {
    /// The home directory.
    pub home: PathBuf,
    /// Network mode.
    pub network: NetworkMode,
    /// A self-hosted relay (and the certificates to trust for it).
    pub relay: Option<endpoint::Relay>,
    /// Display name.
    pub name: String,
    /// Pacing for every folder (from the config file).
    pub tuning: crate::config::Tuning,
}

/// How long starting waits for a command that has the folder's store open to finish.
const STORE_WAIT: Duration = Duration::from_secs(5);

/// Bound on waiting for a relay before printing a ticket (when the node uses one: the
/// ticket then names it; iroh's `online()` waits forever when offline).
const ONLINE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on closing connections at shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

const META_FOLDER: &str = "folder_id";
const META_ACTOR: &str = "actor";

/// The folder's identity as stored, with a fresh actor for this process (see
/// [`teatime_crdt::ids::actor_for_member`]). Every open of the store for writing gets a
/// new nonce: a store restored from an older copy (a backup, a VM snapshot) would
/// otherwise write changes whose (actor, seq) peers already hold under other hashes, and
/// Automerge refuses the whole batch (`DuplicateSeqNumber`), wedging sync with every peer.
/// The stored actor is only the record that the folder was set up.
fn read_identity(store: &Store, me: &iroh::EndpointId) -> Result<Option<Identity>> {
    let (Some(folder), Some(_)) = (store.meta(META_FOLDER)?, store.meta(META_ACTOR)?) else {
        return Ok(None);
    };
    Ok(Some(Identity {
        folder: DocId(folder.as_slice().try_into().context("stored folder id")?),
        actor: new_actor(me),
    }))
}

fn new_actor(me: &iroh::EndpointId) -> ActorId {
    teatime_crdt::ids::actor_for_member(me.as_bytes(), rand::random())
}

fn write_identity(store: &Store, id: &Identity) -> Result<()> {
    store.set_meta(&[(META_FOLDER, id.folder.0.as_slice()), (META_ACTOR, id.actor.to_bytes())])
}

/// A running node: one endpoint, its router, and the folders it syncs.
pub struct Node {
    opts: NodeOptions,
    home: Home,
    me: iroh::EndpointId,
    endpoint: iroh::Endpoint,
    router: Router,
    hub: Hub,
    folders: HashMap<PathBuf, RunningFolder>,
    /// Draw progress bars (a foreground process; never the daemon).
    pub show_progress: bool,
}

/// One folder being synced by a [`Node`].
struct RunningFolder {
    id: DocId,
    cancel: CancellationToken,
    replica: std::thread::JoinHandle<Result<()>>,
    dialer: tokio::task::JoinHandle<()>,
    _watcher: notify::RecommendedWatcher,
}

impl Node {
    /// Binds the endpoint (on the port used last time, if free) and starts accepting.
    pub async fn start(opts: NodeOptions) -> Result<Node> {
        let home = Home::open(opts.home.clone())?;
        let key = home.secret_key()?;
        let me = key.public();
        let endpoint = endpoint::bind(opts.network, opts.relay.as_ref(), key, home.last_port()).await?;
        if let Some(port) = endpoint.bound_sockets().first().map(|s| s.port()) {
            home.set_last_port(port);
        }
        let hub = Hub {
            endpoint: endpoint.clone(),
            name: opts.name.clone(),
            folders: Arc::new(RwLock::new(HashMap::new())),
        };
        let router = Router::builder(endpoint.clone()).accept(ALPN, hub.clone()).spawn();
        Ok(Node { opts, home, me, endpoint, router, hub, folders: HashMap::new(), show_progress: false })
    }

    /// The node's home.
    pub fn home(&self) -> &Home {
        &self.home
    }

    /// The folders being synced.
    pub fn folders(&self) -> impl Iterator<Item = &Path> {
        self.folders.keys().map(PathBuf::as_path)
    }

    /// Starts syncing the folder at `dir`. Returns its root and, for `Share`, the ticket.
    pub async fn open_folder(&mut self, dir: &Path, start: Start) -> Result<(PathBuf, Option<String>)> {
        if matches!(start, Start::Join(_)) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let root = dir.canonicalize().with_context(|| format!("{} is not a directory", dir.display()))?;
        if !root.is_dir() {
            bail!("{} is not a directory", root.display());
        }
        if self.folders.contains_key(&root) {
            if let Start::Share(grant) = start {
                // Already running here: the ticket is all the caller wants.
                let req = crate::control::Request::Ticket {
                    read_only: grant == Grant::Read,
                    expires_secs: None,
                    uses: None,
                    standing: true,
                };
                let ticket = match crate::control::call(&root, &req).await? {
                    Some(Ok(v)) => v["ticket"].as_str().unwrap_or_default().to_string(),
                    Some(Err(e)) => bail!("{e}"),
                    None => bail!("{} is not running", root.display()),
                };
                return Ok((root, Some(ticket)));
            }
            bail!("{} is already being synced", root.display());
        }
        self.home.check_not_nested(&root)?;
        let state_dir = root.join(STATE_DIR);
        if matches!(start, Start::Sync) && !state_dir.is_dir() && self.home.folders().contains(&root) {
            // Its disk is not mounted, or the directory was replaced: starting would
            // take the empty directory for the folder.
            bail!(
                "{} is a shared folder but its {STATE_DIR}/ is missing (is its disk mounted?); not syncing it until it is back",
                root.display()
            );
        }
        if matches!(start, Start::Sync) && !state_dir.is_dir() {
            bail!(
                "{} is not a teatime folder yet: run `teatime share` or `teatime join` first",
                root.display()
            );
        }
        std::fs::create_dir_all(&state_dir)?;
        let store = Store::open_patiently(&state_dir.join("state.redb"), STORE_WAIT)?;

        let mut created = false;
        let identity = match (read_identity(&store, &self.me)?, &start) {
            (Some(id), Start::Join(t)) if id.folder != t.folder => {
                bail!(
                    "{} already syncs another folder ({}); join into an empty or new directory",
                    root.display(),
                    id.folder
                )
            }
            (Some(id), _) => id,
            (None, Start::Sync) => {
                bail!("{} has no saved folder state; share or join it first", root.display())
            }
            (None, Start::Share(_)) => {
                created = true;
                let id = Identity { folder: DocId(rand::random()), actor: new_actor(&self.me) };
                write_identity(&store, &id)?;
                id
            }
            (None, Start::Join(t)) => {
                let id = Identity { folder: t.folder, actor: new_actor(&self.me) };
                write_identity(&store, &id)?;
                crate::local::set_join_ticket(&store, t)?;
                store.save_peer(&t.addr.id.to_string(), &postcard::to_stdvec(&t.addr)?)?;
                id
            }
        };
        self.home.register_folder(&root)?;

        let links = Arc::new(Links::default());
        let (inbox_tx, inbox_rx) = mpsc::channel(INBOX_CAPACITY);
        let (dial_tx, dial_rx) = mpsc::channel(DIAL_QUEUE_CAPACITY);
        let membership = Arc::new(RwLock::new(Membership::default()));
        let access = FolderAccess { membership: membership.clone(), inbox: inbox_tx.clone(), links };

        let folder_id = identity.folder;
        let mut replica = Replica::open(
            root.clone(),
            store,
            identity,
            self.endpoint.secret_key().clone(),
            self.opts.name.clone(),
            dial_tx.clone(),
            self.opts.tuning,
        )?;
        if created {
            replica.create_folder()?;
        }
        replica.attach(self.endpoint.clone(), membership);
        let ticket = if let Start::Share(grant) = start {
            if endpoint::uses_relay(self.opts.network, self.opts.relay.as_ref())
                && tokio::time::timeout(ONLINE_TIMEOUT, self.endpoint.online()).await.is_err()
            {
                warn!("no relay reachable yet; the ticket holds direct addresses only");
            }
            Some(replica.issue_ticket(grant, None, None, true).map_err(|e| anyhow::anyhow!(e))?)
        } else {
            None
        };
        self.hub.folders.write().expect("folders lock").insert(folder_id, access);
        if let Start::Join(t) = &start {
            dial_tx.send(t.addr.clone()).await?;
        }
        let watcher = crate::watch::start(&root, inbox_tx.clone())?;
        let cancel = CancellationToken::new();
        if self.show_progress {
            crate::progress::draw(replica.progress(), cancel.clone());
        }
        crate::control::serve(&root, inbox_tx, cancel.clone())?;
        info!(folder = %folder_id.short(), node = %self.me.fmt_short(), "syncing {}", root.display());
        let replica = {
            let cancel = cancel.clone();
            std::thread::Builder::new().name("replica".into()).spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                rt.block_on(replica.run(inbox_rx, cancel));
                anyhow::Ok(())
            })?
        };
        let dialer = tokio::spawn(run_dialer(self.hub.clone(), folder_id, dial_rx, cancel.clone()));
        self.folders.insert(
            root.clone(),
            RunningFolder { id: folder_id, cancel, replica, dialer, _watcher: watcher },
        );
        Ok((root, ticket))
    }

    /// Stops syncing the folder at `root` (its replica finishes its batch and flushes).
    pub async fn close_folder(&mut self, root: &Path) -> Result<()> {
        let f =
            self.folders.remove(root).with_context(|| format!("{} is not being synced", root.display()))?;
        self.hub.folders.write().expect("folders lock").remove(&f.id);
        f.cancel.cancel();
        let _ = tokio::task::spawn_blocking(move || f.replica.join()).await;
        let _ = f.dialer.await;
        info!("stopped syncing {}", root.display());
        Ok(())
    }

    /// Stops every folder, then the endpoint.
    pub async fn shutdown(mut self) {
        let roots: Vec<PathBuf> = self.folders.keys().cloned().collect();
        for root in roots {
            let _ = self.close_folder(&root).await;
        }
        let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, self.router.shutdown()).await;
        let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, self.endpoint.close()).await;
    }
}

/// Runs one folder in the foreground until SIGINT/SIGTERM.
pub async fn run(opts: NodeOptions, dir: &Path, start: Start) -> Result<()> {
    let mut node = Node::start(opts).await?;
    node.show_progress = true;
    let (_, ticket) = match node.open_folder(dir, start).await {
        Ok(opened) => opened,
        Err(e) => {
            node.shutdown().await;
            return Err(e);
        }
    };
    // Printed once the folder answers commands: a script that runs `teatime config` as
    // soon as it has the ticket reaches this process, not a locked store.
    if let Some(ticket) = ticket {
        println!("{ticket}");
        use std::io::Write;
        std::io::stdout().flush()?;
    }
    wait_for_signal().await?;
    info!("shutting down");
    node.shutdown().await;
    Ok(())
}

/// Runs a control request on a folder no process is running: opens its state, applies
/// the request, persists (and writes to disk what it changes). Peers learn of it at the
/// next sync.
pub fn control_offline(
    home: PathBuf,
    name: String,
    dir: &Path,
    req: crate::control::Request,
) -> Result<crate::control::Response> {
    let root = dir.canonicalize().with_context(|| format!("{} is not a directory", dir.display()))?;
    let state_dir = root.join(STATE_DIR);
    if !state_dir.is_dir() {
        bail!("{} is not a teatime folder: run `teatime share` or `teatime join` first", root.display());
    }
    let store = Store::open(&state_dir.join("state.redb"))?;
    let key = Home::open(home.clone())?.secret_key()?;
    let identity = read_identity(&store, &key.public())?.context("the folder has no saved state yet")?;
    let tuning = crate::config::Config::load(&home)?.tuning();
    let (dial_tx, _dial_rx) = mpsc::channel(1);
    let mut replica = Replica::open(root, store, identity, key, name, dial_tx, tuning)?;
    let response = replica.control(req);
    replica.flush_now();
    Ok(response)
}

pub async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
