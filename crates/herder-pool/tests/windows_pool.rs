//! The pool on Windows (run under Wine in CI): workers start, get the listener and
//! report ready; a terminated worker is replaced; a graceful stop drains them; the
//! named-mutex accept lock is taken over from a holder terminated mid-hold; rolling
//! restarts, scaling and the scoreboard's load figures, driven through the control
//! pipe; a worker's last messages come before its exit; recycling past a
//! connection limit and autoscaling by load, from the scoreboard.
#![cfg(windows)]

use herder_pool::{Config, Pool, PoolEvent, Worker, is_drain_request};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const ROLE: &str = "HERDER_POOL_TEST_ROLE";
/// The open connections a `load` worker publishes.
const ACTIVE: &str = "HERDER_POOL_TEST_ACTIVE";
/// The connections a `load` worker says it took.
const ACCEPTED: &str = "HERDER_POOL_TEST_ACCEPTED";

/// The worker side, when the pool runs this test binary again.
#[test]
fn worker_entry() {
    let Some(mut worker) = Worker::from_env().unwrap() else {
        return;
    };
    let role = std::env::var(ROLE).unwrap_or_default();
    if role == "load" {
        // Publishes the load it is told to (open connections, connections taken),
        // reports ready, and waits for the drain request.
        let figure = |name: &str| std::env::var(name).map_or(0, |v| v.parse::<u64>().unwrap());
        let card = worker.scorecard().expect("a scorecard");
        card.set_active(figure(ACTIVE));
        card.add_accepted(figure(ACCEPTED));
        worker.ready().unwrap();
        while let Ok(Some(message)) = worker.channel().unwrap().recv() {
            if is_drain_request(message.payload()) {
                break;
            }
        }
        std::process::exit(0);
    }
    if role == "hang" {
        // Ready (its heartbeat clock starts), one figure published, then silence, as
        // a worker stuck in a loop.
        let card = worker.scorecard().expect("a scorecard");
        card.add_lock_waits(3);
        worker.ready().unwrap();
        loop {
            std::thread::sleep(Duration::from_secs(60));
        }
    }
    if role == "last-words" {
        // Ready, then many messages at once and an exit: none may be lost, and all
        // come before the pool reports the exit.
        worker.ready().unwrap();
        for i in 0..500 {
            worker
                .channel()
                .unwrap()
                .send(format!("word {i}").as_bytes())
                .unwrap();
        }
        std::process::exit(3);
    }
    if role == "lock" {
        // Take the lock and never let it go; report what it took.
        let mut lock = worker.accept_lock().unwrap().expect("an accept lock");
        let took = lock.try_lock().unwrap();
        worker
            .channel()
            .unwrap()
            .send(format!("lock {took} {}", lock.recovered()).as_bytes())
            .unwrap();
        worker.ready().unwrap();
        std::mem::forget(lock);
        loop {
            std::thread::sleep(Duration::from_secs(60));
        }
    }
    // Echo with the pid in front, on the pool's listener; each connection reported.
    // A drain request stops the accepting after the exchange in progress: exiting
    // in the middle of one would reset it.
    let listener = worker.take_listener("echo").expect("the listener");
    listener.set_nonblocking(true).unwrap();
    let card = worker.scorecard().expect("a scorecard");
    worker.ready().unwrap();
    let draining = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = draining.clone();
    let server = std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            card.heartbeat();
            let Ok((mut conn, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            };
            let _ = conn.set_nonblocking(false);
            let mut buf = [0u8; 64];
            let n = conn.read(&mut buf).unwrap_or(0);
            let _ = write!(conn, "{} ", std::process::id());
            let _ = conn.write_all(&buf[..n]);
            drop(conn);
            card.set_active(0);
            card.add_accepted(1);
        }
    });
    while let Ok(Some(message)) = worker.channel().unwrap().recv() {
        if is_drain_request(message.payload()) {
            break;
        }
    }
    draining.store(true, std::sync::atomic::Ordering::SeqCst);
    server.join().unwrap();
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
    let mut pool = Pool::new(config(2, "echo"), vec![("echo".into(), listener.into())]).unwrap();
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
    c.accept_lock = Some(herder_pool::AcceptLockKind::Mutex);
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

