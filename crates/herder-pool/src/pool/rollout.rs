//! Changing the set of workers: scaling by request and by load, rolling restarts,
//! recycling, resets and the graceful stop.

use super::*;

/// Load-driven scaling, Apache-style: once a second, if every ready worker is busy,
/// start 1, then 2, 4, … (at most 32) more per second while it lasts, up to `max`; if
/// at least two workers have been idle for `idle_after`, retire one, down to `min`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Autoscale {
    /// The fewest workers.
    pub min: usize,
    /// The most workers.
    pub max: usize,
    /// A worker with at least this many open connections is busy.
    pub busy_connections: u64,
    /// How long two workers must have had no connection before one is retired.
    pub idle_after: Duration,
}

impl Autoscale {
    /// Scaling between `min` and `max` workers, a worker being busy at
    /// `busy_connections` open connections, and idle ones retired after 10 s.
    pub fn new(min: usize, max: usize, busy_connections: u64) -> Autoscale {
        Autoscale {
            min: min.max(1),
            max: max.max(min.max(1)),
            busy_connections,
            idle_after: Duration::from_secs(10),
        }
    }
}

impl Pool {
    /// Starts a slot stopped by the breaker or by a fatal exit again, with a fresh
    /// back-off.
    ///
    /// # Errors
    ///
    /// [`Error::NoWorker`] if the slot does not exist or is not stopped that way.
    pub fn reset(&mut self, slot: usize, events: &mut Vec<PoolEvent>) -> Result<(), Error> {
        let s = self.slots.get_mut(slot).ok_or(Error::NoWorker(slot))?;
        if !matches!(s.state, State::Tripped | State::Fatal) || self.stopping {
            return Err(Error::NoWorker(slot));
        }
        s.history.reset();
        self.start_now(slot, events);
        Ok(())
    }

    /// Starts `slot`'s next worker at once, whatever back-off or cool-down it was
    /// waiting out.
    pub(super) fn start_now(&mut self, slot: usize, events: &mut Vec<PoolEvent>) {
        let s = &mut self.slots[slot];
        s.restart_at = None;
        if let Some(t) = s.timer.take() {
            self.cancel_timer(t);
        }
        self.spawn(slot, events);
    }

    /// Changes the number of slots to `n` (at least 1, at most half
    /// [`Config::scoreboard_capacity`](crate::Config::scoreboard_capacity)): new slots
    /// start a worker; removed slots (the highest) have their workers drained, or
    /// moved.
    pub fn scale(&mut self, n: usize, events: &mut Vec<PoolEvent>) {
        let before = events.len();
        self.scale_inner(n, events);
        trace_events(&events[before..]);
    }

    pub(super) fn scale_inner(&mut self, n: usize, events: &mut Vec<PoolEvent>) {
        if self.stopping {
            return;
        }
        // Half the scoreboard, so that every worker — a draining one next to its
        // successor included — has a record.
        let n = crate::config::slot_count(n, self.config.scoreboard_capacity / 2);
        while self.slots.len() > n {
            let slot = self.slots.len() - 1;
            let Some(s) = self.slots.pop() else {
                break;
            };
            if let Some(t) = s.timer {
                self.cancel_timer(t);
            }
            let pids: Vec<u32> = self
                .procs
                .iter()
                .filter(|(_, p)| p.slot == slot)
                .map(|(pid, _)| *pid)
                .collect();
            for pid in pids {
                self.retire(pid, true);
            }
        }
        while self.slots.len() < n {
            let slot = self.slots.len();
            let mut s = Slot::new(self.generation);
            if let Some(make) = self.slot_listeners.as_mut() {
                match make(slot) {
                    Ok(own) => {
                        s.own = own
                            .into_iter()
                            .map(|(name, d)| (name, Listener::from(d)))
                            .collect()
                    }
                    Err(source) => {
                        events.push(PoolEvent::SpawnFailed {
                            slot,
                            error: Error::Spawn { slot, source },
                        });
                        return;
                    }
                }
            }
            self.slots.push(s);
            self.spawn(slot, events);
        }
    }

    /// Starts a rolling restart: each slot starts a worker of a new generation, and
    /// its old worker is told to drain only once the new one is ready — so there is
    /// always a ready worker per slot. One generation drains at a time: a reload asked
    /// for while the previous one is still draining starts when it is done.
    /// [`PoolEvent::Reloaded`] reports the end.
    pub fn reload(&mut self, events: &mut Vec<PoolEvent>) {
        let before = events.len();
        self.reload_inner(events);
        trace_events(&events[before..]);
    }

    pub(super) fn reload_inner(&mut self, events: &mut Vec<PoolEvent>) {
        if self.stopping {
            return;
        }
        if self.reloading.is_some()
            || self.recycling.is_some()
            || self.procs.values().any(|p| p.draining)
        {
            self.reload_pending = true;
            return;
        }
        self.generation += 1;
        self.reloading = Some(self.generation);
        self.reload_failed.clear();
        for slot in 0..self.slots.len() {
            match self.slots[slot].state {
                // Slots between workers simply start the new generation next.
                State::Backoff | State::Stopped => {
                    self.slots[slot].generation = self.generation;
                }
                // A reload is what an operator does once the cause is fixed: a
                // stopped slot tries at once (a tripped one stays half-open: if this
                // try fails, it trips again).
                State::Tripped | State::Fatal => {
                    self.slots[slot].restarts += 1;
                    self.start_now(slot, events);
                }
                State::Starting | State::Ready => self.spawn_successor(slot, events),
            }
        }
        self.check_reloaded(events);
        self.report();
    }

