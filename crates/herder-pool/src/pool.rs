//! The supervisor's side: a pool of worker slots, each running one worker process.

mod moving;

pub use crate::config::{Config, FATAL_EXIT_CODE};
use crate::error::Error;
pub use crate::event::PoolEvent;
use crate::moves::Moves;
use crate::protocol::{self, MOVE_ID, Receipt};
use crate::restart::{Decision, Exit, History};
use crate::scoreboard::{Board, SCOREBOARD_NAME};
pub use crate::state::{Load, State, WorkerInfo};
use crate::state::{reload_finished, status_response};
use crate::sys;
use crate::worker::{CHANNEL_NAME, WORKER_ENV};
use herder_fd::Channel;
use herder_reactor::{Event, Interest, Key, Mode, Reactor, Signal, TimerId};
use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// Load-driven scaling, Apache-style: once a second, if every ready worker is busy,
/// start 1, then 2, 4, … (at most 32) more per second while it lasts, up to `max`; if
/// at least two workers have been idle for `idle_after`, retire one, down to `min`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Autoscale {
    /// The fewest workers.
    pub min: usize,
    /// The most workers.
    pub max: usize,
    /// A worker with at least this many open connections is busy.
    pub busy_connections: u64,
    /// How long two workers must have had no connection before one is retired.
    pub idle_after: Duration,
}

impl Autoscale {
    /// Scaling between `min` and `max` workers, a worker being busy at
    /// `busy_connections` open connections, and idle ones retired after 10 s.
    pub fn new(min: usize, max: usize, busy_connections: u64) -> Autoscale {
        Autoscale {
            min: min.max(1),
            max: max.max(min.max(1)),
            busy_connections,
            idle_after: Duration::from_secs(10),
        }
    }
}

/// One worker process.
struct Proc {
    slot: usize,
    generation: u64,
    ready: bool,
    /// Told to drain: its exit is expected, not a crash, and not replaced.
    draining: bool,
    channel: Option<Channel>,
    watches: Vec<Key>,
    started_at: Instant,
    /// The ready timeout, the drain deadline, or the kill grace of a hung worker.
    timer: Option<TimerId>,
    /// Its scoreboard record.
    record: Option<usize>,
    /// Connections after which it is recycled.
    recycle_at: Option<u64>,
    /// Sent `SIGTERM` for a stopped heartbeat.
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
    own: Vec<(String, OwnedFd)>,
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

/// Sources the pool's reactor watches.
enum Source {
    /// A pool-owned descriptor: a duplicate of a worker's channel, or a pidfd.
    Fd(OwnedFd),
    /// The control socket.
    ControlListener(UnixListener),
    /// A control-socket connection.
    ControlConn(UnixStream),
    /// A source of the caller's ([`Pool::add_source`]).
    User(Box<dyn herder_reactor::Source>),
    /// The socket a new supervisor reports its readiness on during an upgrade.
    Datagram(UnixDatagram),
}

impl AsFd for Source {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Source::Fd(fd) => fd.as_fd(),
            Source::ControlListener(l) => l.as_fd(),
            Source::ControlConn(c) => c.as_fd(),
            Source::User(u) => u.as_fd(),
            Source::Datagram(d) => d.as_fd(),
        }
    }
}

#[derive(Clone, Copy)]
enum Watch {
    Channel(u32),
    Exit(u32),
    ControlListener,
    ControlConn,
    UpgradeReady,
    /// The old supervisor's channel of moving connections.
    Upstream,
    /// The new supervisor's channel of moving connections.
    Downstream,
}

/// A control connection's buffers.
#[derive(Default)]
struct ControlConn {
    /// The connection (the reactor watches a duplicate of it).
    stream: Option<UnixStream>,
    input: Vec<u8>,
    output: Vec<u8>,
    /// End of file seen: close once the output is written.
    eof: bool,
}

/// The most control connections at once.
const MAX_CONTROL_CONNS: usize = 64;
/// The most unwritten response bytes per control connection.
const MAX_CONTROL_OUTPUT: usize = 4 << 20;

/// An upgrade in progress.
struct Upgrade {
    /// The new supervisor.
    pid: u32,
    /// The private directory of the readiness socket.
    dir: PathBuf,
    /// The readiness socket's key.
    key: Key,
    /// The periodic check.
    timer: TimerId,
    /// When the new supervisor must be ready by.
    deadline: Instant,
    /// Why it is being stopped, once it is.
    failed: Option<String>,
    /// When to kill it if `SIGTERM` did not end it.
    kill_at: Option<Instant>,
    /// This end of the channel the new supervisor takes moving connections on.
    moves: Option<Channel>,
}

#[derive(Clone, Copy)]
enum TimerFor {
    /// A slot's back-off.
    Slot(usize),
    /// A worker's ready timeout or drain deadline.
    Proc(u32),
    /// The control listener's pause after a failed accept.
    ControlRetry(Key),
    /// The periodic check of an upgrade in progress.
    Upgrade,
    /// The retry of replies about moving connections that found a channel full.
    Replies,
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
pub struct Pool {
    config: Config,
    program: PathBuf,
    args: Vec<OsString>,
    base_env: Vec<(OsString, OsString)>,
    listeners: Vec<(String, OwnedFd)>,
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
    sigchld: bool,
    /// The scoreboard's descriptor (handed to every worker) and mapping.
    board: (OwnedFd, Board),
    /// The repeating timer that checks heartbeats.
    monitor: Option<TimerId>,
    /// The control socket's path, removed on drop.
    control_path: Option<PathBuf>,
    /// Descriptors a new supervisor inherits at an upgrade, besides the listeners.
    upgrade_fds: Vec<(String, OwnedFd)>,
    /// The upgrade in progress.
    upgrade: Option<Upgrade>,
    /// The upgrade succeeded: stop at the next poll.
    stop_after_upgrade: bool,
    /// Why the last upgrade failed, for `status`.
    upgrade_failed: Option<String>,
    /// This program, as it was found at start (the path an upgrade runs again).
    own_exe: Option<PathBuf>,
    /// The old supervisor waiting for this one to be ready, during an upgrade.
    parent: Option<crate::systemd::Notifier>,
    /// The inherited control socket's path, while the old supervisor has not handed
    /// over yet.
    inherited_control_path: Option<PathBuf>,
    /// What the pool tells systemd, when `NOTIFY_SOCKET` is set.
    systemd: Option<crate::systemd::Reporter>,
    /// The repeating timer of systemd's watchdog ping.
    watchdog: Option<TimerId>,
    /// The user the control socket answers (with root): the one that opened it, even
    /// if the supervisor switched users since.
    control_owner: u32,
    control_conns: HashMap<Key, ControlConn>,
    /// Whether the operator's signals are handled ([`Pool::handle_signals`]).
    signals: bool,
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
    /// Looks for exits periodically where no pidfd tells.
    reap_timer: Option<TimerId>,
    /// Live connections on the move from a retired worker to another.
    moves: Moves,
    /// Started by an upgrade: the channel on which the old supervisor moves its
    /// workers' connections here.
    upstream: Option<(Channel, Key)>,
    /// Upgraded: the channel to the new supervisor, which takes this pool's moving
    /// connections.
    downstream: Option<moving::Downstream>,
    /// Replies about moving connections not sent yet (a channel was full), in
    /// order, and whether a retry is armed.
    replies: moving::Replies,
}

/// Makes a slot's own descriptors.
type SlotListeners = Box<dyn FnMut(usize) -> io::Result<Vec<(String, OwnedFd)>>>;

impl Pool {
    /// Creates a pool that hands `listeners` (name, descriptor) to every worker as
    /// descriptors 3, 4, … (`LISTEN_FDNAMES` carries the names), plus its channel,
    /// named `herder-channel`. No worker starts before [`start`](Self::start).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the program cannot be found or the event loop not created.
    pub fn new(config: Config, mut listeners: Vec<(String, OwnedFd)>) -> Result<Pool, Error> {
        let program = match &config.program {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(Error::io("finding the current executable"))?,
        };
        if let Some(who) = config.worker_credentials {
            // Every start would fail with EACCES otherwise, each retried and backed
            // off: say at once what to change.
            who.check_can_execute(&program)
                .map_err(Error::io("the workers' user cannot run the program"))?;
        }
        let args = config
            .args
            .clone()
            .unwrap_or_else(|| std::env::args_os().skip(1).collect());
        let mut base_env: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| {
                !sys::is_listen_var(k)
                    && !sys::is_notify_var(k)
                    && k != crate::systemd::UPGRADE_ENV
                    && k != WORKER_ENV
                    && k != crate::accept_lock::LOCK_ENV
            })
            .chain(config.env.iter().cloned())
            .collect();
        if let Some(kind) = config.accept_lock {
            let fd =
                crate::AcceptLock::create(kind).map_err(Error::io("creating the accept lock"))?;
            listeners.push((crate::accept_lock::LOCK_NAME.to_string(), fd));
            base_env.push((crate::accept_lock::LOCK_ENV.into(), kind.name().into()));
        }
        let mut reactor = Reactor::new().map_err(Error::io("creating the event loop"))?;
        // Without pidfds, exits are noticed by SIGCHLD — if this is the process's
        // only event loop watching signals — and by a periodic check in any case.
        let sigchld = !cfg!(any(target_os = "linux", target_os = "android"))
            && reactor.watch_signals(&[Signal::Child]).is_ok();
        let board = Board::create(config.scoreboard_capacity.max(1))
            .map_err(Error::io("creating the scoreboard"))?;
        let housekeeping =
            (config.max_connections.is_some() || config.autoscale.is_some()).then(|| {
                let every = Duration::from_secs(1);
                reactor.add_timer(Instant::now() + every, Some(every))
            });
        let monitor = config.heartbeat_timeout.map(|t| {
            let every = (t / 4).max(Duration::from_millis(10));
            reactor.add_timer(Instant::now() + every, Some(every))
        });
        let systemd = match config.systemd_notify {
            true => crate::systemd::Notifier::from_env()
                .map_err(|e| Error::Environment(e.to_string()))?,
            false => None,
        };
        let watchdog = systemd.as_ref().and_then(|n| n.watchdog()).map(|t| {
            let every = (t / 2).max(Duration::from_millis(10));
            reactor.add_timer(Instant::now(), Some(every))
        });
        // Started by a supervisor being upgraded: tell it when ready.
        let parent = match std::env::var_os(crate::systemd::UPGRADE_ENV) {
            Some(path) => Some(
                crate::systemd::Notifier::to_path(std::path::Path::new(&path))
                    .map_err(Error::io("reaching the supervisor being upgraded"))?,
            ),
            None => None,
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let seed = nanos ^ (u64::from(sys::getpid()) << 32) ^ 0x9E37_79B9_7F4A_7C15;
        Ok(Pool {
            slots: Vec::new(),
            procs: HashMap::new(),
            config,
            program,
            args,
            base_env,
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
            sigchld,
            board,
            monitor,
            control_path: None,
            control_owner: sys::geteuid(),
            control_conns: HashMap::new(),
            signals: false,
            recycling: None,
            housekeeping,
            scale_step: 1,
            idle_ticks: 0,
            slot_listeners: None,
            reap_timer: None,
            moves: Moves::default(),
            upstream: None,
            downstream: None,
            replies: moving::Replies::default(),
            systemd: systemd.map(crate::systemd::Reporter::new),
            watchdog,
            upgrade_fds: Vec::new(),
            upgrade: None,
            upgrade_failed: None,
            stop_after_upgrade: false,
            own_exe: std::env::current_exe().ok(),
            parent,
            inherited_control_path: None,
        })
        .map(|mut pool: Pool| {
            if !cfg!(any(target_os = "linux", target_os = "android")) {
                pool.need_sigchld();
            }
            if pool.parent.is_some() {
                if let Some(channel) = crate::systemd::inherited_moves() {
                    pool.watch_upstream(channel);
                }
            }
            pool
        })
    }

