//! Message boundaries: interleaved messages with and without descriptors, of every
//! size up to the limit, arrive as sent, on both channel kinds.
#![cfg(unix)]

use herder_fd::{Channel, ChannelKind, DEFAULT_MAX_PAYLOAD, Error};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

const SIZES: [usize; 9] = [0, 1, 7, 8, 9, 1000, 4096, 60_000, DEFAULT_MAX_PAYLOAD];

fn payload(i: usize) -> Vec<u8> {
    let len = SIZES[i % SIZES.len()];
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
}

fn nfds(i: usize) -> usize {
    [0, 1, 0, 3, 2][i % 5]
}

fn interleaved(kind: ChannelKind) {
    const N: usize = 300;
    let (mut tx, mut rx) = Channel::pair_of(kind).unwrap();
    let sender = std::thread::spawn(move || {
        for i in 0..N {
            let files: Vec<_> = (0..nfds(i))
                .map(|k| {
                    let mut f = tempfile::tempfile().unwrap();
                    write!(f, "{i}.{k}").unwrap();
                    f
                })
                .collect();
            let fds: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
            tx.send(&payload(i), &fds).unwrap();
        }
    });
    let (mut buf, mut fds) = (Vec::new(), Vec::new());
    for i in 0..N {
        fds.clear();
        assert!(
            rx.recv_into(&mut buf, &mut fds).unwrap(),
            "message {i} missing"
        );
        assert_eq!(buf, payload(i), "payload of message {i}");
        assert_eq!(fds.len(), nfds(i), "descriptors of message {i}");
        for (k, fd) in fds.drain(..).enumerate() {
            let mut s = [0u8; 16];
            let n = std::fs::File::from(fd).read_at(&mut s, 0).unwrap();
            assert_eq!(&s[..n], format!("{i}.{k}").as_bytes());
        }
    }
    sender.join().unwrap();
    assert!(
        rx.recv().unwrap().is_none(),
        "end of stream after the last message"
    );
}

#[test]
fn interleaved_messages_arrive_as_sent_on_seqpacket() {
    interleaved(ChannelKind::SeqPacket);
}

#[test]
fn interleaved_messages_arrive_as_sent_on_a_stream() {
    interleaved(ChannelKind::Stream);
}

#[test]
fn oversized_messages_are_refused_before_sending() {
    for kind in [ChannelKind::SeqPacket, ChannelKind::Stream] {
        let (mut tx, mut rx) = Channel::pair_of(kind).unwrap();
        rx.set_nonblocking(true).unwrap();
        let e = tx.send(&vec![0; DEFAULT_MAX_PAYLOAD + 1], &[]).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert!(matches!(Error::of(&e), Some(Error::MessageTooLarge { .. })));
        assert_eq!(
            rx.recv().unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
    }
}

#[test]
fn garbage_breaks_a_stream_but_not_a_seqpacket_channel() {
    use std::os::fd::OwnedFd;
    for kind in [ChannelKind::SeqPacket, ChannelKind::Stream] {
        let (tx, mut rx) = Channel::pair_of(kind).unwrap();
        let raw = OwnedFd::from(tx);
        let mut sock = std::os::unix::net::UnixStream::from(raw.try_clone().unwrap());
        if kind == ChannelKind::Stream {
            sock.write_all(b"\x02garbage").unwrap();
        } else {
            herder_fd::send_fds(&raw, &[std::io::IoSlice::new(b"\x02garbage")], &[]).unwrap();
        }
        let mut tx = Channel::new(raw).unwrap();
        tx.send(b"valid", &[]).unwrap();
        let e = rx.recv().unwrap_err();
        assert!(matches!(Error::of(&e), Some(Error::Malformed(_))), "{e}");
        match kind {
            ChannelKind::SeqPacket => assert_eq!(rx.recv().unwrap().unwrap().payload(), b"valid"),
            ChannelKind::Stream => assert!(rx.recv().is_err()),
        }
    }
}
