//! Unix: every FFI call of the crate on Unix is in this module. Spawning a worker
//! with `fork` + `execve` and a collision-safe descriptor mapping (`spawn.rs`),
//! shared memory (`memory.rs`), the accept locks' primitives (`locks.rs`), users
//! and groups (`users.rs`); here, reaping, signalling, adopting inherited
//! descriptors and the descriptor limit.

mod locks;
mod memory;
mod spawn;
mod users;

#[cfg(target_os = "linux")]
pub(crate) use locks::robust;
pub(crate) use locks::{fcntl_lock, flock_try, flock_unlock};
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) use memory::reopen;
pub(crate) use memory::{Mapping, anonymous_file, map_shared, shared_memory};
pub(crate) use spawn::spawn;
pub(crate) use users::{current_ids, group_by_name, switch_ids, user_by_id, user_by_name};

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a NUL byte in an argument or variable",
        )
    })
}

/// Reaps `pid` if it has exited (`waitpid` with `WNOHANG`).
pub(crate) fn try_wait(pid: u32) -> io::Result<Option<ExitStatus>> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is writable; WNOHANG never blocks.
        let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
        match r {
            0 => return Ok(None),
            -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            -1 => return Err(io::Error::last_os_error()),
            _ => return Ok(Some(ExitStatus::from_raw(status))),
        }
    }
}

/// Sends `sig` to `pid`. The caller only names processes it has not reaped, so the
/// pid cannot have been reused.
pub(crate) fn signal(pid: u32, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill has no memory preconditions.
    cvt(unsafe { libc::kill(pid as libc::pid_t, sig) }).map(drop)
}

/// This process's effective user id.
pub(crate) fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// This process's id.
pub(crate) fn getpid() -> u32 {
    std::process::id()
}

/// Takes ownership of descriptors `3 .. 3 + count` handed over by the parent, after
/// checking that each is open, and makes them close-on-exec.
///
/// # Errors
///
/// `EBADF` if one of them is not open; then none is adopted.
pub(crate) fn adopt_inherited(count: usize) -> io::Result<Vec<OwnedFd>> {
    for i in 0..count {
        // SAFETY: F_GETFD/F_SETFD on numbers handed to this process: they only read
        // or set flags, or fail with EBADF. Nothing is owned until all succeeded.
        cvt(unsafe { libc::fcntl(3 + i as RawFd, libc::F_GETFD) })?;
        // SAFETY: as above.
        cvt(unsafe { libc::fcntl(3 + i as RawFd, libc::F_SETFD, libc::FD_CLOEXEC) })?;
    }
    Ok((0..count)
        // SAFETY: open (checked above) and handed to this process by its parent for
        // it to own; the caller adopts them once per process.
        .map(|i| unsafe { OwnedFd::from_raw_fd(3 + i as RawFd) })
        .collect())
}

/// Whether a variable name is one of the socket-activation variables the spawn sets
/// itself (or, for the supervisor's own, must not pass on).
pub(crate) fn is_listen_var(name: &OsStr) -> bool {
    matches!(
        name.as_bytes(),
        b"LISTEN_FDS" | b"LISTEN_FDNAMES" | b"LISTEN_PID"
    )
}

/// Whether a variable name is one of systemd's notification variables, which are the
/// supervisor's, not its workers'.
pub(crate) fn is_notify_var(name: &OsStr) -> bool {
    matches!(
        name.as_bytes(),
        b"NOTIFY_SOCKET" | b"WATCHDOG_USEC" | b"WATCHDOG_PID"
    )
}

/// A new directory only this user can enter (`mkdtemp`, mode 0700), in the temporary
/// directory.
pub(crate) fn private_dir() -> io::Result<std::path::PathBuf> {
    let template = std::env::temp_dir().join("herder-XXXXXX");
    let mut bytes = cstring(template.as_os_str().as_bytes())?.into_bytes_with_nul();
    // SAFETY: `bytes` is a NUL-terminated template that mkdtemp rewrites in place.
    let r = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
    if r.is_null() {
        return Err(io::Error::last_os_error());
    }
    bytes.pop();
    Ok(std::path::PathBuf::from(OsString::from_vec(bytes)))
}

/// The soft `RLIMIT_NOFILE`, or `None` if unlimited or unknown.
pub(crate) fn nofile_limit() -> Option<usize> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit, which `lim` is.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0
        || lim.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    usize::try_from(lim.rlim_cur).ok()
}