    /// Starts a worker in each of the configured number of slots. A worker that fails
    /// to start is reported ([`PoolEvent::SpawnFailed`]) and retried; it never stops
    /// the others.
    pub fn start(&mut self, events: &mut Vec<PoolEvent>) {
        let before = events.len();
        self.start_inner(events);
        trace_events(&events[before..]);
    }

    fn start_inner(&mut self, events: &mut Vec<PoolEvent>) {
        let n = self.config.workers;
        self.scale_inner(n, events);
        self.report();
    }

    /// Tells systemd (`sd_notify`) what changed, if it listens, and a supervisor
    /// upgrading to this one that it is ready.
    fn report(&mut self) {
        if self.systemd.is_none() && self.parent.is_none() {
            return;
        }
        let ready = self
            .slots
            .iter()
            .filter(|s| s.state == State::Ready)
            .count();
        let snapshot = crate::systemd::Snapshot {
            ready,
            slots: self.slots.len(),
            settled: !self
                .slots
                .iter()
                .any(|s| matches!(s.state, State::Starting | State::Backoff)),
            reloading: self.reloading.is_some() || self.reload_pending,
            stopping: self.stopping,
            generation: self.generation,
            processes: self.procs.len(),
        };
        // A supervisor upgrading to this one hands over only when every slot is
        // ready: a build whose workers crash does not take over.
        if snapshot.ready == snapshot.slots && snapshot.ready > 0 && !self.stopping {
            if let Some(parent) = self.parent.take() {
                let _ = parent.notify(&format!("READY=1\nMAINPID={}", sys::getpid()));
                // The control socket's file is this process's to remove from now on;
                // before, a failed start must not remove the old supervisor's.
                if self.control_path.is_none() {
                    self.control_path = self.inherited_control_path.take();
                }
            }
        }
        if let Some(reporter) = self.systemd.as_mut() {
            reporter.update(&snapshot);
        }
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

    /// Sends a message to the current worker of `slot` over its channel (in the
    /// hand-off model: a connection), if it is ready.
    ///
    /// # Errors
    ///
    /// [`Error::NoWorker`] if the slot has no ready worker; [`Error::Channel`] for
    /// what sending returns (`WouldBlock` when the worker's channel is full).
    pub fn send(
        &mut self,
        slot: usize,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), Error> {
        let ch = self.ready_channel(slot)?;
        ch.send(payload, fds)
            .map_err(|source| Error::Channel { slot, source })
    }

    /// Hands a socket to the current worker of `slot` with its header (herder-fd's
    /// typed hand-off), if the worker is ready. `Ok` means the kernel has it, and
    /// names the pid of the worker it went to. Ids with the top bit set are the
    /// pool's own (connections moving between workers): keep yours below 2⁶³.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub fn send_socket<S: herder_fd::Transfer + AsFd>(
        &mut self,
        slot: usize,
        socket: &S,
        meta: &herder_fd::Handoff<'_>,
    ) -> Result<u32, Error> {
        let (pid, ch) = self.ready_worker(slot)?;
        ch.send_socket(socket, meta)
            .map_err(|source| Error::Channel { slot, source })?;
        Ok(pid)
    }

