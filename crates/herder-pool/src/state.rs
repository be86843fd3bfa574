//! What both platforms' pools report about their slots.

/// Where a slot's worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// Started, not ready yet.
    Starting,
    /// Ready: serving.
    Ready,
    /// Waiting out its back-off before the next start.
    Backoff,
    /// Stopped by the crash-loop breaker; [`Pool::reset`](crate::Pool::reset) starts it again.
    Tripped,
    /// Its worker exited with the fatal exit code; [`Pool::reset`](crate::Pool::reset) starts it again.
    Fatal,
    /// Stopped by [`Pool::stop`](crate::Pool::stop).
    Stopped,
}

/// A ready worker's load, from [`Pool::load`](crate::Pool::load).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Load {
    /// The worker's pid.
    pub pid: u32,
    /// Connections it took.
    pub accepted: u64,
    /// Connections it has open.
    pub active: u64,
}

/// A slot state's name in control answers.
pub(crate) fn state_name(s: State) -> &'static str {
    match s {
        State::Starting => "starting",
        State::Ready => "ready",
        State::Backoff => "backoff",
        State::Tripped => "tripped",
        State::Fatal => "fatal",
        State::Stopped => "stopped",
    }
}
