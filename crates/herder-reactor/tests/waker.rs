//! A waker interrupts a blocked poll from another thread.

mod util;

use herder_reactor::{Event, Reactor};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn wake_from_another_thread_interrupts_poll() {
    let mut r: Reactor<TcpStream> = Reactor::new().unwrap();
    let waker = r.waker();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        rx.recv().unwrap();
        waker.wake().unwrap();
    });
    tx.send(()).unwrap();
    let start = Instant::now();
    let events = util::poll_until(&mut r, Duration::from_secs(30), |e| *e == Event::Wake);
    assert_eq!(events.iter().filter(|e| **e == Event::Wake).count(), 1);
    assert!(start.elapsed() < Duration::from_secs(30));
    t.join().unwrap();
}

#[test]
fn wakes_before_a_poll_coalesce_into_one_event() {
    let mut r: Reactor<TcpStream> = Reactor::new().unwrap();
    let waker = r.waker();
    for _ in 0..10 {
        waker.wake().unwrap();
    }
    let events = util::poll_once(&mut r, Duration::from_secs(10));
    assert_eq!(events, vec![Event::Wake]);
    let events = util::poll_once(&mut r, Duration::from_millis(20));
    assert!(events.is_empty(), "{events:?}");
}
