//! Worker processes: starting them, their channels, readiness, retirement, exits
//! and what the restart policy makes of them, heartbeats. The same on every
//! platform: what differs (starting a process, its exit, terminating it) is the
//! platform file's `launch` and `Process`.

use super::*;
use crate::restart::{Decision, Exit};

impl Pool {
    /// xorshift64: jitter needs no cryptography.
    pub(super) fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    pub(super) fn cancel_timer(&mut self, id: TimerId) {
        self.timers.remove(&id);
        self.reactor.cancel_timer(id);
    }

    pub(super) fn set_proc_timer(&mut self, pid: u32, at: Instant) {
        let id = self.reactor.add_timer(at, None);
        self.timers.insert(id, TimerFor::Proc(pid));
        let old = self.procs.get_mut(&pid).and_then(|p| p.timer.replace(id));
        if let Some(old) = old {
            self.cancel_timer(old);
        }
    }

    /// Starts the slot's worker (its first, or after a back-off).
    pub(super) fn spawn(&mut self, slot: usize, events: &mut Vec<PoolEvent>) {
        self.slots[slot].generation = self.generation;
        match self.try_spawn(slot) {
            Ok(pid) => {
                let s = &mut self.slots[slot];
                s.current = Some(pid);
                s.state = State::Starting;
                events.push(PoolEvent::Spawned {
                    slot,
                    pid,
                    generation: self.generation,
                });
            }
            Err(error) => {
                events.push(PoolEvent::SpawnFailed { slot, error });
                self.failed(slot, None, Exit::BeforeReady, events);
            }
        }
    }

    /// Starts a worker of the new generation next to the slot's current one.
    pub(super) fn spawn_successor(&mut self, slot: usize, events: &mut Vec<PoolEvent>) {
        match self.try_spawn(slot) {
            Ok(pid) => events.push(PoolEvent::Spawned {
                slot,
                pid,
                generation: self.generation,
            }),
            // The old worker goes on serving.
            Err(error) => {
                self.reload_failed.push(slot);
                events.push(PoolEvent::SpawnFailed { slot, error });
            }
        }
    }

    pub(super) fn try_spawn(&mut self, slot: usize) -> Result<u32, Error> {
        let generation = self.generation;
        let record = self.board.1.assign(0, slot, generation);
        let recycle_at = self.config.max_connections.map(|max| {
            // ±10 %, so that workers started together are not recycled together.
            let factor = 0.9 + (self.next_random() % 201) as f64 / 1000.0;
            ((max as f64 * factor) as u64).max(1)
        });
        let launched = match self.launch(slot, generation, record) {
            Ok(l) => l,
            Err(e) => {
                if let Some(r) = record {
                    self.board.1.release(r);
                }
                return Err(e);
            }
        };
        let pid = launched.pid;
        if let Some(r) = record {
            self.board.1.set_pid(r, pid);
        }
        self.procs.insert(
            pid,
            Proc {
                slot,
                generation,
                process: launched.process,
                ready: false,
                draining: false,
                channel: launched.channel,
                writing: false,
                watches: launched.watches,
                started_at: Instant::now(),
                timer: None,
                record,
                recycle_at,
                hung: false,
            },
        );
        let at = Instant::now() + self.config.ready_timeout;
        self.set_proc_timer(pid, at);
        Ok(pid)
    }

    /// Tells a worker to drain — `moving` its connections to the others first, if
    /// the pool does that and is not stopping — and kills it if it is still there at
    /// the deadline.
    pub(super) fn retire(&mut self, pid: u32, moving: bool) {
        // After an upgrade, a stop moves them to the new supervisor's workers.
        let to = !self.stopping || self.os.downstream.is_some();
        let request = match moving && self.config.move_connections && to {
            true => message::MOVE,
            false => message::DRAIN,
        };
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        if p.draining {
            return;
        }
        p.draining = true;
        let told = p
            .channel
            .as_mut()
            .is_some_and(|ch| message::send_bytes(ch, request).is_ok());
        if told {
            self.watch_output(pid);
        } else {
            // A worker that cannot be told (channel gone, full, or not connected
            // yet) is asked by signal, or terminated where there are none.
            p.process.terminate();
        }
        let at = Instant::now() + self.config.drain_timeout;
        self.set_proc_timer(pid, at);
    }

