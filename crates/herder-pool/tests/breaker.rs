//! A crash loop: the slot's back-off grows, its breaker trips, and the other slots
//! keep serving; after a cool-down the slot tries again (half-open) and serves once a
//! worker starts. A ready worker killed again and again is restarted at once every
//! time. A fatal exit code is not restarted. Neither is a worker that never starts in
//! the first place allowed to stop the pool.
#![cfg(target_os = "linux")]

mod util;

use herder_pool::{Config, Pool, PoolEvent, State};
use std::time::Duration;

#[test]
fn worker_entry() {
    util::worker_main();
}

#[test]
fn a_crash_loop_backs_off_then_trips_the_breaker_of_that_slot_only() {
    let mut config = util::config(2, "crash-slot-0");
    config.breaker_failures = 5;
    config.breaker_window = Duration::from_secs(60);
    let mut pool = Pool::new(config, Vec::new()).unwrap();
    let mut events = Vec::new();
    pool.start(&mut events);
    events.extend(util::poll_until(&mut pool, Duration::from_secs(60), |e| {
        matches!(e, PoolEvent::BreakerTripped { slot: 0, .. })
    }));
    let delays: Vec<Duration> = events
        .iter()
        .filter_map(|e| match e {
            PoolEvent::Exited {
                slot: 0,
                restart_in: Some(d),
                ..
            } => Some(*d),
            _ => None,
        })
        .collect();
    assert_eq!(
        delays.len(),
        5,
        "four restarts, then the fifth crash trips: {events:?}"
    );
    let Some(PoolEvent::BreakerTripped { retry_in, .. }) = events.last() else {
        panic!("{events:?}");
    };
    // The fifth waits out the breaker's cool-down (10 s ±20 % by default).
    assert_eq!(delays[4], *retry_in);
    assert!(*retry_in >= Duration::from_secs(8) && *retry_in <= Duration::from_secs(12));
    let delays = &delays[..4];
    // The first crash restarts at once; then doubling with ±20 % jitter: each delay
    // is longer than the one before.
    assert_eq!(delays[0], Duration::ZERO);
    assert!(
        delays.windows(2).all(|w| w[1] > w[0]),
        "back-off did not grow: {delays:?}"
    );
    assert!(delays[1] >= Duration::from_millis(16) && delays[1] <= Duration::from_millis(24));
    assert!(matches!(
        events.last(),
        Some(PoolEvent::BreakerTripped {
            slot: 0,
            failures: 5,
            ..
        })
    ));

    // Slot 1 is ready and stays so; slot 0 is no longer restarted.
    let ready_1 = pool.worker(1).unwrap();
    if ready_1.state != State::Ready {
        util::poll_until(&mut pool, Duration::from_secs(30), |e| {
            matches!(e, PoolEvent::Ready { slot: 1, .. })
        });
    }
    let pid_1 = pool.worker(1).unwrap().pid;
    let later = util::poll_for(&mut pool, Duration::from_millis(500));
    assert!(
        !later
            .iter()
            .any(|e| matches!(e, PoolEvent::Spawned { slot: 0, .. })),
        "{later:?}"
    );
    assert_eq!(pool.worker(0).unwrap().state, State::Tripped);
    assert_eq!(pool.worker(1).unwrap().pid, pid_1);
    assert_eq!(pool.worker(1).unwrap().state, State::Ready);

    // An operator's reset starts it again.
    let mut events = Vec::new();
    pool.reset(0, &mut events).unwrap();
    assert!(matches!(
        events.as_slice(),
        [PoolEvent::Spawned { slot: 0, .. }]
    ));
}

