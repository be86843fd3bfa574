//! Windows: a parent process hands an accepted TCP connection to a child process,
//! which serves it; the client sees the child's reply. The child is this test binary
//! re-run in a child role; the channel is a loopback TCP connection.
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
