//! The supervisor's books of live connections on the move: from a draining worker
//! (which keeps its copy meanwhile) to the worker the pool chose, until that worker
//! acknowledges them or cannot take them. Pure bookkeeping; the pool does the I/O.

use crate::message::MOVE_ID;
use std::collections::{BTreeMap, HashMap, VecDeque};

/// One forwarded connection: the pool's id for it, the worker it came from and that
/// worker's id for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Forwarded {
    id: u64,
    origin: u32,
    theirs: u64,
}

/// What to tell the workers the connections came from: by origin pid, the origin's
/// ids.
pub(crate) type Replies = BTreeMap<u32, Vec<u64>>;

/// What became of the live connections retired workers moved
/// ([`Config::move_connections`](crate::Config::move_connections)), from
/// [`Pool::move_stats`](crate::Pool::move_stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MoveStats {
    /// Connections now owned by the worker they moved to.
    pub moved: u64,
    /// Connections that found no taker (none ready, the taker's descriptor table
    /// full, the taker died before it acknowledged them) and were finished by the
    /// worker they came from.
    pub kept: u64,
    /// Connections handed to their new worker and not yet acknowledged now.
    pub in_flight: usize,
    /// Connections on their way to a new supervisor that died before it said
    /// whether its workers took them: their old workers let go of them (served by
    /// the new worker that had taken them; closed if none had).
    pub abandoned: u64,
}

/// Connections forwarded to a worker and not yet acknowledged, and the counts.
#[derive(Debug, Default)]
pub(crate) struct Moves {
    /// The low bits of the next id.
    next: u64,
    /// By receiving worker, in the order sent.
    inflight: HashMap<u32, VecDeque<Forwarded>>,
    /// Connections now owned by the worker they moved to.
    pub(crate) moved: u64,
    /// Connections that found no taker and stayed with their worker.
    pub(crate) kept: u64,
    /// Connections whose fate the new supervisor took with it.
    abandoned: u64,
}

impl Moves {
    /// Ids for `n` connections sent in one message, the first returned; each has
    /// [`MOVE_ID`] set, and they increase, as a worker's cumulative
    /// acknowledgement needs.
    pub(crate) fn next_ids(&mut self, n: usize) -> u64 {
        let first = self.next + 1;
        self.next += n as u64;
        first | MOVE_ID
    }

    /// Notes that the connections `(origin, theirs)` went to worker `target` with
    /// ids `first`, `first + 1`, ….
    pub(crate) fn sent(&mut self, target: u32, first: u64, from: &[(u32, u64)]) {
        let q = self.inflight.entry(target).or_default();
        q.extend(
            from.iter()
                .zip(first..)
                .map(|(&(origin, theirs), id)| Forwarded { id, origin, theirs }),
        );
    }

    /// Connections on their way to `target`: part of its load.
    pub(crate) fn pending_to(&self, target: u32) -> usize {
        self.inflight.get(&target).map_or(0, VecDeque::len)
    }

    /// `target` acknowledged every id up to `upto`: those connections are its own,
    /// and their origins may let go of their copies.
    pub(crate) fn acknowledged(&mut self, target: u32, upto: u64) -> Replies {
        let mut replies = Replies::new();
        if let Some(q) = self.inflight.get_mut(&target) {
            while let Some(f) = q.front().filter(|f| f.id <= upto).copied() {
                q.pop_front();
                replies.entry(f.origin).or_default().push(f.theirs);
                self.moved += 1;
            }
        }
        replies
    }

    /// `target` took these ids (a new supervisor's answer, by id). (Connections
    /// move to a new supervisor on Unix only.)
    #[cfg_attr(windows, allow(dead_code))]
    pub(crate) fn settled(&mut self, target: u32, ids: &[u64]) -> Replies {
        let replies = self.take(target, ids);
        self.moved += count(&replies);
        replies
    }

    /// `target` refused these ids (no descriptor arrived, no room, a state its
    /// service would not take): their origins keep them.
    pub(crate) fn refused(&mut self, target: u32, ids: &[u64]) -> Replies {
        let replies = self.take(target, ids);
        self.kept += count(&replies);
        replies
    }

    /// Takes `ids` off `target`'s books, by origin.
    fn take(&mut self, target: u32, ids: &[u64]) -> Replies {
        let mut replies = Replies::new();
        if let Some(q) = self.inflight.get_mut(&target) {
            q.retain(|f| {
                let hit = ids.contains(&f.id);
                if hit {
                    replies.entry(f.origin).or_default().push(f.theirs);
                }
                !hit
            });
        }
        replies
    }

