//! The worker's side: detect the worker role at the top of `main`, take the inherited
//! descriptors, and talk to the supervisor.

use crate::accept_lock::{AcceptLock, AcceptLockKind, LOCK_ENV, LOCK_NAME};
use crate::error::Error;
use crate::message;
use crate::scoreboard::{Board, SCOREBOARD_NAME};
use crate::sys;
use herder_fd::Channel;
use std::io;
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The variable naming a worker's slot, generation and scoreboard record,
/// `SLOT:GENERATION[:RECORD]`.
pub const WORKER_ENV: &str = "HERDER_WORKER";
/// The name of the worker's channel to its supervisor among its inherited descriptors.
pub const CHANNEL_NAME: &str = "herder-channel";

/// What a worker process inherited from its supervisor: its slot, its generation, its
/// channel and the named descriptors (listeners) handed over the systemd way.
#[derive(Debug)]
pub struct Worker {
    slot: usize,
    generation: u64,
    channel: Option<Channel>,
    fds: Vec<(String, OwnedFd)>,
    scorecard: Option<Scorecard>,
}

static ADOPTED: AtomicBool = AtomicBool::new(false);

impl Worker {
    /// Detects the worker role. Call it at the top of `main`: `Ok(None)` means this
    /// process was not started as a herder worker (it is the supervisor, or a plain
    /// program). The environment is read once and not changed — so nothing else in
    /// the worker should adopt `LISTEN_FDS` descriptors too (another socket-activation
    /// library would own them twice), and programs the worker starts inherit the
    /// variables unless it clears them for them.
    ///
    /// The descriptors named in `LISTEN_FDS`/`LISTEN_FDNAMES` are adopted only when
    /// `LISTEN_PID` is this process's pid, as systemd specifies; each is checked to be
    /// open and made close-on-exec.
    ///
    /// # Errors
    ///
    /// [`Error::Environment`] when the variables are malformed or a descriptor is
    /// missing; a second call in one process finds nothing (`Ok(None)`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// fn main() -> std::io::Result<()> {
    ///     if let Some(mut worker) = herder_pool::Worker::from_env()? {
    ///         let listener = worker.take_listener("http").expect("the pool's listener");
    ///         // Set up what serving needs, then say so: only a ready worker counts.
    ///         worker.ready()?;
    ///         for conn in listener.incoming() {
    ///             drop(conn?); // serve it
    ///         }
    ///         return Ok(());
    ///     }
    ///     // the supervisor's code
    ///     Ok(())
    /// }
    /// ```
    ///
    /// A worker on a herder-reactor `Server` uses [`WorkerLink`](crate::WorkerLink)
    /// instead, which also reads the drain request and the supervisor's end.
    pub fn from_env() -> Result<Option<Worker>, Error> {
        let Some(role) = std::env::var_os(WORKER_ENV) else {
            return Ok(None);
        };
        if ADOPTED.swap(true, Ordering::AcqRel) {
            return Ok(None);
        }
        let role = role
            .to_str()
            .ok_or_else(|| Error::Environment(format!("{WORKER_ENV} is not UTF-8")))?;
        let bad = || {
            Error::Environment(format!(
                "{WORKER_ENV}={role:?} is not SLOT:GENERATION[:RECORD]"
            ))
        };
        let mut parts = role.split(':');
        let slot: usize = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let generation: u64 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let record: Option<usize> = match parts.next() {
            Some(r) => Some(r.parse().map_err(|_| bad())?),
            None => None,
        };
        let fds = listen_fds()?;
        let mut worker = Worker {
            slot,
            generation,
            channel: None,
            fds,
            scorecard: None,
        };
        if let Some(fd) = worker.take(CHANNEL_NAME) {
            worker.channel =
                Some(Channel::new(fd).map_err(|e| Error::Channel { slot, source: e })?);
        }
        if let (Some(fd), Some(index)) = (worker.take(SCOREBOARD_NAME), record) {
            let board = Board::open(std::os::fd::AsFd::as_fd(&fd))
                .map_err(|e| Error::Environment(format!("scoreboard: {e}")))?;
            if board.record(index).is_some() {
                worker.scorecard = Some(Scorecard {
                    board: Arc::new(board),
                    index,
                });
            }
        }
        Ok(Some(worker))
    }

