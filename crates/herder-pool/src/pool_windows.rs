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

use crate::Error;
pub use crate::config::{Config, FATAL_EXIT_CODE};
pub use crate::event::PoolEvent;
use crate::restart::{Decision, Exit, History};
pub use crate::state::{Load, State, WorkerInfo};
use crate::state::{reload_finished, status_response};
use herder_fd::{Channel, Handoff, Message};
use herder_reactor::os::windows::ReactorExt;
use herder_reactor::{Event, Interest, Key, Mode, Reactor, TimerId, Waker};
use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::windows::io::OwnedHandle;
use std::os::windows::io::{AsSocket, BorrowedSocket};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
    /// A source of the caller's ([`Pool::add_source`]).
    User(Box<dyn herder_reactor::Source>),
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
                    }
                    // Otherwise an exit: `reap` looks at every worker.
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
        self.reap(events);
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

    /// Starts the worker of `slot`, at the newest generation (whichever one it had
    /// before).
    fn spawn(&mut self, slot: usize, events: &mut Vec<PoolEvent>) {
        let generation = self.generation;
        match self.launch(slot, generation, events) {
            Some(pid) => {
                let s = &mut self.slots[slot];
                s.current = Some(pid);
                s.state = State::Starting;
            }
            None => {
                self.crashed(slot, Exit::BeforeReady, events);
            }
        }
    }

    /// Starts a worker process for `slot`; `None` if that failed (reported).
    fn launch(&mut self, slot: usize, generation: u64, events: &mut Vec<PoolEvent>) -> Option<u32> {
        // Unguessable: whoever presents it gets the worker's channel.
        let token = format!(
            "{:016x}{:016x}{slot:x}",
            crate::sys::random_u64(),
            crate::sys::random_u64()
        );
        let addr = self.rendezvous.1;
        let names: Vec<&str> = self.listeners.iter().map(|(n, _)| n.as_str()).collect();
        // Its record, before it exists (the pid follows); none free: it runs without.
        let record = self.board.1.assign(0, slot, generation);
        let role = match record {
            Some(r) => format!("{slot}:{generation}:{r}"),
            None => format!("{slot}:{generation}"),
        };
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.config.env.iter().map(|(k, v)| (k, v)))
            .env(WORKER_ENV, role)
            .env(SCOREBOARD_ENV, &self.board.0.name)
            .env(CHANNEL_ENV, format!("{addr} {token} {}", names.join(":")))
            .stdin(Stdio::null());
        match &self.lock {
            Some((name, _)) => cmd.env(LOCK_ENV, name),
            None => cmd.env_remove(LOCK_ENV),
        };
        let spawned = cmd.spawn().and_then(|mut child| {
            // Its exit wakes the loop.
            let watched = std::os::windows::io::AsHandle::as_handle(&child)
                .try_clone_to_owned()
                .and_then(|h| self.reactor.add_waitable(h));
            match watched {
                Ok(key) => Ok((child, key)),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    Err(e)
                }
            }
        });
        match spawned {
            Ok((child, exit_key)) => {
                let pid = child.id();
                if let Some(r) = record {
                    self.board.1.set_pid(r, pid);
                }
                self.procs.insert(
                    pid,
                    Proc {
                        child,
                        exit_key,
                        slot,
                        generation,
                        record,
                        orphan: false,
                        hung: false,
                        started: Instant::now(),
                        token,
                        ready: false,
                        draining: false,
                        channel: None,
                        handoff: None,
                        ready_pending: false,
                        deadline: Some(Instant::now() + self.config.ready_timeout),
                    },
                );
                events.push(PoolEvent::Spawned {
                    slot,
                    pid,
                    generation,
                });
                Some(pid)
            }
            Err(source) => {
                if let Some(r) = record {
                    self.board.1.release(r);
                }
                events.push(PoolEvent::SpawnFailed {
                    slot,
                    error: Error::Spawn { slot, source },
                });
                None
            }
        }
    }

    /// Takes the connections of starting workers, each watched until it presents
    /// its token ([`HELLO_WAIT`] at most).
    fn accept_channels(&mut self) {
        loop {
            let Some(Watched::Rendezvous(rendezvous)) = self.reactor.get(self.rendezvous.0) else {
                return;
            };
            // Errors other than `WouldBlock` (a connection reset before it was taken)
            // concern that connection alone.
            let Ok((stream, _)) = rendezvous.accept() else {
                return;
            };
            // A worker started later must not inherit another's channel: its end
            // of file is how that worker learns the supervisor is gone.
            if self.hellos.len() >= MAX_HELLOS || crate::sys::no_inherit(&stream).is_err() {
                continue;
            }
            let Ok(reader) = stream.set_nonblocking(true).and_then(|()| {
                let _ = stream.set_nodelay(true);
                stream.try_clone()
            }) else {
                continue;
            };
            let Ok(key) =
                self.reactor
                    .register(Watched::Conn(stream), Interest::READABLE, Mode::Level)
            else {
                continue;
            };
            self.hellos.insert(
                key,
                Hello {
                    channel: Channel::new(reader, 0),
                    until: Instant::now() + HELLO_WAIT,
                },
            );
        }
    }

    /// Reads the token of connection `key`; once it has one, gives the connection to
    /// the worker that presented it, or closes it.
    fn on_hello(&mut self, key: Key, events: &mut Vec<PoolEvent>) {
        let Some(hello) = self.hellos.get_mut(&key) else {
            return;
        };
        let token = match hello.channel.recv() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Ok(Some(m)) => Some(m.into_payload()),
            _ => None,
        };
        // The hello's reader read no further than the token's frame: a channel made
        // afresh on the socket finds the next frame whole.
        self.hellos.remove(&key);
        let adopted = token.is_some_and(|t| self.adopt_channel(key, &t, events));
        if !adopted {
            let _ = self.reactor.deregister(key);
        }
    }

    /// Connection `key` presented `token`: if it is a starting worker's, hands over
    /// the listeners and reads the channel from now on. Whether it was taken.
    fn adopt_channel(&mut self, key: Key, token: &[u8], events: &mut Vec<PoolEvent>) -> bool {
        // The hand-off connection presents the token with "/h" after it.
        let (token, handoff) = match token.strip_suffix(b"/h") {
            Some(t) => (t, true),
            None => (token, false),
        };
        let Some((&pid, p)) = self.procs.iter_mut().find(|(_, p)| {
            let free = if handoff {
                p.handoff.is_none()
            } else {
                p.channel.is_none()
            };
            free && !p.token.is_empty() && p.token.as_bytes() == token
        }) else {
            return false;
        };
        if handoff {
            // Not watched: read only for each hand-off's acknowledgement, blocking and
            // bounded, so that a worker that stops acknowledging cannot hang the pool.
            let Ok(Watched::Conn(stream)) = self.reactor.deregister(key) else {
                return true;
            };
            // (Anything else under the key would not be a hello's.)
            let blocking = stream
                .set_nonblocking(false)
                .and_then(|()| stream.set_read_timeout(Some(HELLO_WAIT)));
            if blocking.is_err() {
                return true;
            }
            p.handoff = Some(Channel::new(stream, pid));
            if p.channel.is_some() {
                // Each connection once.
                p.token.clear();
            }
            if std::mem::take(&mut p.ready_pending) {
                let slot = p.slot;
                self.mark_ready(pid, slot, events);
            }
            return true;
        }
        if p.handoff.is_some() {
            p.token.clear();
        }
        let Some(Ok(stream)) = self.reactor.get(key).map(|w| match w {
            Watched::Conn(c) => c
                .try_clone()
                .and_then(|s| s.set_nonblocking(true).map(|()| s)),
            _ => Err(io::ErrorKind::InvalidInput.into()),
        }) else {
            return false;
        };
        let mut channel = Channel::new(stream, pid);
        // Each listener as a message of its own; the pool keeps its copies for good,
        // so nothing waits for the worker's word that it has its own.
        for (i, (name, listener)) in self.listeners.iter().enumerate() {
            let meta = Handoff {
                id: i as u64,
                peer: None,
                data: name.as_bytes(),
            };
            if let Err(source) = channel.send_sockets(&[(listener, meta)]) {
                let slot = p.slot;
                events.push(PoolEvent::SpawnFailed {
                    slot,
                    error: Error::Channel { slot, source },
                });
                let _ = p.child.kill();
                return false;
            }
        }
        p.channel = Some((channel, key));
        self.conns.insert(key, pid);
        self.watch_output(pid);
        true
    }

    /// Reads what worker `pid` sent (up to [`READ_BATCH`] messages); at the end of
    /// its channel, stops watching it.
    fn read_channel(&mut self, pid: u32, events: &mut Vec<PoolEvent>) {
        for _ in 0..READ_BATCH {
            let Some((ch, _)) = self.procs.get_mut(&pid).and_then(|p| p.channel.as_mut()) else {
                return;
            };
            match ch.recv() {
                Ok(Some(message)) => self.on_message(pid, message, events),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // The end, or a broken frame: nothing more can be said to it, and its
                // exit follows (`reap`).
                Ok(None) | Err(_) => {
                    self.close_channel(pid);
                    return;
                }
            }
        }
    }

    /// Writes what is left of a message to worker `pid`.
    fn flush_channel(&mut self, pid: u32) {
        let Some((ch, _)) = self.procs.get_mut(&pid).and_then(|p| p.channel.as_mut()) else {
            return;
        };
        match ch.flush() {
            Ok(()) => self.watch_output(pid),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => self.close_channel(pid),
        }
    }

    /// Watches worker `pid`'s channel for writability while part of a message waits.
    fn watch_output(&mut self, pid: u32) {
        let Some((ch, key)) = self.procs.get(&pid).and_then(|p| p.channel.as_ref()) else {
            return;
        };
        let interest = match ch.has_pending_output() {
            true => Interest::BOTH,
            false => Interest::READABLE,
        };
        let key = *key;
        if self.reactor.modify(key, interest, Mode::Level).is_err() {
            self.close_channel(pid);
        }
    }

    /// Forgets worker `pid`'s channel.
    fn close_channel(&mut self, pid: u32) {
        let Some((_, key)) = self.procs.get_mut(&pid).and_then(|p| p.channel.take()) else {
            return;
        };
        self.conns.remove(&key);
        let _ = self.reactor.deregister(key);
    }

    /// A message from worker `pid`: its readiness, its load, or the application's.
    fn on_message(&mut self, pid: u32, message: Message, events: &mut Vec<PoolEvent>) {
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        let slot = p.slot;
        if message.payload() == crate::message::READY {
            if !p.ready && !p.ready_pending {
                if p.handoff.is_some() {
                    self.mark_ready(pid, slot, events);
                } else {
                    p.ready_pending = true;
                }
            }
        } else if crate::message::is_pool_message(message.payload()) {
            // Another of the pool's own: nothing for a worker to send.
        } else if crate::message::is_reserved(message.payload()) {
            use crate::message::Receipt;
            match Receipt::decode(message.payload()) {
                Some(Receipt::Ack(upto)) => {
                    events.push(PoolEvent::Acknowledged { slot, pid, upto })
                }
                Some(Receipt::Refused(ids)) => events.push(PoolEvent::Refused { slot, pid, ids }),
                // Reserved, and not what the worker side of the pool sends.
                _ => tracing::warn!(slot, pid, "a malformed pool message; ignored"),
            }
        } else {
            events.push(PoolEvent::Message { slot, message });
        }
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

    /// Tells worker `pid` to drain, by `deadline`. A worker told already keeps its
    /// first deadline.
    fn drain(&mut self, pid: u32, deadline: Instant) {
        let Some(p) = self.procs.get_mut(&pid).filter(|p| !p.draining) else {
            return;
        };
        p.draining = true;
        p.deadline = Some(deadline);
        let told = p
            .channel
            .as_mut()
            .is_some_and(|(ch, _)| ch.send(crate::message::DRAIN).is_ok());
        if told {
            self.watch_output(pid);
        } else {
            // No channel yet (or a broken or full one): it cannot drain.
            let _ = p.child.kill();
        }
    }

    /// Hands several sockets to the ready worker of `slot` in one message over its
    /// channel (herder-fd's `Channel::send_sockets`), without waiting: the worker
    /// reads them with `Message::into_sockets` ([`WorkerLink`](crate::WorkerLink)
    /// does, and acknowledges them, [`PoolEvent::Acknowledged`]). Keep each socket
    /// open until then: on Windows a socket whose last handle closes before the
    /// worker rebuilt it is gone. (The [`Dispatcher`](crate::Dispatcher) does.) `Ok`
    /// names the worker's pid.
    ///
    /// # Errors
    ///
    /// [`Error::NoWorker`] if the slot has no ready worker (or it drains);
    /// [`Error::Channel`] if sending fails (`WouldBlock` when its channel is full;
    /// more than `MAX_SOCKETS_PER_MESSAGE` sockets are refused).
    pub fn send_sockets<S: herder_fd::Transfer + AsSocket>(
        &mut self,
        slot: usize,
        items: &[(&S, Handoff<'_>)],
    ) -> Result<u32, Error> {
        let (pid, p) = self.current_proc(slot)?;
        if !p.ready || p.draining {
            return Err(Error::NoWorker(slot));
        }
        let (ch, _) = p.channel.as_mut().ok_or(Error::NoWorker(slot))?;
        let sent = ch.send_sockets(items);
        self.watch_output(pid);
        sent.map_err(|source| Error::Channel { slot, source })?;
        Ok(pid)
    }

    /// Watches a source of the caller's (a socket) in the pool's event loop; its
    /// readiness comes back as [`PoolEvent::Other`].
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
            .register(Watched::User(source), interest, mode)
            .map_err(|source| Error::Io {
                what: "watching a source",
                source,
            })
    }

    /// Changes what a source of the caller's is watched for.
    ///
    /// # Errors
    ///
    /// [`Error::Io`]: `NotFound` if `key` is not a source added with
    /// [`add_source`](Self::add_source).
    pub fn modify_source(&mut self, key: Key, interest: Interest, mode: Mode) -> Result<(), Error> {
        let what = "changing a source";
        self.user_source(key, what)?;
        self.reactor
            .modify(key, interest, mode)
            .map_err(|source| Error::Io { what, source })
    }

    /// Stops watching a source of the caller's and gives it back.
    ///
    /// # Errors
    ///
    /// [`Error::Io`]: `NotFound` if `key` is not a source added with
    /// [`add_source`](Self::add_source).
    pub fn remove_source(&mut self, key: Key) -> Result<Box<dyn herder_reactor::Source>, Error> {
        let what = "removing a source";
        self.user_source(key, what)?;
        match self.reactor.deregister(key) {
            Ok(Watched::User(s)) => Ok(s),
            Ok(_) => Err(not_a_source(what)),
            Err(source) => Err(Error::Io { what, source }),
        }
    }

    /// A source of the caller's.
    pub fn source(&self, key: Key) -> Option<&dyn herder_reactor::Source> {
        match self.reactor.get(key)? {
            Watched::User(u) => Some(&**u),
            _ => None,
        }
    }

    /// Starts a timer of the caller's; it comes back as [`PoolEvent::Other`].
    pub fn add_timer(&mut self, deadline: Instant, repeat: Option<Duration>) -> TimerId {
        self.reactor.add_timer(deadline, repeat)
    }

    /// `NotFound` unless `key` is a source of the caller's.
    fn user_source(&self, key: Key, what: &'static str) -> Result<(), Error> {
        match self.reactor.get(key) {
            Some(Watched::User(_)) => Ok(()),
            _ => Err(not_a_source(what)),
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

    fn reap(&mut self, events: &mut Vec<PoolEvent>) {
        let exited: Vec<(u32, ExitStatus)> = self
            .procs
            .iter_mut()
            .filter_map(|(pid, p)| match p.child.try_wait() {
                Ok(Some(status)) => Some((*pid, status)),
                _ => None,
            })
            .collect();
        for (pid, status) in exited {
            // What it sent before it died comes first: the kernel holds it for the
            // pool, up to the end of the channel.
            self.read_channel(pid, events);
            self.close_channel(pid);
            let Some(p) = self.procs.remove(&pid) else {
                continue;
            };
            let _ = self.reactor.remove_waitable(p.exit_key);
            if let Some(r) = p.record {
                self.board.1.release(r);
            }
            let slot = p.slot;
            let mark = events.len();
            let restart_in = self.exited(pid, &p, status, events);
            // The exit first, then what it led to (a tripped breaker), as on Unix.
            let after: Vec<PoolEvent> = events.drain(mark..).collect();
            events.push(PoolEvent::Exited {
                slot,
                pid,
                status,
                restart_in,
            });
            events.extend(after);
            self.check_reloaded(events);
        }
    }

    /// Updates the slot of worker `pid`, which exited; when its replacement starts,
    /// if one does.
    fn exited(
        &mut self,
        pid: u32,
        p: &Proc,
        status: ExitStatus,
        events: &mut Vec<PoolEvent>,
    ) -> Option<Duration> {
        if p.orphan {
            // Its slot was scaled away (another may have its number now).
            return None;
        }
        let slot = p.slot;
        let s = self.slots.get_mut(slot)?;
        if s.successor == Some(pid) {
            // A rolling restart's new worker that never became ready: the old one
            // goes on (or, if it is gone too, the slot restarts).
            s.successor = None;
            self.reload_failed.push(slot);
            if s.current.is_none() && !self.stopping {
                return self.crashed(slot, Exit::BeforeReady, events);
            }
            return None;
        }
        let current = s.current == Some(pid);
        if current {
            s.current = None;
            s.last_exit = Some(status);
            if s.successor.is_some() && !p.draining {
                // The new worker being started takes the slot when it is ready.
                s.state = State::Starting;
                return None;
            }
        }
        if !current || self.stopping || p.draining {
            None
        } else if self.config.fatal_exit_code.is_some()
            && status.code() == self.config.fatal_exit_code
        {
            s.state = State::Fatal;
            None
        } else {
            let how = match p.ready {
                true => Exit::AfterReady(p.started.elapsed()),
                false => Exit::BeforeReady,
            };
            self.crashed(slot, how, events)
        }
    }

    /// Asks the restart policy what to do after `slot`'s worker exited (or could not
    /// be started); when its next worker starts.
    fn crashed(&mut self, slot: usize, how: Exit, events: &mut Vec<PoolEvent>) -> Option<Duration> {
        let s = &mut self.slots[slot];
        let now = Instant::now();
        let (state, delay) =
            match s
                .history
                .exited(&self.config, how, now, crate::sys::random_u64())
            {
                Decision::Restart(delay) => (State::Backoff, delay),
                Decision::Trip { failures, retry_in } => {
                    events.push(PoolEvent::BreakerTripped {
                        slot,
                        failures,
                        retry_in,
                    });
                    (State::Tripped, retry_in)
                }
            };
        s.state = state;
        s.restart_at = Some(now + delay);
        Some(delay)
    }

    fn timers(&mut self, events: &mut Vec<PoolEvent>) {
        let now = Instant::now();
        let late: Vec<Key> = self
            .hellos
            .iter()
            .filter(|(_, h)| now >= h.until)
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            // No token in time: whoever it is holds up nothing.
            self.hellos.remove(&key);
            let _ = self.reactor.deregister(key);
        }
        for p in self.procs.values_mut() {
            if p.deadline.is_some_and(|d| now >= d) {
                // Not ready in time, or past its drain deadline.
                p.deadline = None;
                let _ = p.child.kill();
            }
        }
        if let Some(limit) = self.config.heartbeat_timeout {
            if self.heartbeat_check.is_none_or(|at| now >= at) {
                self.check_heartbeats(limit, events);
                // A quarter of the timeout: a hung worker is found within 1.25 times it.
                self.heartbeat_check = Some(now + (limit / 4).max(Duration::from_millis(10)));
            }
        }
        if self.stopping {
            return;
        }
        let due: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                // A tripped slot's cool-down over: one worker tries again (half-open).
                matches!(s.state, State::Backoff | State::Tripped)
                    && s.restart_at.is_some_and(|t| now >= t)
            })
            .map(|(i, _)| i)
            .collect();
        for slot in due {
            self.slots[slot].restart_at = None;
            self.slots[slot].restarts += 1;
            self.spawn(slot, events);
        }
    }

    /// Terminates every ready worker whose scoreboard heartbeat is older than `limit`
    /// (Windows has no gentler signal; its exit is handled as a crash).
    fn check_heartbeats(&mut self, limit: Duration, events: &mut Vec<PoolEvent>) {
        let limit_ms = limit.as_millis() as u64;
        let board = &self.board.1;
        for (&pid, p) in &mut self.procs {
            if !p.ready || p.draining || p.hung {
                continue;
            }
            let Some(r) = p.record.and_then(|i| board.record(i)) else {
                continue;
            };
            let silent = r.silent_ms();
            if silent > limit_ms {
                p.hung = true;
                let _ = p.child.kill();
                events.push(PoolEvent::Hung {
                    slot: p.slot,
                    pid,
                    silent: Duration::from_millis(silent),
                });
            }
        }
    }

    fn check_stopped(&mut self, events: &mut Vec<PoolEvent>) {
        if self.stopping && self.procs.is_empty() && !self.stopped_reported {
            self.stopped_reported = true;
            events.push(PoolEvent::Stopped);
        }
    }

    /// Answers control requests on the named pipe `name` (`\\.\pipe\NAME`, or a
    /// full `\\.\pipe\…` path): the JSON lines of the Unix control socket
    /// ([`Command`](crate::Command)), carried out during [`poll`](Self::poll) and
    /// reported as [`PoolEvent::Command`]. Only the current user, SYSTEM and the
    /// administrators may open the pipe, and only from this machine. `upgrade` is
    /// refused: binary upgrades are Unix-only.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the pipe exists already (another server uses the name) or
    /// cannot be made.
    pub fn listen_control(&mut self, name: &str) -> Result<(), Error> {
        let io = |what: &'static str| move |source| Error::Io { what, source };
        let path = control_pipe_path(name);
        // `FILE_FLAG_FIRST_PIPE_INSTANCE` refuses a name in use on Windows, not on
        // every implementation of it (Wine): ask first as well.
        if crate::sys::pipe_exists(&path) {
            return Err(Error::Io {
                what: "creating the control pipe",
                source: io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{path} exists: another server uses the name"),
                ),
            });
        }
        let security = crate::sys::owner_only().map_err(io("securing the control pipe"))?;
        let first = crate::sys::create_pipe(&path, true, &security)
            .map_err(io("creating the control pipe"))?;
        let reporter = self.reporter.clone();
        let thread_path = path.clone();
        let closed = self.control_closed.clone();
        std::thread::spawn(move || {
            control_thread(&thread_path, first, &security, &reporter, &closed);
        });
        self.control_path = Some(path);
        Ok(())
    }

    /// The control pipe's path, once [`listen_control`](Self::listen_control)
    /// succeeded.
    pub fn control_path(&self) -> Option<&str> {
        self.control_path.as_deref()
    }

    /// The pool's listeners' addresses, by name.
    pub fn listener_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|(n, l)| Some((n.clone(), l.local_addr().ok()?)))
            .collect()
    }
}

