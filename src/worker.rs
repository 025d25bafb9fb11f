//! Worker mode: how a Rust function travels to the nodes.
//!
//! Nothing is installed on a node beforehand. A function cluster stages the client's own
//! executable (content-addressed, so it is sent once per node and cached), and the node starts
//! it with [`dispy_protocol::worker::WORKER_ENV`] naming the function: one persistent worker
//! process per CPU slot, each running job after job. The one line that makes this work goes at
//! the top of the program's `main`, before anything else:
//!
//! ```no_run
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! fn main() {
//!     // In worker mode this runs jobs and exits; otherwise it returns at once.
//!     dispy::worker!(square);
//!     // ... the program proper: build a cluster with `dispy::Cluster::function(square)` ...
//! }
//! ```
//!
//! Each job's stdout and stderr (fds 1 and 2, so `println!` and child processes alike) are
//! captured for that job alone; a panic becomes the job's error with its message and
//! backtrace, and the worker goes on with the next job.
//!
//! A job may send its client provisional results and files as it runs
//! ([`crate::provisional`], [`crate::send_file`]).
//!
//! # Setup
//! State that every job of a worker shares (a table loaded once, a connection) is made by a
//! setup function, named first: `dispy::worker!(setup = init; square, divisors)`. Each worker
//! process runs it once, before its first job; jobs read what it left, typically in a
//! `static OnceLock`. A setup that fails (returns `Err` or panics) makes the worker refuse its
//! jobs: the node gives them back and the client stops using that node, with the message as
//! the reason.
//!
//! ```no_run
//! use std::sync::OnceLock;
//!
//! static TABLE: OnceLock<Vec<u64>> = OnceLock::new();
//!
//! fn init() -> Result<(), String> {
//!     let table = (0..1000).map(|i| i * i).collect();
//!     TABLE.set(table).map_err(|_| "set twice".to_string())
//! }
//!
//! fn lookup(i: usize) -> Option<u64> {
//!     TABLE.get()?.get(i).copied()
//! }
//!
//! fn main() {
//!     dispy::worker!(setup = init; lookup);
//! }
//! ```

use dispy_protocol::worker::{CallOutcome, WORKER_ENV, WorkerCall, WorkerReply, decode_frame, frame_len};
use dispy_protocol::{Output, decode, encode};
use serde::{Serialize, de::DeserializeOwned};
use std::cell::RefCell;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

type Call = Box<dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

/// A function a node may call: its name (its Rust type name, identical in every copy of the
/// same executable) and a call that decodes the argument and encodes the result.
pub struct Function {
    name: &'static str,
    call: Call,
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Function").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Function {
    /// Registers `f`. Use [`crate::worker!`] rather than calling this.
    pub fn new<A, R, F>(f: F) -> Function
    where
        A: DeserializeOwned,
        R: Serialize,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        let call: Call = Box::new(move |input: &[u8]| {
            let arg: A = decode(input).map_err(|e| format!("cannot decode the job's argument: {e}"))?;
            encode(&f(arg)).map_err(|e| format!("cannot encode the job's result: {e}"))
        });
        Function { name: name_of::<F>(), call }
    }

    /// The name nodes know the function by.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// The name a function is registered under.
pub(crate) fn name_of<F>() -> &'static str {
    std::any::type_name::<F>()
}

/// A worker's setup: run once per worker process before its first job; `Err` says why the
/// worker cannot serve (see [Setup](self#setup)).
pub type Setup = fn() -> Result<(), String>;

/// Runs the worker loop and exits if this process was started as a worker; returns at once
/// otherwise. Put it (through [`crate::worker!`]) first in `main`.
pub fn serve_if_worker(functions: &[Function]) {
    serve_with_setup(None, functions);
}

/// [`serve_if_worker`] with a setup function run before the first job.
/// Use [`crate::worker!`]`(setup = init; f, ...)` rather than calling this.
pub fn serve_with_setup(setup: Option<Setup>, functions: &[Function]) {
    // The executable may also be started as the reaper of an embedded node's jobs.
    dispy_node::serve::reaper::run_if_reaper();
    let Ok(wanted) = std::env::var(WORKER_ENV) else { return };
    let code = match functions.iter().find(|f| f.name == wanted) {
        Some(f) => match run(f, setup) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("dispy worker for {wanted}: {e}");
                3
            }
        },
        None => {
            let known: Vec<&str> = functions.iter().map(|f| f.name).collect();
            eprintln!(
                "dispy worker: this program has no function {wanted} registered with dispy::worker! \
                 (it has: {}). Was the cluster built from another build of the program?",
                known.join(", ")
            );
            3
        }
    };
    std::process::exit(code);
}

