//! Workers start by re-executing this binary, receive their listener and channel as
//! descriptors 3, 4 with `LISTEN_*` set for them alone, report ready, and talk over
//! their channel; nothing else leaks into them, and nothing is left in the supervisor.
#![cfg(target_os = "linux")]

mod util;

use herder_pool::{Pool, PoolEvent, State};
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::time::Duration;

#[test]
fn worker_entry() {
    util::worker_main();
}

#[test]
fn workers_start_with_their_listener_and_report_ready() {
    let before = util::open_fds();
    {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut pool = Pool::new(
            util::config(2, "ready"),
            vec![("web".into(), OwnedFd::from(listener))],
        )
        .unwrap();
        let mut events = util::start_ready(&mut pool, 2);
        // Each worker reports what it inherited.
        while events
            .iter()
            .filter(|e| matches!(e, PoolEvent::Message { .. }))
            .count()
            < 2
        {
            events.extend(util::poll_until(&mut pool, Duration::from_secs(30), |e| {
                matches!(e, PoolEvent::Message { .. })
            }));
        }
        let mut slots = Vec::new();
        for e in &events {
            if let PoolEvent::Message { slot, message } = e {
                let report = String::from_utf8_lossy(message.payload()).to_string();
                assert_eq!(
                    report,
                    format!(
                        "ok slot={slot} names=web pid_ok=true listener_ok=true fds=[0, 1, 2, 3, 4]"
                    ),
                    "worker of slot {slot}"
                );
                slots.push(*slot);
            }
        }
        slots.sort();
        assert_eq!(slots, [0, 1]);
        for w in pool.workers() {
            assert_eq!(w.state, State::Ready);
            assert!(w.pid.is_some());
        }
        // The channel works both ways.
        pool.send(1, b"hello").unwrap();
        let events = util::poll_until(&mut pool, Duration::from_secs(30), |e| {
            matches!(e, PoolEvent::Message { .. })
        });
        let reply = events.iter().find_map(|e| match e {
            PoolEvent::Message { slot: 1, message } => Some(message.payload().to_vec()),
            _ => None,
        });
        assert_eq!(reply.as_deref(), Some(&b"echo:hello"[..]));
    }
    assert_eq!(
        util::open_fds(),
        before,
        "the supervisor leaked descriptors"
    );
}
