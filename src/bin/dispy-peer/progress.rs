//! `submit`'s progress bar: jobs done, running, failed and queued, jobs per second and an
//! ETA, drawn on stderr while the per-job lines go to stdout.
//!
//! The bar is drawn only when stderr is a terminal and the output is for a person (not
//! `--json`): piped or logged runs see exactly the lines they saw before. Every write to
//! the terminal while the bar is up goes through [`Progress::suspend`], which clears the
//! bar, writes, and draws it again below, so a per-job line is never cut by a redraw.
//!
//! Where the counts come from: jobs that ended are the reports `submit` reads from the
//! cluster (it counts them as it prints them); jobs running are the library's job-status
//! events (a job is running from the node's "started" until it ends), kept in a set the
//! bar reads when it redraws. The callback runs on the cluster's scheduler thread, so it
//! only updates that set: it never draws (a terminal that blocks a write must not stall
//! the scheduler and its heartbeats).
//!
//! Log lines (tracing, on stderr) are written through the bar too ([`log_writer`]), so a
//! warning during a run is a line of its own above the bar, not spliced into it.

use dispy::{JobEvent, JobId, JobStatus};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How often the bar is redrawn when nothing ends (running counts and the clock change).
const TICK: Duration = Duration::from_millis(200);

/// The bar on screen, if any, for the log writer (logs come from any thread).
static SHOWN: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// What the bar shows beyond its position (jobs ended) and length (jobs submitted).
#[derive(Default)]
struct Counts {
    /// Jobs a node started and that have not ended.
    running: HashSet<JobId>,
    /// Jobs that ended badly (failed, cancelled, abandoned, not run).
    failed: u64,
}

/// The progress bar of one `submit`, or nothing when it is not shown.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    counts: Arc<Mutex<Counts>>,
}

impl Progress {
    /// A bar on stderr if `show`, else a `Progress` that draws nothing.
    pub(crate) fn new(show: bool) -> Progress {
        let counts = Arc::new(Mutex::new(Counts::default()));
        let bar = show.then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(style(counts.clone()));
            bar.enable_steady_tick(TICK);
            *SHOWN.lock().unwrap_or_else(PoisonError::into_inner) = Some(bar.clone());
            bar
        });
        Progress { bar, counts }
    }

    /// Whether stderr is a terminal: the bar's condition, with output for people.
    pub(crate) fn wanted(json: bool) -> bool {
        use std::io::IsTerminal;
        !json && std::io::stderr().is_terminal()
    }

    /// The job-status callback that feeds the running count, if a bar is shown (the
    /// cluster then emits job events; without a bar it need not).
    pub(crate) fn hook(&self) -> Option<impl Fn(&JobEvent) + Send + Sync + 'static> {
        self.bar.as_ref()?;
        let counts = self.counts.clone();
        Some(move |ev: &JobEvent| {
            let mut c = counts.lock().unwrap_or_else(PoisonError::into_inner);
            match ev.status {
                // A provisional value is not a new start.
                JobStatus::Running if ev.provisional.is_none() => {
                    c.running.insert(ev.id);
                }
                JobStatus::Created | JobStatus::Running => {}
                _ => {
                    c.running.remove(&ev.id);
                }
            }
        })
    }

    /// `n` more jobs were submitted.
    pub(crate) fn submitted(&self, n: usize) {
        if let Some(bar) = &self.bar {
            bar.inc_length(n as u64);
        }
    }

    /// A job ended (its report was read).
    pub(crate) fn ended(&self, status: JobStatus) {
        if let Some(bar) = &self.bar {
            if status != JobStatus::Finished {
                self.counts.lock().unwrap_or_else(PoisonError::into_inner).failed += 1;
            }
            bar.inc(1);
        }
    }

    /// Runs `f`, which writes to the terminal, with the bar cleared (drawn again after).
    pub(crate) fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    /// Removes the bar (before the summary, which says it all).
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            SHOWN.lock().unwrap_or_else(PoisonError::into_inner).take();
            bar.finish_and_clear();
        }
    }
}

/// The writer of one log line (tracing's `MakeWriter`): the line is gathered, then written
/// to stderr in one piece, with the bar cleared if one is shown.
pub(crate) fn log_writer() -> LogLine {
    LogLine(Vec::with_capacity(256))
}

/// One log event's text, written to stderr when dropped (tracing drops the writer after
/// each event).
pub(crate) struct LogLine(Vec<u8>);

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let write = || {
            // Nowhere to report a failed write of a log line.
            let _ = std::io::stderr().lock().write_all(&self.0);
        };
        // Cloned out so the lock is not held while drawing.
        let bar = SHOWN.lock().unwrap_or_else(PoisonError::into_inner).clone();
        match bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // An error return must not leave a half-drawn bar under the error message.
        self.finish();
    }
}

/// `[0:12] ███████░░░░ 41/100 · 38 done, 3 failed, 4 running, 55 queued · 3.4 jobs/s · ETA 17s`
fn style(counts: Arc<Mutex<Counts>>) -> ProgressStyle {
    let template = "[{elapsed}] {bar:16} {pos}/{len} · {counts} · {rate} · ETA {eta}";
    let style = ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    style
        .progress_chars("█▓░")
        .with_key("counts", move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let c = counts.lock().unwrap_or_else(PoisonError::into_inner);
            let ended = s.pos();
            let running = c.running.len() as u64;
            let queued = s.len().unwrap_or(0).saturating_sub(ended + running);
            let done = ended.saturating_sub(c.failed);
            let _ = write!(w, "{done} done, {} failed, {running} running, {queued} queued", c.failed);
        })
        .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.1} jobs/s", s.per_sec());
        })
}
