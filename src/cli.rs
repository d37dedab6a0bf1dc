//! The command line. Exit status: 0 on success (including a clean shutdown on
//! SIGINT/SIGTERM), 2 for unusable input (bad arguments, a malformed ticket), 1 for
//! anything else. Errors are one line on stderr; stdout carries only what a command
//! produces (the ticket, for `share`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use iroh::RelayUrl;

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
}

/// Runs the command line.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Validate input before touching anything: a bad ticket creates nothing on disk.
    let (dir, start) = match cli.command {
        Command::Share { dir } => (dir, Start::Share),
        Command::Sync { dir } => (dir, Start::Sync),
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

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,iroh=error,teatime=info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