/// Sends `line` on the control pipe `name` from a thread while this one runs the
/// pool; returns the answer and the events seen meanwhile.
fn control(pool: &mut Pool, name: &str, line: &str) -> (serde_json::Value, Vec<PoolEvent>) {
    let path = herder_pool::control_pipe_path(name);
    let line = format!("{line}\n");
    let client = std::thread::spawn(move || {
        let mut pipe = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        pipe.write_all(line.as_bytes()).unwrap();
        let mut answer = String::new();
        pipe.read_to_string(&mut answer).unwrap();
        answer
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while !client.is_finished() {
        assert!(Instant::now() < deadline, "no answer: {seen:?}");
        pool.poll(&mut seen, Some(Duration::from_millis(20)))
            .unwrap();
    }
    let answer = client.join().unwrap();
    assert!(answer.ends_with('\n'), "{answer:?}");
    (serde_json::from_str(&answer).unwrap(), seen)
}

/// Polls until `pred` holds for the pool (60 s at most).
fn settle(pool: &mut Pool, what: &str, pred: impl Fn(&Pool) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut events = Vec::new();
    while !pred(pool) {
        assert!(
            Instant::now() < deadline,
            "{what}: {:?} after {events:?}",
            pool.workers()
        );
        pool.poll(&mut events, Some(Duration::from_millis(20)))
            .unwrap();
    }
}

fn all_ready(pool: &Pool, n: usize) -> bool {
    let w = pool.workers();
    w.len() == n && w.iter().all(|w| w.state == herder_pool::State::Ready)
}

#[test]
fn reload_scale_and_status_through_the_control_pipe() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut pool = Pool::new(config(2, "echo"), vec![("echo".into(), listener.into())]).unwrap();
    let name = format!("herder-test-{}", std::process::id());
    pool.listen_control(&name).unwrap();
    assert_eq!(
        pool.control_path(),
        Some(std::path::Path::new(&format!(r"\\.\pipe\{name}")))
    );
    // A second pool cannot take the same name.
    let other = Pool::new(config(1, "echo"), Vec::new());
    assert!(other.unwrap().listen_control(&name).is_err());
    let mut events = Vec::new();
    pool.start(&mut events);
    settle(&mut pool, "two workers ready", |p| all_ready(p, 2));

    // The scoreboard reaches `status`: every connection counted, by the worker that took
    // it (each answer starts with the pid of the worker that served it).
    let mut served: std::collections::HashMap<u64, u64> = Default::default();
    for _ in 0..10 {
        let answer = ask(addr);
        let (pid, rest) = answer.split_once(' ').unwrap();
        assert_eq!(rest, "hi");
        *served.entry(pid.parse().unwrap()).or_default() += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let (status, _) = control(&mut pool, &name, r#"{"cmd":"status"}"#);
        let sum: u64 = status["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["accepted"].as_u64().unwrap())
            .sum();
        if sum == 10 {
            break status;
        }
        assert!(sum < 10 && Instant::now() < deadline, "{status}");
    };
    assert_eq!(status["ok"], true);
    assert_eq!(status["pid"], std::process::id());
    assert_eq!(status["generation"], 1);
    let before: Vec<u32> = pool.workers().iter().filter_map(|w| w.pid).collect();
    for (w, pid) in status["workers"].as_array().unwrap().iter().zip(&before) {
        assert_eq!(w["pid"], *pid, "{status}");
        assert_eq!(w["state"], "ready", "{status}");
        assert_eq!(w["active"], 0, "{status}");
        assert_eq!(
            w["accepted"],
            served.get(&u64::from(*pid)).copied().unwrap_or(0),
            "{status} {served:?}"
        );
    }

    // A rolling restart: new workers of generation 2, each old one drained once its
    // successor was ready, serving throughout.
    let (answer, mut seen) = control(&mut pool, &name, r#"{"cmd":"reload"}"#);
    assert_eq!(answer["generation"], 2, "{answer}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen
        .iter()
        .any(|e| matches!(e, PoolEvent::Reloaded { generation: 2 }))
    {
        assert!(Instant::now() < deadline, "no reload: {seen:?}");
        assert!(ask(addr).ends_with(" hi"));
        pool.poll(&mut seen, Some(Duration::from_millis(20)))
            .unwrap();
    }
    let after = pool.workers();
    assert!(after.iter().all(|w| w.generation == 2), "{after:?}");
    assert!(
        after.iter().all(|w| !before.contains(&w.pid.unwrap())),
        "{after:?}"
    );
    // Reported once the old workers are gone, each after its successor was ready.
    assert!(after.iter().all(|w| w.draining.is_empty()), "{after:?}");
    for (slot, old) in before.iter().enumerate() {
        let new = after[slot].pid.unwrap();
        let at = |pred: &dyn Fn(&PoolEvent) -> bool| seen.iter().position(pred);
        let ready = at(&|e| matches!(e, PoolEvent::Ready { pid, .. } if *pid == new));
        let exit = at(&|e| matches!(e, PoolEvent::Exited { pid, .. } if pid == old));
        assert!(ready.is_some() && ready < exit, "slot {slot}: {seen:?}");
    }
    assert!(ask(addr).ends_with(" hi"));

    // A worker of the new generation that crashes comes back as that generation.
    terminate(after[0].pid.unwrap());
    settle(&mut pool, "the replacement", |p| {
        let w = &p.workers()[0];
        w.pid != after[0].pid && w.state == herder_pool::State::Ready
    });
    let w = &pool.workers()[0];
    assert_eq!((w.generation, w.restarts), (2, 1), "{w:?}");
    assert!(w.last_exit.is_some(), "{w:?}");

    // Scaling up and down.
    let (answer, _) = control(&mut pool, &name, r#"{"cmd":"scale","workers":3}"#);
    assert_eq!(answer["workers"], 3, "{answer}");
    settle(&mut pool, "three ready", |p| all_ready(p, 3));
    let (answer, seen) = control(&mut pool, &name, r#"{"cmd":"scale","workers":1}"#);
    assert_eq!(answer["workers"], 1, "{answer}");
    let exited = |e: &PoolEvent| {
        matches!(
            e,
            PoolEvent::Exited {
                restart_in: None,
                ..
            }
        )
    };
    let mut exits = seen.iter().filter(|e| exited(e)).count();
    if exits < 2 {
        until(&mut pool, "two drained", |e| {
            exits += usize::from(exited(e));
            exits == 2
        });
    }
    assert!(all_ready(&pool, 1));
    assert!(ask(addr).ends_with(" hi"));

    // Refused: garbage. (Upgrades are tested with the example servers, in
    // `tests/wine_servers.rs`: this test program is no supervisor to upgrade to.)
    let (answer, _) = control(&mut pool, &name, "status");
    assert_eq!(answer["ok"], false, "{answer}");

    // A stop through the pipe.
    let (answer, mut seen) = control(&mut pool, &name, r#"{"cmd":"stop"}"#);
    assert_eq!(answer["ok"], true);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen.iter().any(|e| matches!(e, PoolEvent::Stopped)) {
        assert!(Instant::now() < deadline, "no stop: {seen:?}");
        pool.poll(&mut seen, Some(Duration::from_millis(20)))
            .unwrap();
    }

    // A dropped pool gives the name up: its pipe's thread ends.
    drop(pool);
    let mut again = Pool::new(config(1, "echo"), Vec::new()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = again.listen_control(&name) {
        assert!(Instant::now() < deadline, "the name stays taken: {e}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_worker_that_stops_reporting_is_terminated_and_replaced() {
    let mut c = config(1, "hang");
    c.heartbeat_timeout = Some(Duration::from_secs(1));
    let mut pool = Pool::new(c, Vec::new()).unwrap();
    let mut events = Vec::new();
    pool.start(&mut events);
    settle(&mut pool, "ready", |p| all_ready(p, 1));
    let first = pool.workers()[0].pid.unwrap();
    // What it published reached the pool: the lock waits it counted show.
    settle(&mut pool, "the report", |p| p.workers()[0].lock_waits == 3);
    let seen = until(&mut pool, "the hang noticed", |e| {
        matches!(e, PoolEvent::Hung { .. })
    });
    let silent = seen
        .iter()
        .find_map(|e| match e {
            PoolEvent::Hung {
                slot: 0,
                pid,
                silent,
            } if *pid == first => Some(*silent),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{seen:?}"));
    assert!(silent > Duration::from_secs(1), "{silent:?}");
    settle(&mut pool, "the replacement", |p| {
        let w = &p.workers()[0];
        w.pid != Some(first) && w.state == herder_pool::State::Ready
    });
    assert_eq!(pool.workers()[0].restarts, 1);
}

#[test]
fn a_workers_last_messages_come_before_its_exit() {
    let mut c = config(1, "last-words");
    // Restarted at once every time: stop at the first exit.
    c.restart_intensity = 1000;
    let mut pool = Pool::new(c, Vec::new()).unwrap();
    let mut events = Vec::new();
    pool.start(&mut events);
    let seen = until(&mut pool, "the exit", |e| {
        matches!(e, PoolEvent::Exited { .. })
    });
    let words: Vec<String> = seen
        .iter()
        .filter_map(|e| match e {
            PoolEvent::Message { message, .. } => {
                Some(String::from_utf8_lossy(message.payload()).into_owned())
            }
            _ => None,
        })
        .collect();
    let expected: Vec<String> = (0..500).map(|i| format!("word {i}")).collect();
    assert_eq!(words, expected, "{seen:?}");
    let code = seen.iter().find_map(|e| match e {
        PoolEvent::Exited { status, .. } => status.code(),
        _ => None,
    });
    assert_eq!(code, Some(3));
    // Stopped at once if no worker was running (its replacement not started yet).
    let mut events = Vec::new();
    pool.stop(&mut events);
    if !events.iter().any(|e| matches!(e, PoolEvent::Stopped)) {
        until(&mut pool, "the stop", |e| matches!(e, PoolEvent::Stopped));
    }
    assert!(pool.is_stopped());
}

#[test]
fn a_worker_past_its_connection_limit_is_recycled() {
    let mut c = config(1, "load");
    c.env.push((ACCEPTED.into(), "100".into()));
    c.max_connections = Some(10);
    let mut pool = Pool::new(c, Vec::new()).unwrap();
    let mut events = Vec::new();
    pool.start(&mut events);
    settle(&mut pool, "ready", |p| all_ready(p, 1));
    let first = pool.workers()[0].pid.unwrap();
    let seen = until(
        &mut pool,
        "the recycling",
        |e| matches!(e, PoolEvent::Recycling { slot: 0, pid } if *pid == first),
    );
    assert!(
        !seen.iter().any(|e| matches!(e, PoolEvent::Exited { .. })),
        "{seen:?}"
    );
    // Its successor takes the slot once ready; then it drains and exits, and is not
    // replaced (its exit concerns no slot).
    let seen = until(
        &mut pool,
        "the old worker's exit",
        |e| matches!(e, PoolEvent::Exited { pid, .. } if *pid == first),
    );
    let exit = seen.iter().find_map(|e| match e {
        PoolEvent::Exited {
            pid, restart_in, ..
        } if *pid == first => Some(*restart_in),
        _ => None,
    });
    assert_eq!(exit, Some(None), "{seen:?}");
    let w = &pool.workers()[0];
    assert_ne!(w.pid, Some(first));
    assert_eq!(w.restarts, 0, "a recycle is no restart");
}

#[test]
fn busy_workers_are_joined_by_more_up_to_the_maximum() {
    let mut c = config(1, "load");
    c.env.push((ACTIVE.into(), "10".into()));
    c.autoscale = Some(herder_pool::Autoscale::new(1, 3, 5));
    let mut pool = Pool::new(c, Vec::new()).unwrap();
    let mut events = Vec::new();
    pool.start(&mut events);
    // 1, then 2 (one added), then 3 (two would be, the maximum caps it).
    settle(&mut pool, "three ready workers", |p| all_ready(p, 3));
    let mut events = Vec::new();
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        pool.poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
    }
    assert_eq!(pool.len(), 3, "no more than the maximum: {events:?}");
    pool.stop(&mut events);
    settle(&mut pool, "the stop", Pool::is_stopped);
}
