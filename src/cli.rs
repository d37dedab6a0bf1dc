//! The command line. Exit status: 0 on success (including a clean shutdown on
//! SIGINT/SIGTERM), 2 for unusable input (bad arguments, a malformed ticket), 1 for
//! anything else. Errors are one line on stderr; stdout carries only what a command
//! produces (the ticket, for `share`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use iroh::RelayUrl;

use crate::control::{self, Request, Response};
use crate::daemon::DaemonRequest;
use crate::home::{Home, default_name};
use crate::net::endpoint::{self, NetworkMode};
use crate::node::{self, NodeOptions, Start};
use crate::ticket::{Grant, Ticket};

#[derive(Parser)]
#[command(
    name = "teatime",
    version,
    about = "Keep a folder identical on several machines, peer to peer.",
    after_help = "Start here:\n  teatime share ./notes            prints a ticket, keeps ./notes in sync\n  teatime join <ticket> ./notes    on another machine\n  teatime status                   what every folder is doing\n\nSee `teatime <command> --help` for each command."
)]
struct Cli {
    /// Node home: identity key, registry (default: the XDG data dir).
    #[arg(long, env = "TEATIME_HOME", global = true)]
    home: Option<PathBuf>,
    /// Where to look for peers [default: the config file's `network`, else internet].
    #[arg(long, env = "TEATIME_NETWORK", value_enum, global = true)]
    network: Option<NetworkMode>,
    /// A self-hosted iroh relay: replaces the public ones in internet mode, the only relay
    /// in lan and loopback modes [default: the config file's `relay`].
    #[arg(long, env = "TEATIME_RELAY", global = true)]
    relay: Option<RelayUrl>,
    /// PEM certificates to trust for the relay's TLS besides the public roots: a relay
    /// with a private CA or a self-signed certificate [default: the config file's
    /// `relay_ca`].
    #[arg(long, env = "TEATIME_RELAY_CA", global = true)]
    relay_ca: Option<PathBuf>,
    /// This node's name as peers see it (default: the host name).
    #[arg(long, env = "TEATIME_NAME", global = true)]
    name: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Share a folder: print a ticket, then keep the folder in sync.
    ///
    /// The ticket is the folder's standing invitation (no expiry, any number of uses, until
    /// revoked); `teatime ticket` makes limited ones.
    Share {
        /// The folder.
        dir: PathBuf,
        /// Print a ticket that admits readers (receive only) instead of writers.
        #[arg(long)]
        read_only: bool,
    },
    /// Print a new ticket to invite one peer (or a few) to a folder.
    Ticket {
        /// The folder.
        dir: PathBuf,
        /// Admit readers (receive only) instead of writers.
        #[arg(long)]
        read_only: bool,
        /// Stop admitting after this long (e.g. 30m, 1h, 7d).
        #[arg(long, default_value = "24h", value_parser = crate::ticket::parse_duration)]
        expires: std::time::Duration,
        /// How many peers it admits.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
    /// List the tickets this node issued for a folder, and whom each admitted.
    Tickets {
        /// The folder.
        dir: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Cut a member off everywhere (it cannot come back with its old ticket), or revoke
    /// a ticket issued here.
    Revoke {
        /// The folder.
        dir: PathBuf,
        /// A member (id, unique id prefix, or name) or a ticket id (prefix of 6+ digits).
        who: String,
    },
    /// List joins waiting for approval (`config DIR join-approval on`), or admit one.
    Approve {
        /// The folder.
        dir: PathBuf,
        /// The request to admit, as listed.
        request: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Join a shared folder with a ticket, then keep it in sync.
    Join {
        /// The ticket printed by `teatime share`.
        ticket: String,
        /// Where the folder goes (created if missing; files already there are kept).
        dir: PathBuf,
    },
    /// Resume syncing a folder shared or joined before.
    Sync {
        /// The folder.
        dir: PathBuf,
    },
    /// Run every registered folder headless (an always-on peer)
    ///
    /// While a daemon runs, share/join/sync/unshare hand folders to it and return at once;
    /// every other command reaches it through the folder's control socket. One daemon per
    /// home. Stops cleanly on SIGTERM. systemd units: dist/systemd/.
    Daemon {
        /// Append logs to this file instead of stderr.
        #[arg(long)]
        log_file: Option<PathBuf>,
    },
    /// Stop syncing a folder (its files stay untouched)
    ///
    /// The folder leaves the home's registry; its .teatime state stays, so a later `sync`
    /// resumes it.
    Unshare {
        /// The folder.
        dir: PathBuf,
    },
    /// Show or change a setting
    ///
    /// The folder's own (synced to every peer): conflict-strategy (timestamp, priority,
    /// interactive), sync-exec-bit (on, off), text-limit (bytes), lock-lease (seconds).
    /// This peer's: tracking (all, whitelist), mode (send-receive, send-only, receive-only).
    Config {
        /// The folder.
        dir: PathBuf,
        /// The setting.
        key: String,
        /// The new value (omit to show the current one).
        value: Option<String>,
    },
    /// Whitelist mode: sync these paths (files or directories, relative to the folder).
    Track {
        /// The folder.
        dir: PathBuf,
        /// The paths.
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Whitelist mode: stop syncing these paths here (nothing is deleted anywhere).
    Untrack {
        /// The folder.
        dir: PathBuf,
        /// The paths.
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// List the paths this peer tracks in whitelist mode.
    Tracked {
        /// The folder.
        dir: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List a folder's members, or change one.
    #[command(args_conflicts_with_subcommands = true)]
    Peers {
        #[command(subcommand)]
        action: Option<PeersAction>,
        /// The folder (default: the current directory).
        dir: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Lock a file that cannot merge (advisory)
    ///
    /// Other peers hold back their changes to it until it is unlocked, or until this
    /// peer has been gone for the folder's lock-lease.
    Lock {
        /// The folder.
        dir: PathBuf,
        /// The file.
        path: String,
    },
    /// Release an advisory lock.
    Unlock {
        /// The folder.
        dir: PathBuf,
        /// The file.
        path: String,
    },
    /// List the advisory locks in effect.
    Locks {
        /// The folder.
        dir: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Undo the local changes held back (receive-only, locks, a mass deletion)
    ///
    /// Everything changed here and held goes back to the synced state (deleted files are
    /// written back from their documents); the local versions are kept in
    /// DIR/.teatime/versions/.
    Revert {
        /// The folder.
        dir: PathBuf,
    },
    /// Spread the deletions the mass-delete breaker holds
    ///
    /// When a scan deletes many files at once (`mass-delete-percent` of them and at
    /// least `mass-delete-min`), nothing spreads until this (or `revert`, which writes
    /// them back).
    ConfirmDelete {
        /// The folder.
        dir: PathBuf,
    },
    /// Show the history of a file or the folder
    ///
    /// Newest first: when, which peer, lines added and removed, and whether the change
    /// was merged with a concurrent one.
    Log {
        /// The folder.
        dir: PathBuf,
        /// A file in it (default: every file).
        path: Option<String>,
        /// List deleted files (to find one to restore).
        #[arg(long)]
        deleted: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print a file as it was at a change or a time
    ///
    /// A change is a hash prefix from `log`; a time is 2026-11-21T14:00:00Z (UTC), ms
    /// since the epoch, or a span ago: 10m, 2h, 3d.
    Show {
        /// The folder.
        dir: PathBuf,
        /// The file.
        path: String,
        /// A change, a time, or `now` (the current text as recorded).
        #[arg(long)]
        at: String,
    },
    /// Show what changed in a file between two points (changes, times, or `now`).
    Diff {
        /// The folder.
        dir: PathBuf,
        /// The file.
        path: String,
        /// The older point.
        a: String,
        /// The newer point (default: now).
        #[arg(default_value = "now")]
        b: String,
    },
    /// Bring back a past version of a file
    ///
    /// The version at a change or a time (as for `show`) becomes a new change that syncs
    /// to every peer. Works for deleted files: `teatime log DIR --deleted` lists them.
    Restore {
        /// The folder.
        dir: PathBuf,
        /// The file.
        path: String,
        /// A change or a time.
        #[arg(long)]
        at: String,
    },
    /// For each line of a file: the peer and time of the change that last wrote it.
    Blame {
        /// The folder.
        dir: PathBuf,
        /// The file.
        path: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Files where concurrent edits were merged, when, and from which peers.
    Merges {
        /// The folder.
        dir: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show what each folder is doing
    ///
    /// Per peer: connected since when and how (direct or relay), last heard, documents it
    /// still lacks, or why nothing moves (offline, paused); changes held back and why,
    /// transfers, conflicts and errors.
    Status {
        /// One folder (default: every folder registered in the home).
        dir: Option<PathBuf>,
        /// Machine-readable output (schema: docs/status.schema.json).
        #[arg(long)]
        json: bool,
    },
    /// Stop syncing a folder with its peers until `resume`
    ///
    /// Local changes are still recorded, and go out on resume.
    Pause {
        /// The folder.
        dir: PathBuf,
    },
    /// Sync a paused folder again.
    Resume {
        /// The folder.
        dir: PathBuf,
    },
    /// Verify a stopped folder's saved state without changing it
    ///
    /// Opens a copy of the database, runs redb's integrity check, loads every document
    /// with its heads verified and checks the index against the documents. Exit status 0
    /// when sound, 1 when something is damaged (each problem is listed) or the folder is
    /// in use, 2 when DIR is not a teatime folder.
    Check {
        /// The folder.
        dir: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// List races waiting for a decision (interactive strategy).
    Conflicts {
        /// The folder.
        dir: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Settle a conflict; the decision syncs to every peer.
    Resolve {
        /// The folder.
        dir: PathBuf,
        /// The conflict's id, as `teatime conflicts` lists it.
        id: String,
        /// The option to keep, as listed.
        #[arg(long)]
        keep: String,
    },
}

#[derive(Subcommand)]
enum PeersAction {
    /// Set a member's role (owner only): writer, editor (edits existing files only) or
    /// reader (receives only).
    SetRole {
        /// The member: endpoint id, a unique prefix of one, or its name.
        peer: String,
        /// The role.
        role: String,
        /// The folder (default: the current directory).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Set a member's tier (higher wins races under the `priority` strategy).
    SetTier {
        /// The member: endpoint id, a unique prefix of one, or its name.
        peer: String,
        /// The tier.
        tier: i64,
        /// The folder (default: the current directory).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

/// Runs the command line.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Validate input before touching anything: a bad ticket creates nothing on disk.
    let mut log_file = None;
    let (dir, start) = match cli.command {
        Command::Share { dir, read_only } => {
            (dir, Some(Start::Share(if read_only { Grant::Read } else { Grant::Write })))
        }
        Command::Ticket { dir, read_only, expires, uses } => {
            if uses == 0 {
                return usage_error("--uses must be at least 1".into());
            }
            let req = Request::Ticket {
                read_only,
                expires_secs: Some(expires.as_secs()),
                uses: Some(uses),
                standing: false,
            };
            return command(cli.home, cli.name, &dir, req, Output::Ticket);
        }
        Command::Tickets { dir, json } => {
            return command(cli.home, cli.name, &dir, Request::Tickets, Output::pick(json, Output::Tickets));
        }
        Command::Revoke { dir, who } => {
            return command(cli.home, cli.name, &dir, Request::Revoke(who), Output::Plain);
        }
        Command::Approve { dir, request, json } => {
            let out = if request.is_some() { Output::Plain } else { Output::pick(json, Output::Requests) };
            return command(cli.home, cli.name, &dir, Request::Approve(request), out);
        }
        Command::Sync { dir } => (dir, Some(Start::Sync)),
        Command::Daemon { log_file: file } => {
            log_file = file;
            (PathBuf::new(), None)
        }
        Command::Unshare { dir } => return unshare(cli.home, &dir),
        Command::Config { dir, key, value } => {
            if !control::SETTINGS.iter().any(|(k, _, _)| *k == key) {
                eprintln!("error: unknown setting {key:?}; known settings:");
                for (k, whose, values) in control::SETTINGS {
                    eprintln!("  {k:<18} {values}  ({whose})");
                }
                return ExitCode::from(2);
            }
            return command(cli.home, cli.name, &dir, Request::Setting { key, value }, Output::Plain);
        }
        Command::Track { dir, paths } => {
            let paths = match folder_relative(&dir, &paths) {
                Ok(p) => p,
                Err(e) => return usage_error(e),
            };
            return command(cli.home, cli.name, &dir, Request::Track(paths), Output::Plain);
        }
        Command::Untrack { dir, paths } => {
            let paths = match folder_relative(&dir, &paths) {
                Ok(p) => p,
                Err(e) => return usage_error(e),
            };
            return command(cli.home, cli.name, &dir, Request::Untrack(paths), Output::Plain);
        }
        Command::Tracked { dir, json } => {
            return command(cli.home, cli.name, &dir, Request::Tracked, Output::pick(json, Output::Tracked));
        }
        Command::Peers { action: Some(PeersAction::SetTier { peer, tier, dir }), .. } => {
            return command(cli.home, cli.name, &dir, Request::SetTier { peer, tier }, Output::Plain);
        }
        Command::Peers { action: Some(PeersAction::SetRole { peer, role, dir }), .. } => {
            return command(cli.home, cli.name, &dir, Request::SetRole { peer, role }, Output::Plain);
        }
        Command::Lock { dir, path } => {
            let path = match folder_relative(&dir, &[path]) {
                Ok(mut p) => p.remove(0),
                Err(e) => return usage_error(e),
            };
            return command(cli.home, cli.name, &dir, Request::Lock(path), Output::Plain);
        }
        Command::Unlock { dir, path } => {
            let path = match folder_relative(&dir, &[path]) {
                Ok(mut p) => p.remove(0),
                Err(e) => return usage_error(e),
            };
            return command(cli.home, cli.name, &dir, Request::Unlock(path), Output::Plain);
        }
        Command::Locks { dir, json } => {
            return command(cli.home, cli.name, &dir, Request::Locks, Output::pick(json, Output::Locks));
        }
        Command::Log { dir, path, deleted, json } => {
            let req = Request::Log { path, deleted };
            let out = if deleted { Output::Deleted } else { Output::Log };
            return command(cli.home, cli.name, &dir, req, Output::pick(json, out));
        }
        Command::Show { dir, path, at } => {
            return command(cli.home, cli.name, &dir, Request::Show { path, at }, Output::Raw);
        }
        Command::Diff { dir, path, a, b } => {
            return command(cli.home, cli.name, &dir, Request::Diff { path, a, b }, Output::Raw);
        }
        Command::Restore { dir, path, at } => {
            return command(cli.home, cli.name, &dir, Request::Restore { path, at }, Output::Plain);
        }
        Command::Blame { dir, path, json } => {
            return command(
                cli.home,
                cli.name,
                &dir,
                Request::Blame(path),
                Output::pick(json, Output::Blame),
            );
        }
        Command::Merges { dir, json } => {
            return command(cli.home, cli.name, &dir, Request::Merges, Output::pick(json, Output::Merges));
        }
        Command::Status { dir: Some(dir), json } => {
            return command(cli.home, cli.name, &dir, Request::Status, Output::pick(json, Output::Status));
        }
        Command::Status { dir: None, json } => return status_all(cli.home, cli.name, json),
        Command::Pause { dir } => return command(cli.home, cli.name, &dir, Request::Pause, Output::Plain),
        Command::Resume { dir } => return command(cli.home, cli.name, &dir, Request::Resume, Output::Plain),
        Command::Revert { dir } => {
            return command(cli.home, cli.name, &dir, Request::Revert, Output::Plain);
        }
        Command::ConfirmDelete { dir } => {
            return command(cli.home, cli.name, &dir, Request::ConfirmDelete, Output::Plain);
        }
        Command::Peers { action: None, dir, json } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from("."));
            return command(cli.home, cli.name, &dir, Request::Peers, Output::pick(json, Output::Peers));
        }
        Command::Check { dir, json } => return check(&dir, json),
        Command::Conflicts { dir, json } => {
            return command(
                cli.home,
                cli.name,
                &dir,
                Request::Conflicts,
                Output::pick(json, Output::Conflicts),
            );
        }
        Command::Resolve { dir, id, keep } => {
            return command(cli.home, cli.name, &dir, Request::Resolve { id, keep }, Output::Plain);
        }
        Command::Join { ticket, dir } => match Ticket::decode(&ticket) {
            Ok(t) => (dir, Some(Start::Join(t))),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let home = match Home::resolve(cli.home) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Some(req) = start.as_ref().map(|start| daemon_request(&dir, start)) {
        match hand_to_daemon(&home, &req) {
            Ok(Some(code)) => return code,
            Ok(None) => {}
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(Start::Share(grant)) = start
        && let Some(code) = ticket_from_running(&dir, grant)
    {
        return code;
    }
    if let Err(e) = init_logging(log_file.as_deref()) {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    let config = match crate::config::Config::load(&home) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let relay_ca = cli.relay_ca.or(config.relay_ca.clone());
    let relay = match relay_options(cli.relay.or(config.relay.clone()), relay_ca) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let opts = NodeOptions {
        home,
        network: cli.network.or(config.network).unwrap_or(NetworkMode::Internet),
        relay,
        name: cli.name.unwrap_or_else(default_name),
        tuning: config.tuning(),
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match start {
        Some(start) => rt.block_on(node::run(opts, &dir, start)),
        None => rt.block_on(crate::daemon::run(opts)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How long a command waits for a starting process's control socket.
const SOCKET_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How a command's answer is printed.
#[derive(Clone, Copy)]
enum Output {
    Json,
    Plain,
    Peers,
    Conflicts,
    Tracked,
    Locks,
    /// The answer is text, printed as it is.
    Raw,
    Status,
    Log,
    Deleted,
    Blame,
    Merges,
    /// A new ticket: printed alone on stdout, so it can be piped.
    Ticket,
    Tickets,
    /// Joins waiting for approval.
    Requests,
}

impl Output {
    fn pick(json: bool, human: Output) -> Output {
        if json { Output::Json } else { human }
    }
}

/// The relay settings: a CA without a relay is a mistake worth saying.
fn relay_options(url: Option<RelayUrl>, ca: Option<PathBuf>) -> anyhow::Result<Option<endpoint::Relay>> {
    match (url, ca) {
        (None, None) => Ok(None),
        (None, Some(_)) => anyhow::bail!("--relay-ca (relay_ca) needs a --relay (relay)"),
        (Some(url), ca) => {
            let ca = ca.as_deref().map(endpoint::load_ca).transpose()?.unwrap_or_default();
            Ok(Some(endpoint::Relay { url, ca }))
        }
    }
}

/// `teatime check`: prints the report; the exit status says whether the state is sound.
fn check(dir: &Path, json: bool) -> ExitCode {
    let report = match crate::check::check(dir) {
        Ok(report) => report,
        Err(e) if e.downcast_ref::<crate::check::NotAFolder>().is_some() => {
            return usage_error(e.to_string());
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report).expect("a report serialises"));
    } else {
        for note in &report.notes {
            println!("note: {}", defanged(note, false));
        }
        for problem in &report.problems {
            println!("problem: {}", defanged(problem, false));
        }
        let verdict = if report.problems.is_empty() { "sound" } else { "DAMAGED" };
        println!(
            "{verdict}: {} documents load, {} index rows checked, {} problem(s)",
            report.documents,
            report.index_rows,
            report.problems.len()
        );
    }
    if report.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// Runs a folder command: through the running process if there is one, else directly on
/// the folder's saved state.
fn command(
    home: Option<PathBuf>,
    name: Option<String>,
    dir: &Path,
    req: Request,
    output: Output,
) -> ExitCode {
    let result = ask(home, name, dir, &req);
    print_answer(result, output)
}

/// Sends `req` to the folder at `dir`: through its running process, or on its saved
/// state when none runs.
fn ask(home: Option<PathBuf>, name: Option<String>, dir: &Path, req: &Request) -> anyhow::Result<Response> {
    {
        let req = req.clone();
        let root = dir.canonicalize().map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let home = Home::resolve(home)?;
        let name = name.unwrap_or_else(default_name);
        // A process that is starting holds the store before its socket answers: wait
        // for the socket rather than fail.
        let give_up = std::time::Instant::now() + SOCKET_WAIT;
        loop {
            if let Some(answer) = rt.block_on(control::call(&root, &req))? {
                return Ok(answer);
            }
            match node::control_offline(home.clone(), name.clone(), &root, req.clone()) {
                Err(e)
                    if e.downcast_ref::<crate::store::InUse>().is_some()
                        && std::time::Instant::now() < give_up =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }
}

/// Whether a character could rewrite the terminal or reorder what it shows (a control
/// character, a bidirectional override or isolate, a line or paragraph separator).
fn is_unsafe_to_show(c: char, keep_newlines: bool) -> bool {
    (c.is_control() && !(keep_newlines && c == '\n'))
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
}

/// `text` with unsafe characters escaped (`\u{1b}`).
fn defanged(text: &str, keep_newlines: bool) -> String {
    if !text.chars().any(|c| is_unsafe_to_show(c, keep_newlines)) {
        return text.to_string();
    }
    text.chars()
        .map(
            |c| {
                if is_unsafe_to_show(c, keep_newlines) {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            },
        )
        .collect()
}

/// Escapes every string in a command's answer before it is printed for a human: names,
/// paths and messages can come from peers (T8 in RELIABILITY.md).
fn defang(value: &mut serde_json::Value, keep_newlines: bool) {
    match value {
        serde_json::Value::String(s) => *s = defanged(s, keep_newlines),
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| defang(v, keep_newlines)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|v| defang(v, keep_newlines)),
        _ => {}
    }
}

/// Prints a command's answer; the exit code says how it went.
fn print_answer(result: anyhow::Result<Response>, output: Output) -> ExitCode {
    let mut value = match result {
        Ok(Ok(v)) => v,
        Ok(Err(msg)) => {
            eprintln!("error: {}", defanged(&msg, true));
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match output {
        Output::Json | Output::Raw => {}
        Output::Plain => defang(&mut value, true),
        _ => defang(&mut value, false),
    }
    match output {
        Output::Json => println!("{value}"),
        Output::Plain => match value.as_str() {
            Some(s) => println!("{s}"),
            None => println!("{value}"),
        },
        Output::Peers => {
            for p in value.as_array().into_iter().flatten() {
                let me = if p["me"].as_bool() == Some(true) { " (this node)" } else { "" };
                let link = match p["path"].as_str() {
                    Some(path) => {
                        let addrs: Vec<&str> =
                            p["addrs"].as_array().into_iter().flatten().filter_map(|a| a.as_str()).collect();
                        format!("  connected ({path}) {}", addrs.join(" "))
                    }
                    None if p["me"].as_bool() == Some(true) => String::new(),
                    None => "  not connected".to_string(),
                };
                println!(
                    "{}  {}  role={}  tier={}{me}{link}",
                    p["id"].as_str().unwrap_or(""),
                    p["name"].as_str().unwrap_or(""),
                    p["role"].as_str().unwrap_or(""),
                    p["tier"]
                );
            }
        }
        Output::Raw => print!("{}", value.as_str().unwrap_or("")),
        Output::Status => print_status(&value),
        Output::Log => {
            for c in value.as_array().into_iter().flatten() {
                let merged = if c["merged"].as_bool() == Some(true) {
                    "  (merged with a concurrent edit)"
                } else {
                    ""
                };
                println!(
                    "{}  {}  {:<10} {:<24} +{} -{}{merged}",
                    short(c["change"].as_str().unwrap_or("")),
                    c["time"].as_str().unwrap_or(""),
                    c["peer"].as_str().unwrap_or(""),
                    c["path"].as_str().unwrap_or(""),
                    c["added"],
                    c["removed"],
                );
            }
        }
        Output::Deleted => {
            for d in value.as_array().into_iter().flatten() {
                println!(
                    "{}  deleted by {} at {}",
                    d["path"].as_str().unwrap_or(""),
                    d["deleted_by"].as_str().unwrap_or(""),
                    d["time"].as_str().unwrap_or("")
                );
            }
        }
        Output::Blame => {
            for l in value.as_array().into_iter().flatten() {
                println!(
                    "{}  {:<10} {}  {}",
                    short(l["change"].as_str().unwrap_or("")),
                    l["peer"].as_str().unwrap_or(""),
                    l["time"].as_str().unwrap_or(""),
                    l["line"].as_str().unwrap_or("")
                );
            }
        }
        Output::Merges => {
            let list = value.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no merged concurrent edits");
            }
            for m in list {
                let peers: Vec<&str> =
                    m["peers"].as_array().into_iter().flatten().filter_map(|p| p.as_str()).collect();
                println!(
                    "{}  {} concurrent changes from {}  last {}",
                    m["path"].as_str().unwrap_or(""),
                    m["concurrent_changes"],
                    peers.join(", "),
                    m["last_time"].as_str().unwrap_or("")
                );
            }
        }
        Output::Locks => {
            let list = value.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no locks");
            }
            for l in list {
                let who = if l["me"].as_bool() == Some(true) {
                    "this node"
                } else {
                    l["name"].as_str().unwrap_or("")
                };
                println!("{}  locked by {who}", l["path"].as_str().unwrap_or(""));
            }
        }
        Output::Ticket => println!("{}", value["ticket"].as_str().unwrap_or("")),
        Output::Tickets => {
            for t in value.as_array().into_iter().flatten() {
                let expires = t["expires"].as_str().map(|e| format!(", expires {e}")).unwrap_or_default();
                let uses = t["uses_left"].as_u64().map(|u| format!(", {u} uses left")).unwrap_or_default();
                let standing = if t["standing"].as_bool() == Some(true) { " (standing)" } else { "" };
                let admitted: Vec<&str> =
                    t["admitted"].as_array().into_iter().flatten().filter_map(|a| a.as_str()).collect();
                println!(
                    "{}  {}{standing}  {}{expires}{uses}  admitted: {}",
                    t["id"].as_str().unwrap_or(""),
                    t["grant"].as_str().unwrap_or(""),
                    t["state"].as_str().unwrap_or(""),
                    if admitted.is_empty() { "-".to_string() } else { admitted.join(", ") },
                );
            }
        }
        Output::Requests => {
            let list = value.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no join is waiting for approval");
            }
            for r in list {
                println!(
                    "{}  {} ({}) asks to join as {} with ticket {}, since {}",
                    r["request"].as_str().unwrap_or(""),
                    r["name"].as_str().unwrap_or(""),
                    r["peer"].as_str().unwrap_or(""),
                    r["grant"].as_str().unwrap_or(""),
                    r["ticket"].as_str().unwrap_or(""),
                    r["since"].as_str().unwrap_or(""),
                );
            }
        }
        Output::Tracked => {
            println!("tracking: {}", value["tracking"].as_str().unwrap_or(""));
            for p in value["paths"].as_array().into_iter().flatten() {
                println!("{}", p.as_str().unwrap_or(""));
            }
        }
        Output::Conflicts => {
            let list = value.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no pending conflicts");
            }
            for c in list {
                let options: Vec<&str> =
                    c["options"].as_array().into_iter().flatten().filter_map(|o| o.as_str()).collect();
                println!(
                    "{}  {}  {}  keep one of: {}",
                    c["id"].as_str().unwrap_or(""),
                    c["kind"].as_str().unwrap_or(""),
                    c["path"].as_str().unwrap_or(""),
                    options.join(" | ")
                );
            }
        }
    }
    ExitCode::SUCCESS
}

/// `teatime status` with no folder: every folder registered in the home.
fn status_all(home: Option<PathBuf>, name: Option<String>, json: bool) -> ExitCode {
    let folders = match Home::resolve(home.clone()).and_then(Home::open) {
        Ok(h) => h.folders(),
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut all = Vec::new();
    for dir in folders {
        match ask(home.clone(), name.clone(), &dir, &Request::Status) {
            Ok(Ok(v)) => all.push(v),
            Ok(Err(e)) => all.push(serde_json::json!({"folder": dir, "error": e})),
            Err(e) => all.push(serde_json::json!({"folder": dir, "error": format!("{e:#}")})),
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(all));
    } else if all.is_empty() {
        println!("no folders: share or join one first");
    } else {
        for v in &all {
            print_status(v);
        }
    }
    ExitCode::SUCCESS
}

fn print_status(v: &serde_json::Value) {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    println!("{}", s(&v["folder"]));
    if let Some(e) = v["error"].as_str() {
        println!("  error: {e}");
        return;
    }
    let state = if v["paused"] == true {
        "paused"
    } else if v["running"] == true {
        "syncing"
    } else {
        "not running (start it with `teatime sync` or the daemon)"
    };
    println!("  {state}; {} files; mode {}; role {}", v["files"], s(&v["mode"]), s(&v["role"]));
    for p in v["problems"].as_array().into_iter().flatten() {
        println!("  stopped: {}", s(&p["message"]));
    }
    for p in v["peers"].as_array().into_iter().flatten() {
        let link = if p["connected"] == true {
            let path = &p["path"];
            let ignored = match p["ignored_there"].as_u64() {
                Some(n) if n > 0 => format!(", {n} files ignored there"),
                _ => String::new(),
            };
            format!(
                "connected since {} via {} {}, {} documents to send{ignored}",
                s(&p["connected_since"]),
                s(&path["kind"]),
                s(&path["addr"]),
                p["pending_out"]
            )
        } else {
            format!(
                "not connected ({}); last heard {}",
                s(&p["waiting_because"]),
                p["last_heard"].as_str().unwrap_or("never")
            )
        };
        println!("  peer {} ({}): {link}", s(&p["name"]), s(&p["role"]));
        if let Some(reason) = p["last_fault"]["reason"].as_str() {
            let refused = match p["quarantined_until"].as_str() {
                Some(until) => format!("; refused until {until}"),
                None => String::new(),
            };
            println!("    sent data no honest peer sends ({}): {reason}{refused}", s(&p["last_fault"]["at"]));
        }
    }
    for i in v["incoming"].as_array().into_iter().flatten() {
        println!("  receiving {}…: {} of {} bytes", short(&s(&i["blob"])), i["bytes"], i["size"]);
    }
    for h in v["held"].as_array().into_iter().flatten() {
        println!("  held: {} ({})", s(&h["path"]), s(&h["why"]));
    }
    if v["conflicts"].as_u64().unwrap_or(0) > 0 {
        println!("  {} conflicts waiting (`teatime conflicts`)", v["conflicts"]);
    }
    for e in v["errors"].as_array().into_iter().flatten() {
        println!("  error: {}: {}", s(&e["path"]), s(&e["error"]));
    }
}

/// The first 12 characters of a hash, as logs and listings show it.
fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

fn usage_error(msg: String) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

/// Paths given on the command line as folder-relative, `/`-joined paths: an absolute path
/// (or one that exists from here) must lie inside the folder; anything else is taken as
/// relative to the folder. `..` never leaves it.
fn folder_relative(dir: &Path, paths: &[String]) -> Result<Vec<String>, String> {
    let root = dir.canonicalize().map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for p in paths {
        let given = Path::new(p);
        let rel = match given.canonicalize() {
            Ok(abs) if given.is_absolute() || abs.starts_with(&root) => abs
                .strip_prefix(&root)
                .map_err(|_| format!("{p} is outside the folder {}", root.display()))?
                .to_path_buf(),
            _ if given.is_absolute() => return Err(format!("{p} is outside the folder {}", root.display())),
            _ => given.to_path_buf(),
        };
        let mut parts = Vec::new();
        for c in rel.components() {
            match c {
                std::path::Component::Normal(s) => {
                    parts.push(s.to_str().ok_or_else(|| format!("{p}: not valid UTF-8"))?.to_string())
                }
                std::path::Component::CurDir => {}
                _ => return Err(format!("{p}: give a path inside the folder")),
            }
        }
        if parts.is_empty() {
            return Err(format!("{p}: give a path inside the folder, not the folder itself"));
        }
        out.push(parts.join("/"));
    }
    Ok(out)
}

fn init_logging(file: Option<&Path>) -> anyhow::Result<()> {
    use anyhow::Context;
    use tracing_subscriber::EnvFilter;
    // mDNS warns at every announcement it cannot send (every second on a machine with no
    // network): a machine being offline is not news worth a line a second.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,iroh=error,swarm_discovery=error,teatime=info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening the log file {}", path.display()))?;
            builder.with_ansi(false).with_writer(std::sync::Mutex::new(f)).init();
        }
        // Colours only for a person at a terminal: a file, a pipe or journald (the
        // systemd units) would get escape codes in every line.
        None => {
            use std::io::IsTerminal;
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(ansi).with_writer(std::io::stderr).init()
        }
    }
    Ok(())
}

/// The daemon request that does what `start` would do in the foreground.
fn daemon_request(dir: &Path, start: &Start) -> DaemonRequest {
    // The daemon resolves paths itself, from its own working directory: send it an
    // absolute one.
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    match start {
        Start::Share(grant) => DaemonRequest::Share { dir, read_only: *grant == Grant::Read },
        Start::Sync => DaemonRequest::Sync(dir),
        Start::Join(t) => DaemonRequest::Join { ticket: t.encode(), dir },
    }
}

/// Sends `req` to the home's daemon, if one runs, and prints its answer: `None` when no
/// daemon runs.
fn hand_to_daemon(home: &Path, req: &DaemonRequest) -> anyhow::Result<Option<ExitCode>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let Some(answer) = rt.block_on(control::call_socket(&crate::daemon::socket_path(home), req))? else {
        return Ok(None);
    };
    Ok(Some(match answer {
        Ok(v) => {
            if let Some(ticket) = v["ticket"].as_str() {
                println!("{ticket}");
            }
            eprintln!("the daemon now syncs {}", v["folder"].as_str().unwrap_or(""));
            ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
    }))
}

/// `share` on a folder a foreground process already runs: that process's ticket (with its
/// node's addresses), printed; the process keeps syncing. `None` when no process runs it.
fn ticket_from_running(dir: &Path, grant: Grant) -> Option<ExitCode> {
    let root = dir.canonicalize().ok()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    let req =
        Request::Ticket { read_only: grant == Grant::Read, expires_secs: None, uses: None, standing: true };
    let answer = rt.block_on(control::call(&root, &req)).ok()??.ok()?;
    let ticket = answer["ticket"].as_str()?;
    println!("{ticket}");
    eprintln!("{} is already being synced by a running teatime; that is its ticket", root.display());
    Some(ExitCode::SUCCESS)
}

/// `teatime unshare`: through the daemon if one runs, else straight in the registry.
fn unshare(home: Option<PathBuf>, dir: &Path) -> ExitCode {
    let result = (|| -> anyhow::Result<Option<ExitCode>> {
        let home = Home::resolve(home)?;
        let root = dir.canonicalize().map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        if let Some(code) = hand_to_daemon(&home, &DaemonRequest::Unshare(root.clone()))? {
            return Ok(Some(code));
        }
        let home = Home::open(home)?;
        if !home.unregister_folder(&root)? {
            anyhow::bail!("{} is not a shared folder of this home", root.display());
        }
        eprintln!("{} is no longer synced (its files are untouched)", root.display());
        Ok(None)
    })();
    match result {
        Ok(Some(code)) => code,
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::{Cli, defang, defanged, relay_options};

    /// `--relay-ca` reads PEM certificates for the relay, and is refused without a relay
    /// or without a certificate in the file.
    #[test]
    fn a_relay_ca_is_read_and_needs_a_relay() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\nAAECAw==\n-----END CERTIFICATE-----\n").unwrap();
        let url: iroh::RelayUrl = "http://192.0.2.1:3340".parse().unwrap();
        let relay = relay_options(Some(url.clone()), Some(pem.clone())).unwrap().unwrap();
        assert_eq!(relay.ca.len(), 1);
        assert_eq!(relay.ca[0].as_ref(), &[0, 1, 2, 3]);
        assert!(relay_options(Some(url.clone()), None).unwrap().unwrap().ca.is_empty());
        assert!(relay_options(None, None).unwrap().is_none());
        let err = format!("{:#}", relay_options(None, Some(pem)).unwrap_err());
        assert!(err.contains("--relay"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = format!("{:#}", relay_options(Some(url.clone()), Some(empty)).unwrap_err());
        assert!(err.contains("no certificate"), "{err}");
        assert!(relay_options(Some(url), Some(dir.path().join("missing.pem"))).is_err());
    }

    /// Peer-chosen strings cannot drive the terminal or reorder text.
    #[test]
    fn peer_chosen_strings_are_shown_escaped() {
        let mut v = serde_json::json!({"name": "evil\u{1b}[2J\u{202e}txt.exe", "list": ["a\nb"]});
        defang(&mut v, false);
        assert_eq!(v["name"], "evil\\u{1b}[2J\\u{202e}txt.exe");
        assert_eq!(v["list"][0], "a\\u{a}b");
        assert_eq!(defanged("two\nlines", true), "two\nlines");
    }

    /// Every command and every argument explains itself in `--help`.
    #[test]
    fn every_command_and_argument_has_help() {
        let mut cli = Cli::command();
        cli.build();
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                let name = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(format!("{name}: no description"));
                }
                for arg in sub.get_arguments().filter(|a| !a.is_global_set()) {
                    if arg.get_help().is_none() && !matches!(arg.get_id().as_str(), "help" | "version") {
                        missing.push(format!("{name} <{}>: no help", arg.get_id()));
                    }
                }
                walk(sub, &name, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&cli, "teatime", &mut missing);
        assert!(missing.is_empty(), "{missing:#?}");
    }
}
