//! Automerge's storage format, the part teatime reads and writes itself: the header every
//! chunk starts with (these magic bytes, a 4-byte checksum, the chunk type, a LEB128
//! length), and the chunk types.

/// The bytes every chunk starts with.
pub const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
/// A whole document (`save()`).
pub const DOCUMENT: u8 = 0;
/// One change.
pub const CHANGE: u8 = 1;
/// One change, DEFLATE'd.
pub const COMPRESSED_CHANGE: u8 = 2;
/// Several changes in one chunk.
pub const BUNDLE: u8 = 3;
