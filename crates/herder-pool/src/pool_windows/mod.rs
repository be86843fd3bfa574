//! The pool on Windows: worker processes started with `CreateProcess` (through
//! `std::process::Command`), each handed the pool's listeners with
//! `WSADuplicateSocketW` over its own channel, supervised, restarted with back-off
//! and a crash-loop breaker, and stopped gracefully with a drain message (there are
//! no signals).
//!
//! Rolling restarts ([`Pool::reload`]), scaling ([`Pool::scale`]) and the control
//! pipe ([`Pool::listen_control`], the same JSON lines as the Unix control socket)
//! work as on Unix, and so does the scoreboard: each worker has a record in shared
//! memory (a named mapping here) where its [`Scorecard`](crate::Scorecard) publishes
//! its heartbeat and load, for [`Pool::load`], `status`, hung-worker detection and
//! load-aware accepting.
//!
//! A worker's channel is a loopback TCP connection that the worker opens to the
//! supervisor at start, presenting a one-time token from its environment: nothing
//! is inherited but the standard handles, and another local process cannot take a
//! worker's place without the token.
//!
//! The supervisor runs on a herder-reactor event loop (IOCP): the rendezvous socket,
//! the workers' channels (non-blocking), each worker's process handle (its exit) and
//! the stop event are watched there; the threads that block on the control pipe wake
//! the loop when they have a request. Deadlines (ready timeout, drain, heartbeats,
//! back-off, a token not presented) bound the wait; nothing is polled on a tick.

mod channels;
mod control;
mod processes;
mod sources;
mod worker;

pub use control::control_pipe_path;
pub use worker::{AcceptLock, Worker, is_drain_request, send_ready};

use crate::Error;
pub use crate::config::{Config, FATAL_EXIT_CODE};
pub use crate::event::PoolEvent;
use crate::restart::History;
use crate::state::reload_finished;
pub use crate::state::{Load, State, WorkerInfo};
use herder_fd::{Channel, Handoff};
use herder_reactor::os::windows::ReactorExt;
use herder_reactor::{Event, Interest, Key, Mode, Reactor, Waker};
use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::windows::io::{AsSocket, BorrowedSocket};
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// The variable that tells a worker its slot and generation, `SLOT:GENERATION`.
pub const WORKER_ENV: &str = "HERDER_WORKER";
/// The variable that tells a worker where its channel is: `ADDR TOKEN NAMES`, the
/// supervisor's loopback address, the token to present, and the names of the
/// listeners that follow, separated by `:`.
const CHANNEL_ENV: &str = "HERDER_WORKER_CHANNEL";
/// The variable naming the accept lock's mutex.
const LOCK_ENV: &str = "HERDER_ACCEPT_MUTEX";
/// The variable naming the scoreboard's shared memory.
const SCOREBOARD_ENV: &str = "HERDER_SCOREBOARD";
/// How long a control client waits for the pool to carry out its request.
const CONTROL_WAIT: Duration = Duration::from_secs(30);
/// How long a connection to the rendezvous has to present its token.
const HELLO_WAIT: Duration = Duration::from_secs(5);
/// Connections to the rendezvous that have not presented a token, at most; more are
/// closed at once.
const MAX_HELLOS: usize = 64;
/// Messages read from one worker's channel per wake-up, so that one that floods it
/// does not starve the others (the channel is level-triggered: the rest comes next).
const READ_BATCH: usize = 256;

/// The sockets the pool's loop watches (its waitable handles aside).
enum Watched {
    /// Where workers connect their channels.
    Rendezvous(TcpListener),
    /// A connection from a worker: its own handle on the socket its [`Channel`]
    /// reads and writes.
    Conn(TcpStream),
    /// A source of the caller's ([`Pool::add_source`], [`Pool::watch`]).
    User(Box<dyn crate::watch::UserSource>),
}

impl AsSocket for Watched {
    fn as_socket(&self) -> BorrowedSocket<'_> {
        match self {
            Watched::Rendezvous(l) => l.as_socket(),
            Watched::Conn(c) => c.as_socket(),
            Watched::User(u) => u.as_socket(),
        }
    }
}

/// A connection to the rendezvous that has not yet presented its token.
struct Hello {
    channel: Channel,
    until: Instant,
}

