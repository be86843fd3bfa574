//! [`Channel`] on Windows: typed socket hand-off over a byte stream.

use crate::error::Error;
use crate::frame::{HEADER_LEN, Header};
use crate::handoff::Handoff;
use crate::socket::{Received, Socket, Transfer};
use crate::sys;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::windows::io::AsSocket;

/// The default largest payload a [`Channel`] sends or accepts: 64 KiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024;

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
/// # Portability
///
/// Windows cannot pass arbitrary handles this way: sockets only, one per message, and
/// the channel must be blocking (the acknowledgement is awaited). The channel is
/// half-duplex while a socket is in flight: the peer answers a socket with its
/// acknowledgement before it sends anything else. A frame that cannot be read whole
/// (a malformed header, an I/O error mid-frame) breaks the channel: every later call
/// fails.
pub struct Channel {
    stream: Box<dyn Duplex>,
    peer_pid: u32,
    max_payload: usize,
    /// Set when the stream lost its framing; every later call fails.
    broken: bool,
}

/// A received message: its payload.
#[derive(Debug, Default)]
pub struct Message {
    payload: Vec<u8>,
}

impl Message {
    /// The payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Takes the payload.
    pub fn into_payload(self) -> Vec<u8> {
        self.payload
    }
}

const ACK: &[u8; 2] = b"A\x00";
const NAK: u8 = 1;

impl Channel {
    /// Wraps `stream`, connected to process `peer_pid` (the process sockets are
    /// duplicated for).
    pub fn new(stream: impl Duplex + 'static, peer_pid: u32) -> Channel {
        Channel {
            stream: Box::new(stream),
            peer_pid,
            max_payload: DEFAULT_MAX_PAYLOAD,
            broken: false,
        }
    }

    /// The process id sockets are duplicated for.
    pub fn peer_pid(&self) -> u32 {
        self.peer_pid
    }

    /// Sets the largest payload this end sends and accepts.
    pub fn set_max_payload(&mut self, max: usize) {
        self.max_payload = max.min(u32::MAX as usize);
    }

    fn write_frame(&mut self, payload: &[u8], infos: &[&[u8]]) -> io::Result<()> {
        if payload.len() > self.max_payload {
            return Err(Error::MessageTooLarge {
                len: payload.len(),
                max: self.max_payload,
            }
            .into());
        }
        let mut buf =
            Vec::with_capacity(HEADER_LEN + payload.len() + infos.len() * sys::PROTOCOL_INFO_LEN);
        buf.extend_from_slice(
            &Header {
                nfds: infos.len(),
                len: payload.len(),
            }
            .encode(),
        );
        buf.extend_from_slice(payload);
        for info in infos {
            buf.extend_from_slice(info);
        }
        self.stream.write_all(&buf)?;
        self.stream.flush()
    }

    /// Reads one frame: payload and protocol infos. `Ok(None)` at a clean end of
    /// stream. Any error breaks the channel, since the framing is then lost.
    fn read_frame(&mut self) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        if self.broken {
            return Err(Error::Malformed("the stream lost its framing earlier").into());
        }
        let r = self.read_frame_inner();
        if r.is_err() {
            self.broken = true;
        }
        r
    }

    fn read_frame_inner(&mut self) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        let mut h = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            match self.stream.read(&mut h[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let h = Header::decode(&h, self.max_payload, 1)?;
        let mut payload = vec![0; h.len];
        self.stream.read_exact(&mut payload)?;
        let mut infos = vec![0; h.nfds * sys::PROTOCOL_INFO_LEN];
        self.stream.read_exact(&mut infos)?;
        Ok(Some((payload, infos)))
    }

    /// Tells the sender of a socket frame that it was refused, with `code` (an OS
    /// error code, or 0), so its `send_socket` returns instead of waiting.
    fn nak(&mut self, code: i32) -> io::Result<()> {
        let mut nak = vec![b'A', NAK];
        nak.extend_from_slice(&code.to_le_bytes());
        self.write_frame(&nak, &[])
    }

    /// Sends a message of bytes.
    ///
    /// # Errors
    ///
    /// [`Error::MessageTooLarge`]; what the stream's `write` returns.
    pub fn send(&mut self, payload: &[u8]) -> io::Result<()> {
        self.write_frame(payload, &[])
    }

    /// Receives a message of bytes; `Ok(None)` at end of stream.
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] and the other frame errors; [`Error::FdCountMismatch`] if
    /// the message carries a socket (use [`recv_socket`](Self::recv_socket)).
    pub fn recv(&mut self) -> io::Result<Option<Message>> {
        match self.read_frame()? {
            None => Ok(None),
            Some((payload, infos)) if infos.is_empty() => Ok(Some(Message { payload })),
            Some(_) => {
                // A socket nobody asked for: refuse it so the sender does not wait.
                self.nak(0)?;
                Err(Error::FdCountMismatch {
                    expected: 0,
                    received: 1,
                }
                .into())
            }
        }
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
        self.write_frame(&payload, &[&info])?;
        let Some((ack, infos)) = self.read_frame()? else {
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
    /// `WSASocketW(FROM_PROTOCOL_INFO)` (not inheritable) and acknowledges it.
    /// `Ok(None)` at end of stream.
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] if the message is not a typed hand-off; what `WSASocketW`
    /// returns (also reported to the sender); stream errors.
    #[doc(alias = "WSASocketW")]
    pub fn recv_socket(&mut self) -> io::Result<Option<Received>> {
        let Some((mut payload, infos)) = self.read_frame()? else {
            return Ok(None);
        };
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
        self.write_frame(ACK, &[])?;
        payload.drain(..meta.data);
        Ok(Some(Received {
            id: meta.id,
            peer: meta.peer,
            data: payload,
            socket,
        }))
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
