//! The supervisor's side: a pool of worker slots, each running one worker process.
//!
//! One `Pool` for every platform. What a platform must provide is small, and lives
//! in one file each (`unix.rs`, `windows.rs`), in the manner of mio's `sys`:
//!
//! - **launch** a worker for a slot and generation with the pool's listeners and a
//!   channel to it (`Pool::launch`): on Unix a re-executed program inheriting its
//!   descriptors, on Windows a `CreateProcess` whose channel connects back with a
//!   one-time token and receives the listeners over it;
//! - **watch its exit** in the event loop (`Watch::Exit`): a pidfd, or `SIGCHLD`
//!   and a periodic look, on Unix; the process handle on Windows;
//! - **ask it to drain** over its channel (the same message everywhere), and
//!   **terminate** or **kill** it (`Process`): `SIGTERM` and `SIGKILL`, or
//!   `TerminateProcess` for both;
//! - **collect its exit status** (`Process::try_wait`).
//!
//! Everything else — slots, restarts and the breaker (`crate::restart`, pure), the
//! rollout of a new generation, recycling, autoscaling, heartbeats, the scoreboard,
//! the control requests, the caller's sources and timers — is this module's, once.
//! The control endpoint is a Unix socket or a named pipe (`control_socket.rs`,
//! `control_pipe.rs`). Binary upgrades (`upgrade.rs`) and live connection moves
//! (`moving.rs`) are this module's too; the platform says how the new supervisor
//! gets the listeners and the moving connections.

mod control;
#[cfg(windows)]
mod control_pipe;
#[cfg(unix)]
mod control_socket;
mod moving;
mod processes;
mod rollout;
mod sources;
#[cfg(unix)]
mod unix;
mod upgrade;
#[cfg(windows)]
mod windows;

pub use rollout::Autoscale;
#[cfg(unix)]
use unix::Process;
#[cfg(windows)]
use windows::Process;
#[cfg(windows)]
pub(crate) use windows::upgrade_sockets;
#[cfg(windows)]
pub use windows::{control_pipe_path, request_stop};

pub use crate::config::{Config, FATAL_EXIT_CODE};
use crate::error::Error;
pub use crate::event::PoolEvent;
use crate::message::{self, Receipt};
use crate::restart::History;
use crate::scoreboard::Board;
use crate::state::reload_finished;
pub use crate::state::{Load, State, WorkerInfo};
use herder_fd::Channel;
use herder_reactor::{Event, Interest, Key, Mode, Reactor, TimerId};
use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// A listener or other socket the pool hands to its workers: any owned descriptor
/// on Unix (`TcpListener`, `UnixListener`, … convert into it), an owned socket on
/// Windows (where workers receive TCP listeners).
#[cfg(unix)]
pub type Descriptor = std::os::fd::OwnedFd;
/// A listener or other socket the pool hands to its workers: any owned descriptor
/// on Unix (`TcpListener`, `UnixListener`, … convert into it), an owned socket on
/// Windows (where workers receive TCP listeners).
#[cfg(windows)]
pub type Descriptor = std::os::windows::io::OwnedSocket;

/// How the pool keeps a listener: as the descriptor it is on Unix, as the TCP
/// listener a worker rebuilds on Windows.
#[cfg(unix)]
type Listener = std::os::fd::OwnedFd;
#[cfg(windows)]
type Listener = std::net::TcpListener;

/// The bound of what [`Pool::send_socket`] and [`Pool::send_sockets`] take: the
/// platform's "has a socket" trait.
#[cfg(unix)]
pub(crate) use std::os::fd::AsFd as AsDescriptor;
#[cfg(windows)]
pub(crate) use std::os::windows::io::AsSocket as AsDescriptor;

/// One worker process.
struct Proc {
    slot: usize,
    generation: u64,
    /// The platform's handle on it: terminate, kill, collect its exit.
    process: Process,
    ready: bool,
    /// Told to drain: its exit is expected, not a crash, and not replaced.
    draining: bool,
    /// Its channel: from the start on Unix, once it connected on Windows.
    channel: Option<Channel>,
    /// Whether its channel is watched for room to write (a message waits in part).
    writing: bool,
    watches: Vec<Key>,
    started_at: Instant,
    /// The ready timeout, the drain deadline, or the kill grace of a hung worker.
    timer: Option<TimerId>,
    /// Its scoreboard record.
    record: Option<usize>,
    /// Connections after which it is recycled.
    recycle_at: Option<u64>,
    /// Terminated for a stopped heartbeat.
    hung: bool,
}

