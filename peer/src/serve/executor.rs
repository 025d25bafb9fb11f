//! Runs one job: a child process in its own process group, cwd in its job directory,
//! output captured up to a limit, killed group-wide on cancel or timeout.

use super::sys::{exit_watch, kill_group};
use dispy_protocol::{JobOutcome, Output};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{oneshot, watch};

/// After the job's leader exits, its pipes may be held open by a process that left the
/// group (setsid); stop reading them this long after the exit.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct RunSpec {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) dir: PathBuf,
    pub(crate) timeout: Option<Duration>,
    pub(crate) max_output: usize,
    /// The reaper's token, when the job does not inherit it (see `ServeConfig::job_token`).
    pub(crate) token: Option<std::sync::Arc<str>>,
    /// Variables added to the environment (a cluster with a setup or cleanup program: see
    /// `setup`); `None` for the others, whose spawns then keep the node's environment as is.
    pub(crate) env: Option<Env>,
}

/// Environment variables for a cluster's processes, shared by its jobs.
pub(crate) type Env = std::sync::Arc<[(&'static str, std::ffi::OsString)]>;

/// How it went.
#[derive(Debug)]
pub(crate) struct RunOutcome {
    pub(crate) outcome: JobOutcome,
    pub(crate) stdout: Output,
    pub(crate) stderr: Output,
    pub(crate) start_us: u64,
    pub(crate) end_us: u64,
}

impl RunOutcome {
    /// A run that ended before any process ran, with `outcome`.
    pub(crate) fn unrun(outcome: JobOutcome, start_us: u64) -> RunOutcome {
        RunOutcome { outcome, stdout: Output::default(), stderr: Output::default(), start_us, end_us: now_us() }
    }
}

pub(crate) fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Runs the job to its end. `cancel` fires (or its sender is dropped) to kill it.
pub(crate) async fn run(spec: RunSpec, cancel: oneshot::Receiver<()>) -> RunOutcome {
    let start_us = now_us();
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .current_dir(&spec.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // The cluster secret is the node's, not the job's to read. (Only when present: any
    // change to the environment makes every spawn rebuild it.)
    if std::env::var_os("DISPY_SECRET").is_some() {
        cmd.env_remove("DISPY_SECRET");
    }
    if let Some(token) = &spec.token {
        cmd.env(super::reaper::TOKEN_ENV, &**token);
    }
    for (key, value) in spec.env.iter().flat_map(|env| env.iter()) {
        cmd.env(key, value);
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let why = format!("cannot execute {}: {e}", spec.program.display());
            return RunOutcome::unrun(JobOutcome::FailedToStart(why), start_us);
        }
    };
    let pgid = child.id().unwrap_or(0);
    // Without a pidfd (an old kernel), the group is killed after the leader is reaped, when
    // its id could in principle belong to a new group already.
    let pidfd = exit_watch(pgid);
    let (exited_tx, exited_rx) = watch::channel(false);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let wait = async {
        let sleep = async {
            match spec.timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            status = async {
                if let Some(fd) = &pidfd {
                    // Exited, not reaped yet: whatever the job left in its group dies now.
                    let _ = fd.readable().await;
                    kill_group(pgid);
                }
                child.wait().await
            } => match status {
                Ok(s) => match (s.code(), s.signal()) {
                    (Some(code), _) => JobOutcome::Exited(code),
                    (None, Some(sig)) => JobOutcome::Signaled(sig),
                    _ => JobOutcome::FailedToStart("no exit status".into()),
                },
                Err(e) => JobOutcome::FailedToStart(format!("lost the job process: {e}")),
            },
            _ = cancel => {
                kill_group(pgid);
                let _ = child.wait().await;
                JobOutcome::Cancelled
            }
            _ = sleep => {
                kill_group(pgid);
                let _ = child.wait().await;
                JobOutcome::TimedOut
            }
        };
        if pidfd.is_none() {
            // Whatever the job left behind in its group dies with it.
            kill_group(pgid);
        }
        let _ = exited_tx.send(true);
        outcome
    };
    let (outcome, stdout, stderr) = tokio::join!(
        wait,
        read_capped(stdout, spec.max_output, exited_rx.clone()),
        read_capped(stderr, spec.max_output, exited_rx),
    );
    RunOutcome { outcome, stdout, stderr, start_us, end_us: now_us() }
}

/// Reads a pipe to its end, keeping the first `max` bytes and counting the rest.
async fn read_capped<R: AsyncRead + Unpin>(pipe: Option<R>, max: usize, mut exited: watch::Receiver<bool>) -> Output {
    let mut out = Output::default();
    let Some(mut pipe) = pipe else { return out };
    // Small on purpose: most jobs print little, and a big buffer per pipe per job costs
    // an mmap/munmap pair each time.
    let mut buf = vec![0u8; 8 * 1024];
    let give_up = async move {
        let _ = exited.wait_for(|e| *e).await;
        tokio::time::sleep(DRAIN_GRACE).await;
    };
    tokio::pin!(give_up);
    loop {
        let n = tokio::select! {
            n = pipe.read(&mut buf) => n,
            _ = &mut give_up => break,
        };
        match n {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let keep = n.min(max.saturating_sub(out.bytes.len()));
                out.bytes.extend_from_slice(&buf[..keep]);
                out.truncated += (n - keep) as u64;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(script: &str, dir: &std::path::Path) -> RunSpec {
        RunSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            dir: dir.to_path_buf(),
            timeout: None,
            max_output: 10,
            token: None,
            env: None,
        }
    }

    #[tokio::test]
    async fn captures_exit_output_and_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let (_tx, rx) = oneshot::channel();
        let r = run(spec("echo 0123456789abcdef; echo err >&2; exit 3", dir.path()), rx).await;
        assert_eq!(r.outcome, JobOutcome::Exited(3));
        assert_eq!(r.stdout.bytes, b"0123456789");
        assert_eq!(r.stdout.truncated, 7);
        assert_eq!(r.stderr.bytes, b"err\n");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let (_tx, rx) = oneshot::channel();
        let mut s = spec("sleep 30 & echo $! > bg.pid; wait", dir.path());
        s.timeout = Some(Duration::from_millis(300));
        let t = std::time::Instant::now();
        let r = run(s, rx).await;
        assert_eq!(r.outcome, JobOutcome::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(3));
        let pid = std::fs::read_to_string(dir.path().join("bg.pid")).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // Gone, or a zombie waiting for a reaper that is not ours: either way not running.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
        assert!(stat.is_empty() || stat.contains(") Z "), "background child survived: {stat}");
    }

    #[tokio::test]
    async fn what_a_job_leaves_in_its_group_dies_when_it_exits() {
        let dir = tempfile::tempdir().unwrap();
        let (_tx, rx) = oneshot::channel();
        let s = spec("sleep 30 >/dev/null 2>&1 & echo $! > bg.pid; exit 4", dir.path());
        let r = run(s, rx).await;
        assert_eq!(r.outcome, JobOutcome::Exited(4));
        let pid = std::fs::read_to_string(dir.path().join("bg.pid")).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
        assert!(stat.is_empty() || stat.contains(") Z "), "background child survived: {stat}");
    }

    #[tokio::test]
    async fn cancel_and_missing_program() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = oneshot::channel();
        let job = tokio::spawn(run(spec("sleep 30", dir.path()), rx));
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send(()).unwrap();
        assert_eq!(job.await.unwrap().outcome, JobOutcome::Cancelled);
        let (_tx, rx) = oneshot::channel();
        let mut s = spec("", dir.path());
        s.program = dir.path().join("nope");
        assert!(matches!(run(s, rx).await.outcome, JobOutcome::FailedToStart(m) if m.contains("nope")));
    }
}
