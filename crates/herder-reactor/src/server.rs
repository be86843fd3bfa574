//! [`Server`]: buffered connections driven by a [`Service`], listeners, and the
//! caller's own sources, in one [`Reactor`].

use crate::service::{CloseReason, Flow, Input, Move, Output, Service};
use crate::{Event, Interest, Key, Mode, Reactor, Signal, Source, TimerId, Waker};
use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Limits and buffer sizes of a [`Server`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Bytes read per readiness event into the server's one shared read buffer.
    /// Default 64 KiB.
    pub read_buffer: usize,
    /// The most unconsumed input one connection may hold before
    /// [`Service::on_input_limit`]. Default 64 KiB.
    pub max_input: usize,
    /// Unwritten output above which the server stops reading from a connection until
    /// it falls below half of it. Default 256 KiB.
    pub high_water: usize,
    /// Close connections that read and write nothing for this long (after asking
    /// [`Service::on_idle`]). Default: none.
    pub idle_timeout: Option<Duration>,
    /// Connections accepted per listener readiness event. Default 64.
    pub accept_burst: usize,
    /// Set `TCP_NODELAY` on TCP connections — when it can matter: before a
    /// connection's second write, or a first one of more than a segment (as nginx
    /// sets it on keep-alive connections). A first reply that fits a segment goes
    /// out at once anyway (nothing is unacknowledged yet), so a connection that
    /// closes after it saves the system call. Default true.
    pub nodelay: bool,
    /// After `EMFILE`/`ENFILE` on `accept`, pause the listener this long instead of
    /// spinning. Default 100 ms.
    pub accept_backoff: Duration,
    /// A connection the server closes while the peer may still be sending is first
    /// shut down for writing, and its input read and discarded for up to this long,
    /// so that the last reply is not lost to a reset (a "lingering close", as in
    /// nginx). Zero closes at once. Default 2 s.
    pub linger: Duration,
    /// The most connections open at once. At the limit the server stops accepting
    /// (the listeners pause, so the kernel's backlog holds new connections, or a
    /// peer process sharing the listener takes them) and resumes when one closes;
    /// [`Server::add_connection`] refuses a connection over it. Default: none.
    pub max_connections: Option<usize>,
    /// When a new connection is first read. Default [`FirstRead::Learn`].
    pub first_read: FirstRead,
}

/// When a [`Server`] first reads a new connection: one it accepted, or one added
/// or moved to it (those at the next [`Server::poll`], so that the caller can
/// acknowledge them before a byte is read).
///
/// Read at once, a connection whose client sent as it connected (an HTTP request)
/// is served without the poller: one answered and closed then costs no `epoll_ctl`
/// at all. One whose client has sent nothing yet costs a read that finds nothing,
/// and is then given to the poller as it would have been.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FirstRead {
    /// When the poller reports it readable (as nginx does).
    WhenReady,
    /// At once. Right where the data is there first: a listener that accepts only
    /// once the client has sent (`TCP_DEFER_ACCEPT` on Linux, an accept filter on
    /// FreeBSD), a worker so busy that connections wait in its queue.
    AtOnce,
    /// At once while most such reads find data, when ready otherwise; while it
    /// waits, one new connection in 16 is still read at once, to see whether that
    /// changed. A server that accepts as soon as connections arrive finds little,
    /// and waits; one that falls behind finds its requests there, and reads.
    Learn,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            read_buffer: 64 * 1024,
            max_input: 64 * 1024,
            high_water: 256 * 1024,
            idle_timeout: None,
            accept_burst: 64,
            nodelay: true,
            accept_backoff: Duration::from_millis(100),
            linger: Duration::from_secs(2),
            max_connections: None,
            first_read: FirstRead::Learn,
        }
    }
}

/// The message of the error [`Server::add_connection`] returns at
/// [`ServerConfig::max_connections`].
pub const LIMIT_REACHED: &str = "the server holds its maximum number of connections";

/// The message of the error [`Server::add_listener`] returns once the server drains.
pub const DRAINING: &str = "the server is draining and accepts no new listener";

/// A connected byte stream a [`Server`] serves.
#[derive(Debug)]
#[non_exhaustive]
pub enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// A Unix stream socket.
    #[cfg(unix)]
    Unix(UnixStream),
}

impl Stream {
    /// The remote address, for TCP.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        match self {
            Stream::Tcp(s) => s.peer_addr().ok(),
            #[cfg(unix)]
            Stream::Unix(_) => None,
        }
    }

    fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            #[cfg(unix)]
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        }
    }

    /// Readies a stream taken from elsewhere for the server. On Unix there is
    /// nothing to do: the server reads and writes with `MSG_DONTWAIT`, which does
    /// not wait whether or not the socket is non-blocking (so a connection handed
    /// over costs no `ioctl`). Windows has no such flag: the socket is made
    /// non-blocking.
    fn prepare(&self) -> io::Result<()> {
        #[cfg(windows)]
        match self {
            Stream::Tcp(s) => s.set_nonblocking(true)?,
        }
        Ok(())
    }

    /// Reads what has arrived, without waiting.
    fn read_now(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        #[cfg(unix)]
        return crate::sys::recv_now(std::os::fd::AsFd::as_fd(self), buf);
        #[cfg(windows)]
        self.read(buf)
    }

    /// Writes what the socket takes, without waiting.
    fn write_now(&mut self, buf: &[u8]) -> io::Result<usize> {
        #[cfg(unix)]
        return crate::sys::send_now(std::os::fd::AsFd::as_fd(self), buf);
        #[cfg(windows)]
        self.write(buf)
    }
}

#[cfg(unix)]
impl std::os::fd::AsFd for Stream {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

#[cfg(windows)]
impl std::os::windows::io::AsSocket for Stream {
    fn as_socket(&self) -> std::os::windows::io::BorrowedSocket<'_> {
        match self {
            Stream::Tcp(s) => s.as_socket(),
        }
    }
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Stream {
        Stream::Tcp(s)
    }
}

#[cfg(unix)]
impl From<UnixStream> for Stream {
    fn from(s: UnixStream) -> Stream {
        Stream::Unix(s)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            #[cfg(unix)]
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What the server's reactor holds.
enum Entry<Svc> {
    Listener(Listener),
    Conn(Box<Conn<Svc>>),
    User(Box<dyn UserSource>),
}

/// A source of the caller's, kept so that it can be handed back by its own type.
/// Call its methods on the `dyn UserSource` itself (`(**boxed).as_any()`): a box of
/// one is a `Source` too, and would answer for itself.
trait UserSource: Source {
    fn as_any(&self) -> &dyn std::any::Any;
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any>;
}

impl<T: Source> UserSource for T {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

/// A source added with [`Server::add_source`], boxed already.
struct Boxed(Box<dyn Source>);

#[cfg(unix)]
impl std::os::fd::AsFd for Boxed {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

#[cfg(windows)]
impl std::os::windows::io::AsSocket for Boxed {
    fn as_socket(&self) -> std::os::windows::io::BorrowedSocket<'_> {
        self.0.as_socket()
    }
}

/// A source of the caller's in a [`Server`], with its type: what
/// [`Server::watch`] returns, to get the source back as a `&T`, a `&mut T` or a `T`
/// — no duplicated descriptor needed to keep using what the server watches.
pub struct Watched<T> {
    key: Key,
    _type: std::marker::PhantomData<fn() -> T>,
}

impl<T> Watched<T> {
    /// Its key: events of the source come back from [`Server::poll`] as
    /// [`Event::Io`] with this key.
    pub fn key(&self) -> Key {
        self.key
    }
}

impl<T> Clone for Watched<T> {
    fn clone(&self) -> Watched<T> {
        *self
    }
}

impl<T> Copy for Watched<T> {}

impl<T> PartialEq for Watched<T> {
    fn eq(&self, other: &Watched<T>) -> bool {
        self.key == other.key
    }
}

impl<T> Eq for Watched<T> {}

impl<T> fmt::Debug for Watched<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Watched").field(&self.key).finish()
    }
}

#[cfg(unix)]
impl<Svc> std::os::fd::AsFd for Entry<Svc> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Entry::Listener(l) => l.listener.as_fd(),
            Entry::Conn(c) => c.stream.as_fd(),
            Entry::User(u) => u.as_fd(),
        }
    }
}

