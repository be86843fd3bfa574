//! The herder event loop: readiness (epoll on Linux, written here for one system call
//! per loop turn; the [`polling`] crate's kqueue on macOS and the BSDs and IOCP on
//! Windows), timers and a waker, in one process.
//!
//! herder-reactor does not know how a socket arrived: it serves descriptors handed
//! over by `herder-fd`, accepted from a shared listener, or opened any other way.
//!
//! Two layers:
//!
//! - [`Reactor`]: sources, timers, a [`Waker`] and [`Signal`]s, delivered as
//!   [`Event`]s by [`Reactor::poll`].
//! - [`Server`]: many buffered connections, each driven by a [`Service`] (data in,
//!   bytes out, close), with back-pressure, an idle timeout, an input limit and a
//!   graceful drain; listeners it accepts from; connections handed in from elsewhere
//!   ([`Server::add_connection`]); and the caller's own sources, whose events it returns.
//!
//! A [`Reactor`] owns its sources. Each registered source gets a [`Key`]; a key is
//! never reused for another source while an event for the old one can still be
//! delivered (every key carries a generation), so a stale event never reaches the
//! successor of a deregistered source.
//!
//! # Examples
//!
//! ```
//! use herder_reactor::{Event, Interest, Mode, Reactor};
//! use std::io::Write;
//! use std::net::{TcpListener, TcpStream};
//! use std::time::{Duration, Instant};
//!
//! let listener = TcpListener::bind("127.0.0.1:0")?;
//! listener.set_nonblocking(true)?;
//! let addr = listener.local_addr()?;
//!
//! let mut reactor: Reactor<TcpListener> = Reactor::new()?;
//! let key = reactor.register(listener, Interest::READABLE, Mode::Level)?;
//! let deadline = reactor.add_timer(Instant::now() + Duration::from_secs(5), None);
//!
//! let mut client = TcpStream::connect(addr)?;
//! client.write_all(b"hi")?;
//!
//! let mut events = Vec::new();
//! 'run: loop {
//!     reactor.poll(&mut events, None)?;
//!     for ev in &events {
//!         match *ev {
//!             Event::Io { key: k, readable: true, .. } if k == key => {
//!                 let (_conn, _peer) = reactor.get(key).unwrap().accept()?;
//!                 break 'run;
//!             }
//!             Event::Timer(t) if t == deadline => panic!("no connection within 5 s"),
//!             _ => {}
//!         }
//!     }
//! }
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Portability
//!
//! [`Mode::Level`] and [`Mode::Edge`] need the operating system's support
//! ([`Reactor::supports_level`], [`Reactor::supports_edge`]): epoll and kqueue have
//! both; IOCP on Windows has level only through emulation in `polling`. [`Mode::Oneshot`]
//! works everywhere. `hangup` in [`Event::Io`] is reported by epoll, `poll` and IOCP,
//! and is always `false` on kqueue.

// No panics on request paths: library code handles every error; the invariants it
// relies on instead are stated where they are (`#[expect]` with a reason).
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod poller;
mod server;
mod service;
mod signal;
mod timer;

pub mod os;
#[cfg(unix)]
#[path = "sys/unix.rs"]
mod sys;
#[cfg(windows)]
#[path = "sys/windows.rs"]
mod sys;

pub use server::{
    DRAINING, Departure, FirstRead, LIMIT_REACHED, Server, ServerConfig, Stats, Stream, Watched,
};

/// The former name of [`ServerConfig`].
#[deprecated(
    note = "renamed `ServerConfig`, so that it does not clash with herder-pool's `Config`"
)]
pub type Config = ServerConfig;
pub use service::{CloseReason, Flow, Input, Move, Output, Service};
pub use signal::Signal;
pub use timer::TimerId;

use poller::{Events, Poller};
use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What a [`Reactor`] can watch: anything with a descriptor (`AsFd` on Unix) or a
/// socket (`AsSocket` on Windows).
///
/// Sources are owned (`'static`): a reactor must remove a descriptor from the poller
/// before it is closed, which it can only promise for what it owns.
pub trait Source: polling::AsSource + 'static {}
impl<T: polling::AsSource + 'static> Source for T {}

