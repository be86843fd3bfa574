//! Descriptors and sockets across process boundaries.
//!
//! herder-fd owns every byte and descriptor that crosses from one process to another
//! in herder: `sendmsg`/`recvmsg` with `SCM_RIGHTS` on Unix, `WSADuplicateSocketW` on
//! Windows, the framing of messages, peer credentials and close-on-exec. It knows
//! nothing of event loops, processes or policies.
//!
//! - [`Channel`] (Unix) sends messages — a byte payload plus up to
//!   [`MAX_FDS_PER_MESSAGE`] descriptors — over a Unix socket and receives them whole,
//!   in order, each descriptor an [`OwnedFd`](std::os::fd::OwnedFd) with close-on-exec
//!   set. [`Channel::pair_for_child`] makes a channel for a child process without
//!   letting the descriptor leak into any other child.
//! - [`Channel::send_socket`] / [`Channel::recv_socket`] hand over a typed socket
//!   ([`TcpStream`](std::net::TcpStream), listeners, Unix sockets) with a [`Handoff`]
//!   header: a connection id, the peer address and bytes already read.
//! - [`send_fds`] / [`recv_fds`] are the bare system calls, leak-free, for callers with
//!   their own protocol; [`peer_credentials`] tells who is at the other end.
//! - On Windows, `Channel` runs over a byte stream to a known process: a socket is
//!   duplicated for that process (`WSADuplicateSocketW`), carried with the same
//!   [`Handoff`] header, rebuilt there and acknowledged, through the same
//!   `send_socket` / `recv_socket` calls as on Unix.
//! - On Unix, a receiver at its descriptor limit loses the descriptors of what it
//!   receives (`MSG_CTRUNC`). `Channel::recv_lossy` returns such a message anyway,
//!   without descriptors but with its payload (`Message::lost_fds`,
//!   `Message::handoff_ids`), so the receiver can tell the sender which hand-offs
//!   never arrived.
//!
//! # Errors
//!
//! Every function returns [`std::io::Error`]. Failures that are not the operating
//! system's own — truncation, too many descriptors, malformed frames — travel inside
//! it as an [`Error`] ([`Error::of`]). Whenever a receive fails, the descriptors that
//! had arrived with the failed message are closed: nothing leaks.
//!
//! # Portability
//!
//! | | Linux, Android | FreeBSD, NetBSD, OpenBSD, DragonFly | macOS, iOS | Windows |
//! |---|---|---|---|---|
//! | default [`ChannelKind`] | `SOCK_SEQPACKET` | `SOCK_SEQPACKET` | `SOCK_STREAM`, framed | byte stream, framed |
//! | close-on-exec on receipt | atomic (`MSG_CMSG_CLOEXEC`) | atomic (`MSG_CMSG_CLOEXEC`) | `fcntl` right after `recvmsg` | sockets rebuilt with `WSA_FLAG_NO_HANDLE_INHERIT` |
//! | descriptors per message | 253 (`SCM_MAX_FD`) | 253 (herder's limit) | 253 (herder's limit) | one socket per message |
//! | receiver's descriptor table full | `MSG_CTRUNC`: those that fit are closed, the rest dropped → [`Error::ControlTruncated`] | `MSG_CTRUNC`: the kernel closes them all → [`Error::ControlTruncated`] | `EMSGSIZE`: the kernel drops them all → [`Error::ControlTruncated`] | `WSASocketW` fails in the receiver; the sender gets the error back |
//! | `SIGPIPE` on a closed peer | never (`MSG_NOSIGNAL`) | never (`MSG_NOSIGNAL`) | never on a [`Channel`] (`SO_NOSIGPIPE`); set it yourself for [`send_fds`] | n/a |
//! | channel pair close-on-exec | atomic (`SOCK_CLOEXEC`) | atomic (`SOCK_CLOEXEC`) | `fcntl` right after `socketpair` | n/a |
//! | peer credentials | uid, gid, pid (`SO_PEERCRED`) | uid, gid (`getpeereid`) | uid, gid, pid (`getpeereid`, `LOCAL_PEERPID`) | n/a |

// No panics on request paths: library code handles every error; the invariants it
// relies on instead are stated where they are (`#[expect]` with a reason).
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod frame;
mod handoff;
mod message;
mod socket;

pub use error::Error;
pub use handoff::{Handoff, SocketKind};
pub use message::Message;
pub use socket::{Received, Socket, Transfer};

#[cfg_attr(unix, path = "sys/unix.rs")]
#[cfg_attr(windows, path = "sys/windows.rs")]
mod sys;

#[cfg(unix)]
mod channel;
#[cfg(unix)]
pub use channel::{
    CHANNEL_ENV, Channel, ChannelKind, ChildEnd, DEFAULT_MAX_PAYLOAD, MAX_FDS_PER_MESSAGE,
    PeerCredentials, is_cloexec, peer_credentials, recv_fds, send_fds,
};

#[cfg(all(unix, feature = "tokio"))]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod tokio;

#[cfg(windows)]
mod channel_windows;
#[cfg(windows)]
pub use channel_windows::{Channel, DEFAULT_MAX_PAYLOAD, Duplex, MAX_SOCKETS_PER_MESSAGE};

#[cfg(not(any(unix, windows)))]
compile_error!("herder-fd supports Unix and Windows only");

/// The README's examples, compiled as doctests.
#[cfg(all(doctest, unix))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