    /// Reads a bounded batch of `pid`'s messages; whether more may be waiting.
    /// `reaped`: the process was waited for already.
    pub(super) fn read_channel(
        &mut self,
        pid: u32,
        reaped: bool,
        events: &mut Vec<PoolEvent>,
    ) -> bool {
        // A bounded batch: a worker flooding its channel cannot starve the rest (the
        // watch is level-triggered and comes back).
        for _ in 0..64 {
            let Some(p) = self.procs.get_mut(&pid) else {
                return false;
            };
            let slot = p.slot;
            let Some(ch) = p.channel.as_mut() else {
                return false;
            };
            match message::recv_lossy(ch) {
                Ok(Some(msg)) if moving::is_move(&msg) => self.forward(pid, msg),
                Ok(Some(msg)) if message::is_pool_message(msg.payload()) => {
                    if msg.payload() == message::READY && !p.ready && self.may_be_ready(pid) {
                        if let Some(p) = self.procs.get_mut(&pid) {
                            p.ready = true;
                        }
                        self.on_ready(pid, events);
                    }
                }
                Ok(Some(msg)) if message::is_reserved(msg.payload()) => {
                    match Receipt::decode(msg.payload()) {
                        Some(Receipt::Ack(upto)) if upto & message::MOVE_ID != 0 => {
                            let settled = self.os.moves.acknowledged(pid, upto);
                            self.reply(settled, Receipt::Moved);
                        }
                        Some(Receipt::Ack(upto)) => {
                            events.push(PoolEvent::Acknowledged { slot, pid, upto })
                        }
                        Some(Receipt::Refused(mut ids)) => {
                            let moving: Vec<u64> = ids
                                .iter()
                                .copied()
                                .filter(|id| id & message::MOVE_ID != 0)
                                .collect();
                            if !moving.is_empty() {
                                ids.retain(|id| id & message::MOVE_ID == 0);
                                let kept = self.os.moves.refused(pid, &moving);
                                self.reply(kept, Receipt::Kept);
                            }
                            if !ids.is_empty() {
                                events.push(PoolEvent::Refused { slot, pid, ids })
                            }
                        }
                        // Reserved, and not what the worker side of the pool sends.
                        _ => tracing::warn!(slot, pid, "a malformed pool message; ignored"),
                    }
                }
                Ok(Some(message)) => events.push(PoolEvent::Message { slot, message }),
                Ok(None) => {
                    // The worker closed its end: it is exiting; its exit follows.
                    self.unwatch_channel(pid);
                    return false;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                // The worker died with messages of ours unread: the kernel says so
                // once, and what it had sent (and then the end) still follows.
                #[cfg(unix)]
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
                // On Windows the reset ends the channel (herder-fd reads no further
                // after it): the worker is gone, its exit follows.
                #[cfg(windows)]
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    self.unwatch_channel(pid);
                    return false;
                }
                Err(error) => {
                    self.unwatch_channel(pid);
                    // Not if it was reaped already: its pid may be another's now.
                    if !reaped {
                        if let Some(p) = self.procs.get_mut(&pid) {
                            p.process.kill();
                        }
                    }
                    events.push(PoolEvent::ChannelError { slot, error });
                    return false;
                }
            }
        }
        true
    }

    pub(super) fn on_ready(&mut self, pid: u32, events: &mut Vec<PoolEvent>) {
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        let (slot, draining, generation) = (p.slot, p.draining, p.generation);
        if let Some(r) = p.record.and_then(|i| self.board.1.record(i)) {
            // The heartbeat clock starts when the worker is ready.
            r.heartbeat();
        }
        if draining {
            // Its drain deadline stays.
            return;
        }
        if let Some(t) = p.timer.take() {
            self.cancel_timer(t);
        }
        let Some(current) = self.slots.get(slot).map(|s| s.current) else {
            return;
        };
        if let Some(cur) = current.filter(|&c| c != pid) {
            if self
                .procs
                .get(&cur)
                .is_some_and(|c| c.generation > generation)
            {
                // A newer generation already serves this slot: this one is obsolete.
                self.retire(pid, true);
                return;
            }
        }
        events.push(PoolEvent::Ready { slot, pid });
        let s = &mut self.slots[slot];
        let previous = s.current.replace(pid);
        s.state = State::Ready;
        s.generation = generation;
        // A successor is ready: retire its predecessor.
        if let Some(old) = previous.filter(|&old| old != pid) {
            self.retire(old, true);
        }
        self.check_reloaded(events);
    }

    pub(super) fn unwatch_channel(&mut self, pid: u32) {
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        p.channel = None;
        let keys: Vec<Key> = p.watches.clone();
        for key in keys {
            if matches!(self.watches.get(&key), Some(Watch::Channel(_))) {
                self.forget_watch(key);
                if let Some(p) = self.procs.get_mut(&pid) {
                    p.watches.retain(|k| *k != key);
                }
            }
        }
    }

