//! Identifiers of documents. They are random 128-bit values chosen by the caller
//! (this crate has no random source) and written as 32 lowercase hex digits.

use std::fmt;
use std::str::FromStr;

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
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
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
        if s.len() != Self::HEX_LEN || !s.is_ascii() {
            return Err(ParseDocIdError);
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| ParseDocIdError)?;
        }
        Ok(DocId(out))
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
