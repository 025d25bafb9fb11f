//! The machine's figures a node reports in its Hello ([`NodeLoad`]): load average, free
//! memory, free disk of its store.
//!
//! They come from files and a system call (`/proc/loadavg`, `/proc/meminfo`, statvfs),
//! which can block (a hung network file system under the dest path), so the node's task
//! never reads them: a sampler task reads them on the blocking pool and leaves the latest
//! in a shared slot, which a Hello copies. A Hello also asks for the next reading when the
//! figures are older than [`SAMPLE_EVERY`] (clients greet often while they watch); with
//! nobody asking, the sampler reads every [`IDLE_SAMPLE_EVERY`], so an idle node sleeps.

use super::sys;
use dispy_protocol::NodeLoad;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How old the figures may be while clients ask: often enough for a person watching
/// `status`, rare enough to cost nothing (three small reads).
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// How often the figures are read when nobody asks for them.
const IDLE_SAMPLE_EVERY: Duration = Duration::from_secs(60);

/// The latest figures (the node's own counts, clients and queued jobs, are filled in by
/// the node when it answers).
#[derive(Clone, Debug, Default)]
pub(super) struct Machine {
    load_avg: Option<f64>,
    memory_free_bytes: Option<u64>,
    disk_free_bytes: Option<u64>,
}

impl Machine {
    /// The node's load: these figures with the node's own counts.
    pub(super) fn load(&self, clients: u32, jobs_queued: u64) -> NodeLoad {
        NodeLoad {
            clients,
            jobs_queued,
            load_avg: self.load_avg,
            memory_free_bytes: self.memory_free_bytes,
            disk_free_bytes: self.disk_free_bytes,
        }
    }
}

/// The shared slot of the latest figures (empty until the sampler's first reading), and
/// the sampler's doorbell.
#[derive(Default)]
pub(super) struct Slot {
    figures: Mutex<(Machine, Option<Instant>)>,
    ask: Arc<Notify>,
}

/// Shared by the node (which reads) and its sampler (which writes).
pub(super) type Latest = Arc<Slot>;

impl Slot {
    /// The latest figures; asks for a new reading when they are older than [`SAMPLE_EVERY`].
    pub(super) fn read(&self) -> Machine {
        let (m, at) = self.figures.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if at.is_none_or(|t| t.elapsed() >= SAMPLE_EVERY) {
            self.ask.notify_one();
        }
        m
    }

    fn store(&self, m: Machine) {
        *self.figures.lock().unwrap_or_else(PoisonError::into_inner) = (m, Some(Instant::now()));
    }
}

/// Reads the figures now (blocking).
fn sample(dest: &std::path::Path) -> Machine {
    Machine {
        load_avg: load_avg(),
        memory_free_bytes: meminfo_bytes("MemAvailable:"),
        disk_free_bytes: sys::disk_free(dest),
    }
}

/// Starts sampling into `latest`: at once, then when a reader asks (at most every
/// [`SAMPLE_EVERY`]) or [`IDLE_SAMPLE_EVERY`] has passed. The task ends when the node
/// drops its slot. Call inside a tokio runtime.
pub(super) fn start_sampler(dest: PathBuf, latest: &Latest) {
    let slot: Weak<Slot> = Arc::downgrade(latest);
    let ask = latest.ask.clone();
    tokio::spawn(async move {
        loop {
            let started = tokio::time::Instant::now();
            let dest = dest.clone();
            // A reading that hangs holds one blocking thread; the next waits for it.
            let Ok(m) = tokio::task::spawn_blocking(move || sample(&dest)).await else { return };
            let Some(s) = slot.upgrade() else { return };
            s.store(m);
            drop(s);
            // Asked or not, never read more often than SAMPLE_EVERY.
            tokio::time::sleep_until(started + SAMPLE_EVERY).await;
            let _ = tokio::time::timeout(IDLE_SAMPLE_EVERY - SAMPLE_EVERY, ask.notified()).await;
        }
    });
}

/// The one-minute load average.
fn load_avg() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok().filter(|v: &f64| v.is_finite() && *v >= 0.0)
}

/// A `/proc/meminfo` figure in bytes: `key` is its name with the colon (`MemTotal:`,
/// `MemAvailable:`).
pub(super) fn meminfo_bytes(key: &str) -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = info.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    kb.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_figures_are_read_on_linux() {
        let m = sample(&std::env::temp_dir());
        assert!(m.load_avg.is_some(), "{m:?}");
        assert!(m.memory_free_bytes.is_some_and(|b| b > 0), "{m:?}");
        assert!(m.disk_free_bytes.is_some(), "{m:?}");
        assert_eq!(sys::disk_free(std::path::Path::new("/no/such/dir")), None);
    }
}
