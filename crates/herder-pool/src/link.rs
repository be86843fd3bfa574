//! A worker's side of its supervisor, in a herder-reactor [`Server`].

use crate::Error;
use crate::message::{self, MOVE_ID, Receipt};
use crate::scorecard::Scorecard;
use crate::{Worker, is_drain_request, send_ready};
use herder_fd::{Channel, Message};
use herder_reactor::{
    Departure, Event, Interest, Key, Mode, Server, Service, Signal, Stream, TimerId,
};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Connections sent to move and not yet settled, at most: each holds a descriptor
/// here and, while in a channel, counts against the user's descriptors in flight.
const MAX_PARKED: usize = 256;

/// Connections per message when moving. Small: a receiver near its descriptor
/// limit loses a whole message's descriptors, so small messages let it take what
/// it can, and only the rest stays here.
const MOVE_BATCH: usize = 16;

/// Connections of one message on the move, and their hand-off data.
type MoveBatch<Svc> = (Vec<Departure<Svc>>, Vec<Vec<u8>>);

/// Bytes of state and input per message when moving, at most: under herder-fd's
/// payload limit with room for the headers. A connection with more cannot move.
const MOVE_BYTES: usize = herder_fd::DEFAULT_MAX_PAYLOAD - 4096;

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
/// When the pool retires the worker to make room for others (a reload, a recycle, a
/// scale-down: [`Config::move_connections`](crate::Config::move_connections)), the
/// link **moves its connections** instead of waiting for them to end: the server
/// takes out each connection whose service agrees
/// ([`Service::on_move`]), at a point where its output is written, and the link
/// sends it — socket, unconsumed input, the service's state — to the supervisor,
/// which hands it to another worker; that worker's link restores a service
/// ([`Service::on_arrive`]) and serves the next bytes. The link keeps each
/// connection until the supervisor says the other worker owns it; if none can take
/// it, it is given back to the server, which finishes it here. So a connection is
/// served by exactly one worker at every moment, and never dropped.
///
/// # Examples
///
/// A hand-off worker serving echo:
///
/// ```no_run
/// use herder_pool::{Worker, WorkerLink};
/// use herder_reactor::{Flow, Input, Output, Server, ServerConfig, Service};
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
///     let mut server = Server::new(ServerConfig::default(), |_| Echo)?;
///     let link = WorkerLink::ready(&mut worker, &mut server, Duration::from_secs(30))?;
///     link.run(&mut server, |_peer| Echo)?;
///     return Ok(());
/// }
/// // … the supervisor: a Pool and a Dispatcher.
/// # Ok(())
/// # }
/// ```
pub struct WorkerLink<Svc: Service + 'static> {
    channel: Channel,
    key: Key,
    card: Option<Scorecard>,
    tick: TimerId,
    drain_timeout: Duration,
    /// Connections accepted, as last published.
    reported: u64,
    /// The highest hand-off id the server owns, not yet acknowledged.
    unacked: Option<u64>,
    /// The same for connections that moved here.
    unacked_moves: Option<u64>,
    /// The last id given to a connection moving out.
    next_move: u64,
    /// Connections sent to move, until the supervisor says where they are.
    parked: HashMap<u64, Departure<Svc>>,
    /// Hand-offs that arrived without their descriptor, not yet refused.
    lost: Vec<u64>,
    /// When a refusal was last logged (once a second).
    lost_logged: Option<Instant>,
    /// The supervisor is gone.
    orphaned: bool,
}