struct Slot {
    state: State,
    current: Option<u32>,
    /// During a rolling restart: the new worker, until it is ready.
    successor: Option<u32>,
    last_exit: Option<ExitStatus>,
    restarts: u32,
    /// What the restart policy knows of the slot's past.
    history: History,
    /// When the back-off or the breaker's cool-down ends.
    restart_at: Option<Instant>,
}

struct Proc {
    child: Child,
    /// Its process handle in the event loop: reported when it exits.
    exit_key: Key,
    slot: usize,
    generation: u64,
    /// Its record in the scoreboard, if one was free.
    record: Option<usize>,
    /// Its slot was scaled away: it drains, and its exit concerns no slot.
    orphan: bool,
    /// Terminated for hanging.
    hung: bool,
    started: Instant,
    token: String,
    ready: bool,
    draining: bool,
    /// The worker's channel (non-blocking), once it connected, and its key in the
    /// loop.
    channel: Option<(Channel, Key)>,
    /// The second connection, for hand-offs: the pool's alone, so that it can wait
    /// for each acknowledgement on it.
    handoff: Option<Channel>,
    /// READY arrived before the hand-off connection; reported once both are there.
    ready_pending: bool,
    /// When it is terminated if still running (ready timeout, drain deadline).
    deadline: Option<Instant>,
}

/// Where the threads that block (channel reads, the control pipe) report to the
/// pool: a queue, and the loop woken for each report.
#[derive(Clone)]
struct Reporter {
    queue: mpsc::Sender<Report>,
    waker: Waker,
}

impl Reporter {
    /// Queues `report` and wakes the pool; false if the pool is gone.
    fn send(&self, report: Report) -> bool {
        let queued = self.queue.send(report).is_ok();
        // A pool that cannot be woken is gone, and the queue says so next time.
        let _ = self.waker.wake();
        queued
    }
}

/// What the control pipe's threads report.
enum Report {
    /// A request line from the control pipe, where its answer goes, and when it
    /// was asked.
    Control {
        line: Vec<u8>,
        reply: mpsc::Sender<Vec<u8>>,
        asked: Instant,
    },
}

/// A pool of worker processes on Windows. See the [crate documentation](crate) and
/// [the platforms page](https://github.com/herder-rs/herder/blob/main/docs/platforms.md)
/// for what differs from Unix.
pub struct Pool {
    config: Config,
    program: PathBuf,
    args: Vec<OsString>,
    listeners: Vec<(String, TcpListener)>,
    /// The event loop: the rendezvous socket, the workers' channels, their process
    /// handles, the stop event.
    reactor: Reactor<Watched>,
    /// Connections that have yet to present their token, by key.
    hellos: HashMap<Key, Hello>,
    /// The worker each watched channel belongs to, by key.
    conns: HashMap<Key, u32>,
    /// What the last wait reported.
    ready: Vec<Event>,
    /// Where workers connect their channels: its key and address.
    rendezvous: (Key, SocketAddr),
    slots: Vec<Slot>,
    procs: HashMap<u32, Proc>,
    reports: mpsc::Receiver<Report>,
    reporter: Reporter,
    /// The accept lock's mutex: held open here so that it exists while workers come
    /// and go.
    lock: Option<(String, std::os::windows::io::OwnedHandle)>,
    /// The key of the event [`request_stop`] signals from another process: a
    /// graceful stop.
    stop_key: Key,
    /// The scoreboard: its shared memory (kept while workers come and go) and map.
    board: (crate::scoreboard::Shared, crate::scoreboard::Board),
    /// When the workers' heartbeats are looked at next, with a heartbeat timeout.
    heartbeat_check: Option<Instant>,
    stopping: bool,
    stopped_reported: bool,
    /// The newest generation.
    generation: u64,
    /// The generation a rolling restart is bringing up.
    reloading: Option<u64>,
    /// Slots whose new worker failed in the current rolling restart.
    reload_failed: Vec<usize>,
    /// A rolling restart asked for while one was under way.
    reload_pending: bool,
    /// The control pipe's path, once listening.
    control_path: Option<String>,
    /// Set when the pool is dropped: the control pipe's thread ends.
    control_closed: Arc<AtomicBool>,
}

