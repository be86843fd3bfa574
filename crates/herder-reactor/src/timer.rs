//! Timers: a binary heap of deadlines over a slab of timer slots. Cancellation bumps
//! the slot's generation, so heap entries of cancelled timers are skipped when they
//! come up; a repeating timer reuses its slot, so steady firing allocates nothing.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// The handle of a timer, from [`Reactor::add_timer`](crate::Reactor::add_timer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId {
    index: u32,
    generation: u32,
}

#[derive(Default)]
struct Slot {
    generation: u32,
    pending: bool,
    repeat: Option<Duration>,
}

/// (deadline, insertion order, slot, generation): equal deadlines fire in the order
/// they were set.
type Entry = Reverse<(Instant, u64, u32, u32)>;

#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Entry>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    seq: u64,
    pending: usize,
    /// Repeating timers fired in the current `expire`, re-armed at its end.
    rearm: Vec<(Instant, TimerId)>,
}

impl Timers {
    pub(crate) fn len(&self) -> usize {
        self.pending
    }

    pub(crate) fn add(&mut self, deadline: Instant, repeat: Option<Duration>) -> TimerId {
        let index = self.free.pop().unwrap_or_else(|| {
            self.slots.push(Slot::default());
            (self.slots.len() - 1) as u32
        });
        let slot = &mut self.slots[index as usize];
        slot.pending = true;
        // A zero period would fire forever within one poll.
        slot.repeat = repeat.map(|r| r.max(Duration::from_millis(1)));
        let id = TimerId {
            index,
            generation: slot.generation,
        };
        self.push(deadline, id);
        self.pending += 1;
        id
    }

    fn push(&mut self, deadline: Instant, id: TimerId) {
        self.seq += 1;
        self.heap
            .push(Reverse((deadline, self.seq, id.index, id.generation)));
    }

    fn live(&self, id: TimerId) -> bool {
        self.slots
            .get(id.index as usize)
            .is_some_and(|s| s.pending && s.generation == id.generation)
    }

    pub(crate) fn cancel(&mut self, id: TimerId) -> bool {
        if !self.live(id) {
            return false;
        }
        self.release(id.index);
        // Drop dead entries once they outnumber the live ones.
        if self.heap.len() > 64 && self.heap.len() > 2 * self.pending {
            let slots = &self.slots;
            self.heap.retain(|Reverse((_, _, i, g))| {
                let s = &slots[*i as usize];
                s.pending && s.generation == *g
            });
        }
        true
    }

    fn release(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        slot.pending = false;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(index);
        self.pending -= 1;
    }

    /// The earliest deadline of a live timer, dropping dead entries on the way.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&Reverse((deadline, _, index, generation))) = self.heap.peek() {
            if self.live(TimerId { index, generation }) {
                return Some(deadline);
            }
            self.heap.pop();
        }
        None
    }

    /// Fires every timer due at `now`, in deadline order, each at most once per call.
    pub(crate) fn expire(&mut self, now: Instant, mut fire: impl FnMut(TimerId)) {
        while let Some(&Reverse((deadline, _, index, generation))) = self.heap.peek() {
            if deadline > now {
                break;
            }
            self.heap.pop();
            let id = TimerId { index, generation };
            if !self.live(id) {
                continue;
            }
            fire(id);
            match self.slots[index as usize].repeat {
                Some(period) => {
                    // Skip missed periods rather than firing a burst.
                    let Some(mut next) = deadline.checked_add(period) else {
                        // A period too long to represent never comes round again.
                        self.release(index);
                        continue;
                    };
                    if next <= now {
                        next = now.checked_add(period).unwrap_or(next);
                    }
                    // Re-armed after the loop, so a timer fires once per call.
                    self.rearm.push((next, id));
                }
                None => self.release(index),
            }
        }
        while let Some((deadline, id)) = self.rearm.pop() {
            self.push(deadline, id);
        }
    }
}
