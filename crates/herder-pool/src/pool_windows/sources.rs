//! What the caller adds to the pool's loop on Windows: sources of its own (typed
//! with [`Pool::watch`], or boxed with [`Pool::add_source`]) and timers, on
//! `crate::watch`'s shared functions, and hand-offs over a worker's channel. The
//! same signatures as on Unix.

use super::{Pool, Watched as Entry};
use crate::Error;
use herder_fd::Handoff;
use std::os::windows::io::AsSocket;

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
}

crate::watch::caller_sources!(Entry);
