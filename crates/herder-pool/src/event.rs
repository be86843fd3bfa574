//! What a pool reports, the same on every platform where it applies.

use crate::Error;
use herder_fd::Message;
use herder_reactor::Event;
use std::io;
use std::process::ExitStatus;
use std::time::Duration;

/// What [`Pool::poll`](crate::Pool::poll) reports.
#[derive(Debug)]
#[non_exhaustive]
pub enum PoolEvent {
    /// A worker process was started.
    Spawned {
        /// Its slot.
        slot: usize,
        /// Its pid.
        pid: u32,
        /// Its generation.
        generation: u64,
    },
    /// Starting a worker failed; the slot backs off and retries, like after any
    /// failure.
    SpawnFailed {
        /// The slot.
        slot: usize,
        /// What failed.
        error: Error,
    },
    /// A worker reported ready.
    Ready {
        /// Its slot.
        slot: usize,
        /// Its pid.
        pid: u32,
    },
    /// A worker exited.
    Exited {
        /// Its slot.
        slot: usize,
        /// Its pid.
        pid: u32,
        /// Its exit code or signal.
        status: ExitStatus,
        /// When its replacement starts (zero: at once; a tripped breaker's
        /// cool-down); `None` if none follows (it was draining, the slot stopped on a
        /// fatal exit code, or the pool is stopping).
        restart_in: Option<Duration>,
    },
    /// A slot's crash-loop breaker tripped: it waits `retry_in` before it starts one
    /// worker again (half-open), which closes the breaker if it becomes ready.
    BreakerTripped {
        /// The slot.
        slot: usize,
        /// Failures within the breaker's window.
        failures: usize,
        /// The cool-down before the next try.
        retry_in: Duration,
    },
    /// A worker's channel failed or sent something malformed; the channel is closed,
    /// and the worker is killed.
    ChannelError {
        /// The slot.
        slot: usize,
        /// What went wrong.
        error: io::Error,
    },
    /// A worker's heartbeat stopped for longer than the heartbeat timeout: it got
    /// `SIGTERM` (and `SIGKILL` after the grace period), or on Windows was
    /// terminated; its exit follows, and it is replaced like after a crash.
    Hung {
        /// Its slot.
        slot: usize,
        /// Its pid.
        pid: u32,
        /// How long it had been silent.
        silent: Duration,
    },
    /// A rolling restart finished: every slot runs a worker of `generation`, and the
    /// previous generation is gone.
    Reloaded {
        /// The new generation.
        generation: u64,
    },
    /// A rolling restart ended with some slots still on the old generation: their
    /// new worker exited before it was ready, so the old one goes on serving.
    ReloadFailed {
        /// The generation that did not come up everywhere.
        generation: u64,
        /// The slots that kept their old worker.
        slots: Vec<usize>,
    },
    /// A zero-downtime upgrade began ([`Pool::upgrade`](crate::Pool::upgrade)): the
    /// program now on disk runs as a new supervisor with this pool's listeners.
    UpgradeStarted {
        /// The new supervisor's pid.
        pid: u32,
    },
    /// The new supervisor reported ready: this pool hands its control socket over
    /// and stops gracefully from the next [`Pool::poll`](crate::Pool::poll) on (a
    /// [`Stopped`](Self::Stopped) follows). Stop accepting on listeners of your own
    /// now; the workers still take what you already accepted until then.
    Upgraded {
        /// The new supervisor's pid.
        pid: u32,
    },
    /// The upgrade was abandoned: the new supervisor could not start, exited, or was
    /// not ready within the ready timeout (then it was stopped). This pool goes on.
    UpgradeFailed {
        /// Why.
        reason: String,
    },
    /// A graceful stop finished: every worker has exited.
    Stopped,
    /// A control request (or, on Unix, an operator's signal) was carried out.
    Command(crate::Command),
    /// A worker reached its connection limit: a successor is starting, and it will
    /// drain once the successor is ready.
    Recycling {
        /// Its slot.
        slot: usize,
        /// Its pid.
        pid: u32,
    },
    /// A worker acknowledged every hand-off up to `upto`: its server owns them
    /// ([`WorkerLink`](crate::WorkerLink) acknowledges after each poll). The
    /// [`Dispatcher`](crate::Dispatcher) closes its copies then.
    Acknowledged {
        /// The slot.
        slot: usize,
        /// The worker.
        pid: u32,
        /// The highest hand-off id acknowledged; every lower one is acknowledged too.
        upto: u64,
    },
    /// A worker refused these hand-offs: it received them without their
    /// descriptors (its descriptor table was full), or could not serve them (at its
    /// connection limit). Nobody serves them.
    Refused {
        /// The slot.
        slot: usize,
        /// The worker.
        pid: u32,
        /// The hand-off ids.
        ids: Vec<u64>,
    },
    /// A message from a worker that is not the pool's own. Every message a worker
    /// sent before it exited is reported before its [`Exited`](PoolEvent::Exited).
    Message {
        /// The slot it came from.
        slot: usize,
        /// The message, with any descriptors.
        message: Message,
    },
    /// Something of the caller's: a source's readiness, a timer, a signal, a wake.
    Other(Event),
}