#[cfg(windows)]
impl<Svc> std::os::windows::io::AsSocket for Entry<Svc> {
    fn as_socket(&self) -> std::os::windows::io::BorrowedSocket<'_> {
        match self {
            Entry::Listener(l) => l.listener.as_socket(),
            Entry::Conn(c) => c.stream.as_socket(),
            Entry::User(u) => u.as_socket(),
        }
    }
}

/// A listener and who paused it.
struct Listener {
    listener: TcpListener,
    /// Paused by the caller (accept-mutex); the `EMFILE` back-off must not resume it.
    user_paused: bool,
}

/// One connection. Its buffers are empty (no allocation) while it is idle.
struct Conn<Svc> {
    stream: Stream,
    svc: Svc,
    /// Unconsumed input, only while a request is partial.
    input: Vec<u8>,
    /// Unwritten output, only while the socket does not take it all.
    output: Vec<u8>,
    interest: Interest,
    last_active: Instant,
    eof: bool,
    closing: bool,
    paused: bool,
    /// Whether `on_drain` was asked once; after that only when idle.
    drain_asked: bool,
    /// Nothing was read from it yet.
    fresh: bool,
    /// Why the connection is closing, once it is.
    close_reason: Option<CloseReason>,
    /// Shut down for writing; reading and discarding until EOF or the linger timer.
    lingering: bool,
    /// The connection's timer: the idle timeout, or the linger deadline once
    /// lingering.
    timer: Option<TimerId>,
    /// When `timer` fires.
    timer_at: Option<Instant>,
    /// Whether `timer` is the linger deadline.
    timer_is_linger: bool,
    /// Accepted by this server: its descriptor has no other copy.
    own: bool,
    /// Where it stands with the poller.
    polled: Polled,
    /// The service said the peer sends nothing more ([`Flow::Done`]): no lingering.
    done: bool,
    /// `TCP_NODELAY` is wanted and not set yet.
    nodelay: bool,
    /// Something was written to it already.
    wrote: bool,
    /// It does not move ([`Move::Never`], or a move of it failed): drained here.
    stays: bool,
    /// Its service agreed to move, with this state: taken out at the next settle.
    departing: Option<Vec<u8>>,
}

impl<Svc> Conn<Svc> {
    /// Between requests: something was read, and nothing is pending either way. A
    /// connection that has not sent anything yet is not idle — its first request may
    /// be on the way (a connection accepted or handed over just before a drain).
    fn idle(&self) -> bool {
        !self.fresh && self.input.is_empty() && self.output.is_empty()
    }

    fn wanted_interest(&self) -> Interest {
        Interest {
            readable: self.lingering || (!self.eof && !self.closing && !self.paused),
            writable: !self.output.is_empty(),
        }
    }
}

/// Counters of a [`Server`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections taken in: accepted or added.
    pub accepted: u64,
    /// Connections open now.
    pub active: usize,
    /// Failed `accept` calls other than `WouldBlock`, and failed re-arms of an
    /// exclusive listener.
    pub accept_errors: u64,
    /// Re-registrations of `EPOLLEXCLUSIVE` listeners (Linux).
    pub rearms: u64,
    /// Connections taken out to move to another process
    /// ([`Server::take_departures`]) and not given back ([`Server::readmit`]).
    pub departed: u64,
    /// Connections that moved here ([`Server::adopt`]); not counted in `accepted`.
    pub arrived: u64,
}

/// A connection taken out of a [`Server`] to move to another process
/// ([`Server::move_out`]): its socket, its service, the input the service had not
/// consumed, and the state its service gave ([`Service::on_move`]). Send the socket
/// with the input and the state (herder-pool's worker link does), and keep this
/// until the receiver owns the connection: if the move fails,
/// [`Server::readmit`] gives it back to the server as it was.
pub struct Departure<Svc> {
    stream: Stream,
    svc: Svc,
    input: Vec<u8>,
    state: Vec<u8>,
    fresh: bool,
}

impl<Svc> Departure<Svc> {
    /// The connection's socket. On Unix its blocking mode is the one it came to
    /// the server with (a connection the server accepted is non-blocking; one
    /// added is as the caller gave it); on Windows it is non-blocking.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// Bytes read from the connection that the service had not consumed: the
    /// receiver's service gets them first.
    pub fn input(&self) -> &[u8] {
        &self.input
    }

    /// What the service returned from [`Service::on_move`].
    pub fn state(&self) -> &[u8] {
        &self.state
    }

    /// Whether the peer has not sent anything yet: its first request may be on the
    /// way, so a drain does not take it for idle. Pass it on to
    /// [`Server::adopt`].
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }
}

impl<Svc> fmt::Debug for Departure<Svc> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Departure")
            .field("stream", &self.stream)
            .field("input", &self.input.len())
            .field("state", &self.state.len())
            .finish_non_exhaustive()
    }
}

/// Many buffered connections, each served by its own [`Service`] value, in one
/// [`Reactor`] — with listeners whose connections it accepts, and any other sources
/// of the caller's, whose events it hands back.
///
/// # Examples
///
/// An echo server on a port of its own, and one client:
///
/// ```
/// use herder_reactor::{ServerConfig, Flow, Input, Output, Server, Service};
/// use std::io::{Read, Write};
/// use std::time::Duration;
///
/// struct Echo;
/// impl Service for Echo {
///     fn on_data(&mut self, input: &mut Input<'_>, out: &mut Output<'_>) -> Flow {
///         out.write(input.data());
///         input.consume(input.len());
///         Flow::Continue
///     }
/// }
///
/// let mut server = Server::new(ServerConfig::default(), |_| Echo)?;
/// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let addr = listener.local_addr()?;
/// server.add_listener(listener)?;
///
/// let client = std::thread::spawn(move || -> std::io::Result<String> {
///     let mut c = std::net::TcpStream::connect(addr)?;
///     c.write_all(b"ping")?;
///     c.shutdown(std::net::Shutdown::Write)?;
///     let mut reply = String::new();
///     c.read_to_string(&mut reply)?;
///     Ok(reply)
/// });
/// let mut events = Vec::new();
/// while !client.is_finished() {
///     server.poll(&mut events, Some(Duration::from_millis(10)))?;
/// }
/// assert_eq!(client.join().unwrap()?, "ping");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Server<Svc: Service + 'static> {
    reactor: Reactor<Entry<Svc>>,
    config: ServerConfig,
    factory: Box<dyn FnMut(&Stream) -> Svc>,
    rbuf: Vec<u8>,
    obuf: Vec<u8>,
    events: Vec<Event>,
    /// Connection timers (idle or linger) and the connection each belongs to.
    conn_timers: HashMap<TimerId, Key>,
    listener_retry: HashMap<TimerId, Key>,
    /// Listeners paused because the server holds `max_connections`.
    full_paused: Vec<Key>,
    /// When running out of descriptors was last logged.
    out_of_descriptors_logged: Option<Instant>,
    /// Re-arm timers of `EPOLLEXCLUSIVE` listeners, and their current keys.
    rearm: HashMap<TimerId, Key>,
    drain_deadline: Option<TimerId>,
    draining: bool,
    /// Connections that agree move out ([`Server::move_out`]).
    moving: bool,
    /// Connections taken out to move, until the caller takes them.
    departures: Vec<Departure<Svc>>,
    /// Connections added or adopted since the last poll, whose first read, input
    /// and drain rule wait for the next one.
    arrivals: Vec<Key>,
    /// What first reads found, for [`FirstRead::Learn`].
    first_reads: FirstReads,
    stats: Stats,
}