struct Slot {
    state: State,
    /// The pid of the slot's current worker.
    current: Option<u32>,
    generation: u64,
    /// What the restart policy knows of the slot's past.
    history: History,
    restarts: u32,
    last_exit: Option<ExitStatus>,
    /// The back-off or breaker cool-down timer, and when it fires.
    timer: Option<TimerId>,
    restart_at: Option<Instant>,
    /// Descriptors for this slot's workers only (e.g. its own `SO_REUSEPORT`
    /// listener), kept across restarts so nothing queued on them is lost.
    own: Vec<(String, Listener)>,
}

impl Slot {
    fn new(generation: u64) -> Slot {
        Slot {
            state: State::Backoff,
            current: None,
            generation,
            history: History::default(),
            restarts: 0,
            last_exit: None,
            timer: None,
            restart_at: None,
            own: Vec::new(),
        }
    }
}

/// Sources the pool's reactor watches (on Windows, the waitable process handles and
/// the stop event besides).
enum Source {
    /// A pool-owned descriptor: a duplicate of a worker's channel, or a pidfd.
    #[cfg(unix)]
    Fd(std::os::fd::OwnedFd),
    /// The control socket.
    #[cfg(unix)]
    ControlListener(std::os::unix::net::UnixListener),
    /// A control-socket connection.
    #[cfg(unix)]
    ControlConn(std::os::unix::net::UnixStream),
    /// The socket a new supervisor reports its readiness on during an upgrade.
    #[cfg(unix)]
    Datagram(std::os::unix::net::UnixDatagram),
    /// Where workers connect their channels.
    #[cfg(windows)]
    Rendezvous(std::net::TcpListener),
    /// A connection from a worker: the pool's own handle on the socket its channel
    /// reads and writes.
    #[cfg(windows)]
    Conn(std::net::TcpStream),
    /// A source of the caller's ([`Pool::add_source`], [`Pool::watch`]).
    User(Box<dyn crate::watch::UserSource>),
}

#[cfg(unix)]
impl std::os::fd::AsFd for Source {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Source::Fd(fd) => fd.as_fd(),
            Source::ControlListener(l) => l.as_fd(),
            Source::ControlConn(c) => c.as_fd(),
            Source::User(u) => u.as_fd(),
            Source::Datagram(d) => d.as_fd(),
        }
    }
}

#[cfg(windows)]
impl std::os::windows::io::AsSocket for Source {
    fn as_socket(&self) -> std::os::windows::io::BorrowedSocket<'_> {
        match self {
            Source::Rendezvous(l) => l.as_socket(),
            Source::Conn(c) => c.as_socket(),
            Source::User(u) => u.as_socket(),
        }
    }
}

#[derive(Clone, Copy)]
enum Watch {
    Channel(u32),
    Exit(u32),
    #[cfg(unix)]
    ControlListener,
    #[cfg(unix)]
    ControlConn,
    /// Where a new supervisor says it is ready, during an upgrade.
    UpgradeReady,
    /// The old supervisor's channel of moving connections.
    Upstream,
    /// The new supervisor's channel of moving connections.
    Downstream,
    /// Where workers connect their channels.
    #[cfg(windows)]
    Rendezvous,
    /// A connection that has yet to present a worker's token.
    #[cfg(windows)]
    Hello,
    /// The event [`request_stop`] signals.
    #[cfg(windows)]
    Stop,
}

#[derive(Clone, Copy)]
enum TimerFor {
    /// A slot's back-off.
    Slot(usize),
    /// A worker's ready timeout or drain deadline.
    Proc(u32),
    /// The control listener's pause after a failed accept.
    #[cfg(unix)]
    ControlRetry(Key),
    /// The periodic check of an upgrade in progress.
    Upgrade,
    /// The retry of replies about moving connections that found a channel full.
    Replies,
    /// A connection to the rendezvous that must present its token by then.
    #[cfg(windows)]
    Hello(Key),
}

