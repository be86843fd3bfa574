//! Moving live connections: a retired worker's connections forwarded to another
//! worker — or, after an upgrade, to the new supervisor, which forwards them to its
//! own — and each origin told what became of them. The origin keeps its copy of a
//! connection until it hears, so a connection is served by exactly one process at
//! every moment, and one nobody takes stays where it was.

use super::{Pool, Source, Watch};
use crate::moves::Replies;
use crate::protocol::{MOVE_ID, Receipt};
use herder_fd::{Channel, Handoff, Message, Received, Socket};
use herder_reactor::{Interest, Key, Mode};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

/// The origin named for connections that came from the supervisor being upgraded.
const UPSTREAM: u32 = 0;

/// How long a send to the new supervisor may wait for room in the channel before
/// its connections stay where they are.
const DOWNSTREAM_PATIENCE: Duration = Duration::from_secs(1);

/// The channel to the new supervisor after an upgrade.
pub(super) struct Downstream {
    channel: Channel,
    key: Key,
    /// The new supervisor: the target its connections are booked under.
    pid: u32,
}

/// One connection on the move: the origin's id for it, its peer, its data (state and
/// unconsumed input) and its socket.
type Moving = (u64, Option<SocketAddr>, Vec<u8>, TcpStream);

/// Whether a message carries connections on the move.
pub(super) fn is_move(msg: &Message) -> bool {
    (!msg.fds().is_empty() || msg.lost_fds() > 0)
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
        if self.downstream.is_some() && self.stopping {
            self.forward_downstream(origin, moving, &mut kept);
        } else {
            self.forward_to_workers(origin, moving, &mut kept);
        }
        self.keep(origin, kept);
    }

    fn forward_to_workers(&mut self, origin: u32, moving: Vec<Moving>, kept: &mut Vec<u64>) {
        let mut groups: HashMap<usize, Vec<Moving>> = HashMap::new();
        for m in moving {
            let extra: HashMap<usize, usize> = groups.iter().map(|(s, g)| (*s, g.len())).collect();
            match self.move_target(origin, &extra) {
                Some(slot) => groups.entry(slot).or_default().push(m),
                None => kept.push(m.0),
            }
        }
        for (slot, group) in groups {
            let first = self.moves.next_ids(group.len());
            let items = handoffs(&group, first);
            match self.send_sockets(slot, &items) {
                Ok(target) => self.moves.sent(target, first, &origins(origin, &group)),
                Err(e) => {
                    tracing::debug!(slot, error = %e, "forwarding moving connections failed");
                    kept.extend(group.iter().map(|m| m.0));
                }
            }
        }
    }

    fn forward_downstream(&mut self, origin: u32, moving: Vec<Moving>, kept: &mut Vec<u64>) {
        let first = self.moves.next_ids(moving.len());
        let items = handoffs(&moving, first);
        let Some(d) = self.downstream.as_mut() else {
            kept.extend(moving.iter().map(|m| m.0));
            return;
        };
        match d.channel.send_sockets(&items) {
            Ok(()) => {
                let pid = d.pid;
                self.moves.sent(pid, first, &origins(origin, &moving));
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
                    + self.moves.pending_to(l.pid)
                    + extra.get(s).copied().unwrap_or(0)
            })
            .map(|(s, _)| s)
    }

    /// Connections that found no taker stay with `origin`.
    fn keep(&mut self, origin: u32, ids: Vec<u64>) {
        if !ids.is_empty() {
            self.moves.count_kept(ids.len());
            self.reply(Replies::from([(origin, ids)]), Receipt::Kept);
        }
    }

    /// Tells each origin what became of its connections. An origin that is gone
    /// needs no word; one whose channel is full keeps its copies until it is killed
    /// at its drain deadline.
    pub(super) fn reply(&mut self, replies: Replies, receipt: fn(Vec<u64>) -> Receipt) {
        for (origin, ids) in replies {
            let channel = match origin {
                UPSTREAM => self.upstream.as_mut().map(|(ch, _)| ch),
                pid => self.procs.get_mut(&pid).and_then(|p| p.channel.as_mut()),
            };
            let Some(ch) = channel else {
                continue;
            };
            for chunk in ids.chunks(herder_fd::MAX_FDS_PER_MESSAGE) {
                if let Err(e) = ch.send(&receipt(chunk.to_vec()).encode(), &[]) {
                    tracing::warn!(origin, error = %e, "cannot say what became of moving connections");
                }
            }
        }
    }

    /// Watches the channel on which the supervisor upgrading to this one moves its
    /// workers' connections here.
    pub(super) fn watch_upstream(&mut self, channel: Channel) {
        let watched = channel
            .set_nonblocking(true)
            .and_then(|()| self.watch(&channel, Watch::Upstream));
        match watched {
            Ok(key) => self.upstream = Some((channel, key)),
            Err(e) => tracing::warn!(error = %e, "cannot take connections from the old supervisor"),
        }
    }

    /// Watches the channel on which this pool's workers' connections move to the
    /// new supervisor `pid`, from the end of an upgrade on.
    pub(super) fn watch_downstream(&mut self, channel: Channel, pid: u32) {
        // Blocking with a bound: the new supervisor reads as fast as its workers
        // take; if it does not, the connections stay here.
        let bounded = channel
            .set_nonblocking(false)
            .and_then(|()| crate::sys::set_send_timeout(channel.as_fd(), DOWNSTREAM_PATIENCE));
        if let Err(e) = bounded {
            tracing::warn!(error = %e, "cannot move connections to the new supervisor");
            return;
        }
        match self.watch(&channel, Watch::Downstream) {
            Ok(key) => self.downstream = Some(Downstream { channel, key, pid }),
            Err(e) => tracing::warn!(error = %e, "cannot move connections to the new supervisor"),
        }
    }

    fn watch(&mut self, channel: &Channel, watch: Watch) -> io::Result<Key> {
        let dup = channel.as_fd().try_clone_to_owned()?;
        let key = self
            .reactor
            .register(Source::Fd(dup), Interest::READABLE, Mode::Level)?;
        self.watches.insert(key, watch);
        Ok(key)
    }

    fn unwatch(&mut self, key: Key) {
        self.watches.remove(&key);
        let _ = self.reactor.deregister(key);
    }

    /// Connections from the old supervisor, forwarded to this pool's workers.
    pub(super) fn read_upstream(&mut self) {
        for _ in 0..64 {
            let Some((ch, key)) = self.upstream.as_mut() else {
                return;
            };
            match ch.recv_lossy() {
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
                    self.upstream = None;
                    self.unwatch(key);
                    return;
                }
            }
        }
    }

    /// The new supervisor's word on the connections moved to it.
    pub(super) fn read_downstream(&mut self) {
        for _ in 0..64 {
            let Some(d) = self.downstream.as_mut() else {
                return;
            };
            let pid = d.pid;
            // Replies only: wait for none.
            let got = d.channel.set_nonblocking(true).and_then(|()| {
                let got = d.channel.recv();
                d.channel.set_nonblocking(false)?;
                got
            });
            match got {
                Ok(Some(msg)) => match Receipt::decode(msg.payload()) {
                    Some(Receipt::Moved(ids)) => {
                        let settled = self.moves.settled(pid, &ids);
                        self.reply(settled, Receipt::Moved);
                    }
                    Some(Receipt::Kept(ids)) => {
                        let kept = self.moves.refused(pid, &ids);
                        self.reply(kept, Receipt::Kept);
                    }
                    _ => tracing::warn!("an unexpected message from the new supervisor; ignored"),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The new supervisor is gone: what it had not taken stays here.
                Ok(None) | Err(_) => {
                    let key = d.key;
                    self.downstream = None;
                    self.unwatch(key);
                    let kept = self.moves.gone(pid);
                    self.reply(kept, Receipt::Kept);
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
