//! Listening sockets: a plain one with a server's backlog, and `SO_REUSEPORT` groups
//! for the lock-free strategies.

use std::io;
use std::net::{SocketAddr, TcpListener};

/// A TCP listener bound to `addr` for a server: close-on-exec, `SO_REUSEADDR` on
/// Unix (a restarted server binds again while old connections linger in
/// `TIME_WAIT`), and a backlog of 1024 where std's `TcpListener::bind` asks for 128 —
/// a burst of connections waits in the kernel's queue instead of retrying its `SYN`
/// a second later.
///
/// # Errors
///
/// What `socket`, `setsockopt`, `bind` and `listen` return.
///
/// # Examples
///
/// ```
/// let l = herder_pool::tcp_listener("127.0.0.1:0".parse().unwrap())?;
/// assert!(l.local_addr()?.port() != 0);
/// # Ok::<(), std::io::Error>(())
/// ```
#[doc(alias = "listen")]
pub fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Has `listener` hand out a new connection only once the client's first bytes have
/// arrived, so that the first read of an accepted connection finds its request: a
/// worker serves it in one wake-up instead of two, which under load takes 30–50 %
/// off the hand-off server's CPU per new connection (`docs/performance.md`). Call it on a
/// listening socket (bound and listening, as [`tcp_listener`] returns it). A
/// listener that defers already (set by systemd's `DeferAcceptSec=`, or passed on
/// by an upgrading supervisor) is left as it is, so calling this again is harmless.
///
/// Only for protocols in which the client speaks first, such as HTTP: a client that
/// connects and waits for the server is accepted only when the kernel gives up
/// holding it back (Linux: after about a second), and one that has sent nothing
/// yet when the listener is closed (a graceful stop) is refused, since the server
/// never had it. Connections are then counted, and their idle timeouts start, from
/// their first bytes.
///
/// # Errors
///
/// `Unsupported` where the system has no such option (macOS, Windows); what
/// `setsockopt` returns otherwise (FreeBSD: `NotFound` until the `accf_data`
/// kernel module is loaded, `InvalidInput` if the listener has another accept
/// filter).
///
/// # Portability
///
/// Linux: `TCP_DEFER_ACCEPT` (one second). FreeBSD, DragonFly and NetBSD: the
/// `dataready` accept filter (`SO_ACCEPTFILTER`).
///
/// # Examples
///
/// ```
/// let l = herder_pool::tcp_listener("127.0.0.1:0".parse().unwrap())?;
/// # #[cfg(target_os = "linux")]
/// herder_pool::defer_accept(&l)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[doc(alias = "TCP_DEFER_ACCEPT")]
#[doc(alias = "SO_ACCEPTFILTER")]
pub fn defer_accept(listener: &TcpListener) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        crate::sys::defer_accept(listener.as_fd())
    }
    #[cfg(not(unix))]
    {
        let _ = listener;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "deferred accept is not available on this platform",
        ))
    }
}

/// A TCP listener bound to `addr` with `SO_REUSEPORT` (and `SO_REUSEADDR`), close-on-exec
/// and non-blocking, with a backlog of 1024: one of a group in which the kernel spreads
/// new connections over the members. Give each slot its own with
/// [`Pool::set_slot_listeners`](crate::Pool::set_slot_listeners), all bound to the same
/// address (the first may pick the port: bind it to port 0 and bind the rest to the
/// address it got).
///
/// # Errors
///
/// What `socket`, `setsockopt`, `bind` and `listen` return (`EADDRINUSE` if a socket
/// without `SO_REUSEPORT`, or of another user, holds the address).
///
/// # Portability
///
/// Linux balances the group by a hash of each connection. FreeBSD needs
/// `SO_REUSEPORT_LB` for that, macOS does not balance; on Windows this fails with
/// `Unsupported`.
///
/// # Examples
///
/// ```
/// # #[cfg(unix)] {
/// let a = herder_pool::reuseport_listener("127.0.0.1:0".parse().unwrap())?;
/// let b = herder_pool::reuseport_listener(a.local_addr()?)?;
/// assert_eq!(a.local_addr()?, b.local_addr()?);
/// # }
/// # Ok::<(), std::io::Error>(())
/// ```
#[doc(alias = "SO_REUSEPORT")]
pub fn reuseport_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    #[cfg(all(unix, not(target_os = "solaris"), not(target_os = "illumos")))]
    {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(socket.into())
    }
    #[cfg(not(all(unix, not(target_os = "solaris"), not(target_os = "illumos"))))]
    {
        let _ = addr;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "SO_REUSEPORT is not available here",
        ))
    }
}
