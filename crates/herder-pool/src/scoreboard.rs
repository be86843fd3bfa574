//! The scoreboard: a table in shared memory with one record per worker process,
//! written by the worker with atomics and read by the supervisor without locks.
//!
//! ```text
//! header (64 bytes): magic "HERDERSB", version, capacity
//! record (64 bytes each): pid, state, slot, generation, heartbeat (ms of
//!                         CLOCK_MONOTONIC, GetTickCount64 on Windows), accepted,
//!                         active, flags, lock waits
//! ```
//!
//! Records belong to processes, not slots: during a rolling restart a slot's old and
//! new worker each have their own. The memory is a `memfd` (or an unlinked POSIX
//! object) inherited as a descriptor on Unix, and a named mapping backed by the
//! paging file on Windows, opened by name.

use crate::sys::{self, Mapping};
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// What keeps a scoreboard in existence and lets a worker find it: a descriptor on
/// Unix, a name (and the handle that keeps it) on Windows.
#[cfg(unix)]
pub(crate) type Shared = std::os::fd::OwnedFd;
#[cfg(windows)]
pub(crate) type Shared = sys::SharedMemory;
/// How a worker refers to its inherited scoreboard.
#[cfg(unix)]
pub(crate) type SharedRef<'a> = std::os::fd::BorrowedFd<'a>;
#[cfg(windows)]
pub(crate) type SharedRef<'a> = &'a str;

const MAGIC: u64 = u64::from_le_bytes(*b"HERDERSB");
const VERSION: u32 = 2;
const HEADER: usize = 64;

/// The name of the scoreboard among a worker's inherited descriptors.
#[cfg(unix)]
pub(crate) const SCOREBOARD_NAME: &str = "herder-scoreboard";

#[repr(C, align(64))]
struct Header {
    magic: AtomicU64,
    version: AtomicU32,
    capacity: AtomicU32,
}

#[repr(C, align(64))]
pub(crate) struct Record {
    pid: AtomicU32,
    /// 0 free, 1 in use.
    used: AtomicU32,
    slot: AtomicU64,
    generation: AtomicU64,
    heartbeat_ms: AtomicU64,
    accepted: AtomicU64,
    active: AtomicU64,
    /// Bit 0: the worker takes new connections from a shared listener.
    flags: AtomicU32,
    /// Times the worker found the accept lock held by another. (Bytes that were
    /// padding before: a supervisor that does not know them reads nothing there.)
    lock_waits: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<Record>() == 64 && std::mem::size_of::<Header>() == 64);

/// A mapped scoreboard. Every access goes through atomics, so a misbehaving worker
/// can write nonsense numbers but never make the supervisor misbehave in memory.
pub(crate) struct Board {
    map: Mapping,
    capacity: usize,
}

