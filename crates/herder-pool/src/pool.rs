//! The supervisor's side: a pool of worker slots, each running one worker process.

use crate::error::Error;
use crate::protocol;
use crate::sys;
use crate::worker::{CHANNEL_NAME, WORKER_ENV};
use herder_fd::{Channel, Message};
use herder_reactor::{Event, Interest, Key, Mode, Reactor, Signal, TimerId};
use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// The exit code by which a worker says "fatal, do not restart me" (`EX_CONFIG` of
/// `sysexits.h`: a configuration error that a restart will not fix).
pub const FATAL_EXIT_CODE: i32 = 78;

/// How a [`Pool`] runs its workers. Every field has a default ([`Config::default`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Worker processes. Default: the number of CPUs.
    pub workers: usize,
    /// The program workers run. Default: this program (`std::env::current_exe`), as
    /// herder's process model re-executes itself.
    pub program: Option<PathBuf>,
    /// The workers' arguments (without the program). Default: this process's.
    pub args: Option<Vec<OsString>>,
    /// Variables added to the workers' environment.
    pub env: Vec<(OsString, OsString)>,
    /// The first restart delay after a crash; it doubles with each consecutive crash.
    /// Default 100 ms.
    pub backoff_initial: Duration,
    /// The longest restart delay. Default 10 s.
    pub backoff_max: Duration,
    /// A worker that ran at least this long before exiting starts its slot's back-off
    /// afresh. Default 10 s.
    pub stable_after: Duration,
    /// The crash-loop breaker: this many crashes of one slot within
    /// [`breaker_window`](Self::breaker_window) stop restarting that slot (the others
    /// go on). Default 5.
    pub breaker_failures: usize,
    /// See [`breaker_failures`](Self::breaker_failures). Default 30 s.
    pub breaker_window: Duration,
    /// A worker that exits with this code is not restarted. Default
    /// [`FATAL_EXIT_CODE`].
    pub fatal_exit_code: Option<i32>,
    /// A worker that has not reported ready this long after its start is killed, and
    /// counts as a crash. Default 30 s.
    pub ready_timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            program: None,
            args: None,
            env: Vec::new(),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            stable_after: Duration::from_secs(10),
            breaker_failures: 5,
            breaker_window: Duration::from_secs(30),
            fatal_exit_code: Some(FATAL_EXIT_CODE),
            ready_timeout: Duration::from_secs(30),
        }
    }
}

/// Where a slot's worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// Started, not ready yet.
    Starting,
    /// Ready: serving.
    Ready,
    /// Waiting out its back-off before the next start.
    Backoff,
    /// Stopped by the crash-loop breaker; [`Pool::reset`] starts it again.
    Tripped,
    /// Its worker exited with the fatal exit code; [`Pool::reset`] starts it again.
    Fatal,
}

/// What [`Pool::poll`] reports.
#[derive(Debug)]
#[non_exhaustive]
pub enum PoolEvent {
    /// A worker process was started.
    Spawned {
        /// Its slot.
        slot: usize,
        /// Its pid.
        pid: u32,
        /// Its generation.
        generation: u64,
    },
    /// Starting a worker failed; the slot backs off and retries like after a crash.
    SpawnFailed {
        /// The slot.
        slot: usize,
        /// What failed.
        error: Error,
    },
    /// A worker reported ready.
    Ready {
        /// Its slot.
        slot: usize,
        /// Its pid.
        pid: u32,
    },
    /// A worker exited.
    Exited {
        /// Its slot.
        slot: usize,
        /// Its pid.
        pid: u32,
        /// Its exit code or signal.
        status: ExitStatus,
        /// When its replacement starts; `None` if the slot stops (fatal exit code,
        /// breaker).
        restart_in: Option<Duration>,
    },
    /// The crash-loop breaker stopped restarting a slot.
    BreakerTripped {
        /// The slot.
        slot: usize,
        /// Crashes within the breaker's window.
        failures: usize,
    },
    /// A worker's channel failed or sent something malformed; the channel is closed,
    /// and the worker is killed.
    ChannelError {
        /// The slot.
        slot: usize,
        /// What went wrong.
        error: io::Error,
    },
    /// A message from a worker that is not the pool's own.
    Message {
        /// The slot it came from.
        slot: usize,
        /// The message, with any descriptors.
        message: Message,
    },
    /// Something of the caller's: a source's readiness, a timer, a signal, a wake.
    Other(Event),
}

