//! When a new connection is first read ([`FirstRead`]), and how it leaves the
//! poller: clients that send as they connect and clients that send later are
//! served under every rule, and a connection whose descriptor has another copy
//! (as a handed-over one has until its sender closes it) never wakes the loop
//! once the server has closed it, whether the server or the peer ended it.

mod util;

use herder_reactor::{FirstRead, Flow, Input, Output, Server, ServerConfig, Service};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Replies `ok <bytes>` to each read; after `bye` the exchange is over: the
/// server closes at once (no lingering).
struct Reply;

impl Service for Reply {
    fn on_data(&mut self, input: &mut Input<'_>, out: &mut Output<'_>) -> Flow {
        let data = input.data().to_vec();
        input.consume(data.len());
        out.write(b"ok ");
        out.write(&data);
        if data.ends_with(b"bye") {
            Flow::Done
        } else {
            Flow::Continue
        }
    }

    /// Says so, and goes on: a drain gives the connection something to write.
    fn on_drain(&mut self, _idle: bool, out: &mut Output<'_>) -> Flow {
        out.write(b"drain ");
        Flow::Continue
    }
}

fn config(first_read: FirstRead) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.first_read = first_read;
    config
}

const RULES: [FirstRead; 3] = [FirstRead::WhenReady, FirstRead::AtOnce, FirstRead::Learn];

