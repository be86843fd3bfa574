//! The worker's side on Windows: the channel it connects to the supervisor, the
//! listeners it receives there, its scorecard and the accept lock.

use crate::Error;
use herder_fd::Channel;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;

/// The variable that tells a worker its slot and generation, `SLOT:GENERATION`
/// (and its scoreboard record, `:RECORD`).
pub const WORKER_ENV: &str = "HERDER_WORKER";
/// The variable that tells a worker where its channel is: `ADDR TOKEN NAMES`, the
/// supervisor's loopback address, the token to present, and the names of the
/// listeners that follow, separated by `:`.
pub(crate) const CHANNEL_ENV: &str = "HERDER_WORKER_CHANNEL";
/// The variable naming the accept lock's mutex.
pub(crate) const LOCK_ENV: &str = "HERDER_ACCEPT_MUTEX";
/// The variable naming the scoreboard's shared memory.
pub(crate) const SCOREBOARD_ENV: &str = "HERDER_SCOREBOARD";

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
