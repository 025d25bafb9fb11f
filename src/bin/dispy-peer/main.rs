//! `dispy-peer`: parse options, set up logging, call the libraries, map errors to exit
//! codes (0 all jobs succeeded, 1 a job failed, 2 usage or runtime error, including
//! `--args-file` lines that ran no job: reported as an error once the other jobs ended).

mod jobs;
mod metrics;
mod opts;
mod print;
mod progress;
mod secret_env;

use anyhow::{Context, bail};
use clap::{CommandFactory, Parser};
use dispy::{Cluster, LocalMode, NodePattern, Secret};
use dispy_node::net::NetConfig;
use dispy_node::serve::{self, ServeConfig, Stop};
use opts::{Cmd, NodesOpt, Opt, SecretOpt, ServeOpt, SubmitOpt};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    // When started as a node's reaper, this process does only that.
    dispy_node::serve::reaper::run_if_reaper();
    // Before anything else: the secret must not stay in this process's initial environment,
    // which its jobs can read in /proc.
    secret_env::hide_secret_env();
    let opt = Opt::parse();
    forget_secret_env();
    if matches!(opt.cmd, Cmd::Serve(_)) {
        mark_jobs_env();
    }
    init_tracing(&opt);
    if secret_env::secret_in_argv() {
        tracing::warn!(
            "--secret on the command line is visible to every user of this machine (ps); \
             use --secret-file (see `dispy-peer keygen`) or DISPY_SECRET"
        );
    }
    if matches!(opt.cmd, Cmd::Serve(_) | Cmd::Submit(_)) {
        // This process may run jobs (a node, or a client's embedded node): they must not
        // read its memory or environment, and a crash must not dump the secret.
        secret_env::make_undumpable();
        raise_fd_limit(matches!(opt.cmd, Cmd::Serve(_)));
    }
    // A node's CPUs belong to its jobs: its control plane runs on one thread, which also
    // saves the cross-thread wake-ups that dominate its cost per job (measured: +8% jobs/s).
    let runtime = match opt.cmd {
        Cmd::Serve(_) | Cmd::Submit(_) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        _ => tokio::runtime::Runtime::new(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dispy-peer: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(async {
        match opt.cmd {
            Cmd::Serve(o) => serve(o).await.map(|()| true),
            Cmd::Submit(o) => submit(o).await,
            Cmd::Nodes(o) => nodes(o, false).await.map(|()| true),
            Cmd::Status(o) => nodes(o, true).await.map(|()| true),
            Cmd::Recover(o) => recover(o).await,
            Cmd::Keygen { file } => keygen(&file).map(|()| true),
            Cmd::Identity { file } => identity(&file).map(|()| true),
            Cmd::Completions { shell } => completions(shell).map(|()| true),
            Cmd::Manpage { dir } => manpage(dir.as_deref()).map(|()| true),
        }
    });
    // Don't wait for lingering blocking tasks (a stuck disk read) at exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            // Each cause once: library errors quote their source in their own message.
            let as_dyn: &(dyn std::error::Error + 'static) = e.as_ref();
            eprintln!("dispy-peer: error: {}", dispy_node::net::error_chain(as_dyn));
            ExitCode::from(2)
        }
    }
}

/// Clap has read `DISPY_SECRET`; remove it from the environment so that no job or worker
/// this process starts inherits it (and so that job spawns need not rebuild the environment).
#[allow(unsafe_code)]
fn forget_secret_env() {
    if std::env::var_os("DISPY_SECRET").is_some() {
        // SAFETY: called first thing in `main`, before the runtime or any other thread
        // exists, so nothing can read the environment concurrently.
        unsafe { std::env::remove_var("DISPY_SECRET") };
    }
}

/// Gives this node a token in its environment, which its jobs inherit: the reaper finds
/// them by it if the node dies without cleaning up.
#[allow(unsafe_code)]
fn mark_jobs_env() {
    // SAFETY: called in `main` before the runtime or any other thread exists.
    unsafe { std::env::set_var(dispy_node::serve::reaper::TOKEN_ENV, dispy_node::serve::reaper::new_token()) };
}

