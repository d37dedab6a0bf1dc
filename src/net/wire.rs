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

/// A member's folder document, as it proves its membership to a member that has not
/// heard of its admission: checked like any changes (signatures, authors' roles).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The folder document's `save()`.
    pub data: Vec<u8>,
    /// Its changes' signatures.
    pub signatures: Vec<crate::replica::Signed>,
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
        signatures: Vec<crate::replica::Signed>,
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

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> Result<()> {
    let bytes = postcard::to_stdvec(frame)?;
    if bytes.len() > MAX_FRAME_BYTES {
        bail!("frame of {} bytes exceeds the {MAX_FRAME_BYTES}-byte limit", bytes.len());
    }
    w.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    w.write_all(&bytes).await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` when the stream ended cleanly between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        bail!("peer announced a {len}-byte frame, over the {MAX_FRAME_BYTES}-byte limit");
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await.context("stream ended inside a frame")?;
    Ok(Some(postcard::from_bytes(&buf).context("malformed frame")?))
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
        assert!(read_frame(&mut b).await.is_err());

        drop(a);
        assert_eq!(read_frame(&mut b).await.unwrap(), None);
    }
}
