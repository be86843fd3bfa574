//! The operator's signals: SIGTTIN/SIGTTOU scale, SIGHUP reloads, SIGTERM stops. One
//! test: signals belong to the whole process.
#![cfg(target_os = "linux")]

mod util;

use herder_pool::{Command, Pool, PoolEvent};
use std::time::Duration;

#[test]
fn worker_entry() {
    util::worker_main();
}

fn raise(sig: i32) {
    // SAFETY: sends a signal to this process, whose handler the pool installed.
    assert_eq!(unsafe { libc::kill(libc::getpid(), sig) }, 0);
}

#[test]
fn signals_scale_reload_and_stop_the_pool() {
    let mut pool = Pool::new(util::config(1, "ready"), Vec::new()).unwrap();
    pool.handle_signals().unwrap();
    util::start_ready(&mut pool, 1);

    raise(libc::SIGTTIN);
    let ev = util::poll_until(&mut pool, Duration::from_secs(30), |e| {
        matches!(e, PoolEvent::Ready { slot: 1, .. })
    });
    assert!(
        ev.iter()
            .any(|e| matches!(e, PoolEvent::Command(Command::Scale(2))))
    );
    assert_eq!(pool.workers().len(), 2);

    raise(libc::SIGTTOU);
    let ev = util::poll_until(&mut pool, Duration::from_secs(30), |e| {
        matches!(e, PoolEvent::Exited { slot: 1, .. })
    });
    assert!(
        ev.iter()
            .any(|e| matches!(e, PoolEvent::Command(Command::Scale(1))))
    );
    assert_eq!(pool.workers().len(), 1);

    let before = pool.pids();
    raise(libc::SIGHUP);
    util::poll_until(&mut pool, Duration::from_secs(30), |e| {
        matches!(e, PoolEvent::Reloaded { generation: 2 })
    });
    assert_ne!(pool.pids(), before);

    raise(libc::SIGTERM);
    util::poll_until(&mut pool, Duration::from_secs(30), |e| {
        matches!(e, PoolEvent::Stopped)
    });
    assert!(pool.is_stopped());
}
