//! Model 1, descriptor hand-off: the supervisor accepts every connection and hands it
//! to one of N worker processes over its channel (`SCM_RIGHTS`); each worker serves
//! its connections on its own event loop.
//!
//! ```text
//! cargo run --release --example handoff_server -- --listen 127.0.0.1:8080 --protocol http
//! ```

#[cfg(unix)]
#[path = "common/mod.rs"]
mod common;

#[cfg(unix)]
fn main() -> anyhow::Result<()> {
    unix::main()
}

#[cfg(windows)]
#[path = "common_windows/mod.rs"]
mod common_windows;

#[cfg(windows)]
fn main() -> anyhow::Result<()> {
    windows::main()
}

#[cfg(not(any(unix, windows)))]
fn main() {
    eprintln!("handoff_server runs on Unix and Windows");
}

/// Windows: the supervisor accepts and hands each connection to the least-loaded
/// (or the next) ready worker, duplicated for its pid (`WSADuplicateSocketW`) and
/// acknowledged before the supervisor closes its copy. Ctrl-C, Ctrl-Break or
/// `herderctl stop` stops gracefully.
#[cfg(windows)]
mod windows {
    use super::common_windows::{self as common, Common, say};
    use anyhow::Context;
    use clap::Parser;
    use herder::fd::Handoff;
    use herder::pool::{Pool, Worker};
    use std::collections::HashMap;
    use std::sync::atomic::Ordering;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    #[derive(Debug, Parser)]
    #[command(about = "Supervisor hands connections to workers (Windows)")]
    struct Args {
        #[command(flatten)]
        common: Common,
        /// How a connection's worker is chosen.
        #[arg(long, default_value = "least-loaded", value_parser = ["least-loaded", "round-robin"])]
        dispatch: String,
    }

    pub(crate) fn main() -> anyhow::Result<()> {
        let args = Args::parse();
        if let Some(worker) = Worker::from_env()? {
            return worker_main(worker, &args);
        }
        let (listener, addr) = common::listener(&args.common)?;
        listener.set_nonblocking(true)?;
        let mut listener = Some(listener);
        let mut pool = Pool::new(common::pool_config(&args.common), Vec::new())?;
        let mut dispatcher = Dispatcher {
            least_loaded: args.dispatch == "least-loaded",
            max: (args.common.max_connections > 0).then_some(args.common.max_connections as u64),
            next: 0,
            handed: HashMap::new(),
            shed: 0,
            shed_logged: None,
        };
        // The pool's loop wakes every 5 ms to accept: Windows has no pool-wide
        // readiness for a socket of the caller's yet.
        common::supervise(
            &mut pool,
            addr,
            &args.common,
            Duration::from_millis(5),
            |pool| {
                // Stopping: close the listener, so that new connections are refused
                // (or wait for whoever else holds the socket) instead of queueing
                // where nobody accepts.
                if pool.is_stopping() {
                    listener = None;
                    return;
                }
                let Some(listener) = &listener else {
                    return;
                };
                while let Ok((stream, peer)) = listener.accept() {
                    let _ = stream.set_nonblocking(false);
                    dispatcher.dispatch(pool, &stream, peer);
                }
            },
        )
    }

    struct Dispatcher {
        least_loaded: bool,
        /// `--max-connections`: a worker at this load gets no more.
        max: Option<u64>,
        /// Where round-robin goes next, and least-loaded's tie-break.
        next: usize,
        /// Connections handed to each worker, by pid: those beyond the count it last
        /// reported receiving are on their way, and count as its load.
        handed: HashMap<u32, u64>,
        /// Connections closed because every worker was full, and when that was last
        /// logged (at most once a second).
        shed: u64,
        shed_logged: Option<Instant>,
    }

