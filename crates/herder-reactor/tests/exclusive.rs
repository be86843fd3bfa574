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
