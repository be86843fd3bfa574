//! [`Channel`]: messages of bytes and descriptors over a Unix domain socket.

use crate::Message;
use crate::error::Error;
use crate::frame::{HEADER_LEN, Header};
use crate::handoff::Handoff;
use crate::socket::{Received, Transfer};
use crate::sys::{self, SockType};
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::process::{Child, Command};

/// The most descriptors one message may carry: 253, Linux's `SCM_MAX_FD`.
///
/// A message with more is refused before any system call with
/// [`Error::TooManyFds`]; split larger sets over several messages.
///
/// # Portability
///
/// Linux refuses more than 253 per `sendmsg` (`EINVAL`); FreeBSD, macOS and the other
/// BSDs accept at least as many, so herder-fd applies the same limit everywhere.
pub const MAX_FDS_PER_MESSAGE: usize = sys::MAX_FDS;

/// The default largest payload a [`Channel`] sends or accepts: 64 KiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024;

/// The environment variable through which [`ChildEnd::spawn`] tells a child the number
/// of its channel descriptor, and which [`Channel::from_env`] reads.
pub const CHANNEL_ENV: &str = "HERDER_CHANNEL_FD";

/// One end of a message channel over a Unix domain socket: each message is a byte
/// payload with up to [`MAX_FDS_PER_MESSAGE`] descriptors, received whole, in order.
///
/// On `SOCK_SEQPACKET` sockets (the default on Linux and the BSDs) one message is one
/// packet; on `SOCK_STREAM` sockets (the default on macOS, which has no Unix
/// seqpacket) messages are framed with an 8-byte header and the descriptors ride on
/// the header's first byte. The wire format is the same on both.
///
/// Every received descriptor is an [`OwnedFd`] with close-on-exec set. When a message
/// cannot be delivered whole (control data truncated, a full descriptor table, a
/// malformed frame), the descriptors that did arrive are closed and a distinct
/// [`Error`] is returned inside the [`io::Error`].
///
/// # Blocking and non-blocking use
///
/// A channel follows its socket's `O_NONBLOCK` flag ([`Channel::set_nonblocking`]).
/// Non-blocking, [`send`](Channel::send) and [`recv`](Channel::recv) return
/// [`io::ErrorKind::WouldBlock`] when they cannot go on, and the socket
/// ([`AsFd`]) can be registered in an event loop. `EINTR` is retried; every other
/// error (`ENOBUFS`, `ETOOMANYREFS`, `EPIPE`, …) is returned as is. A stream channel
/// may accept a message of which the kernel took only a part: the rest is kept and
/// written by the next `send` or [`flush`](Channel::flush), before anything else.
///
/// # Examples
///
/// ```
/// use herder_fd::Channel;
/// use std::io::{Read, Write};
///
/// let (mut a, mut b) = Channel::pair()?;
/// let (mut left, right) = std::os::unix::net::UnixStream::pair()?;
///
/// a.send(b"here is a socket", &[right.as_fd()])?;
/// drop(right); // the receiver has its own copy now
///
/// let msg = b.recv()?.expect("a message");
/// assert_eq!(msg.payload(), b"here is a socket");
/// let mut fds = msg.into_fds();
/// let mut right = std::os::unix::net::UnixStream::from(fds.pop().unwrap());
/// right.write_all(b"hi")?;
/// let mut buf = [0; 2];
/// left.read_exact(&mut buf)?;
/// assert_eq!(&buf, b"hi");
/// # use std::os::fd::AsFd;
/// # Ok::<(), std::io::Error>(())
/// ```
#[doc(alias = "sendmsg")]
#[doc(alias = "recvmsg")]
#[doc(alias = "SCM_RIGHTS")]
pub struct Channel {
    fd: OwnedFd,
    ty: SockType,
    max_payload: usize,
    /// Receive buffer; `rbuf[rstart..rend]` holds bytes not yet returned (stream only).
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    /// Descriptors received ahead of the frame they belong to (stream only).
    fdq: VecDeque<OwnedFd>,
    /// The unsent tail of a message the kernel took part of (stream only).
    pending: Vec<u8>,
    /// Set when a stream lost its framing; every later receive fails.
    broken: bool,
}

/// Unix: a message's descriptors.
impl Message {
    /// The descriptors, in the order they were sent.
    pub fn fds(&self) -> &[OwnedFd] {
        &self.fds
    }

