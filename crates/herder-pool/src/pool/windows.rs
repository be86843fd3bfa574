//! The pool's Windows side: workers started with `CreateProcess` (through
//! `std::process::Command`), their exits watched by their process handles in the
//! loop (IOCP), terminated with `TerminateProcess` (there are no signals), and a
//! graceful stop asked for from outside by a named event ([`request_stop`]).
//!
//! A worker's channel is a loopback TCP connection that the worker opens to the
//! pool's rendezvous socket at start, presenting a one-time token from its
//! environment: nothing is inherited but the standard handles, and another local
//! process cannot take a worker's place without the token. Once it has, the pool
//! duplicates the listeners to it over the channel (`WSADuplicateSocketW`). A second
//! connection, the pool's alone, carries [`Pool::send_socket`]'s hand-offs and
//! their acknowledgements.

mod upgrade;

pub(crate) use upgrade::upgrade_sockets;
use upgrade::{UPGRADE_ENV, parent_channel};

use super::{
    Error, Event, Interest, Launched, Listener, Mode, Pool, PoolEvent, Source, TimerFor, Watch,
};
use crate::worker::{CHANNEL_ENV, LOCK_ENV, SCOREBOARD_ENV, SUPERVISOR_ENV, WORKER_ENV};
use herder_fd::{Channel, Handoff};
use herder_reactor::os::windows::ReactorExt;
use herder_reactor::{Key, Reactor, TimerId, Waker};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::windows::io::{AsSocket, OwnedHandle};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// How long a connection to the rendezvous has to present its token.
const HELLO_WAIT: Duration = Duration::from_secs(5);
/// Connections to the rendezvous that have not presented a token, at most; more are
/// closed at once.
const MAX_HELLOS: usize = 64;

/// A worker process: its handle, and what its channels need to find it.
pub(super) struct Process {
    child: Child,
    /// The token its connections present (emptied once both arrived).
    token: String,
    /// The second connection, for [`Pool::send_socket`]: the pool's alone, so that
    /// it can wait for each acknowledgement on it.
    handoff: Option<Channel>,
    /// READY arrived before the hand-off connection; reported once both are there.
    ready_pending: bool,
    /// A supervisor (an upgrade's): asked to stop by its stop event, as
    /// [`request_stop`] does, rather than terminated.
    supervisor: bool,
}

impl Process {
    /// Ends it: a worker at once (Windows has no gentler way, `TerminateProcess`); a
    /// supervisor is asked to stop gracefully (its stop event), and killed after the
    /// grace period if it has not.
    pub(super) fn terminate(&mut self) {
        if self.supervisor && request_stop(self.child.id()).is_ok() {
            return;
        }
        let _ = self.child.kill();
    }

    /// Ends it (`TerminateProcess`).
    pub(super) fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Its exit status, once it has exited.
    pub(super) fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Waits for it to exit (after [`kill`](Self::kill)).
    pub(super) fn wait(&mut self) {
        let _ = self.child.wait();
    }
}

/// Where the threads that block (the control pipe) report to the pool: a queue, and
/// the loop woken for each report.
#[derive(Clone)]
pub(super) struct Reporter {
    queue: mpsc::Sender<Report>,
    waker: Waker,
}

impl Reporter {
    /// Queues `report` and wakes the pool; false if the pool is gone.
    pub(super) fn send(&self, report: Report) -> bool {
        let queued = self.queue.send(report).is_ok();
        // A pool that cannot be woken is gone, and the queue says so next time.
        let _ = self.waker.wake();
        queued
    }
}

/// What the control pipe's threads report.
pub(super) enum Report {
    /// A request line from the control pipe, where its answer goes, and when it
    /// was asked.
    Control {
        line: Vec<u8>,
        reply: mpsc::Sender<Vec<u8>>,
        asked: Instant,
    },
}

/// A connection to the rendezvous that has not presented its token yet.
struct Hello {
    channel: Channel,
    timer: TimerId,
}

