//! Unix: spawning a worker with `fork` + `execve` and a collision-safe descriptor
//! mapping, reaping, signalling, and adopting inherited descriptors. Every FFI call of
//! the crate on Unix is in this file.
//!
//! What this backend provides: [`spawn`], [`try_wait`], [`signal`], [`adopt_inherited`]
//! and [`getpid`].

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
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

/// Width reserved for the pid in `LISTEN_PID=`; filled in by the child after `fork`.
const PID_WIDTH: usize = 20;
const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";

/// A started worker process.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) pid: u32,
    /// Readable when the process exits (Linux 5.3+); `None` elsewhere or on older
    /// kernels, where `SIGCHLD` tells instead.
    pub(crate) pidfd: Option<OwnedFd>,
}

/// Starts `program` with `args` and the environment `env` (which must not contain
/// `LISTEN_*`), handing it `fds` as descriptors 3, 4, … with `LISTEN_FDS`,
/// `LISTEN_FDNAMES` and `LISTEN_PID` set for it alone.
///
/// Between `fork` and `execve` the child does only async-signal-safe work on memory
/// prepared beforehand: it moves every descriptor above the target range (close-on-exec)
/// first, so that no mapping can overwrite a source another mapping still needs, then
/// `dup2`s them into place (which makes them inheritable), marks every other
/// descriptor from `3 + n` up close-on-exec where the kernel can (`close_range`),
/// writes its pid into `LISTEN_PID`, restores `SIGPIPE` and the signal mask, and
/// executes. An `execve` failure comes back through a close-on-exec pipe.
pub(crate) fn spawn(
    program: &Path,
    args: &[OsString],
    env: &[(OsString, OsString)],
    fds: &[(BorrowedFd<'_>, &str)],
    credentials: Option<crate::Credentials>,
) -> io::Result<Spawned> {
    // Everything the child touches is built here, before fork.
    let switch = credentials
        .filter(|c| !c.is_current())
        .map(|c| (c.uid, c.gid));
    let prog = cstring(program.as_os_str().as_bytes())?;
    let mut argv_owned = vec![prog.clone()];
    for a in args {
        argv_owned.push(cstring(a.as_bytes())?);
    }
    let mut argv: Vec<*const libc::c_char> = argv_owned.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());

    let mut env_owned = Vec::with_capacity(env.len() + 3);
    for (k, v) in env {
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        env_owned.push(cstring(&kv)?);
    }
    if !fds.is_empty() {
        env_owned.push(cstring(format!("LISTEN_FDS={}", fds.len()).as_bytes())?);
        let names: Vec<&str> = fds.iter().map(|(_, n)| *n).collect();
        if names.iter().any(|n| n.contains(':') || n.is_empty()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "descriptor names must be non-empty and without ':'",
            ));
        }
        env_owned.push(cstring(
            format!("LISTEN_FDNAMES={}", names.join(":")).as_bytes(),
        )?);
    }
    let mut listen_pid = LISTEN_PID_PREFIX.to_vec();
    listen_pid.extend_from_slice(&[b'0'; PID_WIDTH]);
    let listen_pid = cstring(&listen_pid)?.into_raw();
    let mut envp: Vec<*const libc::c_char> = env_owned.iter().map(|c| c.as_ptr()).collect();
    if !fds.is_empty() {
        envp.push(listen_pid);
    }
    envp.push(std::ptr::null());

    let sources: Vec<RawFd> = fds.iter().map(|(fd, _)| fd.as_raw_fd()).collect();
    let mut temps: Vec<RawFd> = vec![-1; sources.len()];

    let plan = Exec {
        prog: &prog,
        argv: &argv,
        envp: &envp,
        sources: &sources,
        listen_pid,
        switch,
    };
    let result = fork_exec(&plan, &mut temps);
    // SAFETY: `listen_pid` came from `CString::into_raw` above and is used no more.
    drop(unsafe { CString::from_raw(listen_pid) });
    result
}

/// What the child of [`fork_exec`] does, all prepared before the fork.
struct Exec<'a> {
    prog: &'a CString,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    /// The descriptors to map to 3, 4, ….
    sources: &'a [RawFd],
    /// The `LISTEN_PID=` entry of `envp`, whose digits the child writes.
    listen_pid: *mut libc::c_char,
    /// The user and group to switch to.
    switch: Option<(u32, u32)>,
}

