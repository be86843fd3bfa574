//! Every accept lock survives its holder being SIGKILLed mid-hold — repeatedly, and
//! with other workers killed at the same time: the others go on taking it, and no IPC
//! object is left behind.
#![cfg(target_os = "linux")]

mod util;

use herder_pool::{AcceptLockKind, Pool, PoolEvent};
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::time::Duration;

#[test]
fn worker_entry() {
    util::worker_main();
}

fn shm_entries() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/dev/shm").map_or(Vec::new(), |d| {
        d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
            .collect()
    });
    v.sort();
    v
}

/// Waits for a "got PID" message from a live worker other than those in `not`.
fn next_holder(pool: &mut Pool, not: &[u32]) -> u32 {
    let mut found = None;
    util::poll_until(pool, Duration::from_secs(30), |e| {
        if let PoolEvent::Message { message, .. } = e {
            let text = String::from_utf8_lossy(message.payload()).to_string();
            if let Some(pid) = text
                .strip_prefix("got ")
                .and_then(|p| p.parse::<u32>().ok())
            {
                if !not.contains(&pid) {
                    found = Some(pid);
                    return true;
                }
            }
        }
        false
    });
    found.unwrap()
}

fn survive_holder_kills(kind: AcceptLockKind) {
    let shm_before = shm_entries();
    {
        let mut config = util::config(3, "lock-hold");
        config.accept_lock = Some(kind);
        config.breaker_failures = 100;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut pool = Pool::new(config, vec![("web".into(), OwnedFd::from(listener))]).unwrap();
        util::start_ready(&mut pool, 3);
        let mut killed = Vec::new();
        for round in 0..3 {
            let holder = next_holder(&mut pool, &killed);
            // Kill the holder mid-hold; in the first round, another worker with it.
            // SAFETY: the pid is a child of the pool, not yet reaped.
            unsafe { libc::kill(holder as i32, libc::SIGKILL) };
            killed.push(holder);
            if round == 0 {
                let other = pool
                    .pids()
                    .into_iter()
                    .find(|p| !killed.contains(p))
                    .expect("three workers");
                // SAFETY: as above.
                unsafe { libc::kill(other as i32, libc::SIGKILL) };
                killed.push(other);
            }
        }
        // Someone else, alive, takes it after all that, and accepts under it.
        let holder = next_holder(&mut pool, &killed);
        assert!(pool.pids().contains(&holder));
        let client = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut s = String::new();
            c.read_to_string(&mut s).unwrap();
            s.parse::<u32>().unwrap()
        });
        while !client.is_finished() {
            util::poll_for(&mut pool, Duration::from_millis(20));
        }
        let server = client.join().unwrap();
        assert!(
            pool.pids().contains(&server) && !killed.contains(&server),
            "{kind}: answered by {server}"
        );
    }
    assert_eq!(
        shm_entries(),
        shm_before,
        "{kind}: IPC objects left in /dev/shm"
    );
}

#[test]
fn flock_survives_its_holder_being_killed() {
    survive_holder_kills(AcceptLockKind::Flock);
}

#[test]
fn fcntl_survives_its_holder_being_killed() {
    survive_holder_kills(AcceptLockKind::Fcntl);
}

#[test]
fn pthread_survives_its_holder_being_killed() {
    survive_holder_kills(AcceptLockKind::Pthread);
}