    /// Takes the payload and the descriptors.
    pub fn into_parts(self) -> (Vec<u8>, Vec<OwnedFd>) {
        (self.payload, self.fds)
    }

    /// Takes the descriptors, dropping the payload.
    pub fn into_fds(self) -> Vec<OwnedFd> {
        self.fds
    }
}

impl Channel {
    /// Creates a connected pair of channels with `socketpair(2)`: `SOCK_SEQPACKET`
    /// where the system has it, `SOCK_STREAM` on macOS. Both ends are close-on-exec.
    ///
    /// # Errors
    ///
    /// What `socketpair(2)` returns (`EMFILE`, `ENFILE`, …).
    ///
    /// # Examples
    ///
    /// ```
    /// let (mut a, mut b) = herder_fd::Channel::pair()?;
    /// a.send(b"", &[])?; // an empty message is a message
    /// assert_eq!(b.recv()?.unwrap().payload(), b"");
    /// drop(a);
    /// assert!(b.recv()?.is_none()); // end of stream
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "socketpair")]
    pub fn pair() -> io::Result<(Channel, Channel)> {
        Self::pair_of(ChannelKind::default())
    }

    /// Creates a connected pair of channels of the given kind.
    ///
    /// # Errors
    ///
    /// What `socketpair(2)` returns; `EPROTONOSUPPORT` or similar for
    /// [`ChannelKind::SeqPacket`] on macOS.
    pub fn pair_of(kind: ChannelKind) -> io::Result<(Channel, Channel)> {
        let (a, b) = sys::socketpair(kind.into())?;
        Ok((
            Channel::with_type(a, kind.into()),
            Channel::with_type(b, kind.into()),
        ))
    }

    /// Creates a pair for a parent and the child it is about to spawn: the parent's
    /// end, and a [`ChildEnd`] that only becomes inheritable inside the child.
    ///
    /// # Errors
    ///
    /// As [`Channel::pair`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use herder_fd::Channel;
    /// use std::process::Command;
    ///
    /// // Parent:
    /// let (mut parent, child_end) = Channel::pair_for_child()?;
    /// let mut child = child_end.spawn(&mut Command::new(std::env::current_exe()?))?;
    /// parent.send(b"hello", &[])?;
    ///
    /// // Child, at the top of main:
    /// if let Some(mut ch) = Channel::from_env()? {
    ///     let msg = ch.recv()?;
    /// }
    /// # child.wait()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn pair_for_child() -> io::Result<(Channel, ChildEnd)> {
        let (parent, child) = Channel::pair()?;
        Ok((parent, ChildEnd { channel: child }))
    }

    /// Adopts the channel a parent passed with [`ChildEnd::spawn`]: reads the
    /// descriptor number from [`CHANNEL_ENV`], checks that it is an open Unix socket,
    /// and sets close-on-exec on it so it goes no further. Returns `Ok(None)` when the
    /// variable is not set, or when the channel was adopted already in this process.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] if the variable does not hold a descriptor
    /// number or the descriptor is not a Unix stream or seqpacket socket; `EBADF` if it
    /// is not open.
    pub fn from_env() -> io::Result<Option<Channel>> {
        match sys::adopt_from_env(CHANNEL_ENV)? {
            Some(fd) => Channel::new(fd).map(Some),
            None => Ok(None),
        }
    }

    /// Wraps a connected Unix socket (stream or seqpacket) as a channel.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] if `fd` is not an `AF_UNIX` socket of type
    /// `SOCK_STREAM` or `SOCK_SEQPACKET`.
    pub fn new(fd: OwnedFd) -> io::Result<Channel> {
        let ty = sys::socket_type(fd.as_fd())?;
        sys::set_nosigpipe(fd.as_fd())?;
        Ok(Channel::with_type(fd, ty))
    }

    fn with_type(fd: OwnedFd, ty: SockType) -> Channel {
        Channel {
            fd,
            ty,
            max_payload: DEFAULT_MAX_PAYLOAD,
            rbuf: Vec::new(),
            rstart: 0,
            rend: 0,
            fdq: VecDeque::new(),
            pending: Vec::new(),
            broken: false,
        }
    }

    /// The socket type under this channel.
    pub fn kind(&self) -> ChannelKind {
        match self.ty {
            SockType::Stream => ChannelKind::Stream,
            SockType::SeqPacket => ChannelKind::SeqPacket,
        }
    }

    /// Sets the largest payload this end sends and accepts (default
    /// [`DEFAULT_MAX_PAYLOAD`]). Both ends should agree. A seqpacket channel's
    /// receive buffer is this size plus 8 bytes, allocated on the first receive.
    pub fn set_max_payload(&mut self, max: usize) {
        self.max_payload = max.min(u32::MAX as usize).min(isize::MAX as usize / 4);
    }

    /// The largest payload this end sends and accepts.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Sets or clears `O_NONBLOCK` on the socket.
    ///
    /// # Errors
    ///
    /// What `fcntl(2)` returns.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        sys::set_nonblocking(self.fd.as_fd(), nonblocking)
    }

    /// The credentials of the process at the other end, as the kernel recorded them
    /// when the socket was connected. For a pair from [`Channel::pair`] that is the
    /// process that created the pair, also at the child's end.
    ///
    /// # Errors
    ///
    /// What `getsockopt(2)` / `getpeereid(3)` returns.
    pub fn peer_credentials(&self) -> io::Result<PeerCredentials> {
        peer_credentials(&self.fd)
    }

    /// Whether a part of an earlier message is still waiting to be written (stream
    /// channels only; see [`flush`](Channel::flush)).
    pub fn has_pending_output(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes what is left of a partly sent message.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::WouldBlock`] if the socket is non-blocking and full; what
    /// `sendmsg(2)` returns.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            let n = sys::send_msg(self.fd.as_fd(), &[IoSlice::new(&self.pending)], &[])?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.pending.drain(..n);
        }
        Ok(())
    }

    /// Sends one message: `payload` with `fds` attached. `Ok` means the kernel has the
    /// descriptors: the caller may close its copies.
    ///
    /// # Errors
    ///
    /// - [`Error::TooManyFds`] for more than [`MAX_FDS_PER_MESSAGE`] descriptors and
    ///   [`Error::MessageTooLarge`] for a payload over [`max_payload`](Self::max_payload),
    ///   both before any system call;
    /// - [`io::ErrorKind::WouldBlock`] when non-blocking and the socket is full; nothing
    ///   of this message was sent;
    /// - what `sendmsg(2)` returns otherwise: `EPIPE` when the peer is gone (never a
    ///   `SIGPIPE`), `ENOBUFS`, `ETOOMANYREFS` (too many descriptors in flight), …
    ///
    /// # Examples
    ///
    /// ```
    /// use std::os::fd::AsFd;
    /// let (mut a, mut b) = herder_fd::Channel::pair()?;
    /// let file = tempfile::tempfile()?;
    /// a.send(b"one file", &[file.as_fd()])?;
    /// assert_eq!(b.recv()?.unwrap().fds().len(), 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "sendmsg")]
    pub fn send(&mut self, payload: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if fds.len() > MAX_FDS_PER_MESSAGE {
            return Err(Error::TooManyFds {
                count: fds.len(),
                max: MAX_FDS_PER_MESSAGE,
            }
            .into());
        }
        if payload.len() > self.max_payload {
            return Err(Error::MessageTooLarge {
                len: payload.len(),
                max: self.max_payload,
            }
            .into());
        }
        self.flush()?;
        let header = Header {
            flags: 0,
            nfds: fds.len(),
            len: payload.len(),
        }
        .encode();
        let total = HEADER_LEN + payload.len();
        let n = sys::send_msg(
            self.fd.as_fd(),
            &[IoSlice::new(&header), IoSlice::new(payload)],
            fds,
        )?;
        if n < total {
            if self.ty == SockType::SeqPacket {
                // A packet is all or nothing; the kernel never does this.
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "short write on a seqpacket socket",
                ));
            }
            // The descriptors went with the first byte; keep the rest for later.
            let header_left = HEADER_LEN.saturating_sub(n);
            self.pending
                .extend_from_slice(&header[HEADER_LEN - header_left..]);
            self.pending
                .extend_from_slice(&payload[n.saturating_sub(HEADER_LEN)..]);
            // The message is committed: a failure to write the rest now is reported
            // by the next `send` or `flush`, never as a failure of this message,
            // which a retry would duplicate.
            let _ = self.flush();
        }
        Ok(())
    }

    /// Receives the next message. `Ok(None)` means the peer closed the channel at a
    /// message boundary.
    ///
    /// # Errors
    ///
    /// - [`io::ErrorKind::WouldBlock`] when non-blocking and no whole message is there;
    ///   on a stream the bytes already read are kept for the next call;
    /// - [`Error::ControlTruncated`] when the kernel dropped descriptors (this process's
    ///   descriptor table was full); [`Error::PayloadTruncated`],
    ///   [`Error::MessageTooLarge`], [`Error::TooManyFds`], [`Error::Malformed`] and
    ///   [`Error::FdCountMismatch`] for a message this end cannot accept. In each case
    ///   the descriptors that arrived with it are closed. A seqpacket channel goes on
    ///   with the next message; a stream channel is broken from then on;
    /// - [`io::ErrorKind::UnexpectedEof`] when the peer closed a stream mid-message;
    /// - what `recvmsg(2)` returns otherwise.
    #[doc(alias = "recvmsg")]
    pub fn recv(&mut self) -> io::Result<Option<Message>> {
        let mut msg = Message::default();
        Ok(self
            .recv_into(&mut msg.payload, &mut msg.fds)?
            .then_some(msg))
    }

    /// Receives the next message into buffers the caller reuses: the payload replaces
    /// the contents of `payload`, the descriptors are appended to `fds`. Returns
    /// `false` at end of stream. Errors as [`recv`](Self::recv).
    pub fn recv_into(&mut self, payload: &mut Vec<u8>, fds: &mut Vec<OwnedFd>) -> io::Result<bool> {
        match self.ty {
            SockType::SeqPacket => self.recv_packet(payload, fds, None),
            SockType::Stream => self.recv_stream(payload, fds),
        }
    }

    /// Receives the next message as [`recv`](Self::recv) does, except that on a
    /// seqpacket channel a message whose descriptors the kernel dropped because this
    /// process's descriptor table is full (`MSG_CTRUNC`) is returned rather than
    /// reported as [`Error::ControlTruncated`]: without descriptors (those that did
    /// arrive are closed), with its payload, and with
    /// [`Message::lost_fds`] saying how many the sender attached. A receiver at its
    /// descriptor limit can then tell the sender which message it could not take
    /// ([`Message::handoff_ids`]) instead of the sender waiting for an answer that
    /// never comes.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv). On a stream channel (macOS) a truncation still
    /// breaks the stream and is returned as [`Error::ControlTruncated`]: the
    /// descriptors ride ahead of their frames there, so which message lost them is
    /// not known.
    pub fn recv_lossy(&mut self) -> io::Result<Option<Message>> {
        let mut msg = Message::default();
        let got = match self.ty {
            SockType::SeqPacket => {
                self.recv_packet(&mut msg.payload, &mut msg.fds, Some(&mut msg.lost))?
            }
            SockType::Stream => self.recv_stream(&mut msg.payload, &mut msg.fds)?,
        };
        Ok(got.then_some(msg))
    }

    /// Receives one packet. With `lost`, a packet whose descriptors the kernel
    /// dropped is returned without them and `lost` set to how many its header
    /// announced; without, it is an error.
    fn recv_packet(
        &mut self,
        payload: &mut Vec<u8>,
        fds: &mut Vec<OwnedFd>,
        lost: Option<&mut usize>,
    ) -> io::Result<bool> {
        let cap = HEADER_LEN + self.max_payload;
        if self.rbuf.len() != cap {
            self.rbuf.resize(cap, 0);
        }
        let before = fds.len();
        let got = sys::recv_msg_reporting_loss(
            self.fd.as_fd(),
            &mut self.rbuf,
            fds,
            MAX_FDS_PER_MESSAGE,
        )?;
        let n = got.len;
        if let Some(received) = got.lost {
            // recv_msg_reporting_loss closed whatever arrived and appended nothing.
            let Some(lost) = lost else {
                return Err(Error::ControlTruncated { received }.into());
            };
            let h = Header::decode(&self.rbuf[..n], self.max_payload, MAX_FDS_PER_MESSAGE)?;
            if h.len != n - HEADER_LEN {
                return Err(Error::Malformed("frame length does not match the packet").into());
            }
            payload.clear();
            payload.extend_from_slice(&self.rbuf[HEADER_LEN..n]);
            // The header's count is what the sender attached; at least what arrived.
            *lost = h.nfds.max(received).max(1);
            return Ok(true);
        }
        if n == 0 {
            // Every message has a header, so zero bytes is end of file.
            fds.truncate(before);
            return Ok(false);
        }
        let checked = Header::decode(&self.rbuf[..n], self.max_payload, MAX_FDS_PER_MESSAGE)
            .and_then(|h| {
                let received = fds.len() - before;
                if h.len != n - HEADER_LEN {
                    Err(Error::Malformed("frame length does not match the packet").into())
                } else if h.nfds != received {
                    Err(Error::FdCountMismatch {
                        expected: h.nfds,
                        received,
                    }
                    .into())
                } else {
                    Ok(())
                }
            });
        if let Err(e) = checked {
            fds.truncate(before);
            return Err(e);
        }
        payload.clear();
        payload.extend_from_slice(&self.rbuf[HEADER_LEN..n]);
        Ok(true)
    }

    fn recv_stream(&mut self, payload: &mut Vec<u8>, fds: &mut Vec<OwnedFd>) -> io::Result<bool> {
        if self.broken {
            return Err(Error::Malformed("the stream lost its framing earlier").into());
        }
        loop {
            let avail = self.rend - self.rstart;
            if avail >= HEADER_LEN {
                let h = match Header::decode(
                    &self.rbuf[self.rstart..self.rend],
                    self.max_payload,
                    MAX_FDS_PER_MESSAGE,
                ) {
                    Ok(h) => h,
                    Err(e) => return Err(self.break_stream(e)),
                };
                if avail >= HEADER_LEN + h.len {
                    // The descriptors of a frame arrive with its first byte, so a
                    // complete frame finds all of its own in the queue; any beyond
                    // them can only belong to a later frame whose first byte was
                    // read already.
                    let end = self.rstart + HEADER_LEN + h.len;
                    let extra = self.fdq.len() > h.nfds && end == self.rend;
                    if self.fdq.len() < h.nfds || extra {
                        let received = self.fdq.len();
                        let e = Error::FdCountMismatch {
                            expected: h.nfds,
                            received,
                        };
                        return Err(self.break_stream(e.into()));
                    }
                    let start = self.rstart + HEADER_LEN;
                    payload.clear();
                    payload.extend_from_slice(&self.rbuf[start..start + h.len]);
                    fds.extend(self.fdq.drain(..h.nfds));
                    self.rstart = start + h.len;
                    if self.rstart == self.rend {
                        self.rstart = 0;
                        self.rend = 0;
                        if self.rbuf.len() > 2 * (HEADER_LEN + DEFAULT_MAX_PAYLOAD) {
                            // Give back a buffer a large message grew.
                            self.rbuf = Vec::new();
                        }
                    }
                    return Ok(true);
                }
                self.reserve_read(HEADER_LEN + h.len);
            } else {
                self.reserve_read(HEADER_LEN);
            }
            let n = match sys::recv_msg(
                self.fd.as_fd(),
                &mut self.rbuf[self.rend..],
                &mut self.fdq,
                MAX_FDS_PER_MESSAGE,
            ) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                // Anything else may have consumed bytes or descriptors.
                Err(e) => return Err(self.break_stream(e)),
            };
            if self.fdq.len() > 2 * MAX_FDS_PER_MESSAGE {
                // Only the frame being read and the one after it can have sent theirs.
                let received = self.fdq.len();
                return Err(self.break_stream(
                    Error::FdCountMismatch {
                        expected: MAX_FDS_PER_MESSAGE,
                        received,
                    }
                    .into(),
                ));
            }
            if n == 0 {
                if self.rend == self.rstart && self.fdq.is_empty() {
                    return Ok(false);
                }
                return Err(self.break_stream(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "channel closed in the middle of a message",
                )));
            }
            self.rend += n;
        }
    }

    /// Makes room after the unread bytes for a frame of `frame` bytes (at least 4 KiB
    /// of read space), moving the unread bytes to the front first, so the buffer is
    /// bounded by the largest frame, not by the traffic.
    fn reserve_read(&mut self, frame: usize) {
        let want = frame.max(4096);
        if self.rbuf.len() - self.rstart < want && self.rstart > 0 {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        if self.rbuf.len() < self.rstart + want {
            self.rbuf.resize(self.rstart + want, 0);
        }
    }

    fn break_stream(&mut self, e: io::Error) -> io::Error {
        self.broken = true;
        self.fdq.clear();
        self.rbuf = Vec::new();
        self.rstart = 0;
        self.rend = 0;
        e
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl From<Channel> for OwnedFd {
    /// The socket. Bytes read ahead or not yet written are lost.
    fn from(ch: Channel) -> OwnedFd {
        ch.fd
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("fd", &self.fd.as_raw_fd())
            .field("kind", &self.kind())
            .field("max_payload", &self.max_payload)
            .field("pending_output", &self.pending.len())
            .field("queued_fds", &self.fdq.len())
            .finish()
    }
}

/// The socket type a [`Channel`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// `SOCK_SEQPACKET`: one message per packet. Linux, FreeBSD and the other BSDs.
    SeqPacket,
    /// `SOCK_STREAM` with framing. Everywhere; the only kind on macOS.
    Stream,
}

impl Default for ChannelKind {
    /// `SeqPacket`, except on macOS and iOS where it is `Stream`.
    fn default() -> ChannelKind {
        if cfg!(target_vendor = "apple") {
            ChannelKind::Stream
        } else {
            ChannelKind::SeqPacket
        }
    }
}

impl From<ChannelKind> for SockType {
    fn from(k: ChannelKind) -> SockType {
        match k {
            ChannelKind::SeqPacket => SockType::SeqPacket,
            ChannelKind::Stream => SockType::Stream,
        }
    }
}

/// The child's end of a [`Channel::pair_for_child`] pair, until the child is spawned.
///
/// It stays close-on-exec in this process; only the spawned child gets it, under the
/// same descriptor number, named in its [`CHANNEL_ENV`] variable. Other children
/// spawned meanwhile by other threads never see it.
#[derive(Debug)]
pub struct ChildEnd {
    channel: Channel,
}

impl ChildEnd {
    /// Spawns `cmd` with this end inherited and [`CHANNEL_ENV`] set for that child
    /// only; then closes this process's copy. In the child, [`Channel::from_env`]
    /// adopts it.
    ///
    /// Use a fresh [`Command`] per spawn: the hook this adds stays on `cmd`, and a
    /// later spawn of the same `cmd` fails with `EBADF` rather than pass on whatever
    /// descriptor then has the number.
    ///
    /// # Errors
    ///
    /// What [`Command::spawn`] returns.
    pub fn spawn(self, cmd: &mut Command) -> io::Result<Child> {
        let fd = self.channel.fd.as_fd();
        cmd.env(CHANNEL_ENV, fd.as_raw_fd().to_string());
        sys::spawn_inheriting(cmd, fd)
    }
}

/// Who is at the other end of a Unix socket, as recorded by the kernel when the
/// connection was made (`connect`/`accept`, or `socketpair`, which records its caller
/// for both ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
    /// Process id, where the system reports it (Linux, macOS); `None` elsewhere.
    pub pid: Option<u32>,
}