#[test]
fn a_tripped_slot_tries_again_after_its_cool_down_and_serves_once_the_cause_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("broken");
    std::fs::write(&flag, b"").unwrap();
    let mut config = util::config(1, &format!("crash-while-{}", flag.display()));
    config.breaker_failures = 3;
    config.breaker_cooldown = Duration::from_millis(300);
    let mut pool = Pool::new(config, Vec::new()).unwrap();
    let mut events = Vec::new();
    pool.start(&mut events);
    let tripped = |e: &PoolEvent| matches!(e, PoolEvent::BreakerTripped { slot: 0, .. });
    util::poll_until(&mut pool, Duration::from_secs(30), tripped);
    let w = pool.worker(0).unwrap();
    assert_eq!(w.state, State::Tripped);
    assert!(
        w.restart_in
            .is_some_and(|d| d <= Duration::from_millis(360))
    );
    // The half-open try fails while the cause lasts, and trips the breaker again at
    // once, with a longer cool-down.
    let again = util::poll_until(&mut pool, Duration::from_secs(30), tripped);
    let spawned = again
        .iter()
        .filter(|e| matches!(e, PoolEvent::Spawned { slot: 0, .. }))
        .count();
    assert_eq!(spawned, 1, "one try per cool-down: {again:?}");
    let Some(PoolEvent::BreakerTripped { retry_in, .. }) = again.last() else {
        panic!("{again:?}");
    };
    assert!(*retry_in >= Duration::from_millis(480), "{retry_in:?}");
    // The cause is gone: the next try brings the slot back without an operator.
    std::fs::remove_file(&flag).unwrap();
    util::poll_until(&mut pool, Duration::from_secs(30), |e| {
        matches!(e, PoolEvent::Ready { slot: 0, .. })
    });
    assert_eq!(pool.worker(0).unwrap().state, State::Ready);
}

#[test]
fn a_reload_starts_a_tripped_slot_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("broken");
    std::fs::write(&flag, b"").unwrap();
    let mut config = util::config(1, &format!("crash-while-{}", flag.display()));
    config.breaker_failures = 2;
    config.breaker_cooldown = Duration::from_secs(600);
    let mut pool = Pool::new(config, Vec::new()).unwrap();
    let mut events = Vec::new();
    pool.start(&mut events);
    util::poll_until(&mut pool, Duration::from_secs(30), |e| {
        matches!(e, PoolEvent::BreakerTripped { slot: 0, .. })
    });
    // The cause is fixed, and the operator reloads: no ten-minute wait.
    std::fs::remove_file(&flag).unwrap();
    let mut events = Vec::new();
    pool.reload(&mut events);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, PoolEvent::Spawned { slot: 0, .. })),
        "{events:?}"
    );
    util::poll_until(&mut pool, Duration::from_secs(30), |e| {
        matches!(e, PoolEvent::Ready { slot: 0, .. })
    });
}

#[test]
fn a_ready_worker_killed_again_and_again_is_restarted_at_once_every_time() {
    let mut config = util::config(2, "ready");
    config.breaker_failures = 3;
    let mut pool = Pool::new(config, Vec::new()).unwrap();
    let mut events = Vec::new();
    pool.start(&mut events);
    let mut kills = 0;
    for round in 0..12 {
        let slot = round % 2;
        let w = match pool.worker(slot).unwrap() {
            w if w.state == State::Ready => w,
            _ => {
                util::poll_until(
                    &mut pool,
                    Duration::from_secs(30),
                    |e| matches!(e, PoolEvent::Ready { slot: s, .. } if *s == slot),
                );
                pool.worker(slot).unwrap()
            }
        };
        // SAFETY: a worker this test's pool started.
        unsafe { libc::kill(w.pid.unwrap() as i32, libc::SIGKILL) };
        kills += 1;
        let seen = util::poll_until(
            &mut pool,
            Duration::from_secs(30),
            |e| matches!(e, PoolEvent::Exited { slot: s, .. } if *s == slot),
        );
        let restart_in = seen.iter().find_map(|e| match e {
            PoolEvent::Exited { restart_in, .. } => Some(*restart_in),
            _ => None,
        });
        assert_eq!(
            restart_in,
            Some(Some(Duration::ZERO)),
            "kill {kills}: {seen:?}"
        );
        assert!(
            !seen
                .iter()
                .any(|e| matches!(e, PoolEvent::BreakerTripped { .. })),
            "{seen:?}"
        );
    }
    for _ in 0..4 {
        if pool_ready_count(&pool) == 2 {
            return;
        }
        util::poll_until(&mut pool, Duration::from_secs(30), |e| {
            matches!(e, PoolEvent::Ready { .. })
        });
    }
    assert_eq!(pool_ready_count(&pool), 2, "{:?}", pool.workers());
}