/// What the Windows side of a pool keeps.
pub(super) struct OsState {
    /// Where workers connect their channels: its key and address.
    rendezvous: (Key, SocketAddr),
    /// The key of the event [`request_stop`] signals.
    stop: Key,
    /// Connections that have yet to present their token, by key.
    hellos: HashMap<Key, Hello>,
    /// The accept lock's mutex: held open here so that it exists while workers come
    /// and go.
    lock: Option<(String, OwnedHandle)>,
    reports: mpsc::Receiver<Report>,
    pub(super) reporter: Reporter,
    /// The control pipe's path, once listening.
    pub(super) control_path: Option<String>,
    /// Set when the pool is dropped or hands over: the control pipe's thread ends.
    pub(super) control_closed: Arc<AtomicBool>,
    /// Started by an upgrade: the pipe to open once the old supervisor closed it,
    /// and the timer that tries.
    pub(super) control_pending: Option<String>,
    pub(super) control_retry: Option<TimerId>,
    /// Sockets a new supervisor gets at an upgrade, besides the listeners.
    pub(super) upgrade_fds: Vec<(String, Listener)>,
    /// The upgrade in progress.
    pub(super) upgrade: Option<super::upgrade::Upgrade>,
    /// The upgrade succeeded: stop at the next poll.
    pub(super) stop_after_upgrade: bool,
    /// Why the last upgrade failed, for `status`.
    pub(super) upgrade_failed: Option<String>,
    /// This program, as it was found at start (the path an upgrade runs again).
    pub(super) own_exe: Option<std::path::PathBuf>,
    /// Started by an upgrade: the connection to the supervisor being replaced, until
    /// `os_started` watches it as `upstream`.
    pub(super) parent: Option<Channel>,
    /// Started by an upgrade: the supervisor being replaced is still to be told that
    /// every slot is ready.
    pub(super) ready_owed: bool,
    /// Started by an upgrade: that connection, on which the old supervisor moves
    /// its workers' connections here.
    pub(super) upstream: Option<(Channel, Key)>,
    /// Upgraded: the connection to the new supervisor, which takes this pool's
    /// moving connections.
    pub(super) downstream: Option<super::moving::Downstream>,
    /// Live connections on the move from a retired worker to another.
    pub(super) moves: crate::moves::Moves,
    /// Replies about moving connections not sent yet, in order.
    pub(super) replies: super::moving::Replies,
    /// This supervisor's copies of moving connections sent on, by origin and the
    /// origin's id, until their move settles.
    pub(super) held: HashMap<(u32, u64), std::net::TcpStream>,
}

/// What an upgrade keeps on Windows.
pub(super) struct UpgradeOs {
    /// The token the new supervisor's connection presents (with `/u`).
    token: String,
    /// That connection, once it presented the token.
    channel: Option<Channel>,
    /// It said it takes live connections (`HELLO`).
    hello: bool,
}

impl OsState {
    pub(super) fn new(
        config: &crate::Config,
        _program: &Path,
        reactor: &mut Reactor<Source>,
        _listeners: &mut Vec<(String, Listener)>,
    ) -> Result<OsState, Error> {
        let rendezvous =
            TcpListener::bind("127.0.0.1:0").map_err(Error::io("binding the rendezvous"))?;
        rendezvous
            .set_nonblocking(true)
            .map_err(Error::io("binding the rendezvous"))?;
        let addr = rendezvous
            .local_addr()
            .map_err(Error::io("binding the rendezvous"))?;
        let lock = if config.accept_lock.is_some() {
            let name = format!(
                "Local\\herder-accept-{}-{:016x}",
                std::process::id(),
                crate::sys::random_u64()
            );
            let handle =
                crate::sys::create_mutex(&name).map_err(Error::io("creating the accept lock"))?;
            Some((name, handle))
        } else {
            None
        };
        let stop_event = crate::sys::create_event(&stop_event_name(std::process::id()))
            .map_err(Error::io("creating the stop event"))?;
        let (queue, reports) = mpsc::channel();
        let reporter = Reporter {
            queue,
            waker: reactor.waker(),
        };
        let rendezvous = reactor
            .register(
                Source::Rendezvous(rendezvous),
                Interest::READABLE,
                Mode::Level,
            )
            .map_err(Error::io("watching the rendezvous"))?;
        let stop = reactor
            .add_waitable(stop_event)
            .map_err(Error::io("watching the stop event"))?;
        Ok(OsState {
            rendezvous: (rendezvous, addr),
            stop,
            hellos: HashMap::new(),
            lock,
            reports,
            reporter,
            control_path: None,
            control_closed: Arc::new(AtomicBool::new(false)),
            control_pending: None,
            control_retry: None,
            upgrade_fds: Vec::new(),
            upgrade: None,
            stop_after_upgrade: false,
            upgrade_failed: None,
            own_exe: std::env::current_exe().ok(),
            parent: parent_channel()?,
            ready_owed: false,
            upstream: None,
            downstream: None,
            moves: crate::moves::Moves::default(),
            replies: super::moving::Replies::default(),
            held: HashMap::new(),
        })
    }
}