/// Bits of a [`Key`] that hold the slot index; the rest hold the generation (40 bits
/// on 64-bit targets, 12 on 32-bit ones).
#[cfg(target_pointer_width = "64")]
const INDEX_BITS: u32 = 24;
#[cfg(not(target_pointer_width = "64"))]
const INDEX_BITS: u32 = 20;
const INDEX_MASK: usize = (1 << INDEX_BITS) - 1;
/// The most sources one reactor holds. The last index is never a slot: it keys the
/// reactor's own signal pipe, and no key is ever `usize::MAX`, which the pollers
/// reserves.
pub const MAX_SOURCES: usize = INDEX_MASK;
#[cfg(unix)]
const SIGNAL_KEY: usize = INDEX_MASK;

/// The handle of a registered source: a slot index and that slot's generation.
///
/// A key goes stale when its source is deregistered; a later source in the same slot
/// gets a different key. On 32-bit targets the generation has 12 bits, so a key kept
/// across 4 096 reuses of its slot can match again.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(usize);

impl Key {
    fn new(index: usize, generation: usize) -> Key {
        let gen_bits = usize::BITS - INDEX_BITS;
        let generation = generation & ((1usize << gen_bits) - 1);
        Key(index | (generation << INDEX_BITS))
    }
    fn index(self) -> usize {
        self.0 & INDEX_MASK
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({}#{})", self.index(), self.0 >> INDEX_BITS)
    }
}

/// Which readiness a source is watched for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Interest {
    /// Wake when the source is readable (or a listener has a connection).
    pub readable: bool,
    /// Wake when the source is writable.
    pub writable: bool,
}

impl Interest {
    /// Readable only.
    pub const READABLE: Interest = Interest {
        readable: true,
        writable: false,
    };
    /// Writable only.
    pub const WRITABLE: Interest = Interest {
        readable: false,
        writable: true,
    };
    /// Readable and writable.
    pub const BOTH: Interest = Interest {
        readable: true,
        writable: true,
    };
    /// Neither: the source stays registered but is not watched. (epoll always reports
    /// hang-ups and errors; such a source is armed oneshot, so it reports at most
    /// one, until it is modified again.)
    pub const NONE: Interest = Interest {
        readable: false,
        writable: false,
    };
}

/// How readiness is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Reported at every poll while the condition holds (`EPOLL` default).
    Level,
    /// Reported once per change to ready (`EPOLLET`): read or write until
    /// `WouldBlock` before waiting again.
    Edge,
    /// Reported once, then disarmed until [`Reactor::modify`] re-arms it
    /// (`EPOLLONESHOT`).
    Oneshot,
}

/// Something that happened, as returned by [`Reactor::poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A registered source is ready.
    Io {
        /// The source's key.
        key: Key,
        /// Ready to read (or to accept), or at end of file.
        readable: bool,
        /// Ready to write.
        writable: bool,
        /// The peer hung up or the descriptor is in error (`EPOLLHUP`); see the crate's
        /// portability notes.
        hangup: bool,
    },
    /// A timer reached its deadline.
    Timer(TimerId),
    /// A [`Waker`] was woken since the last poll.
    Wake,
    /// A watched signal arrived ([`Reactor::watch_signals`]). Several deliveries of
    /// one signal between two polls are reported once.
    Signal(Signal),
}

struct Slot<S> {
    generation: usize,
    source: Option<S>,
    /// Added with `EPOLLEXCLUSIVE`, which cannot be modified: paused by deleting it
    /// from the poller, resumed by adding it again.
    exclusive: bool,
    /// Whether the source is in the poller: an exclusive one paused is not, nor
    /// one [`insert`](Reactor::insert)ed and not yet given an interest.
    armed: bool,
    /// A waitable handle watched in this slot instead of a source
    /// (`os::windows::ReactorExt`).
    #[cfg(windows)]
    waitable: Option<std::os::windows::io::OwnedHandle>,
}

/// An event loop over a set of sources of type `S`, which it owns.
///
/// Use an enum for `S` to mix listeners, connections and channels in one loop.
pub struct Reactor<S: Source> {
    poller: Arc<Poller>,
    woken: Arc<AtomicBool>,
    events: Events,
    slots: Vec<Slot<S>>,
    free: Vec<usize>,
    len: usize,
    timers: timer::Timers,
    #[cfg(unix)]
    signals: Option<sys::SignalPipe>,
}

