//! The hand-off model through the public API: a `Dispatcher` in the supervisor's
//! loop, workers on `WorkerLink`. Connections spread over the workers and are
//! acknowledged; a worker killed with connections it never acknowledged loses none
//! of them (each is served once, by another); over the per-worker limit new
//! connections are shed and counted; a recycled worker moves its open connections
//! to its successor. On Linux and on Windows (under Wine in CI).
#![cfg(any(target_os = "linux", windows))]

mod util;

use herder_pool::{Choice, Dispatcher, Pool};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn worker_entry() {
    util::worker_main();
}

/// A pool of `n` workers with `behaviour`, a dispatcher on a fresh listener, every
/// worker ready.
fn start(n: usize, behaviour: &str, choice: Choice) -> (Pool, Dispatcher, SocketAddr) {
    start_with(util::config(n, behaviour), choice)
}

/// As [`start`], with a config of the caller's.
fn start_with(config: herder_pool::Config, choice: Choice) -> (Pool, Dispatcher, SocketAddr) {
    let n = config.workers;
    let mut pool = Pool::new(config, Vec::new()).unwrap();
    let mut dispatcher = Dispatcher::new(choice);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    dispatcher.add_listener(&mut pool, listener).unwrap();
    let mut events = Vec::new();
    pool.start(&mut events);
    let deadline = Instant::now() + Duration::from_secs(30);
    while pool
        .workers()
        .iter()
        .filter(|w| w.state == herder_pool::State::Ready)
        .count()
        < n
    {
        assert!(
            Instant::now() < deadline,
            "workers not ready: {:?}",
            pool.workers()
        );
        for e in events.drain(..) {
            dispatcher.handle(&mut pool, &e);
        }
        pool.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
    }
    for e in events.drain(..) {
        dispatcher.handle(&mut pool, &e);
    }
    (pool, dispatcher, addr)
}

/// Runs the pool and the dispatcher until `done` says so (30 s at most).
fn drive(
    pool: &mut Pool,
    d: &mut Dispatcher,
    mut done: impl FnMut(&mut Pool, &Dispatcher) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut events = Vec::new();
    while !done(pool, d) {
        assert!(Instant::now() < deadline, "timed out: {:?}", d.stats());
        pool.poll(&mut events, Some(Duration::from_millis(20)))
            .unwrap();
        for e in events.drain(..) {
            d.handle(pool, &e);
        }
    }
}

/// A client that sends `msg`, then reads the whole answer once the server closes
/// (after the client's own end of file).
fn client(
    addr: SocketAddr,
    msg: String,
    hold: mpsc::Receiver<()>,
) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        // A shed connection may be gone by now: then nothing comes back.
        let _ = c.write_all(msg.as_bytes());
        let _ = hold.recv();
        let _ = c.shutdown(Shutdown::Write);
        let mut back = String::new();
        let _ = c.read_to_string(&mut back);
        back
    })
}

#[test]
fn connections_spread_over_the_workers_and_are_acknowledged() {
    let (mut pool, mut d, addr) = start(2, "link-echo", Choice::LeastLoaded);
    let (tx, rx): (Vec<_>, Vec<_>) = (0..10).map(|_| mpsc::channel::<()>()).unzip();
    let clients: Vec<_> = rx
        .into_iter()
        .enumerate()
        .map(|(i, hold)| client(addr, format!("hello {i}"), hold))
        .collect();
    // All ten held open at once: least-loaded spreads them.
    drive(&mut pool, &mut d, |pool, d| {
        let active: u64 = (0..2).filter_map(|s| pool.load(s)).map(|l| l.active).sum();
        d.stats().handed_off == 10 && d.stats().unacknowledged == 0 && active == 10
    });
    let per_worker: Vec<u64> = (0..2).map(|s| pool.load(s).unwrap().active).collect();
    // The clients arrive over time and the load a worker publishes lags a little:
    // even, give or take one each way.
    assert!(
        per_worker.iter().all(|&n| (4..=6).contains(&n)),
        "{per_worker:?}"
    );
    drop(tx);
    for (i, c) in clients.into_iter().enumerate() {
        let handle = std::thread::spawn(move || c.join().unwrap());
        drive(&mut pool, &mut d, |_, _| handle.is_finished());
        assert_eq!(handle.join().unwrap(), format!("hello {i}"));
    }
}

