//! A program cluster's setup and cleanup programs (dispy's `setup` / `cleanup`), once per
//! cluster on this node.
//!
//! A cluster that names either gets a directory of its own, `<jobs>/<cluster>/shared`,
//! holding its files, whose path its processes find in [`CLUSTER_DIR_ENV`] (and the node's
//! name in [`NODE_NAME_ENV`]). At the cluster's first Submit the directory is made and the
//! setup program runs there (bounded by the cluster's job timeout); the cluster's jobs wait
//! in its queue meanwhile (`slots` starts none before `ClusterSetup::ready`). A setup that
//! fails gives the queued jobs back to the client (`Declined`, with the exit status and the
//! end of its stderr), and later Submits are refused with the same reason: the client
//! marks the node unusable and runs the jobs elsewhere. When the cluster is released its
//! jobs are killed, then cleanup runs in the same directory (at most `CLEANUP_TIMEOUT`),
//! and only then is the cluster's directory deleted. Setup and cleanup hold no CPU slot:
//! they run once, and the cluster's jobs cannot run beside its setup anyway.
//!
//! A cluster with neither program costs nothing here: it is ready from the start and its
//! jobs' environment is left alone.

use super::executor::{Env, RunOutcome, RunSpec};
use super::lease::Lease;
use super::runner::ClusterTask;
use super::slots::JobDone;
use super::{Completion, Node};
use dispy_protocol::{ClusterId, JobOutcome, Reserve};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

/// The environment variable holding the cluster's directory, for setup, cleanup and jobs.
pub const CLUSTER_DIR_ENV: &str = "DISPY_CLUSTER_DIR";
/// The environment variable holding the node's `--name`, for setup, cleanup and jobs.
pub const NODE_NAME_ENV: &str = "DISPY_NODE_NAME";
/// Longest a cleanup may run: a release must end even if cleanup hangs, and a cluster's
/// job timeout may be far longer than anyone wants to wait at the end.
pub(super) const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of a failed setup's stderr kept in the reason (its end: where errors are).
const STDERR_TAIL: usize = 1000;

/// One cluster's setup and cleanup.
pub(super) struct ClusterSetup {
    setup: Option<String>,
    cleanup: Option<String>,
    timeout: Option<Duration>,
    dir: PathBuf,
    env: Option<Env>,
    state: State,
}

enum State {
    /// Nothing has run yet.
    NotStarted,
    /// Setup (or only the directory's making) runs; the sender kills it.
    SettingUp(Option<oneshot::Sender<()>>),
    /// Jobs may start.
    Ready,
    /// The setup failed, for this reason.
    Failed(String),
    /// Cleanup runs; dropping the sender (the node stopping) kills it.
    CleaningUp { _kill: oneshot::Sender<()> },
    /// Nothing more will run.
    Finished,
}

/// A setup or cleanup has ended.
pub(super) struct TaskDone {
    pub(super) cluster: ClusterId,
    cleanup: bool,
    run: RunOutcome,
}

impl ClusterSetup {
    /// What `r` asks for, for a cluster whose directories live in `lease_dir`, on the node
    /// named `node`. Errors say which program is not among the cluster's files.
    pub(super) fn new(r: &Reserve, lease_dir: &std::path::Path, node: &str) -> Result<ClusterSetup, String> {
        let dir = lease_dir.join("shared");
        let (setup, cleanup) = (r.setup.clone(), r.cleanup.clone());
        if setup.is_none() && cleanup.is_none() {
            return Ok(ClusterSetup { setup, cleanup, timeout: None, dir, env: None, state: State::Ready });
        }
        if r.function.is_some() {
            return Err("setup and cleanup programs are for program clusters".into());
        }
        for name in setup.iter().chain(&cleanup) {
            if !r.files.iter().any(|f| &f.name == name) {
                return Err(format!("setup or cleanup program {name} is not among the cluster's files"));
            }
        }
        // Checked: a hostile or huge number must not panic the conversion.
        let timeout = r
            .setup_timeout_secs
            .filter(|t| t.is_finite() && *t > 0.0)
            .and_then(|t| Duration::try_from_secs_f64(t).ok());
        let env: Env =
            Arc::new([(CLUSTER_DIR_ENV, dir.clone().into_os_string()), (NODE_NAME_ENV, OsString::from(node))]);
        Ok(ClusterSetup { setup, cleanup, timeout, dir, env: Some(env), state: State::NotStarted })
    }

    /// Whether the cluster's jobs may start.
    pub(super) fn ready(&self) -> bool {
        matches!(self.state, State::Ready)
    }

    /// Why the setup failed, if it did.
    pub(super) fn failed(&self) -> Option<&str> {
        match &self.state {
            State::Failed(why) => Some(why),
            _ => None,
        }
    }

    /// The environment the cluster's jobs get (`None`: the node's own).
    pub(super) fn job_env(&self) -> Option<Env> {
        self.env.clone()
    }

    /// Whether a setup or cleanup is running.
    pub(super) fn busy(&self) -> bool {
        matches!(self.state, State::SettingUp(_) | State::CleaningUp { .. })
    }

    /// Kills a running setup (the cluster is released).
    pub(super) fn kill(&mut self) {
        if let State::SettingUp(kill) = &mut self.state
            && let Some(kill) = kill.take()
        {
            let _ = kill.send(());
        }
    }

