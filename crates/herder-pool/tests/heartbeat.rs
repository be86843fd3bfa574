//! The scoreboard: workers' load figures reach the supervisor, and a worker whose
//! heartbeat stops is terminated, killed if it must be, and replaced.
#![cfg(target_os = "linux")]

mod util;

use herder_pool::{Pool, PoolEvent};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

#[test]
fn worker_entry() {
    util::worker_main();
}

fn exit_signal(events: &[PoolEvent]) -> Option<i32> {
    events.iter().find_map(|e| match e {
        PoolEvent::Exited { status, .. } => status.signal(),
        _ => None,
    })
}

#[test]
fn load_figures_reach_the_supervisor() {
    let mut pool = Pool::new(util::config(1, "report-load"), Vec::new()).unwrap();
    util::start_ready(&mut pool, 1);
    let w = pool.worker(0).unwrap();
    assert_eq!((w.accepted, w.active), (7, 3));
}

#[test]
fn a_hung_worker_is_terminated_and_replaced() {
    let mut config = util::config(1, "hang");
    config.heartbeat_timeout = Some(Duration::from_millis(300));
    let mut pool = Pool::new(config, Vec::new()).unwrap();
    util::start_ready(&mut pool, 1);
    let hung_pid = pool.worker(0).unwrap().pid.unwrap();
    let events = util::poll_until(&mut pool, Duration::from_secs(30), |e| {
        matches!(e, PoolEvent::Spawned { .. })
    });
    let hung = events.iter().find_map(|e| match e {
        PoolEvent::Hung { pid, silent, .. } => Some((*pid, *silent)),
        _ => None,
    });
    let (pid, silent) = hung.expect("a Hung event");
    assert_eq!(pid, hung_pid);
    assert!(silent >= Duration::from_millis(300));
    assert_eq!(exit_signal(&events), Some(libc::SIGTERM));
}

#[test]
fn a_hung_worker_that_ignores_sigterm_is_killed_after_the_grace() {
    let mut config = util::config(1, "hang-ignore-term");
    config.heartbeat_timeout = Some(Duration::from_millis(200));
    config.kill_grace = Duration::from_millis(200);
    let mut pool = Pool::new(config, Vec::new()).unwrap();
    util::start_ready(&mut pool, 1);
    let events = util::poll_until(&mut pool, Duration::from_secs(30), |e| {
        matches!(e, PoolEvent::Exited { .. })
    });
    assert!(events.iter().any(|e| matches!(e, PoolEvent::Hung { .. })));
    assert_eq!(exit_signal(&events), Some(libc::SIGKILL));
}

#[test]
fn workers_that_heartbeat_are_left_alone() {
    let mut config = util::config(2, "ready");
    config.heartbeat_timeout = Some(Duration::from_millis(300));
    let mut pool = Pool::new(config, Vec::new()).unwrap();
    util::start_ready(&mut pool, 2);
    let pids = pool.pids();
    let events = util::poll_for(&mut pool, Duration::from_millis(1200));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, PoolEvent::Hung { .. } | PoolEvent::Exited { .. })),
        "{events:?}"
    );
    assert_eq!(pool.pids(), pids);
}
