//! Handing memory freed after a burst of work back to the system.
//!
//! An import or a join builds hundreds of megabytes of Automerge documents, on several
//! threads, and drops them once they are stored ([`crate::replica`] keeps documents in
//! memory only while used). glibc's malloc keeps what was freed mapped in the process
//! (each thread had its own arena), so without this an always-on peer would stay at the
//! size of its busiest moment.

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
