//! The hand-off model's supervisor side: accept connections and hand each to a
//! worker, keeping it until the worker acknowledges it.

use crate::sys;
use crate::{Pool, PoolEvent, Watched};
use herder_fd::Handoff;
use herder_reactor::{Event, Interest, Key, Mode, TimerId};
use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// How a [`Dispatcher`] chooses the worker for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Choice {
    /// The ready worker with the fewest open connections (as it last published
    /// them) plus those handed to it that its figures do not include yet — a
    /// credit window, so that a slow worker does not pile up connections, and no
    /// connection counted twice; ties go round.
    #[default]
    LeastLoaded,
    /// Each ready worker in turn.
    RoundRobin,
}

/// A [`Dispatcher`]'s counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DispatchStats {
    /// Connections handed to a worker (a connection handed again after its worker
    /// died counts again).
    pub handed_off: u64,
    /// Connections closed unserved by the dispatcher: every ready worker held its
    /// maximum ([`Dispatcher::set_max_connections`]), no worker was ready and the
    /// queue or the descriptor budget was full, or a stop or an upgrade left them
    /// with no worker.
    pub shed: u64,
    /// Connections closed because the worker refused them ([`PoolEvent::Refused`]):
    /// it received them without their descriptor (its descriptor table was full),
    /// or could not serve them (at its own connection limit).
    pub refused: u64,
    /// Connections waiting for a ready worker now.
    pub pending: usize,
    /// Connections handed over and not yet acknowledged now.
    pub unacknowledged: usize,
    /// How many connections the dispatcher may hold at once (pending or
    /// unacknowledged) and keep its reserve of descriptors; `None` without a
    /// descriptor limit.
    pub budget: Option<usize>,
}

/// Descriptors each worker costs the supervisor while it runs: its channel, the
/// duplicate the pool's loop watches, and its pidfd.
const FDS_PER_WORKER: usize = 3;

/// Descriptors kept free beyond those in use and the workers' share, so that the
/// supervisor never runs out where it must not: a few control and metrics
/// connections at once (4), the transient ones of a worker spawn (the child's end of
/// its channel pair and the exec-error pipe: 2), an upgrade's new supervisor (its
/// channel pair, exec-error pipe and pidfd: 5), and one to spare.
const RESERVE: usize = 4 + 2 + 5 + 1;

/// Connections waiting for a ready worker, at most, by default.
const MAX_PENDING: usize = 1024;

/// Connections accepted per readiness event, at most.
const ACCEPT_BURST: usize = 64;

/// How soon connections waiting for a worker are tried again.
const PENDING_RETRY: Duration = Duration::from_millis(10);

/// How long accepting pauses after the process ran out of descriptors all the same.
const EMFILE_PAUSE: Duration = Duration::from_millis(100);

/// A connection in the dispatcher's hands.
struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
}

