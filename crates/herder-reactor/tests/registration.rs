//! Registration, modification, deregistration and key reuse: a stale event for a
//! deregistered key is never delivered to its successor.

mod util;

use herder_reactor::{Event, Interest, Mode, Reactor};
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

const SHORT: Duration = Duration::from_millis(50);
const LONG: Duration = Duration::from_secs(10);

fn io_keys(events: &[Event]) -> Vec<herder_reactor::Key> {
    events
        .iter()
        .filter_map(|e| {
            if let Event::Io { key, .. } = e {
                Some(*key)
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn register_poll_and_deregister() {
    let mut r: Reactor<TcpStream> = Reactor::new().unwrap();
    let (a, mut b) = util::tcp_pair();
    let key = r.register(a, Interest::READABLE, Mode::Level).unwrap();
    assert_eq!(r.len(), 1);
    assert!(
        io_keys(&util::poll_once(&mut r, SHORT)).is_empty(),
        "nothing to read yet"
    );
    b.write_all(b"x").unwrap();
    let ev = util::poll_until(
        &mut r,
        LONG,
        |e| matches!(e, Event::Io { key: k, readable: true, .. } if *k == key),
    );
    assert_eq!(io_keys(&ev), vec![key]);
    let a = r.deregister(key).unwrap();
    assert!(r.is_empty() && r.get(key).is_none());
    assert_eq!(
        r.deregister(key).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    assert_eq!(
        r.modify(key, Interest::BOTH, Mode::Level)
            .unwrap_err()
            .kind(),
        std::io::ErrorKind::NotFound
    );
    drop(a);
}

#[test]
fn a_reused_slot_gets_a_new_key_and_no_stale_events() {
    let mut r: Reactor<TcpStream> = Reactor::new().unwrap();
    let (a, mut a_peer) = util::tcp_pair();
    let old = r.register(a, Interest::READABLE, Mode::Level).unwrap();
    a_peer.write_all(b"ready").unwrap();
    util::poll_until(
        &mut r,
        LONG,
        |e| matches!(e, Event::Io { key, .. } if *key == old),
    );
    drop(r.deregister(old).unwrap());

    // The successor takes the same slot but a different key, and is not readable.
    let (c, _c_peer) = util::tcp_pair();
    let new = r.register(c, Interest::READABLE, Mode::Level).unwrap();
    assert_ne!(old, new);
    assert!(r.get(old).is_none() && r.get(new).is_some());
    for _ in 0..3 {
        let keys = io_keys(&util::poll_once(&mut r, SHORT));
        assert!(keys.is_empty(), "stale or spurious events: {keys:?}");
    }
}

#[test]
fn modify_changes_interest_and_rearms_oneshot() {
    let mut r: Reactor<TcpStream> = Reactor::new().unwrap();
    let (a, mut b) = util::tcp_pair();
    let key = r.register(a, Interest::NONE, Mode::Oneshot).unwrap();
    b.write_all(b"x").unwrap();
    assert!(
        io_keys(&util::poll_once(&mut r, SHORT)).is_empty(),
        "no interest, no event"
    );
    r.modify(key, Interest::READABLE, Mode::Oneshot).unwrap();
    util::poll_until(
        &mut r,
        LONG,
        |e| matches!(e, Event::Io { key: k, .. } if *k == key),
    );
    assert!(
        io_keys(&util::poll_once(&mut r, SHORT)).is_empty(),
        "oneshot fired once"
    );
    r.modify(key, Interest::READABLE, Mode::Oneshot).unwrap();
    util::poll_until(
        &mut r,
        LONG,
        |e| matches!(e, Event::Io { key: k, .. } if *k == key),
    );
}

#[test]
fn a_paused_source_whose_peer_hung_up_does_not_wake_every_poll() {
    let mut r: Reactor<TcpStream> = Reactor::new().unwrap();
    let (a, b) = util::tcp_pair();
    let key = r.register(a, Interest::READABLE, Mode::Level).unwrap();
    r.modify(key, Interest::NONE, Mode::Level).unwrap();
    drop(b); // epoll reports the hang-up whatever the interest
    let mut woken = 0;
    for _ in 0..5 {
        woken += io_keys(&util::poll_once(&mut r, SHORT)).len();
    }
    assert!(woken <= 1, "a paused source woke {woken} polls");
}
