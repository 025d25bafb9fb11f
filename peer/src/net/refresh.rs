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
//!
//! Even so a lookup asks more peers the larger the mesh (one more hop per doubling), and
//! each one asked after its link idled out is a fresh handshake, the bulk of an idle node's
//! CPU: so a round has a budget of [`UPKEEP_DIALS`] dials, and one that cost more puts the
//! next off in proportion (up to [`MAX_STRETCH`]×). Upkeep per node then stays flat, and the
//! idle mesh's CPU grows with the node count, not faster; a larger mesh refreshes a little
//! less often (log2(n)), which costs nothing that matters: a dead entry still leaves at the
//! first request that fails, and mDNS still tells a node of every LAN newcomer at once.

use libp2p::PeerId;
use libp2p::kad::{KBucketKey, QueryId};
use std::time::{Duration, Instant};

/// How often a node refreshes on average (libp2p's bootstrap default).
pub(crate) const NODE_REFRESH: Duration = Duration::from_secs(300);

/// Dials a round may cost before the next is put off: about 0.1 s of CPU per interval at
/// ~7 ms a handshake (both ends), i.e. ~0.06 % of a CPU per node. Rounds cost ~7 dials at 8
/// nodes, 25 at 32, 31 at 64, 41 at 256 (docs/BENCHMARKS.md): from ~16 nodes on, a node
/// spends this budget and no more.
pub(crate) const UPKEEP_DIALS: u32 = 16;

/// The most a round's cost stretches the interval: beyond a mesh of many thousands, a
/// routing table refreshed less than every 20 minutes would lag behind the churn.
pub(crate) const MAX_STRETCH: u32 = 4;

/// The farthest bucket's index (distances are 256 bits).
const FARTHEST: u32 = 255;

/// When the next round is due, which bucket it refreshes, and what the last one cost.
#[derive(Debug)]
pub(crate) struct Refresh {
    every: Duration,
    next: Instant,
    last_bucket: Option<u32>,
    /// When the last round started, and its `spread`.
    started: Instant,
    spread: f64,
    /// The round's lookups still running.
    lookups: Vec<QueryId>,
    /// Dials started while the last round's lookups ran.
    dials: u32,
}

impl Refresh {
    /// The first round comes `jitter(every)` after `now`; `spread` in [0, 1) picks where
    /// in 0.5–1.5× `every` (random in use, fixed in tests).
    pub(crate) fn new(every: Duration, now: Instant, spread: f64) -> Self {
        Refresh {
            every,
            next: now + jittered(every, spread),
            last_bucket: None,
            started: now,
            spread,
            lookups: Vec::new(),
            dials: 0,
        }
    }

    /// A lookup of the round just started runs as `id`.
    pub(crate) fn looking_up(&mut self, id: QueryId) {
        self.lookups.push(id);
    }

    /// Query `id` finished (any query: others are ignored). When it was the round's last
    /// lookup, the next round comes later in proportion to what this one cost beyond
    /// [`UPKEEP_DIALS`]; then returns the round's dials.
    pub(crate) fn finished(&mut self, id: QueryId) -> Option<u32> {
        let running = self.lookups.len();
        self.lookups.retain(|l| *l != id);
        if running == 0 || !self.lookups.is_empty() {
            return None;
        }
        let over = self.dials.clamp(UPKEEP_DIALS, UPKEEP_DIALS * MAX_STRETCH);
        let stretch = f64::from(over) / f64::from(UPKEEP_DIALS);
        self.next = self.started + jittered(self.every.mul_f64(stretch), self.spread);
        Some(self.dials)
    }

    /// The node started a dial: counted against the round if one is running.
    pub(crate) fn dialed(&mut self) {
        if !self.lookups.is_empty() {
            self.dials = self.dials.saturating_add(1);
        }
    }

    /// When the next round is due.
    pub(crate) fn next(&self) -> Instant {
        self.next
    }

    /// Starts a round at `now`: schedules the next (`spread` as in [`Refresh::new`]) and
    /// returns the bucket to look up beside the node's own key, the next in turn of
    /// `with_room`: the indices, in increasing order, of the buckets farther than the closest
    /// neighbour's that are not full ([`with_room`] makes it).
    /// Lookups of the last round still running are no longer counted.
    pub(crate) fn round(&mut self, now: Instant, with_room: &[u32], spread: f64) -> Option<u32> {
        self.next = now + jittered(self.every, spread);
        (self.started, self.spread) = (now, spread);
        self.lookups.clear();
        self.dials = 0;
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
    use libp2p::kad::{self, store::MemoryStore};

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
    fn a_round_that_dialed_past_its_budget_puts_the_next_off_in_proportion() {
        let t0 = Instant::now();
        let every = Duration::from_secs(300);
        let mut r = Refresh::new(every, t0, 0.5);
        // Query ids come only from a Kademlia behaviour.
        let mut kad = kad::Behaviour::new(PeerId::random(), MemoryStore::new(PeerId::random()));
        let mut round = |r: &mut Refresh, dials: u32| {
            let t = r.next();
            r.round(t, &[], 0.5);
            let lookups = [kad.get_closest_peers(PeerId::random()), kad.get_closest_peers(PeerId::random())];
            lookups.iter().for_each(|id| r.looking_up(*id));
            for _ in 0..dials {
                r.dialed();
            }
            lookups.iter().for_each(|id| {
                r.finished(*id);
            });
            // Dials after the round's lookups ended are someone else's.
            r.dialed();
            (r.next() - t).as_secs()
        };
        // Each call runs a round of so many dials and returns when the next is due.
        assert_eq!(round(&mut r, UPKEEP_DIALS / 2), 300);
        assert_eq!(round(&mut r, UPKEEP_DIALS), 300);
        assert_eq!(round(&mut r, UPKEEP_DIALS * 3 / 2), 450);
        assert_eq!(round(&mut r, 1000), 300 * u64::from(MAX_STRETCH));
        assert_eq!(round(&mut r, 0), 300);
        // Until its lookups end, a round is due as if it were within budget.
        r.round(r.next(), &[], 0.5);
        let id = kad.get_closest_peers(PeerId::random());
        r.looking_up(id);
        (0..100).for_each(|_| r.dialed());
        let t = r.next();
        assert_eq!(r.finished(id), Some(100));
        assert_eq!(r.next() - t, Duration::from_secs(900));
        assert_eq!(r.finished(id), None, "a round ends once");
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