/// Polls `server` until `done` holds (panics after 10 s).
fn serve_until(server: &mut Server<Reply>, done: impl Fn(&Server<Reply>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut events = Vec::new();
    while !done(server) {
        assert!(Instant::now() < deadline, "the server did not get there");
        server
            .poll(&mut events, Some(Duration::from_millis(20)))
            .unwrap();
    }
}

/// Reads from `client` until `want` bytes came (panics after 10 s).
fn read_exactly(client: &mut TcpStream, want: usize) -> Vec<u8> {
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = vec![0; want];
    client.read_exact(&mut got).unwrap();
    got
}

/// Sends `msg` and polls `server` until `client` has the `want` bytes of reply.
fn exchange(
    server: &mut Server<Reply>,
    client: &mut TcpStream,
    msg: &[u8],
    want: usize,
) -> Vec<u8> {
    client.write_all(msg).unwrap();
    client.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    let mut events = Vec::new();
    while got.len() < want {
        assert!(Instant::now() < deadline, "no reply to {msg:?}");
        server
            .poll(&mut events, Some(Duration::from_millis(20)))
            .unwrap();
        let mut buf = [0; 64];
        match client.read(&mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
    }
    client.set_nonblocking(false).unwrap();
    got
}

/// How many of five polls of 50 ms returned early: none may, with nothing to
/// report. (A registration left behind for a closed descriptor whose socket is
/// still readable would return each of them at once.)
fn early_polls(server: &mut Server<Reply>) -> usize {
    let mut events = Vec::new();
    (0..5)
        .filter(|_| {
            let start = Instant::now();
            server
                .poll(&mut events, Some(Duration::from_millis(50)))
                .unwrap();
            assert!(events.is_empty(), "{events:?}");
            // A poll may end a little early on a coarse clock; never at once.
            start.elapsed() < Duration::from_millis(25)
        })
        .count()
}

/// A connection handed to `server` by a sender that keeps its copy: the client's
/// end (blocking) and the sender's copy. One poll gives it to the poller (after a
/// first read, under the rules that make one, which finds nothing).
fn handed_over(server: &mut Server<Reply>) -> (TcpStream, TcpStream) {
    let (client, conn) = util::tcp_pair();
    client.set_nonblocking(false).unwrap();
    let senders_copy = conn.try_clone().unwrap();
    server.add_connection(conn, Reply, &[]).unwrap();
    let mut events = Vec::new();
    server
        .poll(&mut events, Some(Duration::from_millis(20)))
        .unwrap();
    (client, senders_copy)
}

#[test]
fn accepted_clients_that_send_first_or_later_are_served_under_every_rule() {
    for rule in RULES {
        let mut server = Server::new(config(rule), |_| Reply).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        server.add_listener(listener).unwrap();

        // Sends as it connects: its first read finds the request.
        let mut eager = TcpStream::connect(addr).unwrap();
        eager.write_all(b"bye").unwrap();
        serve_until(&mut server, |s| s.stats().accepted == 1);
        // Sends only once the server has it: its first read (if made) finds
        // nothing, and the poller reports the request.
        let mut late = TcpStream::connect(addr).unwrap();
        serve_until(&mut server, |s| s.stats().accepted == 2);
        let reply = exchange(&mut server, &mut late, b"hello", 8);
        assert_eq!(reply, b"ok hello", "{rule:?}");
        late.write_all(b"bye").unwrap();
        serve_until(&mut server, |s| s.is_empty());

        for mut client in [eager, late] {
            let mut reply = Vec::new();
            client.read_to_end(&mut reply).unwrap();
            assert_eq!(reply, b"ok bye", "{rule:?}");
        }
    }
}

#[test]
fn a_closed_connection_with_another_copy_never_wakes_the_loop() {
    for rule in RULES {
        let mut server = Server::new(config(rule), |_| Reply).unwrap();

        // The server closes first (a reply that ends it), while the sender's copy
        // keeps the socket open; the peer then sends and hangs up.
        let (mut client, senders_copy) = handed_over(&mut server);
        client.write_all(b"bye").unwrap();
        serve_until(&mut server, |s| s.is_empty());
        assert_eq!(read_exactly(&mut client, 6), b"ok bye", "{rule:?}");
        client.write_all(b"more").unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(early_polls(&mut server), 0, "{rule:?}: closed first");

        // Served on over several reads, then the peer ends it.
        let (mut client, senders_second_copy) = handed_over(&mut server);
        for i in 0..3 {
            let msg = format!("m{i}");
            let reply = exchange(&mut server, &mut client, msg.as_bytes(), 5);
            assert_eq!(reply, format!("ok {msg}").as_bytes(), "{rule:?}");
        }
        client.shutdown(std::net::Shutdown::Write).unwrap();
        serve_until(&mut server, |s| s.is_empty());
        assert_eq!(early_polls(&mut server), 0, "{rule:?}: ended by the peer");
        drop((senders_copy, senders_second_copy));
    }
}

#[test]
fn the_same_socket_added_again_after_a_close_is_served() {
    // A sender keeps its copy and hands the connection over twice (say, to a
    // server that closed it after one exchange); the descriptor the server gets
    // the second time is likely the same number as the first.
    for rule in RULES {
        let mut server = Server::new(config(rule), |_| Reply).unwrap();
        let (mut client, conn) = util::tcp_pair();
        client.set_nonblocking(false).unwrap();
        for round in 0..2 {
            server
                .add_connection(conn.try_clone().unwrap(), Reply, &[])
                .unwrap();
            let mut events = Vec::new();
            server
                .poll(&mut events, Some(Duration::from_millis(20)))
                .unwrap();
            let reply = exchange(&mut server, &mut client, b"bye", 6);
            assert_eq!(reply, b"ok bye", "{rule:?}, round {round}");
            serve_until(&mut server, |s| s.is_empty());
        }
        assert_eq!(server.stats().accepted, 2);
    }
}

#[test]
fn a_connection_drained_before_its_first_report_is_served_and_never_wakes_the_loop() {
    for rule in RULES {
        let mut server = Server::new(config(rule), |_| Reply).unwrap();
        let (mut client, senders_copy) = handed_over(&mut server);
        // Before anything is reported for it, a drain starts and the service
        // writes; the request that ends the connection is there by the first
        // report.
        server.drain(Instant::now() + Duration::from_secs(30));
        let reply = exchange(&mut server, &mut client, b"bye", 12);
        assert_eq!(reply, b"drain ok bye", "{rule:?}");
        serve_until(&mut server, |s| s.is_empty());
        client.write_all(b"more").unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(early_polls(&mut server), 0, "{rule:?}");
        drop(senders_copy);
    }
}
