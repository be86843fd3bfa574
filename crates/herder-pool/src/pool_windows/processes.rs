//! The worker processes on Windows: started with `CreateProcess`, each watched in
//! the loop by its process handle, restarted by the one restart policy, timed out,
//! terminated.

use super::{CHANNEL_ENV, LOCK_ENV, Pool, PoolEvent, Proc, SCOREBOARD_ENV, WORKER_ENV};
use crate::Error;
use crate::restart::{Decision, Exit};
use crate::state::State;
use herder_reactor::Key;
use herder_reactor::os::windows::ReactorExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

impl Pool {
    /// Starts the worker of `slot`, at the newest generation (whichever one it had
    /// before).
    pub(super) fn spawn(&mut self, slot: usize, events: &mut Vec<PoolEvent>) {
        let generation = self.generation;
        match self.launch(slot, generation, events) {
            Some(pid) => {
                let s = &mut self.slots[slot];
                s.current = Some(pid);
                s.state = State::Starting;
            }
            None => {
                self.crashed(slot, Exit::BeforeReady, events);
            }
        }
    }

    /// Starts a worker process for `slot`; `None` if that failed (reported).
    pub(super) fn launch(
        &mut self,
        slot: usize,
        generation: u64,
        events: &mut Vec<PoolEvent>,
    ) -> Option<u32> {
        // Unguessable: whoever presents it gets the worker's channel.
        let token = format!(
            "{:016x}{:016x}{slot:x}",
            crate::sys::random_u64(),
            crate::sys::random_u64()
        );
        let addr = self.rendezvous.1;
        let names: Vec<&str> = self.listeners.iter().map(|(n, _)| n.as_str()).collect();
        // Its record, before it exists (the pid follows); none free: it runs without.
        let record = self.board.1.assign(0, slot, generation);
        let role = match record {
            Some(r) => format!("{slot}:{generation}:{r}"),
            None => format!("{slot}:{generation}"),
        };
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.config.env.iter().map(|(k, v)| (k, v)))
            .env(WORKER_ENV, role)
            .env(SCOREBOARD_ENV, &self.board.0.name)
            .env(CHANNEL_ENV, format!("{addr} {token} {}", names.join(":")))
            .stdin(Stdio::null());
        match &self.lock {
            Some((name, _)) => cmd.env(LOCK_ENV, name),
            None => cmd.env_remove(LOCK_ENV),
        };
        let spawned = cmd.spawn().and_then(|mut child| {
            // Its exit wakes the loop.
            let watched = std::os::windows::io::AsHandle::as_handle(&child)
                .try_clone_to_owned()
                .and_then(|h| self.reactor.add_waitable(h));
            match watched {
                Ok(key) => Ok((child, key)),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    Err(e)
                }
            }
        });
        match spawned {
            Ok((child, exit_key)) => {
                let pid = child.id();
                if let Some(r) = record {
                    self.board.1.set_pid(r, pid);
                }
                self.procs.insert(
                    pid,
                    Proc {
                        child,
                        exit_key,
                        slot,
                        generation,
                        record,
                        orphan: false,
                        hung: false,
                        started: Instant::now(),
                        token,
                        ready: false,
                        draining: false,
                        channel: None,
                        handoff: None,
                        ready_pending: false,
                        deadline: Some(Instant::now() + self.config.ready_timeout),
                    },
                );
                events.push(PoolEvent::Spawned {
                    slot,
                    pid,
                    generation,
                });
                Some(pid)
            }
            Err(source) => {
                if let Some(r) = record {
                    self.board.1.release(r);
                }
                events.push(PoolEvent::SpawnFailed {
                    slot,
                    error: Error::Spawn { slot, source },
                });
                None
            }
        }
    }

    pub(super) fn reap(&mut self, events: &mut Vec<PoolEvent>) {
        let exited: Vec<(u32, ExitStatus)> = self
            .procs
            .iter_mut()
            .filter_map(|(pid, p)| match p.child.try_wait() {
                Ok(Some(status)) => Some((*pid, status)),
                _ => None,
            })
            .collect();
        for (pid, status) in exited {
            // What it sent before it died comes first: the kernel holds it for the
            // pool, up to the end of the channel.
            self.read_channel(pid, events);
            self.close_channel(pid);
            let Some(p) = self.procs.remove(&pid) else {
                continue;
            };
            let _ = self.reactor.remove_waitable(p.exit_key);
            if let Some(r) = p.record {
                self.board.1.release(r);
            }
            let slot = p.slot;
            let mark = events.len();
            let restart_in = self.exited(pid, &p, status, events);
            // The exit first, then what it led to (a tripped breaker), as on Unix.
            let after: Vec<PoolEvent> = events.drain(mark..).collect();
            events.push(PoolEvent::Exited {
                slot,
                pid,
                status,
                restart_in,
            });
            events.extend(after);
            self.check_reloaded(events);
        }
    }

    /// Updates the slot of worker `pid`, which exited; when its replacement starts,
    /// if one does.
    pub(super) fn exited(
        &mut self,
        pid: u32,
        p: &Proc,
        status: ExitStatus,
        events: &mut Vec<PoolEvent>,
    ) -> Option<Duration> {
        if p.orphan {
            // Its slot was scaled away (another may have its number now).
            return None;
        }
        let slot = p.slot;
        let s = self.slots.get_mut(slot)?;
        if s.successor == Some(pid) {
            // A rolling restart's new worker that never became ready: the old one
            // goes on (or, if it is gone too, the slot restarts).
            s.successor = None;
            self.reload_failed.push(slot);
            if s.current.is_none() && !self.stopping {
                return self.crashed(slot, Exit::BeforeReady, events);
            }
            return None;
        }
        let current = s.current == Some(pid);
        if current {
            s.current = None;
            s.last_exit = Some(status);
            if s.successor.is_some() && !p.draining {
                // The new worker being started takes the slot when it is ready.
                s.state = State::Starting;
                return None;
            }
        }
        if !current || self.stopping || p.draining {
            None
        } else if self.config.fatal_exit_code.is_some()
            && status.code() == self.config.fatal_exit_code
        {
            s.state = State::Fatal;
            None
        } else {
            let how = match p.ready {
                true => Exit::AfterReady(p.started.elapsed()),
                false => Exit::BeforeReady,
            };
            self.crashed(slot, how, events)
        }
    }

    /// Asks the restart policy what to do after `slot`'s worker exited (or could not
    /// be started); when its next worker starts.
    pub(super) fn crashed(
        &mut self,
        slot: usize,
        how: Exit,
        events: &mut Vec<PoolEvent>,
    ) -> Option<Duration> {
        let s = &mut self.slots[slot];
        let now = Instant::now();
        let (state, delay) =
            match s
                .history
                .exited(&self.config, how, now, crate::sys::random_u64())
            {
                Decision::Restart(delay) => (State::Backoff, delay),
                Decision::Trip { failures, retry_in } => {
                    events.push(PoolEvent::BreakerTripped {
                        slot,
                        failures,
                        retry_in,
                    });
                    (State::Tripped, retry_in)
                }
            };
        s.state = state;
        s.restart_at = Some(now + delay);
        Some(delay)
    }

    pub(super) fn timers(&mut self, events: &mut Vec<PoolEvent>) {
        let now = Instant::now();
        let late: Vec<Key> = self
            .hellos
            .iter()
            .filter(|(_, h)| now >= h.until)
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            // No token in time: whoever it is holds up nothing.
            self.hellos.remove(&key);
            let _ = self.reactor.deregister(key);
        }
        for p in self.procs.values_mut() {
            if p.deadline.is_some_and(|d| now >= d) {
                // Not ready in time, or past its drain deadline.
                p.deadline = None;
                let _ = p.child.kill();
            }
        }
        if let Some(limit) = self.config.heartbeat_timeout {
            if self.heartbeat_check.is_none_or(|at| now >= at) {
                self.check_heartbeats(limit, events);
                // A quarter of the timeout: a hung worker is found within 1.25 times it.
                self.heartbeat_check = Some(now + (limit / 4).max(Duration::from_millis(10)));
            }
        }
        if self.stopping {
            return;
        }
        let due: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                // A tripped slot's cool-down over: one worker tries again (half-open).
                matches!(s.state, State::Backoff | State::Tripped)
                    && s.restart_at.is_some_and(|t| now >= t)
            })
            .map(|(i, _)| i)
            .collect();
        for slot in due {
            self.slots[slot].restart_at = None;
            self.slots[slot].restarts += 1;
            self.spawn(slot, events);
        }
    }

    /// Terminates every ready worker whose scoreboard heartbeat is older than `limit`
    /// (Windows has no gentler signal; its exit is handled as a crash).
    pub(super) fn check_heartbeats(&mut self, limit: Duration, events: &mut Vec<PoolEvent>) {
        let limit_ms = limit.as_millis() as u64;
        let board = &self.board.1;
        for (&pid, p) in &mut self.procs {
            if !p.ready || p.draining || p.hung {
                continue;
            }
            let Some(r) = p.record.and_then(|i| board.record(i)) else {
                continue;
            };
            let silent = r.silent_ms();
            if silent > limit_ms {
                p.hung = true;
                let _ = p.child.kill();
                events.push(PoolEvent::Hung {
                    slot: p.slot,
                    pid,
                    silent: Duration::from_millis(silent),
                });
            }
        }
    }

    /// Tells worker `pid` to drain, by `deadline`. A worker told already keeps its
    /// first deadline.
    pub(super) fn drain(&mut self, pid: u32, deadline: Instant) {
        let Some(p) = self.procs.get_mut(&pid).filter(|p| !p.draining) else {
            return;
        };
        p.draining = true;
        p.deadline = Some(deadline);
        let told = p
            .channel
            .as_mut()
            .is_some_and(|(ch, _)| ch.send(crate::message::DRAIN).is_ok());
        if told {
            self.watch_output(pid);
        } else {
            // No channel yet (or a broken or full one): it cannot drain.
            let _ = p.child.kill();
        }
    }
}
