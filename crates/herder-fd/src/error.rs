//! The errors that are specific to descriptor passing.

use std::io;

/// What went wrong in a descriptor transfer, beyond what the operating system reports
/// on its own.
///
/// Every function of this crate returns [`io::Error`]; the failures listed here travel
/// inside it (see [`Error::of`]) with the [`io::ErrorKind`] given for each variant, so
/// callers that only care about `WouldBlock` or `InvalidData` need not look further.
///
/// Whenever one of these is returned by a receive call, every descriptor that had
/// already arrived with the failed message has been closed: nothing leaks and nothing
/// is half-delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// More descriptors were given for one message than the kernel accepts in one
    /// `sendmsg` ([`MAX_FDS_PER_MESSAGE`](crate::MAX_FDS_PER_MESSAGE)). Refused before any
    /// system call; nothing was sent. Kind: [`io::ErrorKind::InvalidInput`].
    #[error("{count} descriptors in one message; at most {max} are allowed")]
    TooManyFds {
        /// How many were given.
        count: usize,
        /// The per-message limit.
        max: usize,
    },

    /// A message payload is larger than the channel's limit. On send it is refused
    /// before any system call (kind [`io::ErrorKind::InvalidInput`]); on receive the
    /// frame is rejected (kind [`io::ErrorKind::InvalidData`]).
    #[error("message of {len} bytes is larger than the limit of {max} bytes")]
    MessageTooLarge {
        /// The payload length.
        len: usize,
        /// The limit in force.
        max: usize,
    },

    /// The kernel dropped descriptors that were sent (`MSG_CTRUNC`): the receive
    /// buffer had room for fewer descriptors than were attached, or the receiving
    /// process's descriptor table was full (`RLIMIT_NOFILE`). The `received`
    /// descriptors that did arrive have been closed. Kind:
    /// [`io::ErrorKind::InvalidData`].
    #[error(
        "control data truncated: {received} descriptor(s) arrived and were closed, the rest were dropped by the kernel (descriptor table full, or receive buffer too small)"
    )]
    ControlTruncated {
        /// How many descriptors did arrive (and were closed).
        received: usize,
    },

    /// A datagram or sequenced packet was larger than the receive buffer
    /// (`MSG_TRUNC`); its tail was discarded by the kernel, and descriptors attached to
    /// it were closed. Kind: [`io::ErrorKind::InvalidData`].
    #[error("message truncated: it did not fit in the {capacity}-byte receive buffer")]
    PayloadTruncated {
        /// The size of the buffer that was too small.
        capacity: usize,
    },

    /// The bytes on the channel are not a herder-fd frame: a wrong version byte, an
    /// impossible length, or a typed hand-off header that does not parse. Kind:
    /// [`io::ErrorKind::InvalidData`]. On a stream channel this breaks the channel:
    /// later calls return the same error.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),

    /// The frame header announced a number of descriptors other than the number that
    /// arrived with it. The descriptors that did arrive have been closed. Kind:
    /// [`io::ErrorKind::InvalidData`].
    #[error("frame announced {expected} descriptor(s) but {received} arrived")]
    FdCountMismatch {
        /// The number in the frame header.
        expected: usize,
        /// The number that arrived.
        received: usize,
    },
}

impl Error {
    /// The [`Error`] inside an [`io::Error`] returned by this crate, if there is one.
    ///
    /// # Examples
    ///
    /// ```
    /// use herder_fd::Error;
    ///
    /// let e: std::io::Error = Error::TooManyFds { count: 300, max: 253 }.into();
    /// assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    /// assert!(matches!(Error::of(&e), Some(Error::TooManyFds { count: 300, .. })));
    /// assert!(Error::of(&std::io::Error::other("x")).is_none());
    /// ```
    pub fn of(err: &io::Error) -> Option<&Error> {
        err.get_ref()
            .and_then(|inner| inner.downcast_ref::<Error>())
    }

    /// The [`io::ErrorKind`] this error travels with.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Error::TooManyFds { .. } => io::ErrorKind::InvalidInput,
            Error::MessageTooLarge { .. } => io::ErrorKind::InvalidInput,
            _ => io::ErrorKind::InvalidData,
        }
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        io::Error::new(err.kind(), err)
    }
}

/// An [`Error`] with a kind other than its default, for a received frame that is too
/// large (which is bad data, not bad input).
pub(crate) fn invalid_data(err: Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}
