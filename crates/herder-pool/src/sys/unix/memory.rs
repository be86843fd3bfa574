//! Shared memory (the scoreboard, the `pthread` lock) and anonymous files.

use super::cvt;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
use super::{cstring, getpid};
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
#[cfg(not(any(target_os = "linux", target_os = "android")))]
use std::os::unix::ffi::OsStrExt;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
use std::path::Path;

pub(crate) use crate::mapping::Mapping;

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value owns (invariant).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Creates an anonymous shared memory object of `len` zero bytes and maps it. Nothing
/// is left behind by name: `memfd_create` on Linux; elsewhere `shm_open` with a random
/// name, unlinked at once.
pub(crate) fn shared_memory(name: &CStr, len: usize) -> io::Result<(OwnedFd, Mapping)> {
    let fd = anonymous_shm(name)?;
    // SAFETY: sizes a descriptor we own.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) })?;
    let map = map_shared(fd.as_fd(), len)?;
    Ok((fd, map))
}

/// `name` shows in `/proc/PID/fd` (Linux).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn anonymous_shm(name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: the name is NUL-terminated; the result is a new descriptor.
    let fd = cvt(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn anonymous_shm(_: &CStr) -> io::Result<OwnedFd> {
    let fd = create_unnamed(
        Path::new("/herder-shm"),
        // SAFETY: the name is NUL-terminated; O_EXCL never opens someone else's object.
        |name| unsafe {
            libc::shm_open(
                name.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
                0o600,
            )
        },
        // SAFETY: removes only the name just created.
        |name| unsafe { libc::shm_unlink(name.as_ptr()) },
    )?;
    // SAFETY: sets a descriptor flag on a descriptor we own.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) })?;
    Ok(fd)
}

/// Creates an object under a fresh name `PREFIX-PID-NANOS-N` with `open` (which must
/// use `O_EXCL`), and removes the name at once with `unlink`: only the descriptor
/// remains, so nothing is left behind if the process dies.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn create_unnamed(
    prefix: &Path,
    open: impl Fn(&CString) -> libc::c_int,
    unlink: impl Fn(&CString) -> libc::c_int,
) -> io::Result<OwnedFd> {
    for attempt in 0..16u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut name = prefix.as_os_str().to_owned();
        name.push(format!("-{}-{nanos}-{attempt}", getpid()));
        let name = cstring(name.as_bytes())?;
        let fd = open(&name);
        if fd < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::AlreadyExists {
                continue;
            }
            return Err(e);
        }
        unlink(&name);
        // SAFETY: a new descriptor owned by nobody else.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free name for an anonymous object",
    ))
}

/// Maps `len` bytes of the shared memory object `fd`, after checking it is that
/// large.
pub(crate) fn map_shared(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
    // SAFETY: stat is plain data; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is writable.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    if (st.st_size as u64) < len as u64 || len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "shared memory smaller than expected",
        ));
    }
    // SAFETY: a fresh shared mapping of an object at least `len` bytes long; the
    // kernel picks the address.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let ptr = std::ptr::NonNull::new(ptr.cast::<u8>())
        .ok_or_else(|| io::Error::other("mmap returned null"))?;
    Ok(Mapping { ptr, len })
}

/// An anonymous regular file to lock: a `memfd` on Linux; elsewhere a file in the
/// temporary directory, unlinked at once. Nothing is left behind by name.
pub(crate) fn anonymous_file() -> io::Result<OwnedFd> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // SAFETY: the name is a NUL-terminated literal; the result is a new descriptor.
        let fd =
            cvt(unsafe { libc::memfd_create(c"herder-accept-lock".as_ptr(), libc::MFD_CLOEXEC) })?;
        // SAFETY: a new descriptor owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        create_unnamed(
            &std::env::temp_dir().join("herder-lock"),
            // SAFETY: the name is NUL-terminated; O_EXCL never opens someone else's file.
            |name| unsafe {
                libc::open(
                    name.as_ptr(),
                    libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                    0o600,
                )
            },
            // SAFETY: removes only the name just created; the descriptor keeps the file.
            |name| unsafe { libc::unlink(name.as_ptr()) },
        )
    }
}

/// Opens the file behind `fd` again: a new open file description, so that `flock` and
/// open-file-description locks taken through it are this process's own. Linux only
/// (`/proc/self/fd`).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn reopen(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let path = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    // SAFETY: `path` is NUL-terminated; the result is a new descriptor.
    let new = cvt(unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })?;
    // SAFETY: a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}
