//! The few messages the pool itself sends over a worker's channel. Everything else on
//! the channel (hand-offs, the application's own messages) is passed through.
//!
//! A pool message is a payload of `b'P'`, a command byte and the command's body, with
//! no descriptors. See [`is_reserved`].

use herder_fd::{Channel, Message};
use std::io;

/// Sends a message of bytes alone, on either platform's channel.
pub(crate) fn send_bytes(channel: &mut Channel, payload: &[u8]) -> io::Result<()> {
    #[cfg(unix)]
    return channel.send(payload, &[]);
    #[cfg(windows)]
    return channel.send(payload);
}

/// Receives a message, with its payload even if its descriptors were lost
/// (`Message::lost_fds`): at the descriptor limit, connections on the move arrive
/// without their descriptors, and their sender must hear that it keeps them. (On
/// Windows, sockets that cannot be rebuilt are counted in `lost_fds` by `recv`.)
pub(crate) fn recv_lossy(channel: &mut Channel) -> io::Result<Option<Message>> {
    #[cfg(unix)]
    return channel.recv_lossy();
    #[cfg(windows)]
    return channel.recv();
}

/// The most sockets one message carries, and so the most ids one refusal names.
#[cfg(unix)]
pub(crate) const MAX_SOCKETS: usize = herder_fd::MAX_FDS_PER_MESSAGE;
#[cfg(windows)]
pub(crate) const MAX_SOCKETS: usize = herder_fd::MAX_SOCKETS_PER_MESSAGE;

/// Worker to supervisor: ready to serve.
pub(crate) const READY: &[u8] = b"PR";
/// Supervisor to worker: stop accepting, drain and exit.
pub(crate) const DRAIN: &[u8] = b"PD";
/// Supervisor to worker: drain as [`DRAIN`] says, and move every connection that can
/// move to the other workers first (through the supervisor). A worker that cannot
/// move connections drains.
pub(crate) const MOVE: &[u8] = b"PV";

/// Whether a payload is one of the pool's own two-byte messages.
pub(crate) fn is_pool_message(payload: &[u8]) -> bool {
    if payload == MOVE {
        return true;
    }
    payload == READY || payload == DRAIN
}

/// Worker to supervisor: every hand-off up to this id (a little-endian `u64` follows)
/// arrived and is served.
pub(crate) const ACK: &[u8] = b"PA";
/// Worker to supervisor: the hand-offs with these ids (little-endian `u64`s follow)
/// arrived without their descriptors; nobody serves them.
pub(crate) const REFUSED: &[u8] = b"PN";
/// Supervisor to worker: the connections this worker sent to move, by the ids it
/// gave them (little-endian `u64`s follow), are owned by another worker now.
pub(crate) const MOVED: &[u8] = b"PM";
/// Supervisor to worker: the connections this worker sent to move (ids follow)
/// found no taker; it keeps them and finishes them itself.
pub(crate) const KEPT: &[u8] = b"PK";
/// New supervisor to old during an upgrade, on the channel of moving connections:
/// it takes them.
pub(crate) const HELLO: &[u8] = b"PH";

/// Hand-offs whose id has this bit set are connections on the move (a worker's
/// [`Service`](herder_reactor::Service) state travels with them), not new ones: from
/// a draining worker to the supervisor, and from the supervisor to their new
/// worker. Their data is [`encode_move`]'s.
pub(crate) const MOVE_ID: u64 = 1 << 63;

/// Whether `payload` is reserved for the pool's own messages: `b'P'` followed by
/// `R`, `D`, `V`, `L`, `A`, `N`, `M`, `K` or `H`. A worker's or supervisor's own
/// message must not begin so, or the pool takes it for one of its own.
pub fn is_reserved(payload: &[u8]) -> bool {
    matches!(
        payload,
        [
            b'P',
            b'R' | b'D' | b'V' | b'L' | b'A' | b'N' | b'M' | b'K' | b'H',
            ..
        ]
    )
}

/// A moving connection's hand-off data: a flags byte (bit 0: the peer has sent
/// nothing yet), the length of its service's state (`u32`, little-endian), the
/// state, then the input its service had not consumed.
pub(crate) fn encode_move(fresh: bool, state: &[u8], input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + state.len() + input.len());
    out.push(u8::from(fresh));
    out.extend_from_slice(&(state.len() as u32).to_le_bytes());
    out.extend_from_slice(state);
    out.extend_from_slice(input);
    out
}

/// A moving connection's data decoded: whether it is fresh, the state, the input;
/// `None` if malformed.
pub(crate) fn decode_move(data: &[u8]) -> Option<(bool, &[u8], &[u8])> {
    let (&flags, rest) = data.split_first()?;
    if flags > 1 {
        return None;
    }
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let rest = &rest[4..];
    (len <= rest.len()).then(|| {
        let (state, input) = rest.split_at(len);
        (flags == 1, state, input)
    })
}

/// A worker's receipt for hand-offs, as the supervisor reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Receipt {
    Ack(u64),
    Refused(Vec<u64>),
    Moved(Vec<u64>),
    Kept(Vec<u64>),
}

impl Receipt {
    /// The message's bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let (tag, ids) = match self {
            Receipt::Ack(upto) => (ACK, std::slice::from_ref(upto)),
            Receipt::Refused(ids) => (REFUSED, &ids[..]),
            Receipt::Moved(ids) => (MOVED, &ids[..]),
            Receipt::Kept(ids) => (KEPT, &ids[..]),
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
            MOVED => Some(Receipt::Moved(ids.collect())),
            KEPT => Some(Receipt::Kept(ids.collect())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_round_trip_and_garbage_is_refused() {
        for r in [
            Receipt::Ack(0),
            Receipt::Ack(u64::MAX),
            Receipt::Refused(vec![1]),
            Receipt::Refused((0..64).collect()),
            Receipt::Moved(vec![MOVE_ID | 3, MOVE_ID | 9]),
            Receipt::Kept(vec![MOVE_ID]),
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
        assert!(is_reserved(READY) && is_reserved(DRAIN) && is_reserved(MOVE));
    }

    #[test]
    fn move_data_round_trips_and_a_lying_length_is_refused() {
        let data = encode_move(false, b"state", b"GET /");
        assert_eq!(
            decode_move(&data),
            Some((false, &b"state"[..], &b"GET /"[..]))
        );
        assert_eq!(
            decode_move(&encode_move(true, b"", b"")),
            Some((true, &b""[..], &b""[..]))
        );
        for cut in 0..5 {
            assert_eq!(decode_move(&data[..cut]), None);
        }
        assert_eq!(decode_move(&[0, 9, 0, 0, 0, 1]), None);
        assert_eq!(decode_move(&[2, 0, 0, 0, 0]), None, "unknown flags");
    }
}
