//! The accept locks' primitives: `flock`, `fcntl` record locks, robust mutexes.

use super::cvt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `flock(LOCK_EX | LOCK_NB)`: `Ok(false)` when another holds it.
pub(crate) fn flock_try(fd: BorrowedFd<'_>) -> io::Result<bool> {
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// `flock(LOCK_UN)`.
pub(crate) fn flock_unlock(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: flock on a descriptor we own.
    cvt(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_UN) }).map(drop)
}

/// A record lock on the first byte: open-file-description locks (`F_OFD_SETLK`) on
/// Linux, per-process POSIX locks (`F_SETLK`) elsewhere. `Ok(false)` when another
/// holds it.
pub(crate) fn fcntl_lock(fd: BorrowedFd<'_>, lock: bool) -> io::Result<bool> {
    // SAFETY: flock is plain data; all-zero is valid.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = if lock { libc::F_WRLCK } else { libc::F_UNLCK } as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = 0;
    fl.l_len = 1;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let cmd = libc::F_OFD_SETLK;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let cmd = libc::F_SETLK;
    loop {
        // SAFETY: `fl` is a valid flock for the duration of the call.
        if unsafe { libc::fcntl(fd.as_raw_fd(), cmd, &mut fl) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) | Some(libc::EACCES) => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// A process-shared, robust `pthread` mutex at the start of a shared mapping.
#[cfg(target_os = "linux")]
pub(crate) mod robust {
    use super::super::Mapping;
    use std::io;

    /// Bytes of shared memory the mutex needs.
    pub(crate) const LEN: usize = 4096;

    fn mutex(map: &Mapping) -> *mut libc::pthread_mutex_t {
        debug_assert!(map.len() >= std::mem::size_of::<libc::pthread_mutex_t>());
        map.as_ptr().cast()
    }

    fn check(r: libc::c_int) -> io::Result<()> {
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(r))
        }
    }

    /// Initialises the mutex, process-shared and robust, in zeroed shared memory that
    /// no other process uses yet.
    pub(crate) fn init(map: &Mapping) -> io::Result<()> {
        // SAFETY: the attribute object is initialised before use and destroyed after;
        // the mutex memory is at least a pthread_mutex_t, aligned (page start), and not
        // shared with anyone yet.
        unsafe {
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            check(libc::pthread_mutexattr_init(&mut attr))?;
            let r = (|| {
                check(libc::pthread_mutexattr_setpshared(
                    &mut attr,
                    libc::PTHREAD_PROCESS_SHARED,
                ))?;
                check(libc::pthread_mutexattr_setrobust(
                    &mut attr,
                    libc::PTHREAD_MUTEX_ROBUST,
                ))?;
                check(libc::pthread_mutex_init(mutex(map), &attr))
            })();
            libc::pthread_mutexattr_destroy(&mut attr);
            r
        }
    }

    /// `pthread_mutex_trylock`; a holder that died (`EOWNERDEAD`) hands the mutex
    /// over: it is made consistent and taken.
    pub(crate) fn try_lock(map: &Mapping) -> io::Result<bool> {
        // SAFETY: the mapping holds a mutex initialised by `init` in the supervisor.
        let r = unsafe { libc::pthread_mutex_trylock(mutex(map)) };
        match r {
            0 => Ok(true),
            libc::EBUSY => Ok(false),
            libc::EOWNERDEAD => {
                // SAFETY: we hold the mutex now; marking it consistent is allowed.
                check(unsafe { libc::pthread_mutex_consistent(mutex(map)) })?;
                Ok(true)
            }
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }

    /// `pthread_mutex_unlock`.
    pub(crate) fn unlock(map: &Mapping) -> io::Result<()> {
        // SAFETY: the mapping holds an initialised mutex, held by this thread.
        check(unsafe { libc::pthread_mutex_unlock(mutex(map)) })
    }
}