impl<Svc: Service + 'static> WorkerLink<Svc> {
    /// Sets the link up in `server` — the channel watched, `SIGTERM` and `SIGINT`
    /// watched, a heartbeat every second — and tells the supervisor the worker is
    /// ready. Call it last, once the worker can serve. A drain gives open
    /// connections `drain_timeout` to end.
    ///
    /// # Errors
    ///
    /// [`Error::Environment`] if the worker's channel was taken;
    /// [`Error::Io`] if registering or the ready message fails.
    pub fn ready(
        worker: &mut Worker,
        server: &mut Server<Svc>,
        drain_timeout: Duration,
    ) -> Result<WorkerLink<Svc>, Error> {
        let io = |what| move |source| Error::Io { what, source };
        let mut channel = worker
            .take_channel()
            .ok_or_else(|| Error::Environment("the worker's channel was taken".into()))?;
        channel
            .set_nonblocking(true)
            .map_err(io("making the channel non-blocking"))?;
        let watched = watchable(&channel).map_err(io("duplicating the channel"))?;
        let key = server
            .add_source(watched, Interest::READABLE, Mode::Level)
            .map_err(io("watching the channel"))?;
        #[cfg(unix)]
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
            unacked_moves: None,
            next_move: 0,
            parked: HashMap::new(),
            lost: Vec::new(),
            lost_logged: None,
            orphaned: false,
        })
    }

    /// Handles `event` if it is the link's: returns whether it was. Hand-offs become
    /// connections of `server`, each served by `service(peer)` from the bytes the
    /// supervisor had read (a connection that moved here from another worker gets
    /// its state through [`Service::on_arrive`] first); the supervisor's other
    /// messages go to `on_message`.
    /// `SIGTERM` and `SIGINT` drain the server; other signals are the caller's.
    ///
    /// Call [`flush`](Self::flush) after every poll of the server, before the next:
    /// that is when the hand-offs are acknowledged, before a byte of them is read.
    ///
    /// # Errors
    ///
    /// What receiving from the channel returns (the supervisor's end is no error: the
    /// server drains); `InvalidData` for a hand-off whose header cannot be read.
    pub fn handle(
        &mut self,
        server: &mut Server<Svc>,
        event: &Event,
        mut service: impl FnMut(Option<SocketAddr>) -> Svc,
        mut on_message: impl FnMut(&mut Server<Svc>, Message),
    ) -> io::Result<bool> {
        match event {
            Event::Io { key, .. } if *key == self.key => loop {
                // At this process's descriptor limit the kernel drops a hand-off's
                // descriptors, and the supervisor must hear which.
                match message::recv_lossy(&mut self.channel) {
                    Ok(Some(m)) if m.lost_fds() > 0 => self.lost_message(&m),
                    Ok(Some(m)) if m.payload() == message::MOVE => self.move_out(server),
                    Ok(Some(m)) if is_drain_request(m.payload()) => self.drain(server),
                    Ok(Some(m)) if message::is_reserved(m.payload()) => {
                        self.settle(server, m.payload())
                    }
                    // A message with descriptors whose header names hand-offs.
                    Ok(Some(m)) if m.descriptor_count() > 0 => match m.handoff_ids() {
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
    pub fn flush(&mut self, server: &mut Server<Svc>) -> io::Result<()> {
        if let Some(card) = &self.card {
            let stats = server.stats();
            // `active` first: a supervisor that sees the new `accepted` sees it
            // too (the least-loaded choice counts the connections that are in
            // neither yet).
            card.set_active(stats.active as u64);
            card.add_accepted(stats.accepted.saturating_sub(self.reported));
            self.reported = stats.accepted;
        }
        // Refusals first: an acknowledgement covers every id up to its own. Each is
        // forgotten only once sent, so a failed send is tried again next time.
        while !self.lost.is_empty() {
            let n = self.lost.len().min(message::MAX_SOCKETS);
            self.send(&Receipt::Refused(self.lost[..n].to_vec()))?;
            self.lost.drain(..n);
        }
        if let Some(upto) = self.unacked {
            self.send(&Receipt::Ack(upto))?;
            self.unacked = None;
        }
        if let Some(upto) = self.unacked_moves {
            self.send(&Receipt::Ack(upto))?;
            self.unacked_moves = None;
        }
        self.send_departures(server)
    }

    /// Whether the worker is done: draining (asked by the supervisor, a signal, or
    /// the supervisor's end) with no connection left, none of them on the move.
    pub fn is_done(&self, server: &Server<Svc>) -> bool {
        server.is_draining()
            && server.is_empty()
            && !server.has_departures()
            && self.parked.is_empty()
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
    pub fn run(
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

    fn orphan(&mut self, server: &mut Server<Svc>) {
        self.orphaned = true;
        self.drain(server);
        let _ = server.remove_source(self.key);
        // Whether the supervisor had handed them on is not known: another worker
        // may serve them now, so this copy must not. Closing it ends the
        // connection only if nobody else has it.
        if !self.parked.is_empty() {
            tracing::warn!(
                count = self.parked.len(),
                "the supervisor is gone with connections on the move; letting go of them"
            );
            self.parked.clear();
        }
    }

    /// Starts moving the server's connections out (asked by the supervisor).
    fn move_out(&mut self, server: &mut Server<Svc>) {
        if !server.is_draining() {
            tracing::debug!("draining; moving connections to the other workers");
        }
        server.move_out(Instant::now() + self.drain_timeout);
    }

    /// Takes the supervisor's word on connections sent to move: gone to another
    /// worker (this copy is closed), or kept (served here to their end).
    fn settle(&mut self, server: &mut Server<Svc>, payload: &[u8]) {
        match Receipt::decode(payload) {
            Some(Receipt::Moved(ids)) => {
                for id in ids {
                    self.parked.remove(&id);
                }
            }
            Some(Receipt::Kept(ids)) => {
                for id in ids {
                    if let Some(d) = self.parked.remove(&id) {
                        // A failure closes it: nothing more can be done.
                        let _ = server.readmit(d);
                    }
                }
            }
            _ => tracing::warn!("a malformed pool message; ignored"),
        }
    }

    /// Sends the connections the server let go to the supervisor, as many as the
    /// window allows; those that cannot move (not TCP, the channel failing, the
    /// supervisor gone) go back to the server.
    fn send_departures(&mut self, server: &mut Server<Svc>) -> io::Result<()> {
        if !server.has_departures() {
            return Ok(());
        }
        let room = match self.orphaned {
            true => usize::MAX,
            false => MAX_PARKED.saturating_sub(self.parked.len()),
        };
        // Messages of at most MOVE_BATCH connections and MOVE_BYTES of data.
        let mut batches: Vec<MoveBatch<Svc>> = Vec::new();
        let mut bytes = 0;
        for d in server.take_departures(room) {
            let data = message::encode_move(d.is_fresh(), d.state(), d.input());
            if self.orphaned || !matches!(d.stream(), Stream::Tcp(_)) || data.len() > MOVE_BYTES {
                let _ = server.readmit(d);
                continue;
            }
            let full = batches
                .last()
                .is_none_or(|(b, _)| b.len() == MOVE_BATCH || bytes + data.len() > MOVE_BYTES);
            if full {
                batches.push((Vec::new(), Vec::new()));
                bytes = 0;
            }
            bytes += data.len();
            if let Some((b, datas)) = batches.last_mut() {
                b.push(d);
                datas.push(data);
            }
        }
        for (batch, data) in batches {
            let first = self.next_move + 1;
            self.next_move += batch.len() as u64;
            let sent = {
                let items: Vec<(&TcpStream, herder_fd::Handoff<'_>)> = batch
                    .iter()
                    .zip(&data)
                    .zip(first..)
                    .filter_map(|((d, data), id)| match d.stream() {
                        Stream::Tcp(s) => Some((
                            s,
                            herder_fd::Handoff {
                                id: id | MOVE_ID,
                                peer: s.peer_addr().ok(),
                                data,
                            },
                        )),
                        _ => None,
                    })
                    .collect();
                self.send_blocking(|ch| ch.send_sockets(&items))
            };
            match sent {
                Ok(()) => {
                    for (d, id) in batch.into_iter().zip(first..) {
                        self.parked.insert(id | MOVE_ID, d);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, count = batch.len(), "cannot move connections; keeping them");
                    for d in batch {
                        let _ = server.readmit(d);
                    }
                }
            }
        }
        Ok(())
    }

    fn drain(&mut self, server: &mut Server<Svc>) {
        if !server.is_draining() {
            tracing::debug!("draining");
        }
        server.drain(Instant::now() + self.drain_timeout);
    }

    /// Adds the connections of a hand-off message, whose header names `ids`, to the
    /// server.
    fn adopt(
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
            let moved = id & MOVE_ID != 0;
            let added = match socket.into_tcp_stream() {
                Ok(stream) if moved => match message::decode_move(&data) {
                    Some((fresh, state, input)) => {
                        let mut svc = service(peer);
                        match svc.on_arrive(state) {
                            true => server.adopt(stream, svc, input, fresh),
                            false => Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "the service did not take the state",
                            )),
                        }
                    }
                    None => Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a malformed moving connection",
                    )),
                },
                Ok(stream) => server.add_connection(stream, service(peer), &data),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "not a TCP stream",
                )),
            };
            match added {
                Ok(_) if moved => self.unacked_moves = self.unacked_moves.max(Some(id)),
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
        match self.send_blocking(|ch| message::send_bytes(ch, &bytes)) {
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

    /// Sends with `f`, waiting for room in the channel if it must: the supervisor
    /// holds its copies, or the link its own, until the other side hears.
    fn send_blocking(&mut self, f: impl Fn(&mut Channel) -> io::Result<()>) -> io::Result<()> {
        let mut sent = f(&mut self.channel);
        if sent
            .as_ref()
            .is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock)
        {
            self.channel.set_nonblocking(false)?;
            sent = f(&mut self.channel);
            self.channel.set_nonblocking(true)?;
        }
        sent
    }
}

impl<Svc: Service + 'static> std::fmt::Debug for WorkerLink<Svc> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerLink")
            .field("unacked", &self.unacked)
            .field("lost", &self.lost.len())
            .field("parked", &self.parked.len())
            .finish_non_exhaustive()
    }
}

/// A handle of the channel's own for the event loop to watch.
#[cfg(unix)]
fn watchable(channel: &Channel) -> io::Result<Box<dyn herder_reactor::Source>> {
    use std::os::fd::AsFd;
    Ok(Box::new(channel.as_fd().try_clone_to_owned()?))
}

#[cfg(windows)]
fn watchable(channel: &Channel) -> io::Result<Box<dyn herder_reactor::Source>> {
    let socket = channel.socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "the worker's channel is not a socket",
        )
    })?;
    Ok(Box::new(socket.try_clone_to_owned()?))
}
