//! A worker killed with SIGKILL is replaced; the other workers are not touched. What a
//! worker sent before it died is reported before its exit.
#![cfg(target_os = "linux")]

mod util;

use herder_pool::{Pool, PoolEvent, State};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

#[test]
fn worker_entry() {
    util::worker_main();
}

#[test]
fn a_killed_worker_is_replaced_and_the_others_go_on() {
    let mut pool = Pool::new(util::config(2, "ready"), Vec::new()).unwrap();
    util::start_ready(&mut pool, 2);
    let before = pool.workers();
    let (victim, other) = (before[0].pid.unwrap(), before[1].pid.unwrap());

    pool.signal(0, libc::SIGKILL).unwrap();
    let events = util::poll_until(&mut pool, Duration::from_secs(30), |e| {
        matches!(e, PoolEvent::Ready { slot: 0, .. })
    });
    let exited = events.iter().find_map(|e| match e {
        PoolEvent::Exited {
            slot: 0,
            pid,
            status,
            restart_in,
        } => Some((*pid, *status, *restart_in)),
        _ => None,
    });
    let (pid, status, restart_in) = exited.expect("an exit event");
    assert_eq!(pid, victim);
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(restart_in.is_some());

    let after = pool.workers();
    assert_ne!(after[0].pid, Some(victim), "slot 0 has a new worker");
    assert_eq!(after[0].state, State::Ready);
    assert_eq!(after[0].restarts, 1);
    assert_eq!(
        after[0].last_exit.and_then(|s| s.signal()),
        Some(libc::SIGKILL)
    );
    assert_eq!(after[1].pid, Some(other), "slot 1 untouched");
    assert_eq!(after[1].restarts, 0);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, PoolEvent::Exited { slot: 1, .. }))
    );
}

#[test]
fn a_dead_worker_s_messages_are_reported_before_its_exit() {
    let mut pool = Pool::new(util::config(1, "last-words"), Vec::new()).unwrap();
    let mut events = Vec::new();
    pool.start(&mut events);
    util::poll_until(&mut pool, Duration::from_secs(30), |e| {
        matches!(e, PoolEvent::Ready { .. })
    });
    let pid = pool.workers()[0].pid.unwrap();
    // "Go", and five it never reads (sent while it lives: on a busy machine it may
    // be gone before the last, which is no failure of the pool's).
    pool.send(0, b"go").unwrap();
    for _ in 0..5 {
        if let Err(e) = pool.send(0, b"go") {
            assert!(matches!(e, herder_pool::Error::Channel { .. }), "{e}");
        }
    }
    // Not a single poll until it is dead: its exit and its messages are both
    // waiting when the pool looks.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s[s.rfind(')').unwrap() + 2..].starts_with('Z'))
    {
        assert!(std::time::Instant::now() < deadline, "the worker lives on");
        std::thread::sleep(Duration::from_millis(5));
    }
    let events = util::poll_until(&mut pool, Duration::from_secs(30), |e| {
        matches!(e, PoolEvent::Exited { .. })
    });
    let said: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            PoolEvent::Message { message, .. } => {
                Some(String::from_utf8_lossy(message.payload()).into_owned())
            }
            _ => None,
        })
        .collect();
    let want: Vec<String> = (0..150).map(|i| format!("last words {i}")).collect();
    assert_eq!(said, want);
}