/// Whether connections that may have copies elsewhere are given to the poller
/// for one report first: where the close of a descriptor's last copy takes it out
/// of the poller (epoll).
const ONE_REPORT_FIRST: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// Where a connection stands with the poller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Polled {
    /// Not given to it yet.
    Not,
    /// Given for one report ([`Mode::Oneshot`]), not yet made.
    Once,
    /// Its one report made: nothing more is reported for it until it is given an
    /// interest again.
    Silent,
    /// Given level-triggered.
    Level,
}

/// How often the first reads of new connections found data: the memory of
/// [`FirstRead::Learn`].
#[derive(Debug, Clone, Copy)]
struct FirstReads {
    /// A moving average over the last 16 or so first reads: `2 * HALF` if all
    /// found data, 0 if none did.
    found: u32,
    /// New connections, for the one in 16 read at once while the rule waits.
    count: u32,
}

impl FirstReads {
    const HALF: u32 = 1 << 15;

    fn new() -> FirstReads {
        FirstReads {
            found: Self::HALF,
            count: 0,
        }
    }

    /// Whether the next new connection is read at once under `rule`.
    fn at_once(&mut self, rule: FirstRead) -> bool {
        match rule {
            FirstRead::WhenReady => false,
            FirstRead::AtOnce => true,
            FirstRead::Learn => {
                self.count = self.count.wrapping_add(1);
                self.found >= Self::HALF || self.count.is_multiple_of(16)
            }
        }
    }

    /// Notes whether a first read found data (or the peer's end).
    fn learn(&mut self, found: bool) {
        let target = if found { 2 * Self::HALF } else { 0 };
        self.found = self.found - self.found / 16 + target / 16;
    }
}

