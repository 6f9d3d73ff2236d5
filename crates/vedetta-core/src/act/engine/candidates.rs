//! The candidates of the segment triggers: users with an intent not yet judged at a minute
//! end after it, each with the time that decides when it is done.
//!
//! A list, appended to, not a map: every intent looked its user up in a hash map of its
//! own (hundreds of thousands of entries at 25,000 events/s, millions at 100,000), a
//! probe into memory no cache holds, most of it for users seen for the first time: a
//! seventh of the trigger stage's time. Now an intent appends its user at most once per
//! minute of event time (the engine skips it when the user's previous intent lies in the
//! same minute and is still listed, see [`super::Engine::observe_judged`]), and the list is
//! put in order, one entry per user holding the latest time, when it is read: at a
//! minute's judging, a snapshot's encoding, a state's comparison.
//!
//! What an entry's time decides is only whether the user stays listed after the judging of
//! a minute end (it stays if the time is at or past it), and a minute end is a minute's
//! edge: any time in the same minute decides alike. So the time kept may be the first
//! intent of the user's latest listed minute rather than the latest intent.
//!
//! Each entry carries where the user's facts are ([`super::users::UserRef`]): most users
//! are found by that place, not by pseudonym. A user let go is let go of here at once
//! ([`Candidates::remove_all`], by the place freed), so every entry of a user names the
//! same place, the user's; entries
//! read back from storage name none (the users of a restored state are found by
//! pseudonym).

use super::users::{UserRef, prefetch};
use crate::pipeline::hash::FastHashMap;
use crate::record::UserPseudonym;
use serde::{Deserialize, Serialize};

/// A user, the time of an intent of it, and where its facts are ([`UserRef::at`]).
pub type Candidate = (UserPseudonym, i64, u32);

/// The candidates: (user, time, place) entries, possibly several per user (see the
/// module).
#[derive(Clone, Debug, Default)]
pub struct Candidates {
    entries: Vec<Candidate>,
    /// The entries before this are in pseudonym order, one per user.
    sorted: usize,
}

impl Candidates {
    /// Lists `user`, whose facts are at `at`, with an intent at `at_ms`.
    #[inline]
    pub fn push_at(&mut self, user: UserPseudonym, at_ms: i64, at: u32) {
        self.entries.push((user, at_ms, at));
    }

    /// Lists `user` with an intent at `at_ms`, its place not known (found by pseudonym).
    pub fn push(&mut self, user: UserPseudonym, at_ms: i64) {
        self.push_at(user, at_ms, UserRef::UNKNOWN_AT);
    }

    /// Puts the entries in pseudonym order, one per user with its latest time.
    pub fn normalize(&mut self) {
        if self.sorted == self.entries.len() {
            return;
        }
        // Latest first within a user, so that dedup keeps it.
        self.entries
            .sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        self.entries.dedup_by_key(|(user, _, _)| *user);
        self.sorted = self.entries.len();
    }

    /// Puts them in order when the unsorted tail has grown past the sorted part and past
    /// `held`, the users the engine holds (every entry names one): memory stays within
    /// about twice the held users' entries.
    ///
    /// Judging lets go of every entry before its minute end, so in a stream whose event
    /// time moves on the list holds only the intents of the minutes not judged yet, each
    /// user at most once a minute: fewer entries than held users, and nothing to sort
    /// until a segment fires. Only event time that stands still while users keep coming
    /// back in other minutes grows it past that; sorting it then keeps one entry per user.
    /// (The floor was a fixed 65,536 entries: at 100,000 events/s the list was sorted
    /// again each time its tail doubled, a tenth of the stage's time, `perf`, stop 30.)
    #[inline]
    pub fn bound(&mut self, held: usize) {
        let tail = self.entries.len() - self.sorted;
        if tail > self.sorted.max(held).max(1 << 16) {
            self.normalize();
        }
    }

    /// The entries, in pseudonym order, one per user.
    pub fn ordered(&mut self) -> &[Candidate] {
        self.normalize();
        &self.entries
    }

    /// The latest time `user` is listed with (in order or not).
    pub fn get(&self, user: &UserPseudonym) -> Option<i64> {
        let (sorted, tail) = self.entries.split_at(self.sorted);
        let found = (sorted.binary_search_by(|(u, _, _)| u.cmp(user)).ok()).map(|i| sorted[i].1);
        (tail
            .iter()
            .filter(|(u, _, _)| u == user)
            .map(|(_, at, _)| *at))
        .fold(found, |best, at| Some(best.map_or(at, |b: i64| b.max(at))))
    }

