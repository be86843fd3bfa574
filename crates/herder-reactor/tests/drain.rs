//! Draining: the listeners close at once; a connection closes early only where its
//! service says it is at a boundary, otherwise when its peer closes it or at the
//! drain deadline. A byte stream is never cut.

mod util;

use herder_reactor::{CloseReason, Flow, Input, Output, Server, ServerConfig, Service};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Answers each line ending in '\n' with "done\n"; a partial line makes it busy.
/// It knows its boundary: an idle connection is between lines.
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
    fn on_drain(&mut self, idle: bool, _: &mut Output<'_>) -> Flow {
        if idle { Flow::Close } else { Flow::Continue }
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
fn a_service_with_boundaries_closes_idle_then_busy_then_the_rest_at_the_deadline() {
    let closed = Arc::new(Mutex::new(Vec::new()));
    let c2 = closed.clone();
    let start_drain = Arc::new(AtomicBool::new(false));
    let s2 = start_drain.clone();
    let server = util::spawn_server(
        ServerConfig::default(),
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

/// An echo server (the default `on_drain`: a byte stream has no boundary) that
/// drains once `start` is set, with `deadline` from then; `drained` is set once
/// `drain` returned, `empty` whenever the server holds no connection after a poll.
struct EchoDrain {
    server: util::Running,
    closed: Arc<Mutex<Vec<String>>>,
    start: Arc<AtomicBool>,
    drained: Arc<AtomicBool>,
    empty: Arc<AtomicBool>,
}

fn echo_draining(deadline: Duration) -> EchoDrain {
    let closed = Arc::new(Mutex::new(Vec::new()));
    let (start, drained, empty) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (c2, s2, d2, e2) = (
        closed.clone(),
        start.clone(),
        drained.clone(),
        empty.clone(),
    );
    let server = util::spawn_server(
        ServerConfig::default(),
        move || util::Echo { closed: c2.clone() },
        move |s: &mut Server<util::Echo>| {
            if s2.swap(false, Ordering::SeqCst) {
                s.drain(Instant::now() + deadline);
                d2.store(true, Ordering::SeqCst);
            }
            e2.store(s.is_empty(), Ordering::SeqCst);
        },
    );
    EchoDrain {
        server,
        closed,
        start,
        drained,
        empty,
    }
}

impl EchoDrain {
    fn drain(&self) {
        self.start.store(true, Ordering::SeqCst);
        util::wait_for("the drain to start", || self.drained.load(Ordering::SeqCst));
    }
}

/// A connection whose last byte is echoed: momentarily idle.
fn idle_echo_connection(addr: std::net::SocketAddr) -> TcpStream {
    let mut c = connect(addr);
    c.write_all(b"a").unwrap();
    let mut b = [0u8; 1];
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"a");
    c
}

#[test]
fn a_byte_stream_momentarily_idle_is_served_until_its_peer_closes() {
    let echo = echo_draining(Duration::from_secs(30));
    let mut c = idle_echo_connection(echo.server.addr);
    echo.drain();
    let t0 = Instant::now();
    // Bytes sent after the drain began, a little apart, are all echoed.
    for byte in b"stream" {
        std::thread::sleep(Duration::from_millis(20));
        c.write_all(&[*byte]).unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b)
            .expect("a draining server cut an idle byte stream");
        assert_eq!(b[0], *byte);
    }
    assert!(
        echo.closed.lock().unwrap().is_empty(),
        "closed while draining"
    );
    // The peer's last bytes and its end: echoed, then closed at once.
    c.write_all(b"bye").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut c), "bye");
    util::wait_for("the connection to close", || {
        echo.closed.lock().unwrap().len() == 1
    });
    assert_eq!(echo.closed.lock().unwrap().as_slice(), ["Eof"]);
    util::wait_for("the server to be empty", || {
        echo.empty.load(Ordering::SeqCst)
    });
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "closed by the deadline, not by the peer"
    );
    let stats = echo.server.stop();
    assert_eq!((stats.accepted, stats.active), (1, 0));
}