impl crate::control::Controlled for Pool {
    fn status(&self) -> Vec<u8> {
        let mut extra = serde_json::Map::new();
        extra.insert("reloading".into(), self.reloading.into());
        status_response(self.generation, self.stopping, self.workers(), extra)
    }

    fn reload(&mut self, events: &mut Vec<PoolEvent>) -> u64 {
        Pool::reload(self, events);
        self.generation
    }

    fn scale(&mut self, n: usize, events: &mut Vec<PoolEvent>) -> usize {
        Pool::scale(self, n, events);
        self.slots.len()
    }

    fn stop(&mut self, events: &mut Vec<PoolEvent>) {
        Pool::stop(self, events);
    }

    fn upgrade(&mut self, _: &mut Vec<PoolEvent>) -> Result<u32, String> {
        Err("binary upgrades are not supported on Windows".into())
    }
}

/// Serves the control pipe: waits for a client on an instance, makes the next
/// instance at once (so a second client need not wait), and answers each client on a
/// thread of its own (16 at most; more are closed unanswered).
fn control_thread(
    path: &str,
    first: OwnedHandle,
    security: &crate::sys::SecurityDescriptor,
    reporter: &Reporter,
    closed: &AtomicBool,
) {
    let busy = Arc::new(AtomicUsize::new(0));
    let mut pipe = first;
    loop {
        let connected = crate::sys::connect_pipe(&pipe);
        if closed.load(Ordering::SeqCst) {
            // The pool is gone (and its wake-up connection is this one).
            return;
        }
        let next = loop {
            match crate::sys::create_pipe(path, false, security) {
                Ok(next) => break next,
                Err(_) if closed.load(Ordering::SeqCst) => return,
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let conn = std::mem::replace(&mut pipe, next);
        if connected.is_err() || busy.load(Ordering::SeqCst) >= 16 {
            continue;
        }
        busy.fetch_add(1, Ordering::SeqCst);
        let (reporter, busy) = (reporter.clone(), busy.clone());
        std::thread::spawn(move || {
            serve_control(std::fs::File::from(conn), &reporter);
            busy.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Reads one request line from a control client, has the pool carry it out, and
/// writes the answer.
fn serve_control(mut conn: std::fs::File, reporter: &Reporter) {
    use std::io::{Read, Write};
    let mut line = Vec::new();
    let mut buf = [0u8; 4096];
    let answer = loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => line.extend_from_slice(&buf[..n]),
        }
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            line.truncate(end);
            let (reply, answer) = mpsc::channel();
            let asked = Instant::now();
            if !reporter.send(Report::Control { line, reply, asked }) {
                return;
            }
            break answer
                .recv_timeout(CONTROL_WAIT)
                .unwrap_or_else(|_| crate::control::error("the supervisor did not answer"));
        }
        if line.len() > crate::control::MAX_LINE {
            break crate::control::error("request line too long");
        }
    };
    // Flushing waits for the client to read the answer; closing then cannot lose it.
    let _ = conn.write_all(&answer).and_then(|()| conn.sync_all());
}

/// The full path of control pipe `name`: `\\.\pipe\NAME`, unless `name` is a
/// path already.
pub fn control_pipe_path(name: &str) -> String {
    if name.starts_with(r"\\") {
        name.to_string()
    } else {
        format!(r"\\.\pipe\{name}")
    }
}

/// The name of the event that stops the pool of supervisor `pid`.
fn stop_event_name(pid: u32) -> String {
    format!("Local\\herder-stop-{pid}")
}

fn not_a_source(what: &'static str) -> Error {
    Error::Io {
        what,
        source: io::Error::new(
            io::ErrorKind::NotFound,
            "not a source added with add_source",
        ),
    }
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

/// Tells a worker to drain, by `deadline`.

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

/// A worker's side: what [`Worker::from_env`] found.
pub struct Worker {
    slot: usize,
    generation: u64,
    channel: Option<Channel>,
    scorecard: Option<crate::Scorecard>,
    handoff: Option<Channel>,
    listeners: Vec<(String, TcpListener)>,
}

impl Worker {
    /// Detects the worker role: `Ok(None)` in a process the pool did not start.
    /// Connects the channel to the supervisor and receives the listeners.
    ///
    /// # Errors
    ///
    /// [`Error::Environment`] when the variables are malformed, [`Error::Io`] when
    /// the channel cannot be set up.
    pub fn from_env() -> Result<Option<Worker>, Error> {
        let Some(role) = std::env::var_os(WORKER_ENV) else {
            return Ok(None);
        };
        let bad = |what: &str| Error::Environment(what.to_string());
        let (slot, generation, record) = role
            .to_str()
            .and_then(|r| {
                let mut parts = r.split(':');
                let slot = parts.next()?.parse().ok()?;
                let generation = parts.next()?.parse().ok()?;
                let record = match parts.next() {
                    Some(r) => Some(r.parse::<usize>().ok()?),
                    None => None,
                };
                parts.next().is_none().then_some((slot, generation, record))
            })
            .ok_or_else(|| bad("HERDER_WORKER"))?;
        let scorecard = match (record, std::env::var(SCOREBOARD_ENV)) {
            (Some(index), Ok(name)) => {
                let board = crate::scoreboard::Board::open(&name)
                    .map_err(|e| Error::Environment(format!("scoreboard: {e}")))?;
                crate::Scorecard::new(Arc::new(board), index)
            }
            _ => None,
        };
        let spec = std::env::var(CHANNEL_ENV).map_err(|_| bad("HERDER_WORKER_CHANNEL"))?;
        let mut parts = spec.splitn(3, ' ');
        let (Some(addr), Some(token), names) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("HERDER_WORKER_CHANNEL"));
        };
        let addr: SocketAddr = addr.parse().map_err(|_| bad("HERDER_WORKER_CHANNEL"))?;
        let io = |what: &'static str| move |source| Error::Io { what, source };
        let stream = TcpStream::connect(addr).map_err(io("connecting the channel"))?;
        let _ = stream.set_nodelay(true);
        let mut channel = Channel::from_tcp(stream, 0);
        channel
            .send(token.as_bytes())
            .map_err(io("presenting the channel's token"))?;
        let count = names.map_or(0, |n| n.split(':').filter(|n| !n.is_empty()).count());
        let mut listeners = Vec::with_capacity(count);
        for _ in 0..count {
            let got = channel
                .recv_socket()
                .map_err(io("receiving a listener"))?
                .ok_or_else(|| bad("the supervisor closed the channel"))?;
            let name = String::from_utf8_lossy(&got.data).into_owned();
            let herder_fd::Socket::TcpListener(listener) = got.socket else {
                return Err(bad("a listener that is not a TCP listener"));
            };
            listeners.push((name, listener));
        }
        // The hand-off connection: sockets from the supervisor, acknowledged.
        let stream = TcpStream::connect(addr).map_err(io("connecting the hand-off channel"))?;
        let _ = stream.set_nodelay(true);
        let mut handoff = Channel::new(stream, 0);
        handoff
            .send(format!("{token}/h").as_bytes())
            .map_err(io("presenting the channel's token"))?;
        Ok(Some(Worker {
            slot,
            generation,
            channel: Some(channel),
            scorecard,
            handoff: Some(handoff),
            listeners,
        }))
    }

    /// This worker's slot.
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// This worker's generation: 1 at start, one more per rolling restart.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// This worker's record in the scoreboard: its heartbeat and load, for the
    /// supervisor and for its peers' load-aware accepting. `None` if the supervisor
    /// had no record free.
    pub fn scorecard(&self) -> Option<crate::Scorecard> {
        self.scorecard.clone()
    }

    /// Takes the listener named `name`.
    pub fn take_listener(&mut self, name: &str) -> Option<TcpListener> {
        let i = self.listeners.iter().position(|(n, _)| n == name)?;
        Some(self.listeners.remove(i).1)
    }

    /// The channel to the supervisor: read it for the drain request
    /// ([`is_drain_request`](crate::is_drain_request)). `None` once taken.
    pub fn channel(&mut self) -> Option<&mut Channel> {
        self.channel.as_mut()
    }

    /// Takes the channel to the supervisor, e.g. to register it in an event loop
    /// ([`Channel::socket`](herder_fd::Channel::socket)).
    pub fn take_channel(&mut self) -> Option<Channel> {
        self.channel.take()
    }

    /// Takes the hand-off channel, on which the supervisor sends connections
    /// ([`Pool::send_socket`]); read it with
    /// [`Channel::recv_socket`](herder_fd::Channel::recv_socket), which acknowledges.
    pub fn take_handoff_channel(&mut self) -> Option<Channel> {
        self.handoff.take()
    }

    /// Tells the supervisor this worker is ready.
    ///
    /// # Errors
    ///
    /// `NotConnected` if the channel was taken ([`send_ready`] then); what sending
    /// returns.
    pub fn ready(&mut self) -> io::Result<()> {
        let ch = self
            .channel
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "the channel was taken"))?;
        send_ready(ch)
    }

    /// The pool's accept lock, this worker's handle on it; `None` without one.
    ///
    /// # Errors
    ///
    /// What opening the named mutex returns.
    pub fn accept_lock(&self) -> io::Result<Option<AcceptLock>> {
        match std::env::var(LOCK_ENV) {
            Ok(name) => Ok(Some(AcceptLock {
                mutex: crate::sys::open_mutex(&name)?,
                held: false,
                recovered: 0,
            })),
            Err(_) => Ok(None),
        }
    }
}

