//! The workers' channels on Windows: loopback connections to the rendezvous, each
//! watched until it presents its token, then read and written without blocking in
//! the pool's loop.

use super::{HELLO_WAIT, Hello, MAX_HELLOS, Pool, PoolEvent, READ_BATCH, Watched};
use crate::Error;
use herder_fd::{Channel, Handoff, Message};
use herder_reactor::{Interest, Key, Mode};
use std::io;
use std::time::Instant;

impl Pool {
    /// Takes the connections of starting workers, each watched until it presents
    /// its token ([`HELLO_WAIT`] at most).
    pub(super) fn accept_channels(&mut self) {
        loop {
            let Some(Watched::Rendezvous(rendezvous)) = self.reactor.get(self.rendezvous.0) else {
                return;
            };
            // Errors other than `WouldBlock` (a connection reset before it was taken)
            // concern that connection alone.
            let Ok((stream, _)) = rendezvous.accept() else {
                return;
            };
            // A worker started later must not inherit another's channel: its end
            // of file is how that worker learns the supervisor is gone.
            if self.hellos.len() >= MAX_HELLOS
                || herder_reactor::os::windows::no_inherit(&stream).is_err()
            {
                continue;
            }
            let Ok(reader) = stream.set_nonblocking(true).and_then(|()| {
                let _ = stream.set_nodelay(true);
                stream.try_clone()
            }) else {
                continue;
            };
            let Ok(key) =
                self.reactor
                    .register(Watched::Conn(stream), Interest::READABLE, Mode::Level)
            else {
                continue;
            };
            self.hellos.insert(
                key,
                Hello {
                    channel: Channel::new(reader, 0),
                    until: Instant::now() + HELLO_WAIT,
                },
            );
        }
    }