/// The credentials of the process at the other end of the Unix socket `socket`.
///
/// # Errors
///
/// What `getsockopt(2)` or `getpeereid(3)` returns, e.g. `ENOTSOCK` or `ENOTCONN`.
///
/// # Portability
///
/// Linux and Android use `SO_PEERCRED` and report the pid; macOS uses `getpeereid` and
/// `LOCAL_PEERPID`; the BSDs use `getpeereid` and report no pid.
///
/// # Examples
///
/// ```
/// let (a, _b) = std::os::unix::net::UnixStream::pair()?;
/// let cred = herder_fd::peer_credentials(&a)?;
/// assert_eq!(cred.uid, unsafe { libc::geteuid() });
/// # Ok::<(), std::io::Error>(())
/// ```
#[doc(alias = "SO_PEERCRED")]
#[doc(alias = "getpeereid")]
pub fn peer_credentials(socket: impl AsFd) -> io::Result<PeerCredentials> {
    let (uid, gid, pid) = sys::peer_credentials(socket.as_fd())?;
    Ok(PeerCredentials { uid, gid, pid })
}

/// Whether `fd` has close-on-exec set (`FD_CLOEXEC`).
///
/// # Errors
///
/// What `fcntl(2)` returns.
pub fn is_cloexec(fd: impl AsFd) -> io::Result<bool> {
    sys::is_cloexec(fd.as_fd())
}

