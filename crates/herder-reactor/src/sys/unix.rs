//! Unix: signals through a self-pipe, and `EPOLLEXCLUSIVE` on Linux. Every FFI call of
//! the crate on Unix is in this file.
//!
//! What this backend provides: [`SignalPipe`] (take, install, drain, restore),
//! [`accept`] (non-blocking and close-on-exec from the start), [`recv_now`] and
//! [`send_now`] (`MSG_DONTWAIT`) and, on Linux, [`add_exclusive`].

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

fn cvt<T: PartialEq + From<i8>>(ret: T) -> io::Result<T> {
    if ret == T::from(-1) {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The write end of the self-pipe, for the signal handler; -1 before it exists.
static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);

struct Global {
    /// The read end, while no reactor holds it.
    read: Option<OwnedFd>,
    /// Kept open for the life of the process: the handler may still run after a
    /// reactor restored the dispositions, and must never write to a reused number.
    _write: OwnedFd,
}

static GLOBAL: Mutex<Option<Global>> = Mutex::new(None);

#[cfg(any(
    target_os = "linux",
    target_os = "dragonfly",
    target_os = "hurd",
    target_os = "redox"
))]
fn errno_location() -> *mut libc::c_int {
    // SAFETY: returns the calling thread's errno slot; always valid.
    unsafe { libc::__errno_location() }
}
#[cfg(any(target_vendor = "apple", target_os = "freebsd"))]
fn errno_location() -> *mut libc::c_int {
    // SAFETY: returns the calling thread's errno slot; always valid.
    unsafe { libc::__error() }
}
#[cfg(any(target_os = "android", target_os = "netbsd", target_os = "openbsd"))]
fn errno_location() -> *mut libc::c_int {
    // SAFETY: returns the calling thread's errno slot; always valid.
    unsafe { libc::__errno() }
}
#[cfg(any(target_os = "solaris", target_os = "illumos"))]
fn errno_location() -> *mut libc::c_int {
    // SAFETY: returns the calling thread's errno slot; always valid.
    unsafe { libc::___errno() }
}

/// The handler: writes the signal number to the pipe. Async-signal-safe: one atomic
/// load and one `write`, with `errno` preserved.
extern "C" fn on_signal(sig: libc::c_int) {
    let fd = PIPE_WRITE.load(Ordering::Relaxed);
    if fd >= 0 {
        let errno = errno_location();
        // SAFETY: errno_location points at this thread's errno; `byte` lives across
        // the write; a full pipe makes the non-blocking write fail harmlessly (the
        // reader wakes up for the bytes already there).
        unsafe {
            let saved = *errno;
            let byte = sig as u8;
            libc::write(fd, (&byte as *const u8).cast(), 1);
            *errno = saved;
        }
    }
}

fn nonblocking_cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as RawFd; 2];
    #[cfg(not(target_vendor = "apple"))]
    {
        // SAFETY: `fds` has room for the two descriptors.
        cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    }
    #[cfg(target_vendor = "apple")]
    {
        // SAFETY: `fds` has room for the two descriptors.
        cvt(unsafe { libc::pipe(fds.as_mut_ptr()) })?;
    }
    // SAFETY: both are new descriptors owned by nobody else.
    let pair = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    #[cfg(target_vendor = "apple")]
    for fd in [&pair.0, &pair.1] {
        // SAFETY: plain fcntl flag updates on descriptors we own.
        unsafe {
            cvt(libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC))?;
            cvt(libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK))?;
        }
    }
    Ok(pair)
}

/// The self-pipe's read end, held by one reactor at a time, with the dispositions it
/// replaced.
pub(crate) struct SignalPipe {
    read: Option<OwnedFd>,
    saved: Vec<(libc::c_int, libc::sigaction)>,
}

impl SignalPipe {
    /// Takes the process's signal pipe, creating it on first use.
    ///
    /// # Errors
    ///
    /// `AlreadyExists` while another reactor holds it; `pipe2` errors.
    pub(crate) fn take() -> io::Result<SignalPipe> {
        let mut global = GLOBAL.lock().unwrap_or_else(|e| e.into_inner());
        if global.is_none() {
            let (read, write) = nonblocking_cloexec_pipe()?;
            PIPE_WRITE.store(write.as_raw_fd(), Ordering::Relaxed);
            *global = Some(Global {
                read: Some(read),
                _write: write,
            });
        }
        let read = global.as_mut().and_then(|g| g.read.take()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                "another reactor in this process watches signals",
            )
        })?;
        Ok(SignalPipe {
            read: Some(read),
            saved: Vec::new(),
        })
    }

    #[expect(
        clippy::expect_used,
        reason = "`read` is Some from `take` until `Drop` hands it back to the global"
    )]
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.read.as_ref().expect("held until drop").as_fd()
    }

    /// Installs the handler for `sig` (once per signal), remembering the old
    /// disposition. `SA_RESTART` keeps other threads' system calls from failing with
    /// `EINTR`.
    pub(crate) fn install(&mut self, sig: libc::c_int) -> io::Result<()> {
        if self.saved.iter().any(|(s, _)| *s == sig) {
            return Ok(());
        }
        // SAFETY: sigaction is plain data; all-zero is a valid starting value. The
        // handler is async-signal-safe (see `on_signal`).
        unsafe {
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            new.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut new.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            cvt(libc::sigaction(sig, &new, &mut old))?;
            self.saved.push((sig, old));
        }
        Ok(())
    }

    /// Whether this pipe's handler is installed for `sig`.
    pub(crate) fn is_installed(&self, sig: libc::c_int) -> bool {
        self.saved.iter().any(|(s, _)| *s == sig)
    }

    /// Reads every pending signal number, calling `f` for each.
    pub(crate) fn drain(&self, mut f: impl FnMut(libc::c_int)) {
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: `buf` is writable for its length.
            let n =
                unsafe { libc::read(self.fd().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return;
            }
            buf[..n as usize].iter().for_each(|&b| f(b as libc::c_int));
        }
    }
}