/// Raises the soft descriptor limit to the hard one (a node's connections are then sized
/// from it, keeping half for jobs and files).
fn raise_fd_limit(log: bool) {
    match dispy_node::net::raise_fd_limit() {
        Ok((old, new)) if log => tracing::info!(old, new, "open-file limit (soft) raised to the hard limit"),
        Ok((old, new)) => tracing::debug!(old, new, "open-file limit (soft) raised to the hard limit"),
        Err(e) => tracing::warn!(cause = %e, "could not raise the open-file limit"),
    }
}

fn init_tracing(opt: &Opt) {
    let base = match (&opt.cmd, opt.verbose) {
        // Kademlia warns about bootstrapping with no known peers, which is normal for the
        // first node of a mesh.
        (_, 0) if matches!(opt.cmd, Cmd::Serve(_)) => "warn,libp2p_kad=error,dispy=info,dispy_node=info",
        (_, 0) => "warn,libp2p_kad=error",
        (_, 1) => "warn,libp2p_kad=error,dispy=debug,dispy_node=debug",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(base));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(progress::log_writer)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn secret(o: &SecretOpt) -> Secret {
    match (&o.secret, &o.secret_file) {
        (_, Some(f)) => Secret::File(f.clone()),
        (Some(s), None) => Secret::Passphrase(s.clone()),
        (None, None) => Secret::None,
    }
}

fn secs(s: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("{what} must be a non-negative number of seconds, not {s}"))
}

async fn serve(o: ServeOpt) -> anyhow::Result<()> {
    let all = dispy::available_cpus() as i64;
    let cpus = match o.cpus {
        None | Some(0) => all,
        Some(n) if n < 0 => all + n,
        Some(n) if n > all => bail!("--cpus {n}: this machine has {all} CPUs"),
        Some(n) => n,
    };
    if cpus < 1 {
        bail!("--cpus {}: that leaves no CPU to serve (this machine has {all})", o.cpus.unwrap_or(0));
    }
    let keypair = load_identity(&o.identity)?;
    let allowed_peers = allowed_peers(&o.allow_peers);
    let psk = secret(&o.secret).to_psk().context("cannot load the cluster secret")?;
    match psk {
        Some(psk) => tracing::info!(fingerprint = %psk.fingerprint(), "private network key loaded"),
        None => tracing::warn!(
            "NO SECRET SET: anyone who can reach this node can run programs on it as this user. \
             Give every node and client the same --secret, DISPY_SECRET or --secret-file"
        ),
    }
    let dest = o.dest_path.unwrap_or_else(dispy_node::serve::default_dest);
    let metrics = match o.metrics {
        Some(addr) => {
            let metrics = dispy_node::metrics::Metrics::new();
            let bound = metrics::start(addr, metrics.clone()).await?;
            println!("metrics http://{bound}/metrics");
            Some(metrics)
        }
        None => None,
    };
    let cfg = NetConfig {
        listen: o.listen.clone(),
        psk,
        mdns: !o.no_mdns,
        bootstrap: o.bootstrap.clone(),
        kad_server: true,
        heartbeat: secs(o.heartbeat, "--heartbeat")?,
        keypair,
        allowed_peers,
        metrics: metrics.clone(),
        relay: o.relay.then(|| dispy_node::net::RelayLimits {
            circuits: o.relay_circuits,
            circuit_bytes: o.relay_circuit_mib.saturating_mul(1 << 20),
            circuit_duration: Duration::from_secs(o.relay_circuit_minutes.saturating_mul(60)),
            ..Default::default()
        }),
        ..NetConfig::default()
    };
    let serve_cfg = ServeConfig {
        max_file_size: o.max_file_size,
        max_output: o.max_output as usize,
        max_return: o.max_return,
        reaper: std::env::current_exe().ok(),
        drain_timeout: secs(o.drain_timeout, "--drain-timeout")?,
        serve_clusters: o.serve_clusters,
        zombie_interval: secs(o.zombie_interval, "--zombie-interval")?,
        result_ttl: secs(o.result_ttl, "--result-ttl")?,
        metrics: metrics.map(|m| m.node),
        ..ServeConfig::new(o.name.unwrap_or_else(dispy::host_name), cpus as u32, dest.clone())
    };
    tracing::info!(name = %serve_cfg.name, cpus, dest = %dest.display(), "node starting");
    let node = serve::start(cfg, serve_cfg).map_err(|e| match e {
        dispy_node::Error::DestInUse(_) | dispy_node::Error::Io { .. } => {
            anyhow::Error::new(e).context(format!("cannot use dest path {}", dest.display()))
        }
        e => anyhow::Error::new(e).context("cannot start the node's network"),
    })?;
    // First SIGTERM/SIGINT: drain. Second: stop now.
    let (stop_tx, stop_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    tokio::spawn(async move {
        for stop in [Stop::Drain, Stop::Now] {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!(?stop, "signal received");
            if stop_tx.send(stop).is_err() {
                return;
            }
        }
    });
    node.run(stop_rx, |addr| {
        // The readiness line tests and scripts wait for.
        println!("listening {addr}");
        let _ = std::io::stdout().flush();
    })
    .await?;
    Ok(())
}

/// `--each-file`: a job per file, its base name appended to the arguments or put in place
/// of `{}` in the one `-a` template.
fn each_file_jobs(
    files: &[std::path::PathBuf],
    templates: &[Vec<String>],
) -> anyhow::Result<Vec<(Vec<String>, Vec<std::path::PathBuf>)>> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let template = match templates {
        [] => None,
        [one] => Some(one),
        _ => anyhow::bail!("with --each-file, give at most one -a (a template; {{}} stands for the file's name)"),
    };
    let mut jobs = Vec::with_capacity(files.len());
    for f in files {
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("--each-file {}: no usable file name", f.display()))?
            .to_string();
        // Checked before any node is contacted.
        let meta = std::fs::metadata(f).with_context(|| format!("--each-file {}", f.display()))?;
        anyhow::ensure!(meta.is_file(), "--each-file {}: not a regular file", f.display());
        let args = match template {
            Some(t) if t.iter().any(|w| w.contains("{}")) => t.iter().map(|w| w.replace("{}", &name)).collect(),
            Some(t) => t.iter().cloned().chain(std::iter::once(name)).collect(),
            None => vec![name],
        };
        jobs.push((args, vec![f.clone()]));
    }
    Ok(jobs)
}