/// Tells the supervisor, on a channel taken from the [`Worker`], that the worker is
/// ready.
///
/// # Errors
///
/// What sending returns.
pub fn send_ready(channel: &mut Channel) -> io::Result<()> {
    channel.send(crate::message::READY)
}

/// Whether a message from the supervisor asks the worker to drain and exit.
pub fn is_drain_request(payload: &[u8]) -> bool {
    // The pool on Windows does not move connections; a drain request it is still.
    payload == crate::message::DRAIN || payload == crate::message::MOVE
}

/// The accept lock on Windows: a named mutex. A holder that ends without releasing
/// it leaves it *abandoned*; the next taker gets it (`WAIT_ABANDONED`) and counts the
/// recovery.
#[derive(Debug)]
pub struct AcceptLock {
    mutex: std::os::windows::io::OwnedHandle,
    held: bool,
    recovered: u64,
}

impl AcceptLock {
    /// Takes the lock if it is free (or abandoned); `Ok(false)` if another holds it.
    ///
    /// # Errors
    ///
    /// What `WaitForSingleObject` returns.
    pub fn try_lock(&mut self) -> io::Result<bool> {
        if self.held {
            return Ok(true);
        }
        self.held = match crate::sys::try_lock_mutex(&self.mutex)? {
            crate::sys::Taken::Yes => true,
            crate::sys::Taken::Abandoned => {
                self.recovered += 1;
                true
            }
            crate::sys::Taken::No => false,
        };
        Ok(self.held)
    }

    /// Releases the lock, if held.
    ///
    /// # Errors
    ///
    /// What `ReleaseMutex` returns.
    pub fn unlock(&mut self) -> io::Result<()> {
        if self.held {
            self.held = false;
            crate::sys::unlock_mutex(&self.mutex)?;
        }
        Ok(())
    }

    /// How many times this handle took the lock from a holder that ended without
    /// releasing it.
    pub fn recovered(&self) -> u64 {
        self.recovered
    }
}

impl Drop for AcceptLock {
    fn drop(&mut self) {
        let _ = self.unlock();
    }
}