impl<Svc: Service + 'static> Server<Svc> {
    /// Creates a server whose accepted connections get a service from `factory`.
    ///
    /// # Errors
    ///
    /// As [`Reactor::new`].
    pub fn new(
        config: ServerConfig,
        factory: impl FnMut(&Stream) -> Svc + 'static,
    ) -> io::Result<Server<Svc>> {
        Ok(Server {
            reactor: Reactor::new()?,
            rbuf: vec![0; config.read_buffer.max(1)],
            config,
            factory: Box::new(factory),
            obuf: Vec::new(),
            events: Vec::new(),
            conn_timers: HashMap::new(),
            listener_retry: HashMap::new(),
            full_paused: Vec::new(),
            out_of_descriptors_logged: None,
            rearm: HashMap::new(),
            drain_deadline: None,
            draining: false,
            moving: false,
            departures: Vec::new(),
            arrivals: Vec::new(),
            first_reads: FirstReads::new(),
            stats: Stats::default(),
        })
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Bytes held in connection buffers (unconsumed input and unwritten output).
    pub fn buffered_bytes(&self) -> usize {
        let mut n = 0;
        for key in self.conn_keys() {
            if let Some(Entry::Conn(c)) = self.reactor.get(key) {
                n += c.input.len() + c.output.len();
            }
        }
        n
    }

    fn conn_keys(&self) -> Vec<Key> {
        self.reactor
            .keys()
            .filter(|k| matches!(self.reactor.get(*k), Some(Entry::Conn(_))))
            .collect()
    }

    /// Changes how many connections are accepted per listener wake-up
    /// ([`ServerConfig::accept_burst`]; at least one). Load-aware accepting lowers it to
    /// what the worker may still take.
    pub fn set_accept_burst(&mut self, n: usize) {
        self.config.accept_burst = n.max(1);
    }

    /// Accepts connections from `listener` (made non-blocking) until it is removed
    /// or the server drains.
    ///
    /// # Errors
    ///
    /// As [`Reactor::register`]; a [`DRAINING`] error (kind `Other`) once
    /// [`drain`](Self::drain) was called. The listener is dropped (closed) on error.
    pub fn add_listener(&mut self, listener: TcpListener) -> io::Result<Key> {
        self.refuse_if_draining()?;
        listener.set_nonblocking(true)?;
        self.reactor.register(
            Entry::Listener(Listener {
                listener,
                user_paused: false,
            }),
            Interest::READABLE,
            Mode::Level,
        )
    }

    /// A draining server accepts nothing new: a listener added now would never be
    /// closed by the drain.
    fn refuse_if_draining(&self) -> io::Result<()> {
        if self.draining {
            return Err(io::Error::other(DRAINING));
        }
        Ok(())
    }

    /// Stops accepting on `key` for now (one system call); [`resume_listener`]
    /// undoes it. The accept-mutex strategies use this pair.
    ///
    /// # Errors
    ///
    /// As [`Reactor::modify`].
    ///
    /// [`resume_listener`]: Self::resume_listener
    pub fn pause_listener(&mut self, key: Key) -> io::Result<()> {
        self.listener_mut(key)?.user_paused = true;
        self.reactor.modify(key, Interest::NONE, Mode::Level)
    }

    /// Accepts on `key` again.
    ///
    /// # Errors
    ///
    /// As [`Reactor::modify`]; [`io::ErrorKind::NotFound`] if `key` is not a listener
    /// of this server.
    pub fn resume_listener(&mut self, key: Key) -> io::Result<()> {
        self.listener_mut(key)?.user_paused = false;
        self.reactor.modify(key, Interest::READABLE, Mode::Level)
    }

    /// Adds a listener with `EPOLLEXCLUSIVE`, re-registered every `rearm` (Linux).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(crate) fn add_exclusive_listener_inner(
        &mut self,
        listener: TcpListener,
        rearm: Option<Duration>,
    ) -> io::Result<Key> {
        use crate::os::linux::ReactorExt;
        self.refuse_if_draining()?;
        listener.set_nonblocking(true)?;
        let key = self.reactor.register_exclusive(Entry::Listener(Listener {
            listener,
            user_paused: false,
        }))?;
        if let Some(every) = rearm {
            let every = every.max(Duration::from_millis(1));
            let id = self
                .reactor
                .add_timer(later(Instant::now(), every), Some(every));
            self.rearm.insert(id, key);
        }
        Ok(key)
    }

    /// Registers an exclusive listener again: its wait-queue entry moves to the tail,
    /// so the kernel's wake-ups rotate among the processes sharing the listener
    /// instead of favouring the same one. A paused listener (by the caller, or after
    /// `EMFILE`) stays paused.
    fn rearm_exclusive(&mut self, id: TimerId, key: Key) {
        let Some(paused) = self.held_off(key) else {
            self.rearm.remove(&id);
            self.reactor.cancel_timer(id);
            return;
        };
        if !paused {
            match self.reactor.modify(key, Interest::READABLE, Mode::Level) {
                Ok(()) => self.stats.rearms += 1,
                // Out of the poll set until the next re-arm adds it again.
                Err(_) => self.stats.accept_errors += 1,
            }
        }
    }

    /// Whether listener `key` is held off for any reason: paused by the caller, in
    /// its `EMFILE` back-off, or at the connection limit; `None` if it is no listener.
    fn held_off(&self, key: Key) -> Option<bool> {
        match self.reactor.get(key) {
            Some(Entry::Listener(l)) => Some(
                l.user_paused
                    || self.listener_retry.values().any(|k| *k == key)
                    || self.full_paused.contains(&key),
            ),
            _ => None,
        }
    }

    fn listener_mut(&mut self, key: Key) -> io::Result<&mut Listener> {
        match self.reactor.get_mut_inner(key) {
            Some(Entry::Listener(l)) => Ok(l),
            _ => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "not a listener of this server",
            )),
        }
    }

    /// Removes a listener and gives it back.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotFound`] if `key` is not a listener of this server.
    pub fn remove_listener(&mut self, key: Key) -> io::Result<TcpListener> {
        if !matches!(self.reactor.get(key), Some(Entry::Listener(_))) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "not a listener of this server",
            ));
        }
        match self.reactor.deregister(key)? {
            Entry::Listener(l) => Ok(l.listener),
            _ => unreachable!("checked above"),
        }
    }

    /// Serves a connection that arrived from elsewhere (a descriptor received with
    /// `herder-fd`, an `accept` of the caller's) with `svc`, after handing it `initial`
    /// — bytes already read from the connection.
    ///
    /// `initial` is answered at once; the connection itself is first read at the
    /// next [`poll`](Self::poll) (see [`FirstRead`]), so that the caller can tell
    /// the sender it owns the connection before a byte of it is read, and given to
    /// the poller then if it stays open. On Unix the socket's blocking mode is
    /// left as it is (the server reads and writes with `MSG_DONTWAIT`); on Windows
    /// it is made non-blocking.
    ///
    /// # Errors
    ///
    /// A [`LIMIT_REACHED`] error (kind `Other`) at
    /// [`ServerConfig::max_connections`]; on Windows, what making the socket
    /// non-blocking returns. The stream is dropped (closed) on error. A failure of
    /// the poller to take the connection comes later, as any error of the
    /// connection does: it is closed, and its service hears
    /// [`CloseReason::Error`].
    ///
    /// # Examples
    ///
    /// ```
    /// use herder_reactor::{ServerConfig, Flow, Input, Output, Server, Service};
    /// use std::io::Read;
    ///
    /// struct Upper;
    /// impl Service for Upper {
    ///     fn on_data(&mut self, input: &mut Input<'_>, out: &mut Output<'_>) -> Flow {
    ///         out.write(&input.data().to_ascii_uppercase());
    ///         input.consume(input.len());
    ///         Flow::Close
    ///     }
    /// }
    ///
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let mut client = std::net::TcpStream::connect(listener.local_addr()?)?;
    /// let (conn, _) = listener.accept()?; // accepted elsewhere, e.g. received with herder-fd
    ///
    /// let mut server = Server::new(ServerConfig::default(), |_| Upper)?;
    /// server.add_connection(conn, Upper, b"already read")?; // answered at once
    /// let mut reply = String::new();
    /// client.read_to_string(&mut reply)?;
    /// assert_eq!(reply, "ALREADY READ");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn add_connection(
        &mut self,
        stream: impl Into<Stream>,
        svc: Svc,
        initial: &[u8],
    ) -> io::Result<Key> {
        let stream = stream.into();
        stream.prepare()?;
        self.add_conn(stream, svc, initial, false)
    }

    /// Adds a connection. One accepted here (`own`: its descriptor has no other
    /// copy) is settled now — read at once if that is the rule — others at the
    /// next poll, unless `initial` is to be answered or the server drains.
    fn add_conn(&mut self, stream: Stream, svc: Svc, initial: &[u8], own: bool) -> io::Result<Key> {
        if self.is_full() {
            return Err(io::Error::other(LIMIT_REACHED));
        }
        let key = self.register_conn(stream, svc, Vec::new(), initial.is_empty(), own)?;
        self.stats.accepted += 1;
        if !initial.is_empty() || self.draining {
            let outcome = self.with_conn(key, |c, b| {
                if initial.is_empty() {
                    Ok(())
                } else {
                    feed(c, initial, b)
                }
            });
            self.settle(key, outcome);
        } else if own {
            self.first_read(key);
        } else {
            self.arrivals.push(key);
        }
        Ok(key)
    }

    /// Settles a connection just taken in, reading it first if the rule
    /// ([`FirstRead`]) says so, and learns from what the read found.
    fn first_read(&mut self, key: Key) {
        let now = self.first_reads.at_once(self.config.first_read);
        let mut found = None;
        let outcome = self.with_conn(key, |c, b| {
            if !c.input.is_empty() {
                feed(c, &[], b)
            } else if now {
                let fresh = c.fresh;
                let r = on_ready(c, true, false, b);
                // Data clears `fresh`; the peer's end sets `eof`.
                if fresh {
                    found = Some(!c.fresh || c.eof);
                }
                r
            } else {
                Ok(())
            }
        });
        if let Some(found) = found {
            self.first_reads.learn(found);
        }
        self.settle(key, outcome);
    }

    /// Takes a connection in with `input` unconsumed, and arms its idle timer. The
    /// caller counts it (taken in, arrived, or back) and settles it, which gives it
    /// to the poller if it is still open then.
    fn register_conn(
        &mut self,
        stream: Stream,
        svc: Svc,
        input: Vec<u8>,
        fresh: bool,
        own: bool,
    ) -> io::Result<Key> {
        let nodelay = self.config.nodelay && matches!(stream, Stream::Tcp(_));
        let conn = Conn {
            stream,
            svc,
            input,
            output: Vec::new(),
            interest: Interest::NONE,
            last_active: Instant::now(),
            eof: false,
            closing: false,
            paused: false,
            drain_asked: false,
            fresh,
            close_reason: None,
            lingering: false,
            timer: None,
            timer_at: None,
            timer_is_linger: false,
            own,
            polled: Polled::Not,
            done: false,
            nodelay,
            wrote: false,
            stays: false,
            departing: None,
        };
        let key = self.reactor.insert(Entry::Conn(Box::new(conn)))?;
        self.stats.active += 1;
        if let Some(t) = self.config.idle_timeout {
            self.arm(key, later(Instant::now(), t), false);
        }
        Ok(key)
    }

    /// Adds a connection that moved here from another process: `svc` is a fresh
    /// service whose [`Service::on_arrive`] accepted the state that came with it,
    /// `input` the bytes its service there had not consumed, and `fresh` whether
    /// its peer had sent nothing yet ([`Departure::is_fresh`]).
    ///
    /// Unlike [`add_connection`](Self::add_connection), nothing happens to the
    /// connection before the next [`poll`](Self::poll) — `input` is handed to the
    /// service then, and a drain or a move starting meanwhile reaches it then — so
    /// that the caller can tell the sender it owns the connection before a byte of
    /// it is read or written.
    ///
    /// # Errors
    ///
    /// As [`add_connection`](Self::add_connection).
    pub fn adopt(
        &mut self,
        stream: impl Into<Stream>,
        svc: Svc,
        input: &[u8],
        fresh: bool,
    ) -> io::Result<Key> {
        let stream = stream.into();
        stream.prepare()?;
        if self.is_full() {
            return Err(io::Error::other(LIMIT_REACHED));
        }
        let fresh = fresh && input.is_empty();
        let key = self.register_conn(stream, svc, input.to_vec(), fresh, false)?;
        // Counted as arrived, not as taken in: a worker recycled after so many
        // connections must not be due again for the ones it inherited.
        self.stats.arrived += 1;
        self.arrivals.push(key);
        Ok(key)
    }

    /// Starts a drain ([`drain`](Self::drain)) in which every connection whose
    /// service agrees ([`Service::on_move`]) is taken out of the server, at a point
    /// where its output is all written, to move to another process: take them with
    /// [`take_departures`](Self::take_departures). Connections that do not move are
    /// drained as by [`drain`](Self::drain). A server that drains already starts
    /// moving its connections now.
    pub fn move_out(&mut self, deadline: Instant) {
        if self.moving {
            return;
        }
        self.moving = true;
        if self.draining {
            self.apply_rules();
        } else {
            self.drain(deadline);
        }
    }

    /// Whether [`move_out`](Self::move_out) was called.
    pub fn is_moving(&self) -> bool {
        self.moving
    }

    /// Takes up to `max` of the connections that left the server to move (oldest
    /// first). They no longer count as open ([`is_empty`](Self::is_empty)).
    pub fn take_departures(&mut self, max: usize) -> Vec<Departure<Svc>> {
        let n = max.min(self.departures.len());
        self.departures.drain(..n).collect()
    }

    /// Whether connections wait to be taken with
    /// [`take_departures`](Self::take_departures).
    pub fn has_departures(&self) -> bool {
        !self.departures.is_empty()
    }

    /// Gives a connection whose move failed back to the server, as it was when it
    /// left; it stays here for good and is drained like one that never moves. The
    /// connection limit does not apply: it was the server's already.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::OutOfMemory`] if the server's slots are all taken; the
    /// connection is closed then. A failure of the poller to take it comes later,
    /// as for [`add_connection`](Self::add_connection).
    pub fn readmit(&mut self, departure: Departure<Svc>) -> io::Result<Key> {
        let Departure {
            stream,
            svc,
            input,
            fresh,
            ..
        } = departure;
        let key = self.register_conn(stream, svc, input, fresh, false)?;
        // Not counted as gone.
        self.stats.departed -= 1;
        if let Some(Entry::Conn(c)) = self.reactor.get_mut_inner(key) {
            c.stays = true;
        }
        self.arrivals.push(key);
        Ok(key)
    }

    /// Takes a connection whose service agreed to move out of the event loop.
    fn depart(&mut self, key: Key) {
        let Ok(Entry::Conn(mut c)) = self.reactor.deregister(key) else {
            return;
        };
        self.stats.active -= 1;
        self.stats.departed += 1;
        if let Some(id) = c.timer.take() {
            self.conn_timers.remove(&id);
            self.reactor.cancel_timer(id);
        }
        self.unfill();
        let Conn {
            stream,
            svc,
            input,
            departing,
            fresh,
            ..
        } = *c;
        self.departures.push(Departure {
            stream,
            svc,
            input,
            state: departing.unwrap_or_default(),
            fresh,
        });
    }

    /// Watches a source of the caller's; its events come back from
    /// [`poll`](Self::poll) as [`Event::Io`].
    ///
    /// # Errors
    ///
    /// As [`Reactor::register`].
    pub fn add_source(
        &mut self,
        source: Box<dyn Source>,
        interest: Interest,
        mode: Mode,
    ) -> io::Result<Key> {
        self.reactor
            .register(Entry::User(Box::new(Boxed(source))), interest, mode)
    }

    /// Watches a source of the caller's, as [`add_source`](Self::add_source) does,
    /// and keeps its type: [`watched`](Self::watched) and
    /// [`watched_mut`](Self::watched_mut) lend it back, [`unwatch`](Self::unwatch)
    /// returns it.
    ///
    /// # Errors
    ///
    /// As [`Reactor::register`]; the source is dropped then.
    ///
    /// # Examples
    ///
    /// A pipe's read end watched by the server, and read through the server:
    ///
    /// ```
    /// # #[cfg(unix)] {
    /// use herder_reactor::{Event, Flow, Input, Interest, Mode, Output, Server, ServerConfig, Service};
    /// use std::io::{Read, Write};
    /// # struct Echo;
    /// # impl Service for Echo {
    /// #     fn on_data(&mut self, i: &mut Input<'_>, _: &mut Output<'_>) -> Flow { i.consume(i.len()); Flow::Continue }
    /// # }
    /// let (reader, mut writer) = std::os::unix::net::UnixStream::pair()?;
    /// reader.set_nonblocking(true)?;
    /// let mut server = Server::new(ServerConfig::default(), |_| Echo)?;
    /// let pipe = server.watch(reader, Interest::READABLE, Mode::Level)?;
    /// writer.write_all(b"hello")?;
    /// let mut events = Vec::new();
    /// while !events.iter().any(|e| matches!(e, Event::Io { key, .. } if *key == pipe.key())) {
    ///     server.poll(&mut events, None)?;
    /// }
    /// let mut got = [0u8; 5];
    /// server.watched_mut(pipe).expect("still watched").read_exact(&mut got)?;
    /// assert_eq!(&got, b"hello");
    /// let reader = server.unwatch(pipe)?; // back, no longer watched
    /// # drop(reader);
    /// # }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn watch<T: Source>(
        &mut self,
        source: T,
        interest: Interest,
        mode: Mode,
    ) -> io::Result<Watched<T>> {
        let key = self
            .reactor
            .register(Entry::User(Box::new(source)), interest, mode)?;
        Ok(Watched {
            key,
            _type: std::marker::PhantomData,
        })
    }

    /// The source `watched` names, if it is still watched.
    pub fn watched<T: Source>(&self, watched: Watched<T>) -> Option<&T> {
        match self.reactor.get(watched.key)? {
            Entry::User(u) => (**u).as_any().downcast_ref(),
            _ => None,
        }
    }

    /// The source `watched` names, mutably, if it is still watched.
    pub fn watched_mut<T: Source>(&mut self, watched: Watched<T>) -> Option<&mut T> {
        match self.reactor.get_mut_inner(watched.key)? {
            Entry::User(u) => (**u).as_any_mut().downcast_mut(),
            _ => None,
        }
    }

    /// Stops watching the source `watched` names and gives it back.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotFound`] if it is no longer watched.
    pub fn unwatch<T: Source>(&mut self, watched: Watched<T>) -> io::Result<T> {
        if self.watched(watched).is_none() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no longer watched"));
        }
        match self.reactor.deregister(watched.key)? {
            Entry::User(u) => u
                .into_any()
                .downcast()
                .map(|t| *t)
                .map_err(|_| io::Error::new(io::ErrorKind::NotFound, "no longer watched")),
            _ => Err(io::Error::new(io::ErrorKind::NotFound, "no longer watched")),
        }
    }

    /// Changes a caller's source's interest; re-arms a oneshot one.
    ///
    /// # Errors
    ///
    /// As [`Reactor::modify`].
    pub fn modify_source(&mut self, key: Key, interest: Interest, mode: Mode) -> io::Result<()> {
        if !matches!(self.reactor.get(key), Some(Entry::User(_))) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "not a source added with add_source",
            ));
        }
        self.reactor.modify(key, interest, mode)
    }

    /// A caller's source.
    pub fn source(&self, key: Key) -> Option<&dyn Source> {
        match self.reactor.get(key)? {
            Entry::User(u) => {
                let u: &dyn UserSource = &**u;
                // One added with `add_source` is kept in its own box: lend that.
                match (*u).as_any().downcast_ref::<Boxed>() {
                    Some(b) => Some(&*b.0),
                    None => Some(u),
                }
            }
            _ => None,
        }
    }

    /// Removes a caller's source and gives it back.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotFound`] if `key` is not a source of the caller's.
    pub fn remove_source(&mut self, key: Key) -> io::Result<Box<dyn Source>> {
        if !matches!(self.reactor.get(key), Some(Entry::User(_))) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "not a source added with add_source",
            ));
        }
        match self.reactor.deregister(key)? {
            // One added with `add_source` is kept in its own box: give that back.
            Entry::User(u) if (*u).as_any().is::<Boxed>() => u
                .into_any()
                .downcast::<Boxed>()
                .map(|b| b.0)
                .map_err(|_| io::Error::other("a source of another type")),
            Entry::User(u) => Ok(u),
            _ => unreachable!("checked above"),
        }
    }

    /// As [`Reactor::add_timer`]; the timer comes back from [`poll`](Self::poll).
    pub fn add_timer(&mut self, deadline: Instant, repeat: Option<Duration>) -> TimerId {
        self.reactor.add_timer(deadline, repeat)
    }

    /// As [`Reactor::cancel_timer`].
    pub fn cancel_timer(&mut self, id: TimerId) -> bool {
        self.reactor.cancel_timer(id)
    }

    /// As [`Reactor::waker`].
    pub fn waker(&self) -> Waker {
        self.reactor.waker()
    }

    /// As [`Reactor::watch_signals`].
    ///
    /// # Errors
    ///
    /// As [`Reactor::watch_signals`].
    pub fn watch_signals(&mut self, signals: &[Signal]) -> io::Result<()> {
        self.reactor.watch_signals(signals)
    }

    /// Whether [`drain`](Self::drain) was called.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Starts a graceful stop.
    ///
    /// The listeners are closed at once (dropped, not only taken out of the poll
    /// set), so that new connections are refused instead of waiting in a backlog
    /// nobody accepts from; where another process holds the same listening socket,
    /// the kernel keeps it and that process gets them. No listener can be paused,
    /// resumed or re-armed after this.
    ///
    /// Draining never cuts a stream: a connection is closed early only where its
    /// service says it is at a boundary ([`Service::on_drain`]; HTTP between
    /// requests, answering the last one with `Connection: close`); otherwise it is
    /// served until the peer closes it or `deadline` passes, when whatever is still
    /// open is closed with [`CloseReason::Shutdown`]. [`is_empty`](Self::is_empty)
    /// tells when all are gone. A connection added during the drain is served by the
    /// same rule.
    pub fn drain(&mut self, deadline: Instant) {
        if self.draining {
            return;
        }
        self.draining = true;
        let listeners: Vec<Key> = self
            .reactor
            .keys()
            .filter(|k| matches!(self.reactor.get(*k), Some(Entry::Listener(_))))
            .collect();
        for key in listeners {
            // Dropping the listener closes our descriptor of the listening socket.
            drop(self.reactor.deregister(key));
        }
        // Their timers and bookkeeping name keys that are gone now.
        for (id, _) in self.rearm.drain() {
            self.reactor.cancel_timer(id);
        }
        for (id, _) in self.listener_retry.drain() {
            self.reactor.cancel_timer(id);
        }
        self.full_paused.clear();
        self.drain_deadline = Some(self.reactor.add_timer(deadline, None));
        self.apply_rules();
    }

    /// Applies the drain and move rules to every connection now (a drain or a move
    /// started). Arrivals meet them at the next poll, after they are acknowledged.
    fn apply_rules(&mut self) {
        for key in self.conn_keys() {
            if self.arrivals.contains(&key) {
                continue;
            }
            let outcome = self.with_conn(key, |_, _| Ok(()));
            self.settle(key, outcome);
        }
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.stats.active == 0
    }

    /// Waits for events up to `timeout`, serves connections and listeners, and
    /// replaces the contents of `events` with what is left for the caller: its own
    /// sources' readiness, its timers, signals and wakes.
    ///
    /// # Errors
    ///
    /// As [`Reactor::poll`]. Errors of single connections close them (and reach
    /// their [`Service::on_close`]); they never end the loop.
    pub fn poll(&mut self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        events.clear();
        for key in std::mem::take(&mut self.arrivals) {
            self.first_read(key);
        }
        let mut evs = std::mem::take(&mut self.events);
        self.reactor.poll(&mut evs, timeout)?;
        for ev in evs.drain(..) {
            match ev {
                Event::Io {
                    key,
                    readable,
                    writable,
                    ..
                } => match self.reactor.get(key) {
                    Some(Entry::Listener(_)) => self.accept(key),
                    Some(Entry::Conn(_)) => {
                        let outcome = self.with_conn(key, |c, b| {
                            if c.polled == Polled::Once {
                                // Reported: nothing more will be until it is given
                                // an interest again (which `settle` does if it
                                // stays open).
                                c.polled = Polled::Silent;
                                c.interest = Interest::NONE;
                            }
                            on_ready(c, readable, writable, b)
                        });
                        self.settle(key, outcome);
                    }
                    Some(Entry::User(_)) => events.push(ev),
                    None => {}
                },
                Event::Timer(id) => {
                    if let Some(key) = self.conn_timers.remove(&id) {
                        self.on_conn_timer(key, id);
                    } else if let Some(key) = self.rearm.get(&id).copied() {
                        self.rearm_exclusive(id, key);
                    } else if let Some(key) = self.listener_retry.remove(&id) {
                        if self.held_off(key) == Some(false) {
                            let _ = self.reactor.modify(key, Interest::READABLE, Mode::Level);
                        }
                    } else if self.drain_deadline == Some(id) {
                        self.drain_deadline = None;
                        for key in self.conn_keys() {
                            self.close(key, CloseReason::Shutdown);
                        }
                    } else {
                        events.push(ev);
                    }
                }
                other => events.push(other),
            }
        }
        self.events = evs;
        Ok(())
    }

    /// Whether the server holds [`ServerConfig::max_connections`].
    pub fn is_full(&self) -> bool {
        self.config
            .max_connections
            .is_some_and(|max| self.stats.active >= max)
    }

    /// Resumes the listeners paused at the connection limit, once below it.
    fn unfill(&mut self) {
        if self.full_paused.is_empty() || self.is_full() {
            return;
        }
        for key in std::mem::take(&mut self.full_paused) {
            if self.held_off(key) == Some(false) {
                let _ = self.reactor.modify(key, Interest::READABLE, Mode::Level);
            }
        }
    }

    fn accept(&mut self, key: Key) {
        for _ in 0..self.config.accept_burst.max(1) {
            if self.is_full() {
                // Level-triggered, the listener would wake us at once again.
                if !self.full_paused.contains(&key)
                    && self
                        .reactor
                        .modify(key, Interest::NONE, Mode::Level)
                        .is_ok()
                {
                    self.full_paused.push(key);
                }
                return;
            }
            let accepted = match self.reactor.get(key) {
                Some(Entry::Listener(l)) => accept_nonblocking(&l.listener),
                _ => return,
            };
            match accepted {
                Ok(stream) => {
                    let stream = Stream::Tcp(stream);
                    let svc = (self.factory)(&stream);
                    // A connection that cannot be registered is dropped: closed.
                    let _ = self.add_conn(stream, svc, &[], true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.stats.accept_errors += 1;
                    if is_out_of_descriptors(&e) {
                        // At most one line a second, however long the shortage lasts.
                        let now = Instant::now();
                        if self
                            .out_of_descriptors_logged
                            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
                        {
                            self.out_of_descriptors_logged = Some(now);
                            tracing::warn!(
                                error = %e,
                                backoff = ?self.config.accept_backoff,
                                accept_errors = self.stats.accept_errors,
                                "accept: out of descriptors or memory; pausing the listener"
                            );
                        }
                        // Level-triggered, the listener would wake us at once again:
                        // pause it and retry later instead of spinning.
                        if self
                            .reactor
                            .modify(key, Interest::NONE, Mode::Level)
                            .is_ok()
                        {
                            let at = later(Instant::now(), self.config.accept_backoff);
                            let id = self.reactor.add_timer(at, None);
                            self.listener_retry.insert(id, key);
                        }
                    }
                    // ECONNABORTED and the like concern one connection only.
                    tracing::debug!(error = %e, "accept failed");
                    if is_out_of_descriptors(&e) {
                        return;
                    }
                }
            }
        }
    }

    /// Starts `key`'s timer (idle or linger) at `at`, replacing the one it had.
    fn arm(&mut self, key: Key, at: Instant, linger: bool) {
        let Some(Entry::Conn(c)) = self.reactor.get_mut_inner(key) else {
            return;
        };
        let old = c.timer.take();
        if let Some(old) = old {
            self.conn_timers.remove(&old);
            self.reactor.cancel_timer(old);
        }
        let id = self.reactor.add_timer(at, None);
        if let Some(Entry::Conn(c)) = self.reactor.get_mut_inner(key) {
            c.timer = Some(id);
            c.timer_at = Some(at);
            c.timer_is_linger = linger;
        }
        self.conn_timers.insert(id, key);
    }

    fn on_conn_timer(&mut self, key: Key, id: TimerId) {
        let (lingering, last, stuck, deadline) = match self.reactor.get_mut_inner(key) {
            Some(Entry::Conn(c)) if c.timer == Some(id) => {
                c.timer = None;
                c.timer_at = None;
                (
                    c.lingering,
                    c.last_active,
                    c.closing || !c.output.is_empty(),
                    c.svc.deadline().filter(|_| !c.closing),
                )
            }
            _ => return,
        };
        if lingering {
            let reason = match self.reactor.get_mut_inner(key) {
                Some(Entry::Conn(c)) => c.close_reason.take(),
                _ => None,
            };
            self.close(key, reason.unwrap_or(CloseReason::Service));
            return;
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| d <= now) {
            let outcome = self.with_conn(key, |c, b| {
                let flow = call(c, b.obuf, |svc, out| svc.on_deadline(out))?;
                apply(c, flow, CloseReason::Deadline)
            });
            self.settle(key, outcome);
            self.arm_next(key, self.config.idle_timeout.map(|t| later(last, t)));
            return;
        }
        let Some(timeout) = self.config.idle_timeout else {
            self.arm_next(key, None);
            return;
        };
        let due = later(last, timeout);
        if now < due {
            self.arm_next(key, Some(due));
            return;
        }
        if stuck {
            // Output the peer has not taken for a whole timeout: it is not reading.
            self.close(key, CloseReason::Idle);
            return;
        }
        let outcome = self.with_conn(key, |c, b| {
            let flow = call(c, b.obuf, |svc, out| svc.on_idle(out))?;
            apply(c, flow, CloseReason::Idle)
        });
        self.settle(key, outcome);
        self.arm_next(key, Some(later(now, timeout)));
    }

    /// After a connection's timer fired: arms it for whichever comes first of
    /// `idle_due`, the service's deadline and a timer armed meanwhile.
    fn arm_next(&mut self, key: Key, idle_due: Option<Instant>) {
        let (due, armed) = match self.reactor.get(key) {
            Some(Entry::Conn(c)) if !c.lingering => {
                let deadline = c.svc.deadline().filter(|_| !c.closing);
                let due = [c.timer_at, idle_due, deadline].into_iter().flatten().min();
                (due, c.timer_at)
            }
            _ => return,
        };
        if let Some(due) = due.filter(|&d| Some(d) != armed) {
            self.arm(key, due, false);
        }
    }

    /// Runs `f` on the connection at `key` with the server's buffers, then applies the
    /// drain rule.
    fn with_conn(
        &mut self,
        key: Key,
        f: impl FnOnce(&mut Conn<Svc>, &mut Bufs<'_>) -> Result<(), CloseReason>,
    ) -> Result<(), CloseReason> {
        let (draining, moving) = (self.draining, self.moving);
        let Some(Entry::Conn(c)) = self.reactor.get_mut_inner(key) else {
            return Ok(());
        };
        let mut b = Bufs {
            rbuf: &mut self.rbuf,
            obuf: &mut self.obuf,
            config: &self.config,
        };
        f(c, &mut b)?;
        // While moving, a connection that may still move is not drained: it is asked
        // to move whenever its output is written, and waits for that otherwise.
        let mut may_move = moving && !c.stays && !c.closing && !c.eof;
        if may_move && c.output.is_empty() {
            match c.svc.on_move() {
                Move::Now(state) => {
                    c.departing = Some(state);
                    return Ok(());
                }
                Move::Later => {}
                Move::Never => {
                    c.stays = true;
                    may_move = false;
                }
            }
        }
        if draining && !may_move && !c.closing && (c.idle() || !c.drain_asked) {
            c.drain_asked = true;
            let idle = c.idle();
            let flow = call(c, b.obuf, |svc, out| svc.on_drain(idle, out))?;
            apply(c, flow, CloseReason::Shutdown)?;
        }
        if c.eof && c.output.is_empty() && !c.closing {
            // Nothing more can come, and nothing is owed.
            c.closing = true;
            c.close_reason = Some(CloseReason::Eof);
        }
        if c.closing && c.output.is_empty() && !c.lingering {
            if c.eof || c.done || b.config.linger.is_zero() || c.stream.shutdown_write().is_err() {
                return Err(c.close_reason.take().unwrap_or(CloseReason::Service));
            }
            // The peer may still be sending: a close now could reset the connection
            // and destroy the reply in flight. Read and discard until it is done.
            c.lingering = true;
        }
        Ok(())
    }

    /// Closes the connection on `Err`, or brings its registration up to date.
    fn settle(&mut self, key: Key, outcome: Result<(), CloseReason>) {
        if let Err(reason) = outcome {
            self.close(key, reason);
            return;
        }
        if matches!(self.reactor.get(key), Some(Entry::Conn(c)) if c.departing.is_some()) {
            self.depart(key);
            return;
        }
        let linger = matches!(
            self.reactor.get(key),
            Some(Entry::Conn(c)) if c.lingering && !c.timer_is_linger
        );
        if linger {
            self.arm(key, later(Instant::now(), self.config.linger), true);
        } else if let Some(Entry::Conn(c)) = self.reactor.get(key) {
            // A service deadline earlier than the connection's timer moves it.
            if let Some(d) = c.svc.deadline() {
                if !c.lingering && !c.closing && c.timer_at.is_none_or(|at| d < at) {
                    self.arm(key, d, false);
                }
            }
        }
        let high = self.config.high_water;
        let Some(Entry::Conn(c)) = self.reactor.get_mut_inner(key) else {
            return;
        };
        if c.output.len() > high {
            c.paused = true;
        } else if c.output.len() <= high / 2 {
            c.paused = false;
        }
        let want = c.wanted_interest();
        if want != c.interest {
            c.interest = want;
            // On Linux, a connection that may have copies elsewhere is first given
            // to the poller for one report: one served and closed before it is
            // given again (a reply ending it) has no interest left, and its close
            // needs no `EPOLL_CTL_DEL` though another copy keeps the socket open.
            // Given again before its one report, it is level-triggered from then on.
            let (polled, mode) = if c.polled == Polled::Not && !c.own && ONE_REPORT_FIRST {
                (Polled::Once, Mode::Oneshot)
            } else {
                (Polled::Level, Mode::Level)
            };
            c.polled = polled;
            if let Err(e) = self.reactor.modify(key, want, mode) {
                self.close(key, CloseReason::Error(e));
            }
        }
    }

    fn close(&mut self, key: Key, reason: CloseReason) {
        // Closed right below. The close of the last copy takes it out of epoll;
        // until then a registration reports nothing if it has no interest: never
        // given to the poller, or its one report made.
        let quiet = matches!(
            self.reactor.get(key),
            Some(Entry::Conn(c)) if c.own || matches!(c.polled, Polled::Not | Polled::Silent)
        );
        let entry = if quiet {
            self.reactor.deregister_to_close(key)
        } else {
            self.reactor.deregister(key)
        };
        if let Ok(Entry::Conn(mut c)) = entry {
            self.stats.active -= 1;
            self.unfill();
            if let Some(id) = c.timer.take() {
                self.conn_timers.remove(&id);
                self.reactor.cancel_timer(id);
            }
            c.svc.on_close(&reason);
            // A descriptor is free again: a listener paused for want of one retries
            // now rather than at the end of its back-off.
            if !self.listener_retry.is_empty() && !self.draining {
                let paused: Vec<(TimerId, Key)> = self.listener_retry.drain().collect();
                for (id, key) in paused {
                    self.reactor.cancel_timer(id);
                    if self.held_off(key) == Some(false) {
                        let _ = self.reactor.modify(key, Interest::READABLE, Mode::Level);
                    }
                }
            }
        }
    }
}

impl<Svc: Service + 'static> Drop for Server<Svc> {
    fn drop(&mut self) {
        for key in self.conn_keys() {
            self.close(key, CloseReason::Shutdown);
        }
    }
}

