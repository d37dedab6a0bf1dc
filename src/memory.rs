//! Handing memory freed after a burst of work back to the system.
//!
//! An import or a join builds hundreds of megabytes of Automerge documents, on several
//! threads, and drops them once they are stored ([`crate::replica`] keeps documents in
//! memory only while used). glibc's malloc keeps what was freed mapped in the process
//! (each thread had its own arena), so without this an always-on peer would stay at the
//! size of its busiest moment.

/// Sets glibc's malloc up for a long-lived process whose busy moments are rare: at most
/// [`ARENAS`] arenas.
///
/// By default glibc gives each thread that allocates its own arena (up to eight per core),
/// and an arena's pages go back to the system only where no live allocation is left on
/// them: after a 100,000-file share, an idle peer's few tens of megabytes of live data
/// were scattered over a dozen arenas. Called first thing in `main`, before any thread
/// exists.
#[allow(unsafe_code)]
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before other threads
    // run, with a value in the range glibc documents.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Arenas glibc may create (see [`tune_allocator`]). Measured on the Go-tree share (two
/// cores): the same CPU time as with glibc's default. (Mapping blocks of 128 KB and up on
/// their own, also tried, cost the sharer a third more CPU.)
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENAS: libc::c_int = 2;

/// Returns the allocator's free memory to the system: glibc's `malloc_trim`, which also
/// releases whole free pages inside its heaps. Costs milliseconds; for quiet moments.
#[allow(unsafe_code)]
pub fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it takes each arena's lock and only
    // releases memory no allocation holds.
    unsafe {
        libc::malloc_trim(0);
    }
}