#[test]
fn the_drain_deadline_closes_a_byte_stream() {
    let deadline = Duration::from_millis(400);
    let echo = echo_draining(deadline);
    let mut c = idle_echo_connection(echo.server.addr);
    let t0 = Instant::now();
    echo.drain();
    // Nothing more is sent: only the deadline ends it.
    assert_eq!(read_all(&mut c), "");
    let took = t0.elapsed();
    assert!(
        took >= deadline - Duration::from_millis(50),
        "closed after {took:?}, before the deadline"
    );
    util::wait_for("the connection to close", || {
        echo.closed.lock().unwrap().len() == 1
    });
    assert_eq!(echo.closed.lock().unwrap().as_slice(), ["Shutdown"]);
    util::wait_for("the server to be empty", || {
        echo.empty.load(Ordering::SeqCst)
    });
    echo.server.stop();
}

#[test]
fn a_service_at_a_boundary_is_closed_at_once() {
    let closed = Arc::new(Mutex::new(Vec::new()));
    let c2 = closed.clone();
    let start = Arc::new(AtomicBool::new(false));
    let s2 = start.clone();
    let server = util::spawn_server(
        ServerConfig::default(),
        move || Lines { closed: c2.clone() },
        move |s: &mut Server<Lines>| {
            if s2.swap(false, Ordering::SeqCst) {
                s.drain(Instant::now() + Duration::from_secs(30));
            }
        },
    );
    let mut c = connect(server.addr);
    c.write_all(b"hello\n").unwrap();
    let mut b = [0u8; 5];
    c.read_exact(&mut b).unwrap();
    let t0 = Instant::now();
    start.store(true, Ordering::SeqCst);
    assert_eq!(read_all(&mut c), "");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "closed by the deadline, not at the boundary"
    );
    util::wait_for("the connection to close", || {
        closed.lock().unwrap().len() == 1
    });
    assert_eq!(closed.lock().unwrap().as_slice(), ["Shutdown"]);
    server.stop();
}

/// `connect` to `addr` fails with `ECONNREFUSED`: nobody holds the listening socket.
fn assert_refused(addr: std::net::SocketAddr) {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => panic!("a draining server's listener took a connection"),
    }
}

#[test]
fn drain_closes_the_listener_so_new_connections_are_refused() {
    let mut server = Server::new(ServerConfig::default(), |_| util::Echo {
        closed: Arc::default(),
    })
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let key = server.add_listener(listener).unwrap();
    server.drain(Instant::now() + Duration::from_secs(30));
    let mut events = Vec::new();
    server.poll(&mut events, Some(Duration::ZERO)).unwrap();
    assert_refused(addr);
    // Nothing brings it back.
    assert!(server.resume_listener(key).is_err());
    let again = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = server.add_listener(again).unwrap_err();
    assert_eq!(err.to_string(), herder_reactor::DRAINING);
    assert!(server.is_empty());
}

#[cfg(target_os = "linux")]
#[test]
fn drain_closes_an_exclusive_listener_and_stops_its_rearming() {
    use herder_reactor::os::linux::ServerExt;
    let mut server = Server::new(ServerConfig::default(), |_| util::Echo {
        closed: Arc::default(),
    })
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let rearm = Duration::from_millis(5);
    let key = server
        .add_exclusive_listener(listener, Some(rearm))
        .unwrap();
    server.drain(Instant::now() + Duration::from_secs(30));
    let mut events = Vec::new();
    // Several re-arm periods: a timer left behind would re-register it, or panic.
    let rearms = server.stats().rearms;
    for _ in 0..5 {
        server.poll(&mut events, Some(rearm * 2)).unwrap();
    }
    assert_eq!(server.stats().rearms, rearms);
    assert_refused(addr);
    assert!(server.resume_listener(key).is_err());
    let again = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    assert!(server.add_exclusive_listener(again, None).is_err());
}

