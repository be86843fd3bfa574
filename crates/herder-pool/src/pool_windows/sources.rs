//! What the caller adds to the pool's loop on Windows: sockets and timers of its
//! own, and hand-offs over a worker's channel. The same signatures as on Unix.

use super::{Pool, Watched};
use crate::Error;
use crate::watch::Watched as Typed;
use herder_fd::Handoff;
use herder_reactor::{Interest, Key, Mode, TimerId};
use std::io;
use std::os::windows::io::AsSocket;
use std::time::{Duration, Instant};

impl Pool {
    /// Watches `source` in the pool's event loop, keeping its type: the handle gets
    /// it back as a `&T` ([`watched`](Self::watched)), a `&mut T`
    /// ([`watched_mut`](Self::watched_mut)) or a `T` ([`unwatch`](Self::unwatch)),
    /// and names its readiness in [`PoolEvent::Other`](crate::PoolEvent::Other)
    /// ([`Typed::key`]).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if registering fails.
    pub fn watch<T: herder_reactor::Source>(
        &mut self,
        source: T,
        interest: Interest,
        mode: Mode,
    ) -> Result<Typed<T>, Error> {
        self.reactor
            .register(Watched::User(Box::new(source)), interest, mode)
            .map(Typed::new)
            .map_err(|source| Error::Io {
                what: "watching a source",
                source,
            })
    }

    /// The source `watched` names, if it is still watched.
    pub fn watched<T: herder_reactor::Source>(&self, watched: Typed<T>) -> Option<&T> {
        match self.reactor.get(watched.key())? {
            Watched::User(u) => (**u).as_any().downcast_ref(),
            _ => None,
        }
    }

    /// The source `watched` names, mutably, if it is still watched.
    pub fn watched_mut<T: herder_reactor::Source>(&mut self, watched: Typed<T>) -> Option<&mut T> {
        // SAFETY: the pool replaces no source; the caller gets a `&mut T`, not the
        // slot, and cannot close the socket the reactor watches without giving the
        // `T` up.
        match unsafe { self.reactor.get_mut(watched.key()) }? {
            Watched::User(u) => (**u).as_any_mut().downcast_mut(),
            _ => None,
        }
    }

    /// Stops watching the source `watched` names and gives it back.
    ///
    /// # Errors
    ///
    /// [`Error::Io`]: `NotFound` if it is no longer watched.
    pub fn unwatch<T: herder_reactor::Source>(&mut self, watched: Typed<T>) -> Result<T, Error> {
        let gone = || not_a_source("unwatching a source");
        if self.watched(watched).is_none() {
            return Err(gone());
        }
        match self.reactor.deregister(watched.key()) {
            Ok(Watched::User(u)) => u.into_any().downcast().map(|t| *t).map_err(|_| gone()),
            _ => Err(gone()),
        }
    }

    /// Hands several sockets to the ready worker of `slot` in one message over its
    /// channel (herder-fd's `Channel::send_sockets`), without waiting: the worker
    /// reads them with `Message::into_sockets` ([`WorkerLink`](crate::WorkerLink)
    /// does, and acknowledges them, [`PoolEvent::Acknowledged`]). Keep each socket
    /// open until then: on Windows a socket whose last handle closes before the
    /// worker rebuilt it is gone. (The [`Dispatcher`](crate::Dispatcher) does.) `Ok`
    /// names the worker's pid.
    ///
    /// # Errors
    ///
    /// [`Error::NoWorker`] if the slot has no ready worker (or it drains);
    /// [`Error::Channel`] if sending fails (`WouldBlock` when its channel is full;
    /// more than `MAX_SOCKETS_PER_MESSAGE` sockets are refused).
    pub fn send_sockets<S: herder_fd::Transfer + AsSocket>(
        &mut self,
        slot: usize,
        items: &[(&S, Handoff<'_>)],
    ) -> Result<u32, Error> {
        let (pid, p) = self.current_proc(slot)?;
        if !p.ready || p.draining {
            return Err(Error::NoWorker(slot));
        }
        let (ch, _) = p.channel.as_mut().ok_or(Error::NoWorker(slot))?;
        let sent = ch.send_sockets(items);
        self.watch_output(pid);
        sent.map_err(|source| Error::Channel { slot, source })?;
        Ok(pid)
    }

    /// Watches a source of the caller's (a socket) in the pool's event loop; its
    /// readiness comes back as [`PoolEvent::Other`].
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if registering fails.
    pub fn add_source(
        &mut self,
        source: Box<dyn herder_reactor::Source>,
        interest: Interest,
        mode: Mode,
    ) -> Result<Key, Error> {
        self.reactor
            .register(Watched::User(crate::watch::boxed(source)), interest, mode)
            .map_err(|source| Error::Io {
                what: "watching a source",
                source,
            })
    }

    /// Changes what a source of the caller's is watched for.
    ///
    /// # Errors
    ///
    /// [`Error::Io`]: `NotFound` if `key` is not a source added with
    /// [`add_source`](Self::add_source).
    pub fn modify_source(&mut self, key: Key, interest: Interest, mode: Mode) -> Result<(), Error> {
        let what = "changing a source";
        self.user_source(key, what)?;
        self.reactor
            .modify(key, interest, mode)
            .map_err(|source| Error::Io { what, source })
    }

    /// Stops watching a source of the caller's and gives it back.
    ///
    /// # Errors
    ///
    /// [`Error::Io`]: `NotFound` if `key` is not a source added with
    /// [`add_source`](Self::add_source).
    pub fn remove_source(&mut self, key: Key) -> Result<Box<dyn herder_reactor::Source>, Error> {
        let what = "removing a source";
        self.user_source(key, what)?;
        match self.reactor.deregister(key) {
            Ok(Watched::User(s)) => Ok(crate::watch::unboxed(s)),
            Ok(_) => Err(not_a_source(what)),
            Err(source) => Err(Error::Io { what, source }),
        }
    }

    /// A source of the caller's.
    pub fn source(&self, key: Key) -> Option<&dyn herder_reactor::Source> {
        match self.reactor.get(key)? {
            Watched::User(u) => Some(u.as_source()),
            _ => None,
        }
    }

    /// Starts a timer of the caller's; it comes back as [`PoolEvent::Other`].
    pub fn add_timer(&mut self, deadline: Instant, repeat: Option<Duration>) -> TimerId {
        self.reactor.add_timer(deadline, repeat)
    }

    /// `NotFound` unless `key` is a source of the caller's.
    fn user_source(&self, key: Key, what: &'static str) -> Result<(), Error> {
        match self.reactor.get(key) {
            Some(Watched::User(_)) => Ok(()),
            _ => Err(not_a_source(what)),
        }
    }
}

fn not_a_source(what: &'static str) -> Error {
    Error::Io {
        what,
        source: io::Error::new(
            io::ErrorKind::NotFound,
            "not a source added with add_source",
        ),
    }
}