impl<S: Source> Reactor<S> {
    /// Creates an empty reactor (`epoll_create1`, `kqueue`, or an IOCP port).
    ///
    /// # Errors
    ///
    /// What the operating system returns when creating the poller (e.g. `EMFILE`).
    pub fn new() -> io::Result<Reactor<S>> {
        Ok(Reactor {
            poller: Arc::new(Poller::new()?),
            woken: Arc::new(AtomicBool::new(false)),
            events: Events::new(),
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
            timers: timer::Timers::default(),
            #[cfg(unix)]
            signals: None,
        })
    }

    /// Whether [`Mode::Level`] is supported here.
    pub fn supports_level(&self) -> bool {
        self.poller.supports_level()
    }

    /// Whether [`Mode::Edge`] is supported here.
    pub fn supports_edge(&self) -> bool {
        self.poller.supports_edge()
    }

    /// How many sources are registered.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no source is registered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes ownership of `source` and watches it for `interest` in `mode`. The
    /// source should be non-blocking.
    ///
    /// # Errors
    ///
    /// What registering returns (`EPERM` for a regular file under epoll, `ENOMEM`,
    /// an unsupported mode); [`io::ErrorKind::OutOfMemory`] past [`MAX_SOURCES`].
    /// On error the source is dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(unix)] {
    /// use herder_reactor::{Interest, Mode, Reactor};
    /// use std::os::unix::net::UnixStream;
    ///
    /// let (a, _b) = UnixStream::pair()?;
    /// a.set_nonblocking(true)?;
    /// let mut reactor = Reactor::new()?;
    /// let key = reactor.register(a, Interest::READABLE, Mode::Level)?;
    /// assert!(reactor.get(key).is_some());
    /// let a: UnixStream = reactor.deregister(key)?; // handed back, still open
    /// assert!(reactor.get(key).is_none());
    /// # drop(a);
    /// # }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn register(&mut self, source: S, interest: Interest, mode: Mode) -> io::Result<Key> {
        let poller = self.poller.clone();
        self.register_with(source, false, |key, source| {
            // SAFETY: the reactor owns `source` from here on and deletes it from the
            // poller before dropping it (in `deregister`, in `register_with` on error,
            // and in `Drop`), as `Poller::add` requires — except that on Linux
            // `deregister_to_close` leaves out the deletion where nothing more can
            // be reported, as `Poller::add` allows (the epoll backend holds no state
            // of its own for a source).
            unsafe { poller.add(source, key.0, interest, mode) }
        })
    }

    /// Registers `source` in a free slot with `add`, which makes the system call.
    pub(crate) fn register_with(
        &mut self,
        source: S,
        exclusive: bool,
        add: impl FnOnce(Key, &S) -> io::Result<()>,
    ) -> io::Result<Key> {
        let index = self.free_slot()?;
        let slot = &mut self.slots[index];
        let key = Key::new(index, slot.generation);
        if let Err(e) = add(key, &source) {
            self.free.push(index);
            // Some backends (kqueue, IOCP) keep bookkeeping of a failed add; the
            // source must leave the poller before it is closed.
            let _ = self.poller.delete(&source);
            return Err(e);
        }
        slot.source = Some(source);
        slot.exclusive = exclusive;
        slot.armed = true;
        self.len += 1;
        Ok(key)
    }

    /// Takes `source` into a free slot without telling the poller: nothing is
    /// reported for it until [`modify`](Self::modify) gives it an interest, which
    /// adds it to the poller. A source that is closed before that never costs a
    /// system call of the poller's.
    pub(crate) fn insert(&mut self, source: S) -> io::Result<Key> {
        let key = self.register_with(source, false, |_, _| Ok(()))?;
        self.slots[key.index()].armed = false;
        Ok(key)
    }

    /// A free slot's index (not yet in use: the caller fills it or gives it back).
    fn free_slot(&mut self) -> io::Result<usize> {
        match self.free.pop() {
            Some(i) => Ok(i),
            None if self.slots.len() < MAX_SOURCES => {
                self.slots.push(Slot {
                    generation: 0,
                    source: None,
                    exclusive: false,
                    armed: false,
                    #[cfg(windows)]
                    waitable: None,
                });
                Ok(self.slots.len() - 1)
            }
            None => Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "reactor is full",
            )),
        }
    }

    /// Whether `key` is registered, as a source or (on Windows) a waitable handle.
    fn is_live(&self, key: Key) -> bool {
        let Some(slot) = self.slots.get(key.index()) else {
            return false;
        };
        #[cfg(windows)]
        let watched = slot.source.is_some() || slot.waitable.is_some();
        #[cfg(not(windows))]
        let watched = slot.source.is_some();
        watched && Key::new(key.index(), slot.generation) == key
    }

    /// Changes what `key` is watched for; also re-arms a [`Mode::Oneshot`] source.
    /// Setting [`Interest::NONE`] and back is the cheap way to pause and resume a
    /// listener (accept-mutex style): one system call each, the registration kept.
    ///
    /// A source registered exclusively (see `os::linux`) takes only
    /// [`Interest::NONE`], which removes it from the kernel's wait queue, and
    /// [`Interest::READABLE`] in [`Mode::Level`], which puts it back at the tail of
    /// the queue (the kernel cannot modify such a registration in place, so this is
    /// a delete and an add); the key stays the same.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotFound`] for a key that is not registered;
    /// [`io::ErrorKind::Unsupported`] for any other interest or mode on an exclusive
    /// source; what the operating system returns.
    pub fn modify(&mut self, key: Key, interest: Interest, mode: Mode) -> io::Result<()> {
        let source = self.get(key).ok_or_else(not_found)?;
        let slot = &self.slots[key.index()];
        if slot.exclusive {
            return self.modify_exclusive(key, interest, mode);
        }
        if !slot.armed {
            // SAFETY: as in `register`: the reactor owns `source` and deletes it
            // from the poller before dropping it (see `deregister_to_close` for the
            // one exception and why it is sound).
            unsafe { self.poller.add(source, key.0, interest, mode) }?;
            self.slots[key.index()].armed = true;
            return Ok(());
        }
        self.poller.modify(source, key.0, interest, mode)
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn modify_exclusive(&mut self, key: Key, interest: Interest, mode: Mode) -> io::Result<()> {
        if interest.writable || (interest.readable && mode != Mode::Level) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "an EPOLLEXCLUSIVE registration is level-triggered and readable only",
            ));
        }
        let slot = &mut self.slots[key.index()];
        let source = slot.source.as_ref().ok_or_else(not_found)?;
        if slot.armed {
            self.poller.delete(source)?;
            slot.armed = false;
        }
        if interest.readable {
            // SAFETY: the reactor owns `source` and deletes it from the poller before
            // dropping it, as for every registration.
            unsafe { sys::add_exclusive(self.poller.as_fd(), source.as_fd(), key.0) }?;
            slot.armed = true;
        }
        Ok(())
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn modify_exclusive(&mut self, _: Key, _: Interest, _: Mode) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "exclusive registrations exist on Linux only",
        ))
    }

    /// Stops watching `key` and gives its source back. Later polls report nothing for
    /// it, and the key matches no later source; events an earlier poll already
    /// returned are the caller's to skip ([`get`](Self::get) returns `None` for them).
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotFound`] for a key that is not registered.
    pub fn deregister(&mut self, key: Key) -> io::Result<S> {
        let armed = self.is_live(key) && self.slots[key.index()].armed;
        let source = self.release(key)?;
        if armed {
            // A source that cannot be deleted (already closed elsewhere) needs no
            // deletion.
            let _ = self.poller.delete(&source);
        }
        Ok(source)
    }

    /// As [`deregister`](Self::deregister), for a source the caller closes at once
    /// and for which nothing more can be reported: its descriptor has no other
    /// copy, or its registration has no interest left (a one-shot one that
    /// reported, or one never given to the poller). On Linux (epoll) it saves the
    /// `EPOLL_CTL_DEL`: the kernel forgets a registration when the file's last
    /// descriptor closes, reports nothing for one without interest until then,
    /// and the epoll backend keeps nothing of a source beyond the kernel's
    /// registration (an `add` of the same file under the same number later takes
    /// the left registration over). Elsewhere it deletes as `deregister` does.
    pub(crate) fn deregister_to_close(&mut self, key: Key) -> io::Result<S> {
        if !cfg!(any(target_os = "linux", target_os = "android")) {
            return self.deregister(key);
        }
        self.release(key)
    }

    /// Takes `key`'s source out of its slot and frees the slot (a new generation, so
    /// the key matches nothing later); the poller is not told.
    fn release(&mut self, key: Key) -> io::Result<S> {
        self.get(key).ok_or_else(not_found)?;
        let slot = &mut self.slots[key.index()];
        let source = slot.source.take().ok_or_else(not_found)?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(key.index());
        self.len -= 1;
        Ok(source)
    }

    /// The keys of every registered source.
    pub fn keys(&self) -> impl Iterator<Item = Key> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.source.is_some())
            .map(|(i, s)| Key::new(i, s.generation))
    }

    /// The source registered under `key`.
    pub fn get(&self, key: Key) -> Option<&S> {
        let slot = self.slots.get(key.index())?;
        if Key::new(key.index(), slot.generation) != key {
            return None;
        }
        slot.source.as_ref()
    }

    /// The source registered under `key`, mutably.
    ///
    /// The standard library's sockets read and write through shared references
    /// (`Read for &TcpStream`), so [`get`](Self::get) is enough for them; this is for
    /// sources whose methods take `&mut self`.
    ///
    /// # Safety
    ///
    /// The caller must not replace the source (`*source = other`, `mem::swap`) or
    /// otherwise close its descriptor: the reactor must remove a descriptor from the
    /// poller before it is closed, and it only knows the one it was given.
    pub unsafe fn get_mut(&mut self, key: Key) -> Option<&mut S> {
        self.get_mut_inner(key)
    }

    /// [`get_mut`](Self::get_mut) for this crate, which never replaces a source.
    pub(crate) fn get_mut_inner(&mut self, key: Key) -> Option<&mut S> {
        let slot = self.slots.get_mut(key.index())?;
        if Key::new(key.index(), slot.generation) != key {
            return None;
        }
        slot.source.as_mut()
    }

    /// Starts a timer that fires at `deadline`, and then every `repeat` if given.
    ///
    /// # Examples
    ///
    /// ```
    /// use herder_reactor::{Event, Reactor};
    /// use std::time::{Duration, Instant};
    ///
    /// let mut reactor: Reactor<std::net::TcpStream> = Reactor::new()?;
    /// let tick = reactor.add_timer(Instant::now(), Some(Duration::from_millis(1)));
    /// let never = reactor.add_timer(Instant::now(), None);
    /// assert!(reactor.cancel_timer(never));
    /// let mut events = Vec::new();
    /// let mut ticks = 0;
    /// while ticks < 3 {
    ///     reactor.poll(&mut events, Some(Duration::from_secs(5)))?;
    ///     assert!(!events.contains(&Event::Timer(never)));
    ///     ticks += events.iter().filter(|e| **e == Event::Timer(tick)).count();
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn add_timer(&mut self, deadline: Instant, repeat: Option<Duration>) -> TimerId {
        self.timers.add(deadline, repeat)
    }

    /// Cancels a timer. Returns whether it was still pending; a cancelled timer never
    /// fires, even if its deadline passed during the current batch of events.
    pub fn cancel_timer(&mut self, id: TimerId) -> bool {
        self.timers.cancel(id)
    }

    /// Delivers `signals` as [`Event::Signal`] from now on, instead of their previous
    /// disposition (restored when the reactor is dropped). The handler only writes the
    /// signal's number to a pipe the reactor watches: the event is handled in the loop,
    /// not in the handler.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::AlreadyExists`] if another reactor of this process watches
    /// signals; what `pipe2` or `sigaction` return. On Windows,
    /// [`io::ErrorKind::Unsupported`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use herder_reactor::{Event, Reactor, Signal};
    ///
    /// let mut reactor: Reactor<std::net::TcpStream> = Reactor::new()?;
    /// reactor.watch_signals(&[Signal::Terminate, Signal::Interrupt])?;
    /// let mut events = Vec::new();
    /// loop {
    ///     reactor.poll(&mut events, None)?;
    ///     if events.iter().any(|e| matches!(e, Event::Signal(Signal::Terminate | Signal::Interrupt))) {
    ///         break; // stop gracefully
    ///     }
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "sigaction")]
    pub fn watch_signals(&mut self, signals: &[Signal]) -> io::Result<()> {
        #[cfg(unix)]
        {
            let pipe = match &mut self.signals {
                Some(pipe) => pipe,
                None => {
                    let pipe = sys::SignalPipe::take()?;
                    // SAFETY: the pipe is deleted from the poller in `Drop` before it is
                    // released.
                    unsafe {
                        self.poller
                            .add(&pipe.fd(), SIGNAL_KEY, Interest::READABLE, Mode::Level)
                    }
                    .inspect_err(|_| {
                        let _ = self.poller.delete(&pipe.fd());
                    })?;
                    self.signals.insert(pipe)
                }
            };
            for s in signals {
                pipe.install(s.as_raw())?;
            }
            Ok(())
        }
        #[cfg(not(unix))]
        {
            let _ = signals;
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "signals as events are Unix-only",
            ))
        }
    }

    /// A handle that wakes this reactor's [`poll`](Self::poll) from any thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use herder_reactor::{Event, Reactor};
    ///
    /// let mut reactor: Reactor<std::net::TcpStream> = Reactor::new()?;
    /// let waker = reactor.waker();
    /// std::thread::spawn(move || waker.wake().unwrap());
    /// let mut events = Vec::new();
    /// while !events.contains(&Event::Wake) {
    ///     reactor.poll(&mut events, None)?;
    /// }
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn waker(&self) -> Waker {
        Waker {
            poller: self.poller.clone(),
            woken: self.woken.clone(),
        }
    }

    /// Waits until a source is ready, a timer fires, a [`Waker`] is woken, or
    /// `timeout` passes, and replaces the contents of `events` with what happened.
    /// `events` may come back empty (a timeout, or an event for a source deregistered
    /// meanwhile). A signal does not end the wait (`EINTR` is retried); to wake on
    /// signals, use [`watch_signals`](Self::watch_signals) or a [`Waker`].
    ///
    /// # Errors
    ///
    /// What the wait returns other than `EINTR`.
    pub fn poll(&mut self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        events.clear();
        let mut wait = timeout;
        if let Some(next) = self.timers.next_deadline() {
            let until = next.saturating_duration_since(Instant::now());
            wait = Some(wait.map_or(until, |w| w.min(until)));
        }
        if self.woken.load(Ordering::Acquire) {
            wait = Some(Duration::ZERO);
        }
        self.events.clear();
        match self.poller.wait(&mut self.events, wait) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if self.woken.swap(false, Ordering::AcqRel) {
            events.push(Event::Wake);
        }
        #[cfg(unix)]
        let mut seen_signals = 0u64;
        for ev in self.events.iter() {
            #[cfg(unix)]
            if ev.key == SIGNAL_KEY {
                if let Some(pipe) = &self.signals {
                    pipe.drain(|raw| {
                        if let Some(sig) = Signal::from_raw(raw).filter(|_| pipe.is_installed(raw))
                        {
                            let bit = 1u64 << (raw as u32 % 64);
                            if seen_signals & bit == 0 {
                                seen_signals |= bit;
                                events.push(Event::Signal(sig));
                            }
                        }
                    });
                }
                continue;
            }
            let key = Key(ev.key);
            if !self.is_live(key) {
                continue;
            }
            events.push(Event::Io {
                key,
                readable: ev.readable,
                writable: ev.writable,
                hangup: ev.hangup,
            });
        }
        if self.timers.len() > 0 {
            self.timers
                .expire(Instant::now(), |id| events.push(Event::Timer(id)));
        }
        Ok(())
    }
}