/// Registers the functions a cluster may run and, in worker mode, serves them and exits.
/// Put it first in `main`: `dispy::worker!(square, divisors);`, or with a setup function
/// each worker runs before its first job: `dispy::worker!(setup = init; square, divisors);`
/// (see [Setup](worker/index.html#setup)).
#[macro_export]
macro_rules! worker {
    (setup = $setup:expr; $($f:expr),+ $(,)?) => {
        $crate::worker::serve_with_setup(
            Some($setup as $crate::worker::Setup),
            &[$($crate::worker::Function::new($f)),+],
        )
    };
    ($($f:expr),+ $(,)?) => {
        $crate::worker::serve_if_worker(&[$($crate::worker::Function::new($f)),+])
    };
}

thread_local! {
    static PANIC: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
}

fn run(f: &Function, setup: Option<Setup>) -> std::io::Result<()> {
    // The node talks over the original stdout; fd 1 itself is pointed at each job's capture.
    let proto: OwnedFd = std::io::stdout().as_fd().try_clone_to_owned()?;
    crate::in_job::install(File::from(proto), &std::env::current_dir()?);
    let original_err: OwnedFd = std::io::stderr().as_fd().try_clone_to_owned()?;
    let mut out = tempfile::tempfile()?;
    let mut err = tempfile::tempfile()?;
    let mut stdin = std::io::stdin().lock();
    std::panic::set_hook(Box::new(|info| {
        let message = match info.payload().downcast_ref::<&str>() {
            Some(s) => s.to_string(),
            None => info.payload().downcast_ref::<String>().cloned().unwrap_or_else(|| "panic".into()),
        };
        let location = info.location().map(|l| format!(" at {l}")).unwrap_or_default();
        let trace = std::backtrace::Backtrace::force_capture().to_string();
        PANIC.with(|p| *p.borrow_mut() = Some((format!("{message}{location}"), trace)));
    }));
    // Outside jobs, fd 1 is stderr too: a setup's `println!` must not land in the pipe.
    redirect(&original_err, 1)?;
    // Its output goes where a crashing worker's does: the node's log.
    let refusal = setup.and_then(|setup| match std::panic::catch_unwind(setup) {
        Ok(Ok(())) => None,
        Ok(Err(why)) => Some(why),
        Err(_) => Some(PANIC.with(|p| p.borrow_mut().take()).map_or_else(|| "panicked".into(), |(m, _)| m)),
    });
    loop {
        let mut header = [0u8; 4];
        match stdin.read_exact(&mut header) {
            Ok(()) => {}
            // The node closed our stdin: it is done with this worker.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let len = frame_len(header).map_err(std::io::Error::other)?;
        let mut body = vec![0u8; len];
        stdin.read_exact(&mut body)?;
        let call: WorkerCall = decode_frame(&body).map_err(std::io::Error::other)?;
        if let Some(why) = &refusal {
            let outcome = CallOutcome::SetupFailed(format!("worker setup failed: {why}"));
            let reply = WorkerReply { job: call.job, outcome, stdout: Output::default(), stderr: Output::default() };
            crate::in_job::write_frame(&reply)?;
            continue;
        }

        std::io::stdout().flush()?;
        redirect(&out, 1)?;
        redirect(&err, 2)?;
        crate::in_job::set_in_job(true);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (f.call)(&call.input)));
        crate::in_job::set_in_job(false);
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        redirect(&original_err, 2)?;
        redirect(&original_err, 1)?;
        let outcome = match result {
            Ok(Ok(value)) => CallOutcome::Returned(value),
            Ok(Err(why)) => CallOutcome::Refused(why),
            Err(_) => {
                let (message, trace) = PANIC.with(|p| p.borrow_mut().take()).unwrap_or_default();
                CallOutcome::Panicked { message, trace }
            }
        };
        let reply = WorkerReply {
            job: call.job,
            outcome,
            stdout: take_capture(&mut out, call.max_output)?,
            stderr: take_capture(&mut err, call.max_output)?,
        };
        crate::in_job::write_frame(&reply)?;
    }
}

/// Reads what a job wrote to a capture file (up to `max` bytes) and empties it.
fn take_capture(file: &mut File, max: u64) -> std::io::Result<Output> {
    let len = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    let keep = len.min(max);
    let mut bytes = Vec::with_capacity(keep as usize);
    Read::by_ref(file).take(keep).read_to_end(&mut bytes)?;
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(Output { bytes, truncated: len - keep })
}

/// Points file descriptor `target` (1 or 2) at `file`.
#[allow(unsafe_code)]
fn redirect(file: &impl AsRawFd, target: i32) -> std::io::Result<()> {
    // SAFETY: dup2 on two open descriptors; it only replaces what `target` refers to.
    let rc = unsafe { libc::dup2(file.as_raw_fd(), target) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}
