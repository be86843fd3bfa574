//! A client that sends without reading makes the server stop reading from it once
//! the unwritten output passes the high-water mark; when the client reads, the
//! server resumes, and every byte arrives. The server's buffers stay bounded.

mod util;

use herder_reactor::ServerConfig;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn a_slow_reader_pauses_reading_then_resumes() {
    let mut config = ServerConfig::default();
    config.high_water = 64 * 1024;
    config.read_buffer = 16 * 1024;
    let peak = Arc::new(AtomicUsize::new(0));
    let peak2 = peak.clone();
    let closed = Arc::new(Mutex::new(Vec::new()));
    let c2 = closed.clone();
    let server = util::spawn_server(
        config,
        move || util::Echo { closed: c2.clone() },
        move |s| {
            peak2.fetch_max(s.buffered_bytes(), Ordering::SeqCst);
        },
    );

    const TOTAL: usize = 16 << 20;
    let mut client = TcpStream::connect(server.addr).unwrap();
    client
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
    // Without reading, the client can push only what the buffers hold: the kernel's
    // on both sides and the server's, which back-pressure bounds.
    let mut sent = 0;
    while sent < TOTAL {
        match client.write(&data[sent..(sent + 65536).min(TOTAL)]) {
            Ok(n) => sent += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        sent < TOTAL,
        "the server never stopped reading: all {TOTAL} bytes were taken"
    );
    let bound = 64 * 1024 + 16 * 1024;
    assert!(
        peak.load(Ordering::SeqCst) <= bound,
        "server buffered {} > {bound}",
        peak.load(Ordering::SeqCst)
    );

    // Now read everything while writing the rest: all of it comes back in order.
    let mut reader = client.try_clone().unwrap();
    reader
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let rest = data[sent..].to_vec();
    let writer = std::thread::spawn(move || {
        client
            .set_write_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        client.write_all(&rest).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::with_capacity(TOTAL);
    reader.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert_eq!(back.len(), TOTAL);
    assert!(back == data, "bytes changed or reordered");
    assert!(
        peak.load(Ordering::SeqCst) <= bound,
        "server buffered {} > {bound}",
        peak.load(Ordering::SeqCst)
    );
    server.stop();
}