impl<S: Source> Drop for Reactor<S> {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(pipe) = self.signals.take() {
            let _ = self.poller.delete(&pipe.fd());
        }
        for slot in &mut self.slots {
            if let Some(source) = slot.source.take().filter(|_| slot.armed) {
                let _ = self.poller.delete(&source);
            }
            #[cfg(windows)]
            if let Some(handle) = slot.waitable.take() {
                let _ = self.poller.delete_waitable(&handle);
            }
        }
    }
}

impl<S: Source> fmt::Debug for Reactor<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reactor")
            .field("sources", &self.len)
            .field("timers", &self.timers.len())
            .finish()
    }
}

fn not_found() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        "no source registered under this key",
    )
}

/// Wakes a [`Reactor`]'s [`poll`](Reactor::poll) from another thread; the reactor
/// reports [`Event::Wake`]. Wakes before the next poll coalesce into one event.
#[derive(Clone)]
pub struct Waker {
    poller: Arc<Poller>,
    woken: Arc<AtomicBool>,
}

impl Waker {
    /// Wakes the reactor.
    ///
    /// # Errors
    ///
    /// What writing to the poller's notification descriptor returns.
    pub fn wake(&self) -> io::Result<()> {
        if !self.woken.swap(true, Ordering::AcqRel) {
            self.poller.notify()?;
        }
        Ok(())
    }
}

impl fmt::Debug for Waker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waker").finish_non_exhaustive()
    }
}

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