async fn submit(o: SubmitOpt) -> anyhow::Result<bool> {
    // Usage errors first, before any node is contacted.
    let mut first = Vec::new();
    for a in &o.args {
        first.push(shell_words::split(a).with_context(|| format!("cannot split -a {a:?} into words"))?);
    }
    let args_file = o.args_file.as_deref().map(jobs::ArgsFile::open).transpose()?;
    anyhow::ensure!(
        o.each_file.is_empty() || args_file.is_none(),
        "--each-file and --args-file cannot be combined: --each-file makes one job per file (its -a is the template)"
    );
    let each_file = each_file_jobs(&o.each_file, &first)?;
    if first.is_empty() && args_file.is_none() {
        first.push(Vec::new());
    }
    let mut b = Cluster::program(&o.program)
        .secret(secret(&o.secret))
        .mdns(!o.find.no_mdns)
        .discover_timeout(secs(o.find.discover_timeout, "--discover-timeout")?)
        .heartbeat(secs(o.find.heartbeat, "--heartbeat")?)
        .reentrant(o.reentrant)
        .fanout(!o.no_fanout)
        .relay_limit(o.relay_limit.saturating_mul(1 << 20))
        .wait_nodes(secs(o.wait_nodes, "--wait-nodes")?)
        .max_retries(o.max_retries)
        .local(if o.local { LocalMode::Always } else { LocalMode::Fallback });
    if let Some(keypair) = load_identity(&o.identity)? {
        b = b.identity(keypair);
    }
    for f in &o.files {
        b = b.file(f);
    }
    if let Some(setup) = &o.setup {
        b = b.setup(setup);
    }
    if let Some(cleanup) = &o.cleanup {
        b = b.cleanup(cleanup);
    }
    for p in &o.find.peers {
        b = b.peer(p.clone());
    }
    for p in &o.find.bootstrap {
        b = b.bootstrap(p.clone());
    }
    for n in &o.nodes {
        b = b.nodes(NodePattern::new(n));
    }
    if let Some(c) = o.cpus_per_node {
        b = b.cpus_per_node(c);
    }
    if let Some(t) = o.timeout {
        b = b.timeout(secs(t, "--timeout")?);
    }
    if let Some(j) = &o.journal {
        b = b.journal(j);
    }
    for g in &o.returns {
        b = b.returns(g.clone());
    }
    b = b.results_dir(&o.results_dir);
    let progress = progress::Progress::new(progress::Progress::wanted(o.json));
    if let Some(hook) = progress.hook() {
        b = b.on_job_status(hook);
    }
    if let Some(addr) = o.web {
        b = b.web(addr);
    }
    let mut cluster = b.start().await?;
    if let Some(url) = cluster.web_url() {
        eprintln!("dispy-peer: web monitor at {url}");
    }
    let file_name = args_file.as_ref().map(|f| f.name().to_string());
    let mut more = args_file.map(jobs::ArgsFile::spawn).transpose()?;
    // Jobs submitted and not reported yet: the args file is read only while there is room.
    let (mut outstanding, mut total);
    if each_file.is_empty() {
        (outstanding, total) = (first.len(), first.len());
        progress.submitted(total);
        if !first.is_empty() {
            cluster.submit_all(first).await?;
        }
    } else {
        (outstanding, total) = (each_file.len(), each_file.len());
        progress.submitted(total);
        cluster.submit_all_with(each_file).await?;
    }
    let mut printer = print::Printer::new(o.json);
    let mut bad_lines = 0usize;
    let mut tally = print::Tally::default();
    // The cluster failed (no node, or none came back): every pending job is still reported
    // (not run, abandoned) after the error, so it is kept until they are.
    let mut fatal: Option<dispy::Error> = None;
    // Ctrl-C once: stop reading, cancel the remote jobs, print what ends, release the
    // nodes, exit 1. Twice, at any point after (closing included): leave at once (the
    // nodes notice the client is gone and kill its jobs).
    let (first_tx, mut first_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        let _ = first_tx.send(());
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("dispy-peer: interrupted again; leaving without waiting");
            std::process::exit(1);
        }
    });
    let mut interrupted = false;
    let mut cancelled = cluster.cancelled_all();
    while outstanding > 0 || more.is_some() {
        let room = outstanding + jobs::BATCH <= jobs::MAX_OUTSTANDING;
        tokio::select! {
            batch = next_batch(&mut more), if room => match batch {
                Some(batch) => {
                    bad_lines += batch.bad_lines;
                    if !batch.jobs.is_empty() {
                        (total, outstanding) = (total + batch.jobs.len(), outstanding + batch.jobs.len());
                        progress.submitted(batch.jobs.len());
                        cluster.submit_all(batch.jobs).await?;
                    }
                }
                None => more = None,
            },
            next = cluster.next_result(), if outstanding > 0 => match next {
                Ok(Some(job)) => {
                    outstanding -= 1;
                    tally.add(&job);
                    progress.ended(dispy::JobStatus::of(&job.outcome));
                    if !o.quiet {
                        progress.suspend(|| printer.job(&job))?;
                    }
                }
                Ok(None) => break,
                Err(e @ (dispy::Error::NoNodes(_) | dispy::Error::LocalNode(_))) if fatal.is_none() => {
                    more = None;
                    fatal = Some(e);
                }
                Err(e) => return Err(e.into()),
            },
            // "Cancel all" in the web monitor: the lines not read yet run no job, and one
            // read meanwhile (submitted after the cancel) is cancelled too.
            () = cancelled.wait(), if more.is_some() => {
                more = None;
                progress.suspend(|| {
                    eprintln!("dispy-peer: every job cancelled; the rest of --args-file is not read");
                });
                cluster.cancel_all().await?;
            }
            Ok(()) = &mut first_rx, if !interrupted => {
                interrupted = true;
                more = None;
                progress.suspend(|| {
                    eprintln!("dispy-peer: interrupted; cancelling the remaining jobs (Ctrl-C again to leave at once)");
                });
                cluster.cancel_all().await?;
            }
        }
    }
    let stats = cluster.close().await?;
    progress.finish();
    printer.summary(&stats, total, &tally, bad_lines)?;
    if let Some(e) = fatal {
        // Nothing ran at all: the run itself failed (exit 2); otherwise some jobs did run,
        // and the ones that did not are in the output and the summary (exit 1).
        if tally.ran() == 0 {
            return Err(anyhow::Error::new(e).context(format!("{} not run", print::count(tally.total(), "job"))));
        }
        eprintln!("dispy-peer: error: {e}");
        return Ok(false);
    }
    if bad_lines > 0 {
        let file = file_name.unwrap_or_default();
        let lines = print::count(bad_lines, "line");
        bail!("{lines} of --args-file {file} ran no job (each is named above)");
    }
    Ok(tally.all_succeeded() && !interrupted)
}

