//! teatime keeps a folder identical on several machines, peer to peer; concurrent edits
//! to a text file merge character by character.
//!
//! Data flow (see ARCHITECTURE.md): disk -> [`watch`] (hints) -> [`scan`] (what changed)
//! -> [`replica`] (documents, index, [`store`]) -> [`net`] (peers); and back: peers ->
//! [`replica`] -> [`apply`] (atomic writes to disk). [`node`] wires one process together;
//! [`cli`] is the command line.

pub mod apply;
pub mod blob;
pub mod check;
pub mod cli;
pub mod config;
pub mod control;
pub mod crash;
pub mod daemon;
pub mod filter;
pub mod fsroot;
#[cfg(test)]
mod fuzz_corpus;
pub mod home;
pub mod intake;
pub mod local;
pub mod locks;
pub mod memory;
pub mod net;
pub mod node;
pub mod parallel;
pub mod policy;
pub mod progress;
pub mod replica;
pub mod scan;
pub mod store;
pub mod ticket;
pub mod watch;
