//! Listeners. SO_REUSEPORT: each slot has its own listener in one port group; the
//! kernel spreads connections over the workers, and a replacement worker takes over
//! its slot's listener. Deferred accept: a connection is handed out once its first
//! bytes arrive, and a silent one all the same, later; a listener that defers
//! already keeps its setting.
#![cfg(target_os = "linux")]

mod util;

use herder_pool::{Pool, PoolEvent, defer_accept, reuseport_listener, tcp_listener};
use std::cell::Cell;
use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

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

/// Accepts from the non-blocking `l` until a connection comes, for at most `limit`.
fn accept_within(l: &std::net::TcpListener, limit: Duration) -> Option<TcpStream> {
    let start = Instant::now();
    loop {
        match l.accept() {
            Ok((c, _)) => return Some(c),
            Err(e) if e.kind() == ErrorKind::WouldBlock && start.elapsed() < limit => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
            Err(e) => panic!("accept: {e}"),
        }
    }
}

#[test]
fn a_deferred_listener_hands_out_connections_as_their_first_bytes_arrive() {
    let l = tcp_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    defer_accept(&l).unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    // The silent client's handshake completes first; a plain listener would hand
    // it out first.
    let silent = TcpStream::connect(addr).unwrap();
    let mut speaker = TcpStream::connect(addr).unwrap();
    speaker.write_all(b"first").unwrap();

    let mut c = accept_within(&l, Duration::from_secs(10)).expect("the speaker's connection");
    c.set_nonblocking(false).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = [0; 5];
    c.read_exact(&mut got).unwrap();
    assert_eq!(
        &got, b"first",
        "the first connection handed out is the one that spoke"
    );
    assert_eq!(c.peer_addr().unwrap(), speaker.local_addr().unwrap());

    // The silent one is handed out all the same once the kernel stops holding it
    // back (Linux: at its first SYN-ACK retransmission, about a second).
    let c = accept_within(&l, Duration::from_secs(20)).expect("the silent connection");
    assert_eq!(c.peer_addr().unwrap(), silent.local_addr().unwrap());
}

#[test]
fn a_listener_that_defers_already_is_left_as_it_is() {
    use std::os::fd::AsRawFd;
    let l = tcp_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let get = |l: &std::net::TcpListener| {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid socket, and a c_int of the length passed.
        let r = unsafe {
            libc::getsockopt(
                l.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0);
        v
    };
    assert_eq!(get(&l), 0);
    defer_accept(&l).unwrap();
    let ours = get(&l);
    assert!(ours > 0);
    defer_accept(&l).unwrap();
    assert_eq!(get(&l), ours, "a second call changes nothing");

    // As systemd's DeferAcceptSec=30 would have set it.
    let other = tcp_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let thirty: libc::c_int = 30;
    // SAFETY: a valid socket, and a c_int of the length passed.
    let r = unsafe {
        libc::setsockopt(
            other.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&thirty as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
    let set = get(&other);
    assert!(set > ours, "{set}");
    defer_accept(&other).unwrap();
    assert_eq!(get(&other), set, "the passed-on setting is kept");
}
