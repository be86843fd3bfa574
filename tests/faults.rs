//! Both servers: a worker killed with SIGKILL takes only its own connections with it —
//! new connections keep succeeding, and its replacement shows up in `status`; a slow
//! client does not hold up the others; a real HTTP client (curl) is answered; 1 000
//! concurrent echo clients get their bytes back; workers out of descriptors neither
//! spin nor lose a client; the per-worker connection limit holds.
#![cfg(target_os = "linux")]

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

#[test]
fn a_killed_worker_takes_only_its_own_connections() {
    for name in util::SERVERS {
        let util::Controlled {
            server,
            ctl,
            dir: _dir,
        } = util::start_controlled(name, &["--workers", "2", "--protocol", "http"]);
        // Open connections spread over both workers.
        let open: Vec<TcpStream> = (0..8)
            .map(|_| {
                let mut c = TcpStream::connect(server.addr).unwrap();
                c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
                c
            })
            .collect();
        let before = util::status(&ctl);
        let victim = before["workers"][0]["pid"].as_u64().unwrap();
        // SAFETY: a worker of the server this test started.
        unsafe { libc::kill(victim as i32, libc::SIGKILL) };
        // Every new connection from now on is served.
        for _ in 0..50 {
            assert!(util::get(server.addr).ends_with("Hello, world!"), "{name}");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = util::status(&ctl);
            let w = &s["workers"][0];
            if w["state"] == "ready" && w["pid"].as_u64() != Some(victim) {
                assert_eq!(w["restarts"], 1, "{name}");
                break;
            }
            assert!(Instant::now() < deadline, "{name}: no replacement: {s}");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Of the open connections, those of the other worker still work.
        let mut alive = 0;
        for mut c in open {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = [0u8; 512];
            if matches!(c.read(&mut buf), Ok(n) if n > 0) {
                alive += 1;
            }
        }
        assert!(
            alive > 0,
            "{name}: every open connection died with one worker"
        );
        server.stop(name);
    }
}

#[test]
fn a_slow_client_does_not_hold_up_the_others() {
    for name in util::SERVERS {
        let server = util::start(
            name,
            &[
                "--workers",
                "1",
                "--protocol",
                "http",
                "--request-timeout",
                "1",
            ],
        );
        // A client that sends its headers a byte at a time, and never finishes.
        let mut slow = TcpStream::connect(server.addr).unwrap();
        for b in b"GET / HTTP/1.1\r\nHost: slow" {
            slow.write_all(&[*b]).unwrap();
        }
        // With one worker, everyone else shares its loop with the slow client.
        for _ in 0..20 {
            assert!(util::get(server.addr).ends_with("Hello, world!"), "{name}");
        }
        // Silent since, it is answered at the 1 s request timeout: the idle timeout
        // (60 s) is beyond this read's limit.
        slow.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut out = String::new();
        slow.read_to_string(&mut out)
            .unwrap_or_else(|e| panic!("{name}: the slow client was not answered: {e}"));
        assert!(out.starts_with("HTTP/1.1 408"), "{name}: {out:?}");
        drop(slow);
        server.stop(name);
    }
}

#[test]
fn curl_is_answered() {
    for name in util::SERVERS {
        let server = util::start(name, &["--workers", "2", "--protocol", "http"]);
        let url = format!("http://{}/", server.addr);
        // Two requests on one connection (keep-alive), then one with Connection: close.
        let out = std::process::Command::new("curl")
            .args(["-s", "-m", "20", &url, &url, "-H", "Connection: keep-alive"])
            .output()
            .expect("curl (the CI installs it)");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "Hello, world!Hello, world!",
            "{name}"
        );
        let out = std::process::Command::new("curl")
            .args(["-s", "-m", "20", "-H", "Connection: close", "-D", "-", &url])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("200 OK")
                && text.contains("Connection: close")
                && text.ends_with("Hello, world!"),
            "{name}: {text}"
        );
        server.stop(name);
    }
}

