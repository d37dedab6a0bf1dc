//! Text pasted by a user -> ticket.
//!
//! Invariants: nothing panics; a ticket that decodes re-encodes to one that decodes to the
//! same ticket.
#![no_main]

use libfuzzer_sys::fuzz_target;
use teatime_fuzz::ticket::Ticket;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(ticket) = Ticket::decode(&text) {
        let again = Ticket::decode(&ticket.encode()).expect("a re-encoded ticket decodes");
        assert_eq!(again, ticket);
    }
});
