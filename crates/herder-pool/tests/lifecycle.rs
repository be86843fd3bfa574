//! Graceful stop, rolling restart and scaling, with real worker processes.
#![cfg(target_os = "linux")]

mod util;

use herder_pool::{Pool, PoolEvent, State};
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

#[test]
fn worker_entry() {
    util::worker_main();
}

fn exits(events: &[PoolEvent]) -> Vec<(u32, std::process::ExitStatus)> {
    events
        .iter()
        .filter_map(|e| match e {
            PoolEvent::Exited {
                pid,
                status,
                restart_in: None,
                ..
            } => Some((*pid, *status)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_graceful_stop_lets_workers_finish() {
    let mut pool = Pool::new(util::config(2, "slow-drain"), Vec::new()).unwrap();
    util::start_ready(&mut pool, 2);
    let pids = pool.pids();
    let t0 = Instant::now();
    let mut events = Vec::new();
    pool.stop(&mut events);
    events.extend(util::poll_until(&mut pool, Duration::from_secs(30), |e| {
        matches!(e, PoolEvent::Stopped)
    }));
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "stopped before the workers drained"
    );
    let mut exited = exits(&events);
    exited.sort_by_key(|(pid, _)| *pid);
    assert_eq!(exited.iter().map(|(p, _)| *p).collect::<Vec<_>>(), pids);
    assert!(
        exited.iter().all(|(_, s)| s.code() == Some(0)),
        "{exited:?}"
    );
    assert!(pool.is_stopped());
    assert!(
        pool.workers()
            .iter()
            .all(|w| w.state == State::Stopped && w.pid.is_none())
    );
    // Nothing restarts after a stop.
    assert!(util::poll_for(&mut pool, Duration::from_millis(200)).is_empty());
}

#[test]
fn a_worker_that_ignores_the_drain_is_killed_at_the_deadline() {
    let mut config = util::config(1, "ignore-drain");
    config.drain_timeout = Duration::from_millis(300);
    let mut pool = Pool::new(config, Vec::new()).unwrap();
    util::start_ready(&mut pool, 1);
    let mut events = Vec::new();
    pool.stop(&mut events);
    let events = util::poll_until(&mut pool, Duration::from_secs(30), |e| {
        matches!(e, PoolEvent::Stopped)
    });
    let exited = exits(&events);
    assert_eq!(exited.len(), 1);
    assert_eq!(exited[0].1.signal(), Some(libc::SIGKILL));
}

#[test]
fn a_rolling_restart_replaces_every_worker_after_its_successor_is_ready() {
    let mut pool = Pool::new(util::config(2, "ready"), Vec::new()).unwrap();
    util::start_ready(&mut pool, 2);
    let old: Vec<u32> = pool.pids();
    let mut events = Vec::new();
    pool.reload(&mut events);
    events.extend(util::poll_until(&mut pool, Duration::from_secs(30), |e| {
        matches!(e, PoolEvent::Reloaded { .. })
    }));
    // The end of the reload; what the same poll reports after it (a channel's
    // end, say) may follow it.
    assert!(
        events
            .iter()
            .any(|e| matches!(e, PoolEvent::Reloaded { generation: 2 })),
        "{events:?}"
    );
    // Per slot: the new worker was ready before the old one exited.
    for slot in 0..2 {
        let ready_at = events
            .iter()
            .position(|e| matches!(e, PoolEvent::Ready { slot: s, .. } if *s == slot));
        let old_exit = events
            .iter()
            .position(|e| matches!(e, PoolEvent::Exited { slot: s, .. } if *s == slot));
        assert!(
            ready_at.unwrap() < old_exit.unwrap(),
            "slot {slot} had no ready worker: {events:?}"
        );
    }
    let new = pool.pids();
    assert_eq!(new.len(), 2);
    assert!(
        new.iter().all(|p| !old.contains(p)),
        "every pid changes: {old:?} -> {new:?}"
    );
    assert!(
        pool.workers()
            .iter()
            .all(|w| w.generation == 2 && w.state == State::Ready)
    );
    assert_eq!(exits(&events).len(), 2);
    assert!(exits(&events).iter().all(|(_, s)| s.code() == Some(0)));
}

#[test]
fn reloads_queue_one_generation_at_a_time() {
    let mut pool = Pool::new(util::config(1, "ready"), Vec::new()).unwrap();
    util::start_ready(&mut pool, 1);
    let mut events = Vec::new();
    pool.reload(&mut events);
    pool.reload(&mut events); // queued behind the first
    events.extend(util::poll_until(&mut pool, Duration::from_secs(30), |e| {
        matches!(e, PoolEvent::Reloaded { generation: 3 })
    }));
    let reloads: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            PoolEvent::Reloaded { generation } => Some(*generation),
            _ => None,
        })
        .collect();
    assert_eq!(reloads, [2, 3]);
    assert_eq!(pool.generation(), 3);
    assert_eq!(pool.pids().len(), 1);
}

#[test]
fn scaling_up_and_down() {
    let mut pool = Pool::new(util::config(1, "ready"), Vec::new()).unwrap();
    util::start_ready(&mut pool, 1);
    let first = pool.pids();
    let mut events = Vec::new();
    pool.scale(3, &mut events);
    let mut ready = 0;
    while ready < 2 {
        let more = util::poll_until(&mut pool, Duration::from_secs(30), |e| {
            matches!(e, PoolEvent::Ready { .. })
        });
        ready += more
            .iter()
            .filter(|e| matches!(e, PoolEvent::Ready { .. }))
            .count();
    }
    assert_eq!(pool.workers().len(), 3);
    assert!(pool.workers().iter().all(|w| w.state == State::Ready));

    let mut events = Vec::new();
    pool.scale(1, &mut events);
    let mut gone = 0;
    while gone < 2 {
        let more = util::poll_until(&mut pool, Duration::from_secs(30), |e| {
            matches!(e, PoolEvent::Exited { .. })
        });
        gone += exits(&more).len();
    }
    assert_eq!(pool.workers().len(), 1);
    assert_eq!(pool.pids(), first, "slot 0 keeps its worker");
}
