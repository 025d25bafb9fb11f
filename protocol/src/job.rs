//! Jobs: what a client asks a node to run, and what comes back.

use crate::ids::JobId;
use crate::message::FileEntry;
use serde::{Deserialize, Serialize};

/// One job: the cluster's program run once with these arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct JobSpec {
    /// The client's number for the job.
    pub id: JobId,
    /// Arguments passed to the program (already split; no shell is involved).
    pub args: Vec<String>,
    /// Seconds after which the node kills the job; `None` = no limit.
    pub timeout_secs: Option<f64>,
    /// For a function cluster: the argument, CBOR-encoded (empty for programs).
    #[serde(default, with = "serde_bytes")]
    pub input: Vec<u8>,
    /// The job's own input files (`--each-file`), linked into its directory beside the
    /// cluster's. Staged to this node only, declared first ([`crate::Declare`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileEntry>,
}

impl JobSpec {
    /// Its time limit, if it has one a node can keep: a limit that is not a positive
    /// number of seconds a `Duration` can hold (NaN, 1e300, negative) counts as none, so a
    /// hostile or buggy client cannot make the node panic on it.
    ///
    /// ```
    /// # use dispy_protocol::{JobId, JobSpec};
    /// let mut job = JobSpec { id: JobId(1), args: vec![], timeout_secs: Some(1.5), input: vec![], files: vec![] };
    /// assert_eq!(job.timeout(), Some(std::time::Duration::from_millis(1500)));
    /// job.timeout_secs = Some(1e300);
    /// assert_eq!(job.timeout(), None);
    /// ```
    pub fn timeout(&self) -> Option<std::time::Duration> {
        self.timeout_secs.filter(|t| *t > 0.0).and_then(|t| std::time::Duration::try_from_secs_f64(t).ok())
    }
}

/// Checks a time limit from the wire (a job's or a setup's): `None` is no limit; a limit
/// must be a positive, finite number of seconds no larger than [`crate::MAX_TIMEOUT_SECS`].
/// A node refuses a request carrying any other value, so that no conversion on the node
/// can panic on it and the client learns at once that its setting is wrong.
///
/// # Errors
/// A message for people naming the value and the accepted range.
///
/// ```
/// # use dispy_protocol::job::checked_timeout;
/// assert_eq!(checked_timeout(Some(1.5)), Ok(Some(std::time::Duration::from_millis(1500))));
/// assert_eq!(checked_timeout(None), Ok(None));
/// assert!(checked_timeout(Some(f64::NAN)).is_err());
/// assert!(checked_timeout(Some(-1.0)).is_err());
/// assert!(checked_timeout(Some(1e20)).is_err());
/// ```
pub fn checked_timeout(secs: Option<f64>) -> Result<Option<std::time::Duration>, String> {
    let Some(t) = secs else { return Ok(None) };
    let max = crate::MAX_TIMEOUT_SECS;
    if !(t > 0.0 && t <= max) {
        return Err(format!(
            "a time limit of {t} s is not a positive number of seconds up to {max} s (about 31 years)"
        ));
    }
    std::time::Duration::try_from_secs_f64(t).map(Some).map_err(|e| format!("a time limit of {t} s: {e}"))
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum JobOutcome {
    /// The program exited with this code.
    Exited(i32),
    /// The program was killed by this signal (not by the node).
    Signaled(i32),
    /// The program could not be started; the text says why.
    FailedToStart(String),
    /// The client cancelled the job; its process group was killed.
    Cancelled,
    /// The job ran past its timeout; its process group was killed.
    TimedOut,
    /// Set by the client, never sent by a node: the job's node was lost while it ran and
    /// the cluster is not reentrant; the text names the node and the reason.
    Abandoned(String),
    /// A function job returned; its value is in [`JobResult::value`].
    Returned,
    /// A function job panicked.
    Panicked {
        /// The panic message.
        message: String,
        /// The backtrace where it panicked.
        trace: String,
    },
    /// The process running the job died (a function's worker, or the job's nodes one after
    /// another); the text says how. For a worker, a fresh one takes the slot.
    Crashed(String),
    /// The node gave the job back without running it (it is draining); the client runs it
    /// elsewhere. Never reported to users.
    Declined(String),
    /// Set by the client, never sent by a node: the job never reached a node that ran it
    /// (no node was left, or the run was stopped); the text says why.
    NotRun(String),
}

impl JobOutcome {
    /// True for a program that exited 0.
    pub fn is_success(&self) -> bool {
        matches!(self, JobOutcome::Exited(0) | JobOutcome::Returned)
    }
}

impl std::fmt::Display for JobOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobOutcome::Exited(c) => write!(f, "exit {c}"),
            JobOutcome::Signaled(s) => write!(f, "killed by signal {s}"),
            JobOutcome::FailedToStart(why) => write!(f, "could not start: {why}"),
            JobOutcome::Cancelled => f.write_str("cancelled"),
            JobOutcome::TimedOut => f.write_str("timed out"),
            JobOutcome::Abandoned(why) => write!(f, "abandoned: {why}"),
            JobOutcome::Returned => f.write_str("returned"),
            JobOutcome::Panicked { message, .. } => write!(f, "panicked: {message}"),
            JobOutcome::Crashed(why) => write!(f, "crashed: {why}"),
            JobOutcome::Declined(why) => write!(f, "declined: {why}"),
            JobOutcome::NotRun(why) => write!(f, "not run: {why}"),
        }
    }
}

