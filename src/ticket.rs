//! Tickets: everything a peer needs to join a folder, in one copy-pasteable line.
//!
//! A ticket is `tt1` followed by lowercase base32 (no padding) of
//! `postcard(TicketData) ‖ first 4 bytes of BLAKE3(payload)`. The checksum turns a
//! truncated or mistyped ticket into a clear error instead of a confusing failure later.
//! The ticket carries a secret: whoever holds it may join, with the ticket's grant
//! (write or read). The secret itself never crosses the network; a joiner proves it holds
//! it (see `net::auth`). Only the node that issued a ticket knows its secret, so only that
//! node admits with it, and only while the ticket is live ([`Issued`]: not expired, not
//! used up, not revoked). After joining, a member is admitted by its EndpointId alone.

use iroh::EndpointAddr;
use serde::{Deserialize, Serialize};
use teatime_crdt::DocId;

const PREFIX: &str = "tt1";
const CHECKSUM_BYTES: usize = 4;
const BASE32: data_encoding::Encoding = data_encoding::BASE32_NOPAD;

/// Names one ticket among those a node issued (sent in the clear; the secret is not).
pub type TicketId = [u8; 16];

/// What a ticket lets its holder do once admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Grant {
    /// Change the folder (the `writer` role).
    Write,
    /// Receive only (the `reader` role).
    Read,
}

impl Grant {
    /// The role a member admitted with this grant gets.
    pub fn role(self) -> &'static str {
        match self {
            Grant::Write => "writer",
            Grant::Read => "reader",
        }
    }
}

/// The contents of a ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// The folder to join.
    pub folder: DocId,
    /// Which of the issuer's tickets this is.
    pub id: TicketId,
    /// The join capability: proved, never sent.
    pub secret: [u8; 32],
    /// What the holder may do.
    pub grant: Grant,
    /// When the ticket stops admitting (ms since the epoch), for display: the issuer
    /// enforces its own record.
    pub expires_ms: Option<u64>,
    /// The sharer's name, for display.
    pub name: String,
    /// Where the sharer can be reached (its EndpointId plus addresses).
    pub addr: EndpointAddr,
}

/// Why a ticket was refused. Each message names the problem in one line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketError {
    /// Does not start with the ticket prefix.
    #[error("invalid ticket: it should start with '{PREFIX}' (got {0:?})")]
    Prefix(String),
    /// Has characters outside base32.
    #[error("invalid ticket: unexpected characters (was it copied whole?)")]
    Encoding,
    /// Checksum mismatch or too short: truncated or altered.
    #[error("invalid ticket: truncated or altered (checksum mismatch)")]
    Checksum,
    /// Decodes, but the content is not a ticket of this version.
    #[error("invalid ticket: unreadable content ({0})")]
    Content(String),
}

impl Ticket {
    /// The one-line text form.
    pub fn encode(&self) -> String {
        let mut bytes = postcard::to_stdvec(self).expect("a ticket always serializes");
        let sum = blake3::hash(&bytes);
        bytes.extend_from_slice(&sum.as_bytes()[..CHECKSUM_BYTES]);
        format!("{PREFIX}{}", BASE32.encode(&bytes).to_ascii_lowercase())
    }

    /// Parses the text form, trimming surrounding whitespace.
    pub fn decode(text: &str) -> Result<Ticket, TicketError> {
        let text = text.trim();
        let Some(body) = text.strip_prefix(PREFIX) else {
            let shown: String = text.chars().take(12).collect();
            return Err(TicketError::Prefix(shown));
        };
        let bytes = BASE32.decode(body.to_ascii_uppercase().as_bytes()).map_err(|e| match e.kind {
            data_encoding::DecodeKind::Length | data_encoding::DecodeKind::Trailing => TicketError::Checksum,
            _ => TicketError::Encoding,
        })?;
        if bytes.len() <= CHECKSUM_BYTES {
            return Err(TicketError::Checksum);
        }
        let (payload, sum) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
        if &blake3::hash(payload).as_bytes()[..CHECKSUM_BYTES] != sum {
            return Err(TicketError::Checksum);
        }
        postcard::from_bytes(payload).map_err(|e| TicketError::Content(e.to_string()))
    }
}

/// A ticket as its issuer keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedTicket {
    /// Its id.
    pub id: TicketId,
    /// Its secret.
    pub secret: [u8; 32],
    /// What it grants.
    pub grant: Grant,
    /// When it was issued (ms since the epoch).
    pub created_ms: u64,
    /// When it stops admitting, if ever.
    pub expires_ms: Option<u64>,
    /// How many more peers it admits, if limited.
    pub uses_left: Option<u32>,
    /// How many peers it admitted.
    pub used: u32,
    /// Revoked by hand, or because a peer it admitted was revoked.
    pub revoked: bool,
    /// The folder's standing ticket for its grant, the one `share` prints.
    pub standing: bool,
}

