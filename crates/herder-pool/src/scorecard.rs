//! A worker's record in the scoreboard, as the worker sees it: heartbeat, load, and
//! load-aware accepting against its peers. The same on every platform.

use crate::scoreboard::Board;
use std::sync::Arc;

/// How recent a peer's heartbeat or load figure must be for it to count in
/// [`Scorecard::accept_allowance`].
pub const PEER_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// A worker's record in its supervisor's scoreboard, in shared memory: the heartbeat
/// that tells the supervisor the worker is not hung, and the load figures that feed
/// least-loaded dispatch, scaling and status. Writing is a few atomic stores; cheap
/// enough for every connection. Clone it freely (it is shared).
#[derive(Clone)]
pub struct Scorecard {
    board: Arc<Board>,
    index: usize,
}

impl Scorecard {
    /// The card of record `index` of `board`, if the record exists.
    pub(crate) fn new(board: Arc<Board>, index: usize) -> Option<Scorecard> {
        board.record(index)?;
        Some(Scorecard { board, index })
    }

    /// The record (checked to exist when the worker adopted the scoreboard).
    fn record(&self) -> Option<&crate::scoreboard::Record> {
        self.board.record(self.index)
    }

    /// Records that the worker is alive now. Call it from the event loop (a timer a
    /// few times per heartbeat timeout): a loop that hangs stops calling it.
    pub fn heartbeat(&self) {
        if let Some(r) = self.record() {
            r.heartbeat();
        }
    }

    /// Counts `n` connections more taken by this worker.
    pub fn add_accepted(&self, n: u64) {
        if let Some(r) = self.record() {
            r.add_accepted(n);
        }
    }

    /// Counts `n` times more that this worker wanted to accept but found the accept
    /// lock held by another (the supervisor's `lock_waits`).
    pub fn add_lock_waits(&self, n: u64) {
        if let Some(r) = self.record() {
            r.add_lock_waits(n);
        }
    }

    /// Sets the number of connections this worker has open; it also counts as a
    /// heartbeat (a loop that publishes its load is alive). Call it after every poll:
    /// peers ignore a worker that has published nothing for [`PEER_FRESH`].
    pub fn set_active(&self, n: u64) {
        if let Some(r) = self.record() {
            r.set_active(n);
        }
    }

    /// Declares whether this worker takes new connections from a shared listener (an
    /// accept lock, `EPOLLEXCLUSIVE`, or none), so that its peers count it in
    /// [`Scorecard::accept_allowance`]. Set it once the worker accepts, and clear it
    /// when it drains.
    pub fn set_accepting(&self, on: bool) {
        if let Some(r) = self.record() {
            r.set_accepting(on);
        }
    }

    /// The fewest open connections among the other accepting workers of the pool
    /// (those that called [`Scorecard::set_accepting`] and published a heartbeat or
    /// their load within [`PEER_FRESH`]), or `None` if there are none.
    pub fn least_active_peer(&self) -> Option<u64> {
        self.board
            .least_active_accepting(self.index, PEER_FRESH.as_millis() as u64)
    }

    /// How many more connections a worker with `active` open ones may accept before
    /// it should leave new ones to its peers: up to the least-loaded accepting peer's
    /// count plus a slack of an eighth of it, and at least one. `None` when no peer
    /// accepts (no limit).
    ///
    /// This is load-aware accepting for a shared listener, in the spirit of nginx's
    /// `accept_disabled` but against the peers' actual load: a worker whose allowance
    /// is zero skips the accept lock (or pauses its listener) until it is positive
    /// again, and accepts at most its allowance per wake-up, so the worker that keeps
    /// winning the lock, or that `EPOLLEXCLUSIVE` keeps waking, does not end up with
    /// every long-lived connection. The least-loaded worker always has an allowance,
    /// so some worker always accepts; a peer that is stuck (in a long computation,
    /// stopped, hung) stops counting once it has published nothing for
    /// [`PEER_FRESH`], so it holds the others back for at most that long. The counts
    /// are those the workers last published with [`Scorecard::set_active`].
    ///
    /// ```
    /// # fn f(card: &herder_pool::Scorecard, active: u64) {
    /// match card.accept_allowance(active) {
    ///     Some(0) => { /* pause the listener, skip the lock, look again soon */ }
    ///     Some(n) => { /* accept at most n now */ }
    ///     None => { /* alone: accept freely */ }
    /// }
    /// # }
    /// ```
    pub fn accept_allowance(&self, active: u64) -> Option<u64> {
        self.least_active_peer()
            .map(|least| (least + (least / 8).max(1)).saturating_sub(active))
    }
}

