//! The typed layer: a socket with a small header — a connection id, the peer address
//! and bytes already read from the connection.
//!
//! Payload layout (inside a [`frame`](crate::frame)):
//!
//! ```text
//! byte 0      b'H'
//! byte 1      socket kind (SocketKind as u8)
//! byte 2      peer address family: 0 none, 4 IPv4, 6 IPv6
//! byte 3      reserved, 0
//! bytes 4..12 id, u64 little-endian
//! IPv4 peer:  4 address bytes, u16 port (LE)
//! IPv6 peer:  16 address bytes, u16 port, u32 flowinfo, u32 scope id (LE)
//! rest        data already read from the connection
//! ```
//!
//! A batch ([`Channel::send_sockets`](crate::Channel::send_sockets), Unix) carries one
//! descriptor per record:
//!
//! ```text
//! byte 0      b'B'
//! byte 1      reserved, 0
//! bytes 2..4  number of records, u16 little-endian
//! records     each a u32 length (LE) and a single hand-off payload as above
//! ```

use crate::error::Error;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

const TAG: u8 = b'H';
const BATCH_TAG: u8 = b'B';
/// A batch's header: tag, reserved, count.
pub(crate) const BATCH_HEADER_LEN: usize = 4;
/// A batch record's length prefix.
pub(crate) const RECORD_PREFIX_LEN: usize = 4;
/// The longest typed header: tag, kind, family, reserved, id, an IPv6 address.
pub(crate) const MAX_META_LEN: usize = 4 + 8 + 16 + 2 + 4 + 4;

/// What kind of socket a hand-off carries, so the receiver rebuilds the right type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum SocketKind {
    /// A connected TCP socket ([`std::net::TcpStream`]).
    TcpStream = 1,
    /// A listening TCP socket ([`std::net::TcpListener`]).
    TcpListener = 2,
    /// A UDP socket ([`std::net::UdpSocket`]).
    UdpSocket = 3,
    /// A connected Unix stream socket (`std::os::unix::net::UnixStream`).
    UnixStream = 4,
    /// A listening Unix socket (`std::os::unix::net::UnixListener`).
    UnixListener = 5,
    /// A Unix datagram socket (`std::os::unix::net::UnixDatagram`).
    UnixDatagram = 6,
}

impl SocketKind {
    fn from_u8(b: u8) -> Option<SocketKind> {
        Some(match b {
            1 => SocketKind::TcpStream,
            2 => SocketKind::TcpListener,
            3 => SocketKind::UdpSocket,
            4 => SocketKind::UnixStream,
            5 => SocketKind::UnixListener,
            6 => SocketKind::UnixDatagram,
            _ => return None,
        })
    }
}

/// What travels with a socket: set by the sender, returned to the receiver in
/// [`Received`](crate::Received).
///
/// # Examples
///
/// ```
/// let meta = herder_fd::Handoff { id: 7, peer: "127.0.0.1:5000".parse().ok(), data: b"GET /" };
/// assert_eq!(meta.id, 7);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Handoff<'a> {
    /// An identifier of the sender's choosing, e.g. a connection number.
    pub id: u64,
    /// The remote address of the connection, if it has one.
    pub peer: Option<SocketAddr>,
    /// Bytes the sender already read from the connection, to be processed first.
    pub data: &'a [u8],
}

/// One hand-off's header and data, as a message payload.
pub(crate) fn encoded(kind: SocketKind, h: &Handoff<'_>) -> Vec<u8> {
    let mut payload = Vec::with_capacity(MAX_META_LEN + h.data.len());
    append(kind, h, &mut payload);
    payload
}

/// Encodes a batch of hand-offs of one kind. The caller checks that there are at most
/// `u16::MAX` (in practice `MAX_FDS_PER_MESSAGE` on Unix, `MAX_SOCKETS_PER_MESSAGE` on Windows).
pub(crate) fn encode_batch<'a>(
    kind: SocketKind,
    items: impl ExactSizeIterator<Item = &'a Handoff<'a>>,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(&[BATCH_TAG, 0]);
    out.extend_from_slice(&(items.len() as u16).to_le_bytes());
    for h in items {
        let at = out.len();
        out.extend_from_slice(&[0; RECORD_PREFIX_LEN]);
        append(kind, h, out);
        let len = (out.len() - at - RECORD_PREFIX_LEN) as u32;
        out[at..at + RECORD_PREFIX_LEN].copy_from_slice(&len.to_le_bytes());
    }
}

/// Whether a payload is a batch rather than a single hand-off.
pub(crate) fn is_batch(p: &[u8]) -> bool {
    p.first() == Some(&BATCH_TAG)
}

