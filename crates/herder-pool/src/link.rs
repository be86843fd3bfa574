//! A worker's side of its supervisor, in a herder-reactor [`Server`].

use crate::Error;
use crate::protocol::Receipt;
use crate::worker::{Scorecard, Worker, is_drain_request, send_ready};
use herder_fd::{Channel, Message};
use herder_reactor::{Event, Interest, Key, Mode, Server, Service, Signal, TimerId};
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// A worker's link to its supervisor, plugged into the worker's [`Server`]: the
/// pool's channel in the server's event loop, the drain request, the supervisor's
/// end (the worker drains: its open connections are served to their end, then it
/// exits), `SIGTERM`/`SIGINT` (a drain too), the heartbeat and the load figures in
/// the scoreboard, and — in the hand-off model — the connections the
/// [`Dispatcher`](crate::Dispatcher) hands over: each is added to the server and
/// acknowledged once the server owns it, before a byte of it is read; one whose
/// descriptor never arrived (this process's descriptor table was full) is refused, so
/// the supervisor closes its copy rather than wait.
///
/// # Examples
///
/// A hand-off worker serving echo:
///
/// ```no_run
/// use herder_pool::{Worker, WorkerLink};
/// use herder_reactor::{Config, Flow, Input, Output, Server, Service};
/// use std::time::Duration;
///
/// struct Echo;
/// impl Service for Echo {
///     fn on_data(&mut self, input: &mut Input<'_>, out: &mut Output<'_>) -> Flow {
///         out.write(input.data());
///         input.consume(input.len());
///         Flow::Continue
///     }
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// if let Some(mut worker) = Worker::from_env()? {
///     let mut server = Server::new(Config::default(), |_| Echo)?;
///     let link = WorkerLink::ready(&mut worker, &mut server, Duration::from_secs(30))?;
///     link.run(&mut server, |_peer| Echo)?;
///     return Ok(());
/// }
/// // … the supervisor: a Pool and a Dispatcher.
/// # Ok(())
/// # }
/// ```
pub struct WorkerLink {
    channel: Channel,
    key: Key,
    card: Option<Scorecard>,
    tick: TimerId,
    drain_timeout: Duration,
    /// Connections accepted, as last published.
    reported: u64,
    /// The highest hand-off id the server owns, not yet acknowledged.
    unacked: Option<u64>,
    /// Hand-offs that arrived without their descriptor, not yet refused.
    lost: Vec<u64>,
    /// When a refusal was last logged (once a second).
    lost_logged: Option<Instant>,
    /// The supervisor is gone.
    orphaned: bool,
}