impl Drop for SignalPipe {
    fn drop(&mut self) {
        for (sig, old) in self.saved.drain(..).rev() {
            // SAFETY: restores a disposition that sigaction itself returned.
            unsafe { libc::sigaction(sig, &old, std::ptr::null_mut()) };
        }
        // Whoever takes the pipe next must not see this reactor's signals; none can
        // be written any more now that the handler is gone.
        self.drain(|_| {});
        let mut global = GLOBAL.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = global.as_mut() {
            g.read = self.read.take();
        }
    }
}

/// Adds `fd` to the epoll instance `epfd` with `EPOLLIN | EPOLLEXCLUSIVE` and `key` as
/// its data, the way `polling` stores keys.
///
/// # Safety
///
/// `fd` must be removed from `epfd` before it is closed.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) unsafe fn add_exclusive(
    epfd: BorrowedFd<'_>,
    fd: BorrowedFd<'_>,
    key: usize,
) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32,
        u64: key as u64,
    };
    // SAFETY: both descriptors are open; `ev` is a valid epoll_event; the caller
    // promises to remove `fd` before closing it.
    cvt(unsafe {
        libc::epoll_ctl(
            epfd.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            fd.as_raw_fd(),
            &mut ev,
        )
    })?;
    Ok(())
}

use modern::NO_SIGNAL;
pub(crate) use modern::accept;

/// Where the system has `accept4` and `MSG_NOSIGNAL` (all but macOS here).
#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly",
    target_os = "illumos"
))]
mod modern {
    use super::cvt;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd};

    /// Accepts a connection from `listener`, non-blocking and close-on-exec from
    /// the start: one `accept4(2)`, rather than `accept` and an `ioctl(FIONBIO)`.
    pub(crate) fn accept(listener: &std::net::TcpListener) -> io::Result<std::net::TcpStream> {
        let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        loop {
            // SAFETY: the listener's descriptor is open for the call; null address
            // pointers make accept4 write no address.
            let fd = unsafe {
                libc::accept4(
                    listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    flags,
                )
            };
            match cvt(fd) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
                // SAFETY: accept4 returned a new descriptor that nothing else owns.
                Ok(fd) => return Ok(unsafe { std::net::TcpStream::from_raw_fd(fd) }),
            }
        }
    }

    /// A write to a peer that is gone fails with `EPIPE` rather than raising
    /// `SIGPIPE`.
    pub(super) const NO_SIGNAL: libc::c_int = libc::MSG_NOSIGNAL;
}

/// Where the system has neither (macOS).
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly",
    target_os = "illumos"
)))]
mod modern {
    use std::io;

    /// std's `accept` sets close-on-exec; the socket is made non-blocking after.
    pub(crate) fn accept(listener: &std::net::TcpListener) -> io::Result<std::net::TcpStream> {
        let (stream, _) = listener.accept()?;
        stream.set_nonblocking(true)?;
        Ok(stream)
    }

    /// No such flag: std ignores `SIGPIPE` in Rust programs, and sockets it
    /// accepts carry `SO_NOSIGPIPE`.
    pub(super) const NO_SIGNAL: libc::c_int = 0;
}

/// Reads what the socket holds into `buf` without waiting (`MSG_DONTWAIT`),
/// whether or not the socket is non-blocking: `WouldBlock` if nothing is there.
pub(crate) fn recv_now(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `fd` is open for the call; the pointer and length describe `buf`,
    // which the kernel writes at most `buf.len()` bytes of.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    cvt(n).map(|n| n as usize)
}

/// Writes what the socket takes of `buf` without waiting (`MSG_DONTWAIT`).
pub(crate) fn send_now(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `fd` is open for the call; the pointer and length describe `buf`,
    // which the kernel only reads.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | NO_SIGNAL,
        )
    };
    cvt(n).map(|n| n as usize)
}
