//! A view of shared memory in this process: what the scoreboard lives in (and, on
//! Unix, the pthread accept lock). The platform's `sys` maps it and unmaps it on
//! drop (`mmap`/`munmap`, `MapViewOfFile`/`UnmapViewOfFile`).

/// A shared memory region mapped into this process.
///
/// Invariant: `ptr` is the start of a live mapping of `len` bytes, page-aligned,
/// until drop.
pub(crate) struct Mapping {
    pub(crate) ptr: std::ptr::NonNull<u8>,
    pub(crate) len: usize,
}

// SAFETY: the mapping is plain shared memory; all access to it goes through atomics
// (see `scoreboard`) or a process-shared mutex, so it may be used from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}
