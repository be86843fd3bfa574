//! Both servers through a rolling restart under load (no failed connection, every
//! worker new) and a graceful stop with a request in flight (answered, then exit 0).
#![cfg(target_os = "linux")]

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn pids(s: &serde_json::Value) -> Vec<u64> {
    s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["pid"].as_u64())
        .collect()
}

/// One HTTP request on a new connection; whether the full answer came back.
fn request(addr: SocketAddr) -> bool {
    let Ok(mut c) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
    if c.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    c.read_to_string(&mut out).is_ok() && out.ends_with("Hello, world!")
}

#[test]
fn a_rolling_restart_under_load_fails_no_connection() {
    for name in util::SERVERS {
        let util::Controlled {
            server,
            ctl,
            dir: _dir,
        } = util::start_controlled(name, &["--workers", "2", "--protocol", "http"]);
        let before = pids(&util::status(&ctl));
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let clients: Vec<_> = (0..4)
            .map(|_| {
                let (stop, ok, failed, addr) =
                    (stop.clone(), ok.clone(), failed.clone(), server.addr);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        if request(addr) { &ok } else { &failed }.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        while ok.load(Ordering::SeqCst) < 50 {
            std::thread::sleep(Duration::from_millis(5));
        }
        server.signal(libc::SIGHUP);
        // Wait until every worker is new and ready, under load all along.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = util::status(&ctl);
            let now = pids(&s);
            let ready = s["workers"].as_array().unwrap().iter().all(|w| {
                w["state"] == "ready" && w["draining"].as_array().is_some_and(Vec::is_empty)
            });
            if ready
                && now.len() == 2
                && now.iter().all(|p| !before.contains(p))
                && s["generation"] == 2
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: the reload did not finish: {s}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let served_after = ok.load(Ordering::SeqCst) + 50;
        while ok.load(Ordering::SeqCst) < served_after {
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::SeqCst);
        for c in clients {
            c.join().unwrap();
        }
        assert_eq!(
            failed.load(Ordering::SeqCst),
            0,
            "{name}: failed connections during the reload (of {})",
            ok.load(Ordering::SeqCst)
        );
        server.stop(name);
    }
}

#[test]
fn a_graceful_stop_answers_the_request_in_flight() {
    for name in util::SERVERS {
        let util::Controlled {
            server,
            ctl,
            dir: _dir,
        } = util::start_controlled(name, &["--workers", "2", "--protocol", "http"]);
        let mut c = TcpStream::connect(server.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        // Half a request; a full one on another connection, so that the first has
        // surely reached a worker (connections are taken in order).
        c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap();
        assert!(request(server.addr));
        server.signal(libc::SIGTERM);
        // Once the stop has begun, the rest of the request.
        let deadline = Instant::now() + Duration::from_secs(30);
        while util::status(&ctl)["stopping"] != true {
            assert!(Instant::now() < deadline, "{name}: the stop did not begin");
            std::thread::sleep(Duration::from_millis(5));
        }
        c.write_all(b"\r\n").unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 200 OK") && out.ends_with("Hello, world!"),
            "{name}: {out:?}"
        );
        assert_eq!(
            server.wait(Duration::from_secs(30)).code(),
            Some(0),
            "{name}"
        );
    }
}
