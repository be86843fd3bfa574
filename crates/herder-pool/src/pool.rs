//! The supervisor's side: a pool of worker slots, each running one worker process.

mod control;
mod moving;
mod processes;
mod rollout;
mod sources;
mod upgrade;

use control::ControlConn;
use processes::wait_blocking;
pub use rollout::Autoscale;
use upgrade::Upgrade;

pub use crate::config::{Config, FATAL_EXIT_CODE};
use crate::error::Error;
pub use crate::event::PoolEvent;
use crate::message::{self, MOVE_ID, Receipt};
use crate::moves::Moves;
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
    /// A source of the caller's ([`Pool::add_source`], [`Pool::watch`]).
    User(Box<dyn crate::watch::UserSource>),
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
    /// [`Error::Io`] if the program cannot be found or the event loop not created;
    /// [`Error::Environment`] if a listener's name is empty or contains `:`.
    pub fn new(config: Config, mut listeners: Vec<(String, OwnedFd)>) -> Result<Pool, Error> {
        crate::config::check_listener_names(listeners.iter().map(|(n, _)| n.as_str()))?;
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
        // `accepted` before `active`: seeing a worker's new count of connections
        // taken in means seeing the open count it published with it.
        Some(Load {
            pid,
            accepted: r.map_or(0, |r| r.accepted()),
            active: r.map_or(0, |r| r.active()),
        })
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
                    Some(TimerFor::Replies) => self.retry_replies(),
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
