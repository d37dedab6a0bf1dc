//! The parsers of untrusted input, compiled from teatime's own source files.
//!
//! The modules below are `src/net/wire.rs`, `src/ticket.rs` and `src/intake.rs` of the
//! `teatime` crate, included by path: the same code, built with only the dependencies it
//! uses. Depending on the whole `teatime` crate instead would build iroh's networking
//! stack, redb, notify and the rest with fuzzing instrumentation: a cold build took 13
//! minutes on the CI machine's two cores, too long for a CI step. (`iroh` here is
//! `iroh-base`, renamed in Cargo.toml: the crate `iroh` re-exports `EndpointAddr` from it.)
//! If one of these modules starts using another teatime module, this build breaks, and
//! the fuzz step of CI says so.

#[path = "../../src/net/wire.rs"]
pub mod wire;

#[path = "../../src/ticket.rs"]
pub mod ticket;

#[path = "../../src/intake.rs"]
pub mod intake;
