//! End-to-end tests: real `teatime` processes syncing temp folders over loopback.
//!
//! Set `TEATIME_IT_TIMEOUT_SECS` to change how long any wait may take (default 20),
//! `TEATIME_IT_KEEP=1` to keep a failed test's temp folders, and `RUST_LOG` to change
//! what the peers log (default `info`); a failing test prints each peer's folder and log tail.

// The harness stops peers with `kill -TERM` and reads Unix exit statuses.
#![cfg(unix)]

mod auth;
mod binary;
mod capabilities;
mod clock;
mod crashpoints;
mod daemon;
mod editors;
mod garbage;
mod guards;
mod harness;
mod history;
mod hostile;
mod ignore;
mod locks;
mod logs;
mod memory;
mod netns;
mod policy;
mod races;
mod rawpeer;
mod reach;
mod roles;
mod scenarios;
mod status;
mod sync;
mod torture;
