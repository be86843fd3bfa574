//! A peer cannot grow a connection's memory without limit: past the input limit the
//! service is told, may answer, and the connection closes.

mod util;

use herder_reactor::{CloseReason, Flow, Input, Output, ServerConfig, Service};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Waits for a blank line (like HTTP headers) and never gets one.
struct Headers {
    closed: Arc<Mutex<Vec<String>>>,
}

impl Service for Headers {
    fn on_data(&mut self, input: &mut Input<'_>, out: &mut Output<'_>) -> Flow {
        if let Some(end) = input.data().windows(4).position(|w| w == b"\r\n\r\n") {
            out.write(b"ok\n");
            input.consume(end + 4);
        }
        Flow::Continue
    }
    fn on_input_limit(&mut self, out: &mut Output<'_>) -> Flow {
        out.write(b"431 too large\n");
        Flow::Close
    }
    fn on_close(&mut self, reason: &CloseReason) {
        self.closed.lock().unwrap().push(format!("{reason:?}"));
    }
}

#[test]
fn unconsumed_input_is_bounded() {
    let mut config = ServerConfig::default();
    config.max_input = 8 * 1024;
    let closed = Arc::new(Mutex::new(Vec::new()));
    let c2 = closed.clone();
    let peak = Arc::new(AtomicUsize::new(0));
    let p2 = peak.clone();
    let server = util::spawn_server(
        config,
        move || Headers { closed: c2.clone() },
        move |s| {
            p2.fetch_max(s.buffered_bytes(), Ordering::SeqCst);
        },
    );

    // A well-behaved request is answered.
    let mut ok = TcpStream::connect(server.addr).unwrap();
    ok.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    ok.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut b = [0u8; 3];
    ok.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ok\n");

    // An endless header line is cut off.
    let mut bad = TcpStream::connect(server.addr).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let line = vec![b'a'; 1024];
    for _ in 0..64 {
        if bad.write_all(&line).is_err() {
            break; // the server closed: the rest is refused
        }
    }
    let mut reply = Vec::new();
    bad.read_to_end(&mut reply).unwrap(); // a lingering close: no reset
    assert!(
        reply.starts_with(b"431 too large\n"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
    drop(bad);
    util::wait_for("close", || {
        closed.lock().unwrap().iter().any(|r| r == "InputLimit")
    });
    let bound = 8 * 1024 + 64 * 1024;
    assert!(
        peak.load(Ordering::SeqCst) <= bound,
        "buffered {} > {bound}",
        peak.load(Ordering::SeqCst)
    );
    server.stop();
}
