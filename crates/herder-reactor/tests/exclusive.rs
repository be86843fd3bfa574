//! Linux: a listener registered with `EPOLLEXCLUSIVE` reports connections and pauses
//! and resumes under its key; a plain listener pauses and resumes with `modify`.
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
fn exclusive_listener_pauses_and_resumes_under_its_key() {
    let mut r: Reactor<TcpListener> = Reactor::new().unwrap();
    let l = listener();
    let addr = l.local_addr().unwrap();
    let key = r.register_exclusive(l).unwrap();
    // Only level-triggered readability exists for such a registration.
    for (interest, mode) in [
        (Interest::WRITABLE, Mode::Level),
        (Interest::READABLE, Mode::Edge),
    ] {
        assert_eq!(
            r.modify(key, interest, mode).unwrap_err().kind(),
            std::io::ErrorKind::Unsupported
        );
    }
    let _c = TcpStream::connect(addr).unwrap();
    util::poll_until(
        &mut r,
        Duration::from_secs(10),
        |e| matches!(e, Event::Io { key: k, .. } if *k == key),
    );
    // Paused: the pending connection wakes nobody, twice over.
    r.modify(key, Interest::NONE, Mode::Level).unwrap();
    r.modify(key, Interest::NONE, Mode::Level).unwrap();
    assert_eq!(io_count(&util::poll_once(&mut r, SHORT)), 0);
    // Resumed under the same key, the pending connection is reported again; resuming
    // an armed registration re-arms it.
    r.modify(key, Interest::READABLE, Mode::Level).unwrap();
    r.modify(key, Interest::READABLE, Mode::Level).unwrap();
    util::poll_until(
        &mut r,
        Duration::from_secs(10),
        |e| matches!(e, Event::Io { key: k, .. } if *k == key),
    );
    let (_conn, _) = r.get(key).unwrap().accept().unwrap();
    // Deregistering a paused one gives it back.
    r.modify(key, Interest::NONE, Mode::Level).unwrap();
    let l = r.deregister(key).unwrap();
    assert!(r.get(key).is_none());
    drop(l);
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
    use herder_reactor::{Server, ServerConfig};
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    let closed = Arc::new(Mutex::new(Vec::new()));
    let c2 = closed.clone();
    let mut server = Server::new(ServerConfig::default(), move |_| util::Echo {
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

#[test]
fn a_paused_exclusive_listener_stays_paused_across_rearms() {
    use herder_reactor::os::linux::ServerExt;
    use herder_reactor::{Server, ServerConfig};
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    let closed = Arc::new(Mutex::new(Vec::new()));
    let c2 = closed.clone();
    let mut server = Server::new(ServerConfig::default(), move |_| util::Echo {
        closed: c2.clone(),
    })
    .unwrap();
    let l = listener();
    let addr = l.local_addr().unwrap();
    let key = server
        .add_exclusive_listener(l, Some(Duration::from_millis(5)))
        .unwrap();
    server.pause_listener(key).unwrap();
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"x").unwrap();
    // Several re-arm periods pass; the paused listener accepts nothing.
    let mut events = Vec::new();
    for _ in 0..10 {
        server
            .poll(&mut events, Some(Duration::from_millis(5)))
            .unwrap();
    }
    assert_eq!(server.stats().accepted, 0, "accepted while paused");
    assert_eq!(server.stats().rearms, 0, "re-armed while paused");
    // Resumed under the same key: the waiting client is served.
    server.resume_listener(key).unwrap();
    c.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 1];
    loop {
        assert!(std::time::Instant::now() < deadline, "not served");
        server
            .poll(&mut events, Some(Duration::from_millis(10)))
            .unwrap();
        if let Ok(1) = c.read(&mut buf) {
            break;
        }
    }
    assert_eq!(&buf, b"x");
    assert_eq!(server.stats().accepted, 1);
}