    impl Dispatcher {
        /// Hands `stream` to a ready worker below its limit; closes it (by dropping)
        /// if there is none.
        fn dispatch(
            &mut self,
            pool: &mut Pool,
            stream: &std::net::TcpStream,
            peer: std::net::SocketAddr,
        ) {
            let n = pool.len().max(1);
            let start = self.next % n;
            let turn = |s: usize| (s + n - start) % n;
            // Open connections by the worker's last report, plus those on their way.
            let load = |s: usize| {
                pool.load(s).map(|l| {
                    let handed = self.handed.get(&l.pid).copied().unwrap_or(0);
                    l.active + handed.saturating_sub(l.accepted)
                })
            };
            let mut slots: Vec<usize> = (0..pool.len())
                .filter(|&s| load(s).is_some_and(|l| self.max.is_none_or(|m| l < m)))
                .collect();
            if self.least_loaded {
                slots.sort_by_key(|&s| (load(s), turn(s)));
            } else {
                slots.sort_by_key(|&s| turn(s));
            }
            let meta = Handoff {
                id: 0,
                peer: Some(peer),
                data: &[],
            };
            for slot in slots {
                if let Ok(pid) = pool.send_socket(slot, stream, &meta) {
                    self.next = slot + 1;
                    *self.handed.entry(pid).or_default() += 1;
                    if self.handed.len() > 4 * n {
                        // Forget the workers that are gone.
                        let live: Vec<u32> = (0..pool.len())
                            .filter_map(|s| Some(pool.load(s)?.pid))
                            .collect();
                        self.handed.retain(|pid, _| live.contains(pid));
                    }
                    return;
                }
            }
            let full = (0..pool.len()).any(|s| pool.load(s).is_some());
            self.shed += 1;
            if self
                .shed_logged
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
            {
                self.shed_logged = Some(Instant::now());
                if full {
                    say(format_args!(
                        "every worker holds its maximum of connections: {} shed so far",
                        self.shed
                    ));
                } else {
                    say(format_args!(
                        "no ready worker for {peer}: {} closed so far",
                        self.shed
                    ));
                }
            }
        }
    }

    fn worker_main(mut worker: Worker, args: &Args) -> anyhow::Result<()> {
        let mut server = common::server(&args.common)?;
        let mut handoff = worker
            .take_handoff_channel()
            .context("no hand-off channel")?;
        worker.ready()?;
        let mut load = common::Load::new(&mut worker);
        let drain = common::watch_drain(worker.into_channel(), &server);
        // Connections arrive on a thread of their own (each receipt acknowledges),
        // and join the event loop through a queue and its waker.
        let (tx, rx) = mpsc::channel();
        let waker = server.waker();
        std::thread::spawn(move || {
            while let Ok(Some(got)) = handoff.recv_socket() {
                let data = got.data.clone();
                if let Ok(stream) = got.into_tcp_stream() {
                    if tx.send((stream, data)).is_err() {
                        return;
                    }
                    let _ = waker.wake();
                }
            }
        });
        let drain_timeout = Duration::from_secs(args.common.drain_timeout);
        let mut events = Vec::new();
        // What it reports as accepted: every connection it received, served or
        // refused (over `--max-connections`), so that the supervisor's count of those
        // on their way comes back to 0.
        let mut received = 0u64;
        loop {
            for (stream, data) in rx.try_iter() {
                received += 1;
                let svc = common::service(&args.common);
                if let Err(e) = server.add_connection(stream, svc, &data) {
                    say(format_args!("serving a handed-off connection: {e}"));
                }
            }
            if drain.load(Ordering::SeqCst) && !server.is_draining() {
                server.drain(Instant::now() + drain_timeout);
            }
            if server.is_draining() && server.is_empty() {
                break;
            }
            server.poll(&mut events, Some(Duration::from_millis(500)))?;
            events.clear();
            load.report_counts(received, &server);
        }
        say(format_args!(
            "worker exits: accepted {}, lock recovered 0",
            server.stats().accepted
        ));
        Ok(())
    }
}

#[cfg(unix)]
mod unix {
    use super::common::{self, Common, Link};
    use crate::log;
    use clap::Parser;
    use herder::fd::Handoff;
    use herder::pool::{Pool, PoolEvent, Worker};
    use herder::reactor::{Event, Interest, Mode, TimerId};
    use std::collections::{HashMap, VecDeque};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    #[derive(Debug, Parser)]
    #[command(about = "herder's hand-off server: one process accepts, workers serve")]
    struct Args {
        #[command(flatten)]
        common: Common,
        /// How a connection's worker is chosen.
        #[arg(long, default_value = "least-loaded", value_parser = ["least-loaded", "round-robin"])]
        dispatch: String,
    }

