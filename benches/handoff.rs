//! Descriptor hand-off cost: herder-fd's [`Channel`] next to the raw
//! `sendmsg`/`recvmsg` loop written here, on the same socketpair type, in one run;
//! for one descriptor also next to the `sendfd` and `passfd` crates.
//!
//! Each iteration sends one message carrying N descriptors and receives it in the
//! same thread (no cross-core wake-up), then closes what arrived, so both sides pay
//! for the same system calls. Run with `cargo bench --bench handoff`.
//!
//! Socket types: `raw` and `herder-fd` use a `SOCK_SEQPACKET` pair,
//! `herder-fd-stream`, `sendfd` and `passfd` a `SOCK_STREAM` pair (`UnixStream`,
//! the type both crates take). `passfd` sends its fixed 4-byte payload, the others
//! one byte (herder-fd behind its 8-byte frame header). Neither crate asks for
//! `MSG_CMSG_CLOEXEC`: what they receive is not close-on-exec, which herder-fd's and
//! the raw loop's is.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

#[cfg(unix)]
mod unix {
    use criterion::measurement::WallTime;
    use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput};
    use herder_fd::{Channel, ChannelKind};
    use std::hint::black_box;
    use std::mem;
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
    use std::os::unix::net::UnixStream;

    /// The hand-written baseline: one `sendmsg` with `SCM_RIGHTS`, one `recvmsg` with
    /// `MSG_CMSG_CLOEXEC` where it exists, the received descriptors closed.
    struct Raw {
        tx: OwnedFd,
        rx: OwnedFd,
        cmsg: Vec<u64>,
    }

    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    const RECV_FLAGS: libc::c_int = libc::MSG_CMSG_CLOEXEC;
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    const RECV_FLAGS: libc::c_int = 0;

    impl Raw {
        fn new(kind: ChannelKind) -> Raw {
            let (a, b) = Channel::pair_of(kind).unwrap();
            Raw {
                tx: a.into(),
                rx: b.into(),
                cmsg: vec![0u64; 160],
            }
        }

        fn round_trip(&mut self, fds: &[BorrowedFd<'_>], out: &mut Vec<OwnedFd>) {
            let data_len = (fds.len() * mem::size_of::<RawFd>()) as libc::c_uint;
            let mut byte = [0u8; 1];
            // SAFETY: a benchmark baseline: the buffers outlive the calls, the control
            // buffer (1280 bytes) holds 253 descriptors, every received one is owned.
            unsafe {
                let space = libc::CMSG_SPACE(data_len) as usize;
                let mut iov = libc::iovec {
                    iov_base: byte.as_mut_ptr().cast(),
                    iov_len: 1,
                };
                let mut msg: libc::msghdr = mem::zeroed();
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = self.cmsg.as_mut_ptr().cast();
                msg.msg_controllen = space as _;
                let hdr = libc::CMSG_FIRSTHDR(&msg);
                (*hdr).cmsg_level = libc::SOL_SOCKET;
                (*hdr).cmsg_type = libc::SCM_RIGHTS;
                (*hdr).cmsg_len = libc::CMSG_LEN(data_len) as _;
                let data = libc::CMSG_DATA(hdr).cast::<RawFd>();
                for (i, fd) in fds.iter().enumerate() {
                    data.add(i).write_unaligned(fd.as_raw_fd());
                }
                assert_eq!(libc::sendmsg(self.tx.as_raw_fd(), &msg, 0), 1);
                msg.msg_controllen = space as _;
                assert_eq!(libc::recvmsg(self.rx.as_raw_fd(), &mut msg, RECV_FLAGS), 1);
                let hdr = libc::CMSG_FIRSTHDR(&msg);
                let data = libc::CMSG_DATA(hdr).cast::<RawFd>();
                for i in 0..fds.len() {
                    out.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
        }
    }

    pub(crate) fn handoff(c: &mut Criterion) {
        let file = tempfile::tempfile().unwrap();
        let mut group = c.benchmark_group("handoff");
        for n in [1usize, 16, 253] {
            let fds: Vec<_> = (0..n).map(|_| file.as_fd()).collect();
            group.throughput(Throughput::Elements(n as u64));
            let mut out: Vec<OwnedFd> = Vec::with_capacity(n);

            let mut raw = Raw::new(ChannelKind::SeqPacket);
            group.bench_with_input(BenchmarkId::new("raw", n), &fds, |b, fds| {
                b.iter(|| {
                    raw.round_trip(black_box(fds), &mut out);
                    out.clear();
                })
            });

            let (mut tx, mut rx) = Channel::pair_of(ChannelKind::SeqPacket).unwrap();
            let mut payload = Vec::with_capacity(64);
            group.bench_with_input(BenchmarkId::new("herder-fd", n), &fds, |b, fds| {
                b.iter(|| {
                    tx.send(black_box(b"x"), fds).unwrap();
                    rx.recv_into(&mut payload, &mut out).unwrap();
                    out.clear();
                })
            });

            let (mut tx, mut rx) = Channel::pair_of(ChannelKind::Stream).unwrap();
            group.bench_with_input(BenchmarkId::new("herder-fd-stream", n), &fds, |b, fds| {
                b.iter(|| {
                    tx.send(black_box(b"x"), fds).unwrap();
                    rx.recv_into(&mut payload, &mut out).unwrap();
                    out.clear();
                })
            });

            if n == 1 {
                one_by_crates(&mut group, &file);
            }
        }
        group.finish();
    }

    /// The one-descriptor contenders from crates.io, each on a stream socketpair.
    fn one_by_crates(group: &mut BenchmarkGroup<'_, WallTime>, file: &std::fs::File) {
        let fd = file.as_raw_fd();

        let (tx, rx) = UnixStream::pair().unwrap();
        group.bench_with_input(BenchmarkId::new("sendfd", 1), &fd, |b, &fd| {
            use sendfd::{RecvWithFd, SendWithFd};
            let mut byte = [0u8; 1];
            let mut fds: [RawFd; 1] = [-1];
            b.iter(|| {
                assert_eq!(tx.send_with_fd(black_box(b"x"), &[fd]).unwrap(), 1);
                assert_eq!(rx.recv_with_fd(&mut byte, &mut fds).unwrap(), (1, 1));
                // SAFETY: recvmsg just installed this descriptor, and nothing else owns it.
                drop(unsafe { OwnedFd::from_raw_fd(fds[0]) });
            })
        });

        let (tx, rx) = UnixStream::pair().unwrap();
        group.bench_with_input(BenchmarkId::new("passfd", 1), &fd, |b, &fd| {
            use passfd::FdPassingExt;
            b.iter(|| {
                tx.send_fd(black_box(fd)).unwrap();
                let got = rx.recv_fd().unwrap();
                // SAFETY: recvmsg just installed this descriptor, and nothing else owns it.
                drop(unsafe { OwnedFd::from_raw_fd(got) });
            })
        });
    }
}

#[cfg(unix)]
criterion::criterion_group!(benches, unix::handoff);
#[cfg(unix)]
criterion::criterion_main!(benches);

#[cfg(not(unix))]
fn main() {}
