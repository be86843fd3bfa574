//! A connection that is silent for the idle timeout is asked, then closed; one that
//! keeps talking is not.

mod util;

use herder_reactor::{CloseReason, Flow, Input, Output, ServerConfig, Service};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Polite {
    closed: Arc<Mutex<Vec<String>>>,
}

impl Service for Polite {
    fn on_data(&mut self, input: &mut Input<'_>, out: &mut Output<'_>) -> Flow {
        out.write(input.data());
        input.consume(input.len());
        Flow::Continue
    }
    fn on_idle(&mut self, out: &mut Output<'_>) -> Flow {
        out.write(b"bye\n");
        Flow::Close
    }
    fn on_close(&mut self, reason: &CloseReason) {
        self.closed.lock().unwrap().push(format!("{reason:?}"));
    }
}

#[test]
fn silent_connections_time_out_and_busy_ones_do_not() {
    let mut config = ServerConfig::default();
    config.idle_timeout = Some(Duration::from_millis(200));
    let closed = Arc::new(Mutex::new(Vec::new()));
    let c2 = closed.clone();
    let server = util::spawn_server(config, move || Polite { closed: c2.clone() }, |_| {});

    let mut silent = TcpStream::connect(server.addr).unwrap();
    let mut busy = TcpStream::connect(server.addr).unwrap();
    busy.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    // Talk on `busy` every 50 ms for 600 ms: three idle timeouts' worth.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(600) {
        busy.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        busy.read_exact(&mut b).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    // The silent one got its goodbye and was closed.
    let mut got = String::new();
    silent.read_to_string(&mut got).unwrap();
    assert_eq!(got, "bye\n");
    // The server shut down its side and lingers until we close ours.
    drop(silent);
    util::wait_for("the idle close", || !closed.lock().unwrap().is_empty());
    assert_eq!(closed.lock().unwrap().as_slice(), ["Idle"]);
    // The busy one still works.
    busy.write_all(b"pong").unwrap();
    let mut b = [0u8; 4];
    busy.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"pong");
    server.stop();
}

#[test]
fn a_peer_that_never_reads_is_closed_after_the_timeout() {
    let mut config = ServerConfig::default();
    config.idle_timeout = Some(Duration::from_millis(200));
    config.high_water = 16 * 1024;
    let closed = Arc::new(Mutex::new(Vec::new()));
    let c2 = closed.clone();
    let server = util::spawn_server(config, move || util::Echo { closed: c2.clone() }, |_| {});
    let mut c = TcpStream::connect(server.addr).unwrap();
    c.set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // Fill every buffer on the way back; never read.
    let chunk = vec![1u8; 64 * 1024];
    let start = Instant::now();
    while c.write_all(&chunk).is_ok() && start.elapsed() < Duration::from_secs(5) {}
    util::wait_for("the stuck connection to close", || {
        !closed.lock().unwrap().is_empty()
    });
    assert_eq!(closed.lock().unwrap().as_slice(), ["Idle"]);
    server.stop();
}

#[test]
fn closed_connections_leave_no_timer_behind() {
    use herder_reactor::{Event, Server};
    let mut config = ServerConfig::default();
    config.idle_timeout = Some(Duration::from_millis(50));
    let closed = Arc::new(Mutex::new(Vec::new()));
    let c2 = closed.clone();
    let mut server = Server::new(config, move |_| Polite { closed: c2.clone() }).unwrap();
    let (client, conn) = util::tcp_pair();
    server
        .add_connection(
            conn,
            Polite {
                closed: closed.clone(),
            },
            &[],
        )
        .unwrap();
    drop(client);
    let mut events = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(300) {
        server
            .poll(&mut events, Some(Duration::from_millis(20)))
            .unwrap();
        assert!(
            !events.iter().any(|e| matches!(e, Event::Timer(_))),
            "an internal timer reached the caller: {events:?}"
        );
    }
    assert_eq!(closed.lock().unwrap().as_slice(), ["Eof"]);
    assert!(server.is_empty());
}

/// Lines must be complete within `limit` of their first byte; a ticker mode writes
/// `tick` at each deadline, three times, then closes.
struct Lines {
    limit: Duration,
    started: Option<Instant>,
    ticks: Option<(u32, Instant)>,
    closed: Arc<Mutex<Vec<String>>>,
}

impl Service for Lines {
    fn on_data(&mut self, input: &mut Input<'_>, out: &mut Output<'_>) -> Flow {
        if input.data() == b"tick\n" {
            input.consume(5);
            self.ticks = Some((0, Instant::now() + self.limit));
            return Flow::Continue;
        }
        while let Some(end) = input.data().iter().position(|&b| b == b'\n') {
            out.write(&input.data()[..=end]);
            input.consume(end + 1);
            self.started = None;
        }
        if !input.is_empty() {
            self.started.get_or_insert_with(Instant::now);
        }
        Flow::Continue
    }
    fn deadline(&self) -> Option<Instant> {
        match self.ticks {
            Some((_, at)) => Some(at),
            None => self.started.map(|s| s + self.limit),
        }
    }
    fn on_deadline(&mut self, out: &mut Output<'_>) -> Flow {
        if let Some((n, _)) = self.ticks {
            out.write(b"tick\n");
            if n == 2 {
                return Flow::Close;
            }
            self.ticks = Some((n + 1, Instant::now() + self.limit));
            return Flow::Continue;
        }
        out.write(b"late\n");
        Flow::Close
    }
    fn on_close(&mut self, reason: &CloseReason) {
        self.closed.lock().unwrap().push(format!("{reason:?}"));
    }
}

#[test]
fn a_service_deadline_fires_on_its_own_timer() {
    let limit = Duration::from_millis(300);
    let mut config = ServerConfig::default();
    // Far beyond the test: whatever closes a connection here is the service deadline.
    config.idle_timeout = Some(Duration::from_secs(30));
    let closed = Arc::new(Mutex::new(Vec::new()));
    let c2 = closed.clone();
    let server = util::spawn_server(
        config,
        move || Lines {
            limit,
            started: None,
            ticks: None,
            closed: c2.clone(),
        },
        |_| {},
    );
    let timeout = Some(Duration::from_secs(10));
    let mut silent = TcpStream::connect(server.addr).unwrap();
    let mut busy = TcpStream::connect(server.addr).unwrap();
    let mut ticker = TcpStream::connect(server.addr).unwrap();
    for s in [&silent, &busy, &ticker] {
        s.set_read_timeout(timeout).unwrap();
    }
    // Half a line, then silence: nothing more arrives to run the callbacks.
    let start = Instant::now();
    silent.write_all(b"half a li").unwrap();
    ticker.write_all(b"tick\n").unwrap();
    // Whole lines every 50 ms for two deadlines' worth: each line clears the deadline.
    while start.elapsed() < 2 * limit {
        busy.write_all(b"ping\n").unwrap();
        let mut b = [0u8; 5];
        busy.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping\n");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut got = String::new();
    silent.read_to_string(&mut got).unwrap();
    assert_eq!(got, "late\n");
    assert!(start.elapsed() >= limit, "closed before its deadline");
    // A deadline the service moves fires again.
    let mut got = String::new();
    ticker.read_to_string(&mut got).unwrap();
    assert_eq!(got, "tick\ntick\ntick\n");
    drop((silent, ticker));
    util::wait_for("both closes", || closed.lock().unwrap().len() == 2);
    assert_eq!(closed.lock().unwrap().as_slice(), ["Deadline", "Deadline"]);
    // The busy one is still served.
    busy.write_all(b"pong\n").unwrap();
    let mut b = [0u8; 5];
    busy.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"pong\n");
    server.stop();
}
