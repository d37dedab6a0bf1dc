//! The sync protocol's frames and their encoding.
//!
//! One bidirectional QUIC stream per connection carries length-prefixed frames:
//! `u32 big-endian length ‖ postcard(Frame)`. The length is checked against
//! [`MAX_FRAME_BYTES`] before anything is allocated, both when writing and reading.
//!
//! The conversation:
//!
//! ```text
//! dialer                              acceptor
//!   Hello{folder, name, addr, ticket}  ->
//!                              <-     Welcome{name}                     (a member: by EndpointId)
//!                              <-     Refused{reason}                   (not a member, no live ticket)
//!                              <-     Challenge{nonce}                  (a ticket named: prove it)
//!   Proof{mac}                 ->                       (see net::auth)
//!                              <-     Welcome{name} | Refused{reason}
//! then, both ways, any time:
//!   Summary{doc -> heads}      one exchange to find every document that differs
//!   Changes{doc, data, heads, signatures}
//!                              Automerge changes (or a whole save() for a doc the peer
//!                              lacks), each signed by its author
//!   Peers{addrs}               other members and where they were last seen (the mesh)
//!   BlobGet{hash, from, count} ask for groups of a binary file's content (crate::blob)
//!   BlobMeta{hash, size, cvs}  its size and the chaining value of every group
//!   BlobData{hash, group, ..}  one group's bytes, checked against its chaining value
//!   BlobNone{hash}             "I cannot serve that" (ask someone else)
//!   Locks{entry -> lease}      the sender's advisory locks, renewed while it runs
//!   Excludes{local, tracked}   what the sender does not sync (for `status`: "ignored there")
//! ```

use anyhow::{Context, Result, bail};
use iroh::EndpointAddr;
use serde::{Deserialize, Serialize};
use teatime_crdt::DocId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The sync protocol's ALPN. The trailing number is the protocol version.
pub const ALPN: &[u8] = b"/teatime/sync/1";

/// Largest frame accepted or sent. A whole-document save of a text file at the text size
/// limit with a long history fits; anything larger is refused before allocation.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// Automerge change hash bytes.
pub type Heads = Vec<[u8; 32]>;

/// A change hash and its author's signature (see `replica::authorship`).
pub type Signed = ([u8; 32], iroh::Signature);

