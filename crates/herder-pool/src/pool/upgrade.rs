//! Binary upgrades: the program on disk started as a new supervisor with this
//! pool's listeners and control socket, watched until it is ready, then handed over.

use super::*;
use crate::sys;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixDatagram;

/// An upgrade in progress.
pub(super) struct Upgrade {
    /// The new supervisor.
    pub(super) pid: u32,
    /// The private directory of the readiness socket.
    pub(super) dir: PathBuf,
    /// The readiness socket's key.
    pub(super) key: Key,
    /// The periodic check.
    pub(super) timer: TimerId,
    /// When the new supervisor must be ready by.
    pub(super) deadline: Instant,
    /// Why it is being stopped, once it is.
    pub(super) failed: Option<String>,
    /// When to kill it if `SIGTERM` did not end it.
    pub(super) kill_at: Option<Instant>,
    /// This end of the channel the new supervisor takes moving connections on.
    pub(super) moves: Option<Channel>,
}

impl Pool {
    /// A stop abandons an upgrade in progress: the new supervisor must not outlive a
    /// stop the operator asked for.
    pub(super) fn abandon_upgrade(&mut self) {
        let grace = self.config.kill_grace;
        if let Some(u) = self.os.upgrade.as_mut() {
            if u.failed.is_none() {
                u.failed = Some("the pool is stopping".into());
                let _ = sys::signal(u.pid, libc::SIGTERM);
                u.kill_at = Some(Instant::now() + grace);
            }
        }
    }

    /// Adds a descriptor a new supervisor inherits at an [`upgrade`](Self::upgrade),
    /// under `name` in its `LISTEN_FDNAMES`: a listener of the caller's own (the
    /// pool's listeners are passed anyway). The new program finds it with
    /// [`systemd::listen_fds`](crate::systemd::listen_fds), as if systemd had passed
    /// it.
    pub fn pass_on_upgrade(&mut self, name: &str, fd: OwnedFd) {
        self.os.upgrade_fds.push((name.to_string(), fd));
    }

    /// Starts a zero-downtime upgrade (`SIGUSR2`, or `upgrade` on the control
    /// socket): runs the program now on disk at this program's path as a new
    /// supervisor, with the same arguments, handing it the listeners (the pool's
    /// and [`pass_on_upgrade`](Self::pass_on_upgrade)'s) and the control socket as
    /// inherited descriptors named in `LISTEN_FDS`/`LISTEN_FDNAMES`. Both serve
    /// while the new one starts. When the new supervisor's workers are all ready it
    /// says so ([`PoolEvent::Upgraded`]), and this pool stops gracefully; if it exits
    /// first or is not ready within the ready timeout, it is stopped and this pool
    /// carries on ([`PoolEvent::UpgradeFailed`]).
    ///
    /// The new program must take its listeners with
    /// [`systemd::listen_fds`](crate::systemd::listen_fds) before binding, and open
    /// its control socket at the same path. Not with per-slot listeners
    /// ([`set_slot_listeners`](Self::set_slot_listeners)).
    pub fn upgrade(&mut self, events: &mut Vec<PoolEvent>) {
        let before = events.len();
        self.upgrade_inner(events);
        trace_events(&events[before..]);
    }

    pub(super) fn upgrade_inner(&mut self, events: &mut Vec<PoolEvent>) {
        if self.stopping || self.os.upgrade.is_some() {
            return;
        }
        match self.start_upgrade() {
            Ok(u) => {
                let pid = u.pid;
                self.os.upgrade = Some(u);
                self.os.upgrade_failed = None;
                events.push(PoolEvent::UpgradeStarted { pid });
            }
            Err(e) => {
                let reason = e.to_string();
                self.os.upgrade_failed = Some(reason.clone());
                events.push(PoolEvent::UpgradeFailed { reason });
            }
        }
    }

