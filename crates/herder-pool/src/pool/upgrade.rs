//! Binary upgrades: the program on disk started as a new supervisor with this
//! pool's listeners (and control endpoint), watched until it is ready, then handed
//! over. The flow is this file's, for every platform; how the new supervisor gets
//! the listeners and says it is ready is the platform's (`start_upgrade`,
//! `hand_over`): inherited descriptors and a datagram on Unix, duplicated sockets
//! and a message over a rendezvous connection on Windows.

use super::*;

/// An upgrade in progress.
pub(super) struct Upgrade {
    /// The new supervisor.
    pub(super) pid: u32,
    pub(super) process: Process,
    /// Where it says it is ready: the readiness socket (Unix) or its connection
    /// (Windows, once it connected).
    pub(super) key: Option<Key>,
    /// The periodic check.
    pub(super) timer: TimerId,
    /// When the new supervisor must be ready by.
    pub(super) deadline: Instant,
    /// Why it is being stopped, once it is.
    pub(super) failed: Option<String>,
    /// When to kill it if asking it to stop did not end it.
    pub(super) kill_at: Option<Instant>,
    /// What the platform keeps for it.
    pub(super) os: UpgradeOs,
}

#[cfg(unix)]
pub(super) use super::unix::UpgradeOs;
#[cfg(windows)]
pub(super) use super::windows::UpgradeOs;

impl Pool {
    /// A stop abandons an upgrade in progress: the new supervisor must not outlive a
    /// stop the operator asked for.
    pub(super) fn abandon_upgrade(&mut self) {
        let grace = self.config.kill_grace;
        if let Some(u) = self.os.upgrade.as_mut() {
            if u.failed.is_none() {
                u.failed = Some("the pool is stopping".into());
                u.process.terminate();
                u.kill_at = Some(Instant::now() + grace);
            }
        }
    }

    /// Adds a socket a new supervisor gets at an [`upgrade`](Self::upgrade), under
    /// `name`: a listener of the caller's own (the pool's listeners are passed
    /// anyway). The new program finds it with
    /// [`inherited_sockets`](crate::inherited_sockets), as if systemd had passed it.
    pub fn pass_on_upgrade(&mut self, name: &str, socket: Descriptor) {
        self.os
            .upgrade_fds
            .push((name.to_string(), Listener::from(socket)));
    }

    /// Starts a zero-downtime upgrade (`SIGUSR2`, or `upgrade` on the control
    /// endpoint): runs the program now on disk at this program's path as a new
    /// supervisor, with the same arguments, handing it the listeners (the pool's
    /// and [`pass_on_upgrade`](Self::pass_on_upgrade)'s) and the control endpoint.
    /// Both serve while the new one starts. When the new supervisor's workers are
    /// all ready it says so ([`PoolEvent::Upgraded`]), and this pool stops
    /// gracefully; if it exits first or is not ready within the ready timeout, it is
    /// stopped and this pool carries on ([`PoolEvent::UpgradeFailed`]).
    ///
    /// The new program must take its listeners with
    /// [`inherited_sockets`](crate::inherited_sockets) before binding, and open its
    /// control endpoint at the same path. Not with per-slot listeners
    /// ([`set_slot_listeners`](Self::set_slot_listeners)).
    ///
    /// On Unix the listeners and the control socket are inherited descriptors
    /// (`LISTEN_FDS`), and live connections move to the new supervisor's workers
    /// ([`Config::move_connections`]). On Windows the new supervisor connects back
    /// to this pool and receives duplicates of the listeners (`WSADuplicateSocketW`);
    /// it opens the control pipe once this pool has closed it at the hand-over (a
    /// client asking in between finds no pipe for a moment, and asks again); the
    /// old workers move their connections down the new supervisor's connection.
    pub fn upgrade(&mut self, events: &mut Vec<PoolEvent>) {
        let before = events.len();
        self.upgrade_inner(events);
        trace_events(&events[before..]);
    }

    pub(super) fn upgrade_inner(&mut self, events: &mut Vec<PoolEvent>) {
        if self.stopping || self.os.upgrade.is_some() {
            return;
        }
        let started = match self.slot_listeners.is_some() {
            true => Err(Error::Environment(
                "an upgrade cannot pass per-slot listeners".into(),
            )),
            false => self.start_upgrade(),
        };
        match started {
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

    /// The program to run as the new supervisor.
    pub(super) fn upgrade_program(&self) -> Result<PathBuf, Error> {
        self.os
            .own_exe
            .clone()
            .ok_or_else(|| Error::Environment("this program's path is unknown".into()))
    }

    /// Watches the new supervisor `process` until it is ready (checked every 50 ms).
    pub(super) fn watch_upgrade(
        &mut self,
        pid: u32,
        process: Process,
        key: Option<Key>,
        os: UpgradeOs,
    ) -> Upgrade {
        if let Some(key) = key {
            self.watches.insert(key, Watch::UpgradeReady);
        }
        let every = Duration::from_millis(50);
        let timer = self.reactor.add_timer(Instant::now() + every, Some(every));
        self.timers.insert(timer, TimerFor::Upgrade);
        Upgrade {
            pid,
            process,
            key,
            timer,
            deadline: Instant::now() + self.config.ready_timeout,
            failed: None,
            kill_at: None,
            os,
        }
    }

    /// The upgrade's periodic check: the new supervisor's exit, the ready timeout,
    /// the kill after the grace period.
    pub(super) fn on_upgrade_tick(&mut self, timer: TimerId, events: &mut Vec<PoolEvent>) {
        // A readiness that arrived in the same turn counts before the deadline.
        if self.os.upgrade.as_ref().is_some_and(|u| u.key.is_some()) {
            self.on_upgrade_ready(events);
        }
        let grace = self.config.kill_grace;
        let ready_timeout = self.config.ready_timeout;
        let Some(u) = self.os.upgrade.as_mut() else {
            self.reactor.cancel_timer(timer);
            return;
        };
        self.timers.insert(timer, TimerFor::Upgrade);
        match u.process.try_wait() {
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
            u.process.terminate();
            u.kill_at = Some(now + grace);
        }
        if u.kill_at.is_some_and(|at| now >= at) {
            u.process.kill();
            u.kill_at = None;
        }
    }

    /// Ends the upgrade in progress: on success, hands over and stops; on failure,
    /// goes on (the new supervisor is gone already).
    pub(super) fn end_upgrade(&mut self, result: Result<(), String>, events: &mut Vec<PoolEvent>) {
        let Some(u) = self.os.upgrade.take() else {
            return;
        };
        if let Some(key) = u.key {
            self.forget_watch(key);
        }
        self.timers.remove(&u.timer);
        self.reactor.cancel_timer(u.timer);
        let pid = u.pid;
        match result {
            Ok(()) => {
                self.hand_over(u);
                events.push(PoolEvent::Upgraded { pid });
                // The graceful stop begins at the next poll: the caller first sees
                // `Upgraded` while the workers still take connections (the hand-off
                // supervisor's last ones).
                self.os.stop_after_upgrade = true;
            }
            Err(reason) => {
                self.drop_upgrade(u);
                self.os.upgrade_failed = Some(reason.clone());
                events.push(PoolEvent::UpgradeFailed { reason });
            }
        }
    }
}