/// A pool of worker processes, supervised: each slot runs one worker, started by
/// re-executing this program with the pool's listeners and a channel, and replaced
/// when it exits: at once if it had been ready, after an exponential back-off with
/// jitter if it failed before (its slot's breaker trips if that goes on, and retries
/// after a cool-down), not at all if it exits with the fatal exit code. See
/// [`Config::restart_intensity`] and [`Config::breaker_cooldown`].
///
/// [`stop`](Pool::stop) drains the workers and ends; [`reload`](Pool::reload) replaces
/// them all by a new generation, each old worker retired only once its successor is
/// ready; [`scale`](Pool::scale) changes the number of slots. Drive it with
/// [`poll`](Pool::poll). Dropping the pool kills whatever workers are left.
///
/// The same type, with the same behaviour, on every platform; what differs is
/// listed on [the platforms page](https://github.com/herder-rs/herder/blob/main/docs/platforms.md).
pub struct Pool {
    config: Config,
    program: PathBuf,
    args: Vec<OsString>,
    listeners: Vec<(String, Listener)>,
    reactor: Reactor<Source>,
    slots: Vec<Slot>,
    procs: HashMap<u32, Proc>,
    watches: HashMap<Key, Watch>,
    timers: HashMap<TimerId, TimerFor>,
    generation: u64,
    /// A reload asked for while a previous generation was still draining.
    reload_pending: bool,
    /// The generation a reload is bringing up, until every slot runs it.
    reloading: Option<u64>,
    /// Slots whose new worker failed during the current reload.
    reload_failed: Vec<usize>,
    stopping: bool,
    rng: u64,
    events: Vec<Event>,
    /// The scoreboard's shared memory (handed to every worker) and mapping.
    board: (crate::scoreboard::Shared, Board),
    /// The repeating timer that checks heartbeats.
    monitor: Option<TimerId>,
    /// The slot whose worker is being recycled.
    recycling: Option<usize>,
    /// The once-a-second timer of recycling and scaling.
    housekeeping: Option<TimerId>,
    /// Autoscale state: how many to add next time, and for how many ticks two
    /// workers have been idle.
    scale_step: usize,
    idle_ticks: u32,
    /// Makes the descriptors of a new slot ([`Pool::set_slot_listeners`]).
    slot_listeners: Option<SlotListeners>,
    /// What the platform's side of the pool keeps.
    os: OsState,
}

#[cfg(unix)]
use unix::OsState;
#[cfg(windows)]
use windows::OsState;

/// A worker just started, as the platform's `launch` returns it.
struct Launched {
    pid: u32,
    process: Process,
    /// Its channel, if it has one yet (on Windows it connects later).
    channel: Option<Channel>,
    /// What `launch` watches for it (its channel, its exit), in `Pool::watches`.
    watches: Vec<Key>,
}

/// Makes a slot's own descriptors.
type SlotListeners = Box<dyn FnMut(usize) -> io::Result<Vec<(String, Descriptor)>>>;

impl Pool {
    /// Creates a pool that hands `listeners` (name, socket) to every worker, plus a
    /// channel. No worker starts before [`start`](Self::start). A `TcpListener`
    /// converts with `.into()` on every platform.
    ///
    /// On Unix a worker inherits them as descriptors 3, 4, … (`LISTEN_FDNAMES`
    /// carries the names) and its channel as `herder-channel`; on Windows its
    /// channel connects back to the pool, which duplicates the listeners to it
    /// (`WSADuplicateSocketW`), each under its name. [`Worker::take_listener`]
    /// finds them by name either way.
    ///
    /// [`Worker::take_listener`]: crate::Worker::take_listener
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the program cannot be found, the event loop, the scoreboard
    /// or the accept lock not created (on Windows: the rendezvous socket, the stop
    /// event); [`Error::Environment`] if a listener's name is empty or contains `:`.
    pub fn new(config: Config, listeners: Vec<(String, Descriptor)>) -> Result<Pool, Error> {
        crate::config::check_listener_names(listeners.iter().map(|(n, _)| n.as_str()))?;
        let mut listeners: Vec<(String, Listener)> = listeners
            .into_iter()
            .map(|(name, l)| (name, Listener::from(l)))
            .collect();
        let program = match &config.program {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(Error::io("finding the current executable"))?,
        };
        let args = config
            .args
            .clone()
            .unwrap_or_else(|| std::env::args_os().skip(1).collect());
        let mut reactor = Reactor::new().map_err(Error::io("creating the event loop"))?;
        let board = Board::create(config.scoreboard_capacity.max(1))
            .map_err(Error::io("creating the scoreboard"))?;
        let os = OsState::new(&config, &program, &mut reactor, &mut listeners)?;
        let housekeeping =
            (config.max_connections.is_some() || config.autoscale.is_some()).then(|| {
                let every = Duration::from_secs(1);
                reactor.add_timer(Instant::now() + every, Some(every))
            });
        let monitor = config.heartbeat_timeout.map(|t| {
            let every = (t / 4).max(Duration::from_millis(10));
            reactor.add_timer(Instant::now() + every, Some(every))
        });
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let seed = nanos ^ (u64::from(std::process::id()) << 32) ^ 0x9E37_79B9_7F4A_7C15;
        let mut pool = Pool {
            slots: Vec::new(),
            procs: HashMap::new(),
            config,
            program,
            args,
            listeners,
            reactor,
            watches: HashMap::new(),
            timers: HashMap::new(),
            generation: 1,
            reload_pending: false,
            reloading: None,
            reload_failed: Vec::new(),
            stopping: false,
            rng: seed | 1,
            events: Vec::new(),
            board,
            monitor,
            recycling: None,
            housekeeping,
            scale_step: 1,
            idle_ticks: 0,
            slot_listeners: None,
            os,
        };
        pool.os_started();
        Ok(pool)
    }