/// Why a ticket no longer admits anyone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketRefusal {
    /// Not issued here (or forgotten).
    #[error("unknown ticket")]
    Unknown,
    /// Past its expiry.
    #[error("ticket expired")]
    Expired,
    /// Every use taken.
    #[error("ticket used up")]
    UsedUp,
    /// Revoked.
    #[error("ticket revoked")]
    Revoked,
}

impl IssuedTicket {
    /// A new ticket; `id` and `secret` are fresh random bytes (the caller's: this module
    /// also builds in the fuzz crate, without a random source).
    pub fn new(
        (id, secret): (TicketId, [u8; 32]),
        grant: Grant,
        now_ms: u64,
        expires_ms: Option<u64>,
        uses: Option<u32>,
        standing: bool,
    ) -> Self {
        IssuedTicket {
            id,
            secret,
            grant,
            created_ms: now_ms,
            expires_ms,
            uses_left: uses,
            used: 0,
            revoked: false,
            standing,
        }
    }

    /// Whether it still admits, and if not why.
    pub fn check(&self, now_ms: u64) -> Result<(), TicketRefusal> {
        if self.revoked {
            Err(TicketRefusal::Revoked)
        } else if self.expires_ms.is_some_and(|e| now_ms >= e) {
            Err(TicketRefusal::Expired)
        } else if self.uses_left == Some(0) {
            Err(TicketRefusal::UsedUp)
        } else {
            Ok(())
        }
    }

    /// Counts one admission.
    pub fn consume(&mut self) {
        self.used += 1;
        if let Some(n) = &mut self.uses_left {
            *n = n.saturating_sub(1);
        }
    }

    /// The ticket's id as text (what `tickets` and `revoke` show and take).
    pub fn id_hex(&self) -> String {
        teatime_crdt::ids::to_hex(&self.id)
    }
}

/// Parses a duration such as `90s`, `30m`, `1h`, `7d` (for `--expires`).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("invalid duration {text:?} (e.g. 30m, 1h, 7d)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("invalid duration {text:?}: use s, m, h or d (e.g. 30m, 1h, 7d)")),
    };
    if secs == 0 {
        return Err(format!("invalid duration {text:?}: must be more than zero"));
    }
    Ok(std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Ticket {
        let key = iroh::SecretKey::from_bytes(&[3; 32]);
        Ticket {
            folder: DocId([9; 16]),
            id: [1; 16],
            secret: [5; 32],
            grant: Grant::Read,
            expires_ms: Some(1_800_000_000_000),
            name: "laptop".into(),
            addr: EndpointAddr::new(key.public()).with_ip_addr("127.0.0.1:4242".parse().unwrap()),
        }
    }

    #[test]
    fn round_trip() {
        let t = sample();
        assert_eq!(Ticket::decode(&format!(" {} \n", t.encode())), Ok(t));
    }

    #[test]
    fn issued_tickets_expire_and_run_out() {
        let mut t = IssuedTicket::new(([1; 16], [2; 32]), Grant::Write, 1000, Some(2000), Some(1), false);
        assert_eq!(t.check(1500), Ok(()));
        assert_eq!(t.check(2000), Err(TicketRefusal::Expired));
        t.consume();
        assert_eq!(t.check(1500), Err(TicketRefusal::UsedUp));
        let mut r = IssuedTicket::new(([3; 16], [4; 32]), Grant::Read, 0, None, None, true);
        r.revoked = true;
        assert_eq!(r.check(5), Err(TicketRefusal::Revoked));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Ok(std::time::Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(std::time::Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(std::time::Duration::from_secs(7 * 86_400)));
        for bad in ["", "h", "0m", "5x", "-1h", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn every_truncation_and_garbage_is_refused() {
        let text = sample().encode();
        for cut in 0..text.len() {
            assert!(Ticket::decode(&text[..cut]).is_err(), "accepted a ticket cut at {cut}");
        }
        assert!(matches!(Ticket::decode("garbage"), Err(TicketError::Prefix(_))));
        let mut flipped = text.clone().into_bytes();
        let last = flipped.len() - 3;
        flipped[last] = if flipped[last] == b'a' { b'b' } else { b'a' };
        assert!(Ticket::decode(std::str::from_utf8(&flipped).unwrap()).is_err());
    }
}