impl Board {
    /// Creates a scoreboard for `capacity` worker processes.
    pub(crate) fn create(capacity: usize) -> io::Result<(Shared, Board)> {
        #[cfg(unix)]
        let (fd, map) = sys::shared_memory(c"herder-scoreboard", HEADER + capacity * 64)?;
        #[cfg(windows)]
        let (fd, map) = sys::shared_memory(HEADER + capacity * 64)?;
        let board = Board { map, capacity };
        let h = board.header();
        h.version.store(VERSION, Ordering::Relaxed);
        h.capacity.store(capacity as u32, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        Ok((fd, board))
    }

    /// Maps a scoreboard inherited from the supervisor.
    pub(crate) fn open(fd: SharedRef<'_>) -> io::Result<Board> {
        let head = sys::map_shared(fd, HEADER)?;
        // SAFETY: the mapping is HEADER bytes, page-aligned, of which Header is the
        // first 64; every field is an atomic, valid for any bit pattern.
        let h = unsafe { &*(head.as_ptr() as *const Header) };
        if h.magic.load(Ordering::Acquire) != MAGIC || h.version.load(Ordering::Relaxed) != VERSION
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a herder scoreboard",
            ));
        }
        let capacity = h.capacity.load(Ordering::Relaxed) as usize;
        drop(head);
        let map = sys::map_shared(fd, HEADER + capacity * 64)?;
        Ok(Board { map, capacity })
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping starts with a Header (size 64, page-aligned); its fields
        // are atomics, valid for any bit pattern, shared only through atomic access.
        unsafe { &*(self.map.as_ptr() as *const Header) }
    }

    /// The record at `index`, if it exists.
    pub(crate) fn record(&self, index: usize) -> Option<&Record> {
        if index >= self.capacity || HEADER + (index + 1) * 64 > self.map.len() {
            return None;
        }
        // SAFETY: in bounds (checked above) and 64-byte aligned (page-aligned base plus
        // multiples of 64); a Record is atomics only, valid for any bit pattern.
        Some(unsafe { &*(self.map.as_ptr().add(HEADER + index * 64) as *const Record) })
    }

    /// Takes a free record for process `pid`, with a fresh heartbeat.
    pub(crate) fn assign(&self, pid: u32, slot: usize, generation: u64) -> Option<usize> {
        (0..self.capacity).find(|&i| {
            let Some(r) = self.record(i) else {
                return false;
            };
            if r.used
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                return false;
            }
            r.pid.store(pid, Ordering::Relaxed);
            r.slot.store(slot as u64, Ordering::Relaxed);
            r.generation.store(generation, Ordering::Relaxed);
            r.heartbeat_ms.store(sys::monotonic_ms(), Ordering::Relaxed);
            r.accepted.store(0, Ordering::Relaxed);
            r.active.store(0, Ordering::Relaxed);
            r.flags.store(0, Ordering::Relaxed);
            r.lock_waits.store(0, Ordering::Relaxed);
            true
        })
    }

    /// Fills in the pid of a record assigned before the process existed.
    pub(crate) fn set_pid(&self, index: usize, pid: u32) {
        if let Some(r) = self.record(index) {
            r.pid.store(pid, Ordering::Relaxed);
        }
    }

    /// Frees a record.
    pub(crate) fn release(&self, index: usize) {
        if let Some(r) = self.record(index) {
            r.flags.store(0, Ordering::Relaxed);
            r.lock_waits.store(0, Ordering::Relaxed);
            r.used.store(0, Ordering::Release);
        }
    }

    /// The fewest open connections among the records in use, other than `except`,
    /// whose worker takes connections from a shared listener and has shown a sign of
    /// life (a heartbeat or a load figure) within `fresh_ms`.
    pub(crate) fn least_active_accepting(&self, except: usize, fresh_ms: u64) -> Option<u64> {
        (0..self.capacity)
            .filter(|&i| i != except)
            .filter_map(|i| self.record(i))
            .filter(|r| {
                r.used.load(Ordering::Acquire) == 1 && r.is_accepting() && r.silent_ms() <= fresh_ms
            })
            .map(Record::active)
            .min()
    }
}

const ACCEPTING: u32 = 1;

impl Record {
    pub(crate) fn heartbeat(&self) {
        self.heartbeat_ms
            .store(sys::monotonic_ms(), Ordering::Relaxed);
    }
    /// Release: a supervisor that sees the new count sees the `active` stored
    /// before it (the worker publishes `active`, then `accepted`).
    pub(crate) fn add_accepted(&self, n: u64) {
        self.accepted.fetch_add(n, Ordering::Release);
    }
    pub(crate) fn set_active(&self, n: u64) {
        self.active.store(n, Ordering::Relaxed);
        self.heartbeat();
    }
    /// Acquire: read it before `active` (see `add_accepted`).
    pub(crate) fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Acquire)
    }
    pub(crate) fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }
    pub(crate) fn set_accepting(&self, on: bool) {
        if on {
            self.flags.fetch_or(ACCEPTING, Ordering::Relaxed);
        } else {
            self.flags.fetch_and(!ACCEPTING, Ordering::Relaxed);
        }
    }
    pub(crate) fn add_lock_waits(&self, n: u64) {
        self.lock_waits.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn lock_waits(&self) -> u64 {
        self.lock_waits.load(Ordering::Relaxed)
    }
    pub(crate) fn is_accepting(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & ACCEPTING != 0
    }
    /// Makes the last heartbeat `ms` old.
    #[cfg(test)]
    pub(crate) fn age(&self, ms: u64) {
        self.heartbeat_ms
            .store(sys::monotonic_ms().saturating_sub(ms), Ordering::Relaxed);
    }
    /// Milliseconds since the last heartbeat.
    pub(crate) fn silent_ms(&self) -> u64 {
        sys::monotonic_ms().saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed))
    }
}
