//! Moving live connections: a retired worker's connections forwarded to another
//! worker — or, after an upgrade, to the new supervisor, which forwards them to its
//! own — and each origin told what became of them. The origin keeps its copy of a
//! connection until it hears, so a connection is served by exactly one process at
//! every moment, and one nobody takes stays where it was.

use super::{Pool, TimerFor};
#[cfg(unix)]
use super::{Source, Watch};
use crate::message::{self, MOVE_ID, Receipt};
use crate::moves::Replies as Verdicts;
use herder_fd::{Channel, Handoff, Message, Received, Socket};
use herder_reactor::Key;
#[cfg(unix)]
use herder_reactor::{Interest, Mode};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpStream};
#[cfg(unix)]
use std::os::fd::AsFd;
use std::time::Duration;

/// The origin named for connections that came from the supervisor being upgraded.
pub(super) const UPSTREAM: u32 = 0;

/// How long a send to the new supervisor may wait for room in the channel before
/// its connections stay where they are.
#[cfg(unix)]
const DOWNSTREAM_PATIENCE: Duration = Duration::from_secs(1);

/// How soon replies that found a channel full are tried again.
const REPLY_RETRY: Duration = Duration::from_millis(10);

/// Replies to origins not sent yet, in order.
#[derive(Default)]
pub(super) struct Replies {
    queue: std::collections::VecDeque<(u32, Vec<u8>)>,
    retry: Option<herder_reactor::TimerId>,
}

/// The channel to the new supervisor after an upgrade.
pub(super) struct Downstream {
    pub(super) channel: Channel,
    pub(super) key: Key,
    /// The new supervisor: the target its connections are booked under.
    pub(super) pid: u32,
}

/// One connection on the move: the origin's id for it, its peer, its data (state and
/// unconsumed input) and its socket.
type Moving = (u64, Option<SocketAddr>, Vec<u8>, TcpStream);

/// Whether a message carries connections on the move.
pub(super) fn is_move(msg: &Message) -> bool {
    (msg.descriptor_count() > 0 || msg.lost_fds() > 0)
        && msg
            .handoff_ids()
            .is_ok_and(|ids| !ids.is_empty() && ids.iter().all(|id| id & MOVE_ID != 0))
}

impl Pool {
    /// Forwards connections `origin` (a retired worker, or [`UPSTREAM`]) sent to
    /// move: each to the least loaded ready worker that is not draining, of the
    /// newest generation — or all to the new supervisor once upgraded. Connections
    /// with no taker, or whose message cannot be sent, stay with the origin at once.
    pub(super) fn forward(&mut self, origin: u32, msg: Message) {
        let ids = msg.handoff_ids().unwrap_or_default();
        let batch = match msg.into_sockets() {
            Ok(batch) if !batch.is_empty() => batch,
            // Descriptors lost (this process's table was full) or unreadable.
            _ => {
                self.keep(origin, ids);
                return;
            }
        };
        let mut kept = Vec::new();
        let mut moving: Vec<Moving> = Vec::with_capacity(batch.len());
        for Received {
            id,
            peer,
            data,
            socket,
        } in batch
        {
            match socket {
                Socket::TcpStream(stream) => moving.push((id, peer, data, stream)),
                _ => kept.push(id),
            }
        }
        if self.os.downstream.is_some() && self.stopping {
            self.forward_downstream(origin, moving, &mut kept);
            self.keep(origin, kept);
            return;
        }
        self.forward_to_workers(origin, moving, &mut kept);
        self.keep(origin, kept);
    }

