//! `AsyncChannel` on a tokio runtime: sockets and large messages both ways through
//! full socket buffers, on both channel kinds, and the end of the channel.
#![cfg(all(unix, feature = "tokio"))]

use herder_fd::tokio::AsyncChannel;
use herder_fd::{Channel, ChannelKind, Handoff};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn sockets_and_large_messages_cross_on_a_runtime() {
    for kind in [ChannelKind::SeqPacket, ChannelKind::Stream] {
        runtime().block_on(async {
            let (a, b) = Channel::pair_of(kind).unwrap();
            let (mut tx, mut rx) = (AsyncChannel::new(a).unwrap(), AsyncChannel::new(b).unwrap());
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let conns: Vec<TcpStream> = (0..100)
                .map(|_| TcpStream::connect(listener.local_addr().unwrap()).unwrap())
                .collect();
            let local: Vec<_> = conns.iter().map(|c| c.local_addr().unwrap()).collect();
            // (Fewer connections than the listen backlog: nobody accepts them.)
            // The sender runs ahead of the receiver: its socket fills up, and every
            // send waits for room instead of failing with WouldBlock.
            let big = vec![7u8; 200_000];
            let sender = tokio::spawn(async move {
                for (i, c) in conns.iter().enumerate() {
                    let meta = Handoff {
                        id: i as u64,
                        ..Default::default()
                    };
                    tx.send_socket(c, &meta).await.unwrap();
                    if i % 50 == 0 {
                        let file = tempfile::tempfile().unwrap();
                        tx.send(
                            &big[..big.len().min(tx.get_ref().max_payload())],
                            &[file.as_fd()],
                        )
                        .await
                        .unwrap();
                    }
                }
                drop(tx);
            });
            let mut got = Vec::new();
            let mut large = 0;
            while let Some(message) = rx.recv().await.unwrap() {
                if message.payload().iter().all(|&b| b == 7) && message.payload().len() > 1000 {
                    assert_eq!(message.fds().len(), 1);
                    large += 1;
                    continue;
                }
                let r = message.into_socket().unwrap();
                let stream = r.into_tcp_stream().unwrap();
                // The received socket is the very connection: same local address.
                got.push(stream.local_addr().unwrap());
            }
            sender.await.unwrap();
            assert_eq!(got, local, "{kind:?}: every socket, in order");
            assert_eq!(large, 2, "{kind:?}");
        });
    }
}

#[test]
fn recv_socket_ends_with_the_channel() {
    runtime().block_on(async {
        let (a, b) = Channel::pair().unwrap();
        let mut rx = AsyncChannel::new(b).unwrap();
        drop(a);
        assert!(rx.recv_socket().await.unwrap().is_none());
        assert!(rx.into_inner().recv().unwrap().is_none());
    });
}
