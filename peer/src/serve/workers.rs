//! Function workers: persistent processes of a function cluster's executable, one per CPU
//! slot in use, each running job after job. A job costs two pipe messages, not a process.
//!
//! A worker that is cancelled, times out or dies is killed with its whole process group and
//! dropped; the next job of the cluster starts a fresh one.
//!
//! While a job runs, its worker may send notes ahead of the reply (provisional results,
//! files sent back): they go to the job's relay (`jobnotes`) as they come.

use super::executor::now_us;
use super::jobnotes::JobNote;
use super::sys::kill_group;
use dispy_protocol::worker::{
    CallOutcome, SENT_DIR, WORKER_ENV, WorkerCall, WorkerNote, WorkerReply, decode_frame, encode_frame, frame_len,
};
use dispy_protocol::{JobOutcome, JobResult, JobSpec, Output};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::{mpsc, oneshot};

/// A running worker process.
#[derive(Debug)]
pub(crate) struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    pgid: u32,
    dir: PathBuf,
    /// Its leader was reaped (after its group was killed): its pid, and so its group id,
    /// may belong to another process group by now, which must not be signalled.
    reaped: bool,
}

impl Worker {
    /// Starts `program` in worker mode for `function`, with its cwd in `dir`.
    /// `token`: the reaper's, when the worker does not inherit it.
    pub(crate) fn spawn(program: &Path, dir: &Path, function: &str, token: Option<&str>) -> std::io::Result<Worker> {
        let mut cmd = tokio::process::Command::new(program);
        // The cluster secret is the node's, not the worker's to read.
        cmd.env_remove("DISPY_SECRET");
        if let Some(token) = token {
            cmd.env(super::reaper::TOKEN_ENV, token);
        }
        let mut child = cmd
            .current_dir(dir)
            .env(WORKER_ENV, function)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Outside a job the worker's own stderr (a crash message) goes to the node's log.
            .stderr(Stdio::inherit())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(std::io::Error::other("worker pipes missing"));
        };
        let pgid = child.id().unwrap_or(0);
        Ok(Worker { child, stdin, stdout, pgid, dir: dir.to_path_buf(), reaped: false })
    }

    /// Runs one job, passing its notes to `notes` as they come. Returns the result and the
    /// worker if it can take another job.
    pub(crate) async fn call(
        mut self,
        job: &JobSpec,
        max_output: usize,
        kill: oneshot::Receiver<()>,
        notes: mpsc::Sender<JobNote>,
    ) -> (JobResult, Option<Worker>) {
        let start_us = now_us();
        let timeout = job.timeout();
        let sleep = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let call = WorkerCall { job: job.id, input: job.input.clone(), max_output: max_output as u64 };
        let sent_dir = self.dir.join(SENT_DIR);
        let exchange = async {
            let frame = encode_frame(&call).map_err(|e| e.to_string())?;
            self.stdin.write_all(&frame).await.map_err(|e| e.to_string())?;
            self.stdin.flush().await.map_err(|e| e.to_string())?;
            loop {
                let mut header = [0u8; 4];
                self.stdout.read_exact(&mut header).await.map_err(|e| e.to_string())?;
                let len = frame_len(header).map_err(|e| e.to_string())?;
                let mut body = vec![0u8; len];
                self.stdout.read_exact(&mut body).await.map_err(|e| e.to_string())?;
                let note = match decode_frame::<WorkerNote>(&body) {
                    Ok(WorkerNote::Provisional(value)) => JobNote::Provisional(value),
                    Ok(WorkerNote::SendFile(rel)) => sent_file(&sent_dir, &rel),
                    Err(_) => return decode_frame::<WorkerReply>(&body).map_err(|e| e.to_string()),
                };
                // A relay that is gone (its job's task ended) wants nothing more.
                let _ = notes.send(note).await;
            }
        };
        let ended = tokio::select! {
            reply = exchange => Ok(reply),
            _ = kill => Err(JobOutcome::Cancelled),
            _ = sleep => Err(JobOutcome::TimedOut),
        };
        let mut result = JobResult {
            id: job.id,
            outcome: JobOutcome::Returned,
            stdout: Output::default(),
            stderr: Output::default(),
            start_us,
            end_us: 0,
            value: Vec::new(),
            returned: Vec::new(),
            return_note: None,
        };
        let keep = match ended {
            Ok(Ok(reply)) => {
                result.stdout = reply.stdout;
                result.stderr = reply.stderr;
                result.outcome = match reply.outcome {
                    CallOutcome::Returned(value) => {
                        result.value = value;
                        JobOutcome::Returned
                    }
                    CallOutcome::Panicked { message, trace } => JobOutcome::Panicked { message, trace },
                    CallOutcome::Refused(why) => JobOutcome::FailedToStart(why),
                    // The job goes back to the client, which stops using this node for the
                    // cluster with this reason.
                    CallOutcome::SetupFailed(why) => JobOutcome::Declined(why),
                };
                !matches!(result.outcome, JobOutcome::Declined(_))
            }
            Ok(Err(io)) => {
                // The worker is gone or talks nonsense: say how it ended if it did.
                kill_group(self.pgid);
                let status = tokio::time::timeout(Duration::from_secs(1), self.child.wait()).await;
                self.reaped = matches!(status, Ok(Ok(_)));
                let how = match status {
                    Ok(Ok(s)) => s.to_string(),
                    _ => io,
                };
                result.outcome = JobOutcome::Crashed(format!("its worker process died ({how})"));
                false
            }
            Err(outcome) => {
                result.outcome = outcome;
                false
            }
        };
        result.end_us = now_us();
        (result, keep.then_some(self))
    }
}

/// The file a worker names as sent (`<number>/<name>` in its [`SENT_DIR`]), or why it is
/// refused: nothing outside that directory is ever taken.
fn sent_file(sent_dir: &Path, rel: &str) -> JobNote {
    let refused = || JobNote::Refused(format!("a sent file named {rel:?} was refused: not one dispy::send_file made"));
    let Some((seq, name)) = rel.split_once('/') else { return refused() };
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) || name.contains('/') {
        return refused();
    }
    if super::store::check_name(name).is_err() {
        return refused();
    }
    JobNote::File { path: sent_dir.join(seq).join(name), name: name.to_string() }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Whatever the worker started dies with it (killed already if it was reaped); its
        // directory goes too.
        if !self.reaped {
            kill_group(self.pgid);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