    /// Hands several sockets to the current worker of `slot` in one message
    /// (herder-fd's [`Channel::send_sockets`]), if the worker is ready; the worker
    /// reads them with `Message::into_sockets`. `Ok` names the pid of the worker they
    /// went to. Hand-off ids with the top bit set are the pool's own (connections
    /// moving between workers): keep yours below 2⁶³.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send); more than `MAX_FDS_PER_MESSAGE` sockets are refused.
    pub fn send_sockets<S: herder_fd::Transfer + AsFd>(
        &mut self,
        slot: usize,
        items: &[(&S, herder_fd::Handoff<'_>)],
    ) -> Result<u32, Error> {
        let (pid, ch) = self.ready_worker(slot)?;
        ch.send_sockets(items)
            .map_err(|source| Error::Channel { slot, source })?;
        Ok(pid)
    }

    fn ready_channel(&mut self, slot: usize) -> Result<&mut Channel, Error> {
        self.ready_worker(slot).map(|(_, ch)| ch)
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
        self.moves.stats()
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
        Some(Load {
            pid,
            accepted: r.map_or(0, |r| r.accepted()),
            active: r.map_or(0, |r| r.active()),
        })
    }

    /// Watches a source of the caller's in the pool's event loop; its readiness comes
    /// back as [`PoolEvent::Other`]. The supervisor of the hand-off model watches its
    /// listener this way.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if registering fails.
    pub fn add_source(
        &mut self,
        source: Box<dyn herder_reactor::Source>,
        interest: Interest,
        mode: Mode,
    ) -> Result<Key, Error> {
        self.reactor
            .register(Source::User(source), interest, mode)
            .map_err(Error::io("watching a source"))
    }

    /// Changes what a source of the caller's is watched for.
    ///
    /// # Errors
    ///
    /// [`Error::Io`]: `NotFound` if `key` is not a source added with
    /// [`add_source`](Self::add_source).
    pub fn modify_source(&mut self, key: Key, interest: Interest, mode: Mode) -> Result<(), Error> {
        if !matches!(self.reactor.get(key), Some(Source::User(_))) {
            return Err(Error::Io {
                what: "changing a source",
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    "not a source added with add_source",
                ),
            });
        }
        self.reactor
            .modify(key, interest, mode)
            .map_err(Error::io("changing a source"))
    }

    /// Stops watching a source of the caller's and gives it back.
    ///
    /// # Errors
    ///
    /// [`Error::Io`]: `NotFound` if `key` is not a source added with
    /// [`add_source`](Self::add_source).
    pub fn remove_source(&mut self, key: Key) -> Result<Box<dyn herder_reactor::Source>, Error> {
        let not_found = || Error::Io {
            what: "removing a source",
            source: io::Error::new(
                io::ErrorKind::NotFound,
                "not a source added with add_source",
            ),
        };
        if !matches!(self.reactor.get(key), Some(Source::User(_))) {
            return Err(not_found());
        }
        match self.reactor.deregister(key) {
            Ok(Source::User(s)) => Ok(s),
            Ok(_) => Err(not_found()),
            Err(e) => Err(Error::Io {
                what: "removing a source",
                source: e,
            }),
        }
    }

    /// A source of the caller's.
    pub fn source(&self, key: Key) -> Option<&dyn herder_reactor::Source> {
        match self.reactor.get(key)? {
            Source::User(u) => Some(&**u),
            _ => None,
        }
    }

    /// Starts a timer of the caller's; it comes back as [`PoolEvent::Other`].
    pub fn add_timer(&mut self, deadline: Instant, repeat: Option<Duration>) -> TimerId {
        self.reactor.add_timer(deadline, repeat)
    }

    /// Sends `sig` to the current worker of `slot`.
    ///
    /// # Errors
    ///
    /// [`Error::NoWorker`] if the slot has no running worker.
    pub fn signal(&mut self, slot: usize, sig: i32) -> Result<(), Error> {
        let pid = self
            .slots
            .get(slot)
            .and_then(|s| s.current)
            .ok_or(Error::NoWorker(slot))?;
        sys::signal(pid, sig).map_err(Error::io("signalling a worker"))
    }

    /// Starts a slot stopped by the breaker or by a fatal exit again, with a fresh
    /// back-off.
    ///
    /// # Errors
    ///
    /// [`Error::NoWorker`] if the slot does not exist or is not stopped that way.
    pub fn reset(&mut self, slot: usize, events: &mut Vec<PoolEvent>) -> Result<(), Error> {
        let s = self.slots.get_mut(slot).ok_or(Error::NoWorker(slot))?;
        if !matches!(s.state, State::Tripped | State::Fatal) || self.stopping {
            return Err(Error::NoWorker(slot));
        }
        s.history.reset();
        self.start_now(slot, events);
        Ok(())
    }

    /// Starts `slot`'s next worker at once, whatever back-off or cool-down it was
    /// waiting out.
    fn start_now(&mut self, slot: usize, events: &mut Vec<PoolEvent>) {
        let s = &mut self.slots[slot];
        s.restart_at = None;
        if let Some(t) = s.timer.take() {
            self.cancel_timer(t);
        }
        self.spawn(slot, events);
    }

    /// Changes the number of slots to `n`: new slots start a worker; removed slots
    /// (the highest) have their workers drained.
    pub fn scale(&mut self, n: usize, events: &mut Vec<PoolEvent>) {
        let before = events.len();
        self.scale_inner(n, events);
        trace_events(&events[before..]);
    }

    fn scale_inner(&mut self, n: usize, events: &mut Vec<PoolEvent>) {
        if self.stopping {
            return;
        }
        // Half the scoreboard, so that every worker — a draining one next to its
        // successor included — has a record.
        let n = n.min((self.config.scoreboard_capacity / 2).max(1));
        while self.slots.len() > n {
            let slot = self.slots.len() - 1;
            let Some(s) = self.slots.pop() else {
                break;
            };
            if let Some(t) = s.timer {
                self.cancel_timer(t);
            }
            let pids: Vec<u32> = self
                .procs
                .iter()
                .filter(|(_, p)| p.slot == slot)
                .map(|(pid, _)| *pid)
                .collect();
            for pid in pids {
                self.retire(pid, true);
            }
        }
        while self.slots.len() < n {
            let slot = self.slots.len();
            let mut s = Slot::new(self.generation);
            if let Some(make) = self.slot_listeners.as_mut() {
                match make(slot) {
                    Ok(own) => s.own = own,
                    Err(source) => {
                        events.push(PoolEvent::SpawnFailed {
                            slot,
                            error: Error::Spawn { slot, source },
                        });
                        return;
                    }
                }
            }
            self.slots.push(s);
            self.spawn(slot, events);
        }
    }

    /// Starts a rolling restart: each slot starts a worker of a new generation, and
    /// its old worker is told to drain only once the new one is ready — so there is
    /// always a ready worker per slot. One generation drains at a time: a reload asked
    /// for while the previous one is still draining starts when it is done.
    /// [`PoolEvent::Reloaded`] reports the end.
    pub fn reload(&mut self, events: &mut Vec<PoolEvent>) {
        let before = events.len();
        self.reload_inner(events);
        trace_events(&events[before..]);
    }

    fn reload_inner(&mut self, events: &mut Vec<PoolEvent>) {
        if self.stopping {
            return;
        }
        if self.reloading.is_some()
            || self.recycling.is_some()
            || self.procs.values().any(|p| p.draining)
        {
            self.reload_pending = true;
            return;
        }
        self.generation += 1;
        self.reloading = Some(self.generation);
        self.reload_failed.clear();
        for slot in 0..self.slots.len() {
            match self.slots[slot].state {
                // Slots between workers simply start the new generation next.
                State::Backoff | State::Stopped => {
                    self.slots[slot].generation = self.generation;
                }
                // A reload is what an operator does once the cause is fixed: a
                // stopped slot tries at once (a tripped one stays half-open: if this
                // try fails, it trips again).
                State::Tripped | State::Fatal => {
                    self.slots[slot].restarts += 1;
                    self.start_now(slot, events);
                }
                State::Starting | State::Ready => self.spawn_successor(slot, events),
            }
        }
        self.check_reloaded(events);
        self.report();
    }

    /// Starts a graceful stop: no more restarts, every worker is told to drain, and
    /// those still running after the drain timeout are killed.
    /// [`PoolEvent::Stopped`] reports the end; [`is_stopped`](Self::is_stopped) tells.
    pub fn stop(&mut self, events: &mut Vec<PoolEvent>) {
        let before = events.len();
        self.stop_inner(events);
        trace_events(&events[before..]);
    }

    fn stop_inner(&mut self, events: &mut Vec<PoolEvent>) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.reload_pending = false;
        self.reloading = None;
        // An upgrade in progress is abandoned: the new supervisor must not outlive
        // a stop the operator asked for.
        let grace = self.config.kill_grace;
        if let Some(u) = self.upgrade.as_mut() {
            if u.failed.is_none() {
                u.failed = Some("the pool is stopping".into());
                let _ = sys::signal(u.pid, libc::SIGTERM);
                u.kill_at = Some(Instant::now() + grace);
            }
        }
        for slot in 0..self.slots.len() {
            if let Some(t) = self.slots[slot].timer.take() {
                self.cancel_timer(t);
            }
            self.slots[slot].state = State::Stopped;
            self.slots[slot].restart_at = None;
            self.slots[slot].own.clear();
        }
        // No worker of this pool accepts from here on: close its copies of the
        // listening sockets now, so that new connections are refused at once (or
        // wait for whoever else holds the socket: systemd, a new supervisor) rather
        // than queue in a backlog nobody reads. Draining workers close theirs too.
        self.listeners.clear();
        self.upgrade_fds.clear();
        // After an upgrade the workers move their connections to the new
        // supervisor's; otherwise they drain.
        let moving = self.downstream.is_some();
        let pids: Vec<u32> = self.procs.keys().copied().collect();
        for pid in pids {
            self.retire(pid, moving);
        }
        if self.procs.is_empty() {
            events.push(PoolEvent::Stopped);
        }
        self.report();
    }

    /// Adds a descriptor a new supervisor inherits at an [`upgrade`](Self::upgrade),
    /// under `name` in its `LISTEN_FDNAMES`: a listener of the caller's own (the
    /// pool's listeners are passed anyway). The new program finds it with
    /// [`systemd::listen_fds`](crate::systemd::listen_fds), as if systemd had passed
    /// it.
    pub fn pass_on_upgrade(&mut self, name: &str, fd: OwnedFd) {
        self.upgrade_fds.push((name.to_string(), fd));
    }

