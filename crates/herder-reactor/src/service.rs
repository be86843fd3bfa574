//! The per-connection service trait and the buffers it works on.

use std::io;
use std::time::Instant;

/// A byte-stream protocol: one value per connection, driven by a
/// [`Server`](crate::Server).
///
/// Every callback writes its replies to an [`Output`] and says with a [`Flow`] whether
/// the connection goes on. Output is written to the socket right after the callback;
/// what the kernel does not take is kept and written when the socket is writable, and
/// while more than the high-water mark is kept, the server stops reading from that
/// connection (back-pressure).
///
/// # Examples
///
/// An echo service:
///
/// ```
/// use herder_reactor::{Flow, Input, Output, Service};
///
/// struct Echo;
///
/// impl Service for Echo {
///     fn on_data(&mut self, input: &mut Input<'_>, out: &mut Output<'_>) -> Flow {
///         out.write(input.data());
///         input.consume(input.len());
///         Flow::Continue
///     }
/// }
/// ```
pub trait Service {
    /// Bytes arrived. `input` holds every byte not consumed so far, oldest first;
    /// consume what was handled ([`Input::consume`]) and leave a partial request for
    /// the next call.
    fn on_data(&mut self, input: &mut Input<'_>, out: &mut Output<'_>) -> Flow;

    /// The peer closed its sending side (end of file). The default closes the
    /// connection once the output is written.
    fn on_eof(&mut self, out: &mut Output<'_>) -> Flow {
        let _ = out;
        Flow::Close
    }

    /// Nothing was read or written for the idle timeout. The default closes.
    fn on_idle(&mut self, out: &mut Output<'_>) -> Flow {
        let _ = out;
        Flow::Close
    }

    /// A deadline of the service's own, such as the time by which a request must be
    /// complete. The server asks after every callback and calls
    /// [`on_deadline`](Self::on_deadline) when it passes, whether or not anything
    /// arrives in between. The default is none.
    ///
    /// Return the same instant for as long as the deadline stands: the server arms a
    /// timer when the deadline comes earlier than the one it has, and checks the
    /// deadline again when that timer fires.
    fn deadline(&self) -> Option<Instant> {
        None
    }

    /// The [`deadline`](Self::deadline) passed. The default closes, with
    /// [`CloseReason::Deadline`]; a service may write a reply first (e.g. HTTP `408`)
    /// or move its deadline and go on.
    fn on_deadline(&mut self, out: &mut Output<'_>) -> Flow {
        let _ = out;
        Flow::Close
    }

    /// More than the input limit is unconsumed: the peer sends more than the service
    /// accepts (an oversized request). The default closes; a service may write an
    /// error reply first (e.g. HTTP `431`).
    fn on_input_limit(&mut self, out: &mut Output<'_>) -> Flow {
        let _ = out;
        Flow::Close
    }

    /// The server is draining ([`Server::drain`](crate::Server::drain)): may this
    /// connection close now? Asked once when the drain starts (or when the
    /// connection arrives during one), then again whenever the connection becomes
    /// idle.
    ///
    /// Draining never cuts a stream: a connection closes early only where its
    /// service says it is at a boundary; otherwise it is served until the peer
    /// closes it or the drain deadline passes ([`CloseReason::Shutdown`]).
    ///
    /// `idle` says only that the server's buffers are empty: the connection has
    /// sent something, and no input is unconsumed and no output unwritten (one that
    /// has not sent anything yet is not idle: its first request may be on the way).
    /// For a byte stream that is no boundary — the peer may be about to send its
    /// next byte — so the default keeps serving ([`Flow::Continue`]).
    ///
    /// A service that knows its request boundaries overrides this: it returns
    /// [`Flow::Close`] when `idle` finds it between requests, and otherwise
    /// remembers that the server drains, so that it ends the exchange at the next
    /// boundary itself (HTTP answers the request in flight with
    /// `Connection: close`, then closes). It may also write a last message to `out`.
    ///
    /// # Examples
    ///
    /// A line protocol whose boundary is the end of a line:
    ///
    /// ```
    /// use herder_reactor::{Flow, Input, Output, Service};
    ///
    /// struct Lines;
    ///
    /// impl Service for Lines {
    ///     fn on_data(&mut self, input: &mut Input<'_>, out: &mut Output<'_>) -> Flow {
    ///         while let Some(end) = input.data().iter().position(|&b| b == b'\n') {
    ///             out.write(b"ok\n");
    ///             input.consume(end + 1);
    ///         }
    ///         Flow::Continue
    ///     }
    ///
    ///     // Every whole line is answered, so an idle connection is between lines.
    ///     fn on_drain(&mut self, idle: bool, _out: &mut Output<'_>) -> Flow {
    ///         if idle { Flow::Close } else { Flow::Continue }
    ///     }
    /// }
    /// ```
    fn on_drain(&mut self, idle: bool, out: &mut Output<'_>) -> Flow {
        let _ = (idle, out);
        Flow::Continue
    }