impl Pool {
    /// A pool that will hand `listeners` to each of its workers, by name. No worker
    /// starts before [`start`](Self::start).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the program cannot be found, or the rendezvous socket or the
    /// accept lock cannot be made; [`Error::Environment`] if a listener's name is
    /// empty or contains `:`.
    pub fn new(config: Config, listeners: Vec<(String, TcpListener)>) -> Result<Pool, Error> {
        let io = |what: &'static str| move |source| Error::Io { what, source };
        let program = match &config.program {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(io("finding the current executable"))?,
        };
        let args = config
            .args
            .clone()
            .unwrap_or_else(|| std::env::args_os().skip(1).collect());
        crate::config::check_listener_names(listeners.iter().map(|(n, _)| n.as_str()))?;
        let mut reactor = Reactor::new().map_err(io("creating the event loop"))?;
        let rendezvous = TcpListener::bind("127.0.0.1:0").map_err(io("binding the rendezvous"))?;
        rendezvous
            .set_nonblocking(true)
            .map_err(io("binding the rendezvous"))?;
        let rendezvous_addr = rendezvous
            .local_addr()
            .map_err(io("binding the rendezvous"))?;
        let rendezvous_key = reactor
            .register(
                Watched::Rendezvous(rendezvous),
                Interest::READABLE,
                Mode::Level,
            )
            .map_err(io("watching the rendezvous"))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let lock = if config.accept_lock {
            let name = format!("Local\\herder-accept-{}-{nanos}", std::process::id());
            let handle = crate::sys::create_mutex(&name).map_err(io("creating the accept lock"))?;
            Some((name, handle))
        } else {
            None
        };
        let stop_event = crate::sys::create_event(&stop_event_name(std::process::id()))
            .map_err(io("creating the stop event"))?;
        let stop_key = reactor
            .add_waitable(stop_event)
            .map_err(io("watching the stop event"))?;
        let board = crate::scoreboard::Board::create(config.scoreboard_capacity.max(1))
            .map_err(io("creating the scoreboard"))?;
        let (queue, reports) = mpsc::channel();
        let reporter = Reporter {
            queue,
            waker: reactor.waker(),
        };
        Ok(Pool {
            config,
            program,
            args,
            listeners,
            reactor,
            hellos: HashMap::new(),
            conns: HashMap::new(),
            ready: Vec::new(),
            rendezvous: (rendezvous_key, rendezvous_addr),
            slots: Vec::new(),
            procs: HashMap::new(),
            reports,
            reporter,
            lock,
            stop_key,
            board,
            heartbeat_check: None,
            stopping: false,
            stopped_reported: false,
            generation: 1,
            reloading: None,
            reload_failed: Vec::new(),
            reload_pending: false,
            control_path: None,
            control_closed: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Starts a worker in each of the configured number of slots.
    pub fn start(&mut self, events: &mut Vec<PoolEvent>) {
        let n = crate::config::slot_count(self.config.workers, self.config.scoreboard_capacity / 2);
        self.grow(n, events);
    }

    /// Adds slots up to `n`, each starting a worker.
    fn grow(&mut self, n: usize, events: &mut Vec<PoolEvent>) {
        while self.slots.len() < n {
            let slot = self.slots.len();
            self.slots.push(Slot {
                state: State::Starting,
                current: None,
                successor: None,
                last_exit: None,
                restarts: 0,
                history: History::default(),
                restart_at: None,
            });
            self.spawn(slot, events);
        }
    }

    /// Changes the number of slots to `n` (at least 1): new slots start a worker;
    /// the workers of removed slots (the highest) drain.
    pub fn scale(&mut self, n: usize, events: &mut Vec<PoolEvent>) {
        if self.stopping {
            return;
        }
        // Half the scoreboard, so that every worker — a draining one next to its
        // successor included — has a record.
        let n = crate::config::slot_count(n, self.config.scoreboard_capacity / 2);
        self.grow(n, events);
        if self.slots.len() > n {
            let deadline = Instant::now() + self.config.drain_timeout;
            let removed: Vec<u32> = self
                .slots
                .drain(n..)
                .flat_map(|s| [s.current, s.successor])
                .flatten()
                .collect();
            for pid in removed {
                if let Some(p) = self.procs.get_mut(&pid) {
                    p.orphan = true;
                }
                self.drain(pid, deadline);
            }
            self.reload_failed.retain(|&s| s < n);
            self.check_reloaded(events);
        }
    }

    /// Starts a rolling restart: each slot starts a worker of a new generation, and
    /// its old worker is told to drain only once the new one is ready, so a slot
    /// always has a ready worker. A reload asked for while one is under way (or its
    /// old workers still drain) follows when that is done. [`PoolEvent::Reloaded`]
    /// or [`PoolEvent::ReloadFailed`] reports the end.
    pub fn reload(&mut self, events: &mut Vec<PoolEvent>) {
        if self.stopping {
            return;
        }
        if self.reloading.is_some() || self.procs.values().any(|p| p.draining) {
            self.reload_pending = true;
            return;
        }
        self.generation += 1;
        self.reloading = Some(self.generation);
        self.reload_failed.clear();
        // Slots between workers start the new generation with their next worker; a
        // stopped one tries at once, as a reload is what an operator does once the
        // cause is fixed (a tripped one stays half-open: if this try fails, it trips
        // again).
        for slot in 0..self.slots.len() {
            if matches!(self.slots[slot].state, State::Tripped | State::Fatal) {
                self.slots[slot].restart_at = None;
                self.slots[slot].restarts += 1;
                self.spawn(slot, events);
                continue;
            }
            if matches!(self.slots[slot].state, State::Starting | State::Ready) {
                let generation = self.generation;
                match self.launch(slot, generation, events) {
                    Some(pid) => self.slots[slot].successor = Some(pid),
                    None => self.reload_failed.push(slot),
                }
            }
        }
        self.check_reloaded(events);
    }

    /// Reports the end of a rolling restart once no slot waits for its new worker.
    fn check_reloaded(&mut self, events: &mut Vec<PoolEvent>) {
        let Some(generation) = self.reloading else {
            return;
        };
        // As on Unix: done once every slot has its new worker and the old ones are gone.
        if self.slots.iter().any(|s| s.successor.is_some())
            || self
                .procs
                .values()
                .any(|p| p.draining && p.generation < generation)
        {
            return;
        }
        self.reloading = None;
        let failed = std::mem::take(&mut self.reload_failed);
        events.push(reload_finished(generation, failed));
    }

    /// The current generation: 1 at start, one more for each [`reload`](Self::reload).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A snapshot of every slot.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.slots
            .iter()
            .enumerate()
            .map(|(slot, s)| {
                let current = s.current.and_then(|pid| self.procs.get(&pid));
                let record = current.and_then(|p| self.record(p));
                let mut draining: Vec<u32> = self
                    .procs
                    .iter()
                    .filter(|(pid, p)| {
                        p.slot == slot && p.draining && !p.orphan && s.current != Some(**pid)
                    })
                    .map(|(pid, _)| *pid)
                    .collect();
                draining.sort_unstable();
                WorkerInfo {
                    slot,
                    pid: s.current,
                    // Between workers: the generation its next one runs.
                    generation: current.map_or(self.generation, |p| p.generation),
                    state: s.state,
                    restarts: s.restarts,
                    accepted: record.map_or(0, |r| r.accepted()),
                    active: record.map_or(0, |r| r.active()),
                    lock_waits: record.map_or(0, |r| r.lock_waits()),
                    draining,
                    last_exit: s.last_exit,
                    restart_in: s
                        .restart_at
                        .filter(|_| matches!(s.state, State::Backoff | State::Tripped))
                        .map(|at| at.saturating_duration_since(Instant::now())),
                }
            })
            .collect()
    }

    /// The current worker of `slot` and its load as it last published it
    /// ([`Scorecard`](crate::Scorecard)), if it is ready.
    pub fn load(&self, slot: usize) -> Option<Load> {
        let pid = self.slots.get(slot)?.current?;
        let p = self.procs.get(&pid).filter(|p| p.ready && !p.draining)?;
        let r = self.record(p);
        // `accepted` before `active`: seeing a worker's new count of connections
        // taken in means seeing the open count it published with it.
        Some(Load {
            pid,
            accepted: r.map_or(0, |r| r.accepted()),
            active: r.map_or(0, |r| r.active()),
        })
    }

    /// Worker `p`'s record in the scoreboard.
    fn record(&self, p: &Proc) -> Option<&crate::scoreboard::Record> {
        p.record.and_then(|i| self.board.1.record(i))
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
        s.restart_at = None;
        self.spawn(slot, events);
        Ok(())
    }

    /// Whether a graceful stop was asked for ([`stop`](Self::stop), the control
    /// pipe or [`request_stop`]).
    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// The current worker of `slot`, and its pid.
    fn current_proc(&mut self, slot: usize) -> Result<(u32, &mut Proc), Error> {
        let pid = self
            .slots
            .get(slot)
            .and_then(|s| s.current)
            .ok_or(Error::NoWorker(slot))?;
        let p = self.procs.get_mut(&pid).ok_or(Error::NoWorker(slot))?;
        Ok((pid, p))
    }

    /// Sends an application message to the ready worker of `slot`.
    ///
    /// # Errors
    ///
    /// [`Error::NoWorker`] if the slot has no ready worker, [`Error::Channel`] if
    /// sending fails.
    pub fn send(&mut self, slot: usize, payload: &[u8]) -> Result<u32, Error> {
        let (pid, p) = self.current_proc(slot)?;
        if !p.ready || p.draining {
            return Err(Error::NoWorker(slot));
        }
        let (ch, _) = p.channel.as_mut().ok_or(Error::NoWorker(slot))?;
        let sent = ch.send(payload);
        self.watch_output(pid);
        sent.map_err(|source| Error::Channel { slot, source })?;
        Ok(pid)
    }

    /// Starts a graceful stop: no more restarts, every worker is told to drain, and
    /// those still running after the drain timeout are terminated.
    /// [`PoolEvent::Stopped`] reports the end.
    pub fn stop(&mut self, events: &mut Vec<PoolEvent>) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.reloading = None;
        self.reload_pending = false;
        for s in &mut self.slots {
            s.state = State::Stopped;
            s.restart_at = None;
        }
        // No worker accepts from here on: new connections are refused at once rather
        // than queued in a backlog nobody reads.
        self.listeners.clear();
        let deadline = Instant::now() + self.config.drain_timeout;
        let pids: Vec<u32> = self.procs.keys().copied().collect();
        for pid in pids {
            self.drain(pid, deadline);
        }
        self.check_stopped(events);
    }

    /// Whether a [`stop`](Self::stop) has finished.
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
        // The wait ends at the next deadline of the pool's own, or at a wake-up: a
        // worker's exit, the rendezvous, the stop event, a thread's report.
        let now = Instant::now();
        let wait = match self.next_deadline() {
            Some(at) => {
                let until = at.saturating_duration_since(now);
                Some(timeout.map_or(until, |t| t.min(until)))
            }
            None => timeout,
        };
        let mut ready = std::mem::take(&mut self.ready);
        let waited = self.reactor.poll(&mut ready, wait);
        // Whether a worker's process handle was signalled: only then is there an
        // exit to collect (not at every message or acknowledgement).
        let mut exited = false;
        for e in &ready {
            match *e {
                Event::Io { key, .. } if key == self.stop_key => self.stop(events),
                Event::Io { key, .. } if key == self.rendezvous.0 => self.accept_channels(),
                Event::Io { key, .. } if self.hellos.contains_key(&key) => {
                    self.on_hello(key, events)
                }
                Event::Io {
                    key,
                    readable,
                    writable,
                    hangup,
                } => {
                    if let Some(&pid) = self.conns.get(&key) {
                        if writable {
                            self.flush_channel(pid);
                        }
                        if readable || hangup {
                            self.read_channel(pid, events);
                        }
                    } else if matches!(self.reactor.get(key), Some(Watched::User(_))) {
                        events.push(PoolEvent::Other(*e));
                    } else {
                        // A worker's process handle: `reap` collects its exit.
                        exited = true;
                    }
                }
                // The pool keeps no timer of its own in the loop: this is the caller's.
                Event::Timer(_) => events.push(PoolEvent::Other(*e)),
                // The control pipe's threads: their reports are read below.
                _ => {}
            }
        }
        self.ready = ready;
        waited.map_err(|source| Error::Io {
            what: "waiting for events",
            source,
        })?;
        while let Ok(r) = self.reports.try_recv() {
            self.on_report(r, events);
        }
        if exited {
            self.reap(events);
        }
        self.timers(events);
        if self.reload_pending
            && self.reloading.is_none()
            && !self.procs.values().any(|p| p.draining)
        {
            self.reload_pending = false;
            self.reload(events);
        }
        self.check_stopped(events);
        Ok(())
    }