    /// Starts a zero-downtime upgrade (`SIGUSR2`, or `upgrade` on the control
    /// socket): runs the program now on disk at this program's path as a new
    /// supervisor, with the same arguments, handing it the listeners (the pool's
    /// and [`pass_on_upgrade`](Self::pass_on_upgrade)'s) and the control socket as
    /// inherited descriptors named in `LISTEN_FDS`/`LISTEN_FDNAMES`. Both serve
    /// while the new one starts. When the new supervisor's workers are all ready it
    /// says so ([`PoolEvent::Upgraded`]), and this pool stops gracefully; if it exits
    /// first or is not ready within the ready timeout, it is stopped and this pool
    /// carries on ([`PoolEvent::UpgradeFailed`]).
    ///
    /// The new program must take its listeners with
    /// [`systemd::listen_fds`](crate::systemd::listen_fds) before binding, and open
    /// its control socket at the same path. Not with per-slot listeners
    /// ([`set_slot_listeners`](Self::set_slot_listeners)).
    pub fn upgrade(&mut self, events: &mut Vec<PoolEvent>) {
        let before = events.len();
        self.upgrade_inner(events);
        trace_events(&events[before..]);
    }

    fn upgrade_inner(&mut self, events: &mut Vec<PoolEvent>) {
        if self.stopping || self.upgrade.is_some() {
            return;
        }
        match self.start_upgrade() {
            Ok(u) => {
                let pid = u.pid;
                self.upgrade = Some(u);
                self.upgrade_failed = None;
                events.push(PoolEvent::UpgradeStarted { pid });
            }
            Err(e) => {
                let reason = e.to_string();
                self.upgrade_failed = Some(reason.clone());
                events.push(PoolEvent::UpgradeFailed { reason });
            }
        }
    }

