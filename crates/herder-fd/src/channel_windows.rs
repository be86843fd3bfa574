//! [`Channel`] on Windows: typed socket hand-off over a byte stream.

use crate::Message;
use crate::error::Error;
use crate::frame::{HEADER_LEN, Header, NO_ACK};
use crate::handoff::Handoff;
use crate::socket::{Received, Socket, Transfer};
use crate::sys;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::windows::io::{AsRawSocket, AsSocket, BorrowedSocket, RawSocket};

/// The default largest payload a [`Channel`] sends or accepts: 64 KiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024;

/// The most sockets one message carries ([`Channel::send_sockets`]); more are refused
/// before anything is sent. Each travels as a `WSAPROTOCOL_INFOW` of 628 bytes after
/// the payload.
pub const MAX_SOCKETS_PER_MESSAGE: usize = 64;

/// A byte stream in both directions: what a Windows [`Channel`] runs on.
pub trait Duplex: Read + Write + Send {}
impl<T: Read + Write + Send> Duplex for T {}

/// One end of a message channel on Windows, over any duplex byte stream (a loopback
/// `TcpStream`, a named pipe, …) to a known peer process.
///
/// A socket is handed over as a `WSAPROTOCOL_INFOW` that `WSADuplicateSocketW` made
/// for the peer's process id, carried in the same frame format as on Unix. The
/// receiver rebuilds it with `WSASocketW(FROM_PROTOCOL_INFO)` — not inheritable — and
/// acknowledges; [`send_socket`](Channel::send_socket) returns only then, so the
/// sender may close its copy without the connection being reset.
///
/// [`send_sockets`](Channel::send_sockets) sends sockets without waiting: up to
/// [`MAX_SOCKETS_PER_MESSAGE`] in one message, read with [`recv`](Channel::recv) and
/// [`Message::into_sockets`] as on Unix. Then the sender must keep its copies until
/// the receiver says (in a message of the caller's) that it has its own: a socket
/// whose last handle closes before the receiver rebuilt it is gone.
///
/// # Blocking and non-blocking use
///
/// On a non-blocking stream (`TcpStream::set_nonblocking`), [`recv`](Channel::recv)
/// returns [`io::ErrorKind::WouldBlock`] when no whole message has arrived, and keeps
/// the part that has; [`send`](Channel::send) and
/// [`send_sockets`](Channel::send_sockets) return it when the stream takes nothing,
/// and keep the tail of a message it took in part, which the next send or
/// [`flush`](Channel::flush) writes first. [`send_socket`](Channel::send_socket) and
/// [`recv_socket`](Channel::recv_socket) answer each other and need a blocking
/// stream.
///
/// # Portability
///
/// Windows cannot pass arbitrary handles this way: sockets only. The channel is
/// half-duplex while an acknowledged socket is in flight: the peer answers it before
/// it sends anything else. A frame that cannot be read whole (a malformed header, an
/// I/O error or the end of the stream mid-frame) breaks the channel: every later
/// receive fails.
pub struct Channel {
    stream: Box<dyn Duplex>,
    /// The socket `stream` is, when it is one ([`Channel::from_tcp`]): owned by
    /// `stream`, valid as long as it.
    socket: Option<RawSocket>,
    peer_pid: u32,
    max_payload: usize,
    /// Set when the stream lost its framing; every later receive fails.
    broken: bool,
    /// The frame being read: `input[..got]` has arrived.
    input: Vec<u8>,
    got: usize,
    /// A message the stream took in part: `output[written..]` goes first.
    output: Vec<u8>,
    written: usize,
}

/// One frame as read: its flags, payload and protocol infos.
struct Frame {
    flags: u8,
    payload: Vec<u8>,
    infos: Vec<u8>,
}

const ACK: &[u8; 2] = b"A\x00";
const NAK: u8 = 1;

impl Channel {
    /// Wraps `stream`, connected to process `peer_pid` (the process sockets are
    /// duplicated for).
    pub fn new(stream: impl Duplex + 'static, peer_pid: u32) -> Channel {
        Channel {
            stream: Box::new(stream),
            socket: None,
            peer_pid,
            max_payload: DEFAULT_MAX_PAYLOAD,
            broken: false,
            input: Vec::new(),
            got: 0,
            output: Vec::new(),
            written: 0,
        }
    }

