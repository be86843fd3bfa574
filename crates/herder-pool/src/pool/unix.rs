//! The pool's Unix side: workers started by re-executing the program with their
//! descriptors (fork and exec, never a fork alone), their exits watched through a
//! pidfd (Linux) or `SIGCHLD` and a periodic look, signals to terminate and kill
//! them; the operator's signals, systemd's notifications, and what binary upgrades
//! and live connection moves keep.

use super::{
    Error, Event, Interest, Launched, Listener, Mode, Pool, PoolEvent, Source, State, TimerFor,
    Watch, control_socket::ControlConn, moving, upgrade::Upgrade,
};
use crate::moves::Moves;
use crate::scoreboard::SCOREBOARD_NAME;
use crate::sys;
use crate::worker::{CHANNEL_NAME, WORKER_ENV};
use herder_fd::Channel;
use herder_reactor::{Key, Reactor, Signal, TimerId};
use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// A worker process, by pid.
pub(super) struct Process {
    pid: u32,
}

impl Process {
    /// Asks it to exit (`SIGTERM`).
    pub(super) fn terminate(&mut self) {
        let _ = sys::signal(self.pid, libc::SIGTERM);
    }

    /// Ends it (`SIGKILL`).
    pub(super) fn kill(&mut self) {
        let _ = sys::signal(self.pid, libc::SIGKILL);
    }

    /// Its exit status, once it has exited (and is reaped by this).
    pub(super) fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        sys::try_wait(self.pid)
    }

    /// Waits up to 5 s for it to exit.
    pub(super) fn wait(&mut self) {
        let _ = wait_blocking(self.pid);
    }
}

