//! Linux: a listener registered with `EPOLLEXCLUSIVE` reports connections, refuses
//! modification, and can be paused by deregistering; a plain listener pauses and
//! resumes with `modify`.
#![cfg(any(target_os = "linux", target_os = "android"))]

mod util;

use herder_reactor::os::linux::ReactorExt;
use herder_reactor::{Event, Interest, Mode, Reactor};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

const SHORT: Duration = Duration::from_millis(50);

fn listener() -> TcpListener {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

fn io_count(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::Io { .. }))
        .count()
}

#[test]
fn exclusive_listener_reports_and_refuses_modify() {
    let mut r: Reactor<TcpListener> = Reactor::new().unwrap();
    let l = listener();
    let addr = l.local_addr().unwrap();
    let key = r.register_exclusive(l).unwrap();
    assert_eq!(
        r.modify(key, Interest::NONE, Mode::Level)
            .unwrap_err()
            .kind(),
        std::io::ErrorKind::Unsupported
    );
    let _c = TcpStream::connect(addr).unwrap();
    util::poll_until(
        &mut r,
        Duration::from_secs(10),
        |e| matches!(e, Event::Io { key: k, .. } if *k == key),
    );
    // Paused: deregistered, the pending connection wakes nobody.
    let l = r.deregister(key).unwrap();
    assert_eq!(io_count(&util::poll_once(&mut r, SHORT)), 0);
    // Resumed under a new key, the pending connection is reported again.
    let key = r.register_exclusive(l).unwrap();
    util::poll_until(
        &mut r,
        Duration::from_secs(10),
        |e| matches!(e, Event::Io { key: k, .. } if *k == key),
    );
    let (_conn, _) = r.get(key).unwrap().accept().unwrap();
}

#[test]
fn a_plain_listener_pauses_and_resumes_with_modify() {
    let mut r: Reactor<TcpListener> = Reactor::new().unwrap();
    let l = listener();
    let addr = l.local_addr().unwrap();
    let key = r.register(l, Interest::READABLE, Mode::Level).unwrap();
    let _c = TcpStream::connect(addr).unwrap();
    util::poll_until(&mut r, Duration::from_secs(10), |e| {
        matches!(e, Event::Io { .. })
    });
    r.modify(key, Interest::NONE, Mode::Level).unwrap();
    assert_eq!(io_count(&util::poll_once(&mut r, SHORT)), 0);
    r.modify(key, Interest::READABLE, Mode::Level).unwrap();
    util::poll_until(&mut r, Duration::from_secs(10), |e| {
        matches!(e, Event::Io { .. })
    });
}

#[test]
fn a_server_serves_an_exclusive_listener_across_rearms() {
    use herder_reactor::os::linux::ServerExt;
    use herder_reactor::{Config, Server};
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    let closed = Arc::new(Mutex::new(Vec::new()));
    let c2 = closed.clone();
    let mut server = Server::new(Config::default(), move |_| util::Echo {
        closed: c2.clone(),
    })
    .unwrap();
    let l = listener();
    let addr = l.local_addr().unwrap();
    server
        .add_exclusive_listener(l, Some(Duration::from_millis(5)))
        .unwrap();
    let mut events = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut serve = |server: &mut Server<util::Echo>, i: usize| {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_nonblocking(true).unwrap();
        c.write_all(format!("{i}").as_bytes()).unwrap();
        let mut buf = [0u8; 8];
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "connection {i} not served"
            );
            server
                .poll(&mut events, Some(Duration::from_millis(10)))
                .unwrap();
            if let Ok(n) = c.read(&mut buf) {
                assert_eq!(&buf[..n], format!("{i}").as_bytes());
                break;
            }
        }
    };
    for i in 0..10 {
        serve(&mut server, i);
    }
    // Let several re-arms happen, then serve through the renewed registration.
    while server.stats().rearms < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the listener was never re-armed"
        );
        server
            .poll(&mut Vec::new(), Some(Duration::from_millis(10)))
            .unwrap();
    }
    for i in 10..20 {
        serve(&mut server, i);
    }
    assert_eq!(server.stats().accepted, 20);
}
