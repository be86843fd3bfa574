//! Draining: no new connections, idle ones close at once, busy ones when they
//! finish, and whatever is left at the deadline is closed.

mod util;

use herder_reactor::{CloseReason, Config, Flow, Input, Output, Server, Service};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Answers each line ending in '\n' with "done\n"; a partial line makes it busy.
struct Lines {
    closed: Arc<Mutex<Vec<String>>>,
}

impl Service for Lines {
    fn on_data(&mut self, input: &mut Input<'_>, out: &mut Output<'_>) -> Flow {
        while let Some(end) = input.data().iter().position(|&b| b == b'\n') {
            out.write(b"done\n");
            input.consume(end + 1);
        }
        Flow::Continue
    }
    fn on_close(&mut self, reason: &CloseReason) {
        self.closed.lock().unwrap().push(format!("{reason:?}"));
    }
}

fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

fn read_all(c: &mut TcpStream) -> String {
    let mut s = String::new();
    let _ = c.read_to_string(&mut s);
    s
}

/// The bytes of the two partial requests.
const PARTIAL: usize = b"half a req".len() + b"never finished".len();

#[test]
fn drain_closes_idle_then_busy_then_the_rest_at_the_deadline() {
    let closed = Arc::new(Mutex::new(Vec::new()));
    let c2 = closed.clone();
    let start_drain = Arc::new(AtomicBool::new(false));
    let s2 = start_drain.clone();
    let server = util::spawn_server(
        Config::default(),
        move || Lines { closed: c2.clone() },
        move |s: &mut Server<Lines>| {
            // Start once both partial requests are in the server's buffers.
            if s.buffered_bytes() == PARTIAL && s2.swap(false, Ordering::SeqCst) {
                s.drain(Instant::now() + Duration::from_millis(500));
            }
        },
    );

    let mut idle = connect(server.addr);
    let mut busy = connect(server.addr);
    let mut stuck = connect(server.addr);
    for c in [&mut idle, &mut busy, &mut stuck] {
        c.write_all(b"hello\n").unwrap();
        let mut b = [0u8; 5];
        c.read_exact(&mut b).unwrap();
    }
    // Two connections in the middle of a request.
    busy.write_all(b"half a req").unwrap();
    stuck.write_all(b"never finished").unwrap();
    let t0 = Instant::now();
    start_drain.store(true, Ordering::SeqCst);

    // The idle one is closed at once.
    assert_eq!(read_all(&mut idle), "");
    // The listener is closed: new connections are refused.
    assert!(
        TcpStream::connect(server.addr).is_err(),
        "a draining server accepted"
    );
    // The busy one finishes its request, gets its answer, then is closed.
    busy.write_all(b"uest\n").unwrap();
    assert_eq!(read_all(&mut busy), "done\n");
    // The stuck one is closed at the deadline.
    assert_eq!(read_all(&mut stuck), "");
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "closed before the deadline"
    );
    util::wait_for("all closed", || closed.lock().unwrap().len() == 3);
    assert_eq!(
        closed.lock().unwrap().as_slice(),
        ["Shutdown", "Shutdown", "Shutdown"]
    );
    let stats = server.stop();
    assert_eq!((stats.accepted, stats.active), (3, 0));
}