/// A member's folder document, as it proves its membership to a member that has not
/// heard of its admission: checked like any changes (signatures, authors' roles).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The folder document's `save()`.
    pub data: Vec<u8>,
    /// Its changes' signatures.
    pub signatures: Vec<Signed>,
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// First frame of a dialer: which folder, who it is, where it can be reached.
    Hello {
        /// The folder to sync.
        folder: DocId,
        /// The dialer's display name.
        name: String,
        /// The dialer's addresses, so the acceptor can dial back later.
        addr: EndpointAddr,
        /// A ticket the acceptor issued, for a dialer that is not a member yet.
        ticket: Option<crate::ticket::TicketId>,
        /// For a member the acceptor does not know as one yet (admitted by another member
        /// while the acceptor was away): the dialer's folder document, whose signed
        /// changes record its admission.
        credentials: Option<Credentials>,
    },
    /// The acceptor's challenge: prove the join secret against this nonce.
    Challenge {
        /// Fresh random bytes.
        nonce: [u8; 32],
    },
    /// The dialer's answer to the challenge.
    Proof {
        /// Keyed hash, see `net::auth::proof`.
        mac: [u8; 32],
    },
    /// Proof accepted: the session starts.
    Welcome {
        /// The acceptor's display name.
        name: String,
    },
    /// Proof refused (or unknown folder); the connection closes.
    Refused {
        /// Why, for the dialer's log.
        reason: String,
    },
    /// Every document's heads.
    Summary {
        /// Document id and its heads.
        docs: Vec<(DocId, Heads)>,
    },
    /// Changes to one document.
    Changes {
        /// The document.
        doc: DocId,
        /// A whole `save()` for a peer that lacks the document, or the changes it lacks
        /// (uncompressed change chunks, one after the other).
        data: Vec<u8>,
        /// The sender's heads once these changes are applied.
        heads: Heads,
        /// Each change's hash with its author's signature (see `replica::authorship`).
        signatures: Vec<Signed>,
    },
    /// Members' addresses.
    Peers {
        /// Where each was last reachable.
        peers: Vec<EndpointAddr>,
    },
    /// A request for part of a binary file's content.
    BlobGet {
        /// Its BLAKE3.
        hash: [u8; 32],
        /// The first group wanted.
        from: u64,
        /// How many groups (a window: memory in flight stays bounded).
        count: u32,
        /// Whether to send [`Frame::BlobMeta`] first.
        meta: bool,
    },
    /// A binary file's verification data.
    BlobMeta {
        /// Its BLAKE3.
        hash: [u8; 32],
        /// Its size.
        size: u64,
        /// The BLAKE3 chaining value of every group; they combine to `hash`.
        cvs: Vec<[u8; 32]>,
    },
    /// One group of a binary file's content.
    BlobData {
        /// The file's BLAKE3.
        hash: [u8; 32],
        /// Which group.
        group: u64,
        /// Its bytes.
        data: Vec<u8>,
    },
    /// What the sender excludes beyond the synced rules: its local ignore file's text and
    /// its whitelist (`None`: not in whitelist mode).
    Excludes {
        /// `.teatime/ignore`, as text.
        local: String,
        /// Tracked paths, in whitelist mode.
        tracked: Option<Vec<String>>,
    },
    /// Advisory locks the sender holds (or releases), each with its lease.
    Locks {
        /// Entry id and milliseconds the lock holds from receipt; 0 releases it.
        locks: Vec<(DocId, u64)>,
    },
    /// The sender cannot serve this content (it does not have it, or it changed).
    BlobNone {
        /// Its BLAKE3.
        hash: [u8; 32],
    },
}

/// Largest frame accepted before the join proof (`Hello`, `Challenge`, `Proof`,
/// `Welcome`, `Refused`): a few addresses and names. An unauthenticated dialer cannot make
/// the acceptor allocate more than this.
pub const MAX_HANDSHAKE_FRAME_BYTES: usize = 64 * 1024;

/// Buffer first allocated for a frame's body; it grows as the bytes arrive.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Bytes of the length prefix.
pub const LENGTH_BYTES: usize = 4;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the limit; nothing was allocated.
    #[error("peer announced a {len}-byte frame, over the {limit}-byte limit")]
    TooLarge {
        /// What the prefix said.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The bytes are not a frame of this protocol version.
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The transport failed (not the peer's bytes).
    #[error(transparent)]
    Io(std::io::Error),
}

impl FrameError {
    /// Whether the peer sent bytes no honest peer sends (as opposed to a broken connection).
    pub fn is_peer_fault(&self) -> bool {
        matches!(self, FrameError::TooLarge { .. } | FrameError::Malformed(_))
    }
}

fn check_len(len: usize, limit: usize) -> Result<(), FrameError> {
    if len > limit { Err(FrameError::TooLarge { len, limit }) } else { Ok(()) }
}

/// Decodes one frame from the start of `buf` (the same checks as [`read_frame`], for
/// callers holding bytes, and for fuzzing). `Ok(None)`: `buf` holds only part of a frame;
/// otherwise the frame and how many bytes of `buf` it used. The length prefix is checked
/// against `limit` before the body is looked at.
pub fn decode_frame(buf: &[u8], limit: usize) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some((prefix, rest)) = buf.split_first_chunk::<LENGTH_BYTES>() else { return Ok(None) };
    let len = u32::from_be_bytes(*prefix) as usize;
    check_len(len, limit)?;
    let Some(body) = rest.get(..len) else { return Ok(None) };
    Ok(Some((postcard::from_bytes(body)?, LENGTH_BYTES + len)))
}

