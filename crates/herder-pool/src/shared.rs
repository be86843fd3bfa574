//! The shared-listener model's worker side: a listening socket every worker holds,
//! taken in turns.

use crate::link::WorkerLink;
use crate::scorecard::Scorecard;
use crate::{AcceptLock, Error, Worker};
use herder_reactor::{Event, Key, Server, Service};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// How the workers that share a listener take their turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Sharing {
    /// Every worker waits on the listener; the pool's accept lock
    /// ([`Config::accept_lock`](crate::Config::accept_lock)), if it has one, lets one
    /// accept at a time: taken before each wait, released after it, the listener
    /// watched only while held (nginx's `accept_mutex`).
    Lock,
    /// `EPOLLEXCLUSIVE` (Linux): the kernel wakes one waiting worker per
    /// connection; no lock.
    Exclusive,
    /// One listener per worker in one `SO_REUSEPORT` group
    /// ([`Pool::set_slot_listeners`](crate::Pool::set_slot_listeners)): the kernel
    /// spreads the connections; nothing to take turns on, and no balancing.
    ReusePort,
}

/// Connections accepted per wake-up at most while the workers balance their load:
/// a worker looks at its peers' load between bursts, so a burst must be small, or a
/// worker that polls while its peers are still starting takes a whole wave.
const BALANCED_BURST: usize = 8;

/// How soon a worker without the lock, or leaving connections to its peers, looks
/// again.
const TURN: Duration = Duration::from_millis(5);

/// A worker's share of a listener: added to its [`Server`] the way [`Sharing`] says,
/// with the accept lock's take/watch/wait/unwatch/release cycle around each
/// [`poll`](Self::poll) and, on a shared queue, load balancing through the
/// scoreboard — a worker holding more connections than its least-loaded peer leaves
/// new ones to the others. Use it in place of `Server::poll`, or hand it to
/// [`WorkerLink::run_shared`].
///
/// # Examples
///
/// A shared-listener worker serving echo (the supervisor hands every worker the
/// listener named `http`):
///
/// ```no_run
/// use herder_pool::{SharedListener, Sharing, Worker, WorkerLink};
/// use herder_reactor::{Flow, Input, Output, Server, ServerConfig, Service};
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
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// if let Some(mut worker) = Worker::from_env()? {
///     let mut server = Server::new(ServerConfig::default(), |_| Echo)?;
///     let shared = SharedListener::new(&mut worker, &mut server, "http", Sharing::Lock)?;
///     let link = WorkerLink::ready(&mut worker, &mut server, Duration::from_secs(30))?;
///     link.run_shared(&mut server, shared, |_peer| Echo)?;
/// }
/// # Ok(())
/// # }
/// ```
pub struct SharedListener {
    key: Key,
    lock: Option<AcceptLock>,
    /// This worker's scoreboard record, when it balances.
    card: Option<Scorecard>,
    /// Whether the listener is in the poll set now.
    armed: bool,
    burst: usize,
}