/// The supervisor's side of the hand-off model: it accepts from its listeners in the
/// [`Pool`]'s event loop, chooses a ready worker for each connection
/// ([`Choice`]), hands the connections of one batch to each worker in one message
/// (`SCM_RIGHTS`, with herder-fd's [`Handoff`] header), and **keeps its copy of each
/// until the worker acknowledges it**: the connections of a worker that dies before
/// it acknowledged them go to another worker. A worker's [`WorkerLink`]
/// acknowledges after its server owns the connections, before it reads a byte of
/// them, and the pool reports a dead worker's last acknowledgements before its exit,
/// so each connection is served by exactly one worker.
///
/// It holds no more connections than the descriptor limit affords: it keeps a
/// reserve (the control socket, a worker's restart and an upgrade must always
/// work), stops accepting while it holds its budget, and resumes as soon as a
/// connection is acknowledged, refused or closed. Connections no ready worker can
/// take wait in a bounded queue; connections every worker is too full for are shed
/// (closed and counted). On a stop or an upgrade it closes its listeners at once, so
/// new connections are refused or go to the new supervisor.
///
/// Feed it every event of the pool's loop with [`handle`](Self::handle).
///
/// # Examples
///
/// A hand-off server's supervisor (the workers run a [`WorkerLink`]):
///
/// ```no_run
/// use herder_pool::{Choice, Config, Dispatcher, Pool, PoolEvent};
///
/// let mut pool = Pool::new(Config::default(), Vec::new())?;
/// let mut dispatcher = Dispatcher::new(Choice::LeastLoaded);
/// dispatcher.add_listener(&mut pool, std::net::TcpListener::bind("127.0.0.1:8080")?)?;
/// #[cfg(unix)]
/// pool.handle_signals()?;
/// let mut events = Vec::new();
/// pool.start(&mut events);
/// loop {
///     for event in events.drain(..) {
///         dispatcher.handle(&mut pool, &event);
///         if matches!(event, PoolEvent::Stopped) {
///             return Ok(());
///         }
///     }
///     pool.poll(&mut events, None)?;
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// [`WorkerLink`]: crate::WorkerLink
pub struct Dispatcher {
    choice: Choice,
    /// The listeners, watched (and owned) by the pool.
    listeners: Vec<Watched<TcpListener>>,
    /// Where round-robin goes next, and least-loaded's tie-break.
    next: usize,
    /// Connections handed to each worker (by pid) and not yet acknowledged.
    inflight: HashMap<u32, VecDeque<(u64, Conn)>>,
    /// Connections handed to each worker (by pid) in all, less those it refused:
    /// against the count of connections it published as taken in, what its
    /// published load does not include yet.
    handed: HashMap<u32, u64>,
    /// Accepted, not yet handed over (no worker could take them).
    pending: VecDeque<Conn>,
    max_pending: usize,
    next_id: u64,
    /// Connections per worker at most.
    max: Option<u64>,
    /// The soft descriptor limit; `None` if unlimited.
    limit: Option<usize>,
    budget: usize,
    /// Whether the listeners are watched.
    accepting: bool,
    /// The pause after running out of descriptors.
    retry: Option<TimerId>,
    /// The retry of the pending queue.
    flush_timer: Option<TimerId>,
    stopping: bool,
    stats: DispatchStats,
    /// When shedding, refusing or running out was last logged (once a second).
    logged: [Option<Instant>; 3],
}

impl Dispatcher {
    /// A dispatcher choosing workers by `choice`, with no per-worker limit.
    pub fn new(choice: Choice) -> Dispatcher {
        Dispatcher {
            choice,
            listeners: Vec::new(),
            next: 0,
            inflight: HashMap::new(),
            handed: HashMap::new(),
            pending: VecDeque::new(),
            max_pending: MAX_PENDING,
            next_id: 0,
            max: None,
            limit: sys::nofile_limit(),
            budget: usize::MAX,
            accepting: true,
            retry: None,
            flush_timer: None,
            stopping: false,
            stats: DispatchStats::default(),
            logged: [None; 3],
        }
    }

    /// A worker holding `max` open connections (as it last published them) gets no
    /// more; when every ready worker is that full, new connections are shed. `None`:
    /// no limit.
    pub fn set_max_connections(&mut self, max: Option<u64>) {
        self.max = max;
    }

    /// How many connections may wait for a ready worker (default 1024); more are
    /// shed.
    pub fn set_max_pending(&mut self, max: usize) {
        self.max_pending = max;
    }

    /// Accepts from `listener` in `pool`'s event loop (it is made non-blocking).
    ///
    /// # Errors
    ///
    /// [`Error::Io`](crate::Error::Io) if it cannot be made non-blocking or watched.
    pub fn add_listener(
        &mut self,
        pool: &mut Pool,
        listener: TcpListener,
    ) -> Result<(), crate::Error> {
        let io = |what| move |source| crate::Error::Io { what, source };
        listener
            .set_nonblocking(true)
            .map_err(io("making a listener non-blocking"))?;
        let interest = if self.accepting && !self.stopping {
            Interest::READABLE
        } else {
            Interest::NONE
        };
        let watched = pool.watch(listener, interest, Mode::Level)?;
        self.listeners.push(watched);
        self.measure(pool);
        Ok(())
    }