    /// The earliest deadline of the pool's own: a worker's ready or drain deadline,
    /// the next look at the heartbeats, a slot's back-off or cool-down, a token due.
    fn next_deadline(&self) -> Option<Instant> {
        let hellos = self.hellos.values().map(|h| Some(h.until));
        let procs = self.procs.values().map(|p| p.deadline);
        let slots = self
            .slots
            .iter()
            .filter(|s| !self.stopping && matches!(s.state, State::Backoff | State::Tripped))
            .map(|s| s.restart_at);
        procs
            .chain(slots)
            .chain(hellos)
            .chain([self.heartbeat_check])
            .flatten()
            .min()
    }

    fn on_report(&mut self, report: Report, events: &mut Vec<PoolEvent>) {
        match report {
            Report::Control { line, reply, asked } => {
                // Its client was told there is no answer: carrying it out now would
                // surprise whoever sent it.
                if asked.elapsed() >= CONTROL_WAIT {
                    return;
                }
                let answer = match crate::Command::parse(&line) {
                    Ok(cmd) => {
                        let answer = crate::control::execute(self, &cmd, events);
                        events.push(PoolEvent::Command(cmd));
                        answer
                    }
                    Err(msg) => crate::control::error(&msg),
                };
                let _ = reply.send(answer);
            }
        }
    }