/// Encodes one frame with its length prefix; refuses (before sending anything) a frame
/// over [`MAX_FRAME_BYTES`], which the peer would refuse.
pub fn encode_frame(frame: &Frame) -> Result<Vec<u8>> {
    let mut bytes = postcard::to_extend(frame, vec![0; LENGTH_BYTES])?;
    let len = bytes.len() - LENGTH_BYTES;
    if len > MAX_FRAME_BYTES {
        bail!("frame of {len} bytes exceeds the {MAX_FRAME_BYTES}-byte limit");
    }
    bytes[..LENGTH_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(bytes)
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> Result<()> {
    let bytes = encode_frame(frame)?;
    w.write_all(&bytes).await.context("writing a frame")?;
    Ok(())
}

/// Reads one frame of at most [`MAX_FRAME_BYTES`]; `Ok(None)` when the stream ended
/// cleanly between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, FrameError> {
    read_frame_limited(r, MAX_FRAME_BYTES).await
}

/// Reads one frame of at most `limit` bytes. The length is checked before the buffer for
/// the body is allocated, and the buffer grows only as the body arrives.
pub async fn read_frame_limited<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> Result<Option<Frame>, FrameError> {
    let mut len = [0u8; LENGTH_BYTES];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(FrameError::Io(e)),
    }
    let len = u32::from_be_bytes(len) as usize;
    check_len(len, limit)?;
    // The buffer grows with the bytes that actually arrive: announcing a large frame and
    // sending nothing costs the peer as much as it costs us.
    let mut buf = Vec::with_capacity(len.min(READ_CHUNK_BYTES));
    (&mut *r).take(len as u64).read_to_end(&mut buf).await.map_err(FrameError::Io)?;
    if buf.len() < len {
        return Err(FrameError::Truncated);
    }
    Ok(Some(postcard::from_bytes(&buf)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversize_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let frame = Frame::Changes {
            doc: DocId([1; 16]),
            data: vec![1, 2, 3],
            heads: vec![[7; 32]],
            signatures: vec![],
        };
        write_frame(&mut a, &frame).await.unwrap();
        assert_eq!(read_frame(&mut b).await.unwrap(), Some(frame));

        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = read_frame(&mut b).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }) && err.is_peer_fault(), "{err}");

        drop(a);
        assert_eq!(read_frame(&mut b).await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_handshake_limit_is_checked_before_reading_the_body() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let big = Frame::Refused { reason: "x".repeat(MAX_HANDSHAKE_FRAME_BYTES) };
        write_frame(&mut a, &big).await.unwrap();
        let err = read_frame_limited(&mut b, MAX_HANDSHAKE_FRAME_BYTES).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_frame_cut_short_and_garbage_are_told_apart_from_a_clean_end() {
        let frame = Frame::Welcome { name: "laptop".into() };
        let bytes = encode_frame(&frame).unwrap();
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&bytes[..bytes.len() - 1]).await.unwrap();
        drop(a);
        let err = read_frame(&mut b).await.unwrap_err();
        assert!(matches!(err, FrameError::Truncated) && !err.is_peer_fault(), "{err}");

        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&[0, 0, 0, 2, 0xff, 0xff]).await.unwrap();
        let err = read_frame(&mut b).await.unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)) && err.is_peer_fault(), "{err}");
    }

    #[test]
    fn decode_frame_agrees_with_the_stream_reader() {
        let frame = Frame::Locks { locks: vec![(DocId([3; 16]), 5000)] };
        let mut bytes = encode_frame(&frame).unwrap();
        let n = bytes.len();
        for cut in 0..n {
            assert!(decode_frame(&bytes[..cut], MAX_FRAME_BYTES).unwrap().is_none(), "cut at {cut}");
        }
        bytes.extend_from_slice(&[9, 9]);
        assert_eq!(decode_frame(&bytes, MAX_FRAME_BYTES).unwrap(), Some((frame, n)));
        let over = ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes();
        assert!(matches!(decode_frame(&over, MAX_FRAME_BYTES), Err(FrameError::TooLarge { .. })));
    }
}