/// Splits a batch into its records: each record's metadata, and the range of the
/// payload that holds its data.
pub(crate) fn decode_batch(p: &[u8]) -> io::Result<Vec<(Meta, std::ops::Range<usize>)>> {
    let bad = |what| -> io::Error { Error::Malformed(what).into() };
    if p.len() < BATCH_HEADER_LEN || p[0] != BATCH_TAG || p[1] != 0 {
        return Err(bad("not a hand-off batch"));
    }
    let count = u16::from_le_bytes([p[2], p[3]]) as usize;
    // Every record needs its prefix and a 12-byte header: a lying count cannot make
    // us allocate more than the payload could hold.
    if count > (p.len() - BATCH_HEADER_LEN) / (RECORD_PREFIX_LEN + 12) {
        return Err(bad("batch count larger than its payload"));
    }
    let mut records = Vec::with_capacity(count);
    let mut at = BATCH_HEADER_LEN;
    for _ in 0..count {
        let prefix = p
            .get(at..at + RECORD_PREFIX_LEN)
            .ok_or_else(|| bad("truncated batch"))?;
        let len =
            u32::from_le_bytes(array(prefix, 0).ok_or_else(|| bad("truncated batch"))?) as usize;
        let start = at + RECORD_PREFIX_LEN;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= p.len())
            .ok_or_else(|| bad("truncated batch"))?;
        let meta = decode(&p[start..end])?;
        let data = start + meta.data..end;
        records.push((meta, data));
        at = end;
    }
    if at != p.len() {
        return Err(bad("trailing bytes after a batch"));
    }
    Ok(records)
}

fn append(kind: SocketKind, h: &Handoff<'_>, out: &mut Vec<u8>) {
    let base = out.len();
    out.extend_from_slice(&[TAG, kind as u8, 0, 0]);
    out.extend_from_slice(&h.id.to_le_bytes());
    match h.peer {
        None => {}
        Some(SocketAddr::V4(a)) => {
            out[base + 2] = 4;
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_le_bytes());
        }
        Some(SocketAddr::V6(a)) => {
            out[base + 2] = 6;
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_le_bytes());
            out.extend_from_slice(&a.flowinfo().to_le_bytes());
            out.extend_from_slice(&a.scope_id().to_le_bytes());
        }
    }
    out.extend_from_slice(h.data);
}

/// A decoded typed header; `data` is the offset of the data in the payload.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) kind: SocketKind,
    pub(crate) id: u64,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) data: usize,
}

/// `N` bytes of `p` from `at`, if it has that many.
fn array<const N: usize>(p: &[u8], at: usize) -> Option<[u8; N]> {
    p.get(at..at.checked_add(N)?)?.try_into().ok()
}