impl Channel {
    /// Sends a socket with its [`Handoff`] header (connection id, peer address, bytes
    /// already read). The receiver gets it back typed with
    /// [`recv_socket`](Self::recv_socket). `Ok` means the kernel has the descriptor;
    /// the caller may close its copy.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send); [`Error::MessageTooLarge`] when `meta.data` does not fit
    /// in [`max_payload`](Self::max_payload) with the header.
    ///
    /// # Examples
    ///
    /// ```
    /// use herder_fd::{Channel, Handoff, Socket};
    /// use std::io::{Read, Write};
    /// use std::net::{TcpListener, TcpStream};
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0")?;
    /// let mut client = TcpStream::connect(listener.local_addr()?)?;
    /// let (conn, peer) = listener.accept()?;
    ///
    /// let (mut tx, mut rx) = Channel::pair()?;
    /// tx.send_socket(&conn, &Handoff { id: 1, peer: Some(peer), data: b"" })?;
    /// drop(conn);
    ///
    /// let got = rx.recv_socket()?.expect("a socket");
    /// assert_eq!((got.id, got.peer), (1, Some(peer)));
    /// let mut conn = got.into_tcp_stream().expect("a TcpStream");
    /// conn.write_all(b"served by the receiver")?;
    /// drop(conn);
    /// let mut reply = String::new();
    /// client.read_to_string(&mut reply)?;
    /// assert_eq!(reply, "served by the receiver");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn send_socket<S: Transfer + AsFd>(
        &mut self,
        socket: &S,
        meta: &Handoff<'_>,
    ) -> io::Result<()> {
        let payload = crate::handoff::encoded(S::KIND, meta);
        self.send(&payload, &[socket.as_fd()])
    }

    /// Sends several sockets of one type in one message, each with its own header:
    /// one system call instead of one per socket (the kernel's cost per descriptor
    /// falls from about 3 µs alone to a fraction of a microsecond in a batch). The
    /// receiver reads them with [`Message::into_sockets`]. An empty batch sends
    /// nothing.
    ///
    /// # Errors
    ///
    /// [`Error::TooManyFds`] for more than [`MAX_FDS_PER_MESSAGE`] sockets;
    /// [`Error::MessageTooLarge`] if the headers and data exceed the payload limit;
    /// otherwise as [`send`](Self::send). Nothing is sent on error.
    pub fn send_sockets<S: Transfer + AsFd>(
        &mut self,
        items: &[(&S, Handoff<'_>)],
    ) -> io::Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        if items.len() > MAX_FDS_PER_MESSAGE {
            return Err(Error::TooManyFds {
                count: items.len(),
                max: MAX_FDS_PER_MESSAGE,
            }
            .into());
        }
        let len = crate::handoff::BATCH_HEADER_LEN
            + items
                .iter()
                .map(|(_, h)| {
                    crate::handoff::RECORD_PREFIX_LEN + crate::handoff::MAX_META_LEN + h.data.len()
                })
                .sum::<usize>();
        let mut payload = Vec::with_capacity(len);
        crate::handoff::encode_batch(S::KIND, items.iter().map(|(_, h)| h), &mut payload);
        let fds: Vec<BorrowedFd<'_>> = items.iter().map(|(s, _)| s.as_fd()).collect();
        self.send(&payload, &fds)
    }

    /// Receives a socket sent with [`send_socket`](Self::send_socket). `Ok(None)` at end
    /// of stream.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv); [`Error::Malformed`] if the message is not a typed
    /// hand-off, [`Error::FdCountMismatch`] if it does not carry exactly one descriptor
    /// (whatever arrived is closed).
    pub fn recv_socket(&mut self) -> io::Result<Option<Received>> {
        match self.recv()? {
            Some(msg) => msg.into_socket().map(Some),
            None => Ok(None),
        }
    }
}