/// A snapshot of one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// The slot.
    pub slot: usize,
    /// The running worker's pid.
    pub pid: Option<u32>,
    /// The running (or last) worker's generation.
    pub generation: u64,
    /// Where the slot is.
    pub state: State,
    /// How many times the slot's worker was replaced.
    pub restarts: u32,
    /// How the previous worker of the slot ended.
    pub last_exit: Option<ExitStatus>,
}

struct Slot {
    state: State,
    pid: Option<u32>,
    generation: u64,
    channel: Option<Channel>,
    watches: Vec<Key>,
    started_at: Instant,
    /// Consecutive crashes, for the back-off.
    failures: u32,
    /// Crash times within the breaker's window.
    recent: VecDeque<Instant>,
    restarts: u32,
    last_exit: Option<ExitStatus>,
    timer: Option<TimerId>,
}

/// Sources the pool's reactor watches.
enum Source {
    /// A pool-owned descriptor: a duplicate of a worker's channel, or a pidfd.
    Fd(OwnedFd),
}

impl AsFd for Source {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Source::Fd(fd) => fd.as_fd(),
        }
    }
}

#[derive(Clone, Copy)]
enum Watch {
    Channel(usize),
    Exit(usize),
}

/// A pool of worker processes, supervised: each slot runs one worker, started by
/// re-executing this program with the pool's listeners and a channel, and replaced
/// when it exits — after an exponential back-off with jitter, unless it exits with the
/// fatal exit code or crashes so often that the slot's breaker trips.
///
/// Drive it with [`poll`](Pool::poll). Dropping the pool kills its workers (a graceful
/// stop drains them first).
pub struct Pool {
    config: Config,
    program: PathBuf,
    args: Vec<OsString>,
    base_env: Vec<(OsString, OsString)>,
    listeners: Vec<(String, OwnedFd)>,
    reactor: Reactor<Source>,
    slots: Vec<Slot>,
    watches: HashMap<Key, Watch>,
    timers: HashMap<TimerId, usize>,
    generation: u64,
    rng: u64,
    events: Vec<Event>,
    sigchld: bool,
}

impl Pool {
    /// Creates a pool that hands `listeners` (name, descriptor) to every worker as
    /// descriptors 3, 4, … (`LISTEN_FDNAMES` carries the names), plus its channel,
    /// named `herder-channel`. No worker starts before [`start`](Self::start).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the program cannot be found or the event loop not created.
    pub fn new(config: Config, listeners: Vec<(String, OwnedFd)>) -> Result<Pool, Error> {
        let program = match &config.program {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(Error::io("finding the current executable"))?,
        };
        let args = config
            .args
            .clone()
            .unwrap_or_else(|| std::env::args_os().skip(1).collect());
        let base_env = std::env::vars_os()
            .filter(|(k, _)| !sys::is_listen_var(k) && k != WORKER_ENV)
            .chain(config.env.iter().cloned())
            .collect();
        let mut reactor = Reactor::new().map_err(Error::io("creating the event loop"))?;
        let sigchld = !cfg!(any(target_os = "linux", target_os = "android"));
        if sigchld {
            reactor
                .watch_signals(&[Signal::Child])
                .map_err(Error::io("watching SIGCHLD"))?;
        }
        let seed = Instant::now().elapsed().as_nanos() as u64
            ^ (u64::from(sys::getpid()) << 32)
            ^ 0x9E37_79B9_7F4A_7C15;
        Ok(Pool {
            slots: Vec::new(),
            config,
            program,
            args,
            base_env,
            listeners,
            reactor,
            watches: HashMap::new(),
            timers: HashMap::new(),
            generation: 1,
            rng: seed | 1,
            events: Vec::new(),
            sigchld,
        })
    }