#[test]
fn a_worker_killed_before_it_acknowledged_loses_no_connection() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("stall");
    std::fs::write(&flag, b"").unwrap();
    let behaviour = format!("link-echo-stall-slot0-while-{}", flag.display());
    let (mut pool, mut d, addr) = start(2, &behaviour, Choice::RoundRobin);
    let clients: Vec<_> = (0..10)
        .map(|i| {
            let (tx, rx) = mpsc::channel();
            drop(tx);
            client(addr, format!("ping {i}"), rx)
        })
        .collect();
    // Round-robin: half went to slot 0, which holds them unacknowledged.
    drive(&mut pool, &mut d, |_, d| {
        d.stats().handed_off == 10 && d.stats().unacknowledged == 5
    });
    std::fs::remove_file(&flag).unwrap();
    util::kill_worker(&mut pool, 0);
    for (i, c) in clients.into_iter().enumerate() {
        let handle = std::thread::spawn(move || c.join().unwrap());
        drive(&mut pool, &mut d, |_, _| handle.is_finished());
        // Served once: exactly its bytes, not twice, not none.
        assert_eq!(handle.join().unwrap(), format!("ping {i}"));
    }
    assert_eq!(d.stats().handed_off, 15, "the five handed again, once each");
}

#[test]
fn over_the_limit_new_connections_are_shed_and_counted() {
    let (mut pool, mut d, addr) = start(1, "link-echo", Choice::LeastLoaded);
    d.set_max_connections(Some(1));
    let (tx, rx) = mpsc::channel();
    let first = client(addr, "first".into(), rx);
    drive(&mut pool, &mut d, |pool, _| {
        pool.load(0).is_some_and(|l| l.active == 1)
    });
    let (tx2, rx2) = mpsc::channel();
    drop(tx2);
    let second = client(addr, "second".into(), rx2);
    drive(&mut pool, &mut d, |_, d| d.stats().shed == 1);
    let handle = std::thread::spawn(move || second.join().unwrap());
    drive(&mut pool, &mut d, |_, _| handle.is_finished());
    assert_eq!(
        handle.join().unwrap(),
        "",
        "a shed connection is closed unanswered"
    );
    drop(tx);
    let handle = std::thread::spawn(move || first.join().unwrap());
    drive(&mut pool, &mut d, |_, _| handle.is_finished());
    assert_eq!(handle.join().unwrap(), "first");
}

/// A client that makes one echo exchange each time `steps` says so (counting it in
/// `done`), and ends its connection when `steps` closes; the exchanges made, or the
/// first failure.
fn stepping_client(
    addr: SocketAddr,
    i: usize,
    steps: mpsc::Receiver<()>,
    done: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<Result<usize, String>> {
    std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut n = 0;
        while steps.recv().is_ok() {
            let msg = format!("{i}:{n};");
            c.write_all(msg.as_bytes())
                .map_err(|e| format!("client {i} step {n}: {e}"))?;
            let mut back = vec![0u8; msg.len()];
            c.read_exact(&mut back)
                .map_err(|e| format!("client {i} step {n}: {e}"))?;
            if back != msg.as_bytes() {
                return Err(format!("client {i} step {n}: {back:?}"));
            }
            n += 1;
            done.fetch_add(1, Ordering::SeqCst);
        }
        c.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest)
            .map_err(|e| format!("client {i} closing: {e}"))?;
        Ok(n)
    })
}

/// `n` stepping clients: what drives them, their threads, and their count of
/// exchanges made.
type Clients = (
    Vec<mpsc::Sender<()>>,
    Vec<std::thread::JoinHandle<Result<usize, String>>>,
    Arc<AtomicUsize>,
);

fn stepping_clients(addr: SocketAddr, n: usize) -> Clients {
    let done = Arc::new(AtomicUsize::new(0));
    let (steps, clients) = (0..n)
        .map(|i| {
            let (tx, rx) = mpsc::channel();
            (tx, stepping_client(addr, i, rx, done.clone()))
        })
        .unzip();
    (steps, clients, done)
}