    fn start_upgrade(&mut self) -> Result<Upgrade, Error> {
        if self.slot_listeners.is_some() {
            return Err(Error::Environment(
                "an upgrade cannot pass per-slot listeners".into(),
            ));
        }
        let program = self
            .own_exe
            .clone()
            .ok_or_else(|| Error::Environment("this program's path is unknown".into()))?;
        let dir = sys::private_dir().map_err(Error::io("creating the upgrade's directory"))?;
        let ready =
            UnixDatagram::bind(dir.join("ready")).and_then(|s| s.set_nonblocking(true).map(|()| s));
        let ready = match ready {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(Error::Io {
                    what: "binding the upgrade's readiness socket",
                    source: e,
                });
            }
        };
        // The supervisor's own environment, without what was meant for this process
        // alone; systemd's notification socket stays, for the new main process.
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| {
                !sys::is_listen_var(k) && k != "WATCHDOG_PID" && k != crate::systemd::UPGRADE_ENV
            })
            .collect();
        env.push((
            crate::systemd::UPGRADE_ENV.into(),
            dir.join("ready").into_os_string(),
        ));
        let control = self
            .watches
            .iter()
            .find(|(_, w)| matches!(w, Watch::ControlListener))
            .and_then(|(k, _)| match self.reactor.get(*k) {
                Some(Source::ControlListener(l)) => Some(l.as_fd()),
                _ => None,
            });
        let mut fds: Vec<(BorrowedFd<'_>, &str)> = self
            .listeners
            .iter()
            .filter(|(n, _)| n != crate::accept_lock::LOCK_NAME)
            .chain(&self.upgrade_fds)
            .map(|(n, fd)| (fd.as_fd(), n.as_str()))
            .collect();
        if let Some(c) = control {
            fds.push((c, crate::systemd::CONTROL_NAME));
        }
        // Where this pool's workers' connections move to, if the pool moves them.
        let moves = match self.config.move_connections {
            true => Channel::pair().ok(),
            false => None,
        };
        if let Some((_, theirs)) = &moves {
            fds.push((theirs.as_fd(), crate::systemd::MOVES_NAME));
        }
        let args: Vec<OsString> = std::env::args_os().skip(1).collect();
        let spawned = sys::spawn(&program, &args, &env, &fds, None);
        drop(fds);
        let spawned = match spawned {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(Error::Io {
                    what: "starting the new program",
                    source: e,
                });
            }
        };
        let key =
            match self
                .reactor
                .register(Source::Datagram(ready), Interest::READABLE, Mode::Level)
            {
                Ok(key) => key,
                Err(source) => {
                    // Unwatched, it must not go on.
                    let _ = sys::signal(spawned.pid, libc::SIGKILL);
                    let _ = sys::try_wait(spawned.pid);
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(Error::Io {
                        what: "watching the upgrade's readiness socket",
                        source,
                    });
                }
            };
        self.watches.insert(key, Watch::UpgradeReady);
        let every = Duration::from_millis(50);
        let timer = self.reactor.add_timer(Instant::now() + every, Some(every));
        self.timers.insert(timer, TimerFor::Upgrade);
        Ok(Upgrade {
            pid: spawned.pid,
            dir,
            key,
            timer,
            deadline: Instant::now() + self.config.ready_timeout,
            failed: None,
            kill_at: None,
            moves: moves.map(|(ours, _)| ours),
        })
    }

    /// The new supervisor wrote to the readiness socket.
    fn on_upgrade_ready(&mut self, events: &mut Vec<PoolEvent>) {
        let Some(u) = &self.upgrade else { return };
        let mut ready = false;
        if let Some(Source::Datagram(socket)) = self.reactor.get(u.key) {
            let mut buf = [0u8; 512];
            // Bounded: whatever else arrives waits for the next wake-up.
            for _ in 0..16 {
                let Ok(n) = socket.recv(&mut buf) else { break };
                ready |= buf[..n].split(|&b| b == b'\n').any(|l| l == b"READY=1");
            }
        }
        if ready && u.failed.is_none() {
            self.end_upgrade(Ok(()), events);
        }
    }

    /// The upgrade's periodic check: the new supervisor's exit, the ready timeout,
    /// the kill after the grace period.
    fn on_upgrade_tick(&mut self, timer: TimerId, events: &mut Vec<PoolEvent>) {
        let grace = self.config.kill_grace;
        let ready_timeout = self.config.ready_timeout;
        let Some(u) = self.upgrade.as_mut() else {
            self.reactor.cancel_timer(timer);
            return;
        };
        self.timers.insert(timer, TimerFor::Upgrade);
        match sys::try_wait(u.pid) {
            Ok(None) => {}
            Ok(Some(status)) => {
                let reason = u.failed.take().unwrap_or_else(|| {
                    format!("the new supervisor exited before it was ready ({status})")
                });
                self.end_upgrade(Err(reason), events);
                return;
            }
            Err(e) => {
                self.end_upgrade(Err(format!("the new supervisor was lost: {e}")), events);
                return;
            }
        }
        let now = Instant::now();
        if u.failed.is_none() && now >= u.deadline {
            u.failed = Some(format!(
                "the new supervisor was not ready within {ready_timeout:?}"
            ));
            let _ = sys::signal(u.pid, libc::SIGTERM);
            u.kill_at = Some(now + grace);
        }
        if u.kill_at.is_some_and(|at| now >= at) {
            let _ = sys::signal(u.pid, libc::SIGKILL);
            u.kill_at = None;
        }
    }

    /// Ends the upgrade in progress: on success, hands over and stops; on failure,
    /// goes on (the new supervisor is gone already).
    fn end_upgrade(&mut self, result: Result<(), String>, events: &mut Vec<PoolEvent>) {
        let Some(u) = self.upgrade.take() else { return };
        self.watches.remove(&u.key);
        let _ = self.reactor.deregister(u.key);
        self.timers.remove(&u.timer);
        self.reactor.cancel_timer(u.timer);
        let _ = std::fs::remove_dir_all(&u.dir);
        match result {
            Ok(()) => {
                if let Some(r) = self.systemd.take() {
                    let _ = r.notifier.notify(&format!("MAINPID={}", u.pid));
                }
                // The new main process speaks to systemd from now on: no STOPPING=1
                // or watchdog ping from this one.
                if let Some(t) = self.watchdog.take() {
                    self.reactor.cancel_timer(t);
                }
                // The control socket is the new supervisor's now: stop answering on
                // it, and leave the path alone.
                let keys: Vec<Key> = self
                    .watches
                    .iter()
                    .filter(|(_, w)| matches!(w, Watch::ControlListener))
                    .map(|(k, _)| *k)
                    .collect();
                for key in keys {
                    self.watches.remove(&key);
                    let _ = self.reactor.deregister(key);
                }
                self.control_path = None;
                if let Some(channel) = u.moves {
                    self.watch_downstream(channel, u.pid);
                }
                events.push(PoolEvent::Upgraded { pid: u.pid });
                // The graceful stop begins at the next poll: the caller first sees
                // `Upgraded` while the workers still take connections (the hand-off
                // supervisor's last ones).
                self.stop_after_upgrade = true;
            }
            Err(reason) => {
                self.upgrade_failed = Some(reason.clone());
                events.push(PoolEvent::UpgradeFailed { reason });
            }
        }
    }

    /// Whether a graceful stop was asked for ([`stop`](Self::stop), a signal, the
    /// control socket, or the end of an upgrade).
    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// Whether a [`stop`](Self::stop) has finished: no worker is left.
    pub fn is_stopped(&self) -> bool {
        self.stopping && self.procs.is_empty()
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
        if std::mem::take(&mut self.stop_after_upgrade) {
            self.stop_inner(events);
        }
        let mut evs = std::mem::take(&mut self.events);
        self.reactor
            .poll(&mut evs, timeout)
            .map_err(Error::io("waiting for events"))?;
        for ev in evs.drain(..) {
            match ev {
                Event::Io { key, .. } => match self.watches.get(&key).copied() {
                    Some(Watch::Channel(pid)) => {
                        self.read_channel(pid, false, events);
                    }
                    Some(Watch::Exit(pid)) => self.reap(pid, events),
                    Some(Watch::ControlListener) => self.accept_control(key),
                    Some(Watch::ControlConn) => self.serve_control(key, events),
                    Some(Watch::UpgradeReady) => self.on_upgrade_ready(events),
                    Some(Watch::Upstream) => self.read_upstream(),
                    Some(Watch::Downstream) => self.read_downstream(),
                    None if matches!(self.reactor.get(key), Some(Source::User(_))) => {
                        events.push(PoolEvent::Other(ev))
                    }
                    None => {}
                },
                Event::Timer(id) if Some(id) == self.monitor => self.check_heartbeats(events),
                Event::Timer(id) if Some(id) == self.watchdog => {
                    if let Some(r) = &self.systemd {
                        let _ = r.notifier.notify("WATCHDOG=1");
                    }
                }
                Event::Timer(id) if Some(id) == self.reap_timer => {
                    let pids: Vec<u32> = self.procs.keys().copied().collect();
                    for pid in pids {
                        self.reap(pid, events);
                    }
                }
                Event::Timer(id) if Some(id) == self.housekeeping => {
                    self.recycle(events);
                    self.autoscale(events);
                }
                Event::Signal(sig) if self.signals && sig != Signal::Child => {
                    self.on_signal(sig, events)
                }
                Event::Timer(id) => match self.timers.remove(&id) {
                    Some(TimerFor::Slot(slot)) => self.on_backoff_over(slot, events),
                    Some(TimerFor::Proc(pid)) => self.on_proc_timer(pid),
                    Some(TimerFor::ControlRetry(key)) => {
                        let _ = self.reactor.modify(key, Interest::READABLE, Mode::Level);
                    }
                    Some(TimerFor::Upgrade) => self.on_upgrade_tick(id, events),
                    Some(TimerFor::Replies) => self.flush_replies(),
                    None => events.push(PoolEvent::Other(ev)),
                },
                Event::Signal(Signal::Child) if self.sigchld => {
                    let pids: Vec<u32> = self.procs.keys().copied().collect();
                    for pid in pids {
                        self.reap(pid, events);
                    }
                }
                other => events.push(PoolEvent::Other(other)),
            }
        }
        self.events = evs;
        self.report();
        trace_events(&events[before..]);
        Ok(())
    }

    /// Listens for control requests on a Unix socket at `path` (mode 0600; only
    /// processes of the user calling this, and root, are answered, even after the
    /// supervisor switches to another user). A stale socket file left by a dead supervisor
    /// is replaced; a live one is an error.
    ///
    /// # Errors
    ///
    /// [`Error::Io`]: `AddrInUse` if another process listens there, or what binding
    /// returns.
    pub fn listen_control(&mut self, path: impl AsRef<Path>) -> Result<(), Error> {
        use std::os::unix::fs::FileTypeExt;
        let path = path.as_ref();
        // Upgraded from a supervisor that listened there: go on with its socket.
        if let Some(listener) = crate::systemd::inherited_control(path) {
            self.watch_control(listener, path)?;
            if self.parent.is_some() {
                // Not ours to remove until the old supervisor handed over.
                self.inherited_control_path = self.control_path.take();
            }
            return Ok(());
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            let in_use = || Error::Io {
                what: "binding the control socket",
                source: io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "the path exists and is not a stale socket",
                ),
            };
            if !meta.file_type().is_socket() {
                return Err(in_use());
            }
            // Stale only if nobody listens: a refused connection says so.
            match UnixStream::connect(path) {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path)
                        .map_err(Error::io("removing a stale control socket"))?
                }
                _ => return Err(in_use()),
            }
        }
        let listener = UnixListener::bind(path).map_err(Error::io("binding the control socket"))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(Error::io("restricting the control socket"))?;
        self.watch_control(listener, path)
    }

    fn watch_control(&mut self, listener: UnixListener, path: &Path) -> Result<(), Error> {
        listener
            .set_nonblocking(true)
            .map_err(Error::io("binding the control socket"))?;
        let key = self
            .reactor
            .register(
                Source::ControlListener(listener),
                Interest::READABLE,
                Mode::Level,
            )
            .map_err(Error::io("watching the control socket"))?;
        self.watches.insert(key, Watch::ControlListener);
        self.control_path = Some(path.to_path_buf());
        // The user that made the socket file: the one that opened it, even for a
        // socket inherited from the supervisor before an upgrade.
        use std::os::unix::fs::MetadataExt;
        self.control_owner = std::fs::metadata(path).map_or(sys::geteuid(), |m| m.uid());
        Ok(())
    }

    fn accept_control(&mut self, key: Key) {
        for _ in 0..16 {
            let accepted = match self.reactor.get(key) {
                Some(Source::ControlListener(l)) => l.accept(),
                _ => return,
            };
            let conn = match accepted {
                Ok((conn, _)) => conn,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    // Out of descriptors, most likely: stop listening for a moment
                    // rather than spin on a level-triggered listener.
                    if self
                        .reactor
                        .modify(key, Interest::NONE, Mode::Level)
                        .is_ok()
                    {
                        let id = self
                            .reactor
                            .add_timer(Instant::now() + Duration::from_millis(100), None);
                        self.timers.insert(id, TimerFor::ControlRetry(key));
                    }
                    return;
                }
            };
            // Only processes of the user that opened the socket (or root) may control
            // the pool, and only a bounded number at once. Workers running as another
            // user (`worker_credentials`) are not answered.
            let owner = self.control_owner;
            let own =
                herder_fd::peer_credentials(&conn).is_ok_and(|c| c.uid == owner || c.uid == 0);
            if !own
                || self.control_conns.len() >= MAX_CONTROL_CONNS
                || conn.set_nonblocking(true).is_err()
            {
                continue;
            }
            let Ok(dup) = conn.try_clone() else { continue };
            if let Ok(k) =
                self.reactor
                    .register(Source::ControlConn(dup), Interest::READABLE, Mode::Level)
            {
                self.watches.insert(k, Watch::ControlConn);
                self.control_conns.insert(
                    k,
                    ControlConn {
                        stream: Some(conn),
                        input: Vec::new(),
                        output: Vec::new(),
                        eof: false,
                    },
                );
            }
        }
    }

    fn serve_control(&mut self, key: Key, events: &mut Vec<PoolEvent>) {
        let Some(state) = self.control_conns.get_mut(&key) else {
            return;
        };
        let Some(mut conn) = state.stream.take() else {
            return;
        };
        let mut closed = flush_control(&mut conn, &mut state.output);
        let mut buf = [0u8; 4096];
        // Bounded reads per wake-up, and none while replies pile up unread.
        for _ in 0..16 {
            let Some(state) = self.control_conns.get_mut(&key) else {
                break;
            };
            if closed || state.eof || state.output.len() > MAX_CONTROL_OUTPUT / 2 {
                break;
            }
            match conn.read(&mut buf) {
                Ok(0) => state.eof = true,
                Ok(n) => state.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => closed = true,
            }
            // Handle complete lines as they arrive.
            while let Some(state) = self.control_conns.get_mut(&key) {
                let Some(end) = state.input.iter().position(|&b| b == b'\n') else {
                    if state.input.len() > crate::control::MAX_LINE {
                        state
                            .output
                            .extend_from_slice(&crate::control::error("request line too long"));
                        state.eof = true;
                        state.input.clear();
                    }
                    break;
                };
                let line: Vec<u8> = state.input.drain(..=end).collect();
                let reply = match crate::Command::parse(&line) {
                    Ok(cmd) => {
                        let reply = crate::control::execute(self, &cmd, events);
                        events.push(PoolEvent::Command(cmd));
                        reply
                    }
                    Err(msg) => crate::control::error(&msg),
                };
                if let Some(state) = self.control_conns.get_mut(&key) {
                    state.output.extend_from_slice(&reply);
                    if state.output.len() > MAX_CONTROL_OUTPUT {
                        // A client that asks and never reads.
                        closed = true;
                        break;
                    }
                }
            }
        }
        let Some(state) = self.control_conns.get_mut(&key) else {
            return;
        };
        closed |= flush_control(&mut conn, &mut state.output);
        closed |= state.eof && state.output.is_empty();
        if closed {
            self.watches.remove(&key);
            self.control_conns.remove(&key);
            let _ = self.reactor.deregister(key);
            return;
        }
        let interest = Interest {
            readable: !state.eof,
            writable: !state.output.is_empty(),
        };
        state.stream = Some(conn);
        let _ = self.reactor.modify(key, interest, Mode::Level);
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
        make: impl FnMut(usize) -> io::Result<Vec<(String, OwnedFd)>> + 'static,
    ) {
        self.slot_listeners = Some(Box::new(make));
    }

    /// Handles the operator's signals the usual way: `SIGTERM` and `SIGINT` stop
    /// gracefully, `SIGHUP` reloads, `SIGTTIN` and `SIGTTOU` add and remove a worker.
    /// Each is also reported as a [`PoolEvent::Command`].
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if another event loop of this process watches signals.
    pub fn handle_signals(&mut self) -> Result<(), Error> {
        self.reactor
            .watch_signals(&[
                Signal::Terminate,
                Signal::Interrupt,
                Signal::Hangup,
                Signal::TtyIn,
                Signal::TtyOut,
                Signal::User2,
            ])
            .map_err(Error::io("watching signals"))?;
        self.signals = true;
        Ok(())
    }

    fn on_signal(&mut self, sig: Signal, events: &mut Vec<PoolEvent>) {
        let cmd = match sig {
            Signal::Terminate | Signal::Interrupt => crate::Command::Stop,
            Signal::Hangup => crate::Command::Reload,
            Signal::TtyIn => crate::Command::Scale(self.slots.len() + 1),
            Signal::TtyOut => crate::Command::Scale(self.slots.len().saturating_sub(1).max(1)),
            Signal::User2 => crate::Command::Upgrade,
            other => {
                events.push(PoolEvent::Other(Event::Signal(other)));
                return;
            }
        };
        crate::control::execute(self, &cmd, events);
        events.push(PoolEvent::Command(cmd));
    }

    /// Starts a successor for one worker past its connection limit.
    fn recycle(&mut self, events: &mut Vec<PoolEvent>) {
        if self.stopping || self.reloading.is_some() {
            return;
        }
        if let Some(slot) = self.recycling {
            // Done once nothing of the slot is starting any more.
            let busy = self
                .procs
                .values()
                .any(|p| p.slot == slot && !p.ready && !p.draining);
            if busy {
                return;
            }
            self.recycling = None;
            if self.reload_pending && !self.procs.values().any(|p| p.draining) {
                self.reload_pending = false;
                self.reload_inner(events);
                return;
            }
        }
        // The oldest worker past its limit goes first.
        let due = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, s)| {
                let pid = s.current?;
                let p = self.procs.get(&pid)?;
                let r = self.board.1.record(p.record?)?;
                (p.ready && !p.draining && r.accepted() >= p.recycle_at?).then_some((
                    p.started_at,
                    slot,
                    pid,
                ))
            })
            .min()
            .map(|(_, slot, pid)| (slot, pid));
        if let Some((slot, pid)) = due {
            self.recycling = Some(slot);
            events.push(PoolEvent::Recycling { slot, pid });
            self.spawn_successor(slot, events);
        }
    }

    /// Adds workers while all are busy, removes one when two have been idle.
    fn autoscale(&mut self, events: &mut Vec<PoolEvent>) {
        let Some(auto) = self.config.autoscale.clone() else {
            return;
        };
        if self.stopping || self.reloading.is_some() {
            return;
        }
        let ready: Vec<u64> = self
            .slots
            .iter()
            .filter_map(|s| {
                let p = self.procs.get(&s.current?)?;
                p.ready.then(|| {
                    p.record
                        .and_then(|i| self.board.1.record(i))
                        .map_or(0, |r| r.active())
                })
            })
            .collect();
        let n = self.slots.len();
        if self.procs.values().any(|p| !p.ready && !p.draining) {
            // Capacity is on its way: judge again once it is ready.
            return;
        }
        if !ready.is_empty() && ready.iter().all(|&a| a >= auto.busy_connections) && n < auto.max {
            let add = self.scale_step.min(auto.max - n);
            self.scale_step = (self.scale_step * 2).min(32);
            self.idle_ticks = 0;
            self.scale_inner(n + add, events);
            return;
        }
        self.scale_step = 1;
        if ready.iter().filter(|&&a| a == 0).count() >= 2 && n > auto.min {
            self.idle_ticks += 1;
            if Duration::from_secs(u64::from(self.idle_ticks)) >= auto.idle_after {
                self.idle_ticks = 0;
                self.scale_inner(n - 1, events);
            }
        } else {
            self.idle_ticks = 0;
        }
    }

    /// xorshift64: jitter needs no cryptography.
    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn cancel_timer(&mut self, id: TimerId) {
        self.timers.remove(&id);
        self.reactor.cancel_timer(id);
    }

    fn set_proc_timer(&mut self, pid: u32, at: Instant) {
        let id = self.reactor.add_timer(at, None);
        self.timers.insert(id, TimerFor::Proc(pid));
        let old = self.procs.get_mut(&pid).and_then(|p| p.timer.replace(id));
        if let Some(old) = old {
            self.cancel_timer(old);
        }
    }

    /// Starts the slot's worker (its first, or after a back-off).
    fn spawn(&mut self, slot: usize, events: &mut Vec<PoolEvent>) {
        self.slots[slot].generation = self.generation;
        match self.try_spawn(slot) {
            Ok(pid) => {
                let s = &mut self.slots[slot];
                s.current = Some(pid);
                s.state = State::Starting;
                events.push(PoolEvent::Spawned {
                    slot,
                    pid,
                    generation: self.generation,
                });
            }
            Err(error) => {
                events.push(PoolEvent::SpawnFailed { slot, error });
                self.failed(slot, None, Exit::BeforeReady, events);
            }
        }
    }

    /// Starts a worker of the new generation next to the slot's current one.
    fn spawn_successor(&mut self, slot: usize, events: &mut Vec<PoolEvent>) {
        match self.try_spawn(slot) {
            Ok(pid) => events.push(PoolEvent::Spawned {
                slot,
                pid,
                generation: self.generation,
            }),
            // The old worker goes on serving.
            Err(error) => {
                self.reload_failed.push(slot);
                events.push(PoolEvent::SpawnFailed { slot, error });
            }
        }
    }

    fn try_spawn(&mut self, slot: usize) -> Result<u32, Error> {
        let spawn_err = |source| Error::Spawn { slot, source };
        let (parent, child) = Channel::pair().map_err(spawn_err)?;
        parent.set_nonblocking(true).map_err(spawn_err)?;
        let generation = self.generation;
        let record = self.board.1.assign(0, slot, generation);
        let recycle_at = self.config.max_connections.map(|max| {
            // ±10 %, so that workers started together are not recycled together.
            let factor = 0.9 + (self.next_random() % 201) as f64 / 1000.0;
            ((max as f64 * factor) as u64).max(1)
        });
        let mut env = self.base_env.clone();
        let role = match record {
            Some(r) => format!("{slot}:{generation}:{r}"),
            None => format!("{slot}:{generation}"),
        };
        env.push((WORKER_ENV.into(), role.into()));
        let child_fd = OwnedFd::from(child);
        let mut fds: Vec<(BorrowedFd<'_>, &str)> = self
            .listeners
            .iter()
            .chain(&self.slots[slot].own)
            .map(|(n, fd)| (fd.as_fd(), n.as_str()))
            .collect();
        fds.push((child_fd.as_fd(), CHANNEL_NAME));
        if record.is_some() {
            fds.push((self.board.0.as_fd(), SCOREBOARD_NAME));
        }
        let spawned = match sys::spawn(
            &self.program,
            &self.args,
            &env,
            &fds,
            self.config.worker_credentials,
        ) {
            Ok(s) => s,
            Err(e) => {
                if let Some(r) = record {
                    self.board.1.release(r);
                }
                return Err(spawn_err(e));
            }
        };
        drop(fds);
        drop(child_fd);
        let pid = spawned.pid;
        if let Some(r) = record {
            self.board.1.set_pid(r, pid);
        }

        let mut watches = Vec::new();
        let dup = parent.as_fd().try_clone_to_owned().map_err(spawn_err);
        let watch_channel = dup.and_then(|fd| {
            self.reactor
                .register(Source::Fd(fd), Interest::READABLE, Mode::Level)
                .map_err(spawn_err)
        });
        match watch_channel {
            Ok(key) => {
                self.watches.insert(key, Watch::Channel(pid));
                watches.push(key);
            }
            Err(e) => {
                // Without its channel the worker is useless: stop it.
                let _ = sys::signal(pid, libc::SIGKILL);
                let _ = wait_blocking(pid);
                if let Some(r) = record {
                    self.board.1.release(r);
                }
                return Err(e);
            }
        }
        match spawned.pidfd {
            Some(pidfd) => {
                match self
                    .reactor
                    .register(Source::Fd(pidfd), Interest::READABLE, Mode::Level)
                {
                    Ok(key) => {
                        self.watches.insert(key, Watch::Exit(pid));
                        watches.push(key);
                    }
                    Err(_) => self.need_sigchld(),
                }
            }
            None => self.need_sigchld(),
        }
        self.procs.insert(
            pid,
            Proc {
                slot,
                generation,
                ready: false,
                draining: false,
                channel: Some(parent),
                watches,
                started_at: Instant::now(),
                timer: None,
                record,
                recycle_at,
                hung: false,
            },
        );
        let at = Instant::now() + self.config.ready_timeout;
        self.set_proc_timer(pid, at);
        Ok(pid)
    }

    /// Without a pidfd, exits are noticed through `SIGCHLD`.
    fn need_sigchld(&mut self) {
        if !self.sigchld && self.reactor.watch_signals(&[Signal::Child]).is_ok() {
            self.sigchld = true;
        }
        // A SIGCHLD can be lost (a child that died before the handler was there) or
        // the signal pipe taken by another loop: look for exits every second too.
        if self.reap_timer.is_none() {
            let every = Duration::from_secs(1);
            self.reap_timer = Some(self.reactor.add_timer(Instant::now() + every, Some(every)));
        }
    }

    /// Tells a worker to drain — `moving` its connections to the others first, if
    /// the pool does that and is not stopping — and kills it if it is still there at
    /// the deadline.
    fn retire(&mut self, pid: u32, moving: bool) {
        let to = !self.stopping || self.downstream.is_some();
        let request = match moving && self.config.move_connections && to {
            true => protocol::MOVE,
            false => protocol::DRAIN,
        };
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        if p.draining {
            return;
        }
        p.draining = true;
        let told = p
            .channel
            .as_mut()
            .is_some_and(|ch| ch.send(request, &[]).is_ok());
        if !told {
            // A worker that cannot be told (channel gone or full) is asked by signal.
            let _ = sys::signal(pid, libc::SIGTERM);
        }
        let at = Instant::now() + self.config.drain_timeout;
        self.set_proc_timer(pid, at);
    }

    /// Reads a bounded batch of `pid`'s messages; whether more may be waiting.
    /// `reaped`: the process was waited for already.
    fn read_channel(&mut self, pid: u32, reaped: bool, events: &mut Vec<PoolEvent>) -> bool {
        // A bounded batch: a worker flooding its channel cannot starve the rest (the
        // watch is level-triggered and comes back).
        for _ in 0..64 {
            let Some(p) = self.procs.get_mut(&pid) else {
                return false;
            };
            let slot = p.slot;
            let Some(ch) = p.channel.as_mut() else {
                return false;
            };
            // `recv_lossy`: at the descriptor limit, a moving worker's connections
            // arrive without their descriptors, and it must hear that it keeps them.
            match ch.recv_lossy() {
                Ok(Some(msg)) if moving::is_move(&msg) => self.forward(pid, msg),
                Ok(Some(msg)) if protocol::is_pool_message(msg.payload()) => {
                    if msg.payload() == protocol::READY && !p.ready {
                        p.ready = true;
                        self.on_ready(pid, events);
                    }
                }
                Ok(Some(msg)) if protocol::is_reserved(msg.payload()) => {
                    match Receipt::decode(msg.payload()) {
                        Some(Receipt::Ack(upto)) if upto & MOVE_ID != 0 => {
                            let settled = self.moves.acknowledged(pid, upto);
                            self.reply(settled, Receipt::Moved);
                        }
                        Some(Receipt::Ack(upto)) => {
                            events.push(PoolEvent::Acknowledged { slot, pid, upto })
                        }
                        Some(Receipt::Refused(mut ids)) => {
                            let moving: Vec<u64> =
                                ids.iter().copied().filter(|id| id & MOVE_ID != 0).collect();
                            if !moving.is_empty() {
                                ids.retain(|id| id & MOVE_ID == 0);
                                let kept = self.moves.refused(pid, &moving);
                                self.reply(kept, Receipt::Kept);
                            }
                            if !ids.is_empty() {
                                events.push(PoolEvent::Refused { slot, pid, ids })
                            }
                        }
                        // Reserved, and not what the worker side of the pool sends.
                        _ => tracing::warn!(slot, pid, "a malformed pool message; ignored"),
                    }
                }
                Ok(Some(message)) => events.push(PoolEvent::Message { slot, message }),
                Ok(None) => {
                    // The worker closed its end: it is exiting; its exit follows.
                    self.unwatch_channel(pid);
                    return false;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                // The worker died with messages of ours unread: the kernel says so
                // once, and what it had sent (and then the end) still follows.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
                Err(error) => {
                    self.unwatch_channel(pid);
                    // Not if it was reaped already: its pid may be another's now.
                    if !reaped {
                        let _ = sys::signal(pid, libc::SIGKILL);
                    }
                    events.push(PoolEvent::ChannelError { slot, error });
                    return false;
                }
            }
        }
        true
    }

    fn on_ready(&mut self, pid: u32, events: &mut Vec<PoolEvent>) {
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        let (slot, draining, generation) = (p.slot, p.draining, p.generation);
        if let Some(r) = p.record.and_then(|i| self.board.1.record(i)) {
            // The heartbeat clock starts when the worker is ready.
            r.heartbeat();
        }
        if draining {
            // Its drain deadline stays.
            return;
        }
        if let Some(t) = p.timer.take() {
            self.cancel_timer(t);
        }
        let Some(current) = self.slots.get(slot).map(|s| s.current) else {
            return;
        };
        if let Some(cur) = current.filter(|&c| c != pid) {
            if self
                .procs
                .get(&cur)
                .is_some_and(|c| c.generation > generation)
            {
                // A newer generation already serves this slot: this one is obsolete.
                self.retire(pid, true);
                return;
            }
        }
        events.push(PoolEvent::Ready { slot, pid });
        let s = &mut self.slots[slot];
        let previous = s.current.replace(pid);
        s.state = State::Ready;
        s.generation = generation;
        // A successor is ready: retire its predecessor.
        if let Some(old) = previous.filter(|&old| old != pid) {
            self.retire(old, true);
        }
        self.check_reloaded(events);
    }

    fn unwatch_channel(&mut self, pid: u32) {
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        p.channel = None;
        let keys: Vec<Key> = p.watches.clone();
        for key in keys {
            if matches!(self.watches.get(&key), Some(Watch::Channel(_))) {
                self.watches.remove(&key);
                let _ = self.reactor.deregister(key);
                if let Some(p) = self.procs.get_mut(&pid) {
                    p.watches.retain(|k| *k != key);
                }
            }
        }
    }

    /// Reaps `pid` if it has exited.
    fn reap(&mut self, pid: u32, events: &mut Vec<PoolEvent>) {
        if !self.procs.contains_key(&pid) {
            return;
        }
        let status = match sys::try_wait(pid) {
            Ok(Some(status)) => status,
            Ok(None) => return,
            // ECHILD: reaped elsewhere; nothing more will come.
            Err(_) => ExitStatus::default(),
        };
        // What the worker sent before it died (an acknowledgement, say) is reported
        // before its exit: whoever acts on the exit must know what it had done. A dead
        // process's channel holds a bounded amount.
        let mut more = true;
        for _ in 0..1024 {
            more = self.read_channel(pid, true, events);
            if !more {
                break;
            }
        }
        if more {
            tracing::warn!(pid, "a dead worker's channel still had messages; dropped");
        }
        self.unwatch_channel(pid);
        // Connections moving to it that it had not acknowledged stay with the
        // workers they came from.
        let kept = self.moves.gone(pid);
        self.reply(kept, Receipt::Kept);
        let Some(p) = self.procs.remove(&pid) else {
            return;
        };
        if let Some(r) = p.record {
            self.board.1.release(r);
        }
        for key in p.watches {
            self.watches.remove(&key);
            let _ = self.reactor.deregister(key);
        }
        if let Some(t) = p.timer {
            self.cancel_timer(t);
        }
        let slot = p.slot;
        let current = self.slots.get(slot).is_some_and(|s| s.current == Some(pid));
        if let Some(s) = self.slots.get_mut(slot).filter(|_| current) {
            s.current = None;
            s.last_exit = Some(status);
        }
        if p.draining || !current || self.stopping {
            events.push(PoolEvent::Exited {
                slot,
                pid,
                status,
                restart_in: None,
            });
            if !p.draining && !current && !self.stopping && slot < self.slots.len() {
                if self.reloading.is_some() && p.generation == self.generation {
                    // A reload's new worker died before it was ready: the old one stays.
                    self.reload_failed.push(slot);
                } else if let Some(cur) = self.slots[slot]
                    .current
                    .and_then(|c| self.procs.get_mut(&c))
                {
                    // A recycling successor died: keep the old worker, and do not
                    // try to recycle it again (a successor that cannot start would
                    // otherwise be retried every second).
                    cur.recycle_at = None;
                }
            }
            self.after_exit(events);
            return;
        }
        if self.config.fatal_exit_code.is_some() && status.code() == self.config.fatal_exit_code {
            self.slots[slot].state = State::Fatal;
            events.push(PoolEvent::Exited {
                slot,
                pid,
                status,
                restart_in: None,
            });
            self.after_exit(events);
            return;
        }
        let how = match p.ready {
            true => Exit::AfterReady(p.started_at.elapsed()),
            false => Exit::BeforeReady,
        };
        self.failed(slot, Some((pid, status)), how, events);
        self.after_exit(events);
    }

    /// After any exit: finish a stop, a reload, or start a pending reload.
    fn after_exit(&mut self, events: &mut Vec<PoolEvent>) {
        if self.stopping {
            if self.procs.is_empty() {
                events.push(PoolEvent::Stopped);
            }
            return;
        }
        self.check_reloaded(events);
        if self.reload_pending
            && self.reloading.is_none()
            && !self.procs.values().any(|p| p.draining)
        {
            self.reload_pending = false;
            self.reload_inner(events);
        }
    }

    /// Reports the end of a reload once no slot waits for its new worker and nothing
    /// of the old generation is left but the workers of slots whose successor failed.
    fn check_reloaded(&mut self, events: &mut Vec<PoolEvent>) {
        let Some(generation) = self.reloading else {
            return;
        };
        let pending = self
            .procs
            .values()
            .any(|p| p.generation == generation && !p.ready && !p.draining);
        let old_left = self.procs.iter().any(|(pid, p)| {
            p.generation != generation
                && !self.slots.get(p.slot).is_some_and(|s| {
                    s.current == Some(*pid) && self.reload_failed.contains(&p.slot)
                })
        });
        if pending || old_left {
            return;
        }
        self.reloading = None;
        let failed = std::mem::take(&mut self.reload_failed);
        events.push(reload_finished(generation, failed));
    }

    /// Asks the restart policy what to do after `slot`'s worker exited (or could not
    /// be started), and arms the slot's timer for it.
    fn failed(
        &mut self,
        slot: usize,
        exit: Option<(u32, ExitStatus)>,
        how: Exit,
        events: &mut Vec<PoolEvent>,
    ) {
        if self.stopping || slot >= self.slots.len() {
            return;
        }
        let now = Instant::now();
        let random = self.next_random();
        let s = &mut self.slots[slot];
        let decision = s.history.exited(&self.config, how, now, random);
        let (state, delay) = match decision {
            Decision::Restart(delay) => (State::Backoff, delay),
            Decision::Trip { retry_in, .. } => (State::Tripped, retry_in),
        };
        s.state = state;
        s.restart_at = Some(now + delay);
        let timer = self.reactor.add_timer(now + delay, None);
        self.timers.insert(timer, TimerFor::Slot(slot));
        if let Some(old) = self.slots[slot].timer.replace(timer) {
            self.cancel_timer(old);
        }
        if let Some((pid, status)) = exit {
            events.push(PoolEvent::Exited {
                slot,
                pid,
                status,
                restart_in: Some(delay),
            });
        }
        if let Decision::Trip { failures, retry_in } = decision {
            events.push(PoolEvent::BreakerTripped {
                slot,
                failures,
                retry_in,
            });
        }
    }

    fn on_backoff_over(&mut self, slot: usize, events: &mut Vec<PoolEvent>) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        s.timer = None;
        s.restart_at = None;
        // A tripped slot's cool-down is over: one worker tries again (half-open).
        if matches!(s.state, State::Backoff | State::Tripped) && !self.stopping {
            s.restarts += 1;
            self.spawn(slot, events);
        }
    }

    /// Sends `SIGTERM` to every ready worker whose heartbeat is older than the
    /// timeout, and `SIGKILL` after the grace period.
    fn check_heartbeats(&mut self, events: &mut Vec<PoolEvent>) {
        let Some(timeout) = self.config.heartbeat_timeout else {
            return;
        };
        let limit = timeout.as_millis() as u64;
        let mut hung = Vec::new();
        for (pid, p) in &self.procs {
            if !p.ready || p.draining || p.hung {
                continue;
            }
            let Some(r) = p.record.and_then(|i| self.board.1.record(i)) else {
                continue;
            };
            let silent = r.silent_ms();
            if silent > limit {
                hung.push((*pid, p.slot, Duration::from_millis(silent)));
            }
        }
        for (pid, slot, silent) in hung {
            let _ = sys::signal(pid, libc::SIGTERM);
            if let Some(p) = self.procs.get_mut(&pid) {
                p.hung = true;
            }
            let at = Instant::now() + self.config.kill_grace;
            self.set_proc_timer(pid, at);
            events.push(PoolEvent::Hung { slot, pid, silent });
        }
    }

    /// A worker's ready timeout or drain deadline passed: kill it; its exit is
    /// handled as usual (a crash, unless it was draining).
    fn on_proc_timer(&mut self, pid: u32) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.timer = None;
            let _ = sys::signal(pid, libc::SIGKILL);
        }
    }
}