fn fork_exec(plan: &Exec<'_>, temps: &mut [RawFd]) -> io::Result<Spawned> {
    let (err_read, err_write) = cloexec_pipe()?;
    // Block every signal around the fork, so that none reaches the child while it
    // still has the supervisor's handlers (which write to the supervisor's signal
    // pipe); the child resets them before unblocking.
    // SAFETY: sigset_t is plain data, filled by sigfillset; pthread_sigmask changes
    // only this thread's mask, restored right after the fork.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // SAFETY: fork has no preconditions; the child below only calls async-signal-safe
    // functions on memory prepared before the fork, and never returns.
    let forked = cvt(unsafe { libc::fork() });
    if !matches!(forked, Ok(0)) {
        // SAFETY: restores the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    }
    let pid = forked?;
    if pid == 0 {
        // SAFETY: we are the child of a fork: see `child_exec`.
        unsafe { child_exec(plan, temps, err_write.as_raw_fd()) }
    }
    drop(err_write);
    // Zero bytes: the exec succeeded and closed the pipe. Four: an errno.
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        // SAFETY: reads into `buf` within bounds.
        let n = unsafe {
            libc::read(
                err_read.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                4 - got,
            )
        };
        match n {
            0 => break,
            n if n > 0 => got += n as usize,
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            _ => break,
        }
    }
    if got == 4 {
        let mut status = 0;
        // SAFETY: reaps the child that failed to exec; `status` is writable.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return Err(io::Error::from_raw_os_error(i32::from_ne_bytes(buf)));
    }
    Ok(Spawned {
        pid: pid as u32,
        pidfd: pidfd_open(pid),
    })
}

/// The child's side of [`fork_exec`].
///
/// # Safety
///
/// Must run in the child of a `fork`, where only async-signal-safe calls are allowed:
/// it allocates nothing and takes no lock. All pointers point at memory prepared
/// before the fork.
unsafe fn child_exec(plan: &Exec<'_>, temps: &mut [RawFd], err: RawFd) -> ! {
    let Exec {
        prog,
        argv,
        envp,
        sources,
        listen_pid,
        switch,
    } = *plan;
    let fail = |err: RawFd| -> ! {
        // SAFETY: errno location and write/_exit are async-signal-safe.
        unsafe {
            let e = io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL);
            let bytes = e.to_ne_bytes();
            libc::write(err, bytes.as_ptr().cast(), 4);
            libc::_exit(127)
        }
    };
    let n = sources.len() as libc::c_int;
    let floor = 3 + n;
    // SAFETY: plain descriptor system calls, all async-signal-safe, on numbers this
    // process owns; `temps` and the LISTEN_PID buffer were allocated before the fork
    // and are written within their bounds.
    unsafe {
        // The error pipe must not sit in the target range, where a mapping would
        // replace it: move it above.
        let moved = libc::fcntl(err, libc::F_DUPFD_CLOEXEC, floor);
        if moved < 0 {
            libc::_exit(127);
        }
        let err = moved;
        for (i, &src) in sources.iter().enumerate() {
            let t = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, floor);
            if t < 0 {
                fail(err);
            }
            temps[i] = t;
        }
        for (i, &t) in temps.iter().enumerate() {
            if libc::dup2(t, 3 + i as libc::c_int) < 0 {
                fail(err);
            }
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            // CLOSE_RANGE_CLOEXEC: whatever else is open from `floor` up, even a
            // descriptor someone created without close-on-exec, stays behind. Older
            // kernels lack it; then only the usual close-on-exec flags apply.
            const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
            libc::syscall(
                libc::SYS_close_range,
                floor as libc::c_uint,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            );
        }
        if n > 0 {
            let mut pid = libc::getpid() as u64;
            let digits = listen_pid.add(LISTEN_PID_PREFIX.len()).cast::<u8>();
            let mut buf = [0u8; PID_WIDTH];
            let mut len = 0;
            loop {
                buf[len] = b'0' + (pid % 10) as u8;
                len += 1;
                pid /= 10;
                if pid == 0 {
                    break;
                }
            }
            for i in 0..len {
                *digits.add(i) = buf[len - 1 - i];
            }
            *digits.add(len) = 0;
        }
        // Privilege separation: the supplementary groups, the group, then the user.
        if let Some((uid, gid)) = switch {
            if libc::setgroups(1, &gid) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                fail(err);
            }
        }
        // Handlers would run the supervisor's code: back to the default for every
        // caught signal (ignored ones stay ignored, as exec keeps them), and SIGPIPE
        // to the default as std's Command does. Then unblock everything.
        for sig in 1..32 {
            let mut act: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut act) == 0
                && act.sa_sigaction != libc::SIG_DFL
                && act.sa_sigaction != libc::SIG_IGN
            {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(err)
    }
}

fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as RawFd; 2];
    #[cfg(not(target_vendor = "apple"))]
    {
        // SAFETY: `fds` has room for the two descriptors.
        cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
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
        // SAFETY: sets a descriptor flag on a descriptor we own.
        cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) })?;
    }
    Ok(pair)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn pidfd_open(pid: libc::pid_t) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags; it returns a new close-on-exec
    // descriptor or -1. The child is not reaped yet, so the pid is still ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a new descriptor owned by nobody else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn pidfd_open(_pid: libc::pid_t) -> Option<OwnedFd> {
    None
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

use std::os::fd::AsFd;

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
    use super::Mapping;
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

/// Runs a `get*_r` lookup with a buffer that grows on `ERANGE`; `Ok(false)` when the
/// entry does not exist.
fn lookup_r(mut call: impl FnMut(&mut [libc::c_char]) -> (libc::c_int, bool)) -> io::Result<bool> {
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        let (r, found) = call(&mut buf);
        match r {
            0 => return Ok(found),
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 2, 0),
            libc::EINTR => continue,
            // Some C libraries say "no such entry" this way (a container without
            // /etc/passwd, say).
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(false),
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// `getpwnam_r`: the user's id and primary group.
pub(crate) fn user_by_name(name: &str) -> io::Result<Option<(u32, u32)>> {
    let Ok(name) = CString::new(name) else {
        return Ok(None);
    };
    let mut ids = None;
    lookup_r(|buf| {
        // SAFETY: passwd is plain data; getpwnam_r writes it and its strings into
        // `buf` (within its length) and sets `out` to it or to null.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out = std::ptr::null_mut();
        // SAFETY: as above.
        let r = unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                &mut pw,
                buf.as_mut_ptr(),
                buf.len(),
                &mut out,
            )
        };
        if r == 0 && !out.is_null() {
            ids = Some((pw.pw_uid, pw.pw_gid));
        }
        (r, !out.is_null())
    })?;
    Ok(ids)
}

/// `getpwuid_r`: the user's id and primary group.
pub(crate) fn user_by_id(uid: u32) -> io::Result<Option<(u32, u32)>> {
    let mut ids = None;
    lookup_r(|buf| {
        // SAFETY: as in `user_by_name`.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out = std::ptr::null_mut();
        // SAFETY: as in `user_by_name`.
        let r = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
        if r == 0 && !out.is_null() {
            ids = Some((pw.pw_uid, pw.pw_gid));
        }
        (r, !out.is_null())
    })?;
    Ok(ids)
}

/// `getgrnam_r`: the group's id.
pub(crate) fn group_by_name(name: &str) -> io::Result<Option<u32>> {
    let Ok(name) = CString::new(name) else {
        return Ok(None);
    };
    let mut gid = None;
    lookup_r(|buf| {
        // SAFETY: group is plain data; getgrnam_r writes it and its strings into
        // `buf` (within its length) and sets `out` to it or to null.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut out = std::ptr::null_mut();
        // SAFETY: as above.
        let r = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut gr,
                buf.as_mut_ptr(),
                buf.len(),
                &mut out,
            )
        };
        if r == 0 && !out.is_null() {
            gid = Some(gr.gr_gid);
        }
        (r, !out.is_null())
    })?;
    Ok(gid)
}

/// Real and effective user ids, real and effective group ids.
pub(crate) fn current_ids() -> (u32, u32, u32, u32) {
    // SAFETY: these calls have no preconditions and cannot fail.
    unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
        )
    }
}

/// Switches to `uid`/`gid` for good (supplementary groups, group, then user), makes
/// the process non-dumpable (Linux), and checks that the old user cannot be taken
/// back.
pub(crate) fn switch_ids(uid: u32, gid: u32) -> io::Result<()> {
    let (ruid, euid, _, _) = current_ids();
    // SAFETY: setgroups reads one gid from a valid pointer; setgid/setuid take plain
    // ids.
    unsafe {
        cvt(libc::setgroups(1, &gid))?;
        cvt(libc::setgid(gid))?;
        cvt(libc::setuid(uid))?;
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    // SAFETY: PR_SET_DUMPABLE takes a plain value. Not dumpable: processes of the new
    // user (a worker, say) cannot trace this one or read its memory.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0);
    }
    if uid != 0 && (ruid == 0 || euid == 0) {
        // SAFETY: as above; this must fail now.
        if unsafe { libc::setuid(0) } == 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "root could be taken back after switching users",
            ));
        }
    }
    Ok(())
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

/// Bounds how long a blocking send on `fd` waits for room (`SO_SNDTIMEO`).
pub(crate) fn set_send_timeout(fd: BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: `fd` is a valid socket for the call; the option value is a timeval of
    // the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
