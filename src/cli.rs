//! The command line. Exit status: 0 on success (including a clean shutdown on
//! SIGINT/SIGTERM), 2 for unusable input (bad arguments, a malformed ticket), 1 for
//! anything else. Errors are one line on stderr; stdout carries only what a command
//! produces (the ticket, for `share`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use iroh::RelayUrl;

use crate::control::{self, Request, Response};
use crate::home::{Home, default_name};
use crate::net::endpoint::NetworkMode;
use crate::node::{self, NodeOptions, Start};
use crate::ticket::Ticket;

#[derive(Parser)]
#[command(name = "teatime", version, about = "Keep a folder identical on several machines, peer to peer.")]
struct Cli {
    /// Node home: identity key, registry (default: the XDG data dir).
    #[arg(long, env = "TEATIME_HOME", global = true)]
    home: Option<PathBuf>,
    /// Where to look for peers.
    #[arg(long, env = "TEATIME_NETWORK", value_enum, default_value = "internet", global = true)]
    network: NetworkMode,
    /// A self-hosted iroh relay to use instead of the public ones.
    #[arg(long, env = "TEATIME_RELAY", global = true)]
    relay: Option<RelayUrl>,
    /// This node's name as peers see it (default: the host name).
    #[arg(long, env = "TEATIME_NAME", global = true)]
    name: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Share a folder: print a ticket, then keep the folder in sync.
    Share {
        /// The folder.
        dir: PathBuf,
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
    /// Show or change a folder setting (`conflict-strategy`: timestamp, priority, interactive).
    Config {
        /// The folder.
        dir: PathBuf,
        /// The setting.
        key: String,
        /// The new value (omit to show the current one).
        value: Option<String>,
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
    let (dir, start) = match cli.command {
        Command::Share { dir } => (dir, Start::Share),
        Command::Sync { dir } => (dir, Start::Sync),
        Command::Config { dir, key, value } => {
            if key != "conflict-strategy" {
                eprintln!("error: unknown setting {key:?} (known: conflict-strategy)");
                return ExitCode::from(2);
            }
            let req = match value {
                Some(v) => Request::SetStrategy(v),
                None => Request::GetStrategy,
            };
            return command(cli.home, cli.name, &dir, req, Output::Plain);
        }
        Command::Peers { action: Some(PeersAction::SetTier { peer, tier, dir }), .. } => {
            return command(cli.home, cli.name, &dir, Request::SetTier { peer, tier }, Output::Plain);
        }
        Command::Peers { action: None, dir, json } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from("."));
            return command(cli.home, cli.name, &dir, Request::Peers, Output::pick(json, Output::Peers));
        }
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
            Ok(t) => (dir, Start::Join(t)),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
    };
    init_logging();
    let home = match Home::resolve(cli.home) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let opts = NodeOptions {
        home,
        network: cli.network,
        relay: cli.relay,
        name: cli.name.unwrap_or_else(default_name),
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(node::run(opts, &dir, start)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How a command's answer is printed.
#[derive(Clone, Copy)]
enum Output {
    Json,
    Plain,
    Peers,
    Conflicts,
}

impl Output {
    fn pick(json: bool, human: Output) -> Output {
        if json { Output::Json } else { human }
    }
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
    let result = (|| -> anyhow::Result<Response> {
        let root = dir.canonicalize().map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        if let Some(answer) = rt.block_on(control::call(&root, &req))? {
            return Ok(answer);
        }
        let home = Home::resolve(home)?;
        node::control_offline(home, name.unwrap_or_else(default_name), &root, req)
    })();
    let value = match result {
        Ok(Ok(v)) => v,
        Ok(Err(msg)) => {
            eprintln!("error: {msg}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match output {
        Output::Json => println!("{value}"),
        Output::Plain => match value.as_str() {
            Some(s) => println!("{s}"),
            None => println!("{value}"),
        },
        Output::Peers => {
            for p in value.as_array().into_iter().flatten() {
                let me = if p["me"].as_bool() == Some(true) { " (this node)" } else { "" };
                println!(
                    "{}  {}  role={}  tier={}{me}",
                    p["id"].as_str().unwrap_or(""),
                    p["name"].as_str().unwrap_or(""),
                    p["role"].as_str().unwrap_or(""),
                    p["tier"]
                );
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

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,iroh=error,teatime=info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
