//! Proving the join secret without sending it.
//!
//! The acceptor sends a fresh nonce; the dialer answers with a BLAKE3 keyed hash (key =
//! the ticket's secret) over a domain tag, the folder id, the ticket id, *both*
//! EndpointIds and the nonce. Both ids are authenticated by QUIC's TLS, so the proof cannot be replayed to
//! another node, by another node, or for another folder, and an eavesdropper (or a relay)
//! learns nothing about the secret.

use iroh::EndpointId;
use teatime_crdt::DocId;

use crate::ticket::TicketId;

const DOMAIN: &[u8] = b"teatime/join-proof/v2";

/// The proof `dialer` gives `acceptor` for `folder` under `nonce`.
pub fn proof(
    secret: &[u8; 32],
    folder: DocId,
    ticket: &TicketId,
    dialer: &EndpointId,
    acceptor: &EndpointId,
    nonce: &[u8; 32],
) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(secret);
    h.update(DOMAIN);
    h.update(&folder.0);
    h.update(ticket);
    h.update(dialer.as_bytes());
    h.update(acceptor.as_bytes());
    h.update(nonce);
    *h.finalize().as_bytes()
}

/// Checks a proof in constant time.
pub fn verify(
    secret: &[u8; 32],
    folder: DocId,
    ticket: &TicketId,
    dialer: &EndpointId,
    acceptor: &EndpointId,
    nonce: &[u8; 32],
    mac: &[u8; 32],
) -> bool {
    blake3::Hash::from(proof(secret, folder, ticket, dialer, acceptor, nonce)) == blake3::Hash::from(*mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_is_bound_to_everything() {
        let a = iroh::SecretKey::from_bytes(&[1; 32]).public();
        let b = iroh::SecretKey::from_bytes(&[2; 32]).public();
        let (s, f, t, n) = ([7; 32], DocId([3; 16]), [5; 16], [9; 32]);
        let mac = proof(&s, f, &t, &a, &b, &n);
        assert!(verify(&s, f, &t, &a, &b, &n, &mac));
        assert!(!verify(&[8; 32], f, &t, &a, &b, &n, &mac), "other secret");
        assert!(!verify(&s, DocId([4; 16]), &t, &a, &b, &n, &mac), "other folder");
        assert!(!verify(&s, f, &[6; 16], &a, &b, &n, &mac), "other ticket");
        assert!(!verify(&s, f, &t, &b, &a, &n, &mac), "swapped ids");
        assert!(!verify(&s, f, &t, &a, &b, &[0; 32], &mac), "other nonce");
    }
}
