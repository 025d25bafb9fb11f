//! Test support, and a tour of the library's function jobs: the integration tests run this
//! program against real nodes and read what it prints (JSON lines).
//!
//! ```sh
//! DISPY_PEERS=/ip4/127.0.0.1/tcp/9700 DISPY_SECRET=s cargo run --example fn_testbed -- many 100
//! ```
//! Scenarios: `many N` (N jobs printing and returning squares), `sleepy N MS`, `filter
//! NAME` (a node filter), `panic`, `cancel`, `timeout`, `crash`, `callbacks`, `blocking`,
//! `close [MS]` (close waits for running jobs, or cancels them past a close timeout),
//! `stall` (the application blocks its runtime thread for 3 s while a job runs). mDNS stays off: nodes come from `DISPY_PEERS`.

#[path = "support/from_env.rs"]
mod from_env;
use dispy::{Cluster, ClusterBuilder, JobError, JobStatus};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Prints to stdout and stderr (captured per job) and returns the square.
fn square(x: u64) -> u64 {
    println!("job {x} says hello");
    eprintln!("job {x} on stderr");
    x * x
}

/// Panics on odd numbers.
fn picky(x: u64) -> u64 {
    if x % 2 == 1 {
        panic!("odd number {x}");
    }
    x
}

/// Sleeps for `ms` milliseconds.
fn sleeper(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Exits the worker process on 13.
fn fragile(x: u64) -> u64 {
    if x == 13 {
        std::process::exit(9);
    }
    x
}

fn main() {
    dispy::worker!(square, picky, sleeper, fragile);
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("blocking") {
        // The synchronous API: no async in sight.
        let run = || -> dispy::Result<()> {
            let mut cluster = configure(Cluster::function(square)).start_blocking()?;
            let jobs: Vec<_> = (0..5).map(|i| cluster.submit(i)).collect::<Result<_, _>>()?;
            let values: Vec<u64> = jobs.iter().filter_map(|j| j.result().ok()).collect();
            let stats = cluster.close()?;
            emit(json!({"values": values, "jobs": stats.jobs()}));
            Ok(())
        };
        if let Err(e) = run() {
            eprintln!("fn_testbed: {e}");
            std::process::exit(2);
        }
        return;
    }
    if args.first().map(String::as_str) == Some("stall") {
        // The classic mistake: blocking the application's only runtime thread while a job
        // runs, longer than the heartbeat window. The cluster's peer runs on a thread of its
        // own, so the node still hears from it and the job is not lost.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let outcome = rt.block_on(async {
            let mut cluster =
                configure(Cluster::function(sleeper)).heartbeat(Duration::from_millis(500)).start().await?;
            let job = cluster.submit(1500).await?;
            while job.status() != JobStatus::Running {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            std::thread::sleep(Duration::from_secs(3));
            let r = job.wait().await;
            emit(json!({"value": r.as_ref().ok(), "error": r.err().map(|e| e.to_string())}));
            cluster.close().await.map(|_| ())
        });
        if let Err(e) = outcome {
            eprintln!("fn_testbed: {e}");
            std::process::exit(2);
        }
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    if let Err(e) = rt.block_on(run(&args)) {
        eprintln!("fn_testbed: {e}");
        std::process::exit(2);
    }
}

fn configure<A, R>(b: ClusterBuilder<A, R>) -> ClusterBuilder<A, R> {
    from_env::configure(b, Duration::from_secs(10))
}

fn emit(v: serde_json::Value) {
    println!("{v}");
}

async fn run(args: &[String]) -> dispy::Result<()> {
    match args.first().map(String::as_str) {
        Some("many") => {
            let n: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100);
            let mut cluster = configure(Cluster::function(square)).start().await?;
            // Jobs this short can all be done before a slow node is ready: a test that
            // wants every node used waits for them first.
            let want: usize = std::env::var("DISPY_WAIT_NODES").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
            let t = Instant::now();
            while cluster.nodes().await?.iter().filter(|n| n.status == "ready").count() < want {
                if t.elapsed() > Duration::from_secs(60) {
                    return Err(dispy::Error::Config(format!("{want} nodes not ready within 60 s")));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let mut jobs = Vec::new();
            for i in 0..n {
                jobs.push((i, cluster.submit(i).await?));
            }
            for (i, job) in jobs {
                let value = job.wait().await;
                emit(json!({
                    "job": job.id().0, "input": i,
                    "value": value.as_ref().ok(), "error": value.as_ref().err().map(|e| e.to_string()),
                    "stdout": String::from_utf8_lossy(&job.stdout()),
                    "stderr": String::from_utf8_lossy(&job.stderr()),
                    "node": job.node().map(|n| n.name),
                }));
            }
            let stats = cluster.close().await?;
            emit(json!({ "stats": stats }));
        }
        Some("sleepy") => {
            let n: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
            let ms: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100);
            let mut cluster = configure(Cluster::function(sleeper)).start().await?;
            let mut jobs = Vec::new();
            for _ in 0..n {
                jobs.push(cluster.submit(ms).await?);
            }
            for job in jobs {
                let r = job.wait().await;
                emit(json!({"job": job.id().0, "value": r.as_ref().ok(), "error": r.err().map(|e| e.to_string()),
                            "node": job.node().map(|n| n.name)}));
            }
            cluster.close().await?;
        }
        Some("filter") => {
            let want = args.get(1).cloned().unwrap_or_default();
            let b =
                configure(Cluster::function(square)).node_filter(move |n| n.name == want && n.memory_bytes.is_some());
            let mut cluster = b.start().await?;
            let mut jobs = Vec::new();
            for i in 0..10 {
                jobs.push(cluster.submit(i).await?);
            }
            for job in jobs {
                let r = job.wait().await;
                emit(json!({"job": job.id().0, "value": r.ok(), "node": job.node().map(|n| n.name)}));
            }
            let nodes = cluster.nodes().await?;
            emit(json!({"nodes": nodes}));
            cluster.close().await?;
        }
        Some("panic") => {
            let mut cluster = configure(Cluster::function(picky)).start().await?;
            let odd = cluster.submit(3).await?;
            let even = cluster.submit(4).await?;
            match odd.wait().await {
                Err(JobError::Panicked { message, trace }) => {
                    emit(json!({"panicked": message, "trace_lines": trace.lines().count()}))
                }
                other => emit(json!({"unexpected": format!("{other:?}")})),
            }
            emit(json!({"even": even.wait().await.ok()}));
            cluster.close().await?;
        }
        Some("crash") => {
            let mut cluster = configure(Cluster::function(fragile)).start().await?;
            let bad = cluster.submit(13).await?;
            let r = bad.wait().await;
            emit(json!({"crash": r.err().map(|e| e.to_string())}));
            let good = cluster.submit(5).await?;
            emit(json!({"after": good.wait().await.ok()}));
            cluster.close().await?;
        }
        Some("cancel") => {
            let mut cluster = configure(Cluster::function(sleeper)).start().await?;
            let long = cluster.submit(30_000).await?;
            while long.status() != JobStatus::Running {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let t = Instant::now();
            cluster.cancel(&long).await?;
            let r = long.wait().await;
            emit(json!({"cancelled": matches!(r, Err(JobError::Cancelled)), "cancel_ms": t.elapsed().as_millis()}));
            let next = cluster.submit(10).await?;
            emit(json!({"next": next.wait().await.ok()}));
            cluster.close().await?;
        }
        Some("timeout") => {
            let b = configure(Cluster::function(sleeper)).timeout(Duration::from_millis(500));
            let mut cluster = b.start().await?;
            let t = Instant::now();
            let long = cluster.submit(30_000).await?;
            let r = long.wait().await;
            emit(json!({"timed_out": matches!(r, Err(JobError::TimedOut)), "ms": t.elapsed().as_millis()}));
            cluster.close().await?;
        }
        Some("close") => {
            // `close` waits for running jobs (dispy's `close()`); `close MS` gives it a
            // close timeout, past which they are cancelled.
            let mut b = configure(Cluster::function(sleeper));
            if let Some(ms) = args.get(1).and_then(|s| s.parse().ok()) {
                b = b.close_timeout(Duration::from_millis(ms));
            }
            let mut cluster = b.start().await?;
            let jobs = [cluster.submit(1000).await?, cluster.submit(1000).await?];
            while jobs.iter().any(|j| j.status() != JobStatus::Running) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let t = Instant::now();
            let stats = cluster.close().await?;
            let close_ms = t.elapsed().as_millis();
            let mut ended = Vec::new();
            for job in &jobs {
                let r = job.wait().await;
                ended.push(json!({"value": r.as_ref().ok(), "cancelled": matches!(r, Err(JobError::Cancelled)),
                                  "error": r.err().map(|e| e.to_string())}));
            }
            emit(json!({"close_ms": close_ms, "jobs": ended, "done": stats.jobs()}));
        }
        Some("callbacks") => {
            let seen: Arc<Mutex<Vec<(u64, &'static str)>>> = Arc::default();
            let nodes: Arc<Mutex<Vec<String>>> = Arc::default();
            let (s2, n2) = (seen.clone(), nodes.clone());
            let b = configure(Cluster::function(square))
                .on_job_status(move |e| s2.lock().expect("lock").push((e.id.0, e.status.as_str())))
                .on_cluster_status(move |e| n2.lock().expect("lock").push(format!("{e:?}")));
            let mut cluster = b.start().await?;
            for i in 0..20 {
                cluster.submit(i).await?;
            }
            cluster.wait().await?;
            let stats = cluster.close().await?;
            let seen = seen.lock().expect("lock").clone();
            emit(
                json!({"transitions": seen, "cluster_events": nodes.lock().expect("lock").clone(), "jobs": stats.jobs()}),
            );
        }
        other => {
            eprintln!("unknown scenario {other:?}; see the module docs");
            std::process::exit(2);
        }
    }
    Ok(())
}