    /// Starts a worker in each of the configured number of slots. A worker that fails
    /// to start is reported ([`PoolEvent::SpawnFailed`] from the next poll) and
    /// retried; it never stops the others.
    pub fn start(&mut self, events: &mut Vec<PoolEvent>) {
        while self.slots.len() < self.config.workers {
            self.slots.push(Slot {
                state: State::Backoff,
                pid: None,
                generation: self.generation,
                channel: None,
                watches: Vec::new(),
                started_at: Instant::now(),
                failures: 0,
                recent: VecDeque::new(),
                restarts: 0,
                last_exit: None,
                timer: None,
            });
            let slot = self.slots.len() - 1;
            self.spawn(slot, events);
        }
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
        Some(WorkerInfo {
            slot,
            pid: s.pid,
            generation: s.generation,
            state: s.state,
            restarts: s.restarts,
            last_exit: s.last_exit,
        })
    }

    /// Sends a message to the worker of `slot` over its channel (in the hand-off model:
    /// a connection).
    ///
    /// # Errors
    ///
    /// [`Error::NoWorker`] if the slot has no running worker; [`Error::Channel`] for
    /// what sending returns (`WouldBlock` when the worker's channel is full).
    pub fn send(
        &mut self,
        slot: usize,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), Error> {
        let ch = self
            .slots
            .get_mut(slot)
            .and_then(|s| s.channel.as_mut())
            .ok_or(Error::NoWorker(slot))?;
        ch.send(payload, fds)
            .map_err(|source| Error::Channel { slot, source })
    }

    /// Sends `sig` to the worker of `slot`.
    ///
    /// # Errors
    ///
    /// [`Error::NoWorker`] if the slot has no running worker.
    pub fn signal(&mut self, slot: usize, sig: i32) -> Result<(), Error> {
        let pid = self
            .slots
            .get(slot)
            .and_then(|s| s.pid)
            .ok_or(Error::NoWorker(slot))?;
        sys::signal(pid, sig).map_err(Error::io("signalling a worker"))
    }

    /// Starts a slot stopped by the breaker or by a fatal exit again, with a fresh
    /// back-off.
    ///
    /// # Errors
    ///
    /// [`Error::NoWorker`] if the slot does not exist or is not stopped.
    pub fn reset(&mut self, slot: usize, events: &mut Vec<PoolEvent>) -> Result<(), Error> {
        let s = self.slots.get_mut(slot).ok_or(Error::NoWorker(slot))?;
        if !matches!(s.state, State::Tripped | State::Fatal) {
            return Err(Error::NoWorker(slot));
        }
        s.failures = 0;
        s.recent.clear();
        self.spawn(slot, events);
        Ok(())
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
        let mut evs = std::mem::take(&mut self.events);
        self.reactor
            .poll(&mut evs, timeout)
            .map_err(Error::io("waiting for events"))?;
        for ev in evs.drain(..) {
            match ev {
                Event::Io { key, .. } => match self.watches.get(&key).copied() {
                    Some(Watch::Channel(slot)) => self.read_channel(slot, events),
                    Some(Watch::Exit(slot)) => self.reap(slot, events),
                    None => {}
                },
                Event::Timer(id) => match self.timers.remove(&id) {
                    Some(slot) => self.on_timer(slot, events),
                    None => events.push(PoolEvent::Other(ev)),
                },
                Event::Signal(Signal::Child) if self.sigchld => {
                    for slot in 0..self.slots.len() {
                        self.reap(slot, events);
                    }
                }
                other => events.push(PoolEvent::Other(other)),
            }
        }
        self.events = evs;
        Ok(())
    }

    fn spawn(&mut self, slot: usize, events: &mut Vec<PoolEvent>) {
        match self.try_spawn(slot) {
            Ok(pid) => events.push(PoolEvent::Spawned {
                slot,
                pid,
                generation: self.generation,
            }),
            Err(error) => {
                events.push(PoolEvent::SpawnFailed { slot, error });
                self.failed(slot, None, events);
            }
        }
    }

