//! The worker's side: detect the worker role at the top of `main`, take what the
//! supervisor handed over (listeners, the channel, the scoreboard record, the accept
//! lock), and talk to the supervisor. One `Worker` for every platform; how it gets
//! its descriptors is the platform's (`worker/unix.rs`: inherited the systemd way;
//! `worker/windows.rs`: received over a channel it connects to the supervisor).

#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;

#[cfg(unix)]
pub use unix::CHANNEL_NAME;
#[cfg(unix)]
pub(crate) use unix::listen_fds;
#[cfg(windows)]
pub use windows::AcceptLock;
#[cfg(windows)]
pub(crate) use windows::{CHANNEL_ENV, LOCK_ENV, SCOREBOARD_ENV, SUPERVISOR_ENV, connect};

use crate::Descriptor;
#[cfg(unix)]
use crate::accept_lock::AcceptLock;
use crate::error::Error;
use crate::message;
use crate::scorecard::Scorecard;
use herder_fd::Channel;
use std::io;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};

/// The variable naming a worker's slot, generation and scoreboard record,
/// `SLOT:GENERATION[:RECORD]`.
pub const WORKER_ENV: &str = "HERDER_WORKER";

/// What the platform's side found for a worker.
struct Parts {
    channel: Option<Channel>,
    fds: Vec<(String, Descriptor)>,
    scorecard: Option<Scorecard>,
    /// The connection [`Pool::send_socket`](crate::Pool::send_socket)'s hand-offs
    /// come by (Windows).
    #[cfg(windows)]
    handoff: Option<Channel>,
}

/// What a worker process got from its supervisor: its slot, its generation, its
/// channel and the named sockets (listeners): inherited the systemd way on Unix,
/// received over the channel on Windows.
#[derive(Debug)]
pub struct Worker {
    slot: usize,
    generation: u64,
    channel: Option<Channel>,
    fds: Vec<(String, Descriptor)>,
    scorecard: Option<Scorecard>,
    #[cfg(windows)]
    handoff: Option<Channel>,
}

static ADOPTED: AtomicBool = AtomicBool::new(false);

impl Worker {
    /// Detects the worker role. Call it at the top of `main`: `Ok(None)` means this
    /// process was not started as a herder worker (it is the supervisor, or a plain
    /// program). The environment is read once and not changed, and programs the
    /// worker starts inherit the variables unless it clears them for them.
    ///
    /// On Unix the descriptors named in `LISTEN_FDS`/`LISTEN_FDNAMES` are adopted
    /// only when `LISTEN_PID` is this process's pid, as systemd specifies; each is
    /// checked to be open and made close-on-exec (so nothing else in the worker
    /// should adopt `LISTEN_FDS` descriptors too). On Windows the worker connects its
    /// channel to the supervisor, presenting the token from its environment, and
    /// receives the listeners there.
    ///
    /// # Errors
    ///
    /// [`Error::Environment`] when the variables are malformed or a descriptor is
    /// missing; [`Error::Io`] when the channel cannot be set up (Windows); a second
    /// call in one process finds nothing (`Ok(None)`).
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
        if parts.next().is_some() {
            return Err(bad());
        }
        #[cfg(unix)]
        let parts = unix::adopt(slot, record)?;
        #[cfg(windows)]
        let parts = windows::adopt(slot, record)?;
        Ok(Some(Worker {
            slot,
            generation,
            channel: parts.channel,
            fds: parts.fds,
            scorecard: parts.scorecard,
            #[cfg(windows)]
            handoff: parts.handoff,
        }))
    }

    /// The worker's slot in the pool.
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// The worker's generation (incremented by every rolling restart).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The names of the sockets not taken yet.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fds.iter().map(|(n, _)| n.as_str())
    }

    /// Takes the socket named `name`.
    pub fn take(&mut self, name: &str) -> Option<Descriptor> {
        let i = self.fds.iter().position(|(n, _)| n == name)?;
        Some(self.fds.remove(i).1)
    }

    /// Takes the socket named `name` as a TCP listener.
    pub fn take_listener(&mut self, name: &str) -> Option<TcpListener> {
        self.take(name).map(TcpListener::from)
    }

    /// The channel to the supervisor, for the worker's own messages (hand-offs come
    /// over it in the hand-off model; read it for the drain request,
    /// [`is_drain_request`]). `None` once taken.
    pub fn channel(&mut self) -> Option<&mut Channel> {
        self.channel.as_mut()
    }

    /// Takes the channel to the supervisor, e.g. to register it in an event loop.
    pub fn take_channel(&mut self) -> Option<Channel> {
        self.channel.take()
    }

    /// Takes the hand-off connection, on which [`Pool::send_socket`] sends
    /// connections (Windows: on Unix they come over the channel); read it with
    /// [`Channel::recv_socket`](herder_fd::Channel::recv_socket), which
    /// acknowledges.
    ///
    /// [`Pool::send_socket`]: crate::Pool::send_socket
    #[cfg(windows)]
    pub fn take_handoff_channel(&mut self) -> Option<Channel> {
        self.handoff.take()
    }

    /// The pool's accept lock ([`Config::accept_lock`](crate::Config::accept_lock)),
    /// this worker's own handle on it; `None` when the pool has none (or it was taken
    /// already).
    ///
    /// # Errors
    ///
    /// What opening the lock returns.
    pub fn accept_lock(&mut self) -> io::Result<Option<AcceptLock>> {
        #[cfg(unix)]
        return unix::accept_lock(|name| self.take(name));
        #[cfg(windows)]
        return windows::accept_lock();
    }

    /// This worker's record in the supervisor's scoreboard: heartbeats and load.
    /// `None` if the supervisor had no record free.
    pub fn scorecard(&self) -> Option<Scorecard> {
        self.scorecard.clone()
    }

    /// Tells the supervisor this worker is ready: only then does it count as
    /// serving (and, in the hand-off model, receive connections).
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotConnected`] if the channel was taken ([`send_ready`]
    /// then); what sending returns.
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
    message::send_bytes(channel, message::READY)
}

/// Whether a message from the supervisor asks the worker to drain and exit — and,
/// on a reload, a recycle or a scale-down, to move its connections to the other
/// workers first (Unix), which [`WorkerLink`](crate::WorkerLink) does and a worker
/// of its own may leave undone (it drains them then).
pub fn is_drain_request(payload: &[u8]) -> bool {
    payload == message::DRAIN || payload == message::MOVE
}