    fn mark_ready(&mut self, pid: u32, slot: usize, events: &mut Vec<PoolEvent>) {
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        p.ready = true;
        if let Some(r) = p.record.and_then(|i| self.board.1.record(i)) {
            // The heartbeat clock starts when the worker is ready.
            r.heartbeat();
        }
        let draining = p.draining;
        if !draining {
            p.deadline = None;
        }
        events.push(PoolEvent::Ready { slot, pid });
        let Some(s) = self.slots.get_mut(slot).filter(|_| !draining) else {
            return;
        };
        if s.successor == Some(pid) {
            // A rolling restart's new worker: it takes the slot, the old one drains.
            s.successor = None;
            s.state = State::Ready;
            if let Some(old) = s.current.replace(pid) {
                let deadline = Instant::now() + self.config.drain_timeout;
                self.drain(old, deadline);
            }
            self.check_reloaded(events);
        } else if s.current == Some(pid) {
            s.state = State::Ready;
        }
    }

    /// Hands `socket` to the ready worker of `slot`, duplicated for its pid, and
    /// waits for the worker's acknowledgement (5 s at most): the caller may close
    /// its copy once this returns `Ok`. Returns the worker's pid.
    ///
    /// # Errors
    ///
    /// [`Error::NoWorker`] if the slot has no ready worker (or it drains),
    /// [`Error::Channel`] if the hand-off failed; a worker whose hand-off channel
    /// failed is terminated and replaced.
    pub fn send_socket<S: herder_fd::Transfer + std::os::windows::io::AsSocket>(
        &mut self,
        slot: usize,
        socket: &S,
        meta: &Handoff<'_>,
    ) -> Result<u32, Error> {
        let (pid, p) = self.current_proc(slot)?;
        if !p.ready || p.draining {
            return Err(Error::NoWorker(slot));
        }
        let ch = p.handoff.as_mut().ok_or(Error::NoWorker(slot))?;
        match ch.send_socket(socket, meta) {
            Ok(()) => Ok(pid),
            Err(source) => {
                // The framing is lost (or the worker is gone): it cannot take more.
                p.handoff = None;
                let _ = p.child.kill();
                Err(Error::Channel { slot, source })
            }
        }
    }