    /// The worker's slot in the pool.
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// The worker's generation (incremented by every rolling restart).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The names of the descriptors not taken yet.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fds.iter().map(|(n, _)| n.as_str())
    }

    /// Takes the inherited descriptor named `name`.
    pub fn take(&mut self, name: &str) -> Option<OwnedFd> {
        let i = self.fds.iter().position(|(n, _)| n == name)?;
        Some(self.fds.remove(i).1)
    }

    /// Takes the inherited descriptor named `name` as a TCP listener.
    pub fn take_listener(&mut self, name: &str) -> Option<TcpListener> {
        self.take(name).map(TcpListener::from)
    }

    /// The channel to the supervisor, for the worker's own messages (hand-offs come
    /// over it in the hand-off model).
    pub fn channel(&mut self) -> Option<&mut Channel> {
        self.channel.as_mut()
    }

    /// Takes the channel to the supervisor, e.g. to register it in an event loop.
    pub fn take_channel(&mut self) -> Option<Channel> {
        self.channel.take()
    }

    /// The pool's accept lock ([`Config::accept_lock`](crate::Config::accept_lock)),
    /// this worker's own handle on it; `None` when the pool has none (or it was taken
    /// already).
    ///
    /// # Errors
    ///
    /// What opening the inherited lock returns.
    pub fn accept_lock(&mut self) -> io::Result<Option<AcceptLock>> {
        let Some(kind) = std::env::var(LOCK_ENV).ok() else {
            return Ok(None);
        };
        let kind: AcceptLockKind = kind.parse()?;
        match self.take(LOCK_NAME) {
            Some(fd) => AcceptLock::open(kind, fd).map(Some),
            None => Ok(None),
        }
    }

    /// This worker's record in the supervisor's scoreboard: heartbeats and load.
    pub fn scorecard(&self) -> Option<Scorecard> {
        self.scorecard.clone()
    }

    /// Tells the supervisor this worker is ready: only then does it count as
    /// serving (and, in the hand-off model, receive connections).
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotConnected`] if the channel was taken; what sending
    /// returns.
    pub fn ready(&mut self) -> io::Result<()> {
        let ch = self
            .channel
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "the channel was taken"))?;
        send_ready(ch)
    }
}

/// Tells the supervisor over `channel` that the worker is ready, for a worker that took
/// its channel with [`Worker::take_channel`].
///
/// # Errors
///
/// What sending returns.
pub fn send_ready(channel: &mut Channel) -> io::Result<()> {
    channel.send(message::READY, &[])
}

/// Whether a message from the supervisor asks the worker to drain and exit — and,
/// on a reload, a recycle or a scale-down, to move its connections to the other
/// workers first, which [`WorkerLink`](crate::WorkerLink) does and a worker of its
/// own may leave undone (it drains them then).
pub fn is_drain_request(payload: &[u8]) -> bool {
    #[cfg(unix)]
    if payload == message::MOVE {
        return true;
    }
    payload == message::DRAIN
}

/// Parses `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`, and adopts the descriptors.
pub(crate) fn listen_fds() -> Result<Vec<(String, OwnedFd)>, Error> {
    let var = |name: &str| std::env::var(name).ok();
    let Some(pid) = var("LISTEN_PID") else {
        return Ok(Vec::new());
    };
    if pid.parse::<u32>().ok() != Some(sys::getpid()) {
        // Meant for another process (systemd's rule).
        return Ok(Vec::new());
    }
    let count: usize = var("LISTEN_FDS")
        .and_then(|n| n.parse().ok())
        .filter(|&n| n <= 1024)
        .ok_or_else(|| Error::Environment("LISTEN_FDS is missing or not a count".into()))?;
    let names: Vec<String> = match var("LISTEN_FDNAMES") {
        Some(n) => n.split(':').map(str::to_string).collect(),
        None => vec!["unknown".to_string(); count],
    };
    if names.len() != count {
        return Err(Error::Environment(format!(
            "LISTEN_FDNAMES names {} descriptors, LISTEN_FDS {count}",
            names.len()
        )));
    }
    let fds = sys::adopt_inherited(count)
        .map_err(|e| Error::Environment(format!("inherited descriptor: {e}")))?;
    Ok(names.into_iter().zip(fds).collect())
}

/// How recent a peer's heartbeat or load figure must be for it to count in
/// [`Scorecard::accept_allowance`].
pub const PEER_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// A worker's record in its supervisor's scoreboard, in shared memory: the heartbeat
/// that tells the supervisor the worker is not hung, and the load figures that feed
/// least-loaded dispatch, scaling and status. Writing is a few atomic stores; cheap
/// enough for every connection. Clone it freely (it is shared).
#[derive(Clone)]
pub struct Scorecard {
    board: Arc<Board>,
    index: usize,
}

impl Scorecard {
    /// The record (checked to exist when the worker adopted the scoreboard).
    fn record(&self) -> Option<&crate::scoreboard::Record> {
        self.board.record(self.index)
    }

    /// Records that the worker is alive now. Call it from the event loop (a timer a
    /// few times per heartbeat timeout): a loop that hangs stops calling it.
    pub fn heartbeat(&self) {
        if let Some(r) = self.record() {
            r.heartbeat();
        }
    }

    /// Counts `n` connections more taken by this worker.
    pub fn add_accepted(&self, n: u64) {
        if let Some(r) = self.record() {
            r.add_accepted(n);
        }
    }

    /// Counts `n` times more that this worker wanted to accept but found the accept
    /// lock held by another (the supervisor's `lock_waits`).
    pub fn add_lock_waits(&self, n: u64) {
        if let Some(r) = self.record() {
            r.add_lock_waits(n);
        }
    }

    /// Sets the number of connections this worker has open; it also counts as a
    /// heartbeat (a loop that publishes its load is alive). Call it after every poll:
    /// peers ignore a worker that has published nothing for [`PEER_FRESH`].
    pub fn set_active(&self, n: u64) {
        if let Some(r) = self.record() {
            r.set_active(n);
        }
    }

    /// Declares whether this worker takes new connections from a shared listener (an
    /// accept lock, `EPOLLEXCLUSIVE`, or none), so that its peers count it in
    /// [`Scorecard::accept_allowance`]. Set it once the worker accepts, and clear it
    /// when it drains.
    pub fn set_accepting(&self, on: bool) {
        if let Some(r) = self.record() {
            r.set_accepting(on);
        }
    }

    /// The fewest open connections among the other accepting workers of the pool
    /// (those that called [`Scorecard::set_accepting`] and published a heartbeat or
    /// their load within [`PEER_FRESH`]), or `None` if there are none.
    pub fn least_active_peer(&self) -> Option<u64> {
        self.board
            .least_active_accepting(self.index, PEER_FRESH.as_millis() as u64)
    }

    /// How many more connections a worker with `active` open ones may accept before
    /// it should leave new ones to its peers: up to the least-loaded accepting peer's
    /// count plus a slack of an eighth of it, and at least one. `None` when no peer
    /// accepts (no limit).
    ///
    /// This is load-aware accepting for a shared listener, in the spirit of nginx's
    /// `accept_disabled` but against the peers' actual load: a worker whose allowance
    /// is zero skips the accept lock (or pauses its listener) until it is positive
    /// again, and accepts at most its allowance per wake-up, so the worker that keeps
    /// winning the lock, or that `EPOLLEXCLUSIVE` keeps waking, does not end up with
    /// every long-lived connection. The least-loaded worker always has an allowance,
    /// so some worker always accepts; a peer that is stuck (in a long computation,
    /// stopped, hung) stops counting once it has published nothing for
    /// [`PEER_FRESH`], so it holds the others back for at most that long. The counts
    /// are those the workers last published with [`Scorecard::set_active`].
    ///
    /// ```
    /// # fn f(card: &herder_pool::Scorecard, active: u64) {
    /// match card.accept_allowance(active) {
    ///     Some(0) => { /* pause the listener, skip the lock, look again soon */ }
    ///     Some(n) => { /* accept at most n now */ }
    ///     None => { /* alone: accept freely */ }
    /// }
    /// # }
    /// ```
    pub fn accept_allowance(&self, active: u64) -> Option<u64> {
        self.least_active_peer()
            .map(|least| (least + (least / 8).max(1)).saturating_sub(active))
    }
}

