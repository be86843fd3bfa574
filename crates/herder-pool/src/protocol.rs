//! The few messages the pool itself sends over a worker's channel. Everything else on
//! the channel (hand-offs, the application's own messages) is passed through.
//!
//! A pool message is a payload of `b'P'`, a command byte and the command's body, with
//! no descriptors. See [`is_reserved`].

/// Worker to supervisor: ready to serve.
pub(crate) const READY: &[u8] = b"PR";
/// Supervisor to worker: stop accepting, drain and exit.
pub(crate) const DRAIN: &[u8] = b"PD";

/// Worker to supervisor on Windows (where there is no shared scoreboard): its load,
/// followed by three little-endian `u64`s, connections accepted and open and
/// accept-lock waits; also its heartbeat.
#[cfg(windows)]
pub(crate) const LOAD: &[u8] = b"PL";

/// Whether a payload is one of the pool's own two-byte messages.
pub(crate) fn is_pool_message(payload: &[u8]) -> bool {
    #[cfg(windows)]
    if payload == LOAD {
        return true;
    }
    payload == READY || payload == DRAIN
}

/// Worker to supervisor: every hand-off up to this id (a little-endian `u64` follows)
/// arrived and is served.
#[cfg(unix)]
pub(crate) const ACK: &[u8] = b"PA";
/// Worker to supervisor: the hand-offs with these ids (little-endian `u64`s follow)
/// arrived without their descriptors; nobody serves them.
#[cfg(unix)]
pub(crate) const REFUSED: &[u8] = b"PN";

/// Whether `payload` is reserved for the pool's own messages: `b'P'` followed by
/// `R`, `D`, `L`, `A` or `N`. A worker's or supervisor's own message must not begin
/// so, or the pool takes it for one of its own.
pub fn is_reserved(payload: &[u8]) -> bool {
    matches!(payload, [b'P', b'R' | b'D' | b'L' | b'A' | b'N', ..])
}

/// A worker's receipt for hand-offs, as the supervisor reads it.
#[cfg(unix)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Receipt {
    Ack(u64),
    Refused(Vec<u64>),
}

#[cfg(unix)]
impl Receipt {
    /// The message's bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let (tag, ids) = match self {
            Receipt::Ack(upto) => (ACK, std::slice::from_ref(upto)),
            Receipt::Refused(ids) => (REFUSED, &ids[..]),
        };
        let mut out = Vec::with_capacity(2 + 8 * ids.len());
        out.extend_from_slice(tag);
        for id in ids {
            out.extend_from_slice(&id.to_le_bytes());
        }
        out
    }

    /// `None` for anything else, or a malformed receipt.
    pub(crate) fn decode(payload: &[u8]) -> Option<Receipt> {
        let body = payload.get(2..)?;
        if body.is_empty() || body.len() % 8 != 0 {
            return None;
        }
        let mut ids = body
            .chunks_exact(8)
            .filter_map(|c| c.try_into().ok().map(u64::from_le_bytes));
        match payload.get(..2)? {
            ACK if body.len() == 8 => ids.next_back().map(Receipt::Ack),
            REFUSED => Some(Receipt::Refused(ids.collect())),
            _ => None,
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn receipts_round_trip_and_garbage_is_refused() {
        for r in [
            Receipt::Ack(0),
            Receipt::Ack(u64::MAX),
            Receipt::Refused(vec![1]),
            Receipt::Refused((0..64).collect()),
        ] {
            let bytes = r.encode();
            assert!(is_reserved(&bytes));
            assert_eq!(Receipt::decode(&bytes), Some(r));
        }
        for bad in [
            &b"PA"[..],
            b"PA1234567",
            b"PA123456789",
            b"PN",
            b"PN1234567",
            b"PX12345678",
            b"",
            b"P",
        ] {
            assert_eq!(Receipt::decode(bad), None, "{bad:?}");
        }
        assert!(!is_reserved(b"Pz"));
        assert!(!is_reserved(b"hello"));
        assert!(is_reserved(READY) && is_reserved(DRAIN));
    }
}