/// Sends `bufs` with `fds` attached in one `sendmsg(2)`: the bare system call, without
/// framing, for callers that bring their own protocol. Returns the bytes written; on a
/// stream socket that may be fewer than given, and the descriptors then went with the
/// first byte.
///
/// # Errors
///
/// [`Error::TooManyFds`] before the call for more than [`MAX_FDS_PER_MESSAGE`]
/// descriptors; otherwise what `sendmsg(2)` returns (`EINTR` is retried). On a stream
/// socket, descriptors need at least one byte to travel with.
///
/// # Portability
///
/// `MSG_NOSIGNAL` is used where it exists, so a closed peer gives `EPIPE`, not
/// `SIGPIPE`. On macOS, which lacks it, set `SO_NOSIGPIPE` on the socket
/// ([`Channel`] does so for the sockets it creates).
///
/// # Examples
///
/// ```
/// use std::io::IoSlice;
/// use std::os::fd::AsFd;
/// use std::os::unix::net::UnixDatagram;
///
/// let (a, b) = UnixDatagram::pair()?;
/// let file = tempfile::tempfile()?;
/// herder_fd::send_fds(&a, &[IoSlice::new(b"x")], &[file.as_fd()])?;
/// let (mut buf, mut fds) = ([0u8; 8], Vec::new());
/// assert_eq!(herder_fd::recv_fds(&b, &mut buf, &mut fds, 4)?, 1);
/// assert_eq!(fds.len(), 1);
/// # Ok::<(), std::io::Error>(())
/// ```
#[doc(alias = "sendmsg")]
#[doc(alias = "SCM_RIGHTS")]
pub fn send_fds(
    socket: impl AsFd,
    bufs: &[IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    sys::send_msg(socket.as_fd(), bufs, fds)
}

/// Receives into `buf` with one `recvmsg(2)`, appending at most `max_fds` received
/// descriptors to `fds`, each close-on-exec. Returns the bytes read (0 at end of
/// stream, or for an empty datagram).
///
/// # Errors
///
/// - [`Error::ControlTruncated`] (`MSG_CTRUNC`): more descriptors were attached than
///   `max_fds`, or this process's descriptor table is full; those that arrived in this
///   call were closed, the others were dropped by the kernel;
/// - [`Error::PayloadTruncated`] (`MSG_TRUNC`): a datagram or packet did not fit in
///   `buf`; its descriptors were closed;
/// - what `recvmsg(2)` returns otherwise (`EINTR` is retried).
///
/// # Portability
///
/// Linux, Android, FreeBSD, NetBSD, OpenBSD and DragonFly set close-on-exec atomically
/// (`MSG_CMSG_CLOEXEC`). macOS has no such flag: each descriptor is marked with
/// `fcntl` right after `recvmsg` returns, so a `fork`+`exec` racing on another thread
/// may still inherit it.
///
/// On truncation, Linux installs the descriptors that fit (they are closed here) and
/// drops the rest; the BSDs close all of them themselves; macOS installs all of them
/// but reports only those that fit, so the others stay open unreported — give macOS a
/// `max_fds` as large as what the peer may send. When the receiver's descriptor table
/// is full, macOS drops them all and fails with `EMSGSIZE`, reported here as
/// [`Error::ControlTruncated`] with nothing received.
#[doc(alias = "recvmsg")]
#[doc(alias = "MSG_CMSG_CLOEXEC")]
pub fn recv_fds(
    socket: impl AsFd,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    max_fds: usize,
) -> io::Result<usize> {
    sys::recv_msg(socket.as_fd(), buf, fds, max_fds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    /// A writer whose pieces always end a few bytes into the next frame must not make
    /// the receive buffer grow with the traffic.
    #[test]
    fn receive_buffer_is_bounded_by_the_frame_not_the_traffic() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut rx = Channel::new(b.into()).unwrap();
        let mut a = a;
        let frame = |i: u32| {
            let payload = [i as u8; 100];
            let mut f = Header {
                len: payload.len(),
                ..Header::default()
            }
            .encode()
            .to_vec();
            f.extend_from_slice(&payload);
            f
        };
        let mut stream = Vec::new();
        for i in 0..2000 {
            stream.extend(frame(i));
        }
        let mut payload = Vec::new();
        let mut fds = Vec::new();
        let mut off = 0;
        let mut next = 0u32;
        let step = frame(0).len();
        while off < stream.len() {
            // Each write ends 4 bytes into the following frame.
            let end = (off + step + 4).min(stream.len());
            a.write_all(&stream[off..end]).unwrap();
            off = end;
            while next < 2000 && (next as usize + 1) * step <= off {
                assert!(rx.recv_into(&mut payload, &mut fds).unwrap());
                assert_eq!(payload, [next as u8; 100]);
                next += 1;
            }
            assert!(
                rx.rbuf.len() <= 8192,
                "receive buffer grew to {}",
                rx.rbuf.len()
            );
        }
        assert_eq!(next, 2000);
    }
}