/// The next batch of the args file; never, once it is done (or there is none).
async fn next_batch(more: &mut Option<tokio::sync::mpsc::Receiver<jobs::Batch>>) -> Option<jobs::Batch> {
    match more {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// `nodes`, or with `load` `status`: the nodes that answer, and what each is doing.
async fn nodes(o: NodesOpt, load: bool) -> anyhow::Result<()> {
    let opts = dispy::DiscoverOptions {
        mdns: !o.find.no_mdns,
        peers: o.find.peers,
        bootstrap: o.find.bootstrap,
        secret: secret(&o.secret),
        identity: load_identity(&o.identity)?,
    };
    let found = dispy::discover(opts, secs(o.find.discover_timeout, "--discover-timeout")?).await?;
    if load && !o.json {
        print::status(&found)?;
    } else {
        print::nodes(&found, o.json)?;
    }
    if found.is_empty() {
        bail!("no node answered within {} s", o.find.discover_timeout);
    }
    Ok(())
}

async fn recover(o: opts::RecoverOpt) -> anyhow::Result<bool> {
    let keypair = load_identity(&o.identity)?;
    let found = dispy::recover_as(&o.journal, secret(&o.secret), secs(o.wait, "--wait")?, keypair).await?;
    let mut printer = print::Printer::new(o.json);
    let mut ok = found.lost.is_empty();
    for job in &found.reports {
        ok &= job.succeeded();
        printer.job(job)?;
    }
    printer.lost(&found.lost)?;
    Ok(ok)
}

/// `--allow-peer`s as the network wants them: none given, everyone is served.
fn allowed_peers(peers: &[libp2p::PeerId]) -> Option<std::collections::HashSet<libp2p::PeerId>> {
    if peers.is_empty() {
        return None;
    }
    tracing::info!(peers = peers.len(), "serving only the peers given with --allow-peer");
    Some(peers.iter().copied().collect())
}

/// The keypair of `--identity FILE`, if given.
fn load_identity(o: &opts::IdentityOpt) -> anyhow::Result<Option<libp2p::identity::Keypair>> {
    o.identity
        .as_deref()
        .map(|f| dispy_node::net::identity::load_or_create(f).context("cannot use the --identity file"))
        .transpose()
}

fn identity(file: &std::path::Path) -> anyhow::Result<()> {
    println!("{}", dispy_node::net::identity::peer_id(file)?);
    Ok(())
}

fn keygen(file: &std::path::Path) -> anyhow::Result<()> {
    let psk = dispy_node::psk::write_key_file(file)?;
    println!("wrote {} (fingerprint {}); copy it to every node and client", file.display(), psk.fingerprint());
    Ok(())
}

/// `completions SHELL`: the script clap_complete makes from the options, on stdout.
fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut Opt::command(), "dispy-peer", &mut out);
    out.flush()?;
    Ok(())
}

/// `manpage`: dispy-peer.1 on stdout, or every page (one per subcommand) into `dir`.
fn manpage(dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    match dir {
        Some(dir) => {
            clap_mangen::generate_to(Opt::command(), dir)
                .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
            println!("wrote the man pages into {}", dir.display());
        }
        None => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(Opt::command()).render(&mut out)?;
            out.flush()?;
        }
    }
    Ok(())
}