    /// How many slots the pool has.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the pool has no slot.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn check_stopped(&mut self, events: &mut Vec<PoolEvent>) {
        if self.stopping && self.procs.is_empty() && !self.stopped_reported {
            self.stopped_reported = true;
            events.push(PoolEvent::Stopped);
        }
    }

    /// The pool's listeners' addresses, by name.
    pub fn listener_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|(n, l)| Some((n.clone(), l.local_addr().ok()?)))
            .collect()
    }
}

/// The name of the event that stops the pool of supervisor `pid`.
fn stop_event_name(pid: u32) -> String {
    format!("Local\\herder-stop-{pid}")
}

/// Asks the pool of supervisor `pid` (in this session, of this user) to stop
/// gracefully, as `SIGTERM` does on Unix: Windows has no signals, and a server
/// without a console gets no Ctrl-C. The pool's event loop watches its stop event
/// and starts a graceful stop when it is signaled.
///
/// # Errors
///
/// `NotFound` if no pool of that pid exists; what `SetEvent` returns.
pub fn request_stop(pid: u32) -> io::Result<()> {
    crate::sys::signal_event(&stop_event_name(pid))
}

impl Drop for Pool {
    fn drop(&mut self) {
        // End the control pipe's thread: it waits for a client, so be one.
        self.control_closed.store(true, Ordering::SeqCst);
        if let Some(path) = &self.control_path {
            let _ = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path);
        }
        for p in self.procs.values_mut() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}
