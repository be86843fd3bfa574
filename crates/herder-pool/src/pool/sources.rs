//! What the caller adds to the pool's loop: sources of its own (typed with
//! [`Pool::watch`], or boxed with [`Pool::add_source`]) and timers. The same
//! signatures on every platform.

use super::{Pool, Source};
use crate::Error;
#[cfg(doc)]
use crate::PoolEvent;
use crate::watch::Watched;
use herder_reactor::{Interest, Key, Mode, TimerId};
use std::io;
use std::time::{Duration, Instant};

impl Pool {
    /// Watches `source` in the pool's event loop, keeping its type: the handle gets
    /// it back as a `&T` ([`watched`](Self::watched)), a `&mut T`
    /// ([`watched_mut`](Self::watched_mut)) or a `T` ([`unwatch`](Self::unwatch)),
    /// and names its readiness in [`PoolEvent::Other`] ([`Watched::key`]).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if registering fails.
    pub fn watch<T: herder_reactor::Source>(
        &mut self,
        source: T,
        interest: Interest,
        mode: Mode,
    ) -> Result<Watched<T>, Error> {
        self.reactor
            .register(Source::User(Box::new(source)), interest, mode)
            .map(Watched::new)
            .map_err(Error::io("watching a source"))
    }

    /// The source `watched` names, if it is still watched.
    pub fn watched<T: herder_reactor::Source>(&self, watched: Watched<T>) -> Option<&T> {
        match self.reactor.get(watched.key())? {
            Source::User(u) => (**u).as_any().downcast_ref(),
            _ => None,
        }
    }

    /// The source `watched` names, mutably, if it is still watched.
    pub fn watched_mut<T: herder_reactor::Source>(
        &mut self,
        watched: Watched<T>,
    ) -> Option<&mut T> {
        // SAFETY: the pool replaces no source; the caller gets a `&mut T`, not the
        // slot, and cannot close the descriptor the reactor watches without giving
        // the `T` up.
        match unsafe { self.reactor.get_mut(watched.key()) }? {
            Source::User(u) => (**u).as_any_mut().downcast_mut(),
            _ => None,
        }
    }

    /// Stops watching the source `watched` names and gives it back.
    ///
    /// # Errors
    ///
    /// [`Error::Io`]: `NotFound` if it is no longer watched.
    pub fn unwatch<T: herder_reactor::Source>(&mut self, watched: Watched<T>) -> Result<T, Error> {
        let gone = || Error::Io {
            what: "unwatching a source",
            source: io::Error::new(io::ErrorKind::NotFound, "no longer watched"),
        };
        if self.watched(watched).is_none() {
            return Err(gone());
        }
        match self.reactor.deregister(watched.key()) {
            Ok(Source::User(u)) => u.into_any().downcast().map(|t| *t).map_err(|_| gone()),
            _ => Err(gone()),
        }
    }

    /// Watches a source of the caller's in the pool's event loop; its readiness comes
    /// back as [`PoolEvent::Other`]. The supervisor of the hand-off model watches its
    /// listener this way.
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
            .register(Source::User(crate::watch::boxed(source)), interest, mode)
            .map_err(Error::io("watching a source"))
    }

    /// Changes what a source of the caller's is watched for.
    ///
    /// # Errors
    ///
    /// [`Error::Io`]: `NotFound` if `key` is not a source added with
    /// [`add_source`](Self::add_source).
    pub fn modify_source(&mut self, key: Key, interest: Interest, mode: Mode) -> Result<(), Error> {
        if !matches!(self.reactor.get(key), Some(Source::User(_))) {
            return Err(Error::Io {
                what: "changing a source",
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    "not a source added with add_source",
                ),
            });
        }
        self.reactor
            .modify(key, interest, mode)
            .map_err(Error::io("changing a source"))
    }

    /// Stops watching a source of the caller's and gives it back.
    ///
    /// # Errors
    ///
    /// [`Error::Io`]: `NotFound` if `key` is not a source added with
    /// [`add_source`](Self::add_source).
    pub fn remove_source(&mut self, key: Key) -> Result<Box<dyn herder_reactor::Source>, Error> {
        let not_found = || Error::Io {
            what: "removing a source",
            source: io::Error::new(
                io::ErrorKind::NotFound,
                "not a source added with add_source",
            ),
        };
        if !matches!(self.reactor.get(key), Some(Source::User(_))) {
            return Err(not_found());
        }
        match self.reactor.deregister(key) {
            Ok(Source::User(s)) => Ok(crate::watch::unboxed(s)),
            Ok(_) => Err(not_found()),
            Err(e) => Err(Error::Io {
                what: "removing a source",
                source: e,
            }),
        }
    }

    /// A source of the caller's.
    pub fn source(&self, key: Key) -> Option<&dyn herder_reactor::Source> {
        match self.reactor.get(key)? {
            Source::User(u) => Some(u.as_source()),
            _ => None,
        }
    }

    /// Starts a timer of the caller's; it comes back as [`PoolEvent::Other`].
    pub fn add_timer(&mut self, deadline: Instant, repeat: Option<Duration>) -> TimerId {
        self.reactor.add_timer(deadline, repeat)
    }
}
