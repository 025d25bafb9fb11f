//! Small bounded structures for what strangers can make the event loop remember or do:
//! log lines per remote, dials per second. Spoofed mDNS answers cost nothing to send and
//! can name any number of peer ids, so nothing they feed may grow without a bound.

use std::collections::HashMap;
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

/// A token bucket: at most `burst` at once, refilled at `per_sec`. Bounds how many dials
/// unauthenticated discovery may start, however many peers it claims to have found.
#[derive(Debug)]
pub(crate) struct Budget {
    tokens: f64,
    burst: f64,
    per_sec: f64,
    at: Instant,
}

impl Budget {
    pub(crate) fn new(burst: u32, per_sec: u32, now: Instant) -> Self {
        Budget { tokens: f64::from(burst), burst: f64::from(burst), per_sec: f64::from(per_sec), at: now }
    }

    /// Takes one token if there is one.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_budget_caps_a_burst_and_refills_over_time() {
        let t0 = Instant::now();
        let mut b = Budget::new(4, 2, t0);
        let granted = (0..1000).filter(|_| b.take(t0)).count();
        assert_eq!(granted, 4, "a storm of discoveries starts only the burst");
        assert!(!b.take(t0 + Duration::from_millis(400)));
        assert!(b.take(t0 + Duration::from_millis(500)), "one more after half a second at 2/s");
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..1000).filter(|_| b.take(later)).count(), 4, "never more than the burst");
    }
}
