//! The generator's reorder buffer: records waiting for their arrival time, released by
//! arrival time and, within a millisecond, in the order they were put in.
//!
//! Why not a binary heap (as before): at 100,000 events/s the buffer holds millions of
//! records (a session's later steps, late events, refunds), and every record taken out sifted
//! through twenty-odd levels of a heap no cache holds: two thirds of the time spent
//! generating the benchmarks' traffic went to that comparison. The generator's use has two
//! properties a general heap cannot exploit:
//! - **monotone**: nothing is put in earlier than the last record taken out (every future
//!   record arrives at or after the next session start, which is at or after what was
//!   released);
//! - **millisecond keys, mostly near**: most records arrive within minutes of the frontier.
//!
//! So this is a timing wheel: one bucket per millisecond over the next `2^span_bits`
//! milliseconds from the last record taken out (17.5 minutes in the generator), each bucket a
//! list in the order records were put in, linked through the records' own ids (no allocation
//! per bucket). Records further away (refunds days later, sessions delivered half an hour
//! late) wait in a small heap ordered by (time, order put in), and move into the wheel as soon
//! as the wheel's span reaches them, which is before anything put in later can land in the
//! same bucket: so order within a millisecond stays the order of putting in, exactly as the
//! heap's (time, sequence) order was. A record put in earlier than the last one taken out
//! (never, in the generator) is still ordered correctly, by rebuilding the wheel around it.
//!
//! Ids must be distinct while queued (the generator's slots: an id is freed when taken out).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A bucket's or a link's "nothing": entries are stored as id + 1.
const NONE: u32 = 0;

#[derive(Debug)]
pub(crate) struct ArrivalQueue {
    /// Buckets in the wheel, a power of two.
    span: u64,
    /// No record queued is earlier; the wheel holds those in `[base_ms, base_ms + span)`, the
    /// far heap those at or after its end.
    base_ms: i64,
    /// Per bucket (a millisecond modulo the span): its first and last entry (id + 1).
    first: Vec<u32>,
    last: Vec<u32>,
    /// Per id: the entry after it in its bucket (id + 1), `NONE` at the end.
    next: Vec<u32>,
    /// One bit per bucket: whether it holds anything (to skip empty stretches a word at a time).
    occupied: Vec<u64>,
    /// The earliest non-empty bucket's millisecond.
    earliest: Option<i64>,
    in_wheel: usize,
    /// Records at or after the wheel's end, by (time, order put in).
    far: BinaryHeap<Reverse<(i64, u64, u32)>>,
    far_sequence: u64,
}

