//! Both servers: a worker killed with SIGKILL takes only its own connections with it —
//! new connections keep succeeding, and its replacement shows up in `status`; a slow
//! client does not hold up the others; a real HTTP client (curl) is answered; 1 000
//! concurrent echo clients get their bytes back.
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
        let server = util::start(name, &["--workers", "1", "--protocol", "http"]);
        // A client that sends its headers a byte at a time, and never finishes.
        let mut slow = TcpStream::connect(server.addr).unwrap();
        for b in b"GET / HTTP/1.1\r\nHost: slow" {
            slow.write_all(&[*b]).unwrap();
        }
        // With one worker, everyone else shares its loop with the slow client.
        for _ in 0..20 {
            assert!(util::get(server.addr).ends_with("Hello, world!"), "{name}");
        }
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