    /// The server moves its connections to another process
    /// ([`Server::move_out`](crate::Server::move_out)): may this one go now?
    ///
    /// Asked at every point where the connection's output is all written and it is
    /// not closing — once when the move starts, then after each callback — until it
    /// answers [`Move::Now`] or [`Move::Never`]. A connection that moves carries its
    /// socket (with whatever the kernel holds unread), the input not consumed yet and
    /// the state returned here; the service in the other process gets the state in
    /// [`on_arrive`](Self::on_arrive) and carries on where this one stopped. The peer
    /// sees nothing.
    ///
    /// The default is [`Move::Never`]: the library cannot know what a service keeps
    /// in memory, so a service that can move says so. A stateless byte stream (echo)
    /// can move at any such point with an empty state; HTTP between requests.
    ///
    /// # Examples
    ///
    /// A counter of lines that moves with its count:
    ///
    /// ```
    /// use herder_reactor::{Flow, Input, Move, Output, Service};
    ///
    /// struct Count(u64);
    ///
    /// impl Service for Count {
    ///     fn on_data(&mut self, input: &mut Input<'_>, out: &mut Output<'_>) -> Flow {
    ///         while let Some(end) = input.data().iter().position(|&b| b == b'\n') {
    ///             self.0 += 1;
    ///             out.write(format!("{}\n", self.0).as_bytes());
    ///             input.consume(end + 1);
    ///         }
    ///         Flow::Continue
    ///     }
    ///
    ///     fn on_move(&mut self) -> Move {
    ///         Move::Now(self.0.to_le_bytes().to_vec())
    ///     }
    ///
    ///     fn on_arrive(&mut self, state: &[u8]) -> bool {
    ///         match state.try_into() {
    ///             Ok(bytes) => {
    ///                 self.0 = u64::from_le_bytes(bytes);
    ///                 true
    ///             }
    ///             Err(_) => false,
    ///         }
    ///     }
    /// }
    ///
    /// let mut before = Count(41);
    /// let Move::Now(state) = before.on_move() else { unreachable!() };
    /// let mut after = Count(0);
    /// assert!(after.on_arrive(&state));
    /// assert_eq!(after.0, 41);
    /// ```
    fn on_move(&mut self) -> Move {
        Move::Never
    }

    /// This connection moved here from another process; `state` is what its service
    /// there returned from [`on_move`](Self::on_move). Restore it and return `true`,
    /// or return `false` to refuse the connection (it goes back to the process it
    /// came from, which finishes it). Called on a fresh service, before any other
    /// callback. The default accepts an empty state only: what a stateless service
    /// moves. During an upgrade the state comes from the previous build: a service
    /// whose state may change between builds should put a version in it, and
    /// refuse a state it does not know.
    fn on_arrive(&mut self, state: &[u8]) -> bool {
        state.is_empty()
    }

    /// The connection is gone; no other callback follows.
    fn on_close(&mut self, reason: &CloseReason) {
        let _ = reason;
    }
}

