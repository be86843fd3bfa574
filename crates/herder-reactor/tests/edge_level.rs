//! Level-triggered sources report readiness at every poll while it holds;
//! edge-triggered ones only when new data arrives.

mod util;

use herder_reactor::{Event, Interest, Mode, Reactor};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const SHORT: Duration = Duration::from_millis(50);
const LONG: Duration = Duration::from_secs(10);

fn readable(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::Io { readable: true, .. }))
        .count()
}

#[test]
fn level_repeats_while_data_is_unread() {
    let mut r: Reactor<TcpStream> = Reactor::new().unwrap();
    let (a, mut b) = util::tcp_pair();
    let key = r.register(a, Interest::READABLE, Mode::Level).unwrap();
    b.write_all(b"abc").unwrap();
    util::poll_until(&mut r, LONG, |e| {
        matches!(e, Event::Io { readable: true, .. })
    });
    assert_eq!(
        readable(&util::poll_once(&mut r, SHORT)),
        1,
        "level: reported again"
    );
    let mut buf = [0u8; 8];
    let mut s: &TcpStream = r.get(key).unwrap();
    assert_eq!(s.read(&mut buf).unwrap(), 3);
    assert_eq!(
        readable(&util::poll_once(&mut r, SHORT)),
        0,
        "drained: quiet"
    );
}

#[test]
fn edge_reports_once_per_arrival() {
    let mut r: Reactor<TcpStream> = Reactor::new().unwrap();
    let (a, mut b) = util::tcp_pair();
    if !r.supports_edge() {
        // Where the poller has no edge mode (IOCP), asking for it is an error.
        assert!(r.register(a, Interest::READABLE, Mode::Edge).is_err());
        return;
    }
    r.register(a, Interest::READABLE, Mode::Edge).unwrap();
    b.write_all(b"abc").unwrap();
    util::poll_until(&mut r, LONG, |e| {
        matches!(e, Event::Io { readable: true, .. })
    });
    assert_eq!(
        readable(&util::poll_once(&mut r, SHORT)),
        0,
        "edge: not again without new data"
    );
    b.write_all(b"more").unwrap();
    util::poll_until(&mut r, LONG, |e| {
        matches!(e, Event::Io { readable: true, .. })
    });
}