    /// The counters.
    pub fn stats(&self) -> DispatchStats {
        DispatchStats {
            pending: self.pending.len(),
            unacknowledged: self.inflight.values().map(VecDeque::len).sum(),
            budget: self.limit.map(|_| self.budget),
            ..self.stats
        }
    }

    /// Carries out what `event` means for the dispatcher: accepting on a listener's
    /// readiness, closing acknowledged copies, closing refused connections, handing a
    /// dead worker's unacknowledged connections to others, retrying the pending
    /// queue when a worker becomes ready, and closing the listeners on a stop or an
    /// upgrade. Returns whether the event was one of the dispatcher's own (a
    /// listener's readiness or one of its timers), which the caller can then skip.
    pub fn handle(&mut self, pool: &mut Pool, event: &PoolEvent) -> bool {
        let mut own = false;
        match event {
            PoolEvent::Other(Event::Io { key, .. })
                if self.listeners.iter().any(|w| w.key() == *key) =>
            {
                own = true;
                self.accept(pool, *key);
            }
            PoolEvent::Other(Event::Timer(t)) if Some(*t) == self.retry => {
                own = true;
                self.retry = None;
                self.measure(pool);
            }
            PoolEvent::Other(Event::Timer(t)) if Some(*t) == self.flush_timer => {
                own = true;
                self.flush_timer = None;
                self.flush(pool);
            }
            PoolEvent::Ready { .. } => {
                self.measure(pool);
                self.flush(pool);
            }
            PoolEvent::Spawned { .. } | PoolEvent::SpawnFailed { .. } => self.measure(pool),
            PoolEvent::Acknowledged { pid, upto, .. } => {
                if let Some(q) = self.inflight.get_mut(pid) {
                    while q.front().is_some_and(|(id, _)| id <= upto) {
                        q.pop_front();
                    }
                }
            }
            PoolEvent::Refused { pid, ids, .. } => self.refused(*pid, ids),
            PoolEvent::Exited { pid, .. } => {
                self.measure(pool);
                // Its messages came first (the pool reads a dead worker's channel
                // before it reports the exit): what is left was never acknowledged,
                // so no other worker served it, and it goes to one now.
                self.handed.remove(pid);
                if let Some(q) = self.inflight.remove(pid) {
                    if !q.is_empty() {
                        tracing::info!(
                            pid,
                            count = q.len(),
                            "handing a dead worker's unacknowledged connections to others"
                        );
                    }
                    let conns = q.into_iter().map(|(_, c)| c).collect();
                    self.dispatch_all(pool, conns);
                }
            }
            #[cfg(unix)]
            PoolEvent::Upgraded { .. } => {
                // The new supervisor accepts from now on; the connections taken here
                // go to this pool's workers before they drain, and those no worker
                // can take now never will.
                self.close_listeners(pool);
                self.flush(pool);
                self.stopping = true;
                self.shed_pending();
            }
            _ => {}
        }
        if pool.is_stopping() && !self.stopping {
            // Stop accepting at once; the workers drain what they have.
            self.close_listeners(pool);
            self.stopping = true;
            self.shed_pending();
        }
        // Whatever freed a descriptor (an acknowledgement, a refusal, a shed, an
        // exit) resumes accepting at once; whatever filled the budget pauses it.
        let want = !self.stopping && self.retry.is_none() && self.held() < self.budget;
        self.set_accepting(pool, want);
        own
    }

    /// Hands connections accepted elsewhere to the workers, as if accepted here
    /// (they should be blocking, as a fresh socket is; the budget is not checked:
    /// the caller holds them already).
    pub fn dispatch(&mut self, pool: &mut Pool, conns: Vec<(TcpStream, SocketAddr)>) {
        let conns = conns
            .into_iter()
            .map(|(stream, peer)| Conn { stream, peer })
            .collect();
        self.dispatch_all(pool, conns);
    }