impl std::fmt::Debug for Scorecard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scorecard")
            .field("index", &self.index)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::Scorecard;
    use crate::scoreboard::Board;
    use std::sync::Arc;

    fn cards(n: usize) -> Vec<Scorecard> {
        let (_fd, board) = Board::create(8).unwrap();
        let board = Arc::new(board);
        (0..n)
            .map(|i| Scorecard {
                board: board.clone(),
                index: board.assign(100 + i as u32, i, 1).unwrap(),
            })
            .collect()
    }

    #[test]
    fn only_accepting_peers_count() {
        let c = cards(3);
        assert_eq!(c[0].least_active_peer(), None);
        assert_eq!(
            c[0].accept_allowance(1000),
            None,
            "no peer accepts: no limit"
        );
        c[1].set_accepting(true);
        c[1].set_active(7);
        c[2].set_active(0); // not accepting (draining, say): ignored
        assert_eq!(c[0].least_active_peer(), Some(7));
        c[2].set_accepting(true);
        assert_eq!(c[0].least_active_peer(), Some(0));
        c[2].set_accepting(false);
        assert_eq!(c[0].least_active_peer(), Some(7));
    }

    #[test]
    fn allowance_up_to_the_least_loaded_peer_plus_slack() {
        let c = cards(2);
        c[1].set_accepting(true);
        c[1].set_active(0);
        assert_eq!(c[0].accept_allowance(0), Some(1), "slack of at least one");
        assert_eq!(c[0].accept_allowance(1), Some(0));
        assert_eq!(c[0].accept_allowance(50), Some(0));
        c[1].set_active(32);
        assert_eq!(c[0].accept_allowance(30), Some(6), "slack of an eighth");
        assert_eq!(c[0].accept_allowance(36), Some(0));
        // The least-loaded worker always has room.
        c[0].set_accepting(true);
        c[0].set_active(5);
        assert_eq!(c[0].accept_allowance(5), Some(32 + 4 - 5));
        assert_eq!(c[1].accept_allowance(32), Some(0));
        assert_eq!(c[1].accept_allowance(5), Some(1));
    }

    #[test]
    fn a_silent_peer_stops_counting_and_counts_again_when_it_publishes() {
        let c = cards(2);
        c[1].set_accepting(true);
        c[1].set_active(0);
        assert_eq!(c[0].accept_allowance(5), Some(0));
        // Stuck (no heartbeat, no load figure) for longer than PEER_FRESH.
        c[1].record()
            .unwrap()
            .age(super::PEER_FRESH.as_millis() as u64 + 500);
        assert_eq!(c[0].least_active_peer(), None);
        assert_eq!(c[0].accept_allowance(5), None);
        // Back: publishing its load is a sign of life.
        c[1].set_active(0);
        assert_eq!(c[0].accept_allowance(5), Some(0));
    }

    #[test]
    fn a_released_record_is_no_peer() {
        let (_fd, board) = Board::create(4).unwrap();
        let board = Arc::new(board);
        let a = board.assign(1, 0, 1).unwrap();
        let b = board.assign(2, 1, 1).unwrap();
        let (ca, cb) = (
            Scorecard {
                board: board.clone(),
                index: a,
            },
            Scorecard {
                board: board.clone(),
                index: b,
            },
        );
        cb.set_accepting(true);
        assert_eq!(ca.least_active_peer(), Some(0));
        board.release(b);
        assert_eq!(ca.least_active_peer(), None);
        // A record reused by a new process starts not accepting.
        let again = board.assign(3, 1, 2).unwrap();
        assert_eq!(again, b);
        assert_eq!(ca.least_active_peer(), None);
    }
}
