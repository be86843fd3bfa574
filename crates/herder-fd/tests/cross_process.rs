//! Descriptors handed to another process work there: files are read, a TCP
//! connection is served. The child is this test binary, re-run in a child role.
#![cfg(unix)]

mod util;

use herder_fd::{Channel, Error, Handoff, MAX_FDS_PER_MESSAGE};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;

const ENTRY: &str = "child_entry";

/// Runs the child side when this binary was started in a child role; a no-op otherwise.
#[test]
fn child_entry() {
    match util::role().as_deref() {
        Some("files") => child_files(),
        Some("echo") => child_echo(),
        _ => {}
    }
}

fn file_with(content: &str) -> std::fs::File {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(content.as_bytes()).unwrap();
    f
}

#[test]
fn hands_1_2_and_253_descriptors_to_a_child() {
    let (mut ch, end) = Channel::pair_for_child().unwrap();
    let child = end.spawn(&mut util::child_command(ENTRY, "files")).unwrap();
    for n in [1usize, 2, MAX_FDS_PER_MESSAGE] {
        let files: Vec<_> = (0..n).map(|i| file_with(&format!("{n}:{i}"))).collect();
        let fds: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
        ch.send(n.to_string().as_bytes(), &fds).unwrap();
        let reply = ch.recv().unwrap().expect("a reply");
        assert_eq!(reply.payload(), format!("ok {n}").as_bytes());
    }

    // One more than the limit is refused before the system call, leaking nothing.
    let files: Vec<_> = (0..MAX_FDS_PER_MESSAGE + 1)
        .map(|i| file_with(&format!("x{i}")))
        .collect();
    let fds: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
    let before = util::open_fds();
    let err = ch.send(b"254", &fds).unwrap_err();
    assert!(
        matches!(
            Error::of(&err),
            Some(Error::TooManyFds {
                count: 254,
                max: 253
            })
        ),
        "{err}"
    );
    assert_eq!(util::open_fds(), before);
    // Split in two, the same 254 arrive.
    ch.send(b"253+", &fds[..253]).unwrap();
    assert_eq!(ch.recv().unwrap().unwrap().payload(), b"ok 253+");
    ch.send(b"+1", &fds[253..]).unwrap();
    assert_eq!(ch.recv().unwrap().unwrap().payload(), b"ok +1");
    drop(ch); // end of stream: the child checks its descriptor table and exits.
    util::wait_ok(child, "files child");
}

fn child_files() {
    let mut ch = Channel::from_env()
        .unwrap()
        .expect("a channel from the parent");
    let baseline = util::open_fds();
    while let Some(msg) = ch.recv().unwrap() {
        let (payload, fds) = msg.into_parts();
        let tag = String::from_utf8(payload).unwrap();
        let (n, prefix, first) = match tag.as_str() {
            "253+" => (253, "x".to_string(), 0),
            "+1" => (1, "x".to_string(), 253),
            n => (n.parse().unwrap(), format!("{n}:"), 0),
        };
        assert_eq!(fds.len(), n, "descriptors in message {tag}");
        for (i, fd) in fds.into_iter().enumerate() {
            assert!(herder_fd::is_cloexec(&fd).unwrap());
            let file = std::fs::File::from(fd);
            let mut buf = [0u8; 16];
            let len = file.read_at(&mut buf, 0).unwrap();
            assert_eq!(&buf[..len], format!("{prefix}{}", first + i).as_bytes());
        }
        ch.send(format!("ok {tag}").as_bytes(), &[]).unwrap();
    }
    assert_eq!(util::open_fds(), baseline, "the child leaked descriptors");
}

#[test]
fn hands_an_accepted_tcp_connection_to_a_child() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (conn, peer) = listener.accept().unwrap();

    let (mut ch, end) = Channel::pair_for_child().unwrap();
    let child = end.spawn(&mut util::child_command(ENTRY, "echo")).unwrap();
    ch.send_socket(
        &conn,
        &Handoff {
            id: 42,
            peer: Some(peer),
            data: b"early bytes|",
        },
    )
    .unwrap();
    drop(conn);
    let ack = ch.recv().unwrap().unwrap();
    assert_eq!(ack.payload(), format!("42 {peer}").as_bytes());

    client.write_all(b"hello from the client").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    client.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "early bytes|hello from the client");
    util::wait_ok(child, "echo child");
}

fn child_echo() {
    let mut ch = Channel::from_env()
        .unwrap()
        .expect("a channel from the parent");
    let got = ch.recv_socket().unwrap().expect("a socket");
    let peer = got.peer.expect("a peer address");
    ch.send(format!("{} {peer}", got.id).as_bytes(), &[])
        .unwrap();
    let data = got.data.clone();
    let mut conn = got.into_tcp_stream().expect("a TcpStream");
    assert!(herder_fd::is_cloexec(&conn).unwrap());
    conn.write_all(&data).unwrap();
    let mut buf = Vec::new();
    conn.read_to_end(&mut buf).unwrap();
    conn.write_all(&buf).unwrap();
    let _: OwnedFd = conn.into();
}
