//! Recycling after a connection limit, one slot at a time, and scaling with the load;
//! what a pool refuses or clamps (listener names, a count of zero); a source of the
//! caller's watched in the pool's loop comes back with its type.
#![cfg(target_os = "linux")]

mod util;

use herder_pool::{Autoscale, Pool, PoolEvent};
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::time::Duration;

#[test]
fn worker_entry() {
    util::worker_main();
}

#[test]
fn workers_past_their_limit_are_recycled_one_slot_at_a_time() {
    let mut config = util::config(2, "over-limit");
    config.max_connections = Some(50);
    let mut pool = Pool::new(config, Vec::new()).unwrap();
    util::start_ready(&mut pool, 2);
    let old = pool.pids();
    let mut events = Vec::new();
    let mut recycled = Vec::new();
    while recycled.len() < 2 {
        let more = util::poll_until(&mut pool, Duration::from_secs(30), |e| {
            matches!(e, PoolEvent::Recycling { .. })
        });
        for e in &more {
            if let PoolEvent::Recycling { slot, pid } = e {
                recycled.push((*slot, *pid));
            }
        }
        events.extend(more);
    }
    assert!(
        recycled.iter().all(|(_, pid)| old.contains(pid)),
        "{recycled:?}"
    );
    assert_ne!(
        recycled[0].0, recycled[1].0,
        "both slots recycle: {recycled:?}"
    );
    // The second began only after the first slot's successor was ready.
    let first_slot = recycled[0].0;
    let second_at = events
        .iter()
        .rposition(|e| matches!(e, PoolEvent::Recycling { .. }))
        .unwrap();
    let successor_ready = events
        .iter()
        .position(|e| matches!(e, PoolEvent::Ready { slot, .. } if *slot == first_slot));
    assert!(successor_ready.is_some_and(|i| i < second_at), "{events:?}");
    assert_eq!(pool.generation(), 1, "recycling is not a reload");
}

#[test]
fn busy_workers_bring_more_and_idle_ones_go() {
    let mut config = util::config(1, "busy");
    config.autoscale = Some(Autoscale::new(1, 3, 5));
    let mut pool = Pool::new(config, Vec::new()).unwrap();
    util::start_ready(&mut pool, 1);
    while pool.workers().len() < 3 {
        util::poll_until(&mut pool, Duration::from_secs(30), |e| {
            matches!(e, PoolEvent::Spawned { .. })
        });
    }
    assert_eq!(pool.workers().len(), 3);
    // Never past the maximum.
    util::poll_for(&mut pool, Duration::from_millis(1500));
    assert_eq!(pool.workers().len(), 3);

    let mut config = util::config(3, "ready");
    let mut auto = Autoscale::new(1, 3, 5);
    auto.idle_after = Duration::from_secs(1);
    config.autoscale = Some(auto);
    let mut pool = Pool::new(config, Vec::new()).unwrap();
    util::start_ready(&mut pool, 3);
    while pool.workers().len() > 1 {
        util::poll_until(&mut pool, Duration::from_secs(30), |e| {
            matches!(e, PoolEvent::Exited { .. })
        });
    }
    assert_eq!(pool.workers().len(), 1, "down to the minimum, no further");
}

#[test]
fn listener_names_workers_cannot_be_told_are_refused_at_once() {
    for bad in ["", "a:b"] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = Pool::new(
            util::config(1, "ready"),
            vec![(bad.into(), OwnedFd::from(listener))],
        )
        .err()
        .unwrap_or_else(|| panic!("a listener named {bad:?} was accepted"));
        assert!(
            matches!(err, herder_pool::Error::Environment(_)),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn scaling_to_zero_keeps_one_worker() {
    let mut pool = Pool::new(util::config(2, "ready"), Vec::new()).unwrap();
    util::start_ready(&mut pool, 2);
    let mut events = Vec::new();
    pool.scale(0, &mut events);
    assert_eq!(pool.workers().len(), 1, "{events:?}");
    pool.stop(&mut events);
    util::poll_until(&mut pool, Duration::from_secs(30), |e| {
        matches!(e, PoolEvent::Stopped)
    });
}

#[test]
fn a_watched_source_comes_back_typed() {
    use herder_reactor::{Event, Interest, Mode};
    use std::io::{Read, Write};
    let mut pool = Pool::new(util::config(1, "ready"), Vec::new()).unwrap();
    let (reader, mut writer) = std::os::unix::net::UnixStream::pair().unwrap();
    reader.set_nonblocking(true).unwrap();
    let pipe = pool.watch(reader, Interest::READABLE, Mode::Level).unwrap();
    writer.write_all(b"hello").unwrap();
    let seen = util::poll_until(
        &mut pool,
        Duration::from_secs(30),
        |e| matches!(e, PoolEvent::Other(Event::Io { key, .. }) if *key == pipe.key()),
    );
    assert!(!seen.is_empty());
    let mut got = [0u8; 5];
    pool.watched_mut(pipe)
        .expect("still watched")
        .read_exact(&mut got)
        .unwrap();
    assert_eq!(&got, b"hello");
    assert!(pool.watched(pipe).is_some());
    let reader = pool.unwatch(pipe).unwrap();
    assert!(pool.watched(pipe).is_none());
    assert!(pool.unwatch(pipe).is_err(), "given back once");
    drop(reader);
}