/// Counts lines, answering each with its number; "stay" makes it refuse to move.
/// Its count moves with it.
#[derive(Default)]
struct Count {
    lines: u64,
    stay: bool,
}

impl Service for Count {
    fn on_data(&mut self, input: &mut Input<'_>, out: &mut Output<'_>) -> Flow {
        while let Some(end) = input.data().iter().position(|&b| b == b'\n') {
            self.stay |= &input.data()[..end] == b"stay";
            self.lines += 1;
            out.write(format!("{}\n", self.lines).as_bytes());
            input.consume(end + 1);
        }
        Flow::Continue
    }
    fn on_move(&mut self) -> herder_reactor::Move {
        match self.stay {
            true => herder_reactor::Move::Never,
            false => herder_reactor::Move::Now(self.lines.to_le_bytes().to_vec()),
        }
    }
    fn on_arrive(&mut self, state: &[u8]) -> bool {
        match state.try_into() {
            Ok(b) => {
                self.lines = u64::from_le_bytes(b);
                true
            }
            Err(_) => false,
        }
    }
}

/// Polls `server` until `c` has a line to read; returns it.
fn line_from(server: &mut Server<Count>, c: &mut TcpStream) -> String {
    let mut events = Vec::new();
    let mut got = Vec::new();
    c.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !got.ends_with(b"\n") {
        assert!(Instant::now() < deadline, "no answer");
        server
            .poll(&mut events, Some(Duration::from_millis(5)))
            .unwrap();
        let mut b = [0u8; 64];
        match c.read(&mut b) {
            Ok(0) => panic!("closed"),
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
    }
    c.set_nonblocking(false).unwrap();
    String::from_utf8(got).unwrap()
}

#[test]
fn moving_takes_out_what_agrees_with_its_input_and_state_and_a_failed_move_stays() {
    let mut a = Server::new(ServerConfig::default(), |_| Count::default()).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    a.add_listener(listener).unwrap();
    let mut plain = connect(addr);
    let mut partial = connect(addr);
    let mut stays = connect(addr);
    let mut back = connect(addr);
    for (c, first) in [
        (&mut plain, "x\n"),
        (&mut partial, "x\n"),
        (&mut stays, "stay\n"),
        (&mut back, "x\n"),
    ] {
        c.write_all(first.as_bytes()).unwrap();
        assert_eq!(line_from(&mut a, c), "1\n");
    }
    partial.write_all(b"hal").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut events = Vec::new();
    while a.buffered_bytes() < 3 {
        assert!(Instant::now() < deadline, "the partial line never arrived");
        a.poll(&mut events, Some(Duration::from_millis(5))).unwrap();
    }

    a.move_out(Instant::now() + Duration::from_secs(30));
    assert!(a.is_moving() && a.is_draining());
    let mut gone = a.take_departures(usize::MAX);
    assert_eq!(gone.len(), 3, "every connection but the one that stays");
    assert!(!a.has_departures());
    assert_eq!((a.stats().active, a.stats().departed), (1, 3));
    let mut inputs: Vec<&[u8]> = gone.iter().map(|d| d.input()).collect();
    inputs.sort();
    assert_eq!(inputs, [&b""[..], b"", b"hal"]);
    assert!(gone.iter().all(|d| d.state() == 1u64.to_le_bytes()));

    // One move fails: the connection goes back to its server as it was.
    let back_port = back.local_addr().unwrap().port();
    let i = gone
        .iter()
        .position(|d| d.stream().peer_addr() == Some(SocketAddr::from(([127, 0, 0, 1], back_port))))
        .unwrap();
    a.readmit(gone.remove(i)).unwrap();
    back.write_all(b"y\n").unwrap();
    assert_eq!(line_from(&mut a, &mut back), "2\n", "served where it was");

    // The others arrive at another server, with their state and input.
    let mut b = Server::new(ServerConfig::default(), |_| Count::default()).unwrap();
    for d in gone {
        let herder_reactor::Stream::Tcp(s) = d.stream() else {
            unreachable!()
        };
        let mut svc = Count::default();
        assert!(svc.on_arrive(d.state()));
        assert!(!d.is_fresh(), "each had sent a line");
        b.adopt(s.try_clone().unwrap(), svc, d.input(), d.is_fresh())
            .unwrap();
        // The departure (the old process's copy) is let go once the other owns it.
        drop(d);
    }
    assert_eq!(
        (b.stats().arrived, b.stats().accepted, b.stats().active),
        (2, 0, 2)
    );
    assert_eq!(a.stats().departed, 2, "the one given back is not counted");
    // Nothing is read or written before the next poll.
    partial.write_all(b"f\n").unwrap();
    partial.set_nonblocking(true).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let mut nothing = [0u8; 8];
    assert_eq!(
        partial.read(&mut nothing).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
    assert_eq!(
        line_from(&mut b, &mut partial),
        "2\n",
        "the half line finished"
    );
    plain.write_all(b"z\n").unwrap();
    assert_eq!(line_from(&mut b, &mut plain), "2\n", "the count moved");
    // The one that stays is still served by the first server.
    stays.write_all(b"w\n").unwrap();
    assert_eq!(line_from(&mut a, &mut stays), "2\n");
}

/// Answers "big" with 4 MiB, anything else with its length; moves with no state
/// whenever asked.
struct Big;

impl Service for Big {
    fn on_data(&mut self, input: &mut Input<'_>, out: &mut Output<'_>) -> Flow {
        while let Some(end) = input.data().iter().position(|&b| b == b'\n') {
            match &input.data()[..end] {
                b"big" => out.write(&vec![b'x'; 4 << 20]),
                line => out.write(format!("{}\n", line.len()).as_bytes()),
            }
            input.consume(end + 1);
        }
        Flow::Continue
    }
    fn on_move(&mut self) -> herder_reactor::Move {
        herder_reactor::Move::Now(Vec::new())
    }
    // Would close it if asked: moving must not ask while it may still move.
    fn on_drain(&mut self, _: bool, _: &mut Output<'_>) -> Flow {
        Flow::Close
    }
}

#[test]
fn a_connection_with_output_unwritten_moves_once_it_is_written_and_is_not_drained_meanwhile() {
    let mut a = Server::new(ServerConfig::default(), |_| Big).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    a.add_listener(listener).unwrap();
    let mut c = connect(addr);
    c.write_all(b"big\n").unwrap();
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    // The reply is larger than the socket takes: output is left unwritten.
    while a.buffered_bytes() == 0 {
        assert!(Instant::now() < deadline, "no output kept");
        a.poll(&mut events, Some(Duration::from_millis(5))).unwrap();
    }
    a.move_out(Instant::now() + Duration::from_secs(30));
    assert!(
        a.take_departures(usize::MAX).is_empty(),
        "moved with output unwritten"
    );
    // The client reads it all; the server writes the rest, then lets it go.
    let mut got = 0;
    let mut buf = vec![0u8; 1 << 16];
    c.set_nonblocking(true).unwrap();
    let mut gone = Vec::new();
    while gone.is_empty() {
        assert!(Instant::now() < deadline, "never moved; read {got}");
        a.poll(&mut events, Some(Duration::from_millis(1))).unwrap();
        match c.read(&mut buf) {
            Ok(0) => panic!("closed after {got} bytes: drained instead of moved"),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
        gone = a.take_departures(usize::MAX);
    }
    // All of it was written before it left: the rest is in the socket.
    c.set_nonblocking(false).unwrap();
    while got < 4 << 20 {
        got += c.read(&mut buf).unwrap();
    }
    assert_eq!(got, 4 << 20);
    assert_eq!(a.stats().active, 0);
}
