//! How a node keeps its Kademlia routing table fresh at a cost that does not grow with
//! the mesh.
//!
//! libp2p's periodic bootstrap looks up the node's own key and then one key in every bucket
//! farther than its closest neighbour's: about log2(n) lookups of ~20 requests each, every
//! request a fresh handshake once links have idled out, and every node of a mesh started
//! together doing it in the same second. At 256 nodes that made the idle mesh's CPU grow
//! faster than the node count (docs/BENCHMARKS.md). Here a round looks up the node's own key
//! (its neighbourhood, where newcomers near it show up; on a LAN, where mDNS has told it of
//! every peer, one hop) and one farther bucket that still has room, taken in turn: a full
//! bucket has nothing to learn from a lookup (a dead entry leaves when a request to it
//! fails, and the next peer heard of takes its slot), and a lookup into the far half of a
//! large mesh takes more hops the larger it is. Rounds are spread over 0.5–1.5× the
//! interval, so nodes started together do not refresh together.

use libp2p::PeerId;
use libp2p::kad::KBucketKey;
use std::time::{Duration, Instant};

/// How often a node refreshes on average (libp2p's bootstrap default).
pub(crate) const NODE_REFRESH: Duration = Duration::from_secs(300);

/// The farthest bucket's index (distances are 256 bits).
const FARTHEST: u32 = 255;

/// When the next round is due and which bucket it refreshes.
#[derive(Debug)]
pub(crate) struct Refresh {
    every: Duration,
    next: Instant,
    last_bucket: Option<u32>,
}

impl Refresh {
    /// The first round comes `jitter(every)` after `now`; `spread` in [0, 1) picks where
    /// in 0.5–1.5× `every` (random in use, fixed in tests).
    pub(crate) fn new(every: Duration, now: Instant, spread: f64) -> Self {
        Refresh { every, next: now + jittered(every, spread), last_bucket: None }
    }

    /// When the next round is due.
    pub(crate) fn next(&self) -> Instant {
        self.next
    }

    /// Starts a round at `now`: schedules the next (`spread` as in [`Refresh::new`]) and
    /// returns the bucket to look up beside the node's own key, the next in turn of
    /// `with_room`: the indices, in increasing order, of the buckets farther than the closest
    /// neighbour's that are not full ([`with_room`] makes it).
    pub(crate) fn round(&mut self, now: Instant, with_room: &[u32], spread: f64) -> Option<u32> {
        self.next = now + jittered(self.every, spread);
        let bucket = self
            .last_bucket
            .and_then(|last| with_room.iter().find(|b| **b > last))
            .or_else(|| with_room.first())
            .copied()?;
        self.last_bucket = Some(bucket);
        Some(bucket)
    }
}

/// A key in bucket `index` of `local`'s routing table, found by trial as libp2p's own
/// bootstrap does (the wire carries a key's preimage, so no key can be made for a given
/// distance): nearly sure for the farthest buckets, where nearly all peers are; a miss is a
/// lookup of a farther bucket, still of use.
pub(crate) fn key_in_bucket(local: PeerId, index: u32) -> PeerId {
    let local = KBucketKey::from(local);
    let mut key = PeerId::random();
    for _ in 0..16 {
        if local.distance(&KBucketKey::from(key)).ilog2() == Some(index) {
            break;
        }
        key = PeerId::random();
    }
    key
}

/// The buckets a round may refresh: those farther than `closest` (the closest non-empty
/// bucket's index; `None`: an empty table, nothing to refresh) not in `full`.
pub(crate) fn with_room(closest: Option<u32>, full: &[u32]) -> Vec<u32> {
    closest.map_or_else(Vec::new, |c| (c.saturating_add(1)..=FARTHEST).filter(|b| !full.contains(b)).collect())
}

/// `every` scaled into 0.5–1.5× by `spread` in [0, 1).
fn jittered(every: Duration, spread: f64) -> Duration {
    every.mul_f64(0.5 + spread.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_are_spread_over_half_to_one_and_a_half_intervals() {
        let t0 = Instant::now();
        let every = Duration::from_secs(300);
        assert_eq!(Refresh::new(every, t0, 0.0).next(), t0 + Duration::from_secs(150));
        assert_eq!(Refresh::new(every, t0, 0.5).next(), t0 + every);
        let mut r = Refresh::new(every, t0, 0.999);
        assert!(r.next() < t0 + Duration::from_secs(450) && r.next() > t0 + Duration::from_secs(449));
        let t1 = r.next();
        r.round(t1, &[], 0.0);
        assert_eq!(r.next(), t1 + Duration::from_secs(150));
    }

    #[test]
    fn each_round_refreshes_the_next_farther_bucket_with_room_in_turn() {
        let t0 = Instant::now();
        let mut r = Refresh::new(Duration::from_secs(300), t0, 0.5);
        // Closest neighbour in bucket 252, none full: 253, 254, 255, then again from 253.
        let room = with_room(Some(252), &[]);
        let picked: Vec<Option<u32>> = (0..5).map(|_| r.round(t0, &room, 0.5)).collect();
        assert_eq!(picked, [Some(253), Some(254), Some(255), Some(253), Some(254)]);
        // A newcomer closer than any before: the turn goes on over the wider range.
        let room = with_room(Some(249), &[]);
        assert_eq!(r.round(t0, &room, 0.5), Some(255));
        assert_eq!(r.round(t0, &room, 0.5), Some(250));
        // Full buckets are passed over; all full: only the own key is looked up.
        let room = with_room(Some(249), &[251, 252, 254, 255]);
        assert_eq!(room, [250, 253]);
        assert_eq!(r.round(t0, &room, 0.5), Some(253));
        assert_eq!(r.round(t0, &room, 0.5), Some(250));
        assert_eq!(r.round(t0, &with_room(Some(253), &[254, 255]), 0.5), None);
    }

    #[test]
    fn keys_are_found_in_the_far_buckets() {
        let local = PeerId::random();
        let me = KBucketKey::from(local);
        // Found within 16 trials with probability 1 - 2^-16 and 1 - (3/4)^16 (> 0.98).
        for index in [255, 254] {
            let hits = (0..20)
                .filter(|_| me.distance(&KBucketKey::from(key_in_bucket(local, index))).ilog2() == Some(index))
                .count();
            assert!(hits >= 17, "bucket {index}: {hits} of 20");
        }
    }

    #[test]
    fn nothing_farther_than_the_farthest_bucket_or_in_an_empty_table() {
        let t0 = Instant::now();
        let mut r = Refresh::new(Duration::from_secs(300), t0, 0.5);
        assert_eq!(r.round(t0, &with_room(None, &[]), 0.5), None);
        assert_eq!(r.round(t0, &with_room(Some(FARTHEST), &[]), 0.5), None);
        assert_eq!(r.round(t0, &with_room(Some(254), &[]), 0.5), Some(255));
        assert_eq!(r.round(t0, &with_room(Some(254), &[]), 0.5), Some(255));
    }
}