    /// Whether `user` is listed, once [`Self::normalize`]d (else only its sorted part is
    /// searched).
    pub fn contains_sorted(&self, user: &UserPseudonym) -> bool {
        (self.entries[..self.sorted].binary_search_by(|(u, _, _)| u.cmp(user))).is_ok()
    }

    /// Keeps the entries with a time at or past `from`, calling `done` with the user of
    /// each entry let go (a user listed again later in the list stays listed; `done` is
    /// then called for it all the same). No sorting: most minutes no segment fires and
    /// the order is not needed.
    pub fn retain_from(&mut self, from: i64, mut done: impl FnMut(UserPseudonym)) {
        self.retain(|user, at, _| {
            let keep = at >= from;
            if !keep {
                done(user);
            }
            keep
        });
    }

    /// Lets go of the users in `gone`, each named with the place its facts were freed from
    /// (in any order; sorted by pseudonym here when an entry names no place).
    ///
    /// An entry that names a place is let go when that place was freed: every entry of a
    /// held user names the user's place (see the module), and no freed place is given
    /// again before this is called. So the test is one bit of a set of places (half a
    /// megabyte for 4 million), not a search among the gone: a binary search per entry
    /// among the million users a full table lets go at a time was a sixth of what the
    /// stage cost the processor at 100,000 events/s (`perf`, stop 29).
    pub fn remove_all(&mut self, gone: &mut [UserRef]) {
        if gone.is_empty() {
            return;
        }
        let places = gone
            .iter()
            .map(|r| r.at)
            .filter(|at| *at != UserRef::UNKNOWN_AT);
        let mut freed = vec![0u64; places.clone().max().map_or(0, |m| m as usize / 64 + 1)];
        for at in places {
            freed[at as usize / 64] |= 1 << (at % 64);
        }
        let mut by_user = false;
        self.retain(|user, _, at| {
            if at != UserRef::UNKNOWN_AT {
                return (freed.get(at as usize / 64)).is_none_or(|w| w & (1 << (at % 64)) == 0);
            }
            if !by_user {
                gone.sort_unstable_by_key(|r| r.user);
                by_user = true;
            }
            gone.binary_search_by(|r| r.user.cmp(&user)).is_err()
        });
    }

    /// Keeps the entries `keep` says to, in their order (the sorted part stays sorted).
    fn retain(&mut self, mut keep: impl FnMut(UserPseudonym, i64, u32) -> bool) {
        let mut index = 0;
        let mut sorted_kept = 0;
        let sorted = self.sorted;
        self.entries.retain(|(user, at, place)| {
            let kept = keep(*user, *at, *place);
            if kept && index < sorted {
                sorted_kept += 1;
            }
            index += 1;
            kept
        });
        self.sorted = sorted_kept;
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.sorted = 0;
    }

    /// Users listed.
    pub fn users(&self) -> usize {
        self.normalized().len()
    }

    /// Entries held (users listed more than once count more than once).
    pub fn entries(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry, in no order (a user possibly more than once).
    pub fn raw(&self) -> &[Candidate] {
        &self.entries
    }

    /// The (user, time) entries in order, one per user, without changing `self`.
    pub fn normalized(&self) -> Vec<(UserPseudonym, i64)> {
        let mut copy = self.clone();
        copy.normalize();
        (copy.entries.into_iter())
            .map(|(user, at_ms, _)| (user, at_ms))
            .collect()
    }
}

/// How many entries ahead [`latest_times`] asks for an entry's user number, and for the
/// user's pseudonym and time (which need the number): far enough to cover a wait for
/// memory, near enough for the number to have come.
const PLACES_AHEAD: usize = 32;
const USERS_AHEAD: usize = 16;

/// The latest time each of `n` held users is listed with in `entries` (`None`: not
/// listed), the `i`-th user held at place `place(i)` under pseudonym `user(i)`: what a
/// search of the entries [`Candidates::normalize`]d gives for each user's pseudonym,
/// without sorting the entries or searching them millions of times (a binary search per
/// user was half of the snapshot thread's encoding of the trigger stage with 3.8 million
/// users held, `perf`, stop 35). Entries are found by their place, through a table from
/// place to user; those that name no place (a restored state's) or a place another user
/// holds now are found by pseudonym, through a map of their own.
pub fn latest_times<'a>(
    entries: &[Candidate],
    n: usize,
    place: impl Fn(usize) -> u32,
    user: impl Fn(usize) -> &'a UserPseudonym,
) -> Vec<Option<i64>> {
    const NOBODY: u32 = u32::MAX;
    let places = (0..n).map(&place).max().map_or(0, |most| most as usize + 1);
    let mut held_at = vec![NOBODY; places];
    for i in 0..n {
        // Places are u32, so no more than u32::MAX users are held.
        held_at[place(i) as usize] = i as u32;
    }
    let later = |time: &mut Option<i64>, at_ms: i64| {
        *time = Some(time.map_or(at_ms, |t| t.max(at_ms)));
    };
    let mut times = vec![None; n];
    let mut by_pseudonym: FastHashMap<UserPseudonym, i64> = FastHashMap::default();
    for (k, (listed, at_ms, at)) in entries.iter().enumerate() {
        // Each entry reads three places at random (its place's user number, that user's
        // pseudonym, its time): asked for ahead in two steps, the user number first, the
        // other two once it has come.
        if let Some((_, _, far)) = entries.get(k + PLACES_AHEAD)
            && let Some(number) = held_at.get(*far as usize)
        {
            prefetch(number);
        }
        if let Some((_, _, near)) = entries.get(k + USERS_AHEAD)
            && let Some(&i) = held_at.get(*near as usize)
            && i != NOBODY
        {
            prefetch(user(i as usize));
            if let Some(time) = times.get(i as usize) {
                prefetch(time);
            }
        }
        let held = (held_at.get(*at as usize).copied())
            .filter(|&i| i != NOBODY && user(i as usize) == listed);
        match held {
            Some(i) => later(&mut times[i as usize], *at_ms),
            None => {
                let time = by_pseudonym.entry(*listed).or_insert(*at_ms);
                *time = (*time).max(*at_ms);
            }
        }
    }
    if !by_pseudonym.is_empty() {
        for (i, time) in times.iter_mut().enumerate() {
            if let Some(at_ms) = by_pseudonym.get(user(i)) {
                later(time, *at_ms);
            }
        }
    }
    times
}