impl WorkerLink {
    /// Sets the link up in `server` — the channel watched, `SIGTERM` and `SIGINT`
    /// watched, a heartbeat every second — and tells the supervisor the worker is
    /// ready. Call it last, once the worker can serve. A drain gives open
    /// connections `drain_timeout` to end.
    ///
    /// # Errors
    ///
    /// [`Error::Environment`] if the worker's channel was taken;
    /// [`Error::Io`] if registering or the ready message fails.
    pub fn ready<Svc: Service + 'static>(
        worker: &mut Worker,
        server: &mut Server<Svc>,
        drain_timeout: Duration,
    ) -> Result<WorkerLink, Error> {
        let io = |what| move |source| Error::Io { what, source };
        let mut channel = worker
            .take_channel()
            .ok_or_else(|| Error::Environment("the worker's channel was taken".into()))?;
        channel
            .set_nonblocking(true)
            .map_err(io("making the channel non-blocking"))?;
        let watched = channel
            .as_fd()
            .try_clone_to_owned()
            .map_err(io("duplicating the channel"))?;
        let key = server
            .add_source(Box::new(watched), Interest::READABLE, Mode::Level)
            .map_err(io("watching the channel"))?;
        server
            .watch_signals(&[Signal::Terminate, Signal::Interrupt])
            .map_err(io("watching signals"))?;
        let tick = server.add_timer(Instant::now(), Some(Duration::from_secs(1)));
        send_ready(&mut channel).map_err(io("telling the supervisor"))?;
        Ok(WorkerLink {
            channel,
            key,
            card: worker.scorecard(),
            tick,
            drain_timeout,
            reported: 0,
            unacked: None,
            lost: Vec::new(),
            lost_logged: None,
            orphaned: false,
        })
    }

    /// Handles `event` if it is the link's: returns whether it was. Hand-offs become
    /// connections of `server`, each served by `service(peer)` from the bytes the
    /// supervisor had read; the supervisor's other messages go to `on_message`.
    /// `SIGTERM` and `SIGINT` drain the server; other signals are the caller's.
    ///
    /// Call [`flush`](Self::flush) after every poll of the server, before the next:
    /// that is when the hand-offs are acknowledged, before a byte of them is read.
    ///
    /// # Errors
    ///
    /// What receiving from the channel returns (the supervisor's end is no error: the
    /// server drains); `InvalidData` for a hand-off whose header cannot be read.
    pub fn handle<Svc: Service + 'static>(
        &mut self,
        server: &mut Server<Svc>,
        event: &Event,
        mut service: impl FnMut(Option<SocketAddr>) -> Svc,
        mut on_message: impl FnMut(&mut Server<Svc>, Message),
    ) -> io::Result<bool> {
        match event {
            Event::Io { key, .. } if *key == self.key => loop {
                // `recv_lossy`: at this process's descriptor limit the kernel drops
                // a hand-off's descriptors, and the supervisor must hear which.
                match self.channel.recv_lossy() {
                    Ok(Some(m)) if m.lost_fds() > 0 => self.lost_message(&m),
                    Ok(Some(m)) if is_drain_request(m.payload()) => self.drain(server),
                    // A message with descriptors whose header names hand-offs.
                    Ok(Some(m)) if !m.fds().is_empty() => match m.handoff_ids() {
                        Ok(ids) => self.adopt(server, m, ids, &mut service),
                        Err(_) => on_message(server, m),
                    },
                    Ok(Some(m)) => on_message(server, m),
                    // The supervisor is gone (a reset: it died with receipts of ours
                    // unread): finish what is open, then go.
                    Ok(None) => {
                        self.orphan(server);
                        return Ok(true);
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                        ) =>
                    {
                        self.orphan(server);
                        return Ok(true);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                    Err(e) => return Err(e),
                }
            },
            Event::Signal(Signal::Terminate | Signal::Interrupt) => self.drain(server),
            Event::Timer(t) if *t == self.tick => {
                if let Some(card) = &self.card {
                    card.heartbeat();
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Call after each poll: publishes the load (what status, least-loaded dispatch
    /// and scaling read), refuses hand-offs that lost their descriptor, and
    /// acknowledges those the server owns — waiting for room in the channel if it
    /// must, as the supervisor holds its copies until it hears.
    ///
    /// # Errors
    ///
    /// What sending returns, but for a supervisor that is gone (the worker drains).
    pub fn flush<Svc: Service + 'static>(&mut self, server: &Server<Svc>) -> io::Result<()> {
        if let Some(card) = &self.card {
            let stats = server.stats();
            card.add_accepted(stats.accepted.saturating_sub(self.reported));
            self.reported = stats.accepted;
            card.set_active(stats.active as u64);
        }
        // Refusals first: an acknowledgement covers every id up to its own. Each is
        // forgotten only once sent, so a failed send is tried again next time.
        while !self.lost.is_empty() {
            let n = self.lost.len().min(herder_fd::MAX_FDS_PER_MESSAGE);
            self.send(&Receipt::Refused(self.lost[..n].to_vec()))?;
            self.lost.drain(..n);
        }
        if let Some(upto) = self.unacked {
            self.send(&Receipt::Ack(upto))?;
            self.unacked = None;
        }
        Ok(())
    }

    /// Whether the worker is done: draining (asked by the supervisor, a signal, or
    /// the supervisor's end) with no connection left.
    pub fn is_done<Svc: Service + 'static>(&self, server: &Server<Svc>) -> bool {
        server.is_draining() && server.is_empty()
    }

    /// Serves until the worker is done: polls `server`, handles the link's events
    /// (hand-offs served by `service(peer)`), flushes after each poll. Events that are
    /// not the link's are ignored; write the loop with [`handle`](Self::handle) and
    /// [`flush`](Self::flush) to see them.
    ///
    /// # Errors
    ///
    /// As [`handle`](Self::handle) and [`flush`](Self::flush), and what polling
    /// returns.
    pub fn run<Svc: Service + 'static>(
        mut self,
        server: &mut Server<Svc>,
        mut service: impl FnMut(Option<SocketAddr>) -> Svc,
    ) -> io::Result<()> {
        let mut events = Vec::new();
        loop {
            server.poll(&mut events, Some(Duration::from_secs(1)))?;
            for e in events.drain(..) {
                self.handle(server, &e, &mut service, |_, _| {})?;
            }
            self.flush(server)?;
            if self.is_done(server) {
                return Ok(());
            }
        }
    }

    /// The channel to the supervisor, for the worker's own messages (they must not
    /// begin like the pool's: [`is_reserved`](crate::is_reserved)).
    pub fn channel(&mut self) -> &mut Channel {
        &mut self.channel
    }

    fn orphan<Svc: Service + 'static>(&mut self, server: &mut Server<Svc>) {
        self.orphaned = true;
        self.drain(server);
        let _ = server.remove_source(self.key);
    }

    fn drain<Svc: Service + 'static>(&mut self, server: &mut Server<Svc>) {
        if !server.is_draining() {
            tracing::debug!("draining");
        }
        server.drain(Instant::now() + self.drain_timeout);
    }

    /// Adds the connections of a hand-off message, whose header names `ids`, to the
    /// server.
    fn adopt<Svc: Service + 'static>(
        &mut self,
        server: &mut Server<Svc>,
        m: Message,
        ids: Vec<u64>,
        service: &mut impl FnMut(Option<SocketAddr>) -> Svc,
    ) {
        let batch = match m.into_sockets() {
            Ok(batch) => batch,
            // Its sockets cannot be rebuilt: refused, by the ids the header gave.
            Err(_) => {
                self.lost.extend(ids);
                return;
            }
        };
        for herder_fd::Received {
            id,
            peer,
            data,
            socket,
        } in batch
        {
            let added = match socket.into_tcp_stream() {
                Ok(stream) => server.add_connection(stream, service(peer), &data),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "not a TCP stream",
                )),
            };
            match added {
                Ok(_) => self.unacked = self.unacked.max(Some(id)),
                // At its connection limit, say: refused, and counted as such.
                Err(e) => {
                    tracing::debug!(id, error = %e, "refusing a handed-off connection");
                    self.lost.push(id);
                }
            }
        }
    }

    /// Notes the hand-offs of a message that lost its descriptors.
    fn lost_message(&mut self, m: &Message) {
        let ids = m.handoff_ids().unwrap_or_default();
        let now = Instant::now();
        if self
            .lost_logged
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            self.lost_logged = Some(now);
            tracing::warn!(
                lost = m.lost_fds(),
                refused = ids.len(),
                "out of descriptors: hand-off(s) refused"
            );
        }
        self.lost.extend(ids);
    }

    fn send(&mut self, receipt: &Receipt) -> io::Result<()> {
        if self.orphaned {
            return Ok(());
        }
        let bytes = receipt.encode();
        let mut sent = self.channel.send(&bytes, &[]);
        if sent
            .as_ref()
            .is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock)
        {
            self.channel.set_nonblocking(false)?;
            sent = self.channel.send(&bytes, &[]);
            self.channel.set_nonblocking(true)?;
        }
        match sent {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                // The supervisor is gone; the channel's end comes next.
                Ok(())
            }
            other => other,
        }
    }
}

impl std::fmt::Debug for WorkerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerLink")
            .field("unacked", &self.unacked)
            .field("lost", &self.lost.len())
            .finish_non_exhaustive()
    }
}