impl Pool {
    /// Right after the pool is made: started by an upgrade, the connection to the
    /// old supervisor is watched for the connections it moves here (after a hello
    /// that says this pool takes them).
    pub(super) fn os_started(&mut self) {
        self.watches.insert(self.os.rendezvous.0, Watch::Rendezvous);
        self.watches.insert(self.os.stop, Watch::Stop);
        let Some(mut channel) = self.os.parent.take() else {
            return;
        };
        self.os.ready_owed = true;
        let hello = match self.config.move_connections {
            true => channel.send(crate::message::HELLO),
            false => Ok(()),
        };
        let watched = hello
            .and_then(|()| channel.set_nonblocking(true))
            .and_then(|()| self.watch_conn(&channel, Watch::Upstream));
        match watched {
            Ok(key) => self.os.upstream = Some((channel, key)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot take connections from the old supervisor");
                self.os.parent = Some(channel);
            }
        }
    }

    /// Starts a worker process for `slot`: this program again, told in its
    /// environment where to connect its channel and the token to present; its exit
    /// watched. The listeners follow once it connects.
    pub(super) fn launch(
        &mut self,
        slot: usize,
        generation: u64,
        record: Option<usize>,
    ) -> Result<Launched, Error> {
        // Unguessable: whoever presents it gets the worker's channel.
        let token = format!("{}{slot:x}", crate::sys::token());
        let names: Vec<&str> = self
            .listeners
            .iter()
            .chain(&self.slots[slot].own)
            .map(|(n, _)| n.as_str())
            .collect();
        let role = match record {
            Some(r) => format!("{slot}:{generation}:{r}"),
            None => format!("{slot}:{generation}"),
        };
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.config.env.iter().map(|(k, v)| (k, v)))
            .env(WORKER_ENV, role)
            .env(SUPERVISOR_ENV, std::process::id().to_string())
            .env_remove(UPGRADE_ENV)
            .env(SCOREBOARD_ENV, &self.board.0.name)
            .env(
                CHANNEL_ENV,
                format!("{} {token} {}", self.os.rendezvous.1, names.join(":")),
            )
            .stdin(Stdio::null());
        match &self.os.lock {
            Some((name, _)) => cmd.env(LOCK_ENV, name),
            None => cmd.env_remove(LOCK_ENV),
        };
        let spawn_err = |source| Error::Spawn { slot, source };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        // Its exit wakes the loop.
        let watched = std::os::windows::io::AsHandle::as_handle(&child)
            .try_clone_to_owned()
            .and_then(|h| self.reactor.add_waitable(h));
        let key = match watched {
            Ok(key) => key,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(spawn_err(e));
            }
        };
        let pid = child.id();
        self.watches.insert(key, Watch::Exit(pid));
        Ok(Launched {
            pid,
            process: Process {
                child,
                token,
                handoff: None,
                ready_pending: false,
                supervisor: false,
            },
            channel: None,
            watches: vec![key],
        })
    }

    /// Whether worker `pid`'s ready message makes it ready: once its hand-off
    /// connection is there too (else it is remembered until then).
    pub(super) fn may_be_ready(&mut self, pid: u32) -> bool {
        let Some(p) = self.procs.get_mut(&pid) else {
            return false;
        };
        if p.process.handoff.is_some() {
            return true;
        }
        p.process.ready_pending = true;
        false
    }

    /// Before each wait.
    pub(super) fn before_poll(&mut self, events: &mut Vec<PoolEvent>) {
        if std::mem::take(&mut self.os.stop_after_upgrade) {
            self.stop_inner(events);
        }
    }

    /// After each wait: the control pipe's requests.
    pub(super) fn after_poll(&mut self, events: &mut Vec<PoolEvent>) {
        while let Ok(r) = self.os.reports.try_recv() {
            self.on_report(r, events);
        }
    }

    /// A watched source of the platform's own.
    pub(super) fn on_os_watch(&mut self, key: Key, watch: Watch, events: &mut Vec<PoolEvent>) {
        match watch {
            // Once is enough: a stop is not undone.
            Watch::Stop => self.stop_inner(events),
            Watch::Rendezvous => self.accept_channels(),
            Watch::Hello => self.on_hello(key, events),
            Watch::Upstream => {
                self.flush_moves();
                self.read_upstream();
            }
            Watch::Downstream => {
                self.flush_moves();
                self.read_downstream();
            }
            Watch::Channel(_) | Watch::Exit(_) | Watch::UpgradeReady => {}
        }
    }

    /// A timer of the platform's own, one-shot.
    pub(super) fn on_os_timer(&mut self, timer: TimerFor) {
        if let TimerFor::Hello(key) = timer {
            // No token in time: whoever it is holds up nothing.
            if self.os.hellos.remove(&key).is_some() {
                self.forget_watch(key);
            }
        }
    }

    /// Any other event: the platform's repeating timer, or the caller's.
    pub(super) fn on_os_event(&mut self, ev: Event, events: &mut Vec<PoolEvent>) {
        match ev {
            Event::Wake => {}
            Event::Timer(id) if Some(id) == self.os.control_retry => self.retry_control(),
            other => events.push(PoolEvent::Other(other)),
        }
    }

    /// Tells a supervisor upgrading to this one that it is ready, once every slot
    /// is: a build whose workers crash does not take over.
    pub(super) fn report(&mut self) {
        if !self.os.ready_owed || !self.all_ready() {
            return;
        }
        self.os.ready_owed = false;
        if let Some((upstream, _)) = self.os.upstream.as_mut() {
            let _ = upstream.send(crate::message::READY);
            self.watch_moves_output();
        } else if let Some(mut parent) = self.os.parent.take() {
            let _ = parent.send(crate::message::READY);
        }
        self.retry_control();
    }

    /// When the pool is dropped, before its workers are killed.
    pub(super) fn os_drop(&mut self) {
        if let Some(mut u) = self.os.upgrade.take() {
            // A new supervisor half started: it must not outlive this one.
            u.process.kill();
        }
        self.close_control();
    }

    /// Takes the connections of starting workers, each watched until it presents
    /// its token ([`HELLO_WAIT`] at most).
    fn accept_channels(&mut self) {
        loop {
            let Some(Source::Rendezvous(rendezvous)) = self.reactor.get(self.os.rendezvous.0)
            else {
                return;
            };
            // Errors other than `WouldBlock` (a connection reset before it was taken)
            // concern that connection alone.
            let Ok((stream, _)) = rendezvous.accept() else {
                return;
            };
            // A worker started later must not inherit another's channel: its end
            // of file is how that worker learns the supervisor is gone.
            if self.os.hellos.len() >= MAX_HELLOS
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
                    .register(Source::Conn(stream), Interest::READABLE, Mode::Level)
            else {
                continue;
            };
            self.watches.insert(key, Watch::Hello);
            let timer = self.reactor.add_timer(Instant::now() + HELLO_WAIT, None);
            self.timers.insert(timer, TimerFor::Hello(key));
            self.os.hellos.insert(
                key,
                Hello {
                    channel: Channel::new(reader, 0),
                    timer,
                },
            );
        }
    }

    /// Reads the token of connection `key`; once it has one, gives the connection to
    /// the worker that presented it, or closes it.
    fn on_hello(&mut self, key: Key, events: &mut Vec<PoolEvent>) {
        let Some(hello) = self.os.hellos.get_mut(&key) else {
            return;
        };
        let token = match hello.channel.recv() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Ok(Some(m)) => Some(m.into_payload()),
            _ => None,
        };
        // The hello's reader read no further than the token's frame: a channel made
        // afresh on the socket finds the next frame whole.
        if let Some(hello) = self.os.hellos.remove(&key) {
            self.timers.remove(&hello.timer);
            self.reactor.cancel_timer(hello.timer);
        }
        self.watches.remove(&key);
        let adopted = token.is_some_and(|t| self.adopt_channel(key, &t, events));
        if !adopted {
            let _ = self.reactor.deregister(key);
        }
    }

    /// Connection `key` presented `token`: if it is a starting worker's, hands over
    /// the listeners and reads the channel from now on. Whether it was taken.
    fn adopt_channel(&mut self, key: Key, token: &[u8], events: &mut Vec<PoolEvent>) -> bool {
        if let Some(token) = token.strip_suffix(b"/u") {
            return self.adopt_upgrade(key, token);
        }
        // The hand-off connection presents the token with "/h" after it.
        let (token, handoff) = match token.strip_suffix(b"/h") {
            Some(t) => (t, true),
            None => (token, false),
        };
        let Some((&pid, p)) = self.procs.iter_mut().find(|(_, p)| {
            let free = match handoff {
                true => p.process.handoff.is_none(),
                false => p.channel.is_none(),
            };
            free && !p.process.token.is_empty() && p.process.token.as_bytes() == token
        }) else {
            return false;
        };
        if handoff {
            // Not watched: read only for each hand-off's acknowledgement, blocking and
            // bounded, so that a worker that stops acknowledging cannot hang the pool.
            let Ok(Source::Conn(stream)) = self.reactor.deregister(key) else {
                return true;
            };
            let blocking = stream
                .set_nonblocking(false)
                .and_then(|()| stream.set_read_timeout(Some(HELLO_WAIT)));
            if blocking.is_err() {
                return true;
            }
            p.process.handoff = Some(Channel::new(stream, pid));
            if p.channel.is_some() {
                // Each connection once.
                p.process.token.clear();
            }
            if std::mem::take(&mut p.process.ready_pending) {
                p.ready = true;
                self.on_ready(pid, events);
            }
            return true;
        }
        if p.process.handoff.is_some() {
            p.process.token.clear();
        }
        let slot = p.slot;
        let own = self.slots.get(slot).map_or(&[][..], |s| &s.own[..]);
        let sockets = self.listeners.iter().chain(own);
        match channel_with(&self.reactor, key, pid, sockets) {
            None => return false,
            Some(Err(source)) => {
                events.push(PoolEvent::SpawnFailed {
                    slot,
                    error: Error::Channel { slot, source },
                });
                p.process.kill();
                return false;
            }
            Some(Ok(channel)) => p.channel = Some(channel),
        }
        p.watches.push(key);
        self.watches.insert(key, Watch::Channel(pid));
        self.watch_output(pid);
        true
    }

    /// Hands `socket` to the ready worker of `slot`, duplicated for its pid, and
    /// waits for the worker's acknowledgement (5 s at most): the caller may close
    /// its copy once this returns `Ok`. Returns the worker's pid.
    ///
    /// # Errors
    ///
    /// [`Error::NoWorker`] if the slot has no ready worker (or it drains),
    /// [`Error::Channel`] if the hand-off failed; a worker whose hand-off channel
    /// failed is terminated and replaced.
    pub fn send_socket<S: herder_fd::Transfer + AsSocket>(
        &mut self,
        slot: usize,
        socket: &S,
        meta: &Handoff<'_>,
    ) -> Result<u32, Error> {
        let pid = self
            .slots
            .get(slot)
            .and_then(|s| s.current)
            .ok_or(Error::NoWorker(slot))?;
        let p = self
            .procs
            .get_mut(&pid)
            .filter(|p| p.ready && !p.draining)
            .ok_or(Error::NoWorker(slot))?;
        let ch = p.process.handoff.as_mut().ok_or(Error::NoWorker(slot))?;
        match ch.send_socket(socket, meta) {
            Ok(()) => Ok(pid),
            Err(source) => {
                // The framing is lost (or the worker is gone): it cannot take more.
                p.process.handoff = None;
                p.process.kill();
                Err(Error::Channel { slot, source })
            }
        }
    }
}