impl<Svc: Service + 'static> fmt::Debug for Server<Svc> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.config)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The server's shared buffers, lent to one connection at a time.
struct Bufs<'a> {
    rbuf: &'a mut Vec<u8>,
    obuf: &'a mut Vec<u8>,
    config: &'a ServerConfig,
}

/// A connection from `listener`, non-blocking and close-on-exec from the start.
#[cfg(unix)]
fn accept_nonblocking(listener: &TcpListener) -> io::Result<TcpStream> {
    crate::sys::accept(listener)
}

#[cfg(windows)]
fn accept_nonblocking(listener: &TcpListener) -> io::Result<TcpStream> {
    let (stream, _) = listener.accept()?;
    crate::sys::no_inherit(&stream)?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}

/// `at + d`, or a point decades away if that overflows: a huge timeout means never.
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(Duration::from_secs(30 * 365 * 86_400)))
        .unwrap_or(at)
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(
            e.raw_os_error(),
            Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
        )
    }
    #[cfg(not(unix))]
    {
        // WSAEMFILE, WSAENOBUFS
        matches!(e.raw_os_error(), Some(10024) | Some(10055))
    }
}

/// Handles one readiness event of a connection.
fn on_ready<Svc: Service + 'static>(
    c: &mut Conn<Svc>,
    readable: bool,
    writable: bool,
    b: &mut Bufs<'_>,
) -> Result<(), CloseReason> {
    if writable && !c.output.is_empty() {
        flush(c)?;
    }
    if readable && c.lingering {
        let cap = b.rbuf.len();
        // Discard what the peer still sends; its end of file finishes the close.
        for _ in 0..16 {
            match c.stream.read_now(&mut b.rbuf[..cap]) {
                Ok(0) => return Err(c.close_reason.take().unwrap_or(CloseReason::Service)),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(c.close_reason.take().unwrap_or(CloseReason::Service)),
            }
        }
        return Ok(());
    }
    if readable && !c.eof && !c.closing && !c.paused {
        let cap = b.config.read_buffer.max(1).min(b.rbuf.len());
        let mut rbuf = std::mem::take(b.rbuf);
        let read = c.stream.read_now(&mut rbuf[..cap]);
        let result = match read {
            Ok(0) => {
                c.eof = true;
                call(c, b.obuf, |svc, out| svc.on_eof(out))
                    .and_then(|flow| apply(c, flow, CloseReason::Eof))
            }
            Ok(n) => {
                c.last_active = Instant::now();
                c.fresh = false;
                feed(c, &rbuf[..n], b)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(CloseReason::Error(e)),
        };
        *b.rbuf = rbuf;
        result?;
    }
    Ok(())
}

/// Hands `data` (and earlier leftovers) to the service.
fn feed<Svc: Service + 'static>(
    c: &mut Conn<Svc>,
    data: &[u8],
    b: &mut Bufs<'_>,
) -> Result<(), CloseReason> {
    let flow = if c.input.is_empty() {
        // The common case: the input never leaves the shared read buffer.
        let mut input = Input::new(data);
        let flow = call(c, b.obuf, |svc, out| svc.on_data(&mut input, out))?;
        let consumed = input.consumed();
        c.input.extend_from_slice(&data[consumed..]);
        flow
    } else {
        c.input.extend_from_slice(data);
        let pending = std::mem::take(&mut c.input);
        let mut input = Input::new(&pending);
        let flow = call(c, b.obuf, |svc, out| svc.on_data(&mut input, out));
        let consumed = input.consumed();
        let mut pending = pending;
        pending.drain(..consumed);
        c.input = if pending.is_empty() {
            Vec::new()
        } else {
            pending
        };
        flow?
    };
    apply(c, flow, CloseReason::Service)?;
    if c.input.len() > b.config.max_input {
        // The unconsumed input is dropped either way: it cannot grow further.
        c.input = Vec::new();
        let flow = call(c, b.obuf, |svc, out| svc.on_input_limit(out))?;
        apply(
            c,
            if flow == Flow::Continue {
                Flow::Close
            } else {
                flow
            },
            CloseReason::InputLimit,
        )?;
    }
    Ok(())
}