    /// Stops watching `key`, whatever it is (a source or, on Windows, a handle).
    pub(super) fn forget_watch(&mut self, key: Key) {
        #[cfg(windows)]
        if matches!(self.watches.get(&key), Some(Watch::Exit(_))) {
            use herder_reactor::os::windows::ReactorExt;
            self.watches.remove(&key);
            let _ = self.reactor.remove_waitable(key);
            return;
        }
        self.watches.remove(&key);
        let _ = self.reactor.deregister(key);
    }

    /// Writes what is left of a message to worker `pid` (its channel had room).
    pub(super) fn flush_channel(&mut self, pid: u32) {
        let Some(ch) = self.procs.get_mut(&pid).and_then(|p| p.channel.as_mut()) else {
            return;
        };
        match ch.flush() {
            Ok(()) => self.watch_output(pid),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // Nothing more can be said to it; its exit follows.
            Err(_) => self.unwatch_channel(pid),
        }
    }

    /// Watches worker `pid`'s channel for room to write while part of a message
    /// waits, and only then (one `epoll_ctl` when that changes, none per message).
    pub(super) fn watch_output(&mut self, pid: u32) {
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        let Some(ch) = p.channel.as_ref() else {
            return;
        };
        let pending = ch.has_pending_output();
        if pending == p.writing {
            return;
        }
        p.writing = pending;
        let interest = match pending {
            true => Interest::BOTH,
            false => Interest::READABLE,
        };
        let key = p
            .watches
            .iter()
            .copied()
            .find(|k| matches!(self.watches.get(k), Some(Watch::Channel(_))));
        if let Some(key) = key {
            if self.reactor.modify(key, interest, Mode::Level).is_err() {
                self.unwatch_channel(pid);
            }
        }
    }

    /// Reaps `pid` if it has exited.
    pub(super) fn reap(&mut self, pid: u32, events: &mut Vec<PoolEvent>) {
        if !self.procs.contains_key(&pid) {
            return;
        }
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        let status = match p.process.try_wait() {
            Ok(Some(status)) => status,
            Ok(None) => return,
            // ECHILD: reaped elsewhere; nothing more will come.
            Err(_) => ExitStatus::default(),
        };
        // What the worker sent before it died (an acknowledgement, say) is reported
        // before its exit: whoever acts on the exit must know what it had done. A dead
        // process's channel holds a bounded amount.
        let mut more = true;
        for _ in 0..1024 {
            more = self.read_channel(pid, true, events);
            if !more {
                break;
            }
        }
        if more {
            tracing::warn!(pid, "a dead worker's channel still had messages; dropped");
        }
        self.unwatch_channel(pid);
        // Connections moving to it that it had not acknowledged stay with the
        // workers they came from.
        let kept = self.os.moves.gone(pid);
        self.reply(kept, Receipt::Kept);
        let Some(p) = self.procs.remove(&pid) else {
            return;
        };
        if let Some(r) = p.record {
            self.board.1.release(r);
        }
        for key in p.watches {
            self.forget_watch(key);
        }
        if let Some(t) = p.timer {
            self.cancel_timer(t);
        }
        let slot = p.slot;
        let current = self.slots.get(slot).is_some_and(|s| s.current == Some(pid));
        if let Some(s) = self.slots.get_mut(slot).filter(|_| current) {
            s.current = None;
            s.last_exit = Some(status);
        }
        if p.draining || !current || self.stopping {
            events.push(PoolEvent::Exited {
                slot,
                pid,
                status,
                restart_in: None,
            });
            if !p.draining && !current && !self.stopping && slot < self.slots.len() {
                if self.reloading.is_some() && p.generation == self.generation {
                    // A reload's new worker died before it was ready: the old one stays.
                    self.reload_failed.push(slot);
                } else if let Some(cur) = self.slots[slot]
                    .current
                    .and_then(|c| self.procs.get_mut(&c))
                {
                    // A recycling successor died: keep the old worker, and do not
                    // try to recycle it again (a successor that cannot start would
                    // otherwise be retried every second).
                    cur.recycle_at = None;
                }
            }
            self.after_exit(events);
            return;
        }
        if self.config.fatal_exit_code.is_some() && status.code() == self.config.fatal_exit_code {
            self.slots[slot].state = State::Fatal;
            events.push(PoolEvent::Exited {
                slot,
                pid,
                status,
                restart_in: None,
            });
            self.after_exit(events);
            return;
        }
        let how = match p.ready {
            true => Exit::AfterReady(p.started_at.elapsed()),
            false => Exit::BeforeReady,
        };
        self.failed(slot, Some((pid, status)), how, events);
        self.after_exit(events);
    }