    /// Connections handed to workers, shed because every worker was full, and
    /// refused by a worker that could not take their descriptor: for `--metrics`.
    static HANDED_OFF: AtomicU64 = AtomicU64::new(0);
    static SHED: AtomicU64 = AtomicU64::new(0);
    static REFUSED: AtomicU64 = AtomicU64::new(0);

    fn handoff_metrics(out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP herder_handoffs_total Connections handed to a worker.\n\
             # TYPE herder_handoffs_total counter\n\
             herder_handoffs_total {}\n\
             # HELP herder_handoffs_shed_total Connections closed because every worker was full.\n\
             # TYPE herder_handoffs_shed_total counter\n\
             herder_handoffs_shed_total {}\n\
             # HELP herder_handoffs_refused_total Connections a worker could not take (its descriptor table was full), closed.\n\
             # TYPE herder_handoffs_refused_total counter\n\
             herder_handoffs_refused_total {}",
            HANDED_OFF.load(Ordering::Relaxed),
            SHED.load(Ordering::Relaxed),
            REFUSED.load(Ordering::Relaxed)
        );
    }

    /// What a worker tells the supervisor about the connections handed to it, on its
    /// channel. Binary, little-endian, so that neither end parses text:
    ///
    /// ```text
    /// byte 0      b'A' (acknowledgement) or b'N' (refusal)
    /// bytes 1..5  the worker's pid, u32
    /// A:          bytes 5..13, u64: every hand-off up to this id arrived
    /// N:          one or more u64: these hand-offs arrived without their
    ///             descriptor (the worker's descriptor table was full)
    /// ```
    ///
    /// (The pool's own messages are two bytes, `P` and a command: never one of these.)
    #[derive(Debug, PartialEq, Eq)]
    enum Receipt {
        Ack { pid: u32, upto: u64 },
        Nack { pid: u32, ids: Vec<u64> },
    }

    impl Receipt {
        const ACK: u8 = b'A';
        const NACK: u8 = b'N';
        /// Ids in one refusal at most: one hand-off message's worth.
        const MAX_NACK_IDS: usize = herder::fd::MAX_FDS_PER_MESSAGE;

        fn encode(&self) -> Vec<u8> {
            let (tag, pid, ids) = match self {
                Receipt::Ack { pid, upto } => (Self::ACK, pid, std::slice::from_ref(upto)),
                Receipt::Nack { pid, ids } => (Self::NACK, pid, &ids[..]),
            };
            let mut out = Vec::with_capacity(5 + 8 * ids.len());
            out.push(tag);
            out.extend_from_slice(&pid.to_le_bytes());
            for id in ids {
                out.extend_from_slice(&id.to_le_bytes());
            }
            out
        }

        /// `None` for anything else (a message of another kind, or a malformed one).
        fn decode(p: &[u8]) -> Option<Receipt> {
            let (&tag, rest) = p.split_first()?;
            let pid = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
            let body = &rest[4..];
            if body.is_empty() || body.len() % 8 != 0 {
                return None;
            }
            let mut ids = body
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()));
            match tag {
                Self::ACK if body.len() == 8 => Some(Receipt::Ack {
                    pid,
                    upto: ids.next()?,
                }),
                Self::NACK => Some(Receipt::Nack {
                    pid,
                    ids: ids.collect(),
                }),
                _ => None,
            }
        }
    }

    /// Descriptors each worker costs the supervisor while it runs: its channel, the
    /// duplicate the pool's loop watches, and its pidfd (herder-pool's `try_spawn`).
    const FDS_PER_WORKER: usize = 3;

    /// Descriptors kept free beyond the ones in use and the workers' reserve, so that
    /// the supervisor never runs out where it must not: a few control and metrics
    /// connections at once (4), the transient ones of a worker spawn (the child's
    /// end of its channel pair and the exec-error pipe: 2), an upgrade's new
    /// supervisor (its channel pair, exec-error pipe and pidfd: 5), and one to spare.
    const RESERVE: usize = 4 + 2 + 5 + 1;

    /// The soft `RLIMIT_NOFILE`, or `None` if unlimited or unknown.
    fn nofile_limit() -> Option<usize> {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0
            || lim.rlim_cur == libc::RLIM_INFINITY
        {
            return None;
        }
        usize::try_from(lim.rlim_cur).ok()
    }

    /// How many descriptors this process has open, if the system lists them.
    fn open_descriptors() -> Option<usize> {
        let dir = std::fs::read_dir("/proc/self/fd")
            .or_else(|_| std::fs::read_dir("/dev/fd"))
            .ok()?;
        // The listing includes the descriptor that reads it.
        Some(dir.count().saturating_sub(1))
    }

    /// Connections waiting for a ready worker, at most.
    const MAX_PENDING: usize = 1024;

    pub(crate) fn main() -> anyhow::Result<()> {
        let args = Args::parse();
        let _span = common::init_logging(&args.common);
        if let Some(worker) = Worker::from_env()? {
            return worker_main(worker, &args);
        }
        let (mut pool, listener, key, addr) = common::handoff_supervisor(&args.common)?;
        let mut d = Dispatcher {
            listener: Some(listener),
            key,
            round_robin: args.dispatch == "round-robin",
            next: 0,
            inflight: HashMap::new(),
            pending: VecDeque::new(),
            next_id: 0,
            retry: None,
            emfile_logged: None,
            limit: nofile_limit(),
            budget: usize::MAX,
            accepting: true,
            refused: 0,
            refused_logged: None,
            flush_timer: None,
            max: (args.common.max_connections > 0).then_some(args.common.max_connections as u64),
            shed: 0,
            shed_logged: None,
            stopping: false,
        };
        d.measure(&pool);
        log!(
            2,
            "supervisor: dispatch {}, protocol {}",
            args.dispatch,
            args.common.protocol
        );
        common::supervise(
            &mut pool,
            addr,
            &args.common,
            &handoff_metrics,
            |pool, event| d.on_event(pool, event),
        )
    }

    struct Dispatcher {
        /// Closed once the supervisor stops accepting for good (a stop, an upgrade).
        listener: Option<TcpListener>,
        key: herder::reactor::Key,
        round_robin: bool,
        next: usize,
        /// Connections handed to each worker (by pid) and not yet acknowledged: kept
        /// open here, so that those of a worker that dies are handed to another.
        inflight: HashMap<u32, VecDeque<(u64, TcpStream, SocketAddr)>>,
        /// Accepted, not yet handed over (no worker ready).
        pending: VecDeque<(TcpStream, SocketAddr)>,
        next_id: u64,
        /// When running out of descriptors was last logged.
        emfile_logged: Option<Instant>,
        /// The listener's pause after `EMFILE`.
        retry: Option<TimerId>,
        /// The soft descriptor limit (`RLIMIT_NOFILE`); `None` if unlimited.
        limit: Option<usize>,
        /// Connections this process may hold (waiting for a worker, or handed over
        /// and not yet acknowledged) and still keep its reserve of descriptors.
        budget: usize,
        /// Whether the listener is watched (it is not while stopping, at the budget,
        /// or during the pause after `EMFILE`).
        accepting: bool,
        /// Connections a worker refused (it could not take their descriptor), and
        /// when that was last logged (at most once a second).
        refused: u64,
        refused_logged: Option<Instant>,
        /// A retry of the connections in `pending` (every worker was busy or absent).
        flush_timer: Option<TimerId>,
        /// Connections per worker at most (`--max-connections`).
        max: Option<u64>,
        /// Connections shed because every worker was full, and when that was last
        /// logged (at most once a second).
        shed: u64,
        shed_logged: Option<Instant>,
        stopping: bool,
    }

    impl Dispatcher {
        fn on_event(&mut self, pool: &mut Pool, event: &PoolEvent) {
            match event {
                PoolEvent::Other(Event::Io { key, .. }) if *key == self.key => self.accept(pool),
                PoolEvent::Other(Event::Timer(t)) if Some(*t) == self.retry => {
                    self.retry = None;
                    self.measure(pool);
                }
                PoolEvent::Ready { .. } => {
                    self.measure(pool);
                    self.flush(pool);
                }
                PoolEvent::Spawned { .. } | PoolEvent::SpawnFailed { .. } => self.measure(pool),
                PoolEvent::Other(Event::Timer(t)) if Some(*t) == self.flush_timer => {
                    self.flush_timer = None;
                    self.flush(pool);
                }
                PoolEvent::Message { message, .. } => match Receipt::decode(message.payload()) {
                    // The worker has every connection up to `upto`: close the copies.
                    Some(Receipt::Ack { pid, upto }) => {
                        if let Some(q) = self.inflight.get_mut(&pid) {
                            while q.front().is_some_and(|(i, _, _)| *i <= upto) {
                                q.pop_front();
                            }
                        }
                    }
                    // The worker got these without their descriptor: no answer
                    // will ever come for them, so close them rather than hold them.
                    Some(Receipt::Nack { pid, ids }) => self.refused(pid, &ids),
                    None => {}
                },
                PoolEvent::Exited { pid, .. } => {
                    self.measure(pool);
                    // Connections it never acknowledged go to another worker.
                    if let Some(q) = self.inflight.remove(pid) {
                        if !q.is_empty() {
                            log!(
                                2,
                                "handing {} unacknowledged connection(s) of worker {pid} to others",
                                q.len()
                            );
                        }
                        let conns = q.into_iter().map(|(_, s, p)| (s, p)).collect();
                        self.dispatch_all(pool, conns);
                    }
                }
                PoolEvent::Upgraded { .. } => {
                    // The new supervisor accepts from now on; the connections already
                    // taken here go to this pool's workers before they drain.
                    self.close_listener(pool);
                    self.flush(pool);
                    self.stopping = true;
                }
                PoolEvent::Command(herder::pool::Command::Stop) => {
                    // Stop accepting at once; the workers drain what they have.
                    self.close_listener(pool);
                    self.stopping = true;
                    self.pending.clear();
                }
                _ => {}
            }
            // Whatever freed a descriptor (an acknowledgement, a refusal, a shed, a
            // worker's exit) resumes accepting at once, and whatever filled the
            // budget pauses it.
            let want = !self.stopping && self.retry.is_none() && self.held() < self.budget;
            self.set_accepting(pool, want);
        }

        /// Closes this process's copies of the listening socket: new connections are
        /// refused at once, or wait for whoever else holds the socket (systemd, the
        /// new supervisor of an upgrade), instead of queueing where nobody accepts.
        fn close_listener(&mut self, pool: &mut Pool) {
            if self.listener.take().is_some() {
                let _ = pool.remove_source(self.key);
                self.accepting = false;
            }
        }

        /// Connections this process holds: waiting for a worker, or handed over and
        /// not yet acknowledged.
        fn held(&self) -> usize {
            self.pending.len() + self.inflight.values().map(VecDeque::len).sum::<usize>()
        }

        /// Watches the listener or stops watching it, if that changes anything.
        fn set_accepting(&mut self, pool: &mut Pool, on: bool) {
            if on != self.accepting {
                let interest = if on {
                    Interest::READABLE
                } else {
                    Interest::NONE
                };
                if pool.modify_source(self.key, interest, Mode::Level).is_ok() {
                    self.accepting = on;
                }
            }
        }

        /// Sets the budget from the descriptor limit: what is open now besides the
        /// connections held (the pool, its workers, the listener, the control
        /// socket …), the workers' reserve — as many again as the pool has slots, for
        /// a reload's or an upgrade's new generation running next to the old one —
        /// and [`RESERVE`] are off limits. Called when the pool's workers change,
        /// where the count moves.
        fn measure(&mut self, pool: &Pool) {
            let Some(limit) = self.limit else {
                return;
            };
            let held = self.held();
            let in_use = match open_descriptors() {
                Some(n) => n.saturating_sub(held),
                // Out of descriptors even to list them: keep the budget there is.
                None if self.budget != usize::MAX => return,
                // Without a listing at all: the startup figure of this server with
                // two workers (about 20), then each worker's own.
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
                log!(
                    3,
                    "descriptor limit {:?}: at most {budget} connection(s) held at a time",
                    self.limit
                );
            }
            self.budget = budget;
        }

        /// Closes the connections worker `pid` refused.
        fn refused(&mut self, pid: u32, ids: &[u64]) {
            let Some(q) = self.inflight.get_mut(&pid) else {
                return;
            };
            let before = q.len();
            q.retain(|(id, _, _)| !ids.contains(id));
            let closed = (before - q.len()) as u64;
            self.refused += closed;
            REFUSED.fetch_add(closed, Ordering::Relaxed);
            if self
                .refused_logged
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
            {
                self.refused_logged = Some(Instant::now());
                log!(
                    1,
                    "worker {pid} is out of descriptors: {closed} connection(s) it could not take closed, {} so far",
                    self.refused
                );
            }
        }

        /// Accepts what is pending (up to 64) and hands it over in batches, after
        /// the connections still waiting for a worker, so none is overtaken.
        fn accept(&mut self, pool: &mut Pool) {
            // A readiness event can still come in the same batch as `Upgraded` or a
            // stop: a connection accepted now would have no worker and be reset.
            if self.stopping {
                return;
            }
            // Never more than the budget: beyond it the descriptors this process must
            // keep for its control socket and its workers would go to connections.
            let room = self.budget.saturating_sub(self.held());
            let mut batch: Vec<_> = self.pending.drain(..).collect();
            for _ in 0..room.min(64) {
                let Some(listener) = &self.listener else {
                    break;
                };
                match listener.accept() {
                    Ok(conn) => batch.push(conn),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                        ) =>
                    {
                        // Out of descriptors all the same (something else took them):
                        // hold no more than now (what is held already has its
                        // descriptor; closing it would free nothing the reserve needs
                        // more than its client does). Neither spin nor die: pause,
                        // count again in 100 ms, and say so at most once a second.
                        if self
                            .emfile_logged
                            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
                        {
                            self.emfile_logged = Some(Instant::now());
                            log!(
                                1,
                                "accept: {e}: out of descriptors; pausing the listener for 100 ms at a time"
                            );
                        }
                        let held = self.held() + batch.len();
                        self.set_budget(held);
                        if self.retry.is_none() {
                            self.retry = Some(
                                pool.add_timer(Instant::now() + Duration::from_millis(100), None),
                            );
                        }
                        break;
                    }
                    Err(e) => log!(3, "accept: {e}"),
                }
            }
            self.dispatch_all(pool, batch);
        }

        /// Slots in the order to try them, counting `extra` connections already
        /// chosen for each slot in this batch.
        fn candidates(&mut self, pool: &Pool, extra: &[u64]) -> Vec<usize> {
            let n = pool.len();
            let load = |s: usize| {
                pool.load(s).map(|l| {
                    l.active
                        + self.inflight.get(&l.pid).map_or(0, |q| q.len() as u64)
                        + extra.get(s).copied().unwrap_or(0)
                })
            };
            // Ready workers below their connection limit, by the count they published
            // (which includes what they acknowledged) plus this batch: a connection
            // both published and not yet acknowledged here must not count twice
            // against the limit. (The worker refuses one over it itself.)
            let fill = |s: usize| {
                pool.load(s)
                    .map(|l| l.active + extra.get(s).copied().unwrap_or(0))
            };
            let mut slots: Vec<usize> = (0..n)
                .filter(|&s| fill(s).is_some_and(|f| self.max.is_none_or(|m| f < m)))
                .collect();
            // Rotate the starting point: round-robin's order, and least-loaded's
            // tie-break (otherwise short connections, all finished by the time the
            // next arrives, would all go to the first slot).
            let start = self.next % n.max(1);
            self.next = start + 1;
            let turn = |s: usize| (s + n - start) % n;
            if self.round_robin {
                slots.sort_by_key(|&s| turn(s));
            } else {
                // Open connections, plus those handed over but not yet acknowledged:
                // a credit window, so a slow worker does not pile up connections.
                slots.sort_by_key(|&s| (load(s).unwrap_or(u64::MAX), turn(s)));
            }
            slots
        }

        /// Chooses a worker for each connection, then hands each worker its share in
        /// one message (one `sendmsg` for many descriptors).
        fn dispatch_all(&mut self, pool: &mut Pool, conns: Vec<(TcpStream, SocketAddr)>) {
            if self.stopping || conns.is_empty() {
                return;
            }
            let n = pool.len();
            let mut extra = vec![0u64; n];
            let mut groups: Vec<Vec<(TcpStream, SocketAddr)>> =
                (0..n).map(|_| Vec::new()).collect();
            for conn in conns {
                match self.candidates(pool, &extra).first() {
                    Some(&slot) => {
                        extra[slot] += 1;
                        groups[slot].push(conn);
                    }
                    None if (0..n).any(|s| pool.load(s).is_some()) => self.shed(conn),
                    None => self.wait(pool, conn),
                }
            }
            for (slot, group) in groups.into_iter().enumerate() {
                if !group.is_empty() {
                    self.send_group(pool, slot, group);
                }
            }
        }

        fn send_group(
            &mut self,
            pool: &mut Pool,
            slot: usize,
            mut group: Vec<(TcpStream, SocketAddr)>,
        ) {
            // At most one message's worth of descriptors at a time.
            while group.len() > herder::fd::MAX_FDS_PER_MESSAGE {
                let rest = group.split_off(herder::fd::MAX_FDS_PER_MESSAGE);
                self.send_chunk(pool, slot, group);
                group = rest;
            }
            self.send_chunk(pool, slot, group);
        }

        fn send_chunk(
            &mut self,
            pool: &mut Pool,
            slot: usize,
            group: Vec<(TcpStream, SocketAddr)>,
        ) {
            let first = self.next_id + 1;
            self.next_id += group.len() as u64;
            let sent = {
                let items: Vec<_> = group
                    .iter()
                    .zip(first..)
                    .map(|((stream, peer), id)| {
                        let meta = Handoff {
                            id,
                            peer: Some(*peer),
                            data: &[],
                        };
                        (stream, meta)
                    })
                    .collect();
                pool.send_sockets(slot, &items)
            };
            match sent {
                Ok(pid) => {
                    HANDED_OFF.fetch_add(group.len() as u64, Ordering::Relaxed);
                    let q = self.inflight.entry(pid).or_default();
                    for ((stream, peer), id) in group.into_iter().zip(first..) {
                        q.push_back((id, stream, peer));
                    }
                }
                Err(e) => {
                    // A worker that died, drains or is full: one by one to the others.
                    log!(3, "hand-off of {} to slot {slot}: {e}", group.len());
                    for (stream, peer) in group {
                        self.dispatch(pool, stream, peer);
                    }
                }
            }
        }

        fn dispatch(&mut self, pool: &mut Pool, stream: TcpStream, peer: SocketAddr) {
            if self.stopping {
                return;
            }
            for slot in self.candidates(pool, &[]) {
                self.next_id += 1;
                let meta = Handoff {
                    id: self.next_id,
                    peer: Some(peer),
                    data: &[],
                };
                match pool.send_socket(slot, &stream, &meta) {
                    Ok(pid) => {
                        HANDED_OFF.fetch_add(1, Ordering::Relaxed);
                        self.inflight.entry(pid).or_default().push_back((
                            self.next_id,
                            stream,
                            peer,
                        ));
                        return;
                    }
                    // A worker that died, drains or is full: the next one.
                    Err(e) => log!(3, "hand-off to slot {slot}: {e}"),
                }
            }
            self.wait(pool, (stream, peer));
        }

        /// Closes a connection no worker has room for (every ready one holds
        /// `--max-connections`): shedding, rather than a queue that grows.
        fn shed(&mut self, conn: (TcpStream, SocketAddr)) {
            drop(conn);
            self.shed += 1;
            SHED.fetch_add(1, Ordering::Relaxed);
            if self
                .shed_logged
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
            {
                self.shed_logged = Some(Instant::now());
                log!(
                    1,
                    "every worker holds its maximum of connections: {} shed so far",
                    self.shed
                );
            }
        }

        /// Keeps a connection until a worker can take it (a worker becomes ready,
        /// a retry 10 ms later, or the next accept), up to a bound.
        fn wait(&mut self, pool: &mut Pool, conn: (TcpStream, SocketAddr)) {
            if self.pending.len() < MAX_PENDING && self.held() < self.budget {
                self.pending.push_back(conn);
                if self.flush_timer.is_none() {
                    self.flush_timer =
                        Some(pool.add_timer(Instant::now() + Duration::from_millis(10), None));
                }
            } else {
                log!(
                    1,
                    "no worker ready and {} connections waiting: shedding one",
                    self.pending.len()
                );
            }
        }

        fn flush(&mut self, pool: &mut Pool) {
            let waiting: Vec<_> = self.pending.drain(..).collect();
            self.dispatch_all(pool, waiting);
        }
    }

    fn worker_main(mut worker: Worker, args: &Args) -> anyhow::Result<()> {
        let mut server = common::server(&args.common)?;
        let mut link = Link::ready(&mut worker, &mut server, &args.common)?;
        let me = std::process::id();
        let mut events = Vec::new();
        let mut last_id: Option<u64> = None;
        let mut broken = None;
        loop {
            server.poll(&mut events, Some(Duration::from_millis(500)))?;
            for e in events.drain(..) {
                link.handle(&mut server, &e, |server, message| {
                    match message.into_sockets() {
                        Ok(batch) => {
                            for mut got in batch {
                                last_id = last_id.max(Some(got.id));
                                let data = std::mem::take(&mut got.data);
                                if let Ok(stream) = got.into_tcp_stream() {
                                    let svc = common::service(&args.common);
                                    if let Err(e) = server.add_connection(stream, svc, &data) {
                                        log!(1, "serving a handed-off connection: {e}");
                                    }
                                }
                            }
                        }
                        // Acknowledging past it would drop the supervisor's copies
                        // of connections nobody serves: exit instead, and let the
                        // supervisor hand them to another worker.
                        Err(e) => broken = Some(e),
                    }
                })?;
                if let Some(e) = broken.take() {
                    anyhow::bail!("a malformed hand-off from the supervisor: {e}");
                }
            }
            // Publish the load before acknowledging: the supervisor's least-loaded
            // choice counts unacknowledged connections, then the published ones.
            link.report(&server);
            // Refusals first: an acknowledgement covers every id up to its own, and
            // the supervisor counts what it closes on a refusal.
            for ids in link.take_lost().chunks(Receipt::MAX_NACK_IDS) {
                let nack = Receipt::Nack {
                    pid: me,
                    ids: ids.to_vec(),
                };
                send_receipt(&mut link, &nack)?;
            }
            if let Some(upto) = last_id.take() {
                // Acknowledge before serving: the supervisor keeps its copies until
                // then, and would hand a connection this worker had begun to serve to
                // another if it died unacknowledged.
                send_receipt(&mut link, &Receipt::Ack { pid: me, upto })?;
            }
            if server.is_draining() && server.is_empty() {
                return Ok(());
            }
        }
    }

    /// Sends a receipt to the supervisor, waiting for room in the channel rather
    /// than let the next poll serve first: the supervisor holds copies until it hears.
    fn send_receipt(link: &mut Link, receipt: &Receipt) -> anyhow::Result<()> {
        let bytes = receipt.encode();
        let mut sent = link.channel.send(&bytes, &[]);
        if sent
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock)
        {
            link.channel.set_nonblocking(false)?;
            sent = link.channel.send(&bytes, &[]);
            link.channel.set_nonblocking(true)?;
        }
        // A supervisor that is gone needs no receipt (the worker drains when its
        // channel reports the end).
        if let Err(e) = sent {
            log!(1, "sending {receipt:?}: {e}");
        }
        Ok(())
    }
}
