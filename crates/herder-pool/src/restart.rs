//! The restart policy: what a slot does after its worker exits, as a pure function
//! of the slot's history, the exit and the time. Both platforms' pools carry out its
//! decisions; it is tested here once, without processes.
//!
//! The rules, in the manner of nginx (respawn at once), systemd and Kubernetes (back
//! off, but retry) and Erlang/OTP (restart intensity within a period):
//!
//! * A worker that had become ready and dies is restarted **at once**, every time —
//!   unless its slot already restarted [`Config::restart_intensity`] ready workers
//!   within [`Config::restart_period`]: a worker that dies that fast burns the
//!   machine, and is treated as a failure.
//! * A failure — a worker that exits before it is ready, a start that fails, or a
//!   crash over the intensity — is restarted after a back-off: at once for the first
//!   of a streak, then [`Config::backoff_initial`] doubling up to
//!   [`Config::backoff_max`], ±20 % jitter.
//! * [`Config::breaker_failures`] failures within [`Config::breaker_window`] trip the
//!   slot's breaker. A tripped slot is not given up: after
//!   [`Config::breaker_cooldown`] (doubling for each trip in a row, up to
//!   [`Config::breaker_cooldown_max`]) it starts one worker (half-open). If that
//!   worker becomes ready the breaker closes; if it fails, the breaker trips again.
//! * A worker that ran for [`Config::stable_after`] wipes the slot's failures.
//!
//! [`Config::restart_intensity`]: crate::Config::restart_intensity
//! [`Config::restart_period`]: crate::Config::restart_period
//! [`Config::backoff_initial`]: crate::Config::backoff_initial
//! [`Config::backoff_max`]: crate::Config::backoff_max
//! [`Config::breaker_failures`]: crate::Config::breaker_failures
//! [`Config::breaker_window`]: crate::Config::breaker_window
//! [`Config::breaker_cooldown`]: crate::Config::breaker_cooldown
//! [`Config::breaker_cooldown_max`]: crate::Config::breaker_cooldown_max
//! [`Config::stable_after`]: crate::Config::stable_after

use crate::config::Config;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How a worker ended, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// It could not be started, or exited before it reported ready.
    BeforeReady,
    /// It had reported ready, and lived this long from its start.
    AfterReady(Duration),
}

/// What to do with the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Start its next worker after this delay (zero: at once).
    Restart(Duration),
    /// The breaker tripped after this many failures within its window; try one
    /// worker again after `retry_in`.
    Trip { failures: usize, retry_in: Duration },
}

/// One slot's past, as far as the policy needs it.
#[derive(Debug, Clone, Default)]
pub(crate) struct History {
    /// Failures in a row, for the back-off.
    streak: u32,
    /// When the failures within the breaker's window happened.
    failures: VecDeque<Instant>,
    /// When ready workers were restarted at once, within the restart period.
    restarts: VecDeque<Instant>,
    /// Trips in a row without a worker staying up, for the cool-down.
    trips: u32,
    /// The breaker tripped and no worker became ready since: the next start is the
    /// half-open try, and its failure trips the breaker again at once.
    half_open: bool,
}

impl History {
    /// The slot's worker exited (or could not be started) at `now`. `random` is any
    /// random number (for the jitter).
    pub(crate) fn exited(
        &mut self,
        config: &Config,
        exit: Exit,
        now: Instant,
        random: u64,
    ) -> Decision {
        if let Exit::AfterReady(lived) = exit {
            if std::mem::take(&mut self.half_open) {
                // The half-open try became ready: the breaker closes, and what tripped
                // it is over (the cool-down still doubles, should it trip again before
                // a worker stays up).
                self.failures.clear();
                self.streak = 0;
            }
            if lived >= config.stable_after {
                // It stayed up: the slot's past is forgiven.
                self.streak = 0;
                self.trips = 0;
                self.failures.clear();
            }
            prune(&mut self.restarts, now, config.restart_period);
            if self.restarts.len() < config.restart_intensity as usize {
                // It started and served: whatever failed before is over.
                self.streak = 0;
                self.restarts.push_back(now);
                return Decision::Restart(Duration::ZERO);
            }
        }
        // A failure: back off, or trip.
        self.streak = self.streak.saturating_add(1);
        self.failures.push_back(now);
        prune(&mut self.failures, now, config.breaker_window);
        if self.half_open || self.failures.len() >= config.breaker_failures.max(1) {
            self.half_open = true;
            self.trips = self.trips.saturating_add(1);
            let cooldown = config.breaker_cooldown.max(MIN_COOLDOWN);
            let retry_in = doubled(
                cooldown,
                self.trips - 1,
                config.breaker_cooldown_max.max(cooldown),
            );
            return Decision::Trip {
                failures: self.failures.len(),
                retry_in: jitter(retry_in, random),
            };
        }
        let delay = match self.streak {
            1 => Duration::ZERO,
            n => jitter(
                doubled(config.backoff_initial, n - 2, config.backoff_max),
                random,
            ),
        };
        Decision::Restart(delay)
    }

