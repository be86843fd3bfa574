//! systemd integration for a supervisor: socket activation (`LISTEN_FDS`) and the
//! `sd_notify` protocol (`NOTIFY_SOCKET`), written against the documented protocol
//! without libsystemd.
//!
//! A [`Pool`](crate::Pool) speaks `sd_notify` by itself when `NOTIFY_SOCKET` is set
//! (see [`Config::systemd_notify`](crate::Config::systemd_notify)): `READY=1` once
//! every slot has a ready worker, `RELOADING=1` with `MONOTONIC_USEC` during a rolling
//! restart and `READY=1` after it, `STOPPING=1` at a graceful stop, `STATUS=` with the
//! worker counts, and `WATCHDOG=1` at half the `WATCHDOG_USEC` interval.

use crate::Error;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static ACTIVATED: AtomicBool = AtomicBool::new(false);

/// The control socket inherited from a supervisor being upgraded, until
/// [`Pool::listen_control`](crate::Pool::listen_control) takes it.
static CONTROL: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// The name of the inherited control socket in `LISTEN_FDNAMES` during an upgrade.
pub(crate) const CONTROL_NAME: &str = "herder-control";

/// The channel on which a supervisor being upgraded moves its workers' live
/// connections to this one, until [`Pool::new`](crate::Pool::new) takes it.
static MOVES: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// Its name in `LISTEN_FDNAMES` during an upgrade.
pub(crate) const MOVES_NAME: &str = "herder-moves";

/// Where a new supervisor reports its readiness to the one upgrading to it.
pub(crate) const UPGRADE_ENV: &str = "HERDER_UPGRADE_READY";

/// The listening sockets systemd passed to this process (socket activation), with
/// their names from `LISTEN_FDNAMES` (`"unknown"` without it).
///
/// Empty when `LISTEN_PID` is absent or names another process (systemd's rule), and
/// on a second call: the descriptors are adopted once. Each is checked to be an open
/// socket and made close-on-exec. The variables are left in the environment; the
/// pool does not pass them on to its workers.
///
/// A supervisor upgrading to this program ([`Pool::upgrade`](crate::Pool::upgrade))
/// passes its listeners the same way; its control socket, among them, is kept for
/// [`Pool::listen_control`](crate::Pool::listen_control), and the channel its
/// workers' connections move to this one's on for [`Pool::new`](crate::Pool::new):
/// neither is returned here.
///
/// # Errors
///
/// [`Error::Environment`] if the variables are malformed (a count that is not a
/// number, more names than descriptors, …) or a descriptor is missing or not a
/// socket.
///
/// # Examples
///
/// ```no_run
/// use std::net::TcpListener;
/// use std::os::fd::OwnedFd;
///
/// let mut listeners = herder_pool::systemd::listen_fds()?;
/// if listeners.is_empty() {
///     // Not socket-activated: bind ourselves.
///     listeners.push(("http".into(), OwnedFd::from(TcpListener::bind("127.0.0.1:8080")?)));
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn listen_fds() -> Result<Vec<(String, OwnedFd)>, Error> {
    if ACTIVATED.swap(true, Ordering::AcqRel) {
        return Ok(Vec::new());
    }
    let mut fds = crate::worker::listen_fds()?;
    for (name, keep) in [(CONTROL_NAME, &CONTROL), (MOVES_NAME, &MOVES)] {
        if let Some(i) = fds.iter().position(|(n, _)| n == name) {
            let (_, fd) = fds.remove(i);
            if let Ok(mut slot) = keep.lock() {
                *slot = Some(fd);
            }
        }
    }
    for (name, fd) in &fds {
        if !crate::sys::is_socket(fd)
            .map_err(|e| Error::Environment(format!("LISTEN_FDS descriptor {name:?}: {e}")))?
        {
            return Err(Error::Environment(format!(
                "LISTEN_FDS descriptor {name:?} is not a socket"
            )));
        }
    }
    Ok(fds)
}

/// The channel of moving connections inherited during an upgrade.
pub(crate) fn inherited_moves() -> Option<herder_fd::Channel> {
    let fd = MOVES.lock().ok()?.take()?;
    herder_fd::Channel::new(fd).ok()
}

/// The control socket inherited during an upgrade, if it is bound to `path`.
pub(crate) fn inherited_control(
    path: &std::path::Path,
) -> Option<std::os::unix::net::UnixListener> {
    let fd = CONTROL.lock().ok()?.take()?;
    let listener = std::os::unix::net::UnixListener::from(fd);
    let bound = listener.local_addr().ok()?;
    (bound.as_pathname() == Some(path)).then_some(listener)
}

