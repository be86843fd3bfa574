//! Listener control: pause and resume, the calls refuse keys of another kind, and
//! the connection limit pauses accepting until a connection closes.

mod util;

use herder_reactor::{LIMIT_REACHED, Server, ServerConfig};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[test]
fn pause_resume_and_wrong_kinds_of_key() {
    let closed = Arc::new(Mutex::new(Vec::new()));
    let c2 = closed.clone();
    let mut server = Server::new(ServerConfig::default(), move |_| util::Echo {
        closed: c2.clone(),
    })
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let lkey = server.add_listener(listener).unwrap();
    let (_client, conn) = util::tcp_pair();
    let ckey = server
        .add_connection(
            conn,
            util::Echo {
                closed: closed.clone(),
            },
            &[],
        )
        .unwrap();

    for r in [
        server.pause_listener(ckey),
        server.resume_listener(ckey),
        server.modify_source(
            lkey,
            herder_reactor::Interest::NONE,
            herder_reactor::Mode::Level,
        ),
    ] {
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::NotFound);
    }
    assert!(server.remove_source(ckey).is_err() && server.remove_listener(ckey).is_err());

    // Paused: a new client is not accepted (it waits in the backlog).
    server.pause_listener(lkey).unwrap();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"hi").unwrap();
    let mut events = Vec::new();
    for _ in 0..5 {
        server
            .poll(&mut events, Some(Duration::from_millis(10)))
            .unwrap();
    }
    assert_eq!(server.stats().accepted, 1, "accepted while paused");

    // Resumed: it is accepted and served.
    server.resume_listener(lkey).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.stats().accepted < 2 {
        assert!(Instant::now() < deadline);
        server
            .poll(&mut events, Some(Duration::from_millis(10)))
            .unwrap();
    }
    // Client and server share this thread: read without blocking, serving between.
    c.set_nonblocking(true).unwrap();
    let mut b = [0u8; 2];
    while c.read(&mut b).is_err() {
        assert!(Instant::now() < deadline, "no echo");
        server
            .poll(&mut events, Some(Duration::from_millis(10)))
            .unwrap();
    }
    assert_eq!(&b, b"hi");
    let listener = server.remove_listener(lkey).unwrap();
    assert_eq!(listener.local_addr().unwrap(), addr);
}

#[test]
fn at_the_connection_limit_accepting_waits_for_a_close() {
    let closed = Arc::new(Mutex::new(Vec::new()));
    let c2 = closed.clone();
    let mut config = ServerConfig::default();
    config.max_connections = Some(2);
    let mut server = Server::new(config, move |_| util::Echo { closed: c2.clone() }).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    server.add_listener(listener).unwrap();
    let mut clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.stats().accepted < 2 {
        assert!(Instant::now() < deadline, "the first two never accepted");
        server
            .poll(&mut events, Some(Duration::from_millis(10)))
            .unwrap();
    }
    // More polls: the third waits in the backlog.
    for _ in 0..10 {
        server
            .poll(&mut events, Some(Duration::from_millis(10)))
            .unwrap();
    }
    assert_eq!(server.stats().accepted, 2);
    assert!(server.is_full());
    // A connection from elsewhere is refused over the limit (and closed).
    let (_peer, conn) = util::tcp_pair();
    let err = server
        .add_connection(
            conn,
            util::Echo {
                closed: closed.clone(),
            },
            &[],
        )
        .unwrap_err();
    assert_eq!(err.to_string(), LIMIT_REACHED);

    // One closes: the waiting one is accepted and served.
    drop(clients.remove(0));
    let mut third = clients.pop().unwrap();
    third.write_all(b"x").unwrap();
    third.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    loop {
        assert!(
            Instant::now() < deadline,
            "the waiting client was never served"
        );
        server
            .poll(&mut events, Some(Duration::from_millis(10)))
            .unwrap();
        if let Ok(1) = third.read(&mut b) {
            break;
        }
    }
    assert_eq!(&b, b"x");
    assert_eq!(server.stats().accepted, 3);
}

#[cfg(unix)]
#[test]
fn a_watched_source_comes_back_by_its_type_and_an_added_one_as_before() {
    use herder_reactor::{Interest, Mode};
    use std::os::unix::net::UnixStream;
    let mut server = Server::new(ServerConfig::default(), |_| util::Echo {
        closed: Default::default(),
    })
    .unwrap();
    let (a, _a_peer) = UnixStream::pair().unwrap();
    let (b, _b_peer) = UnixStream::pair().unwrap();
    let a_local = a.local_addr().map(|s| format!("{s:?}")).unwrap();
    let watched = server.watch(a, Interest::READABLE, Mode::Level).unwrap();
    let added = server
        .add_source(Box::new(b), Interest::READABLE, Mode::Level)
        .unwrap();
    assert!(server.watched(watched).is_some());
    assert!(server.watched_mut(watched).is_some());
    assert!(server.source(watched.key()).is_some());
    assert!(server.source(added).is_some());
    // Its own type back, and nothing left behind.
    let a = server.unwatch(watched).unwrap();
    assert_eq!(format!("{:?}", a.local_addr().unwrap()), a_local);
    assert!(server.watched(watched).is_none());
    assert_eq!(
        server.unwatch(watched).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    // One added as a box comes back as that box.
    assert!(server.remove_source(added).is_ok());
    assert!(server.source(added).is_none());
}