/// Captured output of one stream, bounded by the node's limit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Output {
    /// The first bytes the job wrote.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
    /// How many bytes were dropped past the node's limit (0 = complete).
    pub truncated: u64,
}

/// The result of one job, sent by the node when the job ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct JobResult {
    /// Which job.
    pub id: JobId,
    /// How it ended.
    pub outcome: JobOutcome,
    /// Its standard output.
    pub stdout: Output,
    /// Its standard error.
    pub stderr: Output,
    /// Start time, microseconds since the Unix epoch (node's clock).
    pub start_us: u64,
    /// End time, microseconds since the Unix epoch (node's clock).
    pub end_us: u64,
    /// For a function job that returned: the value, CBOR-encoded.
    #[serde(default, with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Files the job left that match the cluster's return globs, by path relative to the
    /// job directory. The node keeps them until the cluster is released; the client fetches
    /// them ([`crate::Fetch`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub returned: Vec<FileEntry>,
    /// Why files that matched were not returned (a symbolic link, over the node's
    /// `--max-return`, ...), for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_note: Option<String>,
}

impl JobResult {
    /// A result with no output, value or files.
    pub fn new(id: JobId, outcome: JobOutcome, start_us: u64, end_us: u64) -> Self {
        JobResult {
            id,
            outcome,
            stdout: Output::default(),
            stderr: Output::default(),
            start_us,
            end_us,
            value: Vec::new(),
            returned: Vec::new(),
            return_note: None,
        }
    }

    /// Bytes the result carries, to bound result batches: its output, value, returned
    /// files' entries, note, and the texts of its outcome (a panic's message and trace are
    /// the worker's to choose, so they count too), plus a fixed allowance for the rest.
    pub fn payload_len(&self) -> usize {
        let names: usize = self.returned.iter().map(|f| f.name.len() + 48).sum();
        let note = self.return_note.as_ref().map_or(0, String::len);
        let outcome = match &self.outcome {
            JobOutcome::FailedToStart(s)
            | JobOutcome::Abandoned(s)
            | JobOutcome::Crashed(s)
            | JobOutcome::Declined(s)
            | JobOutcome::NotRun(s) => s.len(),
            JobOutcome::Panicked { message, trace } => message.len() + trace.len(),
            _ => 0,
        };
        self.stdout.bytes.len() + self.stderr.bytes.len() + self.value.len() + names + note + outcome + 64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panics_texts_count_toward_a_batchs_size() {
        let quiet = JobResult::new(JobId(1), JobOutcome::Exited(0), 0, 0);
        let loud = JobOutcome::Panicked { message: "m".repeat(1000), trace: "t".repeat(5000) };
        let loud = JobResult::new(JobId(1), loud, 0, 0);
        assert_eq!(loud.payload_len() - quiet.payload_len(), 6000);
    }
}
