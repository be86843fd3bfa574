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

/// What autoscaling remembers from one look to the next, with the number of slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scaler {
    /// The slots now.
    pub(crate) slots: usize,
    /// How many workers to add next time all are busy (1, 2, 4, … 32).
    pub(crate) step: usize,
    /// For how many looks (one a second) two workers have been idle.
    pub(crate) idle_ticks: u32,
}

impl Autoscale {
    /// One look, once a second, at the open connections of the ready workers
    /// (`active`, none of them starting): the number of slots wanted, and what to
    /// remember. Pure: the same decision on every platform, unit-tested here.
    pub(crate) fn decide(&self, now: Scaler, active: &[u64]) -> (usize, Scaler) {
        let n = now.slots;
        if !active.is_empty() && active.iter().all(|&a| a >= self.busy_connections) && n < self.max
        {
            let add = now.step.min(self.max - n);
            let next = Scaler {
                slots: n + add,
                step: (now.step * 2).min(32),
                idle_ticks: 0,
            };
            return (n + add, next);
        }
        let mut next = Scaler {
            slots: n,
            step: 1,
            idle_ticks: 0,
        };
        if active.iter().filter(|&&a| a == 0).count() >= 2 && n > self.min {
            next.idle_ticks = now.idle_ticks + 1;
            if Duration::from_secs(u64::from(next.idle_ticks)) >= self.idle_after {
                next.idle_ticks = 0;
                next.slots = n - 1;
            }
        }
        (next.slots, next)
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
        self.os.upgrade_fds.clear();
        // After an upgrade the workers move their connections to the new
        // supervisor's; otherwise they drain.
        let moving = self.os.downstream.is_some();
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
        let (target, scaler) = auto.decide(
            Scaler {
                slots: n,
                step: self.scale_step,
                idle_ticks: self.idle_ticks,
            },
            &ready,
        );
        self.scale_step = scaler.step;
        self.idle_ticks = scaler.idle_ticks;
        if target != n {
            self.scale_inner(target, events);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Autoscale, Scaler};
    use std::time::Duration;

    fn at(slots: usize) -> Scaler {
        Scaler {
            slots,
            step: 1,
            idle_ticks: 0,
        }
    }

    #[test]
    fn all_busy_adds_one_then_doubling_up_to_the_maximum() {
        let auto = Autoscale::new(1, 10, 5);
        let (n, s) = auto.decide(at(2), &[5, 9]);
        assert_eq!((n, s.step), (3, 2));
        let (n, s) = auto.decide(s, &[5, 9, 6]);
        assert_eq!((n, s.step), (5, 4));
        let (n, s) = auto.decide(s, &[5; 5]);
        assert_eq!((n, s.step), (9, 8));
        // Capped at the maximum, whatever the step.
        let (n, s) = auto.decide(s, &[5; 9]);
        assert_eq!((n, s.slots), (10, 10));
        let (n, _) = auto.decide(s, &[5; 10]);
        assert_eq!(n, 10);
    }

    #[test]
    fn one_worker_not_busy_stops_the_growth_and_resets_the_step() {
        let auto = Autoscale::new(1, 10, 5);
        let (n, s) = auto.decide(
            Scaler {
                slots: 4,
                step: 8,
                idle_ticks: 0,
            },
            &[5, 5, 4, 5],
        );
        assert_eq!((n, s.step), (4, 1));
        // No ready worker at all is no reason to grow.
        assert_eq!(auto.decide(at(4), &[]).0, 4);
    }

    #[test]
    fn two_idle_workers_for_idle_after_retire_one_down_to_the_minimum() {
        let mut auto = Autoscale::new(2, 10, 5);
        auto.idle_after = Duration::from_secs(3);
        let mut s = at(4);
        let mut sizes = Vec::new();
        for _ in 0..12 {
            let (n, next) = auto.decide(s, &vec![0; s.slots]);
            sizes.push(n);
            s = next;
        }
        // One fewer every third look, never below the minimum.
        assert_eq!(sizes, [4, 4, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2]);
        // A single idle worker is not enough, and any activity resets the count.
        let (_, s) = auto.decide(at(4), &[0, 0, 1, 1]);
        assert_eq!(s.idle_ticks, 1);
        let (_, s) = auto.decide(s, &[0, 1, 1, 1]);
        assert_eq!(s.idle_ticks, 0);
    }
}
