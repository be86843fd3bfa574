//! The shared-listener server as a real process: echo is byte-exact under every accept
//! strategy (with deferred accept too), HTTP answers keep-alive and close requests and refuses bad ones, and
//! SIGTERM stops it with exit 0.
#![cfg(target_os = "linux")]

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

const SERVER: &str = "shared_listener_server";

/// 100 concurrent clients, each a random payload, each echoed back exactly.
fn echo_clients(addr: SocketAddr) {
    let handles: Vec<_> = (0..100)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(addr).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let data = util::payload(i as u64, 65_536);
                let mut w = c.try_clone().unwrap();
                let send = data.clone();
                let writer = std::thread::spawn(move || {
                    w.write_all(&send).unwrap();
                    w.shutdown(Shutdown::Write).unwrap();
                });
                let mut back = Vec::new();
                c.read_to_end(&mut back).unwrap();
                writer.join().unwrap();
                assert!(
                    back == data,
                    "client {i}: {} bytes back of {}",
                    back.len(),
                    data.len()
                );
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn echo_is_byte_exact_under_every_accept_strategy() {
    for strategy in [
        "reuseport",
        "exclusive",
        "flock",
        "fcntl",
        "pthread",
        "none",
    ] {
        let server = util::start(
            SERVER,
            &["--workers", "2", "--protocol", "echo", "--accept", strategy],
        );
        echo_clients(server.addr);
        server.signal(libc::SIGTERM);
        let status = server.wait(Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "{strategy}: {status}");
    }
}

#[test]
fn deferred_accept_serves_under_the_default_and_the_reuseport_strategies() {
    // That the listener defers is herder-pool's tests/listeners.rs; this one checks
    // that the server, so configured, serves every client.
    for strategy in ["exclusive", "reuseport"] {
        let server = util::start(
            SERVER,
            &["--workers", "2", "--accept", strategy, "--defer-accept"],
        );
        echo_clients(server.addr);
        server.stop(strategy);
    }
}

#[test]
fn http_keep_alive_close_and_refusals() {
    let server = util::start(SERVER, &["--workers", "2", "--protocol", "http"]);
    let out = util::http(
        server.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
    assert!(out.ends_with("Hello, world!"));
    let out = util::http(server.addr, b"BREW /pot HTCPCP/1.0\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'x', 16 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let out = util::http(server.addr, &big);
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    server.stop(SERVER);
}

/// Under load, each strategy in turn loses a worker to SIGKILL — with a lock, most
/// likely while it holds it — and new connections keep being served; the status then
/// accounts for every connection.
#[test]
fn every_strategy_survives_a_killed_worker_under_load() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    for strategy in [
        "flock",
        "fcntl",
        "pthread",
        "exclusive",
        "reuseport",
        "none",
    ] {
        let util::Controlled {
            server,
            ctl,
            dir: _dir,
        } = util::start_controlled(
            SERVER,
            &["--workers", "3", "--protocol", "http", "--accept", strategy],
        );
        let addr = server.addr;
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let load: Vec<_> = (0..3)
            .map(|_| {
                let (stop, served) = (stop.clone(), served.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        // A connection the killed worker had may fail; that is its own.
                        if let Ok(out) = std::panic::catch_unwind(|| {
                            util::http(addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                        }) {
                            if out.ends_with("Hello, world!") {
                                served.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                })
            })
            .collect();
        while served.load(Ordering::SeqCst) < 30 {
            std::thread::sleep(Duration::from_millis(2));
        }
        let victim = util::status(&ctl)["workers"][0]["pid"].as_u64().unwrap();
        // SAFETY: a worker of the server this test started.
        unsafe { libc::kill(victim as i32, libc::SIGKILL) };
        // New connections from now on are all served.
        for _ in 0..30 {
            let out = util::http(addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
            assert!(out.ends_with("Hello, world!"), "{strategy}: {out:?}");
        }
        stop.store(true, Ordering::SeqCst);
        for t in load {
            t.join().unwrap();
        }
        server.signal(libc::SIGTERM);
        assert_eq!(
            server.wait(Duration::from_secs(30)).code(),
            Some(0),
            "{strategy}"
        );
    }
}

#[test]
fn status_accounts_for_every_connection() {
    let util::Controlled {
        server,
        ctl,
        dir: _dir,
    } = util::start_controlled(SERVER, &["--workers", "2", "--protocol", "http"]);
    for _ in 0..60 {
        assert!(
            util::http(server.addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .ends_with("Hello, world!")
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = util::status(&ctl);
        let total: u64 = util::counts(&s, "accepted").iter().sum();
        if total == 60 {
            break;
        }
        assert!(
            total < 60 && std::time::Instant::now() < deadline,
            "accounted {total} of 60: {s}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.stop(SERVER);
}

/// Long-lived connections opened in one burst are spread over the workers under
/// every strategy with a shared queue: a worker holding more than its least-loaded
/// peer leaves new connections to the others, instead of the lock's repeated winner
/// or `EPOLLEXCLUSIVE`'s favourite taking them all.
#[test]
fn long_lived_connections_are_balanced_over_the_workers() {
    const CONNS: usize = 40;
    for strategy in ["exclusive", "flock", "fcntl", "pthread", "none"] {
        let util::Controlled {
            server,
            ctl,
            dir: _dir,
        } = util::start_controlled(
            SERVER,
            &["--workers", "2", "--protocol", "echo", "--accept", strategy],
        );
        let addr = server.addr;
        // All connect at once (as a load generator does), then each makes one round
        // trip and stays open.
        let start = std::sync::Arc::new(std::sync::Barrier::new(CONNS));
        let conns: Vec<TcpStream> = (0..CONNS)
            .map(|_| {
                let start = start.clone();
                std::thread::spawn(move || {
                    start.wait();
                    let mut c = TcpStream::connect(addr).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    c.write_all(b"x").unwrap();
                    let mut b = [0u8; 1];
                    c.read_exact(&mut b).unwrap();
                    c
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let active = loop {
            let s = util::status(&ctl);
            let active = util::counts(&s, "active");
            if active.iter().sum::<u64>() == CONNS as u64 {
                break active;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{strategy}: status never showed {CONNS} open connections: {s}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // Without balancing one worker typically holds nearly all of them.
        assert!(
            active.iter().all(|&n| n as usize >= CONNS / 3),
            "{strategy}: open connections per worker {active:?}"
        );
        drop(conns);
        server.stop(strategy);
    }
}
