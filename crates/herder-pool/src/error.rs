//! The pool's error type.

use std::io;

/// What failed in the pool, and for which worker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Starting the worker of `slot` failed (`fork`, `execve`, …).
    #[error("spawning the worker of slot {slot}: {source}")]
    Spawn {
        /// The slot.
        slot: usize,
        /// The system's error.
        source: io::Error,
    },
    /// Talking to the worker of `slot` over its channel failed.
    #[error("channel of the worker in slot {slot}: {source}")]
    Channel {
        /// The slot.
        slot: usize,
        /// The underlying error.
        source: io::Error,
    },
    /// The slot does not exist, or has no running worker.
    #[error("no running worker in slot {0}")]
    NoWorker(usize),
    /// The inherited environment is malformed (`LISTEN_FDS`, `LISTEN_FDNAMES`,
    /// `HERDER_WORKER`).
    #[error("inherited environment: {0}")]
    Environment(String),
    /// Any other system error, with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The system's error.
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(what: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io { what, source }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match &e {
            Error::Spawn { source, .. }
            | Error::Channel { source, .. }
            | Error::Io { source, .. } => source.kind(),
            Error::NoWorker(_) => io::ErrorKind::NotFound,
            Error::Environment(_) => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}