    fn try_spawn(&mut self, slot: usize) -> Result<u32, Error> {
        let spawn_err = |source| Error::Spawn { slot, source };
        let (parent, child) = Channel::pair().map_err(spawn_err)?;
        parent.set_nonblocking(true).map_err(spawn_err)?;
        let generation = self.generation;
        let mut env = self.base_env.clone();
        env.push((WORKER_ENV.into(), format!("{slot}:{generation}").into()));
        let child_fd = OwnedFd::from(child);
        let mut fds: Vec<(BorrowedFd<'_>, &str)> = self
            .listeners
            .iter()
            .map(|(n, fd)| (fd.as_fd(), n.as_str()))
            .collect();
        fds.push((child_fd.as_fd(), CHANNEL_NAME));
        let spawned = sys::spawn(&self.program, &self.args, &env, &fds).map_err(spawn_err)?;
        drop(fds);
        drop(child_fd);

        let mut watches = Vec::new();
        let dup = parent.as_fd().try_clone_to_owned().map_err(spawn_err);
        let watch_channel = dup.and_then(|fd| {
            self.reactor
                .register(Source::Fd(fd), Interest::READABLE, Mode::Level)
                .map_err(spawn_err)
        });
        match watch_channel {
            Ok(key) => {
                self.watches.insert(key, Watch::Channel(slot));
                watches.push(key);
            }
            Err(e) => {
                // Without its channel the worker is useless: stop it.
                let _ = sys::signal(spawned.pid, libc::SIGKILL);
                let _ = wait_blocking(spawned.pid);
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
                        self.watches.insert(key, Watch::Exit(slot));
                        watches.push(key);
                    }
                    Err(_) => self.need_sigchld(),
                }
            }
            None => self.need_sigchld(),
        }
        let ready_at = Instant::now() + self.config.ready_timeout;
        let timer = self.reactor.add_timer(ready_at, None);
        self.timers.insert(timer, slot);
        let s = &mut self.slots[slot];
        s.state = State::Starting;
        s.pid = Some(spawned.pid);
        s.generation = generation;
        s.channel = Some(parent);
        s.watches = watches;
        s.started_at = Instant::now();
        if let Some(old) = s.timer.replace(timer) {
            self.timers.remove(&old);
            self.reactor.cancel_timer(old);
        }
        Ok(spawned.pid)
    }

    /// Without a pidfd, exits are noticed through `SIGCHLD`.
    fn need_sigchld(&mut self) {
        if !self.sigchld && self.reactor.watch_signals(&[Signal::Child]).is_ok() {
            self.sigchld = true;
        }
    }

    fn read_channel(&mut self, slot: usize, events: &mut Vec<PoolEvent>) {
        loop {
            let Some(ch) = self.slots[slot].channel.as_mut() else {
                return;
            };
            match ch.recv() {
                Ok(Some(msg)) if protocol::is_pool_message(msg.payload()) => {
                    if msg.payload() == protocol::READY && self.slots[slot].state == State::Starting
                    {
                        let s = &mut self.slots[slot];
                        s.state = State::Ready;
                        if let Some(t) = s.timer.take() {
                            self.timers.remove(&t);
                            self.reactor.cancel_timer(t);
                        }
                        events.push(PoolEvent::Ready {
                            slot,
                            pid: s.pid.unwrap_or(0),
                        });
                    }
                }
                Ok(Some(message)) => events.push(PoolEvent::Message { slot, message }),
                Ok(None) => {
                    // The worker closed its end: it is exiting; its exit follows.
                    self.unwatch_channel(slot);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) => {
                    self.unwatch_channel(slot);
                    if let Some(pid) = self.slots[slot].pid {
                        let _ = sys::signal(pid, libc::SIGKILL);
                    }
                    events.push(PoolEvent::ChannelError { slot, error });
                    return;
                }
            }
        }
    }

    fn unwatch_channel(&mut self, slot: usize) {
        let keys: Vec<Key> = self.slots[slot].watches.clone();
        for key in keys {
            if matches!(self.watches.get(&key), Some(Watch::Channel(_))) {
                self.watches.remove(&key);
                let _ = self.reactor.deregister(key);
                self.slots[slot].watches.retain(|k| *k != key);
            }
        }
        self.slots[slot].channel = None;
    }

    /// Reaps the worker of `slot` if it has exited.
    fn reap(&mut self, slot: usize, events: &mut Vec<PoolEvent>) {
        let Some(pid) = self.slots.get(slot).and_then(|s| s.pid) else {
            return;
        };
        let status = match sys::try_wait(pid) {
            Ok(Some(status)) => status,
            Ok(None) => return,
            // ECHILD: reaped elsewhere; nothing more will come.
            Err(_) => ExitStatus::default(),
        };
        self.unwatch_channel(slot);
        for key in std::mem::take(&mut self.slots[slot].watches) {
            self.watches.remove(&key);
            let _ = self.reactor.deregister(key);
        }
        let s = &mut self.slots[slot];
        s.pid = None;
        s.last_exit = Some(status);
        if let Some(t) = s.timer.take() {
            self.timers.remove(&t);
            self.reactor.cancel_timer(t);
        }
        if self.config.fatal_exit_code.is_some() && status.code() == self.config.fatal_exit_code {
            s.state = State::Fatal;
            events.push(PoolEvent::Exited {
                slot,
                pid,
                status,
                restart_in: None,
            });
            return;
        }
        self.failed(slot, Some((pid, status)), events);
    }

    /// Counts a crash (or a failed start) of `slot` and schedules its restart, or
    /// trips the breaker.
    fn failed(
        &mut self,
        slot: usize,
        exit: Option<(u32, ExitStatus)>,
        events: &mut Vec<PoolEvent>,
    ) {
        let now = Instant::now();
        let cfg = &self.config;
        let s = &mut self.slots[slot];
        if exit.is_some() && now.duration_since(s.started_at) >= cfg.stable_after {
            s.failures = 0;
        }
        s.failures = s.failures.saturating_add(1);
        s.recent.push_back(now);
        while s
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > cfg.breaker_window)
        {
            s.recent.pop_front();
        }
        if s.recent.len() >= cfg.breaker_failures.max(1) {
            s.state = State::Tripped;
            let failures = s.recent.len();
            if let Some((pid, status)) = exit {
                events.push(PoolEvent::Exited {
                    slot,
                    pid,
                    status,
                    restart_in: None,
                });
            }
            events.push(PoolEvent::BreakerTripped { slot, failures });
            return;
        }
        let exp = s.failures.saturating_sub(1).min(30);
        let base = cfg
            .backoff_initial
            .saturating_mul(1 << exp)
            .min(cfg.backoff_max);
        // Jitter of ±20 %, so that slots that crashed together do not restart together.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let factor = 0.8 + (self.rng % 401) as f64 / 1000.0;
        let delay = base.mul_f64(factor);
        s.state = State::Backoff;
        let timer = self.reactor.add_timer(now + delay, None);
        self.timers.insert(timer, slot);
        s.timer = Some(timer);
        if let Some((pid, status)) = exit {
            events.push(PoolEvent::Exited {
                slot,
                pid,
                status,
                restart_in: Some(delay),
            });
        }
    }

    fn on_timer(&mut self, slot: usize, events: &mut Vec<PoolEvent>) {
        self.slots[slot].timer = None;
        match self.slots[slot].state {
            State::Backoff => {
                self.slots[slot].restarts += 1;
                self.spawn(slot, events);
            }
            State::Starting => {
                // Not ready in time: kill it; its exit counts as a crash.
                if let Some(pid) = self.slots[slot].pid {
                    let _ = sys::signal(pid, libc::SIGKILL);
                }
            }
            _ => {}
        }
    }
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
        for s in &self.slots {
            if let Some(pid) = s.pid {
                let _ = sys::signal(pid, libc::SIGKILL);
                let _ = wait_blocking(pid);
            }
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