    /// Starts a graceful stop: no more restarts, every worker is told to drain, and
    /// those still running after the drain timeout are killed.
    /// [`PoolEvent::Stopped`] reports the end; [`is_stopped`](Self::is_stopped) tells.
    pub fn stop(&mut self, events: &mut Vec<PoolEvent>) {
        let before = events.len();
        self.stop_inner(events);
        trace_events(&events[before..]);
    }

    pub(super) fn stop_inner(&mut self, events: &mut Vec<PoolEvent>) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.reload_pending = false;
        self.reloading = None;
        // An upgrade in progress is abandoned: the new supervisor must not outlive
        // a stop the operator asked for.
        #[cfg(unix)]
        self.abandon_upgrade();
        for slot in 0..self.slots.len() {
            if let Some(t) = self.slots[slot].timer.take() {
                self.cancel_timer(t);
            }
            self.slots[slot].state = State::Stopped;
            self.slots[slot].restart_at = None;
            self.slots[slot].own.clear();
        }
        // No worker of this pool accepts from here on: close its copies of the
        // listening sockets now, so that new connections are refused at once (or
        // wait for whoever else holds the socket: systemd, a new supervisor) rather
        // than queue in a backlog nobody reads. Draining workers close theirs too.
        self.listeners.clear();
        #[cfg(unix)]
        self.os.upgrade_fds.clear();
        // After an upgrade the workers move their connections to the new
        // supervisor's; otherwise they drain.
        #[cfg(unix)]
        let moving = self.os.downstream.is_some();
        #[cfg(windows)]
        let moving = false;
        let pids: Vec<u32> = self.procs.keys().copied().collect();
        for pid in pids {
            self.retire(pid, moving);
        }
        if self.procs.is_empty() {
            events.push(PoolEvent::Stopped);
        }
        self.report();
    }

    /// Starts a successor for one worker past its connection limit.
    pub(super) fn recycle(&mut self, events: &mut Vec<PoolEvent>) {
        if self.stopping || self.reloading.is_some() {
            return;
        }
        if let Some(slot) = self.recycling {
            // Done once nothing of the slot is starting any more.
            let busy = self
                .procs
                .values()
                .any(|p| p.slot == slot && !p.ready && !p.draining);
            if busy {
                return;
            }
            self.recycling = None;
            if self.reload_pending && !self.procs.values().any(|p| p.draining) {
                self.reload_pending = false;
                self.reload_inner(events);
                return;
            }
        }
        // The oldest worker past its limit goes first.
        let due = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, s)| {
                let pid = s.current?;
                let p = self.procs.get(&pid)?;
                let r = self.board.1.record(p.record?)?;
                (p.ready && !p.draining && r.accepted() >= p.recycle_at?).then_some((
                    p.started_at,
                    slot,
                    pid,
                ))
            })
            .min()
            .map(|(_, slot, pid)| (slot, pid));
        if let Some((slot, pid)) = due {
            self.recycling = Some(slot);
            events.push(PoolEvent::Recycling { slot, pid });
            self.spawn_successor(slot, events);
        }
    }

    /// Adds workers while all are busy, removes one when two have been idle.
    pub(super) fn autoscale(&mut self, events: &mut Vec<PoolEvent>) {
        let Some(auto) = self.config.autoscale.clone() else {
            return;
        };
        if self.stopping || self.reloading.is_some() {
            return;
        }
        let ready: Vec<u64> = self
            .slots
            .iter()
            .filter_map(|s| {
                let p = self.procs.get(&s.current?)?;
                p.ready.then(|| {
                    p.record
                        .and_then(|i| self.board.1.record(i))
                        .map_or(0, |r| r.active())
                })
            })
            .collect();
        let n = self.slots.len();
        if self.procs.values().any(|p| !p.ready && !p.draining) {
            // Capacity is on its way: judge again once it is ready.
            return;
        }
        if !ready.is_empty() && ready.iter().all(|&a| a >= auto.busy_connections) && n < auto.max {
            let add = self.scale_step.min(auto.max - n);
            self.scale_step = (self.scale_step * 2).min(32);
            self.idle_ticks = 0;
            self.scale_inner(n + add, events);
            return;
        }
        self.scale_step = 1;
        if ready.iter().filter(|&&a| a == 0).count() >= 2 && n > auto.min {
            self.idle_ticks += 1;
            if Duration::from_secs(u64::from(self.idle_ticks)) >= auto.idle_after {
                self.idle_ticks = 0;
                self.scale_inner(n - 1, events);
            }
        } else {
            self.idle_ticks = 0;
        }
    }
}
