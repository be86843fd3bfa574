//! The worker's side: detect the worker role at the top of `main`, take the inherited
//! descriptors, and talk to the supervisor.

use crate::AcceptLockKind;
use crate::accept_lock::{AcceptLock, LOCK_ENV, LOCK_NAME};
use crate::error::Error;
use crate::message;
use crate::scoreboard::{Board, SCOREBOARD_NAME};
use crate::scorecard::Scorecard;
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
            worker.scorecard = Scorecard::new(Arc::new(board), index);
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
