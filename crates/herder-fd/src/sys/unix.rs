//! Unix: `sendmsg`/`recvmsg` with `SCM_RIGHTS`, `socketpair`, peer credentials and
//! descriptor flags. Every FFI call of the crate on Unix is in this file.
//!
//! What this backend provides to the rest of the crate: [`MAX_FDS`], [`send_msg`],
//! [`recv_msg`], [`recv_msg_reporting_loss`], [`socketpair`], [`socket_type`], [`set_nonblocking`],
//! [`set_cloexec`], [`peer_credentials`] and [`spawn_inheriting`].

use crate::error::Error;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Child, Command};

/// The most descriptors one message may carry. Linux's `SCM_MAX_FD` is 253; the BSDs
/// and macOS accept at least as many in one control message, so one portable limit
/// keeps behaviour identical everywhere.
pub(crate) const MAX_FDS: usize = 253;

/// Bytes of control buffer for [`MAX_FDS`] descriptors: a `cmsghdr` (at most 16
/// bytes), the descriptors, and slack for the platform's alignment.
const CMSG_BUF_LEN: usize = 32 + MAX_FDS * mem::size_of::<RawFd>();

/// Room for control data, aligned for `cmsghdr`. Not zeroed as a whole (1 KiB a
/// message): a sender zeroes what it fills, and a receiver reads only the bytes
/// the kernel wrote (`msg_controllen` after the call).
#[repr(C, align(8))]
struct CmsgBuf(mem::MaybeUninit<[u8; CMSG_BUF_LEN]>);

impl CmsgBuf {
    fn new() -> CmsgBuf {
        CmsgBuf(mem::MaybeUninit::uninit())
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.0.as_mut_ptr().cast()
    }
}

/// Turns the C convention of -1 + `errno` into an [`io::Result`].
fn cvt<T: PartialEq + From<i8>>(ret: T) -> io::Result<T> {
    if ret == T::from(-1) {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// [`cvt`], retrying while the call is interrupted by a signal (`EINTR`).
fn cvt_r<T: PartialEq + From<i8>>(mut f: impl FnMut() -> T) -> io::Result<T> {
    loop {
        match cvt(f()) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly"
))]
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly"
)))]
const SEND_FLAGS: libc::c_int = 0;

/// Where the kernel can mark received descriptors close-on-exec atomically.
#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly"
))]
const RECV_FLAGS: libc::c_int = libc::MSG_CMSG_CLOEXEC;
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly"
)))]
const RECV_FLAGS: libc::c_int = 0;
const ATOMIC_CLOEXEC: bool = RECV_FLAGS != 0;

/// Whether, after `MSG_CTRUNC`, the descriptors whose numbers were copied out are
/// still open and ours (Linux, Android, macOS), or were closed by the kernel (the
/// BSDs).
const KERNEL_KEEPS_COPIED_FDS_ON_CTRUNC: bool = cfg!(any(
    target_os = "linux",
    target_os = "android",
    target_vendor = "apple"
));

