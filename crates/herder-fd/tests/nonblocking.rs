//! Non-blocking use: `WouldBlock` on an empty channel and on a full one, and nothing
//! lost or duplicated around it.
#![cfg(unix)]

use herder_fd::{Channel, ChannelKind};
use std::io::ErrorKind;
use std::os::fd::AsFd;

#[test]
fn would_block_on_an_empty_channel() {
    for kind in [ChannelKind::SeqPacket, ChannelKind::Stream] {
        let (_tx, mut rx) = Channel::pair_of(kind).unwrap();
        rx.set_nonblocking(true).unwrap();
        assert_eq!(rx.recv().unwrap_err().kind(), ErrorKind::WouldBlock);
        assert_eq!(rx.recv_socket().unwrap_err().kind(), ErrorKind::WouldBlock);
    }
}

/// Fills the channel until `WouldBlock`, then drains it: every message accepted by
/// `send` arrives once, whole, with its descriptor, and the refused one never does.
fn fill_and_drain(kind: ChannelKind, len: usize) {
    let (mut tx, mut rx) = Channel::pair_of(kind).unwrap();
    tx.set_nonblocking(true).unwrap();
    rx.set_nonblocking(true).unwrap();
    let file = tempfile::tempfile().unwrap();
    let msg = |i: u32| -> Vec<u8> {
        (0..len)
            .map(|j| (i as usize + j) as u8)
            .chain(i.to_le_bytes())
            .collect()
    };

    let mut sent = 0u32;
    loop {
        match tx.send(&msg(sent), &[file.as_fd()]) {
            Ok(()) => sent += 1,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("after {sent} messages: {e}"),
        }
        assert!(sent < 100_000, "the channel never filled up");
    }
    assert!(sent > 0);
    // Still full: a second attempt is refused too.
    assert_eq!(
        tx.send(b"x", &[]).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );

    let mut got = 0u32;
    for _ in 0..1_000_000 {
        if got == sent {
            break;
        }
        if tx.has_pending_output() {
            match tx.flush() {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        match rx.recv() {
            Ok(Some(m)) => {
                assert_eq!(m.payload(), msg(got), "message {got}");
                assert_eq!(m.fds().len(), 1);
                got += 1;
            }
            Ok(None) => panic!("end of stream"),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(got, sent, "messages lost");
    assert!(!tx.has_pending_output());
    assert_eq!(rx.recv().unwrap_err().kind(), ErrorKind::WouldBlock);
}

#[test]
fn would_block_on_a_full_seqpacket_channel() {
    fill_and_drain(ChannelKind::SeqPacket, 100);
}

#[test]
fn would_block_on_a_full_stream_channel() {
    // Messages larger than the socket buffer's free space force partial writes.
    fill_and_drain(ChannelKind::Stream, 3000);
}
