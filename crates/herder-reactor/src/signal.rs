//! Signals as events.

/// A signal a [`Reactor`](crate::Reactor) can deliver as [`Event::Signal`](crate::Event::Signal).
///
/// # Portability
///
/// Unix only for now; on Windows [`Reactor::watch_signals`](crate::Reactor::watch_signals)
/// returns [`std::io::ErrorKind::Unsupported`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Signal {
    /// `SIGCHLD`: a child process exited or stopped.
    Child,
    /// `SIGTERM`: stop gracefully.
    Terminate,
    /// `SIGINT`: interrupted from the terminal.
    Interrupt,
    /// `SIGHUP`: reload.
    Hangup,
    /// `SIGTTIN`: one worker more, by herder's convention.
    TtyIn,
    /// `SIGTTOU`: one worker fewer, by herder's convention.
    TtyOut,
    /// `SIGUSR1`.
    User1,
    /// `SIGUSR2`.
    User2,
}

impl Signal {
    /// Every signal this type names.
    pub const ALL: [Signal; 8] = [
        Signal::Child,
        Signal::Terminate,
        Signal::Interrupt,
        Signal::Hangup,
        Signal::TtyIn,
        Signal::TtyOut,
        Signal::User1,
        Signal::User2,
    ];

    /// The signal's number on this system.
    #[cfg(unix)]
    pub fn as_raw(self) -> i32 {
        match self {
            Signal::Child => libc::SIGCHLD,
            Signal::Terminate => libc::SIGTERM,
            Signal::Interrupt => libc::SIGINT,
            Signal::Hangup => libc::SIGHUP,
            Signal::TtyIn => libc::SIGTTIN,
            Signal::TtyOut => libc::SIGTTOU,
            Signal::User1 => libc::SIGUSR1,
            Signal::User2 => libc::SIGUSR2,
        }
    }

    /// The signal with number `raw`, if this type names it.
    #[cfg(unix)]
    pub fn from_raw(raw: i32) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.as_raw() == raw)
    }
}
