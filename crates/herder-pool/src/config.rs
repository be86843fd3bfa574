//! The pool's settings, the same on every platform where they apply.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// The exit code by which a worker says "fatal, do not restart me" (`EX_CONFIG` of
/// `sysexits.h`: a configuration error that a restart will not fix).
pub const FATAL_EXIT_CODE: i32 = 78;

/// How a [`Pool`](crate::Pool) runs its workers. Every field has a default
/// ([`Config::default`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Worker processes (at least 1, at most 4096 and half `scoreboard_capacity`).
    /// Default: the number of CPUs.
    pub workers: usize,
    /// The program workers run. Default: this program (`std::env::current_exe`), as
    /// herder's process model re-executes itself.
    pub program: Option<PathBuf>,
    /// The workers' arguments (without the program). Default: this process's.
    pub args: Option<Vec<OsString>>,
    /// Variables added to the workers' environment.
    pub env: Vec<(OsString, OsString)>,
    /// A worker that had reported ready and exits is restarted at once, however
    /// often — up to this many times per slot within
    /// [`restart_period`](Self::restart_period). Past that, it dies faster than is
    /// worth restarting at once, and counts as a failure (back-off, breaker).
    /// Default 10.
    pub restart_intensity: u32,
    /// See [`restart_intensity`](Self::restart_intensity). Default 1 s.
    pub restart_period: Duration,
    /// Failures — a start that fails, a worker that exits before it is ready, or a
    /// ready worker dying past the [`restart_intensity`](Self::restart_intensity) —
    /// back off: the first of a streak is restarted at once, the next waits this
    /// long, and the delay doubles with each further one (±20 % jitter). Default
    /// 100 ms.
    pub backoff_initial: Duration,
    /// The longest restart delay. Default 10 s.
    pub backoff_max: Duration,
    /// A worker that ran at least this long before exiting wipes its slot's
    /// failures: back-off, breaker window and cool-down start afresh. Default 10 s.
    pub stable_after: Duration,
    /// The crash-loop breaker: this many failures of one slot within
    /// [`breaker_window`](Self::breaker_window) trip it: the slot waits
    /// [`breaker_cooldown`](Self::breaker_cooldown) before it tries one worker
    /// again (the others go on). `usize::MAX`: no breaker. Default 5.
    pub breaker_failures: usize,
    /// See [`breaker_failures`](Self::breaker_failures). Default 30 s.
    pub breaker_window: Duration,
    /// How long a tripped slot waits before it starts one worker again (half-open):
    /// if that worker becomes ready the slot serves again; if it fails the breaker
    /// trips again, with twice the cool-down. Default 10 s.
    pub breaker_cooldown: Duration,
    /// The longest cool-down of a slot that keeps tripping. Default 5 minutes.
    pub breaker_cooldown_max: Duration,
    /// A worker that exits with this code is not restarted. Default
    /// [`FATAL_EXIT_CODE`].
    pub fatal_exit_code: Option<i32>,
    /// A worker that has not reported ready this long after its start is killed
    /// (terminated, on Windows), and counts as a crash. Default 30 s.
    pub ready_timeout: Duration,
    /// How long a draining worker (graceful stop, rolling restart, scaling down) may
    /// take before it is killed (terminated, on Windows). Default 30 s.
    pub drain_timeout: Duration,
    /// Whether a worker retired by a reload, a recycle or a scale-down moves its
    /// live connections to the workers that stay before it exits (those its
    /// services let move: [`Service::on_move`](herder_reactor::Service::on_move)),
    /// instead of serving them to their end: the old generation is gone in about a
    /// second whatever its connections do, and the peers see nothing. The worker's
    /// [`WorkerLink`](crate::WorkerLink) does the moving. A stop drains; an upgrade
    /// moves them to the new supervisor's workers. Default `true`.
    pub move_connections: bool,
    /// A ready worker whose heartbeat is older than this is taken for hung
    /// ([`PoolEvent::Hung`](crate::PoolEvent::Hung)) and replaced. The heartbeat is
    /// the scoreboard's (`Scorecard::heartbeat`, or publishing its load with
    /// `Scorecard::set_active`), counted from the worker's ready message. A hung
    /// worker gets `SIGTERM`, then `SIGKILL` after `kill_grace` on Unix; on Windows
    /// it is terminated. Default: none, as workers must heartbeat for it; the example
    /// servers set it.
    pub heartbeat_timeout: Option<Duration>,
    /// Between `SIGTERM` and `SIGKILL` for a hung worker, or for the new supervisor
    /// of an abandoned upgrade (Unix: on Windows a hung worker is terminated at
    /// once). Default 5 s.
    pub kill_grace: Duration,
    /// Records in the scoreboard: the most worker processes alive at once, draining
    /// ones included. Default 1024 (64 KiB of shared memory).
    pub scoreboard_capacity: usize,
    /// Recycle a worker after it has taken about this many connections (±10 %, so
    /// that workers started together are not recycled together; connections moved
    /// to it do not count): a successor is started, and the old worker retires once
    /// it is ready — moving its connections ([`move_connections`](Self::move_connections))
    /// or draining them. At most one slot recycles at a time. Default: none
    /// (workers are never recycled).
    pub max_connections: Option<u64>,
    /// Scale with the load between a minimum and a maximum of workers. Default: none
    /// (the number of workers changes only when asked).
    pub autoscale: Option<crate::Autoscale>,
    /// An accept lock for the workers to share ([`Worker::accept_lock`]). Default:
    /// none.
    ///
    /// [`Worker::accept_lock`]: crate::Worker::accept_lock
    pub accept_lock: Option<crate::AcceptLockKind>,
    #[cfg(unix)]
    /// The user and group workers run as (privilege separation: a supervisor
    /// started as root keeps root, its workers do not). Default: none (workers run as
    /// the supervisor does).
    pub worker_credentials: Option<crate::Credentials>,
    #[cfg(unix)]
    /// Speak systemd's `sd_notify` protocol when `NOTIFY_SOCKET` is set: `READY=1`,
    /// `RELOADING=1`, `STOPPING=1`, `STATUS=` and the watchdog (see
    /// [`systemd`](crate::systemd)). Default: true. Workers never see the
    /// variables.
    pub systemd_notify: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            program: None,
            args: None,
            env: Vec::new(),
            restart_intensity: 10,
            restart_period: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            stable_after: Duration::from_secs(10),
            breaker_failures: 5,
            breaker_window: Duration::from_secs(30),
            breaker_cooldown: Duration::from_secs(10),
            breaker_cooldown_max: Duration::from_secs(300),
            fatal_exit_code: Some(FATAL_EXIT_CODE),
            ready_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            move_connections: true,
            heartbeat_timeout: None,
            kill_grace: Duration::from_secs(5),
            scoreboard_capacity: 1024,
            accept_lock: None,
            #[cfg(unix)]
            worker_credentials: None,
            #[cfg(unix)]
            systemd_notify: true,
            max_connections: None,
            autoscale: None,
        }
    }
}