impl SharedListener {
    /// Takes the worker's listener `name` (and the pool's accept lock, if any) and
    /// adds it to `server` as `sharing` says. Call it before
    /// [`WorkerLink::ready`]: the worker then counts in its peers' balance from its
    /// first connection.
    ///
    /// # Errors
    ///
    /// [`Error::Environment`] if the worker has no listener `name`; `Unsupported`
    /// for [`Sharing::Exclusive`] off Linux; what opening the lock or registering
    /// returns.
    pub fn new<Svc: Service + 'static>(
        worker: &mut Worker,
        server: &mut Server<Svc>,
        name: &str,
        sharing: Sharing,
    ) -> Result<SharedListener, Error> {
        let io = |what| move |source| Error::Io { what, source };
        let listener = worker
            .take_listener(name)
            .ok_or_else(|| Error::Environment(format!("no listener named {name:?}")))?;
        let lock = match sharing {
            Sharing::Lock => worker
                .accept_lock()
                .map_err(io("opening the accept lock"))?,
            _ => None,
        };
        let key = match sharing {
            Sharing::Exclusive => exclusive(server, listener),
            _ => server.add_listener(listener),
        }
        .map_err(io("watching the listener"))?;
        if lock.is_some() {
            server
                .pause_listener(key)
                .map_err(io("pausing the listener"))?;
        }
        // On one shared queue the workers balance; with SO_REUSEPORT the kernel
        // chose already.
        let balance = sharing != Sharing::ReusePort;
        let card = worker.scorecard().filter(|_| balance);
        if let Some(card) = &card {
            card.set_accepting(true);
        }
        let burst = if balance {
            BALANCED_BURST
        } else {
            herder_reactor::ServerConfig::default().accept_burst
        };
        Ok(SharedListener {
            key,
            armed: lock.is_none(),
            lock,
            card,
            burst,
        })
    }

    /// One turn: takes the lock (unless the worker holds more than its share, when
    /// it leaves the turn to its peers), watches the listener while it may accept,
    /// polls `server` — which serves its connections and accepts — and releases the
    /// lock. `events` gets what is left for the caller, as from `Server::poll`.
    ///
    /// # Errors
    ///
    /// What the lock or polling returns.
    pub fn poll<Svc: Service + 'static>(
        &mut self,
        server: &mut Server<Svc>,
        events: &mut Vec<Event>,
        timeout: Duration,
    ) -> io::Result<()> {
        let draining = server.is_draining();
        if draining {
            if let Some(card) = self.card.take() {
                // Out of the balance: its peers no longer wait for it.
                card.set_accepting(false);
            }
            return server.poll(events, Some(timeout));
        }
        let allowance = self
            .card
            .as_ref()
            .and_then(|c| c.accept_allowance(server.stats().active as u64));
        let yielding = allowance == Some(0);
        // At most what keeps this worker within its share.
        server.set_accept_burst(allowance.map_or(self.burst, |n| (n as usize).min(self.burst)));
        let mut held = false;
        let want = match self.lock.as_mut() {
            Some(l) if !yielding => {
                held = l.try_lock()?;
                if !held {
                    if let Some(card) = &self.card {
                        card.add_lock_waits(1);
                    }
                }
                held
            }
            Some(_) => false,
            None => !yielding,
        };
        let wait = if (self.lock.is_some() && !held) || yielding {
            TURN
        } else {
            timeout
        };
        let turn = self
            .arm(server, want)
            .and_then(|()| server.poll(events, Some(wait)));
        // Released whatever happened: a lock kept by a worker that goes on (or whose
        // caller retries) would starve every peer.
        if held {
            if let Some(l) = self.lock.as_mut() {
                l.unlock()?;
            }
        }
        turn
    }

    /// Puts the listener in the poll set or takes it out. With a lock it stays
    /// armed while the worker keeps winning it (two system calls a turn saved, as in
    /// nginx).
    fn arm<Svc: Service + 'static>(
        &mut self,
        server: &mut Server<Svc>,
        want: bool,
    ) -> io::Result<()> {
        if want != self.armed {
            if want {
                server.resume_listener(self.key)?;
            } else {
                server.pause_listener(self.key)?;
            }
            self.armed = want;
        }
        Ok(())
    }
}

impl std::fmt::Debug for SharedListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedListener")
            .field("lock", &self.lock.is_some())
            .field("balance", &self.card.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(target_os = "linux")]
fn exclusive<Svc: Service + 'static>(
    server: &mut Server<Svc>,
    listener: std::net::TcpListener,
) -> io::Result<Key> {
    use herder_reactor::os::linux::ServerExt;
    server.add_exclusive_listener(listener, Some(Duration::from_millis(50)))
}

#[cfg(not(target_os = "linux"))]
fn exclusive<Svc: Service + 'static>(
    _: &mut Server<Svc>,
    _: std::net::TcpListener,
) -> io::Result<Key> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "EPOLLEXCLUSIVE is Linux-only",
    ))
}

impl<Svc: Service + 'static> WorkerLink<Svc> {
    /// As [`run`](Self::run), taking turns on `shared` in place of plain polls.
    ///
    /// # Errors
    ///
    /// As [`run`](Self::run).
    pub fn run_shared(
        mut self,
        server: &mut Server<Svc>,
        mut shared: SharedListener,
        mut service: impl FnMut(Option<SocketAddr>) -> Svc,
    ) -> io::Result<()> {
        let mut events = Vec::new();
        loop {
            shared.poll(server, &mut events, Duration::from_millis(500))?;
            for e in events.drain(..) {
                self.handle(server, &e, &mut service, |_, _| {})?;
            }
            self.flush(server)?;
            if self.is_done(server) {
                return Ok(());
            }
        }
    }
}
