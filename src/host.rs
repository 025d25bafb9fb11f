//! Facts about this machine, for node names, greetings and defaults.

/// Bytes of stdout (and of stderr) a node keeps per job by default.
pub const DEFAULT_MAX_OUTPUT: usize = 1 << 20;

/// This machine's host name, for node names and greetings.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// CPUs of this machine.
pub fn available_cpus() -> u32 {
    std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)
}
