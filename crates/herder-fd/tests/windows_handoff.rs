//! Windows: a parent process hands an accepted TCP connection to a child process,
//! which serves it; the client sees the child's reply. The child is this test binary
//! re-run in a child role; the channel is a loopback TCP connection. Batches of
//! sockets travel without acknowledgements, and a non-blocking channel keeps the part
//! of a message that has arrived or not yet gone.
#![cfg(windows)]

use herder_fd::{Channel, Handoff};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROLE_ENV: &str = "HERDER_FD_TEST_ROLE";
const PORT_ENV: &str = "HERDER_FD_TEST_PORT";

#[test]
fn child_entry() {
    if std::env::var(ROLE_ENV).as_deref() == Ok("serve") {
        let port: u16 = std::env::var(PORT_ENV).unwrap().parse().unwrap();
        let ctrl = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let parent_pid = 0; // the child only receives; it duplicates nothing
        let mut ch = Channel::new(ctrl, parent_pid);
        let got = ch.recv_socket().unwrap().expect("a socket");
        let id = got.id;
        let data = got.data.clone();
        let mut conn = got.into_tcp_stream().expect("a TcpStream");
        let mut buf = Vec::new();
        conn.read_to_end(&mut buf).unwrap();
        write!(conn, "child {} served #{id}: ", std::process::id()).unwrap();
        conn.write_all(&data).unwrap();
        conn.write_all(&buf).unwrap();
        ch.send(b"done").unwrap();
    }
}

#[test]
fn hands_an_accepted_connection_to_a_child_process() {
    let ctrl_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, "serve")
        .env(
            PORT_ENV,
            ctrl_listener.local_addr().unwrap().port().to_string(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (ctrl, _) = ctrl_listener.accept().unwrap();
    let mut ch = Channel::new(ctrl, child.id());

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (conn, peer) = listener.accept().unwrap();
    ch.send_socket(
        &conn,
        &Handoff {
            id: 9,
            peer: Some(peer),
            data: b"early|",
        },
    )
    .unwrap();
    drop(conn); // the child acknowledged: it has its own socket

    client.write_all(b"hello").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reply = String::new();
    client.read_to_string(&mut reply).unwrap();
    assert_eq!(
        reply,
        format!("child {} served #9: early|hello", child.id())
    );
    assert_eq!(ch.recv().unwrap().unwrap().payload(), b"done");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "child failed: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "child did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_refused_socket_is_reported_to_the_sender_instead_of_blocking_it() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    let (conn, _) = (
        TcpStream::connect(l.local_addr().unwrap()).unwrap(),
        l.accept().unwrap(),
    );
    let sender = std::thread::spawn(move || {
        let mut tx = Channel::new(a, std::process::id());
        tx.send_socket(&conn, &Handoff::default())
    });
    let mut rx = Channel::new(b, std::process::id());
    // A plain receive refuses the socket frame.
    assert!(rx.recv().is_err());
    let sent = sender.join().unwrap();
    assert!(sent.is_err(), "the sender must learn of the refusal");
}

/// A connected loopback pair.
fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    (a, b)
}