/// Runs a service callback with an [`Output`], then writes what it produced. When no
/// output is pending, the reply goes to the shared buffer and straight to the socket;
/// only what the socket does not take is kept.
fn call<Svc: Service + 'static>(
    c: &mut Conn<Svc>,
    obuf: &mut Vec<u8>,
    f: impl FnOnce(&mut Svc, &mut Output<'_>) -> Flow,
) -> Result<Flow, CloseReason> {
    if c.output.is_empty() {
        obuf.clear();
        let flow = f(&mut c.svc, &mut Output::new(obuf));
        if !obuf.is_empty() && flow != Flow::Abort {
            before_write(c, obuf.len());
            let written = write_some(&mut c.stream, obuf)?;
            c.output.extend_from_slice(&obuf[written..]);
            if written > 0 {
                c.last_active = Instant::now();
            }
        }
        if obuf.capacity() > 1 << 20 {
            *obuf = Vec::new();
        }
        Ok(flow)
    } else {
        let flow = f(&mut c.svc, &mut Output::new(&mut c.output));
        Ok(flow)
    }
}

/// Applies a [`Flow`]: `Close` stops reading and closes once the output is written;
/// `Abort` closes now.
fn apply<Svc>(c: &mut Conn<Svc>, flow: Flow, reason: CloseReason) -> Result<(), CloseReason> {
    match flow {
        Flow::Continue => Ok(()),
        Flow::Close | Flow::Done => {
            if !c.closing {
                c.closing = true;
                c.close_reason = Some(reason);
                c.done = flow == Flow::Done;
            }
            Ok(())
        }
        Flow::Abort => Err(reason),
    }
}

