//! Linux-only registration: `EPOLLEXCLUSIVE`.

use crate::{Key, Reactor, Source};
use std::io;

mod sealed {
    pub trait Sealed {}
}

impl<S: Source> sealed::Sealed for Reactor<S> {}
impl<Svc: crate::Service + 'static> sealed::Sealed for crate::Server<Svc> {}

/// Linux extensions of [`Reactor`].
pub trait ReactorExt<S>: sealed::Sealed {
    /// Registers a listening socket for readability with `EPOLLEXCLUSIVE`: when
    /// several processes' reactors watch the same listener, a new connection wakes one
    /// (or a few) of them instead of all. Level-triggered.
    ///
    /// The kernel does not allow such a registration to be modified; the reactor
    /// emulates what makes sense: [`Reactor::modify`] with [`Interest::NONE`]
    /// pauses it, and with [`Interest::READABLE`] resumes it (at the tail of the
    /// kernel's wake-up queue), under the same key.
    ///
    /// [`Interest::NONE`]: crate::Interest::NONE
    /// [`Interest::READABLE`]: crate::Interest::READABLE
    ///
    /// # Errors
    ///
    /// What `epoll_ctl(2)` returns (`EINVAL` before Linux 4.5).
    ///
    /// # Examples
    ///
    /// ```
    /// use herder_reactor::{Event, Reactor, os::linux::ReactorExt};
    /// use std::net::{TcpListener, TcpStream};
    ///
    /// let listener = TcpListener::bind("127.0.0.1:0")?;
    /// listener.set_nonblocking(true)?;
    /// let addr = listener.local_addr()?;
    /// let mut reactor = Reactor::new()?;
    /// let key = reactor.register_exclusive(listener)?;
    /// let _client = TcpStream::connect(addr)?;
    /// let mut events = Vec::new();
    /// while events.is_empty() {
    ///     reactor.poll(&mut events, Some(std::time::Duration::from_secs(5)))?;
    /// }
    /// assert!(matches!(events[0], Event::Io { key: k, readable: true, .. } if k == key));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[doc(alias = "EPOLLEXCLUSIVE")]
    fn register_exclusive(&mut self, source: S) -> io::Result<Key>;
}

impl<S: Source> ReactorExt<S> for Reactor<S> {
    fn register_exclusive(&mut self, source: S) -> io::Result<Key> {
        let poller = self.poller.clone();
        self.register_with(source, true, |key, source| {
            // SAFETY: the reactor owns `source` and deletes it from the poller before
            // dropping it, as for every registration.
            unsafe { crate::sys::add_exclusive(poller.as_fd(), source.as_fd(), key.0) }
        })
    }
}

/// Linux extensions of [`Server`](crate::Server).
pub trait ServerExt: sealed::Sealed {
    /// Accepts from `listener`, registered with `EPOLLEXCLUSIVE`: of the processes
    /// sharing it, a new connection wakes one instead of all. Every `rearm` the
    /// registration is renewed, which moves this process to the back of the kernel's
    /// wake-up queue: without it, the process that registered first takes nearly every
    /// connection (wake-ups favour the head of the queue). `None` never renews.
    ///
    /// [`Server::pause_listener`] takes it out of the kernel's wait queue and
    /// [`Server::resume_listener`] puts it back, under the same key; it is closed by
    /// [`Server::drain`] like any other.
    ///
    /// [`Server::pause_listener`]: crate::Server::pause_listener
    /// [`Server::resume_listener`]: crate::Server::resume_listener
    /// [`Server::drain`]: crate::Server::drain
    ///
    /// # Errors
    ///
    /// What `epoll_ctl(2)` returns; a [`DRAINING`](crate::DRAINING) error (kind
    /// `Other`) once the server drains. The listener is dropped (closed) on error.
    #[doc(alias = "EPOLLEXCLUSIVE")]
    fn add_exclusive_listener(
        &mut self,
        listener: std::net::TcpListener,
        rearm: Option<std::time::Duration>,
    ) -> io::Result<Key>;
}

impl<Svc: crate::Service + 'static> ServerExt for crate::Server<Svc> {
    fn add_exclusive_listener(
        &mut self,
        listener: std::net::TcpListener,
        rearm: Option<std::time::Duration>,
    ) -> io::Result<Key> {
        self.add_exclusive_listener_inner(listener, rearm)
    }
}
