//! What the scheduler tells the web monitor: the cluster's own status events and each
//! job's report, cut down to what the page shows. The scheduler sends them as they happen
//! (never waiting: the channel is unbounded, and the web thread applies each in O(1), so it
//! holds at most a burst such as the `Created` events of one large submission); the
//! monitor's thread applies them to [`super::state::Monitor`].

use crate::events::{ClusterEvent, JobEvent};
use crate::job::JobStatus;
use crate::report::{JobReport, NodeRef};
use dispy_protocol::JobId;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long closing a cluster waits for its monitor to send the final view.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Bytes of a job's stdout the page shows (its end: the last lines are what people read).
pub(crate) const STDOUT_TAIL: usize = 160;

/// Characters of a job's arguments the page shows.
pub(crate) const ARGS_SHOWN: usize = 80;

/// One thing the scheduler saw.
#[derive(Debug)]
pub(crate) enum Feed {
    /// A job changed status.
    Job { id: JobId, status: JobStatus, node: Option<NodeRef> },
    /// A job ended: what its report says.
    Ended(Box<Ended>),
    /// A node was found, became ready, unusable, unreachable or lost.
    Node(ClusterEvent),
    /// A job is being submitted with these arguments (sent by the cluster's handle, so
    /// before the scheduler's `Created` event), shortened to [`ARGS_SHOWN`].
    Args { id: JobId, args: String },
    /// The cluster closed (every report is in): publish the final view at once, then
    /// answer, so the last changes reach open pages before the program exits.
    Closed(oneshot::Sender<()>),
}

/// The part of a job's report the page shows.
#[derive(Debug)]
pub(crate) struct Ended {
    pub(crate) id: JobId,
    pub(crate) status: JobStatus,
    pub(crate) node: Option<NodeRef>,
    pub(crate) args: String,
    /// How it ended, as `submit` prints it (`exit 0`, `cancelled`, ...).
    pub(crate) exit: String,
    /// Node clock, microseconds since the Unix epoch; 0 when it never ran.
    pub(crate) start_us: u64,
    pub(crate) end_us: u64,
    pub(crate) stdout_tail: String,
    /// Bytes of output that came back (stdout and stderr).
    pub(crate) output_bytes: u64,
    /// Files it returned; their sizes are read on the monitor's thread.
    pub(crate) returned: Vec<PathBuf>,
}

impl Ended {
    pub(crate) fn of(report: &JobReport) -> Ended {
        Ended {
            id: report.id,
            status: JobStatus::of(&report.outcome),
            node: report.node.clone(),
            args: shorten(&report.args.join(" "), ARGS_SHOWN),
            exit: report.outcome.to_string(),
            start_us: report.start_us,
            end_us: report.end_us,
            stdout_tail: tail(&report.stdout, STDOUT_TAIL),
            output_bytes: (report.stdout.len() + report.stderr.len()) as u64,
            returned: report.returned.clone(),
        }
    }
}

/// The scheduler's end of the feed. Sending never waits; a monitor that stopped is ignored.
#[derive(Clone, Debug)]
pub(crate) struct FeedTx(pub(crate) mpsc::UnboundedSender<Feed>);

impl FeedTx {
    pub(crate) fn job(&self, ev: &JobEvent) {
        // Provisional values are for the application's callback; the status is the same.
        let _ = self.0.send(Feed::Job { id: ev.id, status: ev.status, node: ev.node.clone() });
    }

    pub(crate) fn node(&self, ev: &ClusterEvent) {
        let _ = self.0.send(Feed::Node(ev.clone()));
    }

    pub(crate) fn args(&self, id: JobId, args: &[String]) {
        let _ = self.0.send(Feed::Args { id, args: shorten(&args.join(" "), ARGS_SHOWN) });
    }

    /// Tells the monitor the cluster closed, and waits (at most [`CLOSE_WAIT`]) until open
    /// pages were sent the final view.
    pub(crate) async fn closed(&self) {
        let (done, sent) = oneshot::channel();
        if self.0.send(Feed::Closed(done)).is_ok() {
            let _ = tokio::time::timeout(CLOSE_WAIT, sent).await;
        }
    }

    pub(crate) fn report(&self, report: &JobReport) {
        let _ = self.0.send(Feed::Ended(Box::new(Ended::of(report))));
    }
}

/// The last `max` bytes of `bytes` as text, cut at a character boundary.
pub(crate) fn tail(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(max)..]);
    // A cut inside a UTF-8 sequence shows as U+FFFD first: drop it.
    text.trim_start_matches('\u{FFFD}').to_string()
}

/// `text` cut to `max` characters, with `…` when cut.
pub(crate) fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end_and_never_splits_a_character() {
        assert_eq!(tail(b"hello world", 5), "world");
        assert_eq!(tail(b"hi", 5), "hi");
        assert_eq!(tail("aé".as_bytes(), 1), "");
        assert_eq!(tail("xé".as_bytes(), 2), "é");
    }

    #[test]
    fn shorten_marks_a_cut() {
        assert_eq!(shorten("abc", 5), "abc");
        assert_eq!(shorten("abcdef", 3), "abc…");
        assert_eq!(shorten("ééé", 2), "éé…");
    }
}
