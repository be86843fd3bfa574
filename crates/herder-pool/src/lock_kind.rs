//! The kinds of accept lock a pool can make, named alike on the command line and in
//! the environment.

use std::fmt;
use std::io;
use std::str::FromStr;

/// The mechanism behind an [`AcceptLock`](crate::AcceptLock).
///
/// # Portability
///
/// `Flock` and the open-file-description `Fcntl` reopen the lock file through
/// `/proc/self/fd` and are Linux-only as written; elsewhere `Fcntl` uses per-process
/// POSIX record locks on the inherited descriptor, and `Flock` is refused. `Pthread`
/// needs robust mutexes: Linux (glibc, musl). On Windows the one kind is `Mutex`, a
/// named mutex, abandoned (and taken over by the next taker) when its holder dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AcceptLockKind {
    /// `flock(2)` on an anonymous file (a `memfd`): released when the holder's
    /// descriptor is closed, which its death does.
    #[cfg(unix)]
    Flock,
    /// `fcntl(2)` record locks (open-file-description locks on Linux): released the
    /// same way.
    #[cfg(unix)]
    Fcntl,
    /// A process-shared robust `pthread` mutex in shared memory: a holder's death
    /// hands it to the next taker (`EOWNERDEAD`), which repairs it.
    #[cfg(unix)]
    Pthread,
    /// A named mutex (Windows): a holder's death abandons it to the next taker.
    #[cfg(windows)]
    Mutex,
}

impl AcceptLockKind {
    /// The name used on command lines and in the environment.
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(unix)]
            AcceptLockKind::Flock => "flock",
            #[cfg(unix)]
            AcceptLockKind::Fcntl => "fcntl",
            #[cfg(unix)]
            AcceptLockKind::Pthread => "pthread",
            #[cfg(windows)]
            AcceptLockKind::Mutex => "mutex",
        }
    }
}

impl fmt::Display for AcceptLockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AcceptLockKind {
    type Err = io::Error;

    fn from_str(s: &str) -> io::Result<AcceptLockKind> {
        match s {
            #[cfg(unix)]
            "flock" => Ok(AcceptLockKind::Flock),
            #[cfg(unix)]
            "fcntl" => Ok(AcceptLockKind::Fcntl),
            #[cfg(unix)]
            "pthread" => Ok(AcceptLockKind::Pthread),
            #[cfg(windows)]
            "mutex" => Ok(AcceptLockKind::Mutex),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown accept lock {s:?}"),
            )),
        }
    }
}