/// A channel to process `pid` on connection `key` (a non-blocking handle of the
/// pool's own on it), with `sockets` sent down it first, each a message of its own
/// named by its header's data. The pool keeps its copies for good, so nothing waits
/// for the other side's word that it has its own. `None` if `key` is no connection.
fn channel_with<'a>(
    reactor: &Reactor<Source>,
    key: Key,
    pid: u32,
    sockets: impl Iterator<Item = &'a (String, Listener)>,
) -> Option<io::Result<Channel>> {
    let Source::Conn(conn) = reactor.get(key)? else {
        return None;
    };
    let stream = conn
        .try_clone()
        .and_then(|s| s.set_nonblocking(true).map(|()| s));
    let mut channel = match stream {
        Ok(s) => Channel::from_tcp(s, pid),
        Err(e) => return Some(Err(e)),
    };
    for (i, (name, listener)) in sockets.enumerate() {
        let meta = Handoff {
            id: i as u64,
            peer: None,
            data: name.as_bytes(),
        };
        if let Err(e) = channel.send_sockets(&[(listener, meta)]) {
            return Some(Err(e));
        }
    }
    Some(Ok(channel))
}

/// The name of the event that stops the pool of supervisor `pid`.
fn stop_event_name(pid: u32) -> String {
    format!("Local\\herder-stop-{pid}")
}

/// Asks the pool of supervisor `pid` (in this session, of this user) to stop
/// gracefully, as `SIGTERM` does on Unix: Windows has no signals, and a server
/// without a console gets no Ctrl-C. The pool's event loop watches its stop event
/// and starts a graceful stop when it is signaled.
///
/// # Errors
///
/// `NotFound` if no pool of that pid exists; what `SetEvent` returns.
pub fn request_stop(pid: u32) -> io::Result<()> {
    crate::sys::signal_event(&stop_event_name(pid))
}

pub use super::control_pipe::control_pipe_path;
