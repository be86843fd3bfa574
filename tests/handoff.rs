//! The hand-off server as a real process: echo is byte-exact under both dispatch
//! modes, HTTP works, deferred accept serves clients however late they speak, a killed worker is replaced while new connections keep being
//! served, and SIGTERM stops it with exit 0.
#![cfg(target_os = "linux")]

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const SERVER: &str = "handoff_server";

#[test]
fn echo_under_both_dispatch_modes() {
    for dispatch in ["least-loaded", "round-robin"] {
        let server = util::start(SERVER, &["--workers", "2", "--dispatch", dispatch]);
        let addr = server.addr;
        let clients: Vec<_> = (0..100)
            .map(|i| {
                std::thread::spawn(move || {
                    let data: Vec<u8> = (0..(i * 997) % 65_536 + 1)
                        .map(|j| (i * 31 + j) as u8)
                        .collect();
                    assert!(util::echo(addr, &data) == data, "client {i}");
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        server.signal(libc::SIGTERM);
        assert_eq!(
            server.wait(Duration::from_secs(30)).code(),
            Some(0),
            "{dispatch}"
        );
    }
}

#[test]
fn http_is_served() {
    let server = util::start(SERVER, &["--workers", "2", "--protocol", "http"]);
    let mut c = TcpStream::connect(server.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    assert_eq!(out.matches("Hello, world!").count(), 2, "{out}");
    server.stop(SERVER);
}

#[test]
fn with_deferred_accept_clients_are_served_whether_they_speak_at_once_or_later() {
    // That the listener defers is herder-pool's tests/listeners.rs; this one checks
    // that the server, so configured, loses no client.
    let util::Controlled {
        server,
        ctl,
        dir: _dir,
    } = util::start_controlled(SERVER, &["--workers", "2", "--defer-accept"]);
    let addr = server.addr;
    // A client that waits before it speaks is accepted late, not lost.
    let mut late = TcpStream::connect(addr).unwrap();
    late.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let clients: Vec<_> = (0..50)
        .map(|i| {
            std::thread::spawn(move || {
                let data: Vec<u8> = (0..(i * 1999) % 100_000 + 1)
                    .map(|j| (i + j) as u8)
                    .collect();
                assert!(util::echo(addr, &data) == data, "client {i}");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    // The kernel stops holding the silent one back (after about a second) and a
    // worker takes it in before it has said anything.
    let start = std::time::Instant::now();
    while util::counts(&util::status(&ctl), "accepted")
        .iter()
        .sum::<u64>()
        < 51
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the silent connection was never handed over"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    late.write_all(b"at last").unwrap();
    let mut got = [0; 7];
    late.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"at last");
    drop(late);
    server.stop(SERVER);
}

#[test]
fn a_killed_worker_is_replaced_and_new_connections_never_fail() {
    let util::Controlled {
        server,
        ctl,
        dir: _dir,
    } = util::start_controlled(SERVER, &["--workers", "2"]);
    let before = util::status(&ctl);
    let victim = before["workers"][0]["pid"].as_u64().unwrap() as i32;
    // SAFETY: a worker of the server this test started.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    // Connections right after the kill are all served (by the other worker, then
    // by both).
    for i in 0..200 {
        let msg = format!("connection {i}");
        assert_eq!(util::echo(server.addr, msg.as_bytes()), msg.as_bytes());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = util::status(&ctl);
        let w = &now["workers"][0];
        if w["state"] == "ready" && w["pid"].as_u64() != Some(victim as u64) {
            assert_eq!(w["restarts"], 1);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no replacement: {now}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.stop(SERVER);
}

#[test]
fn status_accounts_for_every_connection_and_both_workers_serve() {
    let util::Controlled {
        server,
        ctl,
        dir: _dir,
    } = util::start_controlled(SERVER, &["--workers", "2"]);
    for i in 0..100 {
        let msg = format!("sequential {i}");
        assert_eq!(util::echo(server.addr, msg.as_bytes()), msg.as_bytes());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let per_worker = loop {
        let s = util::status(&ctl);
        let counts = util::counts(&s, "accepted");
        if counts.iter().sum::<u64>() == 100 {
            break counts;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status never accounted for 100: {s}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        per_worker.iter().all(|&c| c >= 40),
        "one worker took nearly everything: {per_worker:?}"
    );
    server.stop(SERVER);
}

/// With few descriptors, the supervisor runs out while 200 clients connect at once:
/// it neither spins nor dies, and every client is served once descriptors free up.
#[test]
fn out_of_descriptors_the_supervisor_waits_and_recovers() {
    let started = std::time::Instant::now();
    let server = util::start_limited(SERVER, &["--workers", "2", "--protocol", "http"], Some(48));
    let addr = server.addr;
    let cpu_before = util::cpu_time(server.child.id());
    let clients: Vec<_> = (0..200)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(addr).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                c.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                    .unwrap();
                let mut out = String::new();
                c.read_to_string(&mut out).unwrap();
                out.ends_with("Hello, world!")
            })
        })
        .collect();
    let served = clients
        .into_iter()
        .map(|c| c.join().unwrap())
        .filter(|ok| *ok)
        .count();
    assert_eq!(served, 200, "every client is served in the end");
    let cpu = util::cpu_time(server.child.id()) - cpu_before;
    // A supervisor spinning on EMFILE would burn a core for the whole run.
    assert!(
        cpu < Duration::from_secs(5),
        "the supervisor used {cpu:?} of CPU"
    );
    // Logged, but at most a line a second.
    let said = server.logged("out of descriptors").len() as u64;
    let secs = started.elapsed().as_secs() + 1;
    assert!(
        said <= secs,
        "{said} log lines about running out of descriptors in {secs} s"
    );
    server.stop(SERVER);
}

/// The tokio example: workers serve the handed-off connections with hyper on a tokio
/// runtime; both serve, a killed one is replaced, and a graceful stop exits 0.
#[test]
fn tokio_workers_serve_with_hyper() {
    let util::Controlled {
        server,
        ctl,
        dir: _dir,
    } = util::start_controlled("tokio_handoff", &["--workers", "2"]);
    let mut by = std::collections::HashMap::new();
    for _ in 0..40 {
        let answer = util::get(server.addr);
        let pid = answer
            .trim_end()
            .rsplit_once("Hello from worker ")
            .unwrap_or_else(|| panic!("{answer:?}"))
            .1
            .to_string();
        *by.entry(pid).or_insert(0) += 1;
    }
    assert_eq!(by.len(), 2, "both workers serve: {by:?}");
    // A worker killed is replaced, and connections keep being served.
    let status = util::status(&ctl);
    let victim = status["workers"][0]["pid"].as_u64().unwrap();
    // SAFETY: kills a worker of the server this test started.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = util::status(&ctl);
        let ready: Vec<u64> = s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["state"] == "ready")
            .filter_map(|w| w["pid"].as_u64())
            .collect();
        if ready.len() == 2 && !ready.contains(&victim) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no replacement: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..20 {
        assert!(util::get(server.addr).contains("Hello from worker "));
    }
    server.stop("tokio_handoff");
}
