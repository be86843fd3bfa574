//! The sockets a program is handed at its start.

use crate::{Descriptor, Error};

/// The sockets this program was handed at its start, by name: on Unix systemd's
/// (socket activation, `LISTEN_FDS`) or an upgrading supervisor's, which passes
/// them the same way ([`systemd::listen_fds`](crate::systemd::listen_fds)); on
/// Windows an upgrading supervisor's, duplicated to this process over a loopback
/// connection ([`Pool::upgrade`](crate::Pool::upgrade)). Empty if there are none.
/// Taken once: a second call returns nothing.
///
/// Call it before binding, and bind only what it did not return:
///
/// ```no_run
/// let mut listeners = herder_pool::inherited_sockets()?;
/// if listeners.is_empty() {
///     let l = herder_pool::tcp_listener("127.0.0.1:8080".parse()?)?;
///     listeners.push(("http".into(), l.into()));
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// [`Error::Environment`] if the variables that describe the sockets are
/// malformed, or name something that is not a socket; [`Error::Io`] if the
/// upgrading supervisor cannot be reached (Windows).
pub fn inherited_sockets() -> Result<Vec<(String, Descriptor)>, Error> {
    #[cfg(unix)]
    return crate::systemd::listen_fds();
    #[cfg(windows)]
    return crate::pool::upgrade_sockets();
}