#[test]
fn a_batch_of_sockets_travels_without_an_acknowledgement() {
    let (a, b) = pair();
    let me = std::process::id();
    let mut tx = Channel::new(a, me);
    let mut rx = Channel::new(b, me);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut clients = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..3 {
        clients.push(TcpStream::connect(l.local_addr().unwrap()).unwrap());
        conns.push(l.accept().unwrap().0);
    }
    let items: Vec<(&TcpStream, Handoff<'_>)> = conns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            (
                c,
                Handoff {
                    id: 10 + i as u64,
                    peer: None,
                    data: b"d",
                },
            )
        })
        .collect();
    // Returns at once: nobody reads yet.
    tx.send_sockets(&items).unwrap();
    tx.send(b"after").unwrap();
    let message = rx.recv().unwrap().expect("the batch");
    assert_eq!(message.lost_fds(), 0);
    assert_eq!(message.handoff_ids().unwrap(), [10, 11, 12]);
    let got = message.into_sockets().unwrap();
    // The receiver has its own copies: the sender's may go.
    drop(items);
    drop(conns);
    // Each socket is the connection its record names: its client hears its id.
    for (i, (r, client)) in got.into_iter().zip(&mut clients).enumerate() {
        assert_eq!(r.data, b"d");
        let id = r.id;
        let mut conn = r.into_tcp_stream().expect("a TcpStream");
        write!(conn, "#{id}").unwrap();
        drop(conn);
        client
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut reply = String::new();
        client.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, format!("#{}", 10 + i));
    }
    assert_eq!(rx.recv().unwrap().unwrap().payload(), b"after");
    // A batch of one is what `recv_socket` takes, too.
    let (client, conn) = (
        TcpStream::connect(l.local_addr().unwrap()).unwrap(),
        l.accept().unwrap().0,
    );
    tx.send_sockets(&[(
        &conn,
        Handoff {
            id: 5,
            ..Default::default()
        },
    )])
    .unwrap();
    let got = rx.recv_socket().unwrap().expect("a socket");
    assert_eq!(got.id, 5);
    drop((client, conn, got));
    // Too many for one message: refused before anything is sent.
    let one = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let many: Vec<(&TcpStream, Handoff<'_>)> = (0..=herder_fd::MAX_SOCKETS_PER_MESSAGE)
        .map(|_| (&one, Handoff::default()))
        .collect();
    assert!(tx.send_sockets(&many).is_err());
    assert!(tx.send_sockets::<TcpStream>(&[]).is_ok());
    tx.send(b"still framed").unwrap();
    assert_eq!(rx.recv().unwrap().unwrap().payload(), b"still framed");
}

#[test]
fn a_non_blocking_receiver_keeps_the_part_of_a_message_that_arrived() {
    let (mut raw, b) = pair();
    b.set_nonblocking(true).unwrap();
    let mut rx = Channel::new(b, 0);
    let would_block = |rx: &mut Channel| {
        let e = rx.recv().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
    };
    would_block(&mut rx);
    // One frame: version 1, no flags, no sockets, a 10-byte payload; written in three
    // pieces, the header itself cut in two.
    let mut frame = vec![1u8, 0, 0, 0, 10, 0, 0, 0];
    frame.extend_from_slice(b"0123456789");
    for piece in [&frame[..5], &frame[5..12]] {
        raw.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        would_block(&mut rx);
    }
    raw.write_all(&frame[12..]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let message = loop {
        match rx.recv() {
            Ok(m) => break m.expect("a message"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "the rest never arrived");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(message.payload(), b"0123456789");
    drop(raw);
    let end = loop {
        match rx.recv() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => break other,
        }
    };
    assert!(end.unwrap().is_none(), "a clean end of stream");
}

#[test]
fn a_non_blocking_sender_keeps_the_tail_of_a_message_the_stream_took_in_part() {
    let (a, b) = pair();
    a.set_nonblocking(true).unwrap();
    let mut tx = Channel::new(a, 0);
    let big = vec![7u8; herder_fd::DEFAULT_MAX_PAYLOAD];
    // Nobody reads: the stream fills.
    let mut sent = 0usize;
    let full = loop {
        match tx.send(&big) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 100_000, "the stream never filled");
    };
    assert_eq!(full.kind(), std::io::ErrorKind::WouldBlock, "{full}");
    // Every message taken, in whole or in part, arrives whole once read.
    let reader = std::thread::spawn(move || {
        let mut rx = Channel::new(b, 0);
        let mut n = 0usize;
        while let Some(m) = rx.recv().unwrap() {
            assert_eq!(m.payload().len(), herder_fd::DEFAULT_MAX_PAYLOAD);
            assert!(m.payload().iter().all(|&x| x == 7));
            n += 1;
        }
        n
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while tx.has_pending_output() {
        match tx.flush() {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "never flushed");
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("{e}"),
        }
    }
    drop(tx);
    assert_eq!(reader.join().unwrap(), sent);
}
