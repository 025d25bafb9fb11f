//! The machine's figures a node reports in its Hello ([`NodeLoad`]): load average, free
//! memory, free disk of its store.
//!
//! They come from files and a system call (`/proc/loadavg`, `/proc/meminfo`, statvfs),
//! which can block (a hung network file system under the dest path), so the node's task
//! never reads them: a sampler task reads them on the blocking pool every
//! [`SAMPLE_EVERY`] and leaves the latest in a shared slot, which a Hello copies.

use super::sys;
use dispy_protocol::NodeLoad;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

/// How old the figures may be: often enough for a person watching `status`, rare enough
/// to cost nothing (three small reads).
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

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

/// The shared slot of the latest figures, empty until the sampler's first reading.
pub(super) type Latest = Arc<Mutex<Machine>>;

/// Reads the figures now (blocking).
fn sample(dest: &std::path::Path) -> Machine {
    Machine {
        load_avg: load_avg(),
        memory_free_bytes: meminfo_bytes("MemAvailable:"),
        disk_free_bytes: sys::disk_free(dest),
    }
}

/// Starts sampling into `latest` (at once, then every [`SAMPLE_EVERY`]); the task ends
/// when the node drops its slot. Call inside a tokio runtime.
pub(super) fn start_sampler(dest: PathBuf, latest: &Latest) {
    let slot: Weak<Mutex<Machine>> = Arc::downgrade(latest);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SAMPLE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let dest = dest.clone();
            // A reading that hangs holds one blocking thread; the next waits for it.
            let Ok(m) = tokio::task::spawn_blocking(move || sample(&dest)).await else { return };
            let Some(slot) = slot.upgrade() else { return };
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = m;
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