    /// Reads the token of connection `key`; once it has one, gives the connection to
    /// the worker that presented it, or closes it.
    pub(super) fn on_hello(&mut self, key: Key, events: &mut Vec<PoolEvent>) {
        let Some(hello) = self.hellos.get_mut(&key) else {
            return;
        };
        let token = match hello.channel.recv() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Ok(Some(m)) => Some(m.into_payload()),
            _ => None,
        };
        // The hello's reader read no further than the token's frame: a channel made
        // afresh on the socket finds the next frame whole.
        self.hellos.remove(&key);
        let adopted = token.is_some_and(|t| self.adopt_channel(key, &t, events));
        if !adopted {
            let _ = self.reactor.deregister(key);
        }
    }

    /// Connection `key` presented `token`: if it is a starting worker's, hands over
    /// the listeners and reads the channel from now on. Whether it was taken.
    pub(super) fn adopt_channel(
        &mut self,
        key: Key,
        token: &[u8],
        events: &mut Vec<PoolEvent>,
    ) -> bool {
        // The hand-off connection presents the token with "/h" after it.
        let (token, handoff) = match token.strip_suffix(b"/h") {
            Some(t) => (t, true),
            None => (token, false),
        };
        let Some((&pid, p)) = self.procs.iter_mut().find(|(_, p)| {
            let free = if handoff {
                p.handoff.is_none()
            } else {
                p.channel.is_none()
            };
            free && !p.token.is_empty() && p.token.as_bytes() == token
        }) else {
            return false;
        };
        if handoff {
            // Not watched: read only for each hand-off's acknowledgement, blocking and
            // bounded, so that a worker that stops acknowledging cannot hang the pool.
            let Ok(Watched::Conn(stream)) = self.reactor.deregister(key) else {
                return true;
            };
            // (Anything else under the key would not be a hello's.)
            let blocking = stream
                .set_nonblocking(false)
                .and_then(|()| stream.set_read_timeout(Some(HELLO_WAIT)));
            if blocking.is_err() {
                return true;
            }
            p.handoff = Some(Channel::new(stream, pid));
            if p.channel.is_some() {
                // Each connection once.
                p.token.clear();
            }
            if std::mem::take(&mut p.ready_pending) {
                let slot = p.slot;
                self.mark_ready(pid, slot, events);
            }
            return true;
        }
        if p.handoff.is_some() {
            p.token.clear();
        }
        let Some(Ok(stream)) = self.reactor.get(key).map(|w| match w {
            Watched::Conn(c) => c
                .try_clone()
                .and_then(|s| s.set_nonblocking(true).map(|()| s)),
            _ => Err(io::ErrorKind::InvalidInput.into()),
        }) else {
            return false;
        };
        let mut channel = Channel::new(stream, pid);
        // Each listener as a message of its own; the pool keeps its copies for good,
        // so nothing waits for the worker's word that it has its own.
        for (i, (name, listener)) in self.listeners.iter().enumerate() {
            let meta = Handoff {
                id: i as u64,
                peer: None,
                data: name.as_bytes(),
            };
            if let Err(source) = channel.send_sockets(&[(listener, meta)]) {
                let slot = p.slot;
                events.push(PoolEvent::SpawnFailed {
                    slot,
                    error: Error::Channel { slot, source },
                });
                let _ = p.child.kill();
                return false;
            }
        }
        p.channel = Some((channel, key));
        self.conns.insert(key, pid);
        self.watch_output(pid);
        true
    }

    /// Reads what worker `pid` sent (up to [`READ_BATCH`] messages); at the end of
    /// its channel, stops watching it.
    pub(super) fn read_channel(&mut self, pid: u32, events: &mut Vec<PoolEvent>) {
        for _ in 0..READ_BATCH {
            let Some((ch, _)) = self.procs.get_mut(&pid).and_then(|p| p.channel.as_mut()) else {
                return;
            };
            match ch.recv() {
                Ok(Some(message)) => self.on_message(pid, message, events),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // The end, or a broken frame: nothing more can be said to it, and its
                // exit follows (`reap`).
                Ok(None) | Err(_) => {
                    self.close_channel(pid);
                    return;
                }
            }
        }
    }

    /// Writes what is left of a message to worker `pid`.
    pub(super) fn flush_channel(&mut self, pid: u32) {
        let Some((ch, _)) = self.procs.get_mut(&pid).and_then(|p| p.channel.as_mut()) else {
            return;
        };
        match ch.flush() {
            Ok(()) => self.watch_output(pid),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => self.close_channel(pid),
        }
    }

    /// Watches worker `pid`'s channel for writability while part of a message waits.
    pub(super) fn watch_output(&mut self, pid: u32) {
        let Some((ch, key)) = self.procs.get(&pid).and_then(|p| p.channel.as_ref()) else {
            return;
        };
        let interest = match ch.has_pending_output() {
            true => Interest::BOTH,
            false => Interest::READABLE,
        };
        let key = *key;
        if self.reactor.modify(key, interest, Mode::Level).is_err() {
            self.close_channel(pid);
        }
    }

    /// Forgets worker `pid`'s channel.
    pub(super) fn close_channel(&mut self, pid: u32) {
        let Some((_, key)) = self.procs.get_mut(&pid).and_then(|p| p.channel.take()) else {
            return;
        };
        self.conns.remove(&key);
        let _ = self.reactor.deregister(key);
    }

    /// A message from worker `pid`: its readiness, its load, or the application's.
    pub(super) fn on_message(&mut self, pid: u32, message: Message, events: &mut Vec<PoolEvent>) {
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        let slot = p.slot;
        if message.payload() == crate::message::READY {
            if !p.ready && !p.ready_pending {
                if p.handoff.is_some() {
                    self.mark_ready(pid, slot, events);
                } else {
                    p.ready_pending = true;
                }
            }
        } else if crate::message::is_pool_message(message.payload()) {
            // Another of the pool's own: nothing for a worker to send.
        } else if crate::message::is_reserved(message.payload()) {
            use crate::message::Receipt;
            match Receipt::decode(message.payload()) {
                Some(Receipt::Ack(upto)) => {
                    events.push(PoolEvent::Acknowledged { slot, pid, upto })
                }
                Some(Receipt::Refused(ids)) => events.push(PoolEvent::Refused { slot, pid, ids }),
                // Reserved, and not what the worker side of the pool sends.
                _ => tracing::warn!(slot, pid, "a malformed pool message; ignored"),
            }
        } else {
            events.push(PoolEvent::Message { slot, message });
        }
    }
}
