//! 1 000 concurrent connections through an echo service: every byte comes back, in
//! order, on its own connection.

mod util;

use herder_reactor::ServerConfig;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

/// A deterministic pseudo-random payload of up to 16 KiB for connection `i`.
fn payload(i: usize) -> Vec<u8> {
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let len = (x % 16_384) as usize + 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn a_thousand_concurrent_echo_connections() {
    const N: usize = 1000;
    let (server, closed) = util::echo_server(ServerConfig::default());

    let mut conns: Vec<TcpStream> = (0..N)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    for (i, c) in conns.iter_mut().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c.write_all(&payload(i)).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        assert!(
            back == payload(i),
            "connection {i}: {} bytes back, {} sent",
            back.len(),
            payload(i).len()
        );
    }
    util::wait_for("every connection closed", || {
        closed.lock().unwrap().len() == N
    });
    let stats = server.stop();
    assert_eq!((stats.accepted, stats.active), (N as u64, 0));
    assert!(closed.lock().unwrap().iter().all(|r| r == "Eof"));
}
