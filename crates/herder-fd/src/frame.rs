//! The wire format of one message, the same on every platform and socket type.
//!
//! ```text
//! byte 0      version (1)
//! byte 1      flags: bit 0, the sender waits for no acknowledgement of the
//!             sockets attached (Windows); the other bits are reserved, 0
//! bytes 2..4  number of attached descriptors, u16 little-endian
//! bytes 4..8  payload length, u32 little-endian
//! bytes 8..   payload
//! ```
//!
//! The header makes an empty payload a real message (a zero-length read is end of
//! file), lets a stream socket carry message boundaries, and lets the receiver check
//! that every descriptor announced arrived.

use crate::error::{Error, invalid_data};
use std::io;

pub(crate) const VERSION: u8 = 1;
pub(crate) const HEADER_LEN: usize = 8;
/// Flag: the sender of the attached sockets waits for no acknowledgement.
#[cfg_attr(not(windows), allow(dead_code))]
pub(crate) const NO_ACK: u8 = 1;
const KNOWN_FLAGS: u8 = NO_ACK;

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Header {
    pub(crate) flags: u8,
    pub(crate) nfds: usize,
    pub(crate) len: usize,
}

impl Header {
    pub(crate) fn encode(self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = VERSION;
        h[1] = self.flags;
        h[2..4].copy_from_slice(&(self.nfds as u16).to_le_bytes());
        h[4..8].copy_from_slice(&(self.len as u32).to_le_bytes());
        h
    }

    /// Decodes and validates a header against the receiver's limits.
    pub(crate) fn decode(b: &[u8], max_len: usize, max_fds: usize) -> io::Result<Header> {
        let Some(b) = b.get(..HEADER_LEN) else {
            return Err(Error::Malformed("short frame header").into());
        };
        if b[0] != VERSION {
            return Err(Error::Malformed("unknown frame version").into());
        }
        if b[1] & !KNOWN_FLAGS != 0 {
            return Err(Error::Malformed("unknown frame flags").into());
        }
        let flags = b[1];
        let nfds = u16::from_le_bytes([b[2], b[3]]) as usize;
        let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
        if nfds > max_fds {
            return Err(invalid_data(Error::TooManyFds {
                count: nfds,
                max: max_fds,
            }));
        }
        if len > max_len {
            return Err(invalid_data(Error::MessageTooLarge { len, max: max_len }));
        }
        Ok(Header { flags, nfds, len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = Header {
            flags: NO_ACK,
            nfds: 253,
            len: 70_000,
        };
        assert_eq!(Header::decode(&h.encode(), 1 << 20, 253).unwrap(), h);
    }

    #[test]
    fn rejects_garbage() {
        let kind = |b: &[u8]| Header::decode(b, 1024, 253).unwrap_err().kind();
        assert_eq!(kind(b"\x01\x00\x00"), io::ErrorKind::InvalidData);
        assert_eq!(kind(b"GET / HT"), io::ErrorKind::InvalidData);
        assert_eq!(
            kind(b"\x01\x02\x00\x00\x00\x00\x00\x00"),
            io::ErrorKind::InvalidData
        );
        let big = Header {
            len: 1025,
            ..Header::default()
        }
        .encode();
        let e = Header::decode(&big, 1024, 253).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(matches!(
            Error::of(&e),
            Some(Error::MessageTooLarge { len: 1025, .. })
        ));
        let many = Header {
            nfds: 254,
            ..Header::default()
        }
        .encode();
        assert!(matches!(
            Error::of(&Header::decode(&many, 1024, 253).unwrap_err()),
            Some(Error::TooManyFds { count: 254, .. })
        ));
    }

    proptest::proptest! {
        /// Any 8 bytes from a peer decode to an error or to a header within the
        /// receiver's limits, which encodes back to the same bytes.
        #[test]
        fn any_header_is_refused_or_within_limits(b in proptest::prelude::any::<[u8; HEADER_LEN]>(),
                                                  max_len in 0usize..1 << 20, max_fds in 0usize..300) {
            if let Ok(h) = Header::decode(&b, max_len, max_fds) {
                proptest::prop_assert!(h.len <= max_len && h.nfds <= max_fds);
                proptest::prop_assert_eq!(h.encode(), b);
            }
        }
    }
}