    /// An operator's reset: everything forgotten.
    pub(crate) fn reset(&mut self) {
        *self = History::default();
    }
}

/// The shortest cool-down, whatever the configuration says: a breaker that retries
/// at once would be a respawn loop.
const MIN_COOLDOWN: Duration = Duration::from_millis(100);
/// The longest delay the policy gives, whatever the configuration says (a
/// `Duration::MAX` there must not overflow a clock).
const MAX_DELAY: Duration = Duration::from_secs(24 * 3600);

/// Drops the times older than `window`.
fn prune(times: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while times
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= window)
    {
        times.pop_front();
    }
}

/// `base` doubled `n` times, at most `max` (and [`MAX_DELAY`]).
fn doubled(base: Duration, n: u32, max: Duration) -> Duration {
    base.saturating_mul(1u32 << n.min(30))
        .min(max)
        .min(MAX_DELAY)
}

/// ±20 %, so that slots that failed together do not restart together.
fn jitter(d: Duration, random: u64) -> Duration {
    d.mul_f64(0.8 + (random % 401) as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::default()
    }

    const MID: u64 = 200; // no jitter: factor 1.0

    #[test]
    fn a_ready_worker_is_restarted_at_once_every_time() {
        let c = config();
        let mut h = History::default();
        let t0 = Instant::now();
        // A worker killed every 300 ms, for a minute: never a delay, never a trip.
        for i in 0..200u32 {
            let now = t0 + Duration::from_millis(300) * i;
            let d = h.exited(&c, Exit::AfterReady(Duration::from_millis(295)), now, MID);
            assert_eq!(d, Decision::Restart(Duration::ZERO), "kill {i}");
        }
    }

    #[test]
    fn ready_workers_dying_faster_than_the_intensity_back_off_then_trip() {
        let c = config();
        let mut h = History::default();
        let t0 = Instant::now();
        let mut decisions = Vec::new();
        for i in 0..20u32 {
            let now = t0 + Duration::from_millis(10) * i;
            decisions.push(h.exited(&c, Exit::AfterReady(Duration::from_millis(9)), now, MID));
        }
        let at_once = decisions
            .iter()
            .take_while(|d| **d == Decision::Restart(Duration::ZERO))
            .count();
        // The intensity's worth at once, then the failures' back-off (whose first
        // step is also at once).
        assert_eq!(at_once, c.restart_intensity as usize + 1);
        let trip = decisions
            .iter()
            .position(|d| matches!(d, Decision::Trip { .. }))
            .expect("tripped");
        assert_eq!(trip, c.restart_intensity as usize + c.breaker_failures - 1);
    }

    #[test]
    fn failures_back_off_doubling_and_trip_with_a_cool_down() {
        let c = config();
        let mut h = History::default();
        let now = Instant::now();
        let delays: Vec<Decision> = (0..5)
            .map(|_| h.exited(&c, Exit::BeforeReady, now, MID))
            .collect();
        assert_eq!(
            delays,
            vec![
                Decision::Restart(Duration::ZERO),
                Decision::Restart(Duration::from_millis(100)),
                Decision::Restart(Duration::from_millis(200)),
                Decision::Restart(Duration::from_millis(400)),
                Decision::Trip {
                    failures: 5,
                    retry_in: c.breaker_cooldown
                },
            ]
        );
    }

    #[test]
    fn a_failed_half_open_try_trips_again_with_a_longer_cool_down() {
        let c = config();
        let mut h = History::default();
        let t0 = Instant::now();
        for _ in 0..4 {
            h.exited(&c, Exit::BeforeReady, t0, MID);
        }
        let mut now = t0;
        let mut cool_downs = Vec::new();
        for _ in 0..8 {
            match h.exited(&c, Exit::BeforeReady, now, MID) {
                Decision::Trip { retry_in, .. } => {
                    cool_downs.push(retry_in);
                    now += retry_in;
                }
                d => panic!("half-open failure did not trip: {d:?}"),
            }
        }
        assert_eq!(cool_downs[0], Duration::from_secs(10));
        assert_eq!(cool_downs[1], Duration::from_secs(20));
        assert_eq!(cool_downs[7], c.breaker_cooldown_max);
    }

    #[test]
    fn a_worker_that_stays_up_closes_the_breaker_for_good() {
        let c = config();
        let mut h = History::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            h.exited(&c, Exit::BeforeReady, t0, MID);
        }
        // The half-open worker comes up and stays.
        let later = t0 + Duration::from_secs(60);
        let lived = Duration::from_secs(50);
        assert_eq!(
            h.exited(&c, Exit::AfterReady(lived), later, MID),
            Decision::Restart(Duration::ZERO)
        );
        // A fresh streak: the first failure restarts at once, no trip before five.
        let ds: Vec<Decision> = (0..4)
            .map(|_| h.exited(&c, Exit::BeforeReady, later, MID))
            .collect();
        assert_eq!(ds[0], Decision::Restart(Duration::ZERO));
        assert!(ds.iter().all(|d| matches!(d, Decision::Restart(_))));
        match h.exited(&c, Exit::BeforeReady, later, MID) {
            Decision::Trip { retry_in, .. } => assert_eq!(retry_in, c.breaker_cooldown),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn a_half_open_worker_that_becomes_ready_closes_the_breaker() {
        let c = config();
        let mut h = History::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            h.exited(&c, Exit::BeforeReady, t0, MID);
        }
        // The half-open try becomes ready, and dies 2 s later (not yet stable).
        let t1 = t0 + c.breaker_cooldown + Duration::from_secs(2);
        assert_eq!(
            h.exited(&c, Exit::AfterReady(Duration::from_secs(2)), t1, MID),
            Decision::Restart(Duration::ZERO)
        );
        // One failure next is the first of a new streak, not a trip.
        assert_eq!(
            h.exited(&c, Exit::BeforeReady, t1, MID),
            Decision::Restart(Duration::ZERO)
        );
    }

    #[test]
    fn extreme_settings_neither_overflow_nor_spin() {
        let mut c = config();
        c.breaker_cooldown = Duration::MAX;
        c.breaker_cooldown_max = Duration::MAX;
        c.backoff_initial = Duration::MAX;
        c.backoff_max = Duration::MAX;
        let mut h = History::default();
        let now = Instant::now();
        for _ in 0..10 {
            let d = match h.exited(&c, Exit::BeforeReady, now, u64::MAX) {
                Decision::Restart(d) => d,
                Decision::Trip { retry_in, .. } => retry_in,
            };
            assert!(now.checked_add(d).is_some());
        }
        c.breaker_cooldown = Duration::ZERO;
        let mut h = History::default();
        for _ in 0..10 {
            if let Decision::Trip { retry_in, .. } = h.exited(&c, Exit::BeforeReady, now, MID) {
                assert!(retry_in >= MIN_COOLDOWN);
            }
        }
    }

    #[test]
    fn failures_outside_the_window_do_not_trip() {
        let c = config();
        let mut h = History::default();
        let t0 = Instant::now();
        for i in 0..20u32 {
            let now = t0 + c.breaker_window / 4 * i;
            let d = h.exited(&c, Exit::BeforeReady, now, MID);
            assert!(matches!(d, Decision::Restart(_)), "{i}: {d:?}");
        }
    }

    #[test]
    fn no_breaker_when_failures_are_unlimited() {
        let mut c = config();
        c.breaker_failures = usize::MAX;
        let mut h = History::default();
        let now = Instant::now();
        for _ in 0..100 {
            match h.exited(&c, Exit::BeforeReady, now, MID) {
                Decision::Restart(d) => assert!(d <= c.backoff_max),
                d => panic!("{d:?}"),
            }
        }
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let d = Duration::from_millis(1000);
        for r in [0, 1, 200, 400, 401, u64::MAX] {
            let j = jitter(d, r);
            assert!(j >= Duration::from_millis(800) && j <= Duration::from_millis(1200));
        }
    }

    #[test]
    fn a_reset_forgets_everything() {
        let c = config();
        let mut h = History::default();
        let now = Instant::now();
        for _ in 0..5 {
            h.exited(&c, Exit::BeforeReady, now, MID);
        }
        h.reset();
        assert_eq!(
            h.exited(&c, Exit::BeforeReady, now, MID),
            Decision::Restart(Duration::ZERO)
        );
    }
}
