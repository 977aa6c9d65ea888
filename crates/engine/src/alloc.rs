//! Handing freed heap memory back to the operating system.
//!
//! glibc's allocator keeps what a thread freed in that thread's arena, and gives pages
//! back only from the top of the main heap. After a whole engine is dropped (a cluster
//! replica replaced by a reopen on newer segments, a released collection), hundreds of
//! MiB can stay in the process's RSS, free but never returned. [`release_free_memory`]
//! asks glibc to return them (`malloc_trim`, which walks every arena and releases the
//! free pages inside them as well as at the top). Elsewhere (musl, other systems) it does
//! nothing.

/// Returns the allocator's free pages to the OS. Costs a walk over the heap (a few ms
/// for a GiB): call it after large frees, not per request.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes a padding size and only touches the allocator's own
    // bookkeeping; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
