//! No descriptor leaks, on success and on every error path: the process's descriptor
//! table is the same before and after. Everything runs in one test so that no other
//! test of this binary opens descriptors meanwhile.
#![cfg(unix)]

mod util;

use herder_fd::{Channel, ChannelKind, Error, Handoff, recv_fds, send_fds};
use std::io::{IoSlice, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixStream};

const ENTRY: &str = "child_entry";

#[test]
fn child_entry() {
    if util::role().as_deref() == Some("rlimit") {
        child_at_rlimit();
    }
}

fn files(n: usize) -> Vec<std::fs::File> {
    (0..n).map(|_| tempfile::tempfile().unwrap()).collect()
}

fn borrow(files: &[std::fs::File]) -> Vec<BorrowedFd<'_>> {
    files.iter().map(|f| f.as_fd()).collect()
}

fn expect_err(r: std::io::Result<impl std::fmt::Debug>) -> Error {
    let e = r.expect_err("an error");
    Error::of(&e)
        .unwrap_or_else(|| panic!("not a herder-fd error: {e}"))
        .clone()
}

/// Runs `f` and asserts the descriptor table is the same afterwards.
fn no_leak(what: &str, f: impl FnOnce()) {
    let before = util::open_fds();
    f();
    assert_eq!(util::open_fds(), before, "{what} leaked descriptors");
}

#[test]
fn no_descriptor_leaks_on_any_path() {
    for kind in [ChannelKind::SeqPacket, ChannelKind::Stream] {
        no_leak("a successful round trip", || {
            let (mut a, mut b) = Channel::pair_of(kind).unwrap();
            let f = files(3);
            a.send(b"three", &borrow(&f)).unwrap();
            let msg = b.recv().unwrap().unwrap();
            assert_eq!(msg.fds().len(), 3);
        });

        no_leak("too many descriptors", || {
            let (mut a, _b) = Channel::pair_of(kind).unwrap();
            let f = files(254);
            assert!(matches!(
                expect_err(a.send(b"", &borrow(&f))),
                Error::TooManyFds { .. }
            ));
        });

        no_leak(
            "a frame announcing fewer descriptors than it carries",
            || {
                let (a, mut b) = Channel::pair_of(kind).unwrap();
                let f = files(2);
                // Header: version 1, no flags, 1 descriptor, 0 bytes — but two attached.
                send_fds(&a, &[IoSlice::new(&[1, 0, 1, 0, 0, 0, 0, 0])], &borrow(&f)).unwrap();
                let e = expect_err(b.recv());
                assert!(matches!(e, Error::FdCountMismatch { .. }), "{e:?}");
            },
        );

        no_leak("garbage carrying descriptors", || {
            let (a, mut b) = Channel::pair_of(kind).unwrap();
            let f = files(4);
            send_fds(&a, &[IoSlice::new(b"GET / HTTP/1.1\r\n\r\n")], &borrow(&f)).unwrap();
            assert!(matches!(expect_err(b.recv()), Error::Malformed(_)));
        });

        no_leak("a typed receive of a message with two descriptors", || {
            let (mut a, mut b) = Channel::pair_of(kind).unwrap();
            let (s1, s2) = UnixStream::pair().unwrap();
            a.send_socket(&s1, &Handoff::default()).unwrap();
            let got = b.recv_socket().unwrap().unwrap();
            assert_eq!(got.socket.kind(), herder_fd::SocketKind::UnixStream);
            drop(got);
            a.send(b"not typed", &[s1.as_fd(), s2.as_fd()]).unwrap();
            assert!(matches!(expect_err(b.recv_socket()), Error::Malformed(_)));
        });
    }

    no_leak("a stream closed mid-frame after its descriptors", || {
        let (a, mut b) = Channel::pair_of(ChannelKind::Stream).unwrap();
        let f = files(2);
        send_fds(
            &a,
            &[IoSlice::new(&[1, 0, 2, 0, 100, 0, 0, 0, b'x'])],
            &borrow(&f),
        )
        .unwrap();
        drop(a);
        let e = b.recv().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        // The stream is broken from then on.
        assert!(matches!(expect_err(b.recv()), Error::Malformed(_)));
    });

    no_leak("control data truncated by a small buffer", || {
        let (a, b) = UnixDatagram::pair().unwrap();
        let f = files(5);
        send_fds(&a, &[IoSlice::new(b"five")], &borrow(&f)).unwrap();
        let mut got: Vec<OwnedFd> = Vec::new();
        let e = expect_err(recv_fds(&b, &mut [0; 16], &mut got, 2));
        assert!(matches!(e, Error::ControlTruncated { .. }), "{e:?}");
        assert!(got.is_empty());
    });

    no_leak("a payload truncated by a small buffer", || {
        let (a, b) = UnixDatagram::pair().unwrap();
        let f = files(2);
        send_fds(&a, &[IoSlice::new(&[7; 100])], &borrow(&f)).unwrap();
        let mut got: Vec<OwnedFd> = Vec::new();
        let e = expect_err(recv_fds(&b, &mut [0; 10], &mut got, 8));
        assert_eq!(e, Error::PayloadTruncated { capacity: 10 });
        assert!(got.is_empty());
    });

    no_leak(
        "a seqpacket message larger than the receiver's limit",
        || {
            let (mut a, mut b) = Channel::pair_of(ChannelKind::SeqPacket).unwrap();
            b.set_max_payload(16);
            let f = files(1);
            a.send(&[1; 100], &borrow(&f)).unwrap();
            assert!(matches!(
                expect_err(b.recv()),
                Error::PayloadTruncated { .. }
            ));
            // The channel goes on with the next message.
            a.send(b"small", &borrow(&f)).unwrap();
            assert_eq!(b.recv().unwrap().unwrap().payload(), b"small");
        },
    );

    no_leak("a batch: sent, received, refused", || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (mut a, mut b) = Channel::pair().unwrap();
        // 253 connections in one message arrive as 253 working sockets, in order.
        // (Accepted as they come: the listen backlog is smaller than 253.)
        let (clients, conns): (Vec<_>, Vec<_>) = (0..253)
            .map(|_| {
                let c = std::net::TcpStream::connect(addr).unwrap();
                (c, listener.accept().unwrap().0)
            })
            .unzip();
        let items: Vec<_> = conns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let h = Handoff {
                    id: i as u64,
                    peer: c.local_addr().ok(),
                    data: &[],
                };
                (c, h)
            })
            .collect();
        a.send_sockets(&items).unwrap();
        let got = b.recv().unwrap().unwrap().into_sockets().unwrap();
        assert_eq!(got.len(), 253);
        for (i, r) in got.into_iter().enumerate() {
            assert_eq!(r.id, i as u64);
            assert_eq!(r.peer, conns[i].local_addr().ok());
            let s = r.into_tcp_stream().unwrap();
            assert_eq!(s.local_addr().unwrap(), conns[i].local_addr().unwrap());
        }
        // 254 are refused before anything is sent.
        let extra = std::net::TcpStream::connect(addr).unwrap();
        let mut more = items.clone();
        more.push((&extra, Handoff::default()));
        assert!(matches!(
            expect_err(a.send_sockets(&more)),
            Error::TooManyFds { count: 254, .. }
        ));
        // A batch whose record count differs from its descriptors is refused and
        // what arrived is closed.
        let f = files(1);
        a.send(&[b'B', 0, 2, 0], &borrow(&f)).unwrap();
        assert!(matches!(
            expect_err(b.recv().unwrap().unwrap().into_sockets()),
            Error::Malformed(_)
        ));
        let mut one = Vec::new();
        a.send_sockets(&[(&extra, Handoff::default())]).unwrap();
        let m = b.recv().unwrap().unwrap();
        let (payload, fds) = m.into_parts();
        one.extend_from_slice(&payload);
        drop(fds);
        a.send(&one, &borrow(&files(2))).unwrap();
        assert!(matches!(
            expect_err(b.recv().unwrap().unwrap().into_sockets()),
            Error::FdCountMismatch {
                expected: 1,
                received: 2
            }
        ));
        drop((listener, clients));
    });

    no_leak("a receiver at RLIMIT_NOFILE (child process)", || {
        let (mut ch, end) = Channel::pair_for_child().unwrap();
        let child = end
            .spawn(&mut util::child_command(ENTRY, "rlimit"))
            .unwrap();
        let f = files(64);
        ch.send(b"64", &borrow(&f)).unwrap();
        ch.send(b"1", &borrow(&f[..1])).unwrap();
        // A batch of 64 hand-offs, ids 100 to 163, for `recv_lossy`.
        let pairs: Vec<_> = (0..64).map(|_| UnixStream::pair().unwrap()).collect();
        let items: Vec<_> = pairs
            .iter()
            .zip(100..)
            .map(|((s, _), id)| {
                (
                    s,
                    Handoff {
                        id,
                        ..Default::default()
                    },
                )
            })
            .collect();
        ch.send_sockets(&items).unwrap();
        drop(items);
        drop(pairs);
        ch.send(b"1", &borrow(&f[..1])).unwrap();
        drop(ch);
        util::wait_ok(child, "rlimit child");
    });
}

