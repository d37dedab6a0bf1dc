//! Tickets: everything a peer needs to join a folder, in one copy-pasteable line.
//!
//! A ticket is `tt1` followed by lowercase base32 (no padding) of
//! `postcard(TicketData) ‖ first 4 bytes of BLAKE3(payload)`. The checksum turns a
//! truncated or mistyped ticket into a clear error instead of a confusing failure later.
//! The ticket carries a secret: whoever holds it may join. The secret itself never
//! crosses the network; a joiner proves it holds it (see `net::auth`).

use iroh::EndpointAddr;
use serde::{Deserialize, Serialize};
use teatime_crdt::DocId;

const PREFIX: &str = "tt1";
const CHECKSUM_BYTES: usize = 4;
const BASE32: data_encoding::Encoding = data_encoding::BASE32_NOPAD;

/// The contents of a ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// The folder to join.
    pub folder: DocId,
    /// The join capability: proved, never sent.
    pub secret: [u8; 32],
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Ticket {
        let key = iroh::SecretKey::from_bytes(&[3; 32]);
        Ticket {
            folder: DocId([9; 16]),
            secret: [5; 32],
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