    /// Closes the listeners: new connections are refused at once, or wait for
    /// whoever else holds the socket (systemd, a new supervisor).
    pub fn close_listeners(&mut self, pool: &mut Pool) {
        for w in self.listeners.drain(..) {
            let _ = pool.unwatch(w);
        }
        self.accepting = false;
    }

    /// Connections held: waiting for a worker, or handed over and not yet
    /// acknowledged.
    fn held(&self) -> usize {
        self.pending.len() + self.inflight.values().map(VecDeque::len).sum::<usize>()
    }

    fn set_accepting(&mut self, pool: &mut Pool, on: bool) {
        if on == self.accepting || self.listeners.is_empty() {
            return;
        }
        let interest = if on {
            Interest::READABLE
        } else {
            Interest::NONE
        };
        let mut ok = true;
        for w in &self.listeners {
            ok &= pool.modify_source(w.key(), interest, Mode::Level).is_ok();
        }
        if ok {
            self.accepting = on;
        }
    }

    /// Sets the budget from the descriptor limit: what is open besides the
    /// connections held, a share per worker — as many again as the pool has slots,
    /// for a reload's or an upgrade's new generation next to the old one — and
    /// [`RESERVE`] are off limits.
    fn measure(&mut self, pool: &Pool) {
        let Some(limit) = self.limit else {
            return;
        };
        let in_use = match sys::open_descriptors() {
            Some(n) => n.saturating_sub(self.held()),
            // Out of descriptors even to list them: keep the budget there is.
            None if self.budget != usize::MAX => return,
            // No listing at all: a guess of a small supervisor's figure.
            None => 14 + FDS_PER_WORKER * pool.len(),
        };
        let off_limits = in_use + RESERVE + FDS_PER_WORKER * pool.len();
        self.set_budget(limit.saturating_sub(off_limits));
    }

    /// At least one: a limit so low that nothing is left still serves, one
    /// connection at a time, rather than never.
    fn set_budget(&mut self, budget: usize) {
        let budget = budget.max(1);
        if budget != self.budget {
            tracing::debug!(budget, "connections held at a time, at most");
        }
        self.budget = budget;
    }

    /// Logs at most once a second per kind.
    fn log_limited(&mut self, kind: usize) -> bool {
        let now = Instant::now();
        let due = self.logged[kind].is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if due {
            self.logged[kind] = Some(now);
        }
        due
    }

    fn accept(&mut self, pool: &mut Pool, key: Key) {
        // A readiness event can still come in the same batch as a stop or an
        // upgrade: a connection accepted now would have no worker.
        if self.stopping {
            return;
        }
        let room = self.budget.saturating_sub(self.held());
        let mut batch: Vec<Conn> = self.pending.drain(..).collect();
        for _ in 0..room.min(ACCEPT_BURST) {
            let Some(listener) = self
                .listeners
                .iter()
                .find(|w| w.key() == key)
                .and_then(|w| pool.watched(*w))
            else {
                break;
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    // Not inherited by a worker started while the supervisor holds
                    // it (on Unix, accept4 makes it close-on-exec): such a copy would
                    // keep the connection open as long as that worker lives.
                    #[cfg(windows)]
                    if let Err(e) = herder_reactor::os::windows::no_inherit(&stream) {
                        tracing::debug!(error = %e, "accept: cannot make it private; closed");
                        continue;
                    }
                    // Blocking in the worker's hands, as a fresh socket would be: on
                    // Linux an accepted socket is (it does not inherit the
                    // listener's O_NONBLOCK); elsewhere it may not be.
                    #[cfg(not(any(target_os = "linux", target_os = "android")))]
                    let _ = stream.set_nonblocking(false);
                    batch.push(Conn { stream, peer });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if sys::is_out_of_descriptors(&e) => {
                    // Out of descriptors all the same (something else took them):
                    // hold no more than now — what is held has its descriptor
                    // already — pause, and count again shortly.
                    if self.log_limited(2) {
                        tracing::warn!(error = %e, pause = ?EMFILE_PAUSE, "accept: out of descriptors; pausing");
                    }
                    let held = self.held() + batch.len();
                    self.set_budget(held);
                    if self.retry.is_none() {
                        self.retry = Some(pool.add_timer(Instant::now() + EMFILE_PAUSE, None));
                    }
                    break;
                }
                // Aborted connections and the like concern one connection only.
                Err(e) => tracing::debug!(error = %e, "accept failed"),
            }
        }
        self.dispatch_all(pool, batch);
    }