/// With only a few free descriptor slots, a message of 64 descriptors fails with
/// `ControlTruncated`, the ones that arrived are closed, and the channel still works.
fn child_at_rlimit() {
    let mut ch = Channel::from_env().unwrap().expect("a channel");
    // Fill the table up to a low limit, then free three slots.
    let top = *util::open_fds().last().unwrap() as u64;
    util::set_nofile_limit(top + 16).unwrap();
    let mut fillers = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => fillers.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(fillers.len() < 4096, "the limit did not take effect");
    }
    fillers.truncate(fillers.len() - 3);
    let before = util::open_fds();
    let e = ch.recv().unwrap_err();
    match Error::of(&e) {
        Some(Error::ControlTruncated { received }) => assert!(*received < 64),
        _ => panic!("expected ControlTruncated, got {e}"),
    }
    assert_eq!(
        util::open_fds(),
        before,
        "descriptors leaked at RLIMIT_NOFILE"
    );
    drop(fillers);
    util::set_nofile_limit(1024).unwrap();
    let msg = ch.recv().unwrap().expect("the next message");
    assert_eq!((msg.payload(), msg.fds().len()), (&b"1"[..], 1));
    drop(msg);

    // Again, receiving with `recv_lossy`: the batch comes back without its
    // descriptors but with its ids, so the receiver can say which it lost.
    util::set_nofile_limit(top + 16).unwrap();
    let mut fillers = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        fillers.push(f);
    }
    fillers.truncate(fillers.len() - 3);
    let before = util::open_fds();
    let lost = ch.recv_lossy().unwrap().expect("the batch");
    assert_eq!((lost.lost_fds(), lost.fds().len()), (64, 0));
    assert_eq!(
        lost.handoff_ids().unwrap(),
        (100..164).collect::<Vec<u64>>()
    );
    assert_eq!(
        util::open_fds(),
        before,
        "descriptors leaked by recv_lossy at RLIMIT_NOFILE"
    );
    drop(fillers);
    util::set_nofile_limit(1024).unwrap();
    let msg = ch.recv_lossy().unwrap().expect("the next message");
    assert_eq!(
        (msg.payload(), msg.fds().len(), msg.lost_fds()),
        (&b"1"[..], 1, 0)
    );
    let _ = std::io::stderr().flush();
}
