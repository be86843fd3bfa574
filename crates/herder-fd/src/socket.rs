//! Sockets as hand-off cargo: which types can travel, and what arrives.

use crate::handoff::SocketKind;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
#[cfg(unix)]
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};

mod sealed {
    pub trait Sealed {}
}

/// A socket type that can be handed to another process with
/// [`Channel::send_socket`](crate::Channel::send_socket). Sealed: implemented for the
/// standard library's socket types.
pub trait Transfer: sealed::Sealed {
    /// The kind written into the header, so the receiver rebuilds the same type.
    const KIND: SocketKind;
}

macro_rules! transfer {
    ($($(#[$m:meta])* $ty:ident),*) => {$(
        $(#[$m])*
        impl sealed::Sealed for $ty {}
        $(#[$m])*
        impl Transfer for $ty {
            const KIND: SocketKind = SocketKind::$ty;
        }
    )*};
}

transfer!(TcpStream, TcpListener, UdpSocket);
transfer!(
    #[cfg(unix)]
    UnixStream,
    #[cfg(unix)]
    UnixListener,
    #[cfg(unix)]
    UnixDatagram
);

/// A socket received from another process, typed after the kind the sender declared.
///
/// The kind is the sender's word: the descriptor is not inspected further. Only accept
/// sockets from peers you trust ([`peer_credentials`](crate::peer_credentials)).
#[derive(Debug)]
#[non_exhaustive]
pub enum Socket {
    /// A connected TCP socket.
    TcpStream(TcpStream),
    /// A listening TCP socket.
    TcpListener(TcpListener),
    /// A UDP socket.
    UdpSocket(UdpSocket),
    /// A connected Unix stream socket.
    #[cfg(unix)]
    UnixStream(UnixStream),
    /// A listening Unix socket.
    #[cfg(unix)]
    UnixListener(UnixListener),
    /// A Unix datagram socket.
    #[cfg(unix)]
    UnixDatagram(UnixDatagram),
}

/// A socket as the operating system hands it over.
#[cfg(unix)]
pub(crate) type RawOwned = std::os::fd::OwnedFd;
/// A socket as the operating system hands it over.
#[cfg(windows)]
pub(crate) type RawOwned = std::os::windows::io::OwnedSocket;

impl Socket {
    /// The socket of `kind` made from `raw`; `None` for a kind this platform does not
    /// have (Unix sockets on Windows), in which case `raw` is closed.
    pub(crate) fn from_kind(kind: SocketKind, raw: RawOwned) -> Option<Socket> {
        Some(match kind {
            SocketKind::TcpStream => Socket::TcpStream(raw.into()),
            SocketKind::TcpListener => Socket::TcpListener(raw.into()),
            SocketKind::UdpSocket => Socket::UdpSocket(raw.into()),
            #[cfg(unix)]
            SocketKind::UnixStream => Socket::UnixStream(raw.into()),
            #[cfg(unix)]
            SocketKind::UnixListener => Socket::UnixListener(raw.into()),
            #[cfg(unix)]
            SocketKind::UnixDatagram => Socket::UnixDatagram(raw.into()),
            #[allow(unreachable_patterns)]
            _ => return None,
        })
    }

    /// The socket as a [`TcpStream`], or `self` back if it is another kind. With
    /// [`Received`]'s public fields, a receiver keeps the header and takes the
    /// stream: `let Received { id, peer, data, socket } = got;` then
    /// `socket.into_tcp_stream()`.
    ///
    /// # Errors
    ///
    /// Returns `self` unchanged when the socket is not a `TcpStream`.
    pub fn into_tcp_stream(self) -> Result<TcpStream, Socket> {
        match self {
            Socket::TcpStream(s) => Ok(s),
            other => Err(other),
        }
    }

    /// The kind of socket this is.
    pub fn kind(&self) -> SocketKind {
        match self {
            Socket::TcpStream(_) => SocketKind::TcpStream,
            Socket::TcpListener(_) => SocketKind::TcpListener,
            Socket::UdpSocket(_) => SocketKind::UdpSocket,
            #[cfg(unix)]
            Socket::UnixStream(_) => SocketKind::UnixStream,
            #[cfg(unix)]
            Socket::UnixListener(_) => SocketKind::UnixListener,
            #[cfg(unix)]
            Socket::UnixDatagram(_) => SocketKind::UnixDatagram,
        }
    }
}

/// A socket received with [`Channel::recv_socket`](crate::Channel::recv_socket), with the
/// header its sender attached.
#[derive(Debug)]
pub struct Received {
    /// The sender's identifier for it.
    pub id: u64,
    /// The remote address of the connection, if the sender gave one.
    pub peer: Option<SocketAddr>,
    /// Bytes the sender had already read from the connection.
    pub data: Vec<u8>,
    /// The socket itself, close-on-exec.
    pub socket: Socket,
}

impl Received {
    /// The socket as a [`TcpStream`], or `self` back if it is another kind.
    ///
    /// # Errors
    ///
    /// Returns `self` unchanged when the socket is not a `TcpStream`.
    #[allow(clippy::result_large_err)]
    pub fn into_tcp_stream(self) -> Result<TcpStream, Received> {
        let Received {
            id,
            peer,
            data,
            socket,
        } = self;
        socket.into_tcp_stream().map_err(|socket| Received {
            id,
            peer,
            data,
            socket,
        })
    }
}