fn pool_ready_count(pool: &Pool) -> usize {
    pool.workers()
        .iter()
        .filter(|w| w.state == State::Ready)
        .count()
}

#[test]
fn a_fatal_exit_code_is_not_restarted() {
    let mut pool = Pool::new(util::config(1, "fatal"), Vec::new()).unwrap();
    let mut events = Vec::new();
    pool.start(&mut events);
    let events = util::poll_until(&mut pool, Duration::from_secs(30), |e| {
        matches!(e, PoolEvent::Exited { .. })
    });
    let exit = events.iter().find_map(|e| match e {
        PoolEvent::Exited {
            status, restart_in, ..
        } => Some((status.code(), *restart_in)),
        _ => None,
    });
    assert_eq!(exit, Some((Some(herder_pool::FATAL_EXIT_CODE), None)));
    assert_eq!(pool.worker(0).unwrap().state, State::Fatal);
    let later = util::poll_for(&mut pool, Duration::from_millis(300));
    assert!(!later.iter().any(|e| matches!(e, PoolEvent::Spawned { .. })));
}

#[test]
fn a_worker_that_never_reports_ready_is_killed_and_retried() {
    let mut config = util::config(1, "never-ready");
    config.ready_timeout = Duration::from_millis(300);
    let mut pool = Pool::new(config, Vec::new()).unwrap();
    let mut events = Vec::new();
    pool.start(&mut events);
    // Not ready: it takes no work.
    assert!(matches!(
        pool.send(0, b"work"),
        Err(herder_pool::Error::NoWorker(0))
    ));
    let events = util::poll_until(&mut pool, Duration::from_secs(30), |e| {
        matches!(e, PoolEvent::Exited { .. })
    });
    use std::os::unix::process::ExitStatusExt;
    let status = events.iter().find_map(|e| match e {
        PoolEvent::Exited {
            status,
            restart_in: Some(_),
            ..
        } => Some(*status),
        _ => None,
    });
    assert_eq!(status.and_then(|s| s.signal()), Some(libc::SIGKILL));
    util::poll_until(&mut pool, Duration::from_secs(30), |e| {
        matches!(e, PoolEvent::Spawned { slot: 0, .. })
    });
}

#[test]
fn a_program_that_cannot_start_does_not_stop_the_pool() {
    let mut config: Config = util::config(1, "ready");
    config.program = Some("/nonexistent/herder-worker".into());
    config.breaker_failures = 3;
    let mut pool = Pool::new(config, Vec::new()).unwrap();
    let mut events = Vec::new();
    pool.start(&mut events);
    let events: Vec<_> = events
        .into_iter()
        .chain(util::poll_until(&mut pool, Duration::from_secs(30), |e| {
            matches!(e, PoolEvent::BreakerTripped { .. })
        }))
        .collect();
    let failures = events
        .iter()
        .filter(|e| matches!(e, PoolEvent::SpawnFailed { .. }))
        .count();
    assert_eq!(failures, 3, "{events:?}");
    let msg = events
        .iter()
        .find_map(|e| match e {
            PoolEvent::SpawnFailed { error, .. } => Some(error.to_string()),
            _ => None,
        })
        .unwrap();
    assert!(
        msg.contains("slot 0") && msg.contains("No such file"),
        "{msg}"
    );
}