/// The most workers a pool runs, whatever it is asked (the control socket refuses
/// more).
pub(crate) const MAX_WORKERS: usize = 4096;

/// The number of slots a pool keeps when asked for `n`: at least one (a pool without
/// workers serves nothing, and a stop is how to end it), at most `max` and
/// [`MAX_WORKERS`].
pub(crate) fn slot_count(n: usize, max: usize) -> usize {
    n.clamp(1, max.clamp(1, MAX_WORKERS))
}

/// Refuses listener names a worker could not be told: they travel joined by `:` (as
/// systemd's `LISTEN_FDNAMES` does), so a name must be non-empty and without `:`.
pub(crate) fn check_listener_names<'a>(
    mut names: impl Iterator<Item = &'a str>,
) -> Result<(), crate::Error> {
    match names.find(|n| n.is_empty() || n.contains(':')) {
        Some(bad) => Err(crate::Error::Environment(format!(
            "listener name {bad:?}: names must be non-empty and without ':'"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_count_is_at_least_one_and_capped() {
        assert_eq!(slot_count(0, 512), 1);
        assert_eq!(slot_count(4, 512), 4);
        assert_eq!(slot_count(600, 512), 512);
        assert_eq!(slot_count(3, 0), 1);
        assert_eq!(slot_count(usize::MAX, usize::MAX), MAX_WORKERS);
    }

    #[test]
    fn listener_names_must_be_plain() {
        assert!(check_listener_names(["http", "metrics"].into_iter()).is_ok());
        assert!(check_listener_names(std::iter::empty()).is_ok());
        assert!(check_listener_names(["http", ""].into_iter()).is_err());
        assert!(check_listener_names(["a:b"].into_iter()).is_err());
    }
}
