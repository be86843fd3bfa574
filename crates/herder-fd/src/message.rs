//! A received message, the same on every platform: a payload and the descriptors
//! (on Windows, sockets) that came with it, read as typed hand-offs.

use crate::error::Error;
use crate::socket::{RawOwned, Received, Socket};
use std::io;

/// A received message: its payload and its descriptors (sockets, on Windows).
///
/// Dropping it closes every descriptor nobody took.
#[derive(Debug, Default)]
pub struct Message {
    pub(crate) payload: Vec<u8>,
    pub(crate) fds: Vec<RawOwned>,
    /// Descriptors the sender attached that this end never got (see
    /// [`Message::lost_fds`]).
    pub(crate) lost: usize,
}

/// A socket kind this platform cannot rebuild.
const UNSUPPORTED_KIND: &str = "socket kind not supported here";

impl Message {
    /// The payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// How many descriptors (on Windows, sockets) came with the message.
    pub fn descriptor_count(&self) -> usize {
        self.fds.len()
    }

    /// Takes the payload, closing any descriptor.
    pub fn into_payload(self) -> Vec<u8> {
        self.payload
    }

    /// How many descriptors the sender attached that did not arrive: 0, except for a
    /// message from `Channel::recv_lossy` whose descriptors the kernel dropped
    /// because this process's descriptor table was full (`MSG_CTRUNC`), or on
    /// Windows one whose sockets could not be rebuilt (`WSASocketW` failed). Such a
    /// message has no descriptors at all (those that did fit were closed), only its
    /// payload, so that the receiver can tell the sender which message it lost —
    /// with [`handoff_ids`](Message::handoff_ids) for a hand-off.
    pub fn lost_fds(&self) -> usize {
        self.lost
    }

    /// The ids of the hand-offs this message carries, in order: one for a
    /// [`Channel::send_socket`](crate::Channel::send_socket), each record's for a [`Channel::send_sockets`](crate::Channel::send_sockets)
    /// batch. It reads the payload only, so it works on a message that lost its
    /// descriptors ([`lost_fds`](Message::lost_fds)), to name the connections that
    /// never arrived.
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] if the payload is not a typed hand-off or a batch.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(unix)] {
    /// use herder_fd::{Channel, Handoff};
    /// use std::net::{TcpListener, TcpStream};
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0")?;
    /// let a = TcpStream::connect(listener.local_addr()?)?;
    /// let (mut tx, mut rx) = Channel::pair()?;
    /// tx.send_sockets(&[(&a, Handoff { id: 7, ..Default::default() })])?;
    /// assert_eq!(rx.recv()?.expect("a message").handoff_ids()?, [7]);
    /// # }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn handoff_ids(&self) -> io::Result<Vec<u64>> {
        if crate::handoff::is_batch(&self.payload) {
            let records = crate::handoff::decode_batch(&self.payload)?;
            Ok(records.into_iter().map(|(meta, _)| meta.id).collect())
        } else {
            Ok(vec![crate::handoff::decode(&self.payload)?.id])
        }
    }

    /// Reads the message as a typed hand-off ([`Channel::send_socket`](crate::Channel::send_socket)), for a
    /// receiver that gets other messages on the same channel too.
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] if it is not a typed hand-off, [`Error::FdCountMismatch`]
    /// if it does not carry exactly one descriptor; whatever arrived is closed.
    pub fn into_socket(self) -> io::Result<Received> {
        let (mut payload, mut fds) = (self.payload, self.fds);
        let meta = crate::handoff::decode(&payload)?;
        if fds.len() != 1 {
            return Err(Error::FdCountMismatch {
                expected: 1,
                received: fds.len(),
            }
            .into());
        }
        let Some(fd) = fds.pop() else {
            return Err(Error::FdCountMismatch {
                expected: 1,
                received: 0,
            }
            .into());
        };
        let socket = Socket::from_kind(meta.kind, fd).ok_or(Error::Malformed(UNSUPPORTED_KIND))?;
        payload.drain(..meta.data);
        Ok(Received {
            id: meta.id,
            peer: meta.peer,
            data: payload,
            socket,
        })
    }
}

impl Message {
    /// Reads the message as one or more typed hand-offs: a single one
    /// ([`Channel::send_socket`](crate::Channel::send_socket)) or a batch ([`Channel::send_sockets`](crate::Channel::send_sockets)), in the order
    /// they were sent.
    ///
    /// # Errors
    ///
    /// [`Error::Malformed`] if it is neither, [`Error::FdCountMismatch`] if the number
    /// of descriptors is not the number of records; whatever arrived is closed.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(unix)] {
    /// use herder_fd::{Channel, Handoff};
    /// use std::net::{TcpListener, TcpStream};
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0")?;
    /// let a = TcpStream::connect(listener.local_addr()?)?;
    /// let b = TcpStream::connect(listener.local_addr()?)?;
    /// let (mut tx, mut rx) = Channel::pair()?;
    /// let (ha, hb) = (Handoff { id: 1, ..Default::default() }, Handoff { id: 2, ..Default::default() });
    /// tx.send_sockets(&[(&a, ha), (&b, hb)])?;
    /// let got = rx.recv()?.expect("a message").into_sockets()?;
    /// assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2]);
    /// # }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn into_sockets(self) -> io::Result<Vec<Received>> {
        if !crate::handoff::is_batch(&self.payload) {
            return self.into_socket().map(|r| vec![r]);
        }
        let (payload, fds) = (self.payload, self.fds);
        let records = crate::handoff::decode_batch(&payload)?;
        if records.len() != fds.len() {
            return Err(Error::FdCountMismatch {
                expected: records.len(),
                received: fds.len(),
            }
            .into());
        }
        records
            .into_iter()
            .zip(fds)
            .map(|((meta, data), fd)| {
                Ok(Received {
                    id: meta.id,
                    peer: meta.peer,
                    data: payload.get(data).unwrap_or_default().to_vec(),
                    socket: Socket::from_kind(meta.kind, fd)
                        .ok_or(Error::Malformed(UNSUPPORTED_KIND))?,
                })
            })
            .collect()
    }
}
