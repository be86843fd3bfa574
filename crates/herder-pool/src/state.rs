//! What both platforms' pools report about their slots.

use std::process::ExitStatus;

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
    /// Stopped by the crash-loop breaker: it starts one worker again after its
    /// cool-down, or at once with [`Pool::reset`](crate::Pool::reset).
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

/// A snapshot of one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// The slot.
    pub slot: usize,
    /// The pid of the slot's current worker (the one that serves, or is starting to).
    pub pid: Option<u32>,
    /// The current worker's generation.
    pub generation: u64,
    /// Where the slot is.
    pub state: State,
    /// Pids of the slot's earlier workers still draining.
    pub draining: Vec<u32>,
    /// Connections the current worker took, as it reported them (the scoreboard on
    /// Unix, its channel on Windows).
    pub accepted: u64,
    /// Connections the current worker has open, as it reported them.
    pub active: u64,
    /// How many times the slot's current worker found the accept lock held by
    /// another when it wanted to accept (`Scorecard::add_lock_waits` on Unix; not
    /// counted on Windows).
    pub lock_waits: u64,
    /// How many times the slot's worker was replaced.
    pub restarts: u32,
    /// How the previous worker of the slot ended.
    pub last_exit: Option<ExitStatus>,
    /// While the slot waits out a back-off or its breaker's cool-down: how long until
    /// its next worker starts.
    pub restart_in: Option<std::time::Duration>,
}

/// The `status` answer of the control requests: the pool's figures, `extra` fields
/// of the platform's, and one object per slot.
pub(crate) fn status_response(
    generation: u64,
    stopping: bool,
    workers: Vec<WorkerInfo>,
    extra: serde_json::Map<String, serde_json::Value>,
) -> Vec<u8> {
    use serde_json::json;
    let workers: Vec<serde_json::Value> = workers
        .into_iter()
        .map(|w| {
            json!({
                "slot": w.slot,
                "pid": w.pid,
                "generation": w.generation,
                "state": state_name(w.state),
                "accepted": w.accepted,
                "active": w.active,
                "lock_waits": w.lock_waits,
                "restarts": w.restarts,
                "last_exit": w.last_exit.map(|s| s.to_string()),
                "draining": w.draining,
                "restart_in_ms": w.restart_in.map(|d| d.as_millis() as u64),
            })
        })
        .collect();
    let mut answer = serde_json::Map::new();
    answer.insert("ok".into(), true.into());
    answer.insert("pid".into(), std::process::id().into());
    answer.insert("generation".into(), generation.into());
    answer.insert("stopping".into(), stopping.into());
    answer.extend(extra);
    answer.insert("workers".into(), workers.into());
    crate::control::response(answer.into())
}

/// The event that ends the rolling restart to `generation`: `ReloadFailed` with the
/// slots that kept their old worker, if there are any.
pub(crate) fn reload_finished(generation: u64, mut failed: Vec<usize>) -> crate::PoolEvent {
    if failed.is_empty() {
        return crate::PoolEvent::Reloaded { generation };
    }
    failed.sort_unstable();
    failed.dedup();
    crate::PoolEvent::ReloadFailed {
        generation,
        slots: failed,
    }
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