    /// Slots in the order to try them, counting `extra` connections already chosen
    /// for each slot in this batch.
    fn candidates(&mut self, pool: &Pool, extra: &[u64]) -> Vec<usize> {
        let n = pool.len();
        let added = |s: usize| extra.get(s).copied().unwrap_or(0);
        // Below the limit by the count the worker published (which includes what
        // it acknowledged) plus this batch: a connection both published and not yet
        // acknowledged must not count twice.
        let mut slots: Vec<usize> = (0..n)
            .filter(|&s| {
                pool.load(s)
                    .is_some_and(|l| self.max.is_none_or(|m| l.active + added(s) < m))
            })
            .collect();
        // Rotate the start: round-robin's order, and least-loaded's tie-break (short
        // connections, all closed by the time the next arrives, would otherwise all
        // go to the first slot).
        let start = self.next % n.max(1);
        self.next = start + 1;
        let turn = |s: usize| (s + n - start) % n;
        match self.choice {
            Choice::RoundRobin => slots.sort_by_key(|&s| turn(s)),
            Choice::LeastLoaded => {
                // Its open connections as it published them, plus those handed to it
                // that the figure does not include yet: not every unacknowledged one
                // (a worker publishes its figures, then acknowledges, so those in
                // between would count twice), but those beyond what it published as
                // taken in (for a worker that does not publish that count, every
                // unacknowledged one: the minimum below).
                let load = |s: usize| {
                    pool.load(s).map_or(u64::MAX, |l| {
                        let unacked = self.inflight.get(&l.pid).map_or(0, |q| q.len() as u64);
                        let unseen = self
                            .handed
                            .get(&l.pid)
                            .map_or(0, |h| h.saturating_sub(l.accepted));
                        l.active + unacked.min(unseen) + added(s)
                    })
                };
                slots.sort_by_key(|&s| (load(s), turn(s)));
            }
        }
        slots
    }

    /// Chooses a worker for each connection, then hands each worker its share in
    /// as few messages as the descriptor limit per message allows.
    fn dispatch_all(&mut self, pool: &mut Pool, conns: Vec<Conn>) {
        if self.stopping || conns.is_empty() {
            return;
        }
        let n = pool.len();
        let mut extra = vec![0u64; n];
        let mut groups: Vec<Vec<Conn>> = (0..n).map(|_| Vec::new()).collect();
        for conn in conns {
            match self.candidates(pool, &extra).first() {
                Some(&slot) => {
                    extra[slot] += 1;
                    groups[slot].push(conn);
                }
                None if (0..n).any(|s| pool.load(s).is_some()) => self.shed(conn, true),
                None => self.wait(pool, conn),
            }
        }
        for (slot, mut group) in groups.into_iter().enumerate() {
            while !group.is_empty() {
                let rest = group.split_off(group.len().min(crate::message::MAX_SOCKETS));
                self.send_chunk(pool, slot, group);
                group = rest;
            }
        }
    }