impl PartialEq for Candidates {
    fn eq(&self, other: &Self) -> bool {
        self.normalized() == other.normalized()
    }
}

impl FromIterator<(UserPseudonym, i64)> for Candidates {
    fn from_iter<I: IntoIterator<Item = (UserPseudonym, i64)>>(entries: I) -> Self {
        let mut candidates = Candidates {
            entries: (entries.into_iter())
                .map(|(user, at_ms)| (user, at_ms, UserRef::UNKNOWN_AT))
                .collect(),
            sorted: 0,
        };
        candidates.normalize();
        candidates
    }
}

/// As a map from user to time, in pseudonym order (the bytes of the map it replaced).
impl Serialize for Candidates {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.normalized())
    }
}

impl<'de> Deserialize<'de> for Candidates {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = std::collections::BTreeMap::<UserPseudonym, i64>::deserialize(deserializer)?;
        Ok(map.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn user(n: u8) -> UserPseudonym {
        UserPseudonym([n; 16])
    }

    fn pairs(entries: &[Candidate]) -> Vec<(UserPseudonym, i64)> {
        entries.iter().map(|(user, at, _)| (*user, *at)).collect()
    }

    #[test]
    fn a_user_listed_several_times_reads_as_once_with_its_latest_time() {
        let mut c = Candidates::default();
        c.push(user(2), 10);
        c.push(user(1), 5);
        c.push(user(2), 30);
        c.push(user(2), 20);
        assert_eq!(c.get(&user(2)), Some(30), "found in the unsorted tail");
        assert_eq!(pairs(c.ordered()), [(user(1), 5), (user(2), 30)]);
        assert_eq!(c.get(&user(2)), Some(30), "found in the sorted part");
        assert_eq!(c.get(&user(3)), None);
        c.push(user(1), 7);
        assert_eq!(c.get(&user(1)), Some(7), "sorted part and tail together");
    }

    #[test]
    fn equal_lists_in_other_orders_are_equal_and_encode_alike() {
        let a: Candidates = [(user(1), 5), (user(2), 9), (user(1), 3)]
            .into_iter()
            .collect();
        let mut b = Candidates::default();
        b.push(user(2), 9);
        b.push(user(1), 5);
        assert_eq!(a, b);
        assert_eq!(
            postcard::to_allocvec(&a).unwrap(),
            postcard::to_allocvec(&b).unwrap()
        );
        let map: std::collections::BTreeMap<UserPseudonym, i64> =
            [(user(1), 5), (user(2), 9)].into_iter().collect();
        assert_eq!(
            postcard::to_allocvec(&a).unwrap(),
            postcard::to_allocvec(&map).unwrap(),
            "the bytes of a map in pseudonym order"
        );
        let back: Candidates = postcard::from_bytes(&postcard::to_allocvec(&a).unwrap()).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn judging_lets_go_of_users_whose_time_is_before_the_minute_end() {
        let mut c = Candidates::default();
        for (n, at) in [(1, 59_000), (2, 60_000), (3, 61_000), (1, 120_500)] {
            c.push(user(n), at);
        }
        let mut done = Vec::new();
        c.retain_from(60_000, |u| done.push(u));
        assert_eq!(done, vec![user(1)], "user 1's older entry");
        assert_eq!(
            c.get(&user(1)),
            Some(120_500),
            "and still listed by its later one"
        );
        assert_eq!(c.get(&user(2)), Some(60_000), "a time at the end stays");
        done.clear();
        c.retain_from(120_000, |u| done.push(u));
        done.sort_unstable();
        assert_eq!(done, vec![user(2), user(3)]);
        assert_eq!(pairs(c.ordered()), [(user(1), 120_500)]);
    }

    #[test]
    fn forgotten_users_are_let_go_whatever_their_times() {
        let mut c = Candidates::default();
        for n in [4, 1, 3, 2, 1] {
            c.push(user(n), i64::from(n));
        }
        c.normalize();
        c.push(user(2), 100);
        let gone = |n: u8, at: u32| UserRef { user: user(n), at };
        c.remove_all(&mut [gone(1, 7), gone(2, UserRef::UNKNOWN_AT)]);
        assert_eq!(pairs(c.ordered()), [(user(3), 3), (user(4), 4)]);
        assert!(!c.contains_sorted(&user(1)));
        assert!(c.contains_sorted(&user(4)));
    }

    /// Entries that name a place go when their place was freed, whatever the gone are
    /// named; entries that name none go by pseudonym.
    #[test]
    fn users_let_go_are_found_by_their_freed_places() {
        let mut c = Candidates::default();
        c.push_at(user(1), 10, 0);
        c.push_at(user(2), 20, 64);
        c.push_at(user(3), 30, 65);
        c.push(user(4), 40);
        c.push_at(user(5), 50, 1_000_000);
        c.push_at(user(2), 25, 64);
        let gone = |n: u8, at: u32| UserRef { user: user(n), at };
        c.remove_all(&mut [gone(2, 64), gone(4, 3), gone(5, 1_000_000)]);
        assert_eq!(pairs(c.ordered()), [(user(1), 10), (user(3), 30)]);
        // Places past those freed are kept.
        c.push_at(user(6), 60, 4_000_000);
        c.remove_all(&mut [gone(1, 0)]);
        assert_eq!(pairs(c.ordered()), [(user(3), 30), (user(6), 60)]);
    }

    /// Found by place or by pseudonym, the same times a search of the sorted entries by
    /// each held user's pseudonym gives.
    #[test]
    fn latest_times_are_those_of_the_sorted_entries_by_pseudonym() {
        // Held: user 1 at place 5, user 2 at 0, user 3 at 9, user 7 at 2.
        let held = [(user(1), 5), (user(2), 0), (user(3), 9), (user(7), 2)];
        let mut c = Candidates::default();
        c.push_at(user(1), 10, 5);
        c.push_at(user(1), 30, 5);
        c.push_at(user(1), 20, 5);
        c.push(user(2), 40); // restored: no place
        c.push_at(user(2), 35, 0); // and later listed at its place
        c.push_at(user(3), 50, 2); // a place user 7 holds now
        c.push_at(user(4), 60, 70_000); // not held, past every place
        c.push(user(5), 70); // not held, no place
        c.push_at(user(6), 80, 9); // not held, a place user 3 holds
        let times = latest_times(c.raw(), held.len(), |i| held[i].1, |i| &held[i].0);
        let sorted = c.normalized();
        let searched: Vec<Option<i64>> = (held.iter())
            .map(|(u, _)| (sorted.binary_search_by(|(s, _)| s.cmp(u)).ok()).map(|i| sorted[i].1))
            .collect();
        assert_eq!(times, searched);
        assert_eq!(times, [Some(30), Some(40), Some(50), None]);
        assert_eq!(latest_times(&[], 0, |_| 0, |_| &held[0].0), []);
    }

    #[test]
    fn the_unsorted_tail_is_bounded_by_the_sorted_part_and_the_held_users() {
        let distinct = 256 * 300;
        for held in [distinct, 2 * distinct] {
            let mut c = Candidates::default();
            let mut most = 0;
            for round in 0..6 {
                for n in 0..=u8::MAX {
                    for k in 0..300u16 {
                        let mut p = [n; 16];
                        p[..2].copy_from_slice(&k.to_le_bytes());
                        c.push(UserPseudonym(p), i64::from(round));
                        c.bound(held);
                        most = most.max(c.entries());
                    }
                }
            }
            // Sorted once the tail passes the held users: the sorted users and as many
            // entries as held users at most, never more than twice the held users.
            assert_eq!(most, distinct + held, "held {held}");
            assert_eq!(c.ordered().len(), distinct);
        }
    }
}