    /// Wraps a loopback TCP connection to process `peer_pid`, as [`new`](Self::new),
    /// keeping hold of the socket: an event loop can then watch it
    /// ([`socket`](Self::socket)) and the channel switch between blocking and
    /// non-blocking use ([`set_nonblocking`](Self::set_nonblocking)).
    pub fn from_tcp(stream: TcpStream, peer_pid: u32) -> Channel {
        let socket = stream.as_raw_socket();
        let mut channel = Channel::new(stream, peer_pid);
        channel.socket = Some(socket);
        channel
    }

    /// The channel's socket, for a channel made with [`from_tcp`](Self::from_tcp):
    /// to register in an event loop (duplicate it to own it).
    pub fn socket(&self) -> Option<BorrowedSocket<'_>> {
        // SAFETY: the socket belongs to `self.stream`, which lives as long as
        // `self`; the borrow cannot outlive it.
        self.socket
            .map(|raw| unsafe { BorrowedSocket::borrow_raw(raw) })
    }

    /// Switches the channel's socket to non-blocking use, or back (see the type's
    /// documentation for what `WouldBlock` means then).
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::Unsupported`] for a channel not made with
    /// [`from_tcp`](Self::from_tcp); what `ioctlsocket` returns.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        let socket = self.socket().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "the channel was not made from a TcpStream",
            )
        })?;
        sys::set_nonblocking(socket, nonblocking)
    }

    /// The process id sockets are duplicated for.
    pub fn peer_pid(&self) -> u32 {
        self.peer_pid
    }

    /// Sets the largest payload this end sends and accepts.
    pub fn set_max_payload(&mut self, max: usize) {
        self.max_payload = max.min(u32::MAX as usize);
    }

    /// Whether part of a message waits to be written ([`flush`](Self::flush)).
    pub fn has_pending_output(&self) -> bool {
        self.written < self.output.len()
    }

    /// Writes what is left of a message the stream took in part.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::WouldBlock`] on a non-blocking stream that takes no more (the
    /// rest stays); what the stream's `write` returns.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.written < self.output.len() {
            match self.stream.write(&self.output[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.output.clear();
        self.written = 0;
        self.stream.flush()
    }

    fn write_frame(&mut self, flags: u8, payload: &[u8], infos: &[&[u8]]) -> io::Result<()> {
        if payload.len() > self.max_payload {
            return Err(Error::MessageTooLarge {
                len: payload.len(),
                max: self.max_payload,
            }
            .into());
        }
        // What waits goes first; if it still cannot, this message is not taken.
        self.flush()?;
        let header = Header {
            flags,
            nfds: infos.len(),
            len: payload.len(),
        };
        self.output.extend_from_slice(&header.encode());
        self.output.extend_from_slice(payload);
        for info in infos {
            self.output.extend_from_slice(info);
        }
        match self.flush() {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.written == 0 => {
                // Nothing of it went: not sent, as the caller is told.
                self.output.clear();
                Err(e)
            }
            // Part of it went: the rest follows with the next call.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads one frame. `Ok(None)` at a clean end of stream. `WouldBlock` keeps what
    /// arrived; any other error breaks the channel, since the framing is then lost.
    fn read_frame(&mut self) -> io::Result<Option<Frame>> {
        if self.broken {
            return Err(Error::Malformed("the stream lost its framing earlier").into());
        }
        let r = self.read_frame_inner();
        if matches!(&r, Err(e) if e.kind() != io::ErrorKind::WouldBlock) {
            self.broken = true;
        }
        r
    }

    /// Reads no further than the frame's end, so that another reader of the same
    /// stream finds the next frame whole.
    fn read_frame_inner(&mut self) -> io::Result<Option<Frame>> {
        loop {
            let header = match self.got >= HEADER_LEN {
                true => Some(Header::decode(
                    &self.input[..HEADER_LEN],
                    self.max_payload,
                    MAX_SOCKETS_PER_MESSAGE,
                )?),
                false => None,
            };
            let need = header.map_or(HEADER_LEN, |h| {
                HEADER_LEN + h.len + h.nfds * sys::PROTOCOL_INFO_LEN
            });
            if let Some(h) = header.filter(|_| self.got == need) {
                let mut payload = std::mem::take(&mut self.input);
                self.got = 0;
                payload.truncate(need);
                let infos = payload.split_off(HEADER_LEN + h.len);
                payload.drain(..HEADER_LEN);
                return Ok(Some(Frame {
                    flags: h.flags,
                    payload,
                    infos,
                }));
            }
            if self.input.len() < need {
                self.input.resize(need, 0);
            }
            match self.stream.read(&mut self.input[self.got..need]) {
                Ok(0) if self.got == 0 => return Ok(None),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Tells the sender of a socket frame that it was refused, with `code` (an OS
    /// error code, or 0), so its `send_socket` returns instead of waiting.
    fn nak(&mut self, code: i32) -> io::Result<()> {
        let mut nak = vec![b'A', NAK];
        nak.extend_from_slice(&code.to_le_bytes());
        self.write_frame(0, &nak, &[])
    }

    /// Sends a message of bytes.
    ///
    /// # Errors
    ///
    /// [`Error::MessageTooLarge`]; [`io::ErrorKind::WouldBlock`] on a non-blocking
    /// stream that takes none of it (nothing was sent); what the stream's `write`
    /// returns.
    pub fn send(&mut self, payload: &[u8]) -> io::Result<()> {
        self.write_frame(0, payload, &[])
    }

    /// Receives a message: its bytes, and the sockets of a
    /// [`send_sockets`](Self::send_sockets) rebuilt for this process (read them with
    /// [`Message::into_sockets`]). `Ok(None)` at end of stream.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::WouldBlock`] on a non-blocking stream before a whole message
    /// arrived; [`Error::Malformed`] and the other frame errors;
    /// [`Error::FdCountMismatch`] for a socket sent with
    /// [`send_socket`](Self::send_socket), which is refused (use
    /// [`recv_socket`](Self::recv_socket)).
    pub fn recv(&mut self) -> io::Result<Option<Message>> {
        let Some(frame) = self.read_frame()? else {
            return Ok(None);
        };
        if frame.infos.is_empty() {
            return Ok(Some(Message {
                payload: frame.payload,
                ..Message::default()
            }));
        }
        if frame.flags & NO_ACK == 0 {
            // A socket that waits for an answer nobody here gives: refuse it so its
            // sender does not wait.
            self.nak(0)?;
            return Err(Error::FdCountMismatch {
                expected: 0,
                received: 1,
            }
            .into());
        }
        Ok(Some(rebuild(frame)))
    }

    /// Hands several sockets of one type to the peer process in one message, each
    /// with its own [`Handoff`] header, and returns without waiting for it: keep
    /// each socket open until the receiver says it has its own. The receiver reads
    /// them with [`recv`](Self::recv) and [`Message::into_sockets`]. An empty batch
    /// sends nothing.
    ///
    /// # Errors
    ///
    /// [`Error::TooManyFds`] for more than [`MAX_SOCKETS_PER_MESSAGE`] sockets;
    /// what `WSADuplicateSocketW` returns (the peer process is gone); otherwise as
    /// [`send`](Self::send). Nothing is sent on error.
    #[doc(alias = "WSADuplicateSocketW")]
    pub fn send_sockets<S: Transfer + AsSocket>(
        &mut self,
        items: &[(&S, Handoff<'_>)],
    ) -> io::Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        if items.len() > MAX_SOCKETS_PER_MESSAGE {
            return Err(Error::TooManyFds {
                count: items.len(),
                max: MAX_SOCKETS_PER_MESSAGE,
            }
            .into());
        }
        let infos = items
            .iter()
            .map(|(s, _)| sys::duplicate_socket(s.as_socket(), self.peer_pid))
            .collect::<io::Result<Vec<_>>>()?;
        let mut payload = Vec::new();
        crate::handoff::encode_batch(S::KIND, items.iter().map(|(_, h)| h), &mut payload);
        let infos: Vec<&[u8]> = infos.iter().map(|i| &i[..]).collect();
        self.write_frame(NO_ACK, &payload, &infos)
    }

    /// Hands `socket` to the peer process with its [`Handoff`] header and waits for
    /// the peer to acknowledge that it has its own copy.
    ///
    /// # Errors
    ///
    /// What `WSADuplicateSocketW` returns (e.g. the peer process is gone); the peer's
    /// `WSASocketW` error if it could not rebuild the socket; stream errors.
    #[doc(alias = "WSADuplicateSocketW")]
    pub fn send_socket<S: Transfer + AsSocket>(
        &mut self,
        socket: &S,
        meta: &Handoff<'_>,
    ) -> io::Result<()> {
        let info = sys::duplicate_socket(socket.as_socket(), self.peer_pid)?;
        let payload = crate::handoff::encoded(S::KIND, meta);
        self.write_frame(0, &payload, &[&info])?;
        self.flush()?;
        let Some(Frame {
            payload: ack,
            infos,
            ..
        }) = self.read_frame()?
        else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed the channel before acknowledging",
            ));
        };
        match (ack.as_slice(), infos.is_empty()) {
            (a, true) if a == ACK => Ok(()),
            ([b'A', NAK, a, b, c, d], true) => {
                Err(io::Error::from_raw_os_error(i32::from_le_bytes([
                    *a, *b, *c, *d,
                ])))
            }
            _ => Err(Error::Malformed("expected an acknowledgement").into()),
        }
    }

    /// Receives a socket sent with [`send_socket`](Self::send_socket), rebuilds it with
    /// `WSASocketW(FROM_PROTOCOL_INFO)` (not inheritable) and acknowledges it; or the
    /// one socket of a [`send_sockets`](Self::send_sockets), which waits for no
    /// acknowledgement. `Ok(None)` at end of stream.
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] if the message is not a typed hand-off; what `WSASocketW`
    /// returns (also reported to the sender); [`Error::FdCountMismatch`] for a batch of
    /// more than one; stream errors.
    #[doc(alias = "WSASocketW")]
    pub fn recv_socket(&mut self) -> io::Result<Option<Received>> {
        let Some(frame) = self.read_frame()? else {
            return Ok(None);
        };
        if frame.flags & NO_ACK != 0 {
            // A `send_sockets` of one: nobody waits for an answer.
            let mut sockets = rebuild(frame).into_sockets()?;
            return match (sockets.pop(), sockets.is_empty()) {
                (Some(one), true) => Ok(Some(one)),
                (got, _) => Err(Error::FdCountMismatch {
                    expected: 1,
                    received: sockets.len() + usize::from(got.is_some()),
                }
                .into()),
            };
        }
        let (mut payload, infos) = (frame.payload, frame.infos);
        if infos.len() != sys::PROTOCOL_INFO_LEN {
            // A plain message: its sender waits for no acknowledgement.
            return Err(Error::FdCountMismatch {
                expected: 1,
                received: 0,
            }
            .into());
        }
        let meta = match crate::handoff::decode(&payload) {
            Ok(m) => m,
            Err(e) => {
                self.nak(0)?;
                return Err(e);
            }
        };
        let sock = match sys::socket_from_protocol_info(&infos) {
            Ok(s) => s,
            Err(e) => {
                self.nak(e.raw_os_error().unwrap_or(0))?;
                return Err(e);
            }
        };
        let Some(socket) = Socket::from_kind(meta.kind, sock) else {
            self.nak(0)?;
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "Unix sockets cannot be received on Windows",
            ));
        };
        self.write_frame(0, ACK, &[])?;
        self.flush()?;
        payload.drain(..meta.data);
        Ok(Some(Received {
            id: meta.id,
            peer: meta.peer,
            data: payload,
            socket,
        }))
    }
}

/// The message of a frame whose sockets nobody waits for: each rebuilt for this
/// process. If one cannot be (`WSASocketW` fails, as when the sender closed its copy
/// too early), none is kept, and [`Message::lost_fds`] counts them, so the receiver
/// can still name the hand-offs it lost ([`Message::handoff_ids`]).
fn rebuild(frame: Frame) -> Message {
    let count = frame.infos.len() / sys::PROTOCOL_INFO_LEN;
    let sockets = frame
        .infos
        .chunks_exact(sys::PROTOCOL_INFO_LEN)
        .map(sys::socket_from_protocol_info)
        .collect::<io::Result<Vec<_>>>();
    match sockets {
        Ok(fds) => Message {
            payload: frame.payload,
            fds,
            lost: 0,
        },
        Err(_) => Message {
            payload: frame.payload,
            fds: Vec::new(),
            lost: count,
        },
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("peer_pid", &self.peer_pid)
            .field("max_payload", &self.max_payload)
            .finish()
    }
}