/// Lets every client make one exchange, serving until all did.
fn step_all(pool: &mut Pool, d: &mut Dispatcher, steps: &[mpsc::Sender<()>], done: &AtomicUsize) {
    let target = done.load(Ordering::SeqCst) + steps.len();
    for s in steps {
        s.send(()).unwrap();
    }
    drive(pool, d, |_, _| done.load(Ordering::SeqCst) == target);
}

#[cfg(unix)]
#[test]
fn a_reload_whose_new_worker_dies_before_it_acknowledged_keeps_each_connection_with_its_old_worker()
{
    const CLIENTS: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("stall");
    let behaviour = format!("link-echo-stall-slot0-while-{}", flag.display());
    let (mut pool, mut d, addr) = start(2, &behaviour, Choice::LeastLoaded);
    let old: Vec<u32> = pool.pids();
    let (steps, clients, done) = stepping_clients(addr, CLIENTS);
    step_all(&mut pool, &mut d, &steps, &done);

    // The new generation's slot 0 is ready but never reads what it is handed.
    std::fs::write(&flag, b"").unwrap();
    let mut events = Vec::new();
    pool.reload(&mut events);
    for e in events.drain(..) {
        d.handle(&mut pool, &e);
    }
    drive(&mut pool, &mut d, |pool, _| {
        let m = pool.move_stats();
        m.in_flight > 0 && m.moved + m.in_flight as u64 == CLIENTS as u64
    });
    std::fs::remove_file(&flag).unwrap();
    pool.signal(0, libc::SIGKILL).unwrap();
    drive(&mut pool, &mut d, |pool, _| {
        pool.move_stats().in_flight == 0
    });
    // Each settled once: owned by the healthy new worker, or kept by its old one.
    let m = pool.move_stats();
    assert!(m.kept > 0 && m.moved + m.kept == CLIENTS as u64, "{m:?}");

    // Every connection is served, once: the stranded ones by their old worker.
    step_all(&mut pool, &mut d, &steps, &done);
    step_all(&mut pool, &mut d, &steps, &done);
    assert!(
        old.iter().any(|p| pool.pids().contains(p)),
        "an old worker finishes what stayed with it"
    );
    drop(steps);
    for c in clients {
        let handle = std::thread::spawn(move || c.join().unwrap());
        drive(&mut pool, &mut d, |_, _| handle.is_finished());
        assert_eq!(handle.join().unwrap(), Ok(3));
    }
    // Nothing holds the old generation any more.
    drive(&mut pool, &mut d, |pool, _| {
        old.iter().all(|p| !pool.pids().contains(p))
    });
}

#[test]
fn a_recycled_worker_moves_its_open_connections_to_its_successor() {
    const CLIENTS: usize = 3;
    let mut config = util::config(1, "link-echo");
    config.max_connections = Some(CLIENTS as u64);
    let (mut pool, mut d, addr) = start_with(config, Choice::LeastLoaded);
    let first = pool.pids();
    let (steps, clients, done) = stepping_clients(addr, CLIENTS);
    step_all(&mut pool, &mut d, &steps, &done);
    // Past its limit: a successor starts, and the worker retires once it is ready —
    // at once, its connections still open, as they move to the successor.
    drive(&mut pool, &mut d, |pool, _| {
        pool.move_stats().moved == CLIENTS as u64 && !pool.pids().contains(&first[0])
    });
    step_all(&mut pool, &mut d, &steps, &done);
    assert_eq!(pool.load(0).map(|l| l.active), Some(CLIENTS as u64));
    assert_eq!(pool.move_stats().kept, 0);
    drop(steps);
    for c in clients {
        let handle = std::thread::spawn(move || c.join().unwrap());
        drive(&mut pool, &mut d, |_, _| handle.is_finished());
        assert_eq!(handle.join().unwrap(), Ok(2));
    }
    // The successor took them as moved, not as new: it is not due again.
    assert_eq!(pool.load(0).map(|l| l.accepted), Some(0));
}