    fn forward_to_workers(&mut self, origin: u32, moving: Vec<Moving>, kept: &mut Vec<u64>) {
        let mut groups: HashMap<usize, Vec<Moving>> = HashMap::new();
        // Chosen so far per slot, counted in its load.
        let mut extra: HashMap<usize, usize> = HashMap::new();
        for m in moving {
            match self.move_target(origin, &extra) {
                Some(slot) => {
                    *extra.entry(slot).or_default() += 1;
                    groups.entry(slot).or_default().push(m);
                }
                None => kept.push(m.0),
            }
        }
        for (slot, group) in groups {
            let first = self.os.moves.next_ids(group.len());
            let items = handoffs(&group, first);
            match self.send_sockets(slot, &items) {
                Ok(target) => {
                    self.os.moves.sent(target, first, &origins(origin, &group));
                    self.hold(origin, group);
                }
                Err(e) => {
                    tracing::debug!(slot, error = %e, "forwarding moving connections failed");
                    kept.extend(group.iter().map(|m| m.0));
                }
            }
        }
    }

    fn forward_downstream(&mut self, origin: u32, moving: Vec<Moving>, kept: &mut Vec<u64>) {
        let first = self.os.moves.next_ids(moving.len());
        let items = handoffs(&moving, first);
        let Some(d) = self.os.downstream.as_mut() else {
            kept.extend(moving.iter().map(|m| m.0));
            return;
        };
        let sent = d.channel.send_sockets(&items);
        #[cfg(windows)]
        self.watch_moves_output();
        match sent {
            Ok(()) => {
                let pid = self.os.downstream.as_ref().map_or(0, |d| d.pid);
                self.os.moves.sent(pid, first, &origins(origin, &moving));
                self.hold(origin, moving);
            }
            Err(e) => {
                tracing::debug!(error = %e, "moving connections to the new supervisor failed");
                kept.extend(moving.iter().map(|m| m.0));
            }
        }
    }

    /// The slot to move a connection to, counting `extra` already chosen per slot.
    fn move_target(&self, origin: u32, extra: &HashMap<usize, usize>) -> Option<usize> {
        let newest = (0..self.slots.len())
            .filter_map(|s| self.load(s))
            .filter_map(|l| self.procs.get(&l.pid).map(|p| p.generation))
            .max()?;
        (0..self.slots.len())
            .filter_map(|s| self.load(s).map(|l| (s, l)))
            .filter(|(_, l)| {
                l.pid != origin
                    && self
                        .procs
                        .get(&l.pid)
                        .is_some_and(|p| p.generation == newest)
            })
            .min_by_key(|(s, l)| {
                l.active as usize
                    + self.os.moves.pending_to(l.pid)
                    + extra.get(s).copied().unwrap_or(0)
            })
            .map(|(s, _)| s)
    }

    /// Keeps this supervisor's copies of connections sent on (by `origin`'s ids) until
    /// their move settles, on Windows: a socket lives while some process has a
    /// handle on it, and the receiver rebuilds its own from the duplicate only when
    /// it reads the message, so the origin's copy alone would leave the connection
    /// to the origin's fate meanwhile (killed at its drain deadline, say). On Unix
    /// the kernel holds a descriptor in flight itself.
    #[cfg_attr(unix, allow(clippy::unused_self))]
    fn hold(&mut self, origin: u32, sent: Vec<Moving>) {
        #[cfg(windows)]
        for (id, _, _, stream) in sent {
            self.os.held.insert((origin, id), stream);
        }
        #[cfg(unix)]
        let _ = (origin, sent);
    }

    /// Connections that found no taker stay with `origin`.
    fn keep(&mut self, origin: u32, ids: Vec<u64>) {
        if !ids.is_empty() {
            self.os.moves.count_kept(ids.len());
            self.reply(Verdicts::from([(origin, ids)]), Receipt::Kept);
        }
    }

    /// Tells each origin what became of its connections, in order; what a full
    /// channel does not take now is tried again shortly. An origin that is gone
    /// needs no word.
    pub(super) fn reply(&mut self, verdicts: Verdicts, receipt: fn(Vec<u64>) -> Receipt) {
        // Settled, one way or the other: the copies held for them go.
        #[cfg(windows)]
        for (origin, ids) in &verdicts {
            for id in ids {
                self.os.held.remove(&(*origin, *id));
            }
        }
        for (origin, ids) in verdicts {
            for chunk in ids.chunks(message::MAX_SOCKETS) {
                self.os
                    .replies
                    .queue
                    .push_back((origin, receipt(chunk.to_vec()).encode()));
            }
        }
        self.flush_replies();
    }

