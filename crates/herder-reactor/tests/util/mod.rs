//! Helpers shared by herder-reactor's behaviour tests.
#![allow(dead_code, unreachable_pub)]

use herder_reactor::{Event, Reactor, Source};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A connected, non-blocking pair of loopback TCP sockets.
pub fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    (a, b)
}

/// Polls until `pred` accepts an event or `limit` passes; returns the events of the
/// poll that had it (panics after the limit).
pub fn poll_until<S: Source>(
    r: &mut Reactor<S>,
    limit: Duration,
    pred: impl Fn(&Event) -> bool,
) -> Vec<Event> {
    let deadline = Instant::now() + limit;
    let mut events = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the expected event did not come within {limit:?}"
        );
        r.poll(&mut events, Some(left)).unwrap();
        if events.iter().any(&pred) {
            return events;
        }
    }
}

/// Polls once with `timeout` and returns what came.
pub fn poll_once<S: Source>(r: &mut Reactor<S>, timeout: Duration) -> Vec<Event> {
    let mut events = Vec::new();
    r.poll(&mut events, Some(timeout)).unwrap();
    events
}
