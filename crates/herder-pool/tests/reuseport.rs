//! SO_REUSEPORT: each slot has its own listener in one port group; the kernel spreads
//! connections over the workers, and a replacement worker takes over its slot's
//! listener.
#![cfg(target_os = "linux")]

mod util;

use herder_pool::{Pool, PoolEvent, reuseport_listener};
use std::cell::Cell;
use std::collections::HashSet;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::Duration;

#[test]
fn worker_entry() {
    util::worker_main();
}

/// Connects `n` times; returns the pids that answered.
fn answers(addr: SocketAddr, n: usize) -> Vec<u32> {
    (0..n)
        .map(|_| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut s = String::new();
            c.read_to_string(&mut s).unwrap();
            s.parse().unwrap()
        })
        .collect()
}

#[test]
fn connections_spread_over_the_slots_and_survive_a_restart() {
    let addr: Rc<Cell<Option<SocketAddr>>> = Rc::new(Cell::new(None));
    let a2 = addr.clone();
    let mut pool = Pool::new(util::config(2, "accept"), Vec::new()).unwrap();
    pool.set_slot_listeners(move |_slot| {
        let l = reuseport_listener(a2.get().unwrap_or("127.0.0.1:0".parse().unwrap()))?;
        a2.set(Some(l.local_addr()?));
        Ok(vec![("listener".to_string(), OwnedFd::from(l))])
    });
    util::start_ready(&mut pool, 2);
    let addr = addr.get().unwrap();

    let pids: HashSet<u32> = answers(addr, 64).into_iter().collect();
    let workers: HashSet<u32> = pool.pids().into_iter().collect();
    assert_eq!(pids, workers, "every worker served some of 64 connections");

    // Kill slot 0's worker: its replacement answers on the same listener.
    pool.signal(0, libc::SIGKILL).unwrap();
    util::poll_until(&mut pool, Duration::from_secs(30), |e| {
        matches!(e, PoolEvent::Ready { slot: 0, .. })
    });
    let pids: HashSet<u32> = answers(addr, 64).into_iter().collect();
    let workers: HashSet<u32> = pool.pids().into_iter().collect();
    assert_eq!(pids, workers, "the replacement serves its slot's share");
}
