//! A hand-off channel's receiving side (`herder_fd::Channel::recv` and
//! `Message::into_sockets`), fed arbitrary bytes and descriptors by a peer that does
//! not follow the protocol.
//!
//! Input: the first byte chooses the channel kind (bit 0: stream with framing, else
//! seqpacket) and how many descriptors ride along (bits 1–2: 0–3, a TCP listener, a
//! UDP socket and a file); the rest is written to the socket as it is — frame headers
//! included, for a stream.
//!
//! Checks: no panic, no unbounded allocation (libFuzzer's `-rss_limit_mb`), and no
//! descriptor left open: whatever arrived is closed once its message is dropped,
//! whether it decoded or not.
#![no_main]

use herder::fd::{Channel, ChannelKind};
use libfuzzer_sys::fuzz_target;
use std::fs::File;
use std::io::IoSlice;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::OnceLock;

struct Fixtures {
    tcp: TcpListener,
    udp: UdpSocket,
    file: File,
    /// What `/proc/self/fd` shows for each of them.
    links: Vec<PathBuf>,
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
        let udp = UdpSocket::bind("127.0.0.1:0").expect("a loopback UDP socket");
        let path = std::env::temp_dir().join(format!("herder-fuzz-{}", std::process::id()));
        let file = File::create(&path).expect("a scratch file");
        let _ = std::fs::remove_file(&path);
        let link = |fd: BorrowedFd<'_>| {
            std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("readlink")
        };
        let links = vec![link(tcp.as_fd()), link(udp.as_fd()), link(file.as_fd())];
        Fixtures {
            tcp,
            udp,
            file,
            links,
        }
    })
}

/// How many open descriptors refer to the fixtures' sockets and file: 3 unless a
/// received copy was left open.
fn copies(f: &Fixtures) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|l| f.links.contains(l))
        .count()
}

fuzz_target!(|data: &[u8]| {
    let f = fixtures();
    let Some((&choice, bytes)) = data.split_first() else {
        return;
    };
    let kind = if choice & 1 == 1 {
        ChannelKind::Stream
    } else {
        ChannelKind::SeqPacket
    };
    let all: [BorrowedFd<'_>; 3] = [f.tcp.as_fd(), f.udp.as_fd(), f.file.as_fd()];
    let fds = &all[..usize::from((choice >> 1) & 3).min(3)];
    {
        let (tx, mut rx) = Channel::pair_of(kind).expect("a channel pair");
        let tx = OwnedFd::from(tx);
        // A packet too large for the socket is refused by the kernel: nothing to read.
        let _ = herder::fd::send_fds(&tx, &[IoSlice::new(bytes)], fds);
        drop(tx);
        rx.set_nonblocking(true).expect("non-blocking");
        // Read until the channel reports the end, an error or nothing more: a stream
        // may hold several frames.
        for _ in 0..64 {
            match rx.recv() {
                Ok(Some(message)) => {
                    if let Ok(received) = message.into_sockets() {
                        for r in &received {
                            assert!(r.data.len() <= bytes.len(), "data from nowhere");
                        }
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
    assert_eq!(copies(f), 3, "a received descriptor was left open");
});