    /// `target` exited: what it had not acknowledged stays with its origins (its
    /// last acknowledgements were read before its exit).
    pub(crate) fn gone(&mut self, target: u32) -> Replies {
        let replies = self.take_all(target);
        self.kept += count(&replies);
        replies
    }

    /// `target`, a new supervisor, died before it answered for these: whether its
    /// workers took them is not known, so their origins must let go of them.
    #[cfg_attr(windows, allow(dead_code))]
    pub(crate) fn abandoned(&mut self, target: u32) -> Replies {
        let replies = self.take_all(target);
        self.abandoned += count(&replies);
        replies
    }

    /// Takes everything off `target`'s books, by origin.
    fn take_all(&mut self, target: u32) -> Replies {
        let mut replies = Replies::new();
        for f in self.inflight.remove(&target).unwrap_or_default() {
            replies.entry(f.origin).or_default().push(f.theirs);
        }
        replies
    }

    /// Connections that found no taker before they were sent.
    pub(crate) fn count_kept(&mut self, n: usize) {
        self.kept += n as u64;
    }

    pub(crate) fn stats(&self) -> MoveStats {
        MoveStats {
            moved: self.moved,
            kept: self.kept,
            in_flight: self.inflight.values().map(VecDeque::len).sum(),
            abandoned: self.abandoned,
        }
    }
}

/// How many connections `replies` name.
fn count(replies: &Replies) -> u64 {
    replies.values().map(|v| v.len() as u64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledgements_settle_in_order_and_name_each_origin() {
        let mut m = Moves::default();
        let first = m.next_ids(3);
        assert_eq!(first, MOVE_ID | 1);
        m.sent(
            50,
            first,
            &[(10, MOVE_ID | 7), (11, MOVE_ID | 1), (10, MOVE_ID | 8)],
        );
        assert_eq!(m.pending_to(50), 3);
        let r = m.acknowledged(50, first + 1);
        assert_eq!(
            r,
            Replies::from([(10, vec![MOVE_ID | 7]), (11, vec![MOVE_ID | 1])])
        );
        assert_eq!((m.pending_to(50), m.moved), (1, 2));
        // An acknowledgement of nothing new, and one from a stranger, change nothing.
        assert!(m.acknowledged(50, first + 1).is_empty());
        assert!(m.acknowledged(99, u64::MAX).is_empty());
        let next = m.next_ids(1);
        assert_eq!(next, first + 3, "ids keep increasing across messages");
    }

    #[test]
    fn refusals_and_exits_hand_connections_back_to_their_origin() {
        let mut m = Moves::default();
        let a = m.next_ids(2);
        m.sent(50, a, &[(10, MOVE_ID | 1), (10, MOVE_ID | 2)]);
        let b = m.next_ids(2);
        m.sent(60, b, &[(10, MOVE_ID | 3), (12, MOVE_ID | 1)]);
        assert_eq!(
            m.refused(50, &[a + 1]),
            Replies::from([(10, vec![MOVE_ID | 2])])
        );
        assert_eq!(
            m.gone(60),
            Replies::from([(10, vec![MOVE_ID | 3]), (12, vec![MOVE_ID | 1])])
        );
        assert_eq!(m.pending_to(60), 0);
        assert_eq!(
            m.acknowledged(50, a),
            Replies::from([(10, vec![MOVE_ID | 1])])
        );
        assert_eq!((m.moved, m.kept), (1, 3));
        // Each connection is settled exactly once.
        assert!(m.gone(50).is_empty());
    }

    #[test]
    fn a_new_supervisor_answers_by_id_and_its_death_abandons_the_rest() {
        let mut m = Moves::default();
        let a = m.next_ids(3);
        m.sent(
            70,
            a,
            &[(10, MOVE_ID | 1), (11, MOVE_ID | 1), (10, MOVE_ID | 2)],
        );
        assert_eq!(
            m.settled(70, &[a + 2]),
            Replies::from([(10, vec![MOVE_ID | 2])])
        );
        assert_eq!(
            m.abandoned(70),
            Replies::from([(10, vec![MOVE_ID | 1]), (11, vec![MOVE_ID | 1])])
        );
        let s = m.stats();
        assert_eq!((s.moved, s.kept, s.abandoned, s.in_flight), (1, 0, 2, 0));
    }
}
