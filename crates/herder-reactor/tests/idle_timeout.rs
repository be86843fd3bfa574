//! A connection that is silent for the idle timeout is asked, then closed; one that
//! keeps talking is not.

mod util;

use herder_reactor::{CloseReason, Config, Flow, Input, Output, Service};
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
    let mut config = Config::default();
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
    let mut config = Config::default();
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
    let mut config = Config::default();
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
