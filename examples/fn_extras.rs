//! Test support, and a tour of what a function job can do beyond returning: provisional
//! results, files sent back while it runs, and a worker setup whose state jobs share. The
//! integration tests (`tests/fn_extras.rs`) run it against real nodes and read the JSON lines
//! it prints.
//!
//! ```sh
//! DISPY_PEERS=/ip4/127.0.0.1/tcp/9700 DISPY_SECRET=s cargo run --example fn_extras -- progress /tmp/results
//! ```
//! Scenarios: `progress RESULTS_DIR` (a job sends two provisional values and a file, then
//! returns), `setup BASE_FILE` (the workers' setup reads the cluster file `base.txt`, made
//! from BASE_FILE; jobs add it to their argument; a file that says `fail` fails the setup),
//! `at-once RESULTS_DIR` (a job sends a file and waits until the client has saved it).
//! mDNS stays off: nodes come from `DISPY_PEERS`.

#[path = "support/from_env.rs"]
mod from_env;
use dispy::{Cluster, ClusterBuilder};
use serde_json::json;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// What every worker's setup read from `base.txt`.
static BASE: OnceLock<u64> = OnceLock::new();

/// The workers' setup: reads the cluster file `base.txt` (absent: 0); fails when it says
/// `fail`.
fn init() -> Result<(), String> {
    let text = std::fs::read_to_string("base.txt").unwrap_or_else(|_| "0".into());
    let text = text.trim();
    if text == "fail" {
        return Err("base.txt says fail".into());
    }
    let base = text.parse().map_err(|e| format!("base.txt holds no number: {e}"))?;
    // Goes to the node's log, never into the worker's pipe to the node.
    println!("worker setup: base {base}");
    BASE.set(base).map_err(|_| "setup ran twice".to_string())
}

/// Adds the setup's base to `x`.
fn based(x: u64) -> u64 {
    BASE.get().copied().unwrap_or(u64::MAX) + x
}

/// Sends `step 1` and `step 2` as provisional values and a file `report-<x>.txt` back, then
/// returns `x`. Outside a node the calls fail, which the job reports as its value.
fn reporter(x: u64) -> Result<u64, String> {
    dispy::provisional(&format!("step 1 of {x}")).map_err(|e| e.to_string())?;
    let name = format!("report-{x}.txt");
    std::fs::write(&name, report_bytes(x)).map_err(|e| e.to_string())?;
    dispy::send_file(&name).map_err(|e| e.to_string())?;
    // The copy is taken at once: what the job does to the file afterwards is not sent.
    std::fs::write(&name, b"changed after sending").map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(200));
    dispy::provisional(&format!("step 2 of {x}")).map_err(|e| e.to_string())?;
    Ok(x)
}

/// Sends a file `early.txt`, then waits (up to 30 s) for it to appear at `expected`, where
/// the client saves it: returns whether it arrived while the job still ran.
fn sender(expected: String) -> Result<bool, String> {
    std::fs::write("early.txt", report_bytes(1)).map_err(|e| e.to_string())?;
    dispy::send_file("early.txt").map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if std::fs::read(&expected).is_ok_and(|b| b == report_bytes(1)) {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(false)
}

/// The bytes `reporter(x)` sends (all 256 byte values, so any mangling shows).
pub fn report_bytes(x: u64) -> Vec<u8> {
    (0..70_000u32).map(|i| (i as u64 * 7 + x) as u8).collect()
}

fn main() {
    dispy::worker!(setup = init; reporter, based, sender);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    if let Err(e) = rt.block_on(run(&args)) {
        eprintln!("fn_extras: {e}");
        std::process::exit(2);
    }
}

fn configure<A, R>(b: ClusterBuilder<A, R>) -> ClusterBuilder<A, R> {
    from_env::configure(b, Duration::from_secs(5))
}

async fn run(args: &[String]) -> dispy::Result<()> {
    match args.first().map(String::as_str) {
        Some("progress") => {
            let dir = args.get(1).cloned().unwrap_or_else(|| "results".into());
            let seen: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
            let s2 = seen.clone();
            let b = configure(Cluster::function(reporter)).results_dir(&dir).on_job_status(move |e| {
                let value = e.provisional_value::<String>().ok().flatten();
                s2.lock().expect("lock").push(json!([e.status.as_str(), value]));
            });
            let mut cluster = b.start().await?;
            // Outside a node, the calls say so.
            let outside = dispy::provisional(&1u8).err().map(|e| e.to_string());
            let job = cluster.submit(5).await?;
            let value = job.wait().await;
            let report = job.report();
            emit(json!({
                "value": value.as_ref().ok(), "error": value.as_ref().err().map(|e| e.to_string()),
                "latest": job.provisional::<String>().ok().flatten(),
                "returned": report.as_ref().map(|r| r.returned.clone()),
                "note": report.as_ref().and_then(|r| r.return_note.clone()),
                "events": seen.lock().expect("lock").clone(),
                "outside": outside,
            }));
            cluster.close().await?;
        }
        Some("at-once") => {
            // The job looks for the file where the client saves it: an absolute path.
            let dir = std::path::PathBuf::from(args.get(1).cloned().unwrap_or_else(|| "results".into()));
            let dir = std::env::current_dir().map(|cwd| cwd.join(&dir)).unwrap_or(dir);
            let mut cluster = configure(Cluster::function(sender)).results_dir(&dir).start().await?;
            let expected = dir.join("0").join("early.txt");
            let job = cluster.submit(expected.to_string_lossy().into_owned()).await?;
            let value = job.wait().await;
            let report = job.report();
            emit(json!({
                "value": value.as_ref().ok(), "error": value.as_ref().err().map(|e| e.to_string()),
                "returned": report.as_ref().map(|r| r.returned.clone()),
            }));
            cluster.close().await?;
        }
        Some("setup") => {
            let base = args.get(1).cloned().unwrap_or_default();
            let mut cluster = configure(Cluster::function(based)).file(base).start().await?;
            let jobs = vec![cluster.submit(1).await?, cluster.submit(2).await?];
            for job in jobs {
                let r = job.wait().await;
                emit(json!({"value": r.as_ref().ok(), "error": r.err().map(|e| e.to_string())}));
            }
            cluster.close().await?;
        }
        other => {
            eprintln!("unknown scenario {other:?}; see the module docs");
            std::process::exit(2);
        }
    }
    Ok(())
}

fn emit(v: serde_json::Value) {
    println!("{v}");
}