impl ArrivalQueue {
    /// A queue whose wheel spans `2^span_bits` milliseconds (6 ≤ bits ≤ 24) from `floor_ms`, the
    /// earliest time expected to be put in.
    pub(crate) fn new(span_bits: u32, floor_ms: i64) -> Self {
        let span = 1u64 << span_bits.clamp(6, 24);
        Self {
            span,
            base_ms: floor_ms,
            // Zeroed: untouched pages cost nothing until a bucket at that place is used.
            first: vec![NONE; span as usize],
            last: vec![NONE; span as usize],
            next: Vec::new(),
            occupied: vec![0; (span / 64) as usize],
            earliest: None,
            in_wheel: 0,
            far: BinaryHeap::new(),
            far_sequence: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.in_wheel + self.far.len()
    }

    /// Queues `id` to be taken out at `at_ms`, after everything queued before at that time.
    pub(crate) fn push(&mut self, at_ms: i64, id: u32) {
        if at_ms < self.base_ms {
            self.rebase(at_ms);
        }
        if self.in_span(at_ms) {
            self.link(at_ms, id);
        } else {
            self.far.push(Reverse((at_ms, self.far_sequence, id)));
            self.far_sequence += 1;
        }
    }

    /// The earliest time queued.
    pub(crate) fn peek(&self) -> Option<i64> {
        // Everything in the wheel is before everything in the far heap.
        (self.earliest).or_else(|| self.far.peek().map(|Reverse((at_ms, _, _))| *at_ms))
    }

    /// Takes out the earliest record: its time and id.
    pub(crate) fn pop(&mut self) -> Option<(i64, u32)> {
        let Some(at_ms) = self.earliest else {
            let Reverse((at_ms, _, id)) = self.far.pop()?;
            self.base_ms = at_ms;
            self.bring_near();
            return Some((at_ms, id));
        };
        let bucket = self.bucket(at_ms);
        let entry = self.first[bucket];
        let id = entry - 1;
        let after = std::mem::replace(&mut self.next[id as usize], NONE);
        self.first[bucket] = after;
        self.in_wheel -= 1;
        if after == NONE {
            self.last[bucket] = NONE;
            self.occupied[bucket / 64] &= !(1 << (bucket % 64));
            self.earliest = match self.in_wheel {
                0 => None,
                _ => self.next_occupied(at_ms + 1),
            };
        }
        if at_ms > self.base_ms {
            self.base_ms = at_ms;
            self.bring_near();
        }
        Some((at_ms, id))
    }

    fn in_span(&self, at_ms: i64) -> bool {
        at_ms >= self.base_ms && at_ms.abs_diff(self.base_ms) < self.span
    }

    fn bucket(&self, at_ms: i64) -> usize {
        (at_ms as u64 & (self.span - 1)) as usize
    }

    fn link(&mut self, at_ms: i64, id: u32) {
        let entry = id
            .checked_add(1)
            .expect("ids are the generator's slots, far fewer than u32::MAX");
        let index = id as usize;
        if self.next.len() <= index {
            self.next.resize(index + 1, NONE);
        }
        self.next[index] = NONE;
        let bucket = self.bucket(at_ms);
        match self.last[bucket] {
            NONE => {
                self.first[bucket] = entry;
                self.occupied[bucket / 64] |= 1 << (bucket % 64);
            }
            last => self.next[(last - 1) as usize] = entry,
        }
        self.last[bucket] = entry;
        self.in_wheel += 1;
        self.earliest = Some(self.earliest.map_or(at_ms, |e| e.min(at_ms)));
    }

    /// Moves the far records the wheel's span now reaches into it, in their order: they come
    /// before anything put in from now on at the same millisecond, as they were put in before.
    fn bring_near(&mut self) {
        while let Some(&Reverse((at_ms, _, id))) = self.far.peek() {
            if !self.in_span(at_ms) {
                break;
            }
            self.far.pop();
            self.link(at_ms, id);
        }
    }

    /// The first occupied bucket's millisecond at or after `from_ms`, within the wheel.
    fn next_occupied(&self, from_ms: i64) -> Option<i64> {
        let end_ms = self.base_ms.saturating_add(self.span as i64);
        let mut at_ms = from_ms;
        while at_ms < end_ms {
            let bucket = self.bucket(at_ms);
            // A word never wraps the ring's end (the span is a multiple of 64), so its bits
            // from `bucket` on are consecutive milliseconds from `at_ms` on.
            let bits = self.occupied[bucket / 64] >> (bucket % 64);
            if bits != 0 {
                let found = at_ms + i64::from(bits.trailing_zeros());
                return (found < end_ms).then_some(found);
            }
            at_ms += (64 - bucket % 64) as i64;
        }
        None
    }

    /// Lowers the wheel's start to `at_ms`, keeping the order of everything queued.
    fn rebase(&mut self, at_ms: i64) {
        let mut queued = Vec::with_capacity(self.len());
        while let Some(entry) = self.pop() {
            queued.push(entry);
        }
        self.base_ms = at_ms;
        for (queued_ms, id) in queued {
            self.push(queued_ms, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The order the queue must keep: a heap of (time, order put in).
    #[derive(Default)]
    struct Reference {
        heap: BinaryHeap<Reverse<(i64, u64, u32)>>,
        sequence: u64,
    }

    impl Reference {
        fn push(&mut self, at_ms: i64, id: u32) {
            self.heap.push(Reverse((at_ms, self.sequence, id)));
            self.sequence += 1;
        }

        fn pop(&mut self) -> Option<(i64, u32)> {
            self.heap.pop().map(|Reverse((at_ms, _, id))| (at_ms, id))
        }
    }

    /// Random interleavings of putting in and taking out, as the generator does (nothing put
    /// in before the frontier), with times near, far past the span and equal to others.
    fn check_against_the_reference(seed: u64, span_bits: u32, steps: usize, backwards: f64) {
        let mut rng = Rng::seeded(seed);
        let floor_ms = rng.range_i64(-5_000, 5_000);
        let mut queue = ArrivalQueue::new(span_bits, floor_ms);
        let mut reference = Reference::default();
        let (mut frontier_ms, mut free, mut next_id) = (floor_ms, Vec::new(), 0u32);
        for step in 0..steps {
            if rng.chance(0.55) {
                let at_ms = match rng.below(10) {
                    0..=5 => frontier_ms + rng.range_i64(0, 40),
                    6 | 7 => frontier_ms + rng.range_i64(0, 4 << span_bits),
                    8 => frontier_ms,
                    _ if rng.chance(backwards) => frontier_ms - rng.range_i64(1, 3 << span_bits),
                    _ => frontier_ms + rng.range_i64(0, 1 << span_bits),
                };
                let id = free.pop().unwrap_or_else(|| {
                    next_id += 1;
                    next_id - 1
                });
                queue.push(at_ms, id);
                reference.push(at_ms, id);
            } else {
                frontier_ms += rng.range_i64(0, 30);
                assert_eq!(
                    queue.peek(),
                    reference.heap.peek().map(|r| r.0.0),
                    "step {step}"
                );
                let taken = queue.pop();
                assert_eq!(taken, reference.pop(), "seed {seed}, step {step}");
                if let Some((at_ms, id)) = taken {
                    frontier_ms = frontier_ms.max(at_ms);
                    free.push(id);
                }
            }
            assert_eq!(queue.len(), reference.heap.len());
        }
        while let Some(expected) = reference.pop() {
            assert_eq!(queue.pop(), Some(expected), "seed {seed}, draining");
        }
        assert_eq!((queue.pop(), queue.peek(), queue.len()), (None, None, 0));
    }

    #[test]
    fn releases_in_time_then_order_put_in_as_a_heap_would() {
        for seed in 0..40 {
            check_against_the_reference(seed, 6, 20_000, 0.0);
            check_against_the_reference(seed, 10, 20_000, 0.0);
        }
        check_against_the_reference(99, 20, 200_000, 0.0);
    }

    #[test]
    fn a_record_put_in_before_the_last_taken_out_is_still_ordered() {
        for seed in 0..40 {
            check_against_the_reference(seed, 6, 5_000, 0.3);
        }
    }

    #[test]
    fn equal_times_leave_in_the_order_put_in_across_the_far_heap() {
        let mut queue = ArrivalQueue::new(6, 0);
        // 1 and 2 at 1,000 ms wait in the far heap; 3 is put in at the same time once the
        // wheel reaches it, and must still leave after them.
        queue.push(1_000, 1);
        queue.push(1_000, 2);
        queue.push(990, 0);
        assert_eq!(queue.pop(), Some((990, 0)));
        queue.push(1_000, 3);
        queue.push(995, 4);
        let order: Vec<_> = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(order, [(995, 4), (1_000, 1), (1_000, 2), (1_000, 3)]);
    }
}
