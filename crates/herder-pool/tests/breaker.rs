//! A crash loop: the slot's back-off grows, its breaker trips, and the other slots
//! keep serving. A fatal exit code is not restarted. Neither is a worker that never
//! starts in the first place allowed to stop the pool.
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
        4,
        "four restarts before the fifth crash trips: {events:?}"
    );
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
            failures: 5
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
        pool.send(0, b"work", &[]),
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
