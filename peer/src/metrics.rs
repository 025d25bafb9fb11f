//! A node's Prometheus metrics (`serve --metrics`): its own counters and gauges, and
//! libp2p's swarm metrics, in one registry rendered as Prometheus text.
//!
//! Every series is an atomic (prometheus-client's own), so the node's task and the swarm's
//! task update them without a lock, and a scrape reads them without stopping either.

use libp2p::metrics::Registry;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

/// The label of `dispy_jobs_ended_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// The node core's series; cheap to clone (every series is shared).
#[derive(Clone, Debug, Default)]
pub struct NodeMetrics {
    jobs_started: Counter,
    jobs_ended: Family<OutcomeLabel, Counter>,
    jobs_running: Gauge,
    cpu_slots: Gauge,
    clients: Gauge,
    bytes_staged: Counter,
    bytes_returned: Counter,
    handshake_failures: Counter,
    refreshes: Counter,
    refresh_dials: Counter,
    uptime: Gauge<f64, AtomicU64>,
}

impl NodeMetrics {
    /// A job took a CPU slot.
    pub fn job_started(&self) {
        self.jobs_started.inc();
    }

    /// A job ended (`outcome`: see [`outcome_label`]).
    pub fn job_ended(&self, outcome: &dispy_protocol::JobOutcome) {
        self.jobs_ended.get_or_create(&OutcomeLabel { outcome: outcome_label(outcome) }).inc();
    }

    /// The node's slots and how many run a job, and its clients (clients with a lease).
    pub fn set_load(&self, cpus: u32, running: u32, clients: usize) {
        self.cpu_slots.set(i64::from(cpus));
        self.jobs_running.set(i64::from(running));
        self.clients.set(i64::try_from(clients).unwrap_or(i64::MAX));
    }

    /// A file of `bytes` was staged (its last chunk written).
    pub fn staged(&self, bytes: u64) {
        self.bytes_staged.inc_by(bytes);
    }

    /// A job returned files of `bytes` in all.
    pub fn returned(&self, bytes: u64) {
        self.bytes_returned.inc_by(bytes);
    }

    /// A connection's secure handshake failed (most likely another secret).
    pub fn handshake_failed(&self) {
        self.handshake_failures.inc();
    }

    /// A routing-table refresh round ended, having made `dials` dials.
    pub fn refreshed(&self, dials: u32) {
        self.refreshes.inc();
        self.refresh_dials.inc_by(u64::from(dials));
    }

    fn register(&self, r: &mut Registry) {
        r.register("dispy_jobs_started", "Jobs that took a CPU slot", self.jobs_started.clone());
        r.register(
            "dispy_jobs_ended",
            "Jobs ended, by outcome (ok, failed, cancelled, timed_out, ...)",
            self.jobs_ended.clone(),
        );
        r.register("dispy_jobs_running", "Jobs running now", self.jobs_running.clone());
        r.register("dispy_cpu_slots", "CPU slots the node serves", self.cpu_slots.clone());
        r.register("dispy_clients", "Clients holding a lease on the node", self.clients.clone());
        r.register("dispy_staged_bytes", "Bytes of files staged to the node", self.bytes_staged.clone());
        r.register("dispy_returned_bytes", "Bytes of files jobs returned", self.bytes_returned.clone());
        r.register(
            "dispy_handshake_failures",
            "Connections whose secure handshake failed (another secret, or not a dispy peer)",
            self.handshake_failures.clone(),
        );
        r.register("dispy_routing_refreshes", "Routing-table refresh rounds ended", self.refreshes.clone());
        r.register(
            "dispy_routing_refresh_dials",
            "Dials made by refresh rounds (a round over its budget puts the next off)",
            self.refresh_dials.clone(),
        );
        r.register("dispy_uptime_seconds", "Seconds since the node started", self.uptime.clone());
    }
}

/// The `outcome` label of an ended job: `ok` (exit 0 or a function's return), `failed`
/// (any other exit, a signal, a panic, a crash, a program that could not start),
/// `cancelled`, `timed_out`.
pub fn outcome_label(outcome: &dispy_protocol::JobOutcome) -> &'static str {
    use dispy_protocol::JobOutcome as O;
    match outcome {
        O::Exited(0) | O::Returned => "ok",
        O::Cancelled => "cancelled",
        O::TimedOut => "timed_out",
        _ => "failed",
    }
}

/// A node's metrics: its own and the swarm's, and the registry that renders them.
#[derive(Clone)]
pub struct Metrics {
    /// The node core's series.
    pub node: NodeMetrics,
    /// libp2p's swarm metrics, recorded by the swarm task.
    pub swarm: Arc<libp2p::metrics::Metrics>,
    registry: Arc<Registry>,
    started: Instant,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("node", &self.node).finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with the node's series and libp2p's.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let node = NodeMetrics::default();
        node.register(&mut registry);
        let swarm = Arc::new(libp2p::metrics::Metrics::new(&mut registry));
        Metrics { node, swarm, registry: Arc::new(registry), started: Instant::now() }
    }

    /// Every series as Prometheus text (OpenMetrics), uptime as of now.
    pub fn render(&self) -> String {
        self.node.uptime.set(self.started.elapsed().as_secs_f64());
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispy_protocol::JobOutcome;

    #[test]
    fn renders_counters_by_outcome_and_the_swarm_series() {
        let m = Metrics::new();
        m.node.job_started();
        m.node.job_ended(&JobOutcome::Exited(0));
        m.node.job_ended(&JobOutcome::Exited(3));
        m.node.job_ended(&JobOutcome::Cancelled);
        m.node.staged(10);
        let text = m.render();
        assert!(text.contains("dispy_jobs_started_total 1"), "{text}");
        assert!(text.contains("dispy_jobs_ended_total{outcome=\"ok\"} 1"), "{text}");
        assert!(text.contains("dispy_jobs_ended_total{outcome=\"failed\"} 1"), "{text}");
        assert!(text.contains("dispy_jobs_ended_total{outcome=\"cancelled\"} 1"), "{text}");
        assert!(text.contains("dispy_staged_bytes_total 10"), "{text}");
        assert!(text.contains("libp2p_"), "{text}");
    }
}
