//! The worker's side on Windows: the channel it connects to the supervisor (with
//! the token from its environment), the listeners it receives there, its scorecard,
//! the hand-off connection, and the accept lock (a named mutex).

use super::Parts;
use crate::error::Error;
use herder_fd::Channel;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;

/// The variable that tells a worker where its channel is: `ADDR TOKEN NAMES`, the
/// supervisor's loopback address, the token to present, and the names of the
/// listeners that follow, separated by `:`.
pub(crate) const CHANNEL_ENV: &str = "HERDER_WORKER_CHANNEL";
/// The variable naming the accept lock's mutex.
pub(crate) const LOCK_ENV: &str = "HERDER_ACCEPT_MUTEX";
/// The variable naming the scoreboard's shared memory.
pub(crate) const SCOREBOARD_ENV: &str = "HERDER_SCOREBOARD";
/// The variable naming the supervisor's pid: the process the worker duplicates the
/// connections it moves for.
pub(crate) const SUPERVISOR_ENV: &str = "HERDER_SUPERVISOR";

/// Adopts what the supervisor hands worker `slot` (its record `record`): connects
/// the channel, receives the listeners, connects the hand-off connection.
pub(super) fn adopt(_slot: usize, record: Option<usize>) -> Result<Parts, Error> {
    let scorecard = match (record, std::env::var(SCOREBOARD_ENV)) {
        (Some(index), Ok(name)) => {
            let board = crate::scoreboard::Board::open(&name)
                .map_err(|e| Error::Environment(format!("scoreboard: {e}")))?;
            crate::Scorecard::new(Arc::new(board), index)
        }
        _ => None,
    };
    let spec = std::env::var(CHANNEL_ENV)
        .map_err(|_| Error::Environment(format!("{CHANNEL_ENV} is missing")))?;
    let supervisor = std::env::var(SUPERVISOR_ENV)
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let (channel, listeners, (addr, token)) = connect(&spec, CHANNEL_ENV, "", supervisor)?;
    // The hand-off connection: sockets from the supervisor, acknowledged.
    let io = |what: &'static str| move |source| Error::Io { what, source };
    let stream = TcpStream::connect(addr).map_err(io("connecting the hand-off channel"))?;
    let _ = stream.set_nodelay(true);
    let mut handoff = Channel::new(stream, 0);
    handoff
        .send(format!("{token}/h").as_bytes())
        .map_err(io("presenting the channel's token"))?;
    Ok(Parts {
        channel: Some(channel),
        fds: listeners.into_iter().map(|(n, l)| (n, l.into())).collect(),
        scorecard,
        handoff: Some(handoff),
    })
}

/// Connects to a supervisor's rendezvous as `spec` says (`ADDR TOKEN NAMES`, from
/// the variable `var`), presents the token with `suffix`, and receives the named
/// listeners: a worker's channel, or an upgrade's new supervisor's. The channel
/// (whose sockets are duplicated for process `peer`), the listeners, and the
/// address and token.
pub(crate) fn connect(
    spec: &str,
    var: &str,
    suffix: &str,
    peer: u32,
) -> Result<(Channel, Vec<(String, TcpListener)>, (SocketAddr, String)), Error> {
    let bad = || Error::Environment(format!("{var} is malformed"));
    let mut parts = spec.splitn(3, ' ');
    let (Some(addr), Some(token), names) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let addr: SocketAddr = addr.parse().map_err(|_| bad())?;
    let io = |what: &'static str| move |source| Error::Io { what, source };
    let stream = TcpStream::connect(addr).map_err(io("connecting to the supervisor"))?;
    // A process this one starts must not hold it: its end tells the supervisor this
    // one is gone.
    herder_reactor::os::windows::no_inherit(&stream).map_err(io("connecting to the supervisor"))?;
    let _ = stream.set_nodelay(true);
    let mut channel = Channel::from_tcp(stream, peer);
    channel
        .send(format!("{token}{suffix}").as_bytes())
        .map_err(io("presenting the token"))?;
    let count = names.map_or(0, |n| n.split(':').filter(|n| !n.is_empty()).count());
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        let got = channel
            .recv_socket()
            .map_err(io("receiving a listener"))?
            .ok_or_else(|| Error::Environment("the supervisor closed the channel".into()))?;
        let name = String::from_utf8_lossy(&got.data).into_owned();
        let herder_fd::Socket::TcpListener(listener) = got.socket else {
            return Err(Error::Environment(format!(
                "{name:?} is not a TCP listener"
            )));
        };
        listeners.push((name, listener));
    }
    Ok((channel, listeners, (addr, token.to_string())))
}

/// The pool's accept lock; `None` without one.
pub(super) fn accept_lock() -> io::Result<Option<AcceptLock>> {
    match std::env::var(LOCK_ENV) {
        Ok(name) => Ok(Some(AcceptLock {
            mutex: crate::sys::open_mutex(&name)?,
            held: false,
            recovered: 0,
        })),
        Err(_) => Ok(None),
    }
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
