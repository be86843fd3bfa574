//! The few messages the pool itself sends over a worker's channel. Everything else on
//! the channel (hand-offs, the application's own messages) is passed through.
//!
//! A pool message is a payload of two bytes, `b'P'` and a command, with no
//! descriptors.

/// Worker to supervisor: ready to serve.
pub(crate) const READY: &[u8] = b"PR";
/// Supervisor to worker: stop accepting, drain and exit.
pub(crate) const DRAIN: &[u8] = b"PD";

/// Worker to supervisor on Windows (where there is no shared scoreboard): its load,
/// followed by three little-endian `u64`s, connections accepted and open and
/// accept-lock waits; also its heartbeat.
#[cfg(windows)]
pub(crate) const LOAD: &[u8] = b"PL";

/// Whether a payload is one of the pool's own messages.
pub(crate) fn is_pool_message(payload: &[u8]) -> bool {
    payload.len() == 2 && payload[0] == b'P'
}
