//! Identifiers of documents. They are random 128-bit values chosen by the caller
//! (this crate has no random source) and written as 32 lowercase hex digits.

use std::fmt;
use std::str::FromStr;

/// Lowercase hex of `bytes` (ids, hashes).
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Exactly `2 * N` hex digits, as bytes.
pub fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Bytes of a member's id (its EndpointId, an ed25519 public key).
pub const MEMBER_ID_BYTES: usize = 32;
/// Bytes added to the member id to make an actor unique: the node draws a new nonce each
/// time a process opens a folder's store for writing, so a store restored from a backup
/// never reuses an (actor, sequence number) pair peers already hold.
pub const ACTOR_NONCE_BYTES: usize = 8;

/// The Automerge actor a member writes with: its id followed by a per-store nonce. Every
/// change names its author this way, and peers check the author's signature against it,
/// so nobody can write under another member's actor.
pub fn actor_for_member(
    member: &[u8; MEMBER_ID_BYTES],
    nonce: [u8; ACTOR_NONCE_BYTES],
) -> automerge::ActorId {
    let mut bytes = member.to_vec();
    bytes.extend_from_slice(&nonce);
    automerge::ActorId::from(bytes)
}

/// The member (id bytes) an actor belongs to, if it has the member-actor form.
pub fn member_bytes_of_actor(actor: &automerge::ActorId) -> Option<[u8; MEMBER_ID_BYTES]> {
    let bytes = actor.to_bytes();
    if bytes.len() != MEMBER_ID_BYTES + ACTOR_NONCE_BYTES {
        return None;
    }
    bytes[..MEMBER_ID_BYTES].try_into().ok()
}

/// The member (id as lowercase hex, the key of the folder's member map) an actor
/// belongs to.
pub fn member_of_actor(actor: &automerge::ActorId) -> Option<String> {
    member_bytes_of_actor(actor).map(|b| to_hex(&b))
}

/// The id of a document: the folder document (then it is also the folder's id) or a
/// file's document (then it is also the id of the file's entry in the folder).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct DocId(pub [u8; 16]);

impl DocId {
    /// Length of the hex form.
    pub const HEX_LEN: usize = 32;

    /// The first 8 hex digits, for logs and conflict names.
    pub fn short(&self) -> String {
        self.to_string()[..8].to_string()
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&to_hex(&self.0))
    }
}

impl fmt::Debug for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocId({})", self.short())
    }
}

/// The text was not 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseDocIdError;

impl fmt::Display for ParseDocIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a document id is 32 hex digits")
    }
}

impl std::error::Error for ParseDocIdError {}

impl FromStr for DocId {
    type Err = ParseDocIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        from_hex(s).map(DocId).ok_or(ParseDocIdError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = DocId([0xab; 16]);
        assert_eq!(id.to_string().parse::<DocId>(), Ok(id));
        assert!("zz".parse::<DocId>().is_err());
        assert!("é".repeat(16).parse::<DocId>().is_err());
    }
}