/// A connection to systemd's notification socket (`NOTIFY_SOCKET`).
///
/// # Examples
///
/// ```no_run
/// if let Some(systemd) = herder_pool::systemd::Notifier::from_env()? {
///     systemd.notify("READY=1\nSTATUS=serving")?;
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    target: std::os::unix::net::SocketAddr,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// The notification socket from `NOTIFY_SOCKET` (a path, or `@name` for an
    /// abstract socket on Linux), and the watchdog interval from `WATCHDOG_USEC` if
    /// `WATCHDOG_PID` is absent or this process. `None` when `NOTIFY_SOCKET` is not
    /// set.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a malformed variable, `Unsupported` for an abstract socket
    /// outside Linux, or the error of creating the socket.
    pub fn from_env() -> io::Result<Option<Notifier>> {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
        let target = address(&path).map_err(|e| bad(format!("NOTIFY_SOCKET: {e}")))?;
        let watchdog = match std::env::var("WATCHDOG_USEC") {
            Err(_) => None,
            Ok(usec) => {
                let ours = std::env::var("WATCHDOG_PID").map_or(true, |p| {
                    p.parse::<u32>().ok() == Some(crate::sys::getpid())
                });
                let usec: u64 = usec
                    .parse()
                    .ok()
                    .filter(|&u| u > 0)
                    .ok_or_else(|| bad(format!("WATCHDOG_USEC is not a count: {usec:?}")))?;
                ours.then(|| Duration::from_micros(usec))
            }
        };
        Ok(Some(Notifier {
            socket: UnixDatagram::unbound()?,
            target,
            watchdog,
        }))
    }

    /// A notifier for the datagram socket at `path`, without a watchdog.
    pub(crate) fn to_path(path: &std::path::Path) -> io::Result<Notifier> {
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            target: std::os::unix::net::SocketAddr::from_pathname(path)?,
            watchdog: None,
        })
    }

    /// Sends `state`: newline-separated `KEY=VALUE` assignments, as `sd_notify(3)`.
    ///
    /// # Errors
    ///
    /// What `sendto` returns (`ECONNREFUSED` once systemd is gone, say).
    pub fn notify(&self, state: &str) -> io::Result<()> {
        self.socket.send_to_addr(state.as_bytes(), &self.target)?;
        Ok(())
    }

    /// Hands `fds` to systemd's file descriptor store (`FDSTORE=1`) under `name`
    /// (`FDNAME=`): systemd keeps them while the service restarts and passes them to
    /// the next start with `LISTEN_FDS` and `LISTEN_FDNAMES`, as if socket-activated
    /// ([`listen_fds`]). A listening socket stored so survives its supervisor: the
    /// connections made while none runs wait in its backlog. systemd keeps them only
    /// if the unit sets `FileDescriptorStoreMax=`; otherwise it ignores them.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a name systemd refuses (empty, longer than 255 bytes, or
    /// with anything but printable ASCII other than `:`), or what `sendmsg` returns.
    #[doc(alias = "FDSTORE")]
    pub fn store_fds(&self, name: &str, fds: &[std::os::fd::BorrowedFd<'_>]) -> io::Result<()> {
        if name.is_empty()
            || name.len() > 255
            || !name.chars().all(|c| c.is_ascii_graphic() && c != ':')
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a descriptor name systemd takes: {name:?}"),
            ));
        }
        // Descriptors go with `sendmsg`, on a socket connected to systemd's.
        let socket = UnixDatagram::unbound()?;
        socket.connect_addr(&self.target)?;
        let msg = format!("FDSTORE=1\nFDNAME={name}");
        herder_fd::send_fds(&socket, &[io::IoSlice::new(msg.as_bytes())], fds)?;
        Ok(())
    }

    /// The watchdog interval systemd expects `WATCHDOG=1` within, if it set one for
    /// this process; ping at half of it.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }
}

fn address(path: &std::ffi::OsStr) -> io::Result<std::os::unix::net::SocketAddr> {
    use std::os::unix::ffi::OsStrExt;
    match path.as_bytes() {
        [b'/', ..] => std::os::unix::net::SocketAddr::from_pathname(path),
        [b'@', name @ ..] => abstract_address(name),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "neither an absolute path nor @name",
        )),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_address(name: &[u8]) -> io::Result<std::os::unix::net::SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_address(_: &[u8]) -> io::Result<std::os::unix::net::SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets exist on Linux only",
    ))
}

/// What the pool told systemd so far.
#[derive(Debug)]
pub(crate) struct Reporter {
    pub(crate) notifier: Notifier,
    ready: bool,
    reloading: bool,
    stopping: bool,
    status: String,
}

/// The pool's state as `sd_notify` reports it.
pub(crate) struct Snapshot {
    pub(crate) ready: usize,
    pub(crate) slots: usize,
    /// No slot is still starting its first worker or waiting to restart one.
    pub(crate) settled: bool,
    pub(crate) reloading: bool,
    pub(crate) stopping: bool,
    pub(crate) generation: u64,
    pub(crate) processes: usize,
}

impl Reporter {
    pub(crate) fn new(notifier: Notifier) -> Reporter {
        Reporter {
            notifier,
            ready: false,
            reloading: false,
            stopping: false,
            status: String::new(),
        }
    }

    /// Tells systemd what changed since the last call. Failures are ignored, as
    /// `sd_notify` does: a supervisor does not stop serving because systemd went.
    pub(crate) fn update(&mut self, s: &Snapshot) {
        let mut msg = String::new();
        let status = if s.stopping {
            format!("stopping: {} worker processes left", s.processes)
        } else if s.reloading {
            format!(
                "reloading to generation {}: {} of {} workers ready",
                s.generation, s.ready, s.slots
            )
        } else {
            format!(
                "{} of {} workers ready, generation {}",
                s.ready, s.slots, s.generation
            )
        };
        if s.stopping {
            if !self.stopping {
                self.stopping = true;
                msg.push_str("STOPPING=1\n");
            }
        } else if s.reloading && !self.reloading {
            self.reloading = true;
            let usec = crate::sys::monotonic().as_micros();
            msg.push_str(&format!("RELOADING=1\nMONOTONIC_USEC={usec}\n"));
        } else if !s.reloading && self.reloading {
            self.reloading = false;
            msg.push_str("READY=1\n");
        } else if !self.ready && s.settled && s.ready > 0 {
            self.ready = true;
            msg.push_str(&format!("READY=1\nMAINPID={}\n", crate::sys::getpid()));
        }
        if status != self.status {
            msg.push_str(&format!("STATUS={status}\n"));
            self.status = status;
        }
        if !msg.is_empty() {
            let _ = self.notifier.notify(msg.trim_end());
        }
    }
}
