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

/// Waitable handles (`os::windows`): a child process's exit and an event set from
/// another thread wake the loop under their keys, once per arming, next to sockets.
#[cfg(windows)]
mod waitables {
    use super::{LONG, SHORT, io_keys};
    use herder_reactor::os::windows::ReactorExt;
    use herder_reactor::{Event, Reactor};
    use std::net::TcpStream;
    use std::os::windows::io::{FromRawHandle, OwnedHandle};
    use windows_sys::Win32::System::Threading::{CreateEventW, SetEvent};

    fn event() -> OwnedHandle {
        // SAFETY: an unnamed auto-reset event, not set; a null return is checked.
        let raw = unsafe { CreateEventW(std::ptr::null(), 0, 0, std::ptr::null()) };
        assert!(
            !raw.is_null(),
            "CreateEventW: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `raw` is a new handle that nothing else owns.
        unsafe { OwnedHandle::from_raw_handle(raw) }
    }

    fn set(handle: &OwnedHandle) {
        use std::os::windows::io::AsRawHandle;
        // SAFETY: a live event handle.
        assert_ne!(unsafe { SetEvent(handle.as_raw_handle()) }, 0);
    }

    fn poll_for(reactor: &mut Reactor<TcpStream>, key: herder_reactor::Key) -> Vec<Event> {
        let deadline = std::time::Instant::now() + LONG;
        let mut events = Vec::new();
        while !io_keys(&events).contains(&key) {
            assert!(
                std::time::Instant::now() < deadline,
                "{key:?} never reported"
            );
            reactor.poll(&mut events, Some(LONG)).unwrap();
        }
        events
    }

    #[test]
    fn a_child_process_exit_is_an_event() {
        let exe = std::env::current_exe().unwrap();
        // The test binary lists its tests and exits.
        let child = std::process::Command::new(exe)
            .arg("--list")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut reactor: Reactor<TcpStream> = Reactor::new().unwrap();
        let key = reactor.add_waitable(OwnedHandle::from(child)).unwrap();
        assert_eq!(reactor.len(), 1);
        assert!(reactor.waitable(key).is_some());
        assert!(reactor.get(key).is_none(), "a waitable is not a source");
        let events = poll_for(&mut reactor, key);
        assert!(events.iter().any(|e| matches!(
            e,
            Event::Io { key: k, readable: true, .. } if *k == key
        )));
        // Reported once: not again until re-armed.
        let mut events = Vec::new();
        reactor.poll(&mut events, Some(SHORT)).unwrap();
        assert!(!io_keys(&events).contains(&key), "{events:?}");
        let process = reactor.remove_waitable(key).unwrap();
        drop(process);
        assert!(reactor.is_empty());
        assert!(reactor.remove_waitable(key).is_err(), "a stale key");
    }

    #[test]
    fn an_event_set_from_another_thread_wakes_the_loop_each_time_it_is_rearmed() {
        let mut reactor: Reactor<TcpStream> = Reactor::new().unwrap();
        let handle = event();
        let raw = handle.try_clone().unwrap();
        let key = reactor.add_waitable(handle).unwrap();
        for _ in 0..3 {
            let raw = raw.try_clone().unwrap();
            let t = std::thread::spawn(move || {
                std::thread::sleep(SHORT);
                set(&raw);
            });
            poll_for(&mut reactor, key);
            t.join().unwrap();
            reactor.rearm_waitable(key).unwrap();
        }
        // Not set since: nothing reported.
        let mut events = Vec::new();
        reactor.poll(&mut events, Some(SHORT)).unwrap();
        assert!(!io_keys(&events).contains(&key), "{events:?}");
        // A source's calls refuse a waitable's key, and the other way round.
        assert!(reactor.deregister(key).is_err());
        assert!(reactor.remove_waitable(key).is_ok());
    }
}