/// Writes what the socket takes; `true` if the connection failed.
fn flush_control(conn: &mut UnixStream, out: &mut Vec<u8>) -> bool {
    while !out.is_empty() {
        match conn.write(out) {
            Ok(0) => return true,
            Ok(n) => {
                out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
    false
}

fn wait_blocking(pid: u32) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while sys::try_wait(pid)?.is_none() {
        if Instant::now() > deadline {
            return Err(io::ErrorKind::TimedOut.into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(u) = self.upgrade.take() {
            // A new supervisor half started: it must not outlive this one's exit.
            let _ = sys::signal(u.pid, libc::SIGTERM);
            let _ = std::fs::remove_dir_all(&u.dir);
        }
        if let Some(path) = &self.control_path {
            let _ = std::fs::remove_file(path);
        }
        for pid in self.procs.keys() {
            let _ = sys::signal(*pid, libc::SIGKILL);
            let _ = wait_blocking(*pid);
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

impl crate::control::Controlled for Pool {
    fn status(&self) -> Vec<u8> {
        let mut extra = serde_json::Map::new();
        extra.insert("reloading".into(), self.reloading.into());
        extra.insert(
            "upgrading".into(),
            self.upgrade.as_ref().map(|u| u.pid).into(),
        );
        extra.insert("upgrade_failed".into(), self.upgrade_failed.clone().into());
        extra.insert("moved".into(), self.moves.moved.into());
        extra.insert("moves_kept".into(), self.moves.kept.into());
        status_response(self.generation, self.stopping, self.workers(), extra)
    }

    fn reload(&mut self, events: &mut Vec<PoolEvent>) -> u64 {
        self.reload_inner(events);
        self.generation
    }

    fn scale(&mut self, n: usize, events: &mut Vec<PoolEvent>) -> usize {
        self.scale_inner(n, events);
        self.slots.len()
    }

    fn stop(&mut self, events: &mut Vec<PoolEvent>) {
        self.stop_inner(events);
    }

    fn upgrade(&mut self, events: &mut Vec<PoolEvent>) -> Result<u32, String> {
        self.upgrade_inner(events);
        match (&self.upgrade, &self.upgrade_failed) {
            (Some(u), _) => Ok(u.pid),
            (None, Some(why)) => Err(why.clone()),
            (None, None) => Err("no upgrade started".into()),
        }
    }
}