pub(crate) fn decode(p: &[u8]) -> io::Result<Meta> {
    let bad = |what| -> io::Error { Error::Malformed(what).into() };
    if p.len() < 12 || p[0] != TAG || p[3] != 0 {
        return Err(bad("not a typed hand-off"));
    }
    let kind = SocketKind::from_u8(p[1]).ok_or_else(|| bad("unknown socket kind"))?;
    let id = u64::from_le_bytes(array(p, 4).ok_or_else(|| bad("not a typed hand-off"))?);
    let rest = &p[12..];
    let bad_peer = || bad("bad peer address");
    let (peer, used) = match p[2] {
        0 => (None, 0),
        4 => {
            let ip: [u8; 4] = array(rest, 0).ok_or_else(bad_peer)?;
            let port = u16::from_le_bytes(array(rest, 4).ok_or_else(bad_peer)?);
            (Some(SocketAddr::V4(SocketAddrV4::new(ip.into(), port))), 6)
        }
        6 => {
            let ip: [u8; 16] = array(rest, 0).ok_or_else(bad_peer)?;
            let port = u16::from_le_bytes(array(rest, 16).ok_or_else(bad_peer)?);
            let flow = u32::from_le_bytes(array(rest, 18).ok_or_else(bad_peer)?);
            let scope = u32::from_le_bytes(array(rest, 22).ok_or_else(bad_peer)?);
            (
                Some(SocketAddr::V6(SocketAddrV6::new(
                    ip.into(),
                    port,
                    flow,
                    scope,
                ))),
                26,
            )
        }
        _ => return Err(bad_peer()),
    };
    Ok(Meta {
        kind,
        id,
        peer,
        data: 12 + used,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_address_family() {
        let peers = [
            None,
            Some("10.1.2.3:443".parse().unwrap()),
            Some("[fe80::1%7]:8080".parse().unwrap()),
        ];
        for peer in peers {
            let h = Handoff {
                id: u64::MAX - 3,
                peer,
                data: b"GET / HTTP/1.1\r\n",
            };
            let buf = encoded(SocketKind::TcpStream, &h);
            assert!(buf.len() <= MAX_META_LEN + h.data.len());
            let m = decode(&buf).unwrap();
            assert_eq!((m.kind, m.id, m.peer), (SocketKind::TcpStream, h.id, peer));
            assert_eq!(&buf[m.data..], h.data);
        }
    }

    #[test]
    fn a_batch_round_trips_and_every_cut_is_rejected() {
        let items = [
            Handoff {
                id: 7,
                peer: Some("10.1.2.3:443".parse().unwrap()),
                data: b"GET",
            },
            Handoff {
                id: 8,
                peer: None,
                data: b"",
            },
            Handoff {
                id: 9,
                peer: Some("[fe80::1%7]:8080".parse().unwrap()),
                data: b"x",
            },
        ];
        let mut buf = Vec::new();
        encode_batch(SocketKind::TcpStream, items.iter(), &mut buf);
        assert!(is_batch(&buf));
        let records = decode_batch(&buf).unwrap();
        assert_eq!(records.len(), 3);
        for ((m, data), h) in records.iter().zip(&items) {
            assert_eq!(
                (m.kind, m.id, m.peer),
                (SocketKind::TcpStream, h.id, h.peer)
            );
            assert_eq!(&buf[data.clone()], h.data);
        }
        for cut in 0..buf.len() {
            assert_eq!(
                decode_batch(&buf[..cut]).unwrap_err().kind(),
                io::ErrorKind::InvalidData,
                "cut at {cut}"
            );
        }
        let mut longer = buf.clone();
        longer.push(0);
        assert!(decode_batch(&longer).is_err(), "trailing byte accepted");
        // A count far beyond the payload is refused before allocating for it.
        assert!(decode_batch(&[b'B', 0, 0xff, 0xff]).is_err());
        // An empty batch is valid and empty.
        encode_batch(SocketKind::TcpStream, [].iter(), &mut buf);
        assert!(decode_batch(&buf).unwrap().is_empty());
    }

    #[test]
    fn every_prefix_of_a_header_is_rejected_or_consistent() {
        let h = Handoff {
            id: 1,
            peer: Some("[::1]:1".parse().unwrap()),
            data: b"",
        };
        let buf = encoded(SocketKind::UnixStream, &h);
        for cut in 0..buf.len() {
            assert_eq!(
                decode(&buf[..cut]).unwrap_err().kind(),
                io::ErrorKind::InvalidData,
                "cut at {cut}"
            );
        }
        assert!(decode(b"H\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00").is_err());
        assert!(decode(b"H\x01\x05\x00\x00\x00\x00\x00\x00\x00\x00\x00").is_err());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn peer() -> impl Strategy<Value = Option<SocketAddr>> {
            prop_oneof![
                Just(None),
                (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| Some(SocketAddr::V4(
                    SocketAddrV4::new(ip.into(), port)
                ))),
                (any::<[u8; 16]>(), any::<u16>(), any::<u32>(), any::<u32>()).prop_map(
                    |(ip, port, flow, scope)| {
                        Some(SocketAddr::V6(SocketAddrV6::new(
                            ip.into(),
                            port,
                            flow,
                            scope,
                        )))
                    }
                ),
            ]
        }

        proptest! {
            /// Whatever a peer sends as a hand-off header, decoding returns an error
            /// or a header whose data range lies inside the payload; it never panics.
            #[test]
            fn decoding_arbitrary_bytes_never_panics(p in proptest::collection::vec(any::<u8>(), 0..64)) {
                if let Ok(m) = decode(&p) {
                    prop_assert!(m.data <= p.len());
                }
            }

            #[test]
            fn every_header_round_trips(id in any::<u64>(), peer in peer(),
                                        data in proptest::collection::vec(any::<u8>(), 0..64)) {
                let h = Handoff { id, peer, data: &data };
                let buf = encoded(SocketKind::UdpSocket, &h);
                let m = decode(&buf).unwrap();
                prop_assert_eq!((m.kind, m.id, m.peer), (SocketKind::UdpSocket, id, peer));
                prop_assert_eq!(&buf[m.data..], &data[..]);
            }
        }

        proptest! {
            /// A batch from a hostile peer: an error, or records whose ranges are in
            /// bounds and whose number the payload can hold — never a panic, never an
            /// allocation larger than the payload justifies.
            #[test]
            fn decoding_arbitrary_batches_never_panics(mut p in proptest::collection::vec(any::<u8>(), 0..256),
                                                       count in any::<u16>()) {
                if p.len() >= 4 {
                    p[0] = b'B';
                    p[1] = 0;
                    p[2..4].copy_from_slice(&count.to_le_bytes());
                }
                if let Ok(records) = decode_batch(&p) {
                    prop_assert!(records.len() * (RECORD_PREFIX_LEN + 12) <= p.len());
                    for (_, range) in records {
                        prop_assert!(range.end <= p.len());
                    }
                }
            }

            #[test]
            fn every_batch_round_trips(items in proptest::collection::vec(
                    (any::<u64>(), peer(), proptest::collection::vec(any::<u8>(), 0..16)), 0..32)) {
                let handoffs: Vec<Handoff<'_>> = items
                    .iter()
                    .map(|(id, peer, data)| Handoff { id: *id, peer: *peer, data })
                    .collect();
                let mut buf = Vec::new();
                encode_batch(SocketKind::TcpStream, handoffs.iter(), &mut buf);
                let records = decode_batch(&buf).unwrap();
                prop_assert_eq!(records.len(), items.len());
                for ((m, range), (id, peer, data)) in records.into_iter().zip(&items) {
                    prop_assert_eq!((m.id, m.peer), (*id, *peer));
                    prop_assert_eq!(&buf[range], &data[..]);
                }
            }
        }
    }
}
