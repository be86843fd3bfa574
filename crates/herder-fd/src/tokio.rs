//! Channels on a tokio runtime (the `tokio` feature): [`AsyncChannel`] sends and
//! receives messages and sockets without blocking the runtime's thread, through
//! tokio's readiness ([`AsyncFd`](::tokio::io::unix::AsyncFd)) over the same
//! non-blocking [`Channel`].
//!
//! # Examples
//!
//! ```
//! use herder_fd::{Channel, Handoff, tokio::AsyncChannel};
//! use std::net::{TcpListener, TcpStream};
//!
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! rt.block_on(async {
//!     let (a, b) = Channel::pair()?;
//!     let (mut tx, mut rx) = (AsyncChannel::new(a)?, AsyncChannel::new(b)?);
//!     let listener = TcpListener::bind("127.0.0.1:0")?;
//!     let conn = TcpStream::connect(listener.local_addr()?)?;
//!     tx.send_socket(&conn, &Handoff { id: 7, ..Default::default() }).await?;
//!     let got = rx.recv_socket().await?.expect("a socket");
//!     assert_eq!(got.id, 7);
//!     // The received socket shares the sender's file status flags: tokio wants it
//!     // non-blocking.
//!     let std_stream = got.into_tcp_stream().expect("TCP");
//!     std_stream.set_nonblocking(true)?;
//!     let stream = tokio::net::TcpStream::from_std(std_stream)?;
//!     assert_eq!(stream.peer_addr()?, listener.local_addr()?);
//!     Ok::<(), std::io::Error>(())
//! })?;
//! # Ok::<(), std::io::Error>(())
//! ```

use crate::{Channel, Handoff, Message, Received, Transfer};
use ::tokio::io::unix::AsyncFd;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

/// A [`Channel`] driven by tokio: every operation waits for readiness instead of
/// blocking. Messages, framing, descriptor limits and errors are the channel's own.
#[derive(Debug)]
pub struct AsyncChannel {
    inner: AsyncFd<Channel>,
}

impl AsyncChannel {
    /// Makes `channel` non-blocking and registers it with the current tokio runtime.
    ///
    /// # Errors
    ///
    /// If there is no runtime (with its I/O driver enabled), or registering fails.
    pub fn new(channel: Channel) -> io::Result<AsyncChannel> {
        channel.set_nonblocking(true)?;
        Ok(AsyncChannel {
            inner: crate::sys::register_async(channel)?,
        })
    }

    /// The channel.
    pub fn get_ref(&self) -> &Channel {
        self.inner.get_ref()
    }

    /// Takes the channel back (still non-blocking).
    pub fn into_inner(self) -> Channel {
        self.inner.into_inner()
    }

    /// Sends one message, waiting while the socket is full, and then until all of
    /// it is written.
    ///
    /// # Errors
    ///
    /// As [`Channel::send`], but never `WouldBlock`.
    pub async fn send(&mut self, payload: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        loop {
            let mut ready = self.inner.writable_mut().await?;
            match ready.try_io(|c| c.get_mut().send(payload, fds)) {
                Ok(sent) => break sent?,
                Err(_would_block) => continue,
            }
        }
        self.flush().await
    }

    /// Writes what earlier messages left unwritten (a stream channel's partial
    /// writes).
    ///
    /// # Errors
    ///
    /// As [`Channel::flush`].
    pub async fn flush(&mut self) -> io::Result<()> {
        while self.inner.get_ref().has_pending_output() {
            let mut ready = self.inner.writable_mut().await?;
            match ready.try_io(|c| c.get_mut().flush()) {
                Ok(done) => done?,
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Receives the next message; `Ok(None)` when the peer closed the channel at a
    /// message boundary.
    ///
    /// # Errors
    ///
    /// As [`Channel::recv`], but never `WouldBlock`.
    pub async fn recv(&mut self) -> io::Result<Option<Message>> {
        loop {
            let mut ready = self.inner.readable_mut().await?;
            match ready.try_io(|c| c.get_mut().recv()) {
                Ok(got) => return got,
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends a socket with its hand-off header, as [`Channel::send_socket`].
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub async fn send_socket<S: Transfer + AsFd>(
        &mut self,
        socket: &S,
        meta: &Handoff<'_>,
    ) -> io::Result<()> {
        let payload = crate::handoff::encoded(S::KIND, meta);
        self.send(&payload, &[socket.as_fd()]).await
    }

    /// Receives a socket sent with [`send_socket`](Self::send_socket) or
    /// [`Channel::send_socket`]; `Ok(None)` at the end of the channel.
    ///
    /// # Errors
    ///
    /// As [`Channel::recv_socket`].
    pub async fn recv_socket(&mut self) -> io::Result<Option<Received>> {
        match self.recv().await? {
            Some(message) => message.into_socket().map(Some),
            None => Ok(None),
        }
    }
}
