//! Starting a worker: `fork` + `execve` with its descriptors mapped to 3, 4, … and
//! `LISTEN_PID` filled in by the child.

use super::{cstring, cvt};
use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

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
