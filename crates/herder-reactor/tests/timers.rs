//! Timers fire in deadline order, can be cancelled, and repeat.

mod util;

use herder_reactor::{Event, Reactor};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn timers(events: &[Event]) -> Vec<herder_reactor::TimerId> {
    events
        .iter()
        .filter_map(|e| {
            if let Event::Timer(t) = e {
                Some(*t)
            } else {
                None
            }
        })
        .collect()
}

/// Polls until `n` timer events have come (bounded by 10 s).
fn collect(r: &mut Reactor<TcpStream>, n: usize) -> Vec<herder_reactor::TimerId> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} timers fired",
            got.len()
        );
        got.extend(timers(&util::poll_once(r, Duration::from_secs(1))));
    }
    got
}

#[test]
fn fire_in_deadline_order_not_insertion_order() {
    let mut r: Reactor<TcpStream> = Reactor::new().unwrap();
    let now = Instant::now();
    let c = r.add_timer(now + Duration::from_millis(30), None);
    let a = r.add_timer(now + Duration::from_millis(10), None);
    let b = r.add_timer(now + Duration::from_millis(20), None);
    let same = r.add_timer(now + Duration::from_millis(20), None);
    assert_eq!(collect(&mut r, 4), vec![a, b, same, c]);
    assert!(
        timers(&util::poll_once(&mut r, Duration::from_millis(50))).is_empty(),
        "each fires once"
    );
}

#[test]
fn a_cancelled_timer_never_fires() {
    let mut r: Reactor<TcpStream> = Reactor::new().unwrap();
    let now = Instant::now();
    let gone = r.add_timer(now + Duration::from_millis(5), None);
    let kept = r.add_timer(now + Duration::from_millis(20), None);
    assert!(r.cancel_timer(gone));
    assert!(!r.cancel_timer(gone), "second cancel is a no-op");
    assert_eq!(collect(&mut r, 1), vec![kept]);
    assert!(
        !r.cancel_timer(kept),
        "a fired one-shot timer is no longer pending"
    );
    // The freed slot is reused under a new id; the old id stays dead.
    let reused = r.add_timer(Instant::now(), None);
    assert_ne!(reused, gone);
    assert!(!r.cancel_timer(gone));
    assert_eq!(collect(&mut r, 1), vec![reused]);
}

#[test]
fn repeating_timers_repeat_until_cancelled() {
    let mut r: Reactor<TcpStream> = Reactor::new().unwrap();
    let t = r.add_timer(Instant::now(), Some(Duration::from_millis(5)));
    let fired = collect(&mut r, 5);
    assert!(fired.iter().all(|&f| f == t));
    assert!(r.cancel_timer(t));
    assert!(timers(&util::poll_once(&mut r, Duration::from_millis(30))).is_empty());
}

#[test]
fn many_cancellations_do_not_grow_without_bound() {
    let mut r: Reactor<TcpStream> = Reactor::new().unwrap();
    let far = Instant::now() + Duration::from_secs(3600);
    for _ in 0..100_000 {
        let t = r.add_timer(far, None);
        assert!(r.cancel_timer(t));
    }
    let t = r.add_timer(Instant::now(), None);
    assert_eq!(collect(&mut r, 1), vec![t]);
}
