//! Client helpers of the end-to-end tests that need nothing but std, shared with the
//! Windows tests.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

/// Sends `data` on a new connection (writing and reading at once), half-closes, and
/// returns what came back.
pub fn echo(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut w = c.try_clone().unwrap();
    let send = data.to_vec();
    let writer = std::thread::spawn(move || {
        w.write_all(&send).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    back
}

/// A pseudo-random payload of 1 to `max` bytes, the same for the same `seed`.
pub fn payload(seed: u64, max: usize) -> Vec<u8> {
    let mut x = seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let len = (x % max as u64) as usize + 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