#[test]
fn a_thousand_concurrent_echo_clients() {
    for name in util::SERVERS {
        let server = util::start(name, &["--workers", "2", "--protocol", "echo"]);
        let addr = server.addr;
        // All connected at once, then each sends and reads back its payload.
        let conns: Vec<TcpStream> = (0..1000)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        let handles: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| {
                std::thread::spawn(move || {
                    // Mostly small payloads, every 100th of 1 MiB.
                    let len = if i % 100 == 0 {
                        1 << 20
                    } else {
                        (i * 7919) % 16_384 + 1
                    };
                    let data: Vec<u8> = (0..len).map(|j| (i ^ j) as u8).collect();
                    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                    let mut w = c.try_clone().unwrap();
                    let send = data.clone();
                    let writer = std::thread::spawn(move || {
                        w.write_all(&send).unwrap();
                        w.shutdown(Shutdown::Write).unwrap();
                    });
                    let mut back = Vec::with_capacity(len);
                    c.read_to_end(&mut back).unwrap();
                    writer.join().unwrap();
                    assert!(back == data, "client {i}: {} of {len} bytes", back.len());
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        server.stop(name);
    }
}

/// Workers at their descriptor limit (`RLIMIT_NOFILE` 40, inherited from the
/// supervisor) while more clients arrive than they can hold: the workers pause their
/// listener instead of spinning on `EMFILE`, the waiting clients stay in the backlog,
/// and every one is served once descriptors free up.
#[test]
fn workers_out_of_descriptors_wait_and_recover() {
    const CLIENTS: usize = 80;
    for strategy in ["exclusive", "reuseport", "flock"] {
        let started = Instant::now();
        let server = util::start_limited(
            "shared_listener_server",
            &["--workers", "2", "--protocol", "echo", "--accept", strategy],
            Some(40),
        );
        let addr = server.addr;
        let workers = util::children(server.child.id());
        assert_eq!(workers.len(), 2, "{strategy}: {workers:?}");
        let (served_tx, served_rx) = std::sync::mpsc::channel();
        // Set once the test lets the served clients go.
        let release =
            std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (served_tx, release) = (served_tx.clone(), release.clone());
                std::thread::spawn(move || {
                    let mut c = TcpStream::connect(addr).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                    c.write_all(&[i as u8]).unwrap();
                    let mut b = [0u8; 1];
                    c.read_exact(&mut b).unwrap();
                    assert_eq!(b[0], i as u8);
                    served_tx.send(i).unwrap();
                    // Hold the connection until the test lets go; the clients still
                    // waiting are served as these close.
                    let (lock, cv) = &*release;
                    let mut go = lock.lock().unwrap();
                    while !*go {
                        go = cv.wait(go).unwrap();
                    }
                })
            })
            .collect();
        drop(served_tx);
        // Fill up: wait until no client has been served for a second.
        let mut served = 0;
        while served_rx.recv_timeout(Duration::from_secs(1)).is_ok() {
            served += 1;
        }
        assert!(
            served < CLIENTS,
            "{strategy}: every client was served at once; the limit was not reached"
        );
        // At the limit, for 2 s: a worker spinning on EMFILE would burn a core.
        let cpu = |pids: &[(u32, char)]| -> Duration {
            pids.iter().map(|(p, _)| util::cpu_time(*p)).sum()
        };
        let before = cpu(&workers);
        std::thread::sleep(Duration::from_secs(2));
        let spent = cpu(&workers) - before;
        assert!(
            spent < Duration::from_secs(1),
            "{strategy}: the workers used {spent:?} of CPU while out of descriptors"
        );
        // Let the served clients go: the waiting ones get their turn.
        *release.0.lock().unwrap() = true;
        release.1.notify_all();
        let mut rest = 0;
        while rest < CLIENTS - served {
            served_rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| {
                    panic!(
                        "{strategy}: {rest} of {} waiting clients served",
                        CLIENTS - served
                    )
                });
            rest += 1;
        }
        for c in clients {
            c.join().unwrap();
        }
        // It said so, without flooding the log: at most a line a second per worker.
        let said = server.logged("out of descriptors").len() as u64;
        let secs = started.elapsed().as_secs() + 1;
        println!("{strategy}: {said} lines about running out of descriptors in {secs} s");
        assert!(
            (1..=2 * secs).contains(&said),
            "{strategy}: {said} log lines about running out of descriptors in {secs} s"
        );
        server.stop(strategy);
    }
}