/// Whether a connection may move to another process now: the answer of
/// [`Service::on_move`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Move {
    /// Move it now, with this state (empty for a stateless service), which the
    /// service in the receiving process gets in [`Service::on_arrive`].
    Now(Vec<u8>),
    /// Not now — a request is in flight — but perhaps at the connection's next
    /// point with its output written: the server asks again then, and does not
    /// treat it as draining meanwhile.
    Later,
    /// It stays in this process, which drains it ([`Service::on_drain`]).
    Never,
}

/// What a [`Service`] callback wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep the connection.
    Continue,
    /// Stop reading, write what is in the output, then close. The peer may still
    /// be sending (a request the service refused, say): the server shuts its side
    /// down first and reads and discards until the peer is done or the linger
    /// timeout passes ([`ServerConfig::linger`](crate::ServerConfig::linger)), so that the last
    /// reply is not destroyed by a reset.
    Close,
    /// The exchange is over on both sides — the peer said it sends nothing more
    /// (HTTP's `Connection: close` on its last request) and everything it sent was
    /// consumed: write what is in the output, then close at once, without the
    /// lingering of [`Close`](Flow::Close).
    Done,
    /// Close at once, dropping unwritten output (a reset-like end).
    Abort,
}

/// Why a connection ended, as told to [`Service::on_close`].
#[derive(Debug)]
#[non_exhaustive]
pub enum CloseReason {
    /// The service asked for it ([`Flow::Close`] or [`Flow::Abort`]).
    Service,
    /// The peer closed and the service had nothing more to say.
    Eof,
    /// The idle timeout passed.
    Idle,
    /// The service's [`deadline`](Service::deadline) passed.
    Deadline,
    /// The input limit was passed.
    InputLimit,
    /// The service closed at a boundary during a drain ([`Service::on_drain`]), the
    /// drain deadline passed, or the server was dropped.
    Shutdown,
    /// A read or write failed (`ECONNRESET`, `EPIPE`, …).
    Error(io::Error),
}

/// The unconsumed input of a connection.
#[derive(Debug)]
pub struct Input<'a> {
    data: &'a [u8],
    consumed: usize,
}

impl<'a> Input<'a> {
    /// Input over `data`, nothing consumed: what a [`Server`](crate::Server) hands a
    /// service, made by hand to test a [`Service`] without one.
    ///
    /// ```
    /// use herder_reactor::{Flow, Input, Output, Service};
    /// # struct Echo;
    /// # impl Service for Echo {
    /// #     fn on_data(&mut self, input: &mut Input<'_>, out: &mut Output<'_>) -> Flow {
    /// #         out.write(input.data());
    /// #         input.consume(input.len());
    /// #         Flow::Continue
    /// #     }
    /// # }
    /// let mut reply = Vec::new();
    /// let mut input = Input::new(b"ping");
    /// let flow = Echo.on_data(&mut input, &mut Output::new(&mut reply));
    /// assert_eq!((flow, input.len(), &reply[..]), (Flow::Continue, 0, &b"ping"[..]));
    /// ```
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data, consumed: 0 }
    }

    /// The bytes not consumed yet.
    pub fn data(&self) -> &[u8] {
        &self.data[self.consumed..]
    }

    /// How many bytes are not consumed yet.
    pub fn len(&self) -> usize {
        self.data.len() - self.consumed
    }

    /// Whether everything was consumed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks the first `n` bytes of [`data`](Self::data) as handled. Consuming more
    /// than there is consumes everything.
    pub fn consume(&mut self, n: usize) {
        self.consumed = (self.consumed + n).min(self.data.len());
    }

    pub(crate) fn consumed(&self) -> usize {
        self.consumed
    }
}

/// Where a [`Service`] writes its replies.
#[derive(Debug)]
pub struct Output<'a> {
    buf: &'a mut Vec<u8>,
}

impl<'a> Output<'a> {
    /// Output appending to `buf`: what a [`Server`](crate::Server) hands a service,
    /// made by hand to test a [`Service`] without one (see [`Input::new`]).
    pub fn new(buf: &'a mut Vec<u8>) -> Output<'a> {
        Output { buf }
    }

    /// Appends `bytes` to the reply.
    pub fn write(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// How many bytes are waiting to be written, including earlier replies the
    /// socket has not taken yet.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing is waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

impl io::Write for Output<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