impl std::fmt::Debug for Scorecard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scorecard")
            .field("index", &self.index)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::Scorecard;
    use crate::scoreboard::Board;
    use std::sync::Arc;

    fn cards(n: usize) -> Vec<Scorecard> {
        let (_fd, board) = Board::create(8).unwrap();
        let board = Arc::new(board);
        (0..n)
            .map(|i| Scorecard {
                board: board.clone(),
                index: board.assign(100 + i as u32, i, 1).unwrap(),
            })
            .collect()
    }

    #[test]
    fn only_accepting_peers_count() {
        let c = cards(3);
        assert_eq!(c[0].least_active_peer(), None);
        assert_eq!(
            c[0].accept_allowance(1000),
            None,
            "no peer accepts: no limit"
        );
        c[1].set_accepting(true);
        c[1].set_active(7);
        c[2].set_active(0); // not accepting (draining, say): ignored
        assert_eq!(c[0].least_active_peer(), Some(7));
        c[2].set_accepting(true);
        assert_eq!(c[0].least_active_peer(), Some(0));
        c[2].set_accepting(false);
        assert_eq!(c[0].least_active_peer(), Some(7));
    }

    #[test]
    fn allowance_up_to_the_least_loaded_peer_plus_slack() {
        let c = cards(2);
        c[1].set_accepting(true);
        c[1].set_active(0);
        assert_eq!(c[0].accept_allowance(0), Some(1), "slack of at least one");
        assert_eq!(c[0].accept_allowance(1), Some(0));
        assert_eq!(c[0].accept_allowance(50), Some(0));
        c[1].set_active(32);
        assert_eq!(c[0].accept_allowance(30), Some(6), "slack of an eighth");
        assert_eq!(c[0].accept_allowance(36), Some(0));
        // The least-loaded worker always has room.
        c[0].set_accepting(true);
        c[0].set_active(5);
        assert_eq!(c[0].accept_allowance(5), Some(32 + 4 - 5));
        assert_eq!(c[1].accept_allowance(32), Some(0));
        assert_eq!(c[1].accept_allowance(5), Some(1));
    }

    #[test]
    fn a_silent_peer_stops_counting_and_counts_again_when_it_publishes() {
        let c = cards(2);
        c[1].set_accepting(true);
        c[1].set_active(0);
        assert_eq!(c[0].accept_allowance(5), Some(0));
        // Stuck (no heartbeat, no load figure) for longer than PEER_FRESH.
        c[1].record()
            .unwrap()
            .age(super::PEER_FRESH.as_millis() as u64 + 500);
        assert_eq!(c[0].least_active_peer(), None);
        assert_eq!(c[0].accept_allowance(5), None);
        // Back: publishing its load is a sign of life.
        c[1].set_active(0);
        assert_eq!(c[0].accept_allowance(5), Some(0));
    }

    #[test]
    fn a_released_record_is_no_peer() {
        let (_fd, board) = Board::create(4).unwrap();
        let board = Arc::new(board);
        let a = board.assign(1, 0, 1).unwrap();
        let b = board.assign(2, 1, 1).unwrap();
        let (ca, cb) = (
            Scorecard {
                board: board.clone(),
                index: a,
            },
            Scorecard {
                board: board.clone(),
                index: b,
            },
        );
        cb.set_accepting(true);
        assert_eq!(ca.least_active_peer(), Some(0));
        board.release(b);
        assert_eq!(ca.least_active_peer(), None);
        // A record reused by a new process starts not accepting.
        let again = board.assign(3, 1, 2).unwrap();
        assert_eq!(again, b);
        assert_eq!(ca.least_active_peer(), None);
    }
}