/// One round trip on a new connection; the connection stays open.
fn held(addr: std::net::SocketAddr) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(b"h").unwrap();
    let mut b = [0u8; 1];
    c.read_exact(&mut b).unwrap();
    c
}

/// `--max-connections`: a full shared-listener worker leaves new connections in the
/// backlog until one of its own closes; a hand-off supervisor whose workers are all
/// full sheds new connections (closes them) instead of queueing them.
#[test]
fn the_per_worker_connection_limit_holds() {
    let args = [
        "--workers",
        "1",
        "--protocol",
        "echo",
        "--max-connections",
        "2",
    ];

    let server = util::start("shared_listener_server", &args);
    let first = held(server.addr);
    let second = held(server.addr);
    let mut third = TcpStream::connect(server.addr).unwrap();
    third.write_all(b"3").unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut b = [0u8; 1];
    assert!(
        third.read_exact(&mut b).is_err(),
        "a third connection was served past the limit of 2"
    );
    drop(first);
    third
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    third.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"3", "the waiting connection is served once one closes");
    // Echo streams have no boundary: a stop would serve them to the drain timeout.
    drop((second, third));
    server.stop("shared_listener_server");

    let util::Controlled {
        server,
        ctl,
        dir: _dir,
    } = util::start_controlled("handoff_server", &args);
    let first = held(server.addr);
    let second = held(server.addr);
    // The supervisor dispatches on the load the worker published.
    let deadline = Instant::now() + Duration::from_secs(30);
    while util::status(&ctl)["workers"][0]["active"].as_u64() != Some(2) {
        assert!(
            Instant::now() < deadline,
            "the worker never reported 2 connections"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut shed = TcpStream::connect(server.addr).unwrap();
    shed.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let _ = shed.write_all(b"3");
    let mut rest = Vec::new();
    // Closed by the supervisor: end of stream (or a reset), and no echo.
    let _ = shed.read_to_end(&mut rest);
    assert!(rest.is_empty(), "a shed connection was answered: {rest:?}");
    drop(first);
    // Room again: a new connection is served (the worker may take a moment to
    // publish the close).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = TcpStream::connect(server.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let _ = c.write_all(b"4");
        let mut back = Vec::new();
        let mut b = [0u8; 1];
        if c.read_exact(&mut b).is_ok() {
            back.push(b[0]);
        }
        if back == b"4" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection served after one closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(second);
    server.stop("handoff_server");
}

/// Ten thousand slow clients, each stuck halfway through its request head: the
/// workers hold them in bounded memory, and the request timeout (30 s here: longer
/// than opening them all takes on a busy machine) answers each with `408` and closes
/// it.
#[test]
fn ten_thousand_slow_clients_cost_little_memory_and_time_out() {
    const CLIENTS: usize = 10_000;
    let util::Controlled {
        server,
        ctl,
        dir: _dir,
    } = util::start_controlled(
        "shared_listener_server",
        &[
            "--workers",
            "2",
            "--protocol",
            "http",
            "--request-timeout",
            "30",
        ],
    );
    let workers = util::children(server.child.id());
    let rss = |pids: &[(u32, char)]| -> u64 { pids.iter().map(|(p, _)| util::rss_kib(*p)).sum() };
    let before = rss(&workers);
    // Opened from four threads: all of them must be open well within the request
    // timeout, even on a busy machine.
    let addr = server.addr;
    let openers: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                (0..CLIENTS / 4)
                    .map(|i| {
                        let mut c = TcpStream::connect(addr)
                            .unwrap_or_else(|e| panic!("slow client {t}/{i}: {e}"));
                        c.write_all(b"GET / HTTP/1.1\r\nHost: slow\r\n").unwrap();
                        c
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut clients: Vec<TcpStream> = openers
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let active =
        |ctl: &std::path::Path| -> u64 { util::counts(&util::status(ctl), "active").iter().sum() };
    let deadline = Instant::now() + Duration::from_secs(60);
    while active(&ctl) < CLIENTS as u64 {
        assert!(
            Instant::now() < deadline,
            "only {} of {CLIENTS} slow clients held",
            active(&ctl)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let held = rss(&workers);
    let per_client = (held.saturating_sub(before)) * 1024 / CLIENTS as u64;
    println!(
        "{CLIENTS} slow clients: workers' RSS {before} KiB -> {held} KiB, {per_client} bytes each"
    );
    // A buffer per connection would be 64 KiB each (640 MB); the partial head is all
    // a connection keeps.
    assert!(
        per_client <= 4096,
        "{per_client} bytes of worker memory per slow client"
    );
    // The request timeout answers them and closes them.
    let deadline = Instant::now() + Duration::from_secs(60);
    while active(&ctl) > 0 {
        assert!(
            Instant::now() < deadline,
            "{} slow clients still open",
            active(&ctl)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for c in clients.iter_mut().step_by(997) {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 408"), "a slow client got {out:?}");
    }
    drop(clients);
    server.stop("shared_listener_server");
}

/// A deployment broke the program on disk: every new worker exits before it is
/// ready. The killed workers' slots back off, trip their breakers and wait, using
/// little CPU, and `status` says so; once the program is back, the breakers' half-open
/// tries bring every slot back without an operator.
#[test]
fn a_broken_program_trips_the_breaker_and_the_pool_comes_back_once_it_is_fixed() {
    use std::os::unix::fs::PermissionsExt;
    for name in util::SERVERS {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join(name);
        let good = dir.path().join("good");
        std::fs::copy(util::example(name), &program).unwrap();
        std::fs::hard_link(&program, &good).unwrap();
        let broken = dir.path().join("broken");
        std::fs::write(&broken, "#!/bin/sh\nexit 3\n").unwrap();
        std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
        let ctl = dir.path().join("ctl.sock");
        let mut cmd = util::server_command(&program);
        cmd.args(["--workers", "2", "--control", ctl.to_str().unwrap()]);
        let server = util::start_command(name, cmd);
        let sup = server.child.id();

        // The program on disk breaks; every worker dies (the pool would restart each
        // ready worker at once, but what it restarts now cannot start).
        std::fs::rename(&broken, &program).unwrap();
        for pid in util::pids(&util::status(&ctl)) {
            // SAFETY: a worker of the server this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let tripped = loop {
            let s = util::status(&ctl);
            let workers = s["workers"].as_array().unwrap().clone();
            if workers.iter().all(|w| w["state"] == "tripped") {
                break workers;
            }
            assert!(Instant::now() < deadline, "{name}: never tripped: {s}");
            std::thread::sleep(Duration::from_millis(50));
        };
        for w in &tripped {
            let retry = w["restart_in_ms"].as_u64().unwrap();
            assert!(retry > 0 && retry <= 12_000, "{name}: {w}");
        }
        // Tripped, the supervisor waits rather than spins.
        let cpu = util::cpu_time(sup);
        std::thread::sleep(Duration::from_secs(3));
        let spent = util::cpu_time(sup) - cpu;
        assert!(
            spent < Duration::from_millis(300),
            "{name}: {spent:?} of CPU"
        );

        // Fixed: the half-open tries bring both slots back.
        std::fs::rename(&good, &program).unwrap();
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let s = util::status(&ctl);
            if s["workers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|w| w["state"] == "ready")
            {
                break;
            }
            assert!(Instant::now() < deadline, "{name}: never came back: {s}");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(util::echo(server.addr, b"back"), b"back", "{name}");
        server.stop(name);
    }
}