    pub(super) fn start_upgrade(&mut self) -> Result<Upgrade, Error> {
        if self.slot_listeners.is_some() {
            return Err(Error::Environment(
                "an upgrade cannot pass per-slot listeners".into(),
            ));
        }
        let program = self
            .os
            .own_exe
            .clone()
            .ok_or_else(|| Error::Environment("this program's path is unknown".into()))?;
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
        self.watches.insert(key, Watch::UpgradeReady);
        let every = Duration::from_millis(50);
        let timer = self.reactor.add_timer(Instant::now() + every, Some(every));
        self.timers.insert(timer, TimerFor::Upgrade);
        Ok(Upgrade {
            pid: spawned.pid,
            dir,
            key,
            timer,
            deadline: Instant::now() + self.config.ready_timeout,
            failed: None,
            kill_at: None,
            moves: moves.map(|(ours, _)| ours),
        })
    }

    /// The new supervisor wrote to the readiness socket.
    pub(super) fn on_upgrade_ready(&mut self, events: &mut Vec<PoolEvent>) {
        let Some(u) = &self.os.upgrade else { return };
        let mut ready = false;
        if let Some(Source::Datagram(socket)) = self.reactor.get(u.key) {
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

    /// The upgrade's periodic check: the new supervisor's exit, the ready timeout,
    /// the kill after the grace period.
    pub(super) fn on_upgrade_tick(&mut self, timer: TimerId, events: &mut Vec<PoolEvent>) {
        let grace = self.config.kill_grace;
        let ready_timeout = self.config.ready_timeout;
        let Some(u) = self.os.upgrade.as_mut() else {
            self.reactor.cancel_timer(timer);
            return;
        };
        self.timers.insert(timer, TimerFor::Upgrade);
        match sys::try_wait(u.pid) {
            Ok(None) => {}
            Ok(Some(status)) => {
                let reason = u.failed.take().unwrap_or_else(|| {
                    format!("the new supervisor exited before it was ready ({status})")
                });
                self.end_upgrade(Err(reason), events);
                return;
            }
            Err(e) => {
                self.end_upgrade(Err(format!("the new supervisor was lost: {e}")), events);
                return;
            }
        }
        let now = Instant::now();
        if u.failed.is_none() && now >= u.deadline {
            u.failed = Some(format!(
                "the new supervisor was not ready within {ready_timeout:?}"
            ));
            let _ = sys::signal(u.pid, libc::SIGTERM);
            u.kill_at = Some(now + grace);
        }
        if u.kill_at.is_some_and(|at| now >= at) {
            let _ = sys::signal(u.pid, libc::SIGKILL);
            u.kill_at = None;
        }
    }

    /// Ends the upgrade in progress: on success, hands over and stops; on failure,
    /// goes on (the new supervisor is gone already).
    pub(super) fn end_upgrade(&mut self, result: Result<(), String>, events: &mut Vec<PoolEvent>) {
        let Some(u) = self.os.upgrade.take() else {
            return;
        };
        self.watches.remove(&u.key);
        let _ = self.reactor.deregister(u.key);
        self.timers.remove(&u.timer);
        self.reactor.cancel_timer(u.timer);
        let _ = std::fs::remove_dir_all(&u.dir);
        match result {
            Ok(()) => {
                if let Some(r) = self.os.systemd.take() {
                    let _ = r.notifier.notify(&format!("MAINPID={}", u.pid));
                }
                // The new main process speaks to systemd from now on: no STOPPING=1
                // or watchdog ping from this one.
                if let Some(t) = self.os.watchdog.take() {
                    self.reactor.cancel_timer(t);
                }
                // The control socket is the new supervisor's now: stop answering on
                // it, and leave the path alone.
                let keys: Vec<Key> = self
                    .watches
                    .iter()
                    .filter(|(_, w)| matches!(w, Watch::ControlListener))
                    .map(|(k, _)| *k)
                    .collect();
                for key in keys {
                    self.watches.remove(&key);
                    let _ = self.reactor.deregister(key);
                }
                self.os.control_path = None;
                if let Some(channel) = u.moves {
                    self.watch_downstream(channel, u.pid);
                }
                events.push(PoolEvent::Upgraded { pid: u.pid });
                // The graceful stop begins at the next poll: the caller first sees
                // `Upgraded` while the workers still take connections (the hand-off
                // supervisor's last ones).
                self.os.stop_after_upgrade = true;
            }
            Err(reason) => {
                self.os.upgrade_failed = Some(reason.clone());
                events.push(PoolEvent::UpgradeFailed { reason });
            }
        }
    }
}