/// Sends `bufs` and `fds` in one `sendmsg(2)`, with `MSG_NOSIGNAL` where it exists.
/// Returns the bytes written (on a stream socket possibly fewer than given; the
/// descriptors then went with the first byte).
pub(crate) fn send_msg(
    sock: BorrowedFd<'_>,
    bufs: &[IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(Error::TooManyFds {
            count: fds.len(),
            max: MAX_FDS,
        }
        .into());
    }
    let mut cmsg = CmsgBuf::new();
    // SAFETY: msghdr is a plain C struct for which all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec; // IoSlice is ABI-compatible with iovec.
    msg.msg_iovlen = bufs.len() as _;
    if !fds.is_empty() {
        let data_len = (fds.len() * mem::size_of::<RawFd>()) as libc::c_uint;
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
        debug_assert!(space <= CMSG_BUF_LEN);
        // SAFETY: `space` bytes fit in the buffer (checked above against MAX_FDS).
        unsafe { cmsg.as_mut_ptr().write_bytes(0, space) };
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` zeroed, writable, aligned bytes,
        // enough for one cmsghdr with `data_len` bytes of data, so CMSG_FIRSTHDR is
        // non-null and CMSG_DATA has room for every descriptor; the writes are
        // unaligned-safe.
        unsafe {
            let hdr = libc::CMSG_FIRSTHDR(&msg);
            (*hdr).cmsg_level = libc::SOL_SOCKET;
            (*hdr).cmsg_type = libc::SCM_RIGHTS;
            (*hdr).cmsg_len = libc::CMSG_LEN(data_len) as _;
            let data = libc::CMSG_DATA(hdr).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    // SAFETY: msg points at live iovecs and a control buffer filled above; the
    // descriptors are borrowed for the duration of the call.
    let n = cvt_r(|| unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, SEND_FLAGS) })?;
    Ok(n as usize)
}

/// A place received descriptors go: a `Vec` or the stream channel's queue.
pub(crate) trait FdSink {
    fn fd_count(&self) -> usize;
    fn push_fd(&mut self, fd: OwnedFd);
    fn truncate_fds(&mut self, len: usize);
}

impl FdSink for Vec<OwnedFd> {
    fn fd_count(&self) -> usize {
        self.len()
    }
    fn push_fd(&mut self, fd: OwnedFd) {
        self.push(fd)
    }
    fn truncate_fds(&mut self, len: usize) {
        self.truncate(len)
    }
}

impl FdSink for VecDeque<OwnedFd> {
    fn fd_count(&self) -> usize {
        self.len()
    }
    fn push_fd(&mut self, fd: OwnedFd) {
        self.push_back(fd)
    }
    fn truncate_fds(&mut self, len: usize) {
        self.truncate(len)
    }
}

/// Receives into `buf` with one `recvmsg(2)`, appending up to `max_fds` received
/// descriptors to `fds`, each close-on-exec (atomically where `MSG_CMSG_CLOEXEC`
/// exists). On `MSG_CTRUNC` or `MSG_TRUNC` the descriptors of this call are closed
/// and an [`Error`] is returned.
pub(crate) fn recv_msg(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut impl FdSink,
    max_fds: usize,
) -> io::Result<usize> {
    let got = recv_msg_reporting_loss(sock, buf, fds, max_fds)?;
    match got.lost {
        Some(received) => Err(Error::ControlTruncated { received }.into()),
        None => Ok(got.len),
    }
}

/// What [`recv_msg_reporting_loss`] received.
pub(crate) struct Got {
    /// Bytes of payload in the buffer.
    pub(crate) len: usize,
    /// `Some(received)` when the kernel dropped descriptors (`MSG_CTRUNC`): the
    /// `received` ones that did arrive were closed, none was appended, and the
    /// payload is whole.
    pub(crate) lost: Option<usize>,
}

/// As [`recv_msg`], except that a message whose descriptors the kernel dropped
/// (`MSG_CTRUNC`) but whose payload arrived whole is returned, with the loss
/// reported in [`Got::lost`] instead of as an error: a receiver whose descriptor
/// table is full can still read what the message was (a hand-off's ids, say) and
/// tell its sender. The descriptors of that message are closed all the same.
pub(crate) fn recv_msg_reporting_loss(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut impl FdSink,
    max_fds: usize,
) -> io::Result<Got> {
    let max_fds = max_fds.min(MAX_FDS);
    let mut cmsg = CmsgBuf::new();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is a plain C struct for which all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if max_fds > 0 {
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE((max_fds * mem::size_of::<RawFd>()) as libc::c_uint) }
            as usize;
        debug_assert!(space <= CMSG_BUF_LEN);
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
    }
    // SAFETY: msg points at `buf` through `iov` and at the control buffer, both live and
    // writable for the lengths given.
    let n = match cvt_r(|| unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, RECV_FLAGS) }) {
        Ok(n) => n as usize,
        // macOS discards every descriptor of a message that does not fit in the
        // receiver's descriptor table and fails with EMSGSIZE.
        #[cfg(target_vendor = "apple")]
        Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
            return Err(Error::ControlTruncated { received: 0 }.into());
        }
        Err(e) => return Err(e),
    };

    let before = fds.fd_count();
    let mut cloexec_err = None;
    let ctrunc = msg.msg_flags & libc::MSG_CTRUNC != 0;
    // On FreeBSD and the other BSDs the kernel closes every descriptor of a message
    // whose control data it truncated, including those whose numbers it copied out:
    // adopting them would close descriptors this process may have reused meanwhile.
    let adopt = !ctrunc || KERNEL_KEEPS_COPIED_FDS_ON_CTRUNC;
    let control_len = msg.msg_controllen as usize;
    if adopt && !msg.msg_control.is_null() && control_len >= mem::size_of::<libc::cmsghdr>() {
        let control_end = cmsg.as_mut_ptr() as usize + control_len.min(CMSG_BUF_LEN);
        // SAFETY: the kernel wrote the headers and data within msg_controllen bytes
        // of the control buffer, and only those are read: CMSG_FIRSTHDR/CMSG_NXTHDR
        // read a header only where one fits before that end, and the descriptor count is
        // clamped to the bytes the kernel actually copied (macOS keeps the full
        // cmsg_len in a truncated header). Each SCM_RIGHTS descriptor in that range is
        // new in this process and owned by nobody else, so wrapping it in OwnedFd at
        // once is sound and means it is closed on every path.
        unsafe {
            let mut hdr = libc::CMSG_FIRSTHDR(&msg);
            while !hdr.is_null() {
                if (*hdr).cmsg_level == libc::SOL_SOCKET && (*hdr).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(hdr);
                    let claimed =
                        ((*hdr).cmsg_len as usize).saturating_sub(data as usize - hdr as usize);
                    let copied = control_end.saturating_sub(data as usize);
                    let count = claimed.min(copied) / mem::size_of::<RawFd>();
                    for i in 0..count {
                        let raw = data.cast::<RawFd>().add(i).read_unaligned();
                        if raw < 0 {
                            continue;
                        }
                        let fd = OwnedFd::from_raw_fd(raw);
                        if !ATOMIC_CLOEXEC {
                            if let Err(e) = set_cloexec(fd.as_fd(), true) {
                                cloexec_err.get_or_insert(e);
                            }
                        }
                        fds.push_fd(fd);
                    }
                }
                hdr = libc::CMSG_NXTHDR(&msg, hdr);
            }
        }
    }
    let received = fds.fd_count() - before;
    let trunc = msg.msg_flags & libc::MSG_TRUNC != 0;
    if ctrunc {
        fds.truncate_fds(before);
        // A cut payload cannot say what the message was: only an error is left.
        if trunc {
            return Err(Error::ControlTruncated { received }.into());
        }
        return Ok(Got {
            len: n,
            lost: Some(received),
        });
    }
    if trunc {
        fds.truncate_fds(before);
        return Err(Error::PayloadTruncated {
            capacity: buf.len(),
        }
        .into());
    }
    if let Some(e) = cloexec_err {
        fds.truncate_fds(before);
        return Err(e);
    }
    Ok(Got { len: n, lost: None })
}

/// The two socket types a channel can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SockType {
    Stream,
    SeqPacket,
}

/// `socketpair(2)` of `AF_UNIX` sockets, both close-on-exec, with `SO_NOSIGPIPE` where
/// `MSG_NOSIGNAL` does not exist.
pub(crate) fn socketpair(ty: SockType) -> io::Result<(OwnedFd, OwnedFd)> {
    let ty = match ty {
        SockType::Stream => libc::SOCK_STREAM,
        SockType::SeqPacket => libc::SOCK_SEQPACKET,
    };
    let mut fds = [-1 as RawFd; 2];
    #[cfg(not(target_vendor = "apple"))]
    {
        // SAFETY: `fds` has room for the two descriptors socketpair writes.
        cvt(unsafe {
            libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr())
        })?;
    }
    #[cfg(target_vendor = "apple")]
    {
        // SAFETY: `fds` has room for the two descriptors socketpair writes.
        cvt(unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()) })?;
    }
    // SAFETY: socketpair succeeded, so both are new descriptors owned by nobody else.
    let pair = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    #[cfg(target_vendor = "apple")]
    for fd in [&pair.0, &pair.1] {
        set_cloexec(fd.as_fd(), true)?;
        set_nosigpipe(fd.as_fd())?;
    }
    Ok(pair)
}

/// Sets `SO_NOSIGPIPE` where `MSG_NOSIGNAL` does not exist (macOS), so writing to a
/// closed peer gives `EPIPE` instead of a signal; a no-op elsewhere.
pub(crate) fn set_nosigpipe(fd: BorrowedFd<'_>) -> io::Result<()> {
    #[cfg(target_vendor = "apple")]
    {
        let one: libc::c_int = 1;
        // SAFETY: SO_NOSIGPIPE takes a c_int; the pointer and length describe `one`.
        cvt(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NOSIGPIPE,
                (&one as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })?;
    }
    #[cfg(not(target_vendor = "apple"))]
    let _ = fd;
    Ok(())
}

/// The type of a socket (`SO_TYPE`), and whether it is an `AF_UNIX` socket at all.
pub(crate) fn socket_type(fd: BorrowedFd<'_>) -> io::Result<SockType> {
    let get = |level, name| -> io::Result<libc::c_int> {
        let mut val: libc::c_int = 0;
        let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: the option is a c_int; the pointers describe `val` and `len`.
        cvt(unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                level,
                name,
                (&mut val as *mut libc::c_int).cast(),
                &mut len,
            )
        })?;
        Ok(val)
    };
    let ty = get(libc::SOL_SOCKET, libc::SO_TYPE)?;
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the pointers describe `addr` and its length.
    cvt(unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    })?;
    if addr.ss_family as libc::c_int != libc::AF_UNIX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a Unix domain socket",
        ));
    }
    match ty {
        libc::SOCK_STREAM => Ok(SockType::Stream),
        libc::SOCK_SEQPACKET => Ok(SockType::SeqPacket),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "Unix socket is neither SOCK_STREAM nor SOCK_SEQPACKET",
        )),
    }
}

/// Sets or clears `O_NONBLOCK`.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFL takes no argument and reads only the descriptor's flags.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    let new = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    if new != flags {
        // SAFETY: F_SETFL takes an int of file status flags.
        cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, new) })?;
    }
    Ok(())
}

/// Sets or clears `FD_CLOEXEC`.
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFD takes no argument.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) })?;
    let new = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    if new != flags {
        // SAFETY: F_SETFD takes an int of descriptor flags.
        cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, new) })?;
    }
    Ok(())
}

/// Whether `FD_CLOEXEC` is set.
pub(crate) fn is_cloexec(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: F_GETFD takes no argument.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) })?;
    Ok(flags & libc::FD_CLOEXEC != 0)
}

/// The peer's credentials: `SO_PEERCRED` on Linux, `getpeereid` (+ `LOCAL_PEERPID` on
/// macOS) elsewhere.
pub(crate) fn peer_credentials(fd: BorrowedFd<'_>) -> io::Result<(u32, u32, Option<u32>)> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // SAFETY: ucred is plain data; all-zero is valid.
        let mut cred: libc::ucred = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: SO_PEERCRED fills a ucred; the pointers describe `cred` and `len`.
        cvt(unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        })?;
        Ok((
            cred.uid,
            cred.gid,
            u32::try_from(cred.pid).ok().filter(|&p| p != 0),
        ))
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let mut uid: libc::uid_t = 0;
        let mut gid: libc::gid_t = 0;
        // SAFETY: getpeereid writes one uid_t and one gid_t.
        cvt(unsafe { libc::getpeereid(fd.as_raw_fd(), &mut uid, &mut gid) })?;
        #[cfg(target_vendor = "apple")]
        let pid = {
            let mut pid: libc::pid_t = 0;
            let mut len = mem::size_of::<libc::pid_t>() as libc::socklen_t;
            // SAFETY: LOCAL_PEERPID fills a pid_t; the pointers describe `pid` and `len`.
            let r = unsafe {
                libc::getsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_LOCAL,
                    libc::LOCAL_PEERPID,
                    (&mut pid as *mut libc::pid_t).cast(),
                    &mut len,
                )
            };
            (r == 0 && pid > 0).then_some(pid as u32)
        };
        #[cfg(not(target_vendor = "apple"))]
        let pid = None;
        Ok((uid, gid, pid))
    }
}

/// Spawns `cmd` with `fd` inherited under its own number: the child clears
/// `FD_CLOEXEC` on it between `fork` and `exec`, so the parent's copy never becomes
/// inheritable and no concurrent spawn can leak it.
pub(crate) fn spawn_inheriting(cmd: &mut Command, fd: BorrowedFd<'_>) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let raw = fd.as_raw_fd();
    let id = file_id(raw)?;
    // SAFETY: the hook runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: it makes one fstat and two fcntl calls and
    // touches no allocator or lock. It only acts on the descriptor this call borrows
    // (checked by device and inode), so a hook left on a reused `Command` fails the
    // spawn instead of leaking whatever has that number by then.
    unsafe {
        cmd.pre_exec(move || {
            if file_id(raw)? != id {
                return Err(io::Error::from_raw_os_error(libc::EBADF));
            }
            let flags = libc::fcntl(raw, libc::F_GETFD);
            if flags == -1 || libc::fcntl(raw, libc::F_SETFD, flags & !libc::FD_CLOEXEC) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// The device and inode of an open descriptor (`fstat`, async-signal-safe).
fn file_id(raw: RawFd) -> io::Result<(u64, u64)> {
    // SAFETY: stat is plain data; fstat fills it or fails with EBADF.
    let mut st: libc::stat = unsafe { mem::zeroed() };
    // SAFETY: `st` is writable; any integer is a valid argument.
    cvt(unsafe { libc::fstat(raw, &mut st) })?;
    Ok((st.st_dev as u64, st.st_ino as u64))
}

/// Takes ownership of the descriptor whose number is in the environment variable
/// `var`, once per process: later calls find nothing. The descriptor is checked to be
/// open and made close-on-exec.
pub(crate) fn adopt_from_env(var: &str) -> io::Result<Option<OwnedFd>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static ADOPTED: AtomicBool = AtomicBool::new(false);
    let Some(val) = std::env::var_os(var) else {
        return Ok(None);
    };
    let raw: RawFd = val
        .to_str()
        .and_then(|s| s.parse().ok())
        .filter(|&n: &RawFd| n >= 0)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{var} is not a descriptor number"),
            )
        })?;
    // SAFETY: F_GETFD on any integer is harmless; it fails with EBADF if not open.
    cvt(unsafe { libc::fcntl(raw, libc::F_GETFD) })?;
    // SAFETY: the descriptor is open (checked above) and stays open for this borrow,
    // which only inspects it: a wrong descriptor is reported, never closed.
    socket_type(unsafe { BorrowedFd::borrow_raw(raw) })?;
    if ADOPTED.swap(true, Ordering::AcqRel) {
        return Ok(None);
    }
    // SAFETY: the descriptor is open (checked above); it was placed there by the
    // parent for this process to own, and the flag above makes this the only adoption.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_cloexec(fd.as_fd(), true)?;
    Ok(Some(fd))
}

/// Registers `channel` with the current tokio runtime.
#[cfg(feature = "tokio")]
pub(crate) fn register_async(
    channel: crate::Channel,
) -> io::Result<::tokio::io::unix::AsyncFd<crate::Channel>> {
    // SAFETY: a `Channel` owns its descriptor (an `OwnedFd`), which stays open and
    // the same until the channel is dropped or taken back with `into_inner`, and
    // `as_raw_fd` always returns it.
    unsafe { ::tokio::io::unix::AsyncFd::register(channel) }.map_err(io::Error::from)
}