/// Writes as much pending output as the socket takes; frees the buffer once empty.
fn flush<Svc>(c: &mut Conn<Svc>) -> Result<(), CloseReason> {
    before_write(c, c.output.len());
    let written = write_some(&mut c.stream, &c.output)?;
    if written > 0 {
        c.last_active = Instant::now();
    }
    if written == c.output.len() {
        c.output = Vec::new();
    } else {
        c.output.drain(..written);
    }
    Ok(())
}

/// Sets `TCP_NODELAY` where it can matter ([`ServerConfig::nodelay`]): before a second
/// write, or a first one of more than a segment.
fn before_write<Svc>(c: &mut Conn<Svc>, len: usize) {
    /// Less than any Ethernet segment's payload.
    const SEGMENT: usize = 1400;
    if c.nodelay && (c.wrote || len > SEGMENT) {
        c.nodelay = false;
        match &c.stream {
            Stream::Tcp(s) => {
                let _ = s.set_nodelay(true);
            }
            #[cfg(unix)]
            Stream::Unix(_) => {}
        }
    }
    c.wrote = true;
}

/// Writes until the socket would block; returns how much it took.
fn write_some(stream: &mut Stream, mut buf: &[u8]) -> Result<usize, CloseReason> {
    let total = buf.len();
    while !buf.is_empty() {
        match stream.write_now(buf) {
            Ok(0) => return Err(CloseReason::Error(io::ErrorKind::WriteZero.into())),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CloseReason::Error(e)),
        }
    }
    Ok(total - buf.len())
}