    /// The retry timer fired.
    pub(super) fn retry_replies(&mut self) {
        self.os.replies.retry = None;
        self.flush_replies();
    }

    /// Sends the replies waiting, keeping each origin's in order; arms the retry
    /// if some are left and it is not armed yet.
    fn flush_replies(&mut self) {
        let mut blocked: Vec<u32> = Vec::new();
        let mut left = std::collections::VecDeque::new();
        while let Some((origin, bytes)) = self.os.replies.queue.pop_front() {
            if blocked.contains(&origin) {
                left.push_back((origin, bytes));
                continue;
            }
            let channel = match origin {
                UPSTREAM => self.os.upstream.as_mut().map(|(ch, _)| ch),
                pid => self.procs.get_mut(&pid).and_then(|p| p.channel.as_mut()),
            };
            let Some(ch) = channel else {
                continue;
            };
            let sent = message::send_bytes(ch, &bytes);
            // A channel that keeps part of a message (Windows) is written when
            // there is room.
            self.watch_output(origin);
            match sent {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    blocked.push(origin);
                    left.push_back((origin, bytes));
                }
                // The origin is going: nothing to tell.
                Err(e) => {
                    tracing::debug!(origin, error = %e, "a reply about moving connections failed")
                }
            }
        }
        self.os.replies.queue = left;
        // What a channel kept of a reply to the old supervisor is written when there
        // is room (Windows).
        #[cfg(windows)]
        self.watch_moves_output();
        if !self.os.replies.queue.is_empty() && self.os.replies.retry.is_none() {
            let at = std::time::Instant::now() + REPLY_RETRY;
            let id = self.reactor.add_timer(at, None);
            self.timers.insert(id, TimerFor::Replies);
            self.os.replies.retry = Some(id);
        }
    }

    /// Watches the channel on which the supervisor upgrading to this one moves its
    /// workers' connections here.
    #[cfg(unix)]
    pub(super) fn watch_upstream(&mut self, mut channel: Channel) {
        // The hello tells the old supervisor this program takes connections.
        let watched = channel
            .set_nonblocking(true)
            .and_then(|()| channel.send(message::HELLO, &[]))
            .and_then(|()| self.watch_moves(&channel, Watch::Upstream));
        match watched {
            Ok(key) => self.os.upstream = Some((channel, key)),
            Err(e) => tracing::warn!(error = %e, "cannot take connections from the old supervisor"),
        }
    }

    /// Watches the channel on which this pool's workers' connections move to the
    /// new supervisor `pid`, from the end of an upgrade on.
    #[cfg(unix)]
    pub(super) fn watch_downstream(&mut self, mut channel: Channel, pid: u32) {
        // The new program said hello when it took the channel (before it was
        // ready, so the hello is here by now): one that did not (an older build,
        // a program that does not adopt it) is not sent connections it would never
        // read; the workers drain instead.
        let hello = channel
            .set_nonblocking(true)
            .and_then(|()| channel.recv())
            .is_ok_and(|m| m.is_some_and(|m| m.payload() == message::HELLO));
        if !hello {
            tracing::info!("the new supervisor does not take live connections; the workers drain");
            return;
        }
        // Blocking with a bound: the new supervisor reads as fast as its workers
        // take; if it does not, the connections stay here.
        let bounded = channel
            .set_nonblocking(false)
            .and_then(|()| crate::sys::set_send_timeout(channel.as_fd(), DOWNSTREAM_PATIENCE));
        if let Err(e) = bounded {
            tracing::warn!(error = %e, "cannot move connections to the new supervisor");
            return;
        }
        match self.watch_moves(&channel, Watch::Downstream) {
            Ok(key) => self.os.downstream = Some(Downstream { channel, key, pid }),
            Err(e) => tracing::warn!(error = %e, "cannot move connections to the new supervisor"),
        }
    }

    #[cfg(unix)]
    fn watch_moves(&mut self, channel: &Channel, watch: Watch) -> io::Result<Key> {
        let dup = channel.as_fd().try_clone_to_owned()?;
        let key = self
            .reactor
            .register(Source::Fd(dup), Interest::READABLE, Mode::Level)?;
        self.watches.insert(key, watch);
        Ok(key)
    }

    pub(super) fn unwatch_moves(&mut self, key: Key) {
        self.watches.remove(&key);
        let _ = self.reactor.deregister(key);
    }

    /// Connections from the old supervisor, forwarded to this pool's workers.
    pub(super) fn read_upstream(&mut self) {
        for _ in 0..64 {
            let Some((ch, key)) = self.os.upstream.as_mut() else {
                return;
            };
            match message::recv_lossy(ch) {
                Ok(Some(msg)) if is_move(&msg) => self.forward(UPSTREAM, msg),
                Ok(Some(_)) => {
                    tracing::warn!("an unexpected message from the old supervisor; ignored")
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The old supervisor is gone (or its channel broke): nothing more
                // comes.
                Ok(None) | Err(_) => {
                    let key = *key;
                    self.os.upstream = None;
                    self.unwatch_moves(key);
                    return;
                }
            }
        }
    }

    /// The new supervisor's word on the connections moved to it.
    pub(super) fn read_downstream(&mut self) {
        for _ in 0..64 {
            let Some(d) = self.os.downstream.as_mut() else {
                return;
            };
            let pid = d.pid;
            // Replies only: wait for none (on Unix the channel blocks, with a
            // bound, for sending).
            #[cfg(unix)]
            let got = d.channel.set_nonblocking(true).and_then(|()| {
                let got = d.channel.recv();
                d.channel.set_nonblocking(false)?;
                got
            });
            #[cfg(windows)]
            let got = d.channel.recv();
            match got {
                Ok(Some(msg)) => match Receipt::decode(msg.payload()) {
                    Some(Receipt::Moved(ids)) => {
                        let settled = self.os.moves.settled(pid, &ids);
                        self.reply(settled, Receipt::Moved);
                    }
                    Some(Receipt::Kept(ids)) => {
                        let kept = self.os.moves.refused(pid, &ids);
                        self.reply(kept, Receipt::Kept);
                    }
                    _ => tracing::warn!("an unexpected message from the new supervisor; ignored"),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The new supervisor is gone. What it had not confirmed may be served
                // by its workers (they outlive it) or may have died in its queue:
                // unknown, so the old workers let go of their copies — served by
                // whoever has them, never by two.
                Ok(None) | Err(_) => {
                    let key = d.key;
                    self.os.downstream = None;
                    self.unwatch_moves(key);
                    let unknown = self.os.moves.abandoned(pid);
                    if !unknown.is_empty() {
                        tracing::warn!(
                            count = unknown.values().map(Vec::len).sum::<usize>(),
                            "the new supervisor died with connections on their way to it; letting go of them"
                        );
                    }
                    self.reply(unknown, Receipt::Moved);
                    return;
                }
            }
        }
    }
}

/// The hand-offs of `group`, numbered from `first`.
fn handoffs(group: &[Moving], first: u64) -> Vec<(&TcpStream, Handoff<'_>)> {
    group
        .iter()
        .zip(first..)
        .map(|((_, peer, data, stream), id)| {
            let meta = Handoff {
                id,
                peer: *peer,
                data,
            };
            (stream, meta)
        })
        .collect()
}

/// Where each connection of `group` came from, for the books.
fn origins(origin: u32, group: &[Moving]) -> Vec<(u32, u64)> {
    group.iter().map(|m| (origin, m.0)).collect()
}
