//! Accept locks: the shared-listener model's way to let one worker at a time accept,
//! one mechanism per kind, all with the same API, all released by the kernel when
//! their holder dies.

use crate::AcceptLockKind;
use crate::sys;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

/// The name of the lock among a worker's inherited descriptors.
pub(crate) const LOCK_NAME: &str = "herder-accept-lock";
/// The variable naming the lock's kind.
pub(crate) const LOCK_ENV: &str = "HERDER_ACCEPT_LOCK";

enum Inner {
    /// A descriptor of the lock file of this process's own (flock, OFD locks) or the
    /// inherited one (POSIX locks).
    File(OwnedFd),
    #[cfg(target_os = "linux")]
    Mutex(sys::Mapping),
}

/// A worker's handle on the pool's accept lock: take it with
/// [`try_lock`](Self::try_lock) around an accept burst, release it with
/// [`unlock`](Self::unlock) before serving. Get it from
/// [`Worker::accept_lock`](crate::Worker::accept_lock).
///
/// A handle is tied to the thread that made it (it is not `Send`): a `pthread` mutex
/// belongs to a thread, and unlocking it elsewhere fails. Dropping a handle that holds
/// the lock releases it.
pub struct AcceptLock {
    kind: AcceptLockKind,
    inner: Inner,
    held: bool,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl AcceptLock {
    /// The supervisor's side: creates the lock object, as a descriptor to hand to
    /// every worker.
    pub(crate) fn create(kind: AcceptLockKind) -> io::Result<OwnedFd> {
        match kind {
            #[cfg(not(target_os = "linux"))]
            AcceptLockKind::Flock => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the flock accept lock is Linux-only here",
            )),
            #[cfg(target_os = "linux")]
            AcceptLockKind::Flock => sys::anonymous_file(),
            AcceptLockKind::Fcntl => sys::anonymous_file(),
            #[cfg(target_os = "linux")]
            AcceptLockKind::Pthread => {
                let (fd, map) = sys::shared_memory(c"herder-accept-lock", sys::robust::LEN)?;
                sys::robust::init(&map)?;
                Ok(fd)
            }
            #[cfg(not(target_os = "linux"))]
            AcceptLockKind::Pthread => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "robust pthread mutexes are Linux-only here",
            )),
        }
    }

    /// The worker's side: its own handle on the inherited lock object.
    pub(crate) fn open(kind: AcceptLockKind, fd: OwnedFd) -> io::Result<AcceptLock> {
        let inner = match kind {
            #[cfg(target_os = "linux")]
            AcceptLockKind::Flock | AcceptLockKind::Fcntl => Inner::File(sys::reopen(fd.as_fd())?),
            #[cfg(not(target_os = "linux"))]
            AcceptLockKind::Fcntl => Inner::File(fd),
            #[cfg(not(target_os = "linux"))]
            AcceptLockKind::Flock => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the flock accept lock is Linux-only here",
                ));
            }
            #[cfg(target_os = "linux")]
            AcceptLockKind::Pthread => Inner::Mutex(sys::map_shared(fd.as_fd(), sys::robust::LEN)?),
            #[cfg(not(target_os = "linux"))]
            AcceptLockKind::Pthread => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "robust pthread mutexes are Linux-only here",
                ));
            }
        };
        Ok(AcceptLock {
            kind,
            inner,
            held: false,
            _not_send: std::marker::PhantomData,
        })
    }

    /// The mechanism.
    pub fn kind(&self) -> AcceptLockKind {
        self.kind
    }

    /// Whether this handle holds the lock.
    pub fn is_held(&self) -> bool {
        self.held
    }

    /// Takes the lock if it is free, without blocking. `Ok(true)`: held until
    /// [`unlock`](Self::unlock). Taking it while holding it is `Ok(true)`.
    ///
    /// # Errors
    ///
    /// What the system call returns, other than "held by another".
    pub fn try_lock(&mut self) -> io::Result<bool> {
        if self.held {
            return Ok(true);
        }
        let got = match (&self.inner, self.kind) {
            (Inner::File(fd), AcceptLockKind::Flock) => sys::flock_try(fd.as_fd())?,
            (Inner::File(fd), _) => sys::fcntl_lock(fd.as_fd(), true)?,
            #[cfg(target_os = "linux")]
            (Inner::Mutex(map), _) => sys::robust::try_lock(map)?,
        };
        self.held = got;
        Ok(got)
    }

    /// Releases the lock; a no-op when not held.
    ///
    /// # Errors
    ///
    /// What the system call returns.
    pub fn unlock(&mut self) -> io::Result<()> {
        if !self.held {
            return Ok(());
        }
        match (&self.inner, self.kind) {
            (Inner::File(fd), AcceptLockKind::Flock) => sys::flock_unlock(fd.as_fd()),
            (Inner::File(fd), _) => sys::fcntl_lock(fd.as_fd(), false).map(drop),
            #[cfg(target_os = "linux")]
            (Inner::Mutex(map), _) => sys::robust::unlock(map),
        }?;
        self.held = false;
        Ok(())
    }
}

impl Drop for AcceptLock {
    fn drop(&mut self) {
        // A mutex left locked in unmapped memory would wedge every other worker.
        let _ = self.unlock();
    }
}

impl fmt::Debug for AcceptLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcceptLock")
            .field("kind", &self.kind)
            .field("held", &self.held)
            .finish()
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Two handles on one lock exclude each other (handles in one process are as
    /// separate as in two: each has its own open file description, or the mutex).
    #[test]
    fn handles_exclude_each_other() {
        for kind in [
            AcceptLockKind::Flock,
            AcceptLockKind::Fcntl,
            AcceptLockKind::Pthread,
        ] {
            let fd = AcceptLock::create(kind).unwrap();
            let mut a = AcceptLock::open(kind, fd.try_clone().unwrap()).unwrap();
            if kind == AcceptLockKind::Pthread {
                // A mutex knows threads, not handles: contend from another thread,
                // with a handle of its own.
                let other = |fd: OwnedFd| {
                    std::thread::spawn(move || {
                        let mut b = AcceptLock::open(kind, fd).unwrap();
                        let got = b.try_lock().unwrap();
                        b.unlock().unwrap();
                        got
                    })
                    .join()
                    .unwrap()
                };
                assert!(a.try_lock().unwrap());
                assert!(!other(fd.try_clone().unwrap()), "{kind}: taken twice");
                a.unlock().unwrap();
                assert!(other(fd), "{kind}: not free after unlock");
                continue;
            }
            let mut b = AcceptLock::open(kind, fd).unwrap();
            assert!(a.try_lock().unwrap(), "{kind}");
            assert!(!b.try_lock().unwrap(), "{kind}: taken twice");
            a.unlock().unwrap();
            assert!(b.try_lock().unwrap(), "{kind}: not free after unlock");
            assert!(!a.try_lock().unwrap(), "{kind}");
        }
    }

    #[test]
    fn kinds_parse_and_print() {
        for kind in [
            AcceptLockKind::Flock,
            AcceptLockKind::Fcntl,
            AcceptLockKind::Pthread,
        ] {
            assert_eq!(kind.name().parse::<AcceptLockKind>().unwrap(), kind);
        }
        assert!("sysv".parse::<AcceptLockKind>().is_err());
    }
}