    fn spec(&self, program: &str, timeout: Option<Duration>, ctx: &super::Ctx) -> RunSpec {
        RunSpec {
            program: self.dir.join(program),
            args: Vec::new(),
            dir: self.dir.clone(),
            timeout,
            max_output: ctx.max_output,
            token: ctx.job_token.clone(),
            env: self.env.clone(),
        }
    }
}

/// Runs `task` through the node's runner; its end comes back as a completion.
fn spawn_task(id: ClusterId, task: ClusterTask, cleanup: bool, cancel: oneshot::Receiver<()>, ctx: &super::Ctx) {
    let run = ctx.runner.run_cluster_task(task, cancel);
    let done = ctx.done.clone();
    tokio::spawn(async move {
        let run = run.await;
        let _ = done.send(Completion::ClusterTask(TaskDone { cluster: id, cleanup, run }));
    });
}

/// Why a setup failed, for people: its program, the node, how it ended and its stderr's end.
fn failure(program: &str, node: &str, run: &RunOutcome, timeout: Option<Duration>) -> String {
    let how = match (&run.outcome, timeout) {
        (JobOutcome::TimedOut, Some(t)) => format!("ran past the cluster's timeout of {} s", t.as_secs_f64()),
        (outcome, _) => outcome.to_string(),
    };
    let err = &run.stderr.bytes;
    let tail = String::from_utf8_lossy(&err[err.len().saturating_sub(STDERR_TAIL)..]);
    let tail = tail.trim();
    if tail.is_empty() {
        format!("setup {program} failed on node {node}: {how}")
    } else {
        format!("setup {program} failed on node {node}: {how}; its stderr ends: {tail}")
    }
}

impl Node {
    /// Makes the cluster's directory and starts its setup, if neither has been done (called
    /// once its jobs are queued: its files are all stored by then).
    pub(super) fn start_setup_if_due(&mut self, id: ClusterId) {
        let Some(lease) = self.leases.0.get_mut(&id) else { return };
        let s = &mut lease.setup;
        if !matches!(s.state, State::NotStarted) {
            return;
        }
        let spec = s.setup.as_deref().map(|program| s.spec(program, s.timeout, &self.ctx));
        let (kill, cancel) = oneshot::channel();
        s.state = State::SettingUp(Some(kill));
        info!(cluster = %id.tag(), setup = s.setup.as_deref().unwrap_or("-"), dir = %s.dir.display(), "setting the cluster up");
        let task = ClusterTask { dir: s.dir.clone(), fill: Some(lease.files.clone()), spec };
        spawn_task(id, task, false, cancel, &self.ctx);
    }

    /// Starts the cleanup of a released cluster whose jobs are gone, if it has one due;
    /// returns whether a setup or cleanup still runs (the lease must wait for it).
    pub(super) fn cleanup_if_due(&mut self, id: ClusterId) -> bool {
        let Some(lease) = self.leases.0.get_mut(&id) else { return false };
        if !lease.released || !lease.runs.is_idle() {
            return false;
        }
        let s = &mut lease.setup;
        match (&s.state, &s.cleanup) {
            (State::SettingUp(_) | State::CleaningUp { .. }, _) => true,
            // Only where something was set up (whether or not the setup succeeded).
            (State::Ready | State::Failed(_), Some(program)) => {
                let spec = s.spec(program, Some(CLEANUP_TIMEOUT), &self.ctx);
                info!(cluster = %id.tag(), cleanup = %program, "cleaning the cluster up");
                let (kill, cancel) = oneshot::channel();
                s.state = State::CleaningUp { _kill: kill };
                let task = ClusterTask { dir: s.dir.clone(), fill: None, spec: Some(spec) };
                spawn_task(id, task, true, cancel, &self.ctx);
                true
            }
            _ => {
                s.state = State::Finished;
                false
            }
        }
    }

    /// A setup or cleanup has ended.
    pub(super) fn cluster_task_done(&mut self, done: TaskDone) {
        let TaskDone { cluster: id, cleanup, run } = done;
        let Some(lease) = self.leases.0.get_mut(&id) else { return };
        let s = &mut lease.setup;
        let program = if cleanup { s.cleanup.as_deref() } else { s.setup.as_deref() }.unwrap_or("-");
        // Output is the program's business; only a failure's reason goes back to the client.
        debug!(cluster = %id, program, outcome = %run.outcome, stdout = %String::from_utf8_lossy(&run.stdout.bytes),
            stderr = %String::from_utf8_lossy(&run.stderr.bytes), "cluster program ended");
        if cleanup {
            if !run.outcome.is_success() {
                warn!(cluster = %id.tag(), cleanup = program, outcome = %run.outcome, "cleanup failed");
            }
            s.state = State::Finished;
        } else if run.outcome.is_success() && !lease.released {
            info!(cluster = %id.tag(), "cluster set up; its jobs may start");
            s.state = State::Ready;
        } else {
            let why = failure(program, &self.cfg.name, &run, s.timeout);
            warn!(cluster = %id.tag(), reason = %why, "cluster setup failed; its jobs go back to the client");
            s.state = State::Failed(why.clone());
            decline_queued(id, lease, &why, &self.ctx);
        }
        self.flush(id);
        self.drop_if_done(id);
        self.schedule();
    }
}

/// Gives the lease's queued jobs back to its client, unrun.
fn decline_queued(id: ClusterId, lease: &mut Lease, why: &str, ctx: &super::Ctx) {
    for job in lease.runs.take_queued() {
        ctx.report(JobDone::unstarted(id, job.id, JobOutcome::Declined(why.to_string())));
    }
}
