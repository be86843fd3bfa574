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
