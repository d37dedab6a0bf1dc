//! Advisory locks for files that cannot merge (binary files above all).
//!
//! A lock is not part of the folder's history: it is a lease the holder announces to
//! every peer it is connected to and renews while it runs ([`Frame::Locks`]). A holder
//! that goes away (killed, offline) stops renewing, and its locks expire everywhere after
//! the lease. While another peer holds a lock, local changes to that file are held back
//! (left on disk, not published) until the lock is released or expires.
//!
//! Leases travel as durations, not wall-clock times, so clock skew between peers does
//! not shorten or stretch them. Two peers that take the same lock at once settle it
//! deterministically: the smaller endpoint id keeps it.
//!
//! [`Frame::Locks`]: crate::net::wire::Frame::Locks

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use iroh::EndpointId;
use teatime_crdt::DocId;

/// How long a lock outlives its holder's last renewal, unless the folder sets
/// `lock-lease`.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// The locks of one folder, as this peer knows them.
#[derive(Default)]
pub struct Locks {
    /// Held by this peer.
    mine: BTreeSet<DocId>,
    /// Held by others, with when each lease runs out.
    theirs: HashMap<DocId, (EndpointId, Instant)>,
    renew_at: Option<Instant>,
}

impl Locks {
    /// This peer's locks, as saved.
    pub fn new(mine: BTreeSet<DocId>) -> Self {
        let renew_at = (!mine.is_empty()).then(Instant::now);
        Locks { mine, theirs: HashMap::new(), renew_at }
    }

    /// This peer's locks.
    pub fn mine(&self) -> &BTreeSet<DocId> {
        &self.mine
    }

    /// Who else holds a lock on `id`, if anyone (expired leases do not count).
    pub fn holder(&self, id: DocId) -> Option<EndpointId> {
        self.theirs.get(&id).filter(|(_, until)| *until > Instant::now()).map(|(who, _)| *who)
    }

    /// Locks held by others.
    pub fn theirs(&self) -> impl Iterator<Item = (DocId, EndpointId)> + '_ {
        let now = Instant::now();
        self.theirs.iter().filter(move |(_, (_, until))| *until > now).map(|(id, (who, _))| (*id, *who))
    }

    /// Takes a lock; `Err` names who holds it already.
    pub fn take(&mut self, id: DocId) -> Result<(), EndpointId> {
        if let Some(who) = self.holder(id) {
            return Err(who);
        }
        self.mine.insert(id);
        self.renew_at = Some(Instant::now());
        Ok(())
    }

    /// Releases a lock; whether it was held.
    pub fn release(&mut self, id: DocId) -> bool {
        self.mine.remove(&id)
    }

    /// Locks announced by `from`. Returns whether locks held by others went away (held
    /// changes can go out now) and which of ours we gave up to a concurrent taker.
    pub fn receive(
        &mut self,
        me: EndpointId,
        from: EndpointId,
        locks: &[(DocId, u64)],
    ) -> (bool, Vec<DocId>) {
        let mut released = false;
        let mut lost = Vec::new();
        for &(id, lease_ms) in locks {
            if lease_ms == 0 {
                if self.theirs.get(&id).is_some_and(|(who, _)| *who == from) {
                    self.theirs.remove(&id);
                    released = true;
                }
                continue;
            }
            if self.mine.contains(&id) {
                if me < from {
                    continue; // ours stands; the other side gives up when it hears of it
                }
                self.mine.remove(&id);
                lost.push(id);
            }
            let until = Instant::now() + Duration::from_millis(lease_ms);
            self.theirs.insert(id, (from, until));
        }
        (released, lost)
    }

    /// Drops expired leases; whether any went away.
    pub fn expire(&mut self) -> bool {
        let now = Instant::now();
        let before = self.theirs.len();
        self.theirs.retain(|_, (_, until)| *until > now);
        self.theirs.len() != before
    }

    /// When to wake next: to renew ours, or to expire theirs.
    pub fn next_wake(&self) -> Option<Instant> {
        let expiry = self.theirs.values().map(|(_, until)| *until).min();
        match (self.renew_at.filter(|_| !self.mine.is_empty()), expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether our leases are due for renewal; if so, the next renewal is scheduled.
    pub fn renew_due(&mut self, lease: Duration) -> bool {
        if self.mine.is_empty() || self.renew_at.is_some_and(|at| at > Instant::now()) {
            return false;
        }
        self.renew_at = Some(Instant::now() + lease / 3);
        true
    }
}