/// How many descriptors this process has open, if the system lists them (and a
/// descriptor is left to list them with).
pub(crate) fn open_descriptors() -> Option<usize> {
    let dir = std::fs::read_dir("/proc/self/fd")
        .or_else(|_| std::fs::read_dir("/dev/fd"))
        .ok()?;
    // The listing includes the descriptor that reads it.
    Some(dir.count().saturating_sub(1))
}

/// Whether `e` says the process or the system ran out of descriptors or memory.
pub(crate) fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Sets the socket option `level`/`name` of `fd` to `value`, a plain C value of the
/// type the option takes.
fn setsockopt<T: Copy>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `fd` is valid for the call; the value is a live `T` of the size passed,
    // and the callers pass the type the option is documented to take.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    cvt(r).map(drop)
}

/// The value of the socket option `level`/`name` of `fd`, a plain C value of the
/// type the option takes.
#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "dragonfly",
    target_os = "netbsd"
))]
fn getsockopt<T: Copy>(fd: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int) -> io::Result<T> {
    let mut value = std::mem::MaybeUninit::<T>::zeroed();
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `fd` is valid for the call; the kernel writes at most `len` bytes into
    // `value`. The callers pass plain C types, for which all zeroes and whatever
    // the kernel wrote over them are valid values.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value.as_mut_ptr().cast(),
            &mut len,
        )
    };
    cvt(r)?;
    // SAFETY: zeroed or written by the kernel, as above.
    Ok(unsafe { value.assume_init() })
}

/// Bounds how long a blocking send on `fd` waits for room (`SO_SNDTIMEO`).
pub(crate) fn set_send_timeout(fd: BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &tv)
}

/// Has the listening socket `fd` hold each new connection back until its first bytes
/// arrive: `TCP_DEFER_ACCEPT` on Linux, the `dataready` accept filter on FreeBSD,
/// DragonFly and NetBSD. A listener that defers already is left as it is.
pub(crate) fn defer_accept(fd: BorrowedFd<'_>) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        if getsockopt::<libc::c_int>(fd, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT)? > 0 {
            // Set by whoever passed it on (systemd's `DeferAcceptSec=`, an upgrade).
            return Ok(());
        }
        // Seconds before a connection that sends nothing is accepted all the same:
        // the kernel rounds up to its first SYN-ACK retransmission (one second).
        let seconds: libc::c_int = 1;
        setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, &seconds)
    }
    #[cfg(any(target_os = "freebsd", target_os = "dragonfly", target_os = "netbsd"))]
    {
        const NAME: &[u8] = b"dataready";
        // SAFETY: accept_filter_arg is plain data; all zeroes is an empty name and
        // argument.
        let mut arg: libc::accept_filter_arg = unsafe { std::mem::zeroed() };
        for (to, from) in arg.af_name.iter_mut().zip(NAME) {
            *to = *from as libc::c_char;
        }
        match setsockopt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTFILTER, &arg) {
            Ok(()) => Ok(()),
            // The filter's kernel module is not loaded.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Err(io::Error::new(
                e.kind(),
                "the dataready accept filter is not loaded (kldload accf_data)",
            )),
            // A filter is installed already (the kernel replaces none): fine if it
            // is this one.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let set: libc::accept_filter_arg =
                    getsockopt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTFILTER)?;
                let name = set
                    .af_name
                    .iter()
                    .take_while(|&&c| c != 0)
                    .map(|&c| c as u8);
                if name.eq(NAME.iter().copied()) {
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "the listener has another accept filter",
                    ))
                }
            }
            Err(e) => Err(e),
        }
    }
    #[cfg(not(any(
        target_os = "linux",
        target_os = "android",
        target_os = "freebsd",
        target_os = "dragonfly",
        target_os = "netbsd"
    )))]
    {
        let _ = fd;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "deferred accept is not available on this platform",
        ))
    }
}

/// Milliseconds of `CLOCK_MONOTONIC`: one clock for every process of the machine.
pub(crate) fn monotonic_ms() -> u64 {
    monotonic().as_millis() as u64
}

/// `CLOCK_MONOTONIC` since its start (boot, on Linux).
pub(crate) fn monotonic() -> std::time::Duration {
    // SAFETY: timespec is plain data; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is writable; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Whether `fd` is a socket (`fstat`).
pub(crate) fn is_socket(fd: impl AsFd) -> io::Result<bool> {
    // SAFETY: stat is plain data; fstat fills it for an open descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `st` is writable.
    cvt(unsafe { libc::fstat(fd.as_fd().as_raw_fd(), &mut st) })?;
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
}
