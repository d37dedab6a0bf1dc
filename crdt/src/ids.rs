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