    /// After any exit: finish a stop, a reload, or start a pending reload.
    pub(super) fn after_exit(&mut self, events: &mut Vec<PoolEvent>) {
        if self.stopping {
            if self.procs.is_empty() {
                events.push(PoolEvent::Stopped);
            }
            return;
        }
        self.check_reloaded(events);
        if self.reload_pending
            && self.reloading.is_none()
            && !self.procs.values().any(|p| p.draining)
        {
            self.reload_pending = false;
            self.reload_inner(events);
        }
    }

    /// Reports the end of a reload once no slot waits for its new worker and nothing
    /// of the old generation is left but the workers of slots whose successor failed.
    pub(super) fn check_reloaded(&mut self, events: &mut Vec<PoolEvent>) {
        let Some(generation) = self.reloading else {
            return;
        };
        let pending = self
            .procs
            .values()
            .any(|p| p.generation == generation && !p.ready && !p.draining);
        let old_left = self.procs.iter().any(|(pid, p)| {
            p.generation != generation
                && !self.slots.get(p.slot).is_some_and(|s| {
                    s.current == Some(*pid) && self.reload_failed.contains(&p.slot)
                })
        });
        if pending || old_left {
            return;
        }
        self.reloading = None;
        let failed = std::mem::take(&mut self.reload_failed);
        events.push(reload_finished(generation, failed));
    }

    /// Asks the restart policy what to do after `slot`'s worker exited (or could not
    /// be started), and arms the slot's timer for it.
    pub(super) fn failed(
        &mut self,
        slot: usize,
        exit: Option<(u32, ExitStatus)>,
        how: Exit,
        events: &mut Vec<PoolEvent>,
    ) {
        if self.stopping || slot >= self.slots.len() {
            return;
        }
        let now = Instant::now();
        let random = self.next_random();
        let s = &mut self.slots[slot];
        let decision = s.history.exited(&self.config, how, now, random);
        let (state, delay) = match decision {
            Decision::Restart(delay) => (State::Backoff, delay),
            Decision::Trip { retry_in, .. } => (State::Tripped, retry_in),
        };
        s.state = state;
        s.restart_at = Some(now + delay);
        let timer = self.reactor.add_timer(now + delay, None);
        self.timers.insert(timer, TimerFor::Slot(slot));
        if let Some(old) = self.slots[slot].timer.replace(timer) {
            self.cancel_timer(old);
        }
        if let Some((pid, status)) = exit {
            events.push(PoolEvent::Exited {
                slot,
                pid,
                status,
                restart_in: Some(delay),
            });
        }
        if let Decision::Trip { failures, retry_in } = decision {
            events.push(PoolEvent::BreakerTripped {
                slot,
                failures,
                retry_in,
            });
        }
    }

    pub(super) fn on_backoff_over(&mut self, slot: usize, events: &mut Vec<PoolEvent>) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        s.timer = None;
        s.restart_at = None;
        // A tripped slot's cool-down is over: one worker tries again (half-open).
        if matches!(s.state, State::Backoff | State::Tripped) && !self.stopping {
            s.restarts += 1;
            self.spawn(slot, events);
        }
    }

    /// Sends `SIGTERM` to every ready worker whose heartbeat is older than the
    /// timeout, and `SIGKILL` after the grace period.
    pub(super) fn check_heartbeats(&mut self, events: &mut Vec<PoolEvent>) {
        let Some(timeout) = self.config.heartbeat_timeout else {
            return;
        };
        let limit = timeout.as_millis() as u64;
        let mut hung = Vec::new();
        for (pid, p) in &self.procs {
            if !p.ready || p.draining || p.hung {
                continue;
            }
            let Some(r) = p.record.and_then(|i| self.board.1.record(i)) else {
                continue;
            };
            let silent = r.silent_ms();
            if silent > limit {
                hung.push((*pid, p.slot, Duration::from_millis(silent)));
            }
        }
        for (pid, slot, silent) in hung {
            if let Some(p) = self.procs.get_mut(&pid) {
                p.process.terminate();
                p.hung = true;
            }
            let at = Instant::now() + self.config.kill_grace;
            self.set_proc_timer(pid, at);
            events.push(PoolEvent::Hung { slot, pid, silent });
        }
    }

    /// A worker's ready timeout or drain deadline passed: kill it; its exit is
    /// handled as usual (a crash, unless it was draining).
    pub(super) fn on_proc_timer(&mut self, pid: u32) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.timer = None;
            p.process.kill();
        }
    }
}
