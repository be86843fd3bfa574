//! What the caller adds to the pool's loop on Windows: sockets and timers of its
//! own, and hand-offs over a worker's channel. The same signatures as on Unix.

use super::{Pool, Watched};
use crate::Error;
use herder_fd::Handoff;
use herder_reactor::{Interest, Key, Mode, TimerId};
use std::io;
use std::os::windows::io::AsSocket;
use std::time::{Duration, Instant};

impl Pool {
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
            .register(Watched::User(source), interest, mode)
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
            Ok(Watched::User(s)) => Ok(s),
            Ok(_) => Err(not_a_source(what)),
            Err(source) => Err(Error::Io { what, source }),
        }
    }

    /// A source of the caller's.
    pub fn source(&self, key: Key) -> Option<&dyn herder_reactor::Source> {
        match self.reactor.get(key)? {
            Watched::User(u) => Some(&**u),
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
