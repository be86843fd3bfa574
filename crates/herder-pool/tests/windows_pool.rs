//! The pool on Windows (run under Wine in CI): workers start, get the listener and
//! report ready; a terminated worker is replaced; a graceful stop drains them; the
//! named-mutex accept lock is taken over from a holder terminated mid-hold.
#![cfg(windows)]

use herder_pool::{Config, Pool, PoolEvent, Worker, is_drain_request};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const ROLE: &str = "HERDER_POOL_TEST_ROLE";

/// The worker side, when the pool runs this test binary again.
#[test]
fn worker_entry() {
    let Some(mut worker) = Worker::from_env().unwrap() else {
        return;
    };
    let role = std::env::var(ROLE).unwrap_or_default();
    if role == "lock" {
        // Take the lock and never let it go; report what it took.
        let mut lock = worker.accept_lock().unwrap().expect("an accept lock");
        let took = lock.try_lock().unwrap();
        worker
            .channel()
            .send(format!("lock {took} {}", lock.recovered()).as_bytes())
            .unwrap();
        worker.ready().unwrap();
        std::mem::forget(lock);
        loop {
            std::thread::sleep(Duration::from_secs(60));
        }
    }
    // Echo with the pid in front, on the pool's listener.
    let listener = worker.take_listener("echo").expect("the listener");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 64];
            let n = conn.read(&mut buf).unwrap_or(0);
            let _ = write!(conn, "{} ", std::process::id());
            let _ = conn.write_all(&buf[..n]);
        }
    });
    worker.ready().unwrap();
    while let Ok(Some(message)) = worker.channel().recv() {
        if is_drain_request(message.payload()) {
            std::process::exit(0);
        }
    }
    std::process::exit(0);
}

fn config(workers: usize, role: &str) -> Config {
    let mut c = Config::default();
    c.workers = workers;
    c.args = Some(
        ["--exact", "worker_entry", "--nocapture", "--test-threads=1"]
            .map(Into::into)
            .to_vec(),
    );
    c.env = vec![(ROLE.into(), role.into())];
    c.breaker_failures = 100;
    c
}

/// Polls until `pred` accepts an event (60 s at most); returns the events seen.
fn until(pool: &mut Pool, what: &str, mut pred: impl FnMut(&PoolEvent) -> bool) -> Vec<PoolEvent> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let mut events = Vec::new();
        pool.poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        let hit = events.iter().any(&mut pred);
        seen.extend(events);
        if hit {
            return seen;
        }
        assert!(Instant::now() < deadline, "{what}: only {seen:?}");
    }
}

fn terminate(pid: u32) {
    use windows_sys::Win32::Foundation::CloseHandle;
    use windows_sys::Win32::System::Threading::{OpenProcess, PROCESS_TERMINATE, TerminateProcess};
    // SAFETY: opens a process this test's pool started, terminates it, closes the
    // handle.
    unsafe {
        let h = OpenProcess(PROCESS_TERMINATE, 0, pid);
        assert!(!h.is_null(), "OpenProcess({pid})");
        assert_ne!(TerminateProcess(h, 9), 0, "TerminateProcess({pid})");
        CloseHandle(h);
    }
}

fn ask(addr: std::net::SocketAddr) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(b"hi").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn workers_serve_are_replaced_and_drain() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut pool = Pool::new(config(2, "echo"), vec![("echo".into(), listener)]).unwrap();
    let mut events = Vec::new();
    pool.start(&mut events);
    let mut ready = 0;
    until(&mut pool, "two workers ready", |e| {
        ready += usize::from(matches!(e, PoolEvent::Ready { .. }));
        ready == 2
    });
    let pids: Vec<u32> = pool.workers().iter().filter_map(|w| w.pid).collect();
    assert_eq!(pids.len(), 2);
    // Served by a worker, through the listener the pool handed over.
    for _ in 0..10 {
        let answer = ask(addr);
        let (pid, rest) = answer.split_once(' ').unwrap();
        assert!(
            pids.contains(&pid.parse().unwrap()),
            "{answer:?} not from {pids:?}"
        );
        assert_eq!(rest, "hi");
    }
    // A terminated worker is replaced, at once after a first crash.
    terminate(pids[0]);
    let seen = until(&mut pool, "the replacement ready", |e| {
        matches!(e, PoolEvent::Ready { slot: 0, .. })
    });
    assert!(
        seen.iter().any(|e| matches!(
            e,
            PoolEvent::Exited { slot: 0, pid, restart_in: Some(d), .. } if *pid == pids[0] && d.is_zero()
        )),
        "{seen:?}"
    );
    let new = pool.workers()[0].pid.unwrap();
    assert_ne!(new, pids[0]);
    assert_eq!(pool.workers()[0].restarts, 1);
    assert!(ask(addr).ends_with(" hi"));
    // A graceful stop: each worker drains and exits 0.
    let mut events = Vec::new();
    pool.stop(&mut events);
    let seen = until(&mut pool, "the stop", |e| matches!(e, PoolEvent::Stopped));
    let exits: Vec<_> = seen
        .iter()
        .filter_map(|e| match e {
            PoolEvent::Exited { status, .. } => Some(status.code()),
            _ => None,
        })
        .collect();
    assert_eq!(exits, [Some(0), Some(0)], "{seen:?}");
    assert!(pool.is_stopped());
}

#[test]
fn the_named_mutex_is_taken_over_from_a_terminated_holder() {
    let mut c = config(1, "lock");
    c.accept_lock = true;
    let mut pool = Pool::new(c, Vec::new()).unwrap();
    let mut events = Vec::new();
    pool.start(&mut events);
    let message = |e: &PoolEvent| match e {
        PoolEvent::Message { message, .. } => {
            Some(String::from_utf8_lossy(message.payload()).into_owned())
        }
        _ => None,
    };
    let seen = until(&mut pool, "the first holder", |e| message(e).is_some());
    assert_eq!(seen.iter().find_map(message).unwrap(), "lock true 0");
    // Its READY may have come in the same poll as its message.
    if !seen.iter().any(|e| matches!(e, PoolEvent::Ready { .. })) {
        until(&mut pool, "ready", |e| matches!(e, PoolEvent::Ready { .. }));
    }
    // Terminated while holding it: the mutex is abandoned, and the replacement
    // takes it, knowing it recovered it.
    terminate(pool.workers()[0].pid.unwrap());
    let seen = until(&mut pool, "the next holder", |e| message(e).is_some());
    assert_eq!(seen.iter().find_map(message).unwrap(), "lock true 1");
}
