//! Settings of one peer for one folder, never synced: what this peer tracks (whitelist
//! mode) and which way changes flow (folder mode). Kept in the store's meta table.

use std::collections::BTreeSet;

use anyhow::{Context, Result};

use crate::store::Store;

const TRACKING: &str = "tracking";
const TRACKED: &str = "tracked";
const MODE: &str = "mode";
const LOCKS: &str = "locks";
const PAUSED: &str = "paused";
const TICKETS: &str = "tickets";
const JOIN_TICKET: &str = "join_ticket";

/// Which paths this peer syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracking {
    /// Everything not ignored.
    All,
    /// Only tracked paths (`teatime track`).
    Whitelist,
}

impl Tracking {
    /// The setting's text form.
    pub fn as_str(self) -> &'static str {
        match self {
            Tracking::All => "all",
            Tracking::Whitelist => "whitelist",
        }
    }

    /// Parses the setting's text form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "all" => Some(Tracking::All),
            "whitelist" => Some(Tracking::Whitelist),
            _ => None,
        }
    }
}

/// Which way changes flow between this peer and the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Both ways.
    #[default]
    SendReceive,
    /// Local changes go out; remote ones are not applied here.
    SendOnly,
    /// Remote changes are applied; local ones are kept here, unpublished, until
    /// `teatime revert` puts the folder back.
    ReceiveOnly,
}

impl Mode {
    /// The setting's text form.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::SendReceive => "send-receive",
            Mode::SendOnly => "send-only",
            Mode::ReceiveOnly => "receive-only",
        }
    }

    /// Parses the setting's text form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "send-receive" => Some(Mode::SendReceive),
            "send-only" => Some(Mode::SendOnly),
            "receive-only" => Some(Mode::ReceiveOnly),
            _ => None,
        }
    }
}

fn text(store: &Store, key: &str) -> Result<Option<String>> {
    Ok(store.meta(key)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// The tracking setting.
pub fn tracking(store: &Store) -> Result<Tracking> {
    Ok(text(store, TRACKING)?.as_deref().and_then(Tracking::parse).unwrap_or(Tracking::All))
}

/// The whitelist, if whitelist mode is on.
pub fn tracked(store: &Store) -> Result<Option<BTreeSet<String>>> {
    if tracking(store)? == Tracking::All {
        return Ok(None);
    }
    Ok(Some(tracked_paths(store)?))
}

/// The tracked paths (kept when whitelist mode is off, for when it is turned on again).
pub fn tracked_paths(store: &Store) -> Result<BTreeSet<String>> {
    match store.meta(TRACKED)? {
        Some(bytes) => serde_json::from_slice(&bytes).context("reading the tracked paths"),
        None => Ok(BTreeSet::new()),
    }
}

/// Sets the tracking setting.
pub fn set_tracking(store: &Store, t: Tracking) -> Result<()> {
    store.set_meta(&[(TRACKING, t.as_str().as_bytes())])
}

/// Replaces the tracked paths.
pub fn set_tracked_paths(store: &Store, paths: &BTreeSet<String>) -> Result<()> {
    store.set_meta(&[(TRACKED, &serde_json::to_vec(paths)?)])
}

/// The folder mode.
pub fn mode(store: &Store) -> Result<Mode> {
    Ok(text(store, MODE)?.as_deref().and_then(Mode::parse).unwrap_or_default())
}

/// Sets the folder mode.
pub fn set_mode(store: &Store, m: Mode) -> Result<()> {
    store.set_meta(&[(MODE, m.as_str().as_bytes())])
}

/// The advisory locks this peer holds (entry ids), kept across restarts.
pub fn locks(store: &Store) -> Result<BTreeSet<teatime_crdt::DocId>> {
    match store.meta(LOCKS)? {
        Some(bytes) => serde_json::from_slice(&bytes).context("reading the held locks"),
        None => Ok(BTreeSet::new()),
    }
}

/// Replaces the locks this peer holds.
pub fn set_locks(store: &Store, locks: &BTreeSet<teatime_crdt::DocId>) -> Result<()> {
    store.set_meta(&[(LOCKS, &serde_json::to_vec(locks)?)])
}

/// Whether syncing is paused.
pub fn paused(store: &Store) -> Result<bool> {
    Ok(text(store, PAUSED)?.as_deref() == Some("yes"))
}

/// Pauses or resumes syncing.
pub fn set_paused(store: &Store, paused: bool) -> Result<()> {
    store.set_meta(&[(PAUSED, if paused { b"yes" } else { b"no" })])
}

/// The tickets this node issued for the folder.
pub fn tickets(store: &Store) -> Result<Vec<crate::ticket::IssuedTicket>> {
    match store.meta(TICKETS)? {
        Some(bytes) => postcard::from_bytes(&bytes).context("stored tickets"),
        None => Ok(Vec::new()),
    }
}

/// Replaces the tickets this node issued.
pub fn set_tickets(store: &Store, tickets: &[crate::ticket::IssuedTicket]) -> Result<()> {
    store.set_meta(&[(TICKETS, &postcard::to_stdvec(tickets)?)])
}

/// The ticket this node joined with, kept until it is a member (it is proved to the
/// issuer at each connection until then).
pub fn join_ticket(store: &Store) -> Result<Option<crate::ticket::Ticket>> {
    match store.meta(JOIN_TICKET)? {
        Some(bytes) if !bytes.is_empty() => {
            let text = String::from_utf8(bytes).context("stored join ticket")?;
            Ok(Some(crate::ticket::Ticket::decode(&text).context("stored join ticket")?))
        }
        _ => Ok(None),
    }
}

/// Keeps the ticket this node joins with.
pub fn set_join_ticket(store: &Store, ticket: &crate::ticket::Ticket) -> Result<()> {
    store.set_meta(&[(JOIN_TICKET, ticket.encode().as_bytes())])
}
