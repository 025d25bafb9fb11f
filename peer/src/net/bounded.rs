//! Small bounded structures for what strangers can make the event loop remember or do:
//! log lines per remote, dials per second. Spoofed mDNS answers cost nothing to send and
//! can name any number of peer ids, so nothing they feed may grow without a bound.

use libp2p::PeerId;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Allows one event per key per `every`, remembering at most `cap` keys. When full, the
/// oldest half is forgotten: a forgotten key may be let through once more, which costs a
/// log line, never memory.
#[derive(Debug)]
pub(crate) struct Throttle<K> {
    last: HashMap<K, Instant>,
    every: Duration,
    cap: usize,
}

impl<K: Hash + Eq + Clone> Throttle<K> {
    pub(crate) fn new(every: Duration, cap: usize) -> Self {
        Throttle { last: HashMap::new(), every, cap: cap.max(2) }
    }

    /// Whether the event for `key` may happen now (and records it if so).
    pub(crate) fn allow(&mut self, key: K, now: Instant) -> bool {
        if let Some(t) = self.last.get(&key)
            && now.saturating_duration_since(*t) < self.every
        {
            return false;
        }
        if self.last.len() >= self.cap && !self.last.contains_key(&key) {
            self.forget_oldest_half();
        }
        self.last.insert(key, now);
        true
    }

    fn forget_oldest_half(&mut self) {
        let mut times: Vec<Instant> = self.last.values().copied().collect();
        times.sort_unstable();
        let cut = times[times.len() / 2];
        self.last.retain(|_, t| *t > cut);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.last.len()
    }
}

/// The `cap` keys inserted most recently.
#[derive(Debug)]
pub(crate) struct Recent<K> {
    set: HashSet<K>,
    order: VecDeque<K>,
    cap: usize,
}

impl<K: Hash + Eq + Clone> Recent<K> {
    pub(crate) fn new(cap: usize) -> Self {
        Recent { set: HashSet::new(), order: VecDeque::new(), cap: cap.max(1) }
    }

    /// Remembers `key` (forgetting the oldest past the cap); true if it was new.
    pub(crate) fn insert(&mut self, key: K) -> bool {
        if !self.set.insert(key.clone()) {
            return false;
        }
        self.order.push_back(key);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    pub(crate) fn contains(&self, key: &K) -> bool {
        self.set.contains(key)
    }
}

/// Requests waiting for an answer, counted per peer and in all, each bounded: a peer past
/// its share is refused at once, and only that peer.
#[derive(Debug)]
pub(crate) struct Waiting<I> {
    by_id: HashMap<I, PeerId>,
    per_peer: HashMap<PeerId, u32>,
    peer_cap: u32,
    total_cap: usize,
}

impl<I: Hash + Eq> Waiting<I> {
    pub(crate) fn new(peer_cap: u32, total_cap: u32) -> Self {
        Waiting {
            by_id: HashMap::new(),
            per_peer: HashMap::new(),
            peer_cap,
            total_cap: usize::try_from(total_cap).unwrap_or(usize::MAX),
        }
    }

    /// Counts request `id` of `peer`, or refuses it with a message for that peer.
    pub(crate) fn take(&mut self, peer: PeerId, id: I) -> Result<(), String> {
        let mine = self.per_peer.get(&peer).copied().unwrap_or(0);
        let all = self.by_id.len();
        if mine >= self.peer_cap || all >= self.total_cap {
            return Err(format!(
                "node overloaded: {mine} of this peer's requests ({all} in all) still wait for an answer \
                 (at most {} per peer, {} in all); retry once they are answered",
                self.peer_cap, self.total_cap
            ));
        }
        self.by_id.insert(id, peer);
        *self.per_peer.entry(peer).or_insert(0) += 1;
        Ok(())
    }

    /// Request `id` was answered or failed; an id never counted is ignored.
    pub(crate) fn answered(&mut self, id: &I) {
        let Some(peer) = self.by_id.remove(id) else { return };
        if let Some(n) = self.per_peer.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_peer.remove(&peer);
            }
        }
    }

    /// The peer is gone: its requests no longer count (their late answers are ignored).
    pub(crate) fn forget(&mut self, peer: &PeerId) {
        if self.per_peer.remove(peer).is_some() {
            self.by_id.retain(|_, p| p != peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_keeps_the_newest_up_to_its_cap() {
        let mut r = Recent::new(3);
        assert!(r.insert(1) && r.insert(2) && r.insert(3));
        assert!(!r.insert(2), "known already");
        assert!(r.insert(4));
        assert!(!r.contains(&1) && r.contains(&2) && r.contains(&4));
        for i in 10..10_000 {
            r.insert(i);
        }
        assert_eq!((r.set.len(), r.order.len()), (3, 3));
    }

    #[test]
    fn a_peer_past_its_share_is_refused_alone_and_recovers() {
        let (greedy, other) = (PeerId::random(), PeerId::random());
        let mut w = Waiting::new(3, 5);
        for id in 0..3u64 {
            w.take(greedy, id).unwrap();
        }
        let why = w.take(greedy, 3).unwrap_err();
        assert!(why.contains("overloaded") && why.contains("at most 3 per peer"), "{why}");
        w.take(other, 10).unwrap();
        w.take(other, 11).unwrap();
        assert!(w.take(other, 12).is_err(), "the total holds too");
        w.answered(&0);
        w.answered(&0);
        w.answered(&99);
        w.take(greedy, 4).unwrap();
        w.forget(&greedy);
        assert_eq!(w.by_id.len(), 2);
        w.answered(&1);
        for id in 20..23u64 {
            w.take(greedy, id).unwrap();
        }
        assert!(w.per_peer.get(&greedy) == Some(&3));
    }

    #[test]
    fn a_key_passes_once_per_period_and_memory_stays_bounded() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Duration::from_secs(60), 100);
        assert!(t.allow("a", t0));
        assert!(!t.allow("a", t0 + Duration::from_secs(59)));
        assert!(t.allow("a", t0 + Duration::from_secs(61)));
        // A flood of distinct keys (spoofed peer ids) never grows it past the cap.
        let mut t = Throttle::new(Duration::from_secs(60), 100);
        for i in 0..100_000u32 {
            assert!(t.allow(i, t0 + Duration::from_millis(u64::from(i))), "a new key passes");
            assert!(t.len() <= 100);
        }
    }
}