#[cfg(test)]
mod tests {
    use super::{FirstRead, FirstReads};

    /// How many of the next `n` new connections `reads` reads at once, when a
    /// read finds data as `found` says.
    fn read_at_once(reads: &mut FirstReads, n: usize, mut found: impl FnMut() -> bool) -> usize {
        (0..n)
            .filter(|_| {
                let data = found();
                let now = reads.at_once(FirstRead::Learn);
                if now {
                    reads.learn(data);
                }
                now
            })
            .count()
    }

    #[test]
    fn learning_first_reads_stop_when_they_find_nothing_and_resume_when_they_find() {
        let mut reads = FirstReads::new();
        // At first every connection is read at once; after an empty read, one in
        // 16.
        assert!(read_at_once(&mut reads, 16, || false) <= 2);
        assert_eq!(read_at_once(&mut reads, 160, || false), 10);
        // Data there again: found by the one in 16, and reads at once resume
        // within a few hundred connections.
        assert!(read_at_once(&mut reads, 256, || true) > 16);
        assert_eq!(read_at_once(&mut reads, 16, || true), 16);
    }

    /// How many of 400 new connections are read at once when a first read finds
    /// data with probability `p` (a fixed pseudo-random sequence).
    fn reads_at_probability(p: u32) -> usize {
        let mut x: u32 = 12345;
        read_at_once(&mut FirstReads::new(), 400, || {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) % 100 < p
        })
    }

    #[test]
    fn learning_first_reads_follow_the_better_side_of_half() {
        // Three in four found: the reads at once go on.
        let n = reads_at_probability(75);
        assert!(n > 340, "{n}");
        // One in four: they stop (one in 16 goes on, to look).
        let n = reads_at_probability(25);
        assert!(n < 60, "{n}");
        // The fixed rules do not learn.
        let mut reads = FirstReads::new();
        assert!((0..32).all(|_| reads.at_once(FirstRead::AtOnce)));
        assert!((0..32).all(|_| !reads.at_once(FirstRead::WhenReady)));
    }
}