    fn send_chunk(&mut self, pool: &mut Pool, slot: usize, group: Vec<Conn>) {
        let first = self.next_id + 1;
        self.next_id += group.len() as u64;
        let sent = {
            let items: Vec<_> = group
                .iter()
                .zip(first..)
                .map(|(c, id)| {
                    let meta = Handoff {
                        id,
                        peer: Some(c.peer),
                        data: &[],
                    };
                    (&c.stream, meta)
                })
                .collect();
            pool.send_sockets(slot, &items)
        };
        match sent {
            Ok(pid) => {
                self.stats.handed_off += group.len() as u64;
                *self.handed.entry(pid).or_default() += group.len() as u64;
                let q = self.inflight.entry(pid).or_default();
                q.extend((first..).zip(group));
            }
            Err(e) => {
                // A worker that died, drains or whose channel is full: one by one to
                // the others.
                tracing::debug!(slot, count = group.len(), error = %e, "hand-off failed");
                for conn in group {
                    self.dispatch_one(pool, conn);
                }
            }
        }
    }

    fn dispatch_one(&mut self, pool: &mut Pool, conn: Conn) {
        for slot in self.candidates(pool, &[]) {
            self.next_id += 1;
            let meta = Handoff {
                id: self.next_id,
                peer: Some(conn.peer),
                data: &[],
            };
            match pool.send_sockets(slot, &[(&conn.stream, meta)]) {
                Ok(pid) => {
                    self.stats.handed_off += 1;
                    *self.handed.entry(pid).or_default() += 1;
                    self.inflight
                        .entry(pid)
                        .or_default()
                        .push_back((self.next_id, conn));
                    return;
                }
                Err(e) => tracing::debug!(slot, error = %e, "hand-off failed"),
            }
        }
        self.wait(pool, conn);
    }

    /// Closes a connection nobody can take (every worker `full`, or no worker ready
    /// and the queue full), rather than let a queue grow.
    fn shed(&mut self, conn: Conn, full: bool) {
        self.stats.shed += 1;
        if self.log_limited(0) {
            let shed = self.stats.shed;
            if full {
                tracing::warn!(
                    shed,
                    "every worker holds its maximum of connections: shedding"
                );
            } else {
                tracing::warn!(shed, "no worker ready and the queue is full: shedding");
            }
        }
        // Closed once counted and logged.
        drop(conn);
    }

    /// Keeps a connection until a worker can take it (one becomes ready, a retry
    /// shortly, or the next accept), up to the queue's bound and the budget.
    fn wait(&mut self, pool: &mut Pool, conn: Conn) {
        if self.stopping {
            return;
        }
        if self.pending.len() < self.max_pending && self.held() < self.budget {
            self.pending.push_back(conn);
            if self.flush_timer.is_none() {
                self.flush_timer = Some(pool.add_timer(Instant::now() + PENDING_RETRY, None));
            }
        } else {
            self.shed(conn, false);
        }
    }

    /// Closes the connections waiting for a worker, counted as shed.
    fn shed_pending(&mut self) {
        let n = self.pending.len() as u64;
        if n > 0 {
            self.pending.clear();
            self.stats.shed += n;
            tracing::warn!(count = n, "stopping: closing connections no worker took");
        }
    }

    fn flush(&mut self, pool: &mut Pool) {
        let waiting: Vec<Conn> = self.pending.drain(..).collect();
        self.dispatch_all(pool, waiting);
    }

    /// Closes the connections worker `pid` received without their descriptors.
    fn refused(&mut self, pid: u32, ids: &[u64]) {
        let Some(q) = self.inflight.get_mut(&pid) else {
            return;
        };
        let before = q.len();
        q.retain(|(id, _)| !ids.contains(id));
        let closed = (before - q.len()) as u64;
        self.stats.refused += closed;
        // Never taken in: not in the count the worker publishes.
        if let Some(h) = self.handed.get_mut(&pid) {
            *h = h.saturating_sub(closed);
        }
        if closed > 0 && self.log_limited(1) {
            tracing::warn!(
                pid,
                refused = self.stats.refused,
                "a worker refused connections (out of descriptors, or at its limit): closing them"
            );
        }
    }
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("choice", &self.choice)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