pub(super) fn wait_blocking(pid: u32) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while sys::try_wait(pid)?.is_none() {
        if Instant::now() > deadline {
            return Err(io::ErrorKind::TimedOut.into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// What the Unix side of a pool keeps.
pub(super) struct OsState {
    /// The environment every worker starts with (the supervisor's, less the
    /// variables meant for it alone).
    pub(super) base_env: Vec<(OsString, OsString)>,
    /// Exits are noticed by `SIGCHLD` (no pidfd).
    pub(super) sigchld: bool,
    /// Looks for exits periodically where no pidfd tells.
    pub(super) reap_timer: Option<TimerId>,
    /// Whether the operator's signals are handled ([`Pool::handle_signals`]).
    pub(super) signals: bool,
    /// The control socket's path, removed on drop.
    pub(super) control_path: Option<PathBuf>,
    /// The user the control socket answers (with root): the one that opened it, even
    /// if the supervisor switched users since.
    pub(super) control_owner: u32,
    pub(super) control_conns: HashMap<Key, ControlConn>,
    /// Descriptors a new supervisor inherits at an upgrade, besides the listeners.
    pub(super) upgrade_fds: Vec<(String, OwnedFd)>,
    /// The upgrade in progress.
    pub(super) upgrade: Option<Upgrade>,
    /// The upgrade succeeded: stop at the next poll.
    pub(super) stop_after_upgrade: bool,
    /// Why the last upgrade failed, for `status`.
    pub(super) upgrade_failed: Option<String>,
    /// This program, as it was found at start (the path an upgrade runs again).
    pub(super) own_exe: Option<PathBuf>,
    /// The old supervisor waiting for this one to be ready, during an upgrade.
    pub(super) parent: Option<crate::systemd::Notifier>,
    /// The inherited control socket's path, while the old supervisor has not handed
    /// over yet.
    pub(super) inherited_control_path: Option<PathBuf>,
    /// What the pool tells systemd, when `NOTIFY_SOCKET` is set.
    pub(super) systemd: Option<crate::systemd::Reporter>,
    /// The repeating timer of systemd's watchdog ping.
    pub(super) watchdog: Option<TimerId>,
    /// Live connections on the move from a retired worker to another.
    pub(super) moves: Moves,
    /// Started by an upgrade: the channel on which the old supervisor moves its
    /// workers' connections here.
    pub(super) upstream: Option<(Channel, Key)>,
    /// Upgraded: the channel to the new supervisor, which takes this pool's moving
    /// connections.
    pub(super) downstream: Option<moving::Downstream>,
    /// Replies about moving connections not sent yet (a channel was full), in
    /// order, and whether a retry is armed.
    pub(super) replies: moving::Replies,
}

impl OsState {
    pub(super) fn new(
        config: &crate::Config,
        program: &Path,
        reactor: &mut Reactor<Source>,
        listeners: &mut Vec<(String, Listener)>,
    ) -> Result<OsState, Error> {
        if let Some(who) = config.worker_credentials {
            // Every start would fail with EACCES otherwise, each retried and backed
            // off: say at once what to change.
            who.check_can_execute(program)
                .map_err(Error::io("the workers' user cannot run the program"))?;
        }
        let mut base_env: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| {
                !sys::is_listen_var(k)
                    && !sys::is_notify_var(k)
                    && k != crate::systemd::UPGRADE_ENV
                    && k != WORKER_ENV
                    && k != crate::accept_lock::LOCK_ENV
            })
            .chain(config.env.iter().cloned())
            .collect();
        if let Some(kind) = config.accept_lock {
            let fd =
                crate::AcceptLock::create(kind).map_err(Error::io("creating the accept lock"))?;
            listeners.push((crate::accept_lock::LOCK_NAME.to_string(), fd));
            base_env.push((crate::accept_lock::LOCK_ENV.into(), kind.name().into()));
        }
        // Without pidfds, exits are noticed by SIGCHLD — if this is the process's
        // only event loop watching signals — and by a periodic check in any case.
        let sigchld = !cfg!(any(target_os = "linux", target_os = "android"))
            && reactor.watch_signals(&[Signal::Child]).is_ok();
        let systemd = match config.systemd_notify {
            true => crate::systemd::Notifier::from_env()
                .map_err(|e| Error::Environment(e.to_string()))?,
            false => None,
        };
        let watchdog = systemd.as_ref().and_then(|n| n.watchdog()).map(|t| {
            let every = (t / 2).max(Duration::from_millis(10));
            reactor.add_timer(Instant::now(), Some(every))
        });
        // Started by a supervisor being upgraded: tell it when ready.
        let parent = match std::env::var_os(crate::systemd::UPGRADE_ENV) {
            Some(path) => Some(
                crate::systemd::Notifier::to_path(Path::new(&path))
                    .map_err(Error::io("reaching the supervisor being upgraded"))?,
            ),
            None => None,
        };
        Ok(OsState {
            base_env,
            sigchld,
            reap_timer: None,
            signals: false,
            control_path: None,
            control_owner: sys::geteuid(),
            control_conns: HashMap::new(),
            upgrade_fds: Vec::new(),
            upgrade: None,
            stop_after_upgrade: false,
            upgrade_failed: None,
            own_exe: std::env::current_exe().ok(),
            parent,
            inherited_control_path: None,
            systemd: systemd.map(crate::systemd::Reporter::new),
            watchdog,
            moves: Moves::default(),
            upstream: None,
            downstream: None,
            replies: moving::Replies::default(),
        })
    }
}

impl Pool {
    /// Right after the pool is made.
    pub(super) fn os_started(&mut self) {
        if !cfg!(any(target_os = "linux", target_os = "android")) {
            self.need_sigchld();
        }
        if self.os.parent.is_some() {
            if let Some(channel) = crate::systemd::inherited_moves() {
                self.watch_upstream(channel);
            }
        }
    }

    /// Starts a worker process for `slot`: this program again, with the listeners
    /// (the pool's and the slot's own), its channel and the scoreboard as inherited
    /// descriptors, its exit watched.
    pub(super) fn launch(
        &mut self,
        slot: usize,
        generation: u64,
        record: Option<usize>,
    ) -> Result<Launched, Error> {
        let spawn_err = |source| Error::Spawn { slot, source };
        let (parent, child) = Channel::pair().map_err(spawn_err)?;
        parent.set_nonblocking(true).map_err(spawn_err)?;
        let mut env = self.os.base_env.clone();
        let role = match record {
            Some(r) => format!("{slot}:{generation}:{r}"),
            None => format!("{slot}:{generation}"),
        };
        env.push((WORKER_ENV.into(), role.into()));
        let child_fd = OwnedFd::from(child);
        let mut fds: Vec<(BorrowedFd<'_>, &str)> = self
            .listeners
            .iter()
            .chain(&self.slots[slot].own)
            .map(|(n, fd)| (fd.as_fd(), n.as_str()))
            .collect();
        fds.push((child_fd.as_fd(), CHANNEL_NAME));
        if record.is_some() {
            fds.push((self.board.0.as_fd(), SCOREBOARD_NAME));
        }
        let spawned = sys::spawn(
            &self.program,
            &self.args,
            &env,
            &fds,
            self.config.worker_credentials,
        )
        .map_err(spawn_err)?;
        drop(fds);
        drop(child_fd);
        let pid = spawned.pid;
        let mut watches = Vec::new();
        let dup = parent.as_fd().try_clone_to_owned().map_err(spawn_err);
        let watch_channel = dup.and_then(|fd| {
            self.reactor
                .register(Source::Fd(fd), Interest::READABLE, Mode::Level)
                .map_err(spawn_err)
        });
        match watch_channel {
            Ok(key) => {
                self.watches.insert(key, Watch::Channel(pid));
                watches.push(key);
            }
            Err(e) => {
                // Without its channel the worker is useless: stop it.
                let _ = sys::signal(pid, libc::SIGKILL);
                let _ = wait_blocking(pid);
                return Err(e);
            }
        }
        match spawned.pidfd {
            Some(pidfd) => {
                match self
                    .reactor
                    .register(Source::Fd(pidfd), Interest::READABLE, Mode::Level)
                {
                    Ok(key) => {
                        self.watches.insert(key, Watch::Exit(pid));
                        watches.push(key);
                    }
                    Err(_) => self.need_sigchld(),
                }
            }
            None => self.need_sigchld(),
        }
        Ok(Launched {
            pid,
            process: Process { pid },
            channel: Some(parent),
            watches,
        })
    }

    /// Whether worker `pid`'s ready message makes it ready: on Unix, always.
    pub(super) fn may_be_ready(&mut self, _pid: u32) -> bool {
        true
    }

    /// Without a pidfd, exits are noticed through `SIGCHLD`.
    pub(super) fn need_sigchld(&mut self) {
        if !self.os.sigchld && self.reactor.watch_signals(&[Signal::Child]).is_ok() {
            self.os.sigchld = true;
        }
        // A SIGCHLD can be lost (a child that died before the handler was there) or
        // the signal pipe taken by another loop: look for exits every second too.
        if self.os.reap_timer.is_none() {
            let every = Duration::from_secs(1);
            self.os.reap_timer = Some(self.reactor.add_timer(Instant::now() + every, Some(every)));
        }
    }

    /// Before each wait.
    pub(super) fn before_poll(&mut self, events: &mut Vec<PoolEvent>) {
        if std::mem::take(&mut self.os.stop_after_upgrade) {
            self.stop_inner(events);
        }
    }

    /// After each wait.
    pub(super) fn after_poll(&mut self, _events: &mut Vec<PoolEvent>) {}

    /// A watched source of the platform's own.
    pub(super) fn on_os_watch(&mut self, key: Key, watch: Watch, events: &mut Vec<PoolEvent>) {
        match watch {
            Watch::ControlListener => self.accept_control(key),
            Watch::ControlConn => self.serve_control(key, events),
            Watch::Upstream => self.read_upstream(),
            Watch::Downstream => self.read_downstream(),
            Watch::Channel(_) | Watch::Exit(_) | Watch::UpgradeReady => {}
        }
    }

    /// A timer of the platform's own, one-shot.
    pub(super) fn on_os_timer(&mut self, timer: TimerFor) {
        match timer {
            TimerFor::ControlRetry(key) => {
                let _ = self.reactor.modify(key, Interest::READABLE, Mode::Level);
            }
            TimerFor::Slot(_) | TimerFor::Proc(_) | TimerFor::Upgrade | TimerFor::Replies => {}
        }
    }

    /// Any other event: the platform's repeating timers and signals, or the caller's.
    pub(super) fn on_os_event(&mut self, ev: Event, events: &mut Vec<PoolEvent>) {
        match ev {
            Event::Timer(id) if Some(id) == self.os.watchdog => {
                if let Some(r) = &self.os.systemd {
                    let _ = r.notifier.notify("WATCHDOG=1");
                }
            }
            Event::Timer(id) if Some(id) == self.os.reap_timer => self.reap_all(events),
            Event::Signal(Signal::Child) if self.os.sigchld => self.reap_all(events),
            Event::Signal(sig) if self.os.signals && sig != Signal::Child => {
                self.on_signal(sig, events)
            }
            other => events.push(PoolEvent::Other(other)),
        }
    }

    fn reap_all(&mut self, events: &mut Vec<PoolEvent>) {
        let pids: Vec<u32> = self.procs.keys().copied().collect();
        for pid in pids {
            self.reap(pid, events);
        }
    }

    /// Tells systemd (`sd_notify`) what changed, if it listens, and a supervisor
    /// upgrading to this one that it is ready.
    pub(super) fn report(&mut self) {
        if self.os.systemd.is_none() && self.os.parent.is_none() {
            return;
        }
        let ready = self
            .slots
            .iter()
            .filter(|s| s.state == State::Ready)
            .count();
        let snapshot = crate::systemd::Snapshot {
            ready,
            slots: self.slots.len(),
            settled: !self
                .slots
                .iter()
                .any(|s| matches!(s.state, State::Starting | State::Backoff)),
            reloading: self.reloading.is_some() || self.reload_pending,
            stopping: self.stopping,
            generation: self.generation,
            processes: self.procs.len(),
        };
        // A supervisor upgrading to this one hands over only when every slot is
        // ready: a build whose workers crash does not take over.
        if self.all_ready() {
            if let Some(parent) = self.os.parent.take() {
                let _ = parent.notify(&format!("READY=1\nMAINPID={}", sys::getpid()));
                // The control socket's file is this process's to remove from now on;
                // before, a failed start must not remove the old supervisor's.
                if self.os.control_path.is_none() {
                    self.os.control_path = self.os.inherited_control_path.take();
                }
            }
        }
        if let Some(reporter) = self.os.systemd.as_mut() {
            reporter.update(&snapshot);
        }
    }

    /// When the pool is dropped, before its workers are killed.
    pub(super) fn os_drop(&mut self) {
        if let Some(mut u) = self.os.upgrade.take() {
            // A new supervisor half started: it must not outlive this one's exit.
            u.process.terminate();
            let _ = std::fs::remove_dir_all(&u.os.dir);
        }
        if let Some(path) = &self.os.control_path {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Sends a message with descriptors to the current worker of `slot` over its
    /// channel, if it is ready (Unix only: Windows channels carry sockets alone, with
    /// [`send_sockets`](Self::send_sockets)). `Ok` names the worker's pid.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub fn send_with_fds(
        &mut self,
        slot: usize,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<u32, Error> {
        let (pid, ch) = self.ready_worker(slot)?;
        ch.send(payload, fds)
            .map_err(|source| Error::Channel { slot, source })?;
        Ok(pid)
    }

    /// Hands a socket to the current worker of `slot` with its header (herder-fd's
    /// typed hand-off), if the worker is ready. `Ok` means the kernel has it — the
    /// caller may close its copy — and names the pid of the worker it went to. Ids
    /// with the top bit set are the pool's own (connections moving between workers):
    /// keep yours below 2⁶³.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub fn send_socket<S: herder_fd::Transfer + AsFd>(
        &mut self,
        slot: usize,
        socket: &S,
        meta: &herder_fd::Handoff<'_>,
    ) -> Result<u32, Error> {
        let (pid, ch) = self.ready_worker(slot)?;
        ch.send_socket(socket, meta)
            .map_err(|source| Error::Channel { slot, source })?;
        Ok(pid)
    }

    /// Sends `sig` to the current worker of `slot` (Unix only).
    ///
    /// # Errors
    ///
    /// [`Error::NoWorker`] if the slot has no running worker.
    pub fn signal(&mut self, slot: usize, sig: i32) -> Result<(), Error> {
        let pid = self
            .slots
            .get(slot)
            .and_then(|s| s.current)
            .ok_or(Error::NoWorker(slot))?;
        sys::signal(pid, sig).map_err(Error::io("signalling a worker"))
    }

    /// Handles the operator's signals the usual way: `SIGTERM` and `SIGINT` stop
    /// gracefully, `SIGHUP` reloads, `SIGTTIN` and `SIGTTOU` add and remove a worker,
    /// `SIGUSR2` upgrades. Each is also reported as a [`PoolEvent::Command`].
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if another event loop of this process watches signals.
    pub fn handle_signals(&mut self) -> Result<(), Error> {
        self.reactor
            .watch_signals(&[
                Signal::Terminate,
                Signal::Interrupt,
                Signal::Hangup,
                Signal::TtyIn,
                Signal::TtyOut,
                Signal::User2,
            ])
            .map_err(Error::io("watching signals"))?;
        self.os.signals = true;
        Ok(())
    }

    fn on_signal(&mut self, sig: Signal, events: &mut Vec<PoolEvent>) {
        let cmd = match sig {
            Signal::Terminate | Signal::Interrupt => crate::Command::Stop,
            Signal::Hangup => crate::Command::Reload,
            Signal::TtyIn => crate::Command::Scale(self.slots.len() + 1),
            Signal::TtyOut => crate::Command::Scale(self.slots.len().saturating_sub(1).max(1)),
            Signal::User2 => crate::Command::Upgrade,
            other => {
                events.push(PoolEvent::Other(Event::Signal(other)));
                return;
            }
        };
        crate::control::execute(self, &cmd, events);
        events.push(PoolEvent::Command(cmd));
    }
}

/// What an upgrade keeps on Unix.
pub(super) struct UpgradeOs {
    /// The private directory of the readiness socket.
    dir: PathBuf,
    /// This end of the channel the new supervisor takes moving connections on.
    moves: Option<Channel>,
}

impl Pool {
    /// Starts the new supervisor: this program with the listeners, the control
    /// socket and a channel for moving connections as inherited descriptors, and a
    /// readiness socket's path.
    pub(super) fn start_upgrade(&mut self) -> Result<Upgrade, Error> {
        let program = self.upgrade_program()?;
        let dir = sys::private_dir().map_err(Error::io("creating the upgrade's directory"))?;
        let ready =
            UnixDatagram::bind(dir.join("ready")).and_then(|s| s.set_nonblocking(true).map(|()| s));
        let ready = match ready {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(Error::Io {
                    what: "binding the upgrade's readiness socket",
                    source: e,
                });
            }
        };
        // The supervisor's own environment, without what was meant for this process
        // alone; systemd's notification socket stays, for the new main process.
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| {
                !sys::is_listen_var(k) && k != "WATCHDOG_PID" && k != crate::systemd::UPGRADE_ENV
            })
            .collect();
        env.push((
            crate::systemd::UPGRADE_ENV.into(),
            dir.join("ready").into_os_string(),
        ));
        let control = self
            .watches
            .iter()
            .find(|(_, w)| matches!(w, Watch::ControlListener))
            .and_then(|(k, _)| match self.reactor.get(*k) {
                Some(Source::ControlListener(l)) => Some(l.as_fd()),
                _ => None,
            });
        let mut fds: Vec<(BorrowedFd<'_>, &str)> = self
            .listeners
            .iter()
            .filter(|(n, _)| n != crate::accept_lock::LOCK_NAME)
            .chain(&self.os.upgrade_fds)
            .map(|(n, fd)| (fd.as_fd(), n.as_str()))
            .collect();
        if let Some(c) = control {
            fds.push((c, crate::systemd::CONTROL_NAME));
        }
        // Where this pool's workers' connections move to, if the pool moves them.
        let moves = match self.config.move_connections {
            true => Channel::pair().ok(),
            false => None,
        };
        if let Some((_, theirs)) = &moves {
            fds.push((theirs.as_fd(), crate::systemd::MOVES_NAME));
        }
        let args: Vec<OsString> = std::env::args_os().skip(1).collect();
        let spawned = sys::spawn(&program, &args, &env, &fds, None);
        drop(fds);
        let spawned = match spawned {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(Error::Io {
                    what: "starting the new program",
                    source: e,
                });
            }
        };
        let key =
            match self
                .reactor
                .register(Source::Datagram(ready), Interest::READABLE, Mode::Level)
            {
                Ok(key) => key,
                Err(source) => {
                    // Unwatched, it must not go on.
                    let _ = sys::signal(spawned.pid, libc::SIGKILL);
                    let _ = sys::try_wait(spawned.pid);
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(Error::Io {
                        what: "watching the upgrade's readiness socket",
                        source,
                    });
                }
            };
        let os = UpgradeOs {
            dir,
            moves: moves.map(|(ours, _)| ours),
        };
        Ok(self.watch_upgrade(spawned.pid, Process { pid: spawned.pid }, Some(key), os))
    }

    /// The new supervisor wrote to the readiness socket.
    pub(super) fn on_upgrade_ready(&mut self, events: &mut Vec<PoolEvent>) {
        let Some(u) = &self.os.upgrade else { return };
        let mut ready = false;
        if let Some(Source::Datagram(socket)) = u.key.and_then(|k| self.reactor.get(k)) {
            let mut buf = [0u8; 512];
            // Bounded: whatever else arrives waits for the next wake-up.
            for _ in 0..16 {
                let Ok(n) = socket.recv(&mut buf) else { break };
                ready |= buf[..n].split(|&b| b == b'\n').any(|l| l == b"READY=1");
            }
        }
        if ready && u.failed.is_none() {
            self.end_upgrade(Ok(()), events);
        }
    }

    /// The new supervisor is ready: it speaks to systemd and answers on the control
    /// socket from now on, and takes the workers' moving connections.
    pub(super) fn hand_over(&mut self, u: Upgrade) {
        let _ = std::fs::remove_dir_all(&u.os.dir);
        if let Some(r) = self.os.systemd.take() {
            let _ = r.notifier.notify(&format!("MAINPID={}", u.pid));
        }
        // The new main process speaks to systemd from now on: no STOPPING=1 or
        // watchdog ping from this one.
        if let Some(t) = self.os.watchdog.take() {
            self.reactor.cancel_timer(t);
        }
        // The control socket is the new supervisor's now: stop answering on it, and
        // leave the path alone.
        let keys: Vec<Key> = self
            .watches
            .iter()
            .filter(|(_, w)| matches!(w, Watch::ControlListener))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            self.forget_watch(key);
        }
        self.os.control_path = None;
        if let Some(channel) = u.os.moves {
            self.watch_downstream(channel, u.pid);
        }
    }

    /// A failed upgrade's leftovers.
    pub(super) fn drop_upgrade(&mut self, u: Upgrade) {
        let _ = std::fs::remove_dir_all(&u.os.dir);
    }
}