    /// Starts a worker in each of the configured number of slots. A worker that fails
    /// to start is reported ([`PoolEvent::SpawnFailed`]) and retried; it never stops
    /// the others.
    pub fn start(&mut self, events: &mut Vec<PoolEvent>) {
        let before = events.len();
        let n = self.config.workers;
        self.scale_inner(n, events);
        self.report();
        trace_events(&events[before..]);
    }

    /// The current generation: 1 at start, one more for each [`reload`](Self::reload).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A snapshot of every slot.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        (0..self.slots.len())
            .filter_map(|s| self.worker(s))
            .collect()
    }

    /// A snapshot of one slot.
    pub fn worker(&self, slot: usize) -> Option<WorkerInfo> {
        let s = self.slots.get(slot)?;
        let mut draining: Vec<u32> = self
            .procs
            .iter()
            .filter(|(pid, p)| p.slot == slot && p.draining && Some(**pid) != s.current)
            .map(|(pid, _)| *pid)
            .collect();
        draining.sort_unstable();
        let record = s
            .current
            .and_then(|pid| self.procs.get(&pid)?.record)
            .and_then(|i| self.board.1.record(i));
        Some(WorkerInfo {
            accepted: record.map_or(0, |r| r.accepted()),
            active: record.map_or(0, |r| r.active()),
            lock_waits: record.map_or(0, |r| r.lock_waits()),
            slot,
            pid: s.current,
            generation: s.generation,
            state: s.state,
            draining,
            restarts: s.restarts,
            last_exit: s.last_exit,
            restart_in: s
                .restart_at
                .filter(|_| matches!(s.state, State::Backoff | State::Tripped))
                .map(|at| at.saturating_duration_since(Instant::now())),
        })
    }

    /// Every worker process alive, current or draining.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.procs.keys().copied().collect();
        pids.sort_unstable();
        pids
    }

    /// The pool's listeners' local addresses, by name (those that have one: TCP and
    /// UDP sockets).
    pub fn listener_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|(n, l)| {
                let addr = socket2::SockRef::from(l).local_addr().ok()?.as_socket()?;
                Some((n.clone(), addr))
            })
            .collect()
    }

    /// Sends a message to the current worker of `slot` over its channel, if it is
    /// ready. `Ok` names the pid of the worker it went to.
    ///
    /// # Errors
    ///
    /// [`Error::NoWorker`] if the slot has no ready worker; [`Error::Channel`] for
    /// what sending returns (`WouldBlock` when the worker's channel is full).
    pub fn send(&mut self, slot: usize, payload: &[u8]) -> Result<u32, Error> {
        let (pid, ch) = self.ready_worker(slot)?;
        let sent = message::send_bytes(ch, payload);
        self.watch_output(pid);
        sent.map_err(|source| Error::Channel { slot, source })?;
        Ok(pid)
    }

    /// Hands several sockets to the current worker of `slot` in one message
    /// (herder-fd's `Channel::send_sockets`), if the worker is ready, without
    /// waiting; the worker reads them with `Message::into_sockets`. `Ok` names the
    /// pid of the worker they went to. Hand-off ids with the top bit set are the
    /// pool's own (connections moving between workers): keep yours below 2⁶³.
    ///
    /// On Unix the kernel has them once this returns. On Windows the worker
    /// rebuilds each socket from its duplicate: keep your copy open until it
    /// acknowledges ([`PoolEvent::Acknowledged`], which
    /// [`WorkerLink`](crate::WorkerLink) sends); the [`Dispatcher`](crate::Dispatcher)
    /// does.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send); more sockets than a message carries
    /// (`MAX_FDS_PER_MESSAGE`, `MAX_SOCKETS_PER_MESSAGE`) are refused.
    pub fn send_sockets<S: herder_fd::Transfer + AsDescriptor>(
        &mut self,
        slot: usize,
        items: &[(&S, herder_fd::Handoff<'_>)],
    ) -> Result<u32, Error> {
        let (pid, ch) = self.ready_worker(slot)?;
        let sent = ch.send_sockets(items);
        self.watch_output(pid);
        sent.map_err(|source| Error::Channel { slot, source })?;
        Ok(pid)
    }

    /// The pid and channel of `slot`'s current worker, if it is ready and not draining.
    fn ready_worker(&mut self, slot: usize) -> Result<(u32, &mut Channel), Error> {
        let pid = self
            .slots
            .get(slot)
            .and_then(|s| s.current)
            .ok_or(Error::NoWorker(slot))?;
        self.procs
            .get_mut(&pid)
            .filter(|p| p.ready && !p.draining)
            .and_then(|p| p.channel.as_mut())
            .map(|ch| (pid, ch))
            .ok_or(Error::NoWorker(slot))
    }

    /// What became of the live connections retired workers moved to others.
    pub fn move_stats(&self) -> crate::MoveStats {
        self.os.moves.stats()
    }

    /// Whether every slot has a ready worker (and there is one), the pool not
    /// stopping: when a supervisor upgrading to this one may hand over.
    fn all_ready(&self) -> bool {
        !self.stopping
            && !self.slots.is_empty()
            && self.slots.iter().all(|s| s.state == State::Ready)
    }

    /// The number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the pool has no slot.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The current worker of `slot` and its load from the scoreboard, if it is ready.
    /// Cheap: a lookup and two atomic loads, no allocation.
    pub fn load(&self, slot: usize) -> Option<Load> {
        let pid = self.slots.get(slot)?.current?;
        let p = self.procs.get(&pid).filter(|p| p.ready && !p.draining)?;
        let r = p.record.and_then(|i| self.board.1.record(i));
        // `accepted` before `active`: seeing a worker's new count of connections
        // taken in means seeing the open count it published with it.
        Some(Load {
            pid,
            accepted: r.map_or(0, |r| r.accepted()),
            active: r.map_or(0, |r| r.active()),
        })
    }

    /// Waits up to `timeout` for something to happen, handles it, and appends what
    /// happened to `events`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the event loop fails. Failures of single workers are events,
    /// never errors.
    pub fn poll(
        &mut self,
        events: &mut Vec<PoolEvent>,
        timeout: Option<Duration>,
    ) -> Result<(), Error> {
        let before = events.len();
        self.before_poll(events);
        let mut evs = std::mem::take(&mut self.events);
        let waited = self.reactor.poll(&mut evs, timeout);
        for ev in evs.drain(..) {
            match ev {
                Event::Io {
                    key,
                    readable,
                    writable,
                    hangup,
                } => match self.watches.get(&key).copied() {
                    Some(Watch::Channel(pid)) => {
                        // Reading first: what a dying worker sent is read before a
                        // failed write to it ends the channel.
                        if readable || hangup {
                            self.read_channel(pid, false, events);
                        }
                        if writable {
                            self.flush_channel(pid);
                        }
                    }
                    Some(Watch::Exit(pid)) => self.reap(pid, events),
                    Some(Watch::UpgradeReady) => self.on_upgrade_ready(events),
                    Some(other) => self.on_os_watch(key, other, events),
                    None if matches!(self.reactor.get(key), Some(Source::User(_))) => {
                        events.push(PoolEvent::Other(ev))
                    }
                    None => {}
                },
                Event::Timer(id) if Some(id) == self.monitor => self.check_heartbeats(events),
                Event::Timer(id) if Some(id) == self.housekeeping => {
                    self.recycle(events);
                    self.autoscale(events);
                }
                Event::Timer(id) => match self.timers.remove(&id) {
                    Some(TimerFor::Slot(slot)) => self.on_backoff_over(slot, events),
                    Some(TimerFor::Proc(pid)) => self.on_proc_timer(pid),
                    Some(TimerFor::Upgrade) => self.on_upgrade_tick(id, events),
                    Some(TimerFor::Replies) => self.retry_replies(),
                    Some(other) => self.on_os_timer(other),
                    // The platform's own repeating timers, or the caller's.
                    None => self.on_os_event(ev, events),
                },
                other => self.on_os_event(other, events),
            }
        }
        self.events = evs;
        waited.map_err(Error::io("waiting for events"))?;
        self.after_poll(events);
        self.report();
        trace_events(&events[before..]);
        Ok(())
    }

    /// Gives every slot descriptors of its own, made by `make(slot)` when the slot is
    /// created and kept until it is removed: the `SO_REUSEPORT` strategy, where each
    /// slot has its own listener in one port group (see [`reuseport_listener`]). A
    /// replacement worker takes over its slot's listener with whatever connections wait
    /// on it. Call before [`start`](Self::start).
    ///
    /// [`reuseport_listener`]: crate::reuseport_listener
    pub fn set_slot_listeners(
        &mut self,
        make: impl FnMut(usize) -> io::Result<Vec<(String, Descriptor)>> + 'static,
    ) {
        self.slot_listeners = Some(Box::new(make));
    }

    /// Whether a graceful stop was asked for ([`stop`](Self::stop), the control
    /// endpoint, a signal on Unix, `request_stop` on Windows).
    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// Whether a [`stop`](Self::stop) has finished: every worker is gone.
    pub fn is_stopped(&self) -> bool {
        self.stopping && self.procs.is_empty()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.os_drop();
        for p in self.procs.values_mut() {
            p.process.kill();
            p.process.wait();
        }
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("program", &self.program)
            .field("workers", &self.workers())
            .finish_non_exhaustive()
    }
}

/// Logs what a pool call did, through `tracing` (nothing shows unless the
/// application installs a subscriber).
fn trace_events(events: &[PoolEvent]) {
    for e in events {
        match e {
            PoolEvent::Spawned {
                slot,
                pid,
                generation,
            } => tracing::info!(slot, pid, generation, "worker started"),
            PoolEvent::Ready { slot, pid } => tracing::info!(slot, pid, "worker ready"),
            PoolEvent::SpawnFailed { slot, error } => {
                tracing::error!(slot, %error, "starting a worker failed")
            }
            PoolEvent::Exited {
                slot,
                pid,
                status,
                restart_in,
            } => match restart_in {
                Some(delay) => {
                    tracing::warn!(slot, pid, %status, restart_in = ?delay, "worker exited; restarting it")
                }
                None => tracing::info!(slot, pid, %status, "worker exited"),
            },
            PoolEvent::BreakerTripped {
                slot,
                failures,
                retry_in,
            } => tracing::error!(
                slot,
                failures,
                retry_in = ?retry_in,
                "worker failed too often: its slot waits before it tries again"
            ),
            PoolEvent::ChannelError { slot, error } => {
                tracing::error!(slot, %error, "worker channel failed; killing the worker")
            }
            PoolEvent::Hung { slot, pid, silent } => {
                tracing::error!(slot, pid, silent = ?silent, "worker hung; terminating it")
            }
            PoolEvent::Reloaded { generation } => {
                tracing::info!(generation, "rolling restart finished")
            }
            PoolEvent::ReloadFailed { generation, slots } => tracing::error!(
                generation,
                slots = ?slots,
                "rolling restart failed in some slots; their old workers go on"
            ),
            PoolEvent::Recycling { slot, pid } => {
                tracing::info!(
                    slot,
                    pid,
                    "worker reached its connection limit; recycling it"
                )
            }
            PoolEvent::UpgradeStarted { pid } => {
                tracing::info!(pid, "upgrade: new supervisor starting")
            }
            PoolEvent::Upgraded { pid } => {
                tracing::info!(pid, "upgrade: new supervisor ready; handing over")
            }
            PoolEvent::UpgradeFailed { reason } => {
                tracing::error!(%reason, "upgrade failed; going on")
            }
            PoolEvent::Command(cmd) => tracing::info!(command = ?cmd, "command"),
            PoolEvent::Stopped => tracing::info!("stopped"),
            PoolEvent::Refused { slot, pid, ids } => {
                tracing::debug!(slot, pid, count = ids.len(), "worker refused hand-offs")
            }
            PoolEvent::Acknowledged { .. } | PoolEvent::Message { .. } | PoolEvent::Other(_) => {}
        }
    }
}
