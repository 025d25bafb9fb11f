//! Command-line options (clap derive). Durations are seconds, decimals allowed.

use clap::{Args, Parser, Subcommand};
use libp2p::Multiaddr;
use std::path::PathBuf;

/// dispy's job as a peer-to-peer mesh: run `serve` on every machine, then `submit` from
/// any to run a program across all of them.
#[derive(Parser, Debug)]
#[command(name = "dispy-peer", version, about)]
pub(crate) struct Opt {
    /// More logging (-v: debug for dispy, -vv: also libp2p). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Cmd {
    /// Run a node: offer this machine's CPUs to the mesh.
    Serve(ServeOpt),
    /// Ship a program and its files to the nodes and run it once per -a (or args-file line).
    Submit(SubmitOpt),
    /// List the nodes that answer within the discovery timeout.
    Nodes(NodesOpt),
    /// After a crash of `submit --journal FILE`: collect the results the nodes still hold,
    /// with their returned files (into the run's --results-dir), and list the jobs that are
    /// lost.
    Recover(RecoverOpt),
    /// Write a fresh random network key for --secret-file (mode 0600).
    Keygen {
        /// Where to write it (refuses to overwrite).
        file: PathBuf,
    },
    /// Print the peer id of an identity file (made, mode 0600, if missing), for a node's
    /// `serve --allow-peer`.
    Identity {
        /// The identity file, as given to `--identity`.
        file: PathBuf,
    },
    // The small comforts (issue 13): completions and man pages, made from these options.
    /// Print a shell completion script: `dispy-peer completions bash >
    /// ~/.local/share/bash-completion/completions/dispy-peer` (zsh: a `_dispy-peer` file on
    /// $fpath; fish: ~/.config/fish/completions/dispy-peer.fish).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (`dispy-peer manpage > dispy-peer.1`), or with --dir write one
    /// page per subcommand there too (dispy-peer-serve.1, ...).
    Manpage {
        /// Write dispy-peer.1 and a page per subcommand into this directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// The nodes that answer, with what each is doing: CPUs busy, clients, jobs queued,
    /// load average, free memory and free disk of its store (dispy's DispyNodeAvailInfo).
    Status(NodesOpt),
}

/// The cluster secret, shared by every node and client of a mesh.
#[derive(Args, Debug, Clone)]
pub(crate) struct SecretOpt {
    /// The cluster's secret passphrase. Prefer --secret-file or DISPY_SECRET: every local
    /// user sees the command line (`ps`).
    #[arg(long, env = "DISPY_SECRET", hide_env_values = true, conflicts_with = "secret_file")]
    pub(crate) secret: Option<String>,
    /// A key file written by `dispy-peer keygen`.
    #[arg(long)]
    pub(crate) secret_file: Option<PathBuf>,
}

/// How to find nodes.
#[derive(Args, Debug, Clone)]
pub(crate) struct FindOpt {
    /// A node's address (`/ip4/10.0.0.5/tcp/9700`, optionally `/p2p/<id>`); repeatable.
    #[arg(long = "peer", value_name = "MULTIADDR")]
    pub(crate) peers: Vec<Multiaddr>,
    /// A Kademlia bootstrap node, to find nodes beyond the LAN; repeatable.
    #[arg(long, value_name = "MULTIADDR")]
    pub(crate) bootstrap: Vec<Multiaddr>,
    /// Do not look on the LAN by multicast DNS.
    #[arg(long)]
    pub(crate) no_mdns: bool,
    /// Seconds to look for a node before giving up (or falling back to a local node).
    #[arg(long, default_value_t = 3.0, value_name = "SECS")]
    pub(crate) discover_timeout: f64,
    /// Seconds between heartbeats; a node silent for about twice this is lost.
    #[arg(long, default_value_t = 4.0, value_name = "SECS")]
    pub(crate) heartbeat: f64,
}

#[derive(Args, Debug)]
pub(crate) struct ServeOpt {
    /// CPU slots to serve: all by default; a negative N serves all but N.
    #[arg(long, short = 'c', allow_negative_numbers = true)]
    pub(crate) cpus: Option<i64>,
    /// Address to listen on; repeatable. mDNS advertises only addresses bound to a LAN
    /// interface, so keep 0.0.0.0 for zero-config discovery.
    #[arg(long, value_name = "MULTIADDR", default_value = "/ip4/0.0.0.0/tcp/9700")]
    pub(crate) listen: Vec<Multiaddr>,
    #[command(flatten)]
    pub(crate) secret: SecretOpt,
    /// A Kademlia bootstrap node (another `serve`); repeatable.
    #[arg(long, value_name = "MULTIADDR")]
    pub(crate) bootstrap: Vec<Multiaddr>,
    /// Do not announce or look on the LAN by multicast DNS.
    #[arg(long)]
    pub(crate) no_mdns: bool,
    /// Relay connections for nodes behind NAT that cannot be reached otherwise (they take
    /// a slot here and are reached through it until a hole punch makes the link direct).
    /// Run it on a node with an address every site can reach.
    #[arg(long)]
    pub(crate) relay: bool,
    /// With --relay: relayed connections at once.
    #[arg(long, value_name = "N", default_value_t = 32, requires = "relay")]
    pub(crate) relay_circuits: usize,
    /// With --relay: MiB one relayed connection may carry each way before the relay closes
    /// it (clients send at most their --relay-limit to a relayed node).
    #[arg(long, value_name = "MIB", default_value_t = 64, requires = "relay")]
    pub(crate) relay_circuit_mib: u64,
    /// With --relay: minutes one relayed connection may last.
    #[arg(long, value_name = "MINUTES", default_value_t = 60, requires = "relay")]
    pub(crate) relay_circuit_minutes: u64,
    /// Seconds between heartbeats; a client silent for about twice this is gone.
    #[arg(long, default_value_t = 4.0, value_name = "SECS")]
    pub(crate) heartbeat: f64,
    /// Where staged files and job directories live, private to this user (made 0700; refused
    /// if another user owns it or may write to it) [default: $TMPDIR/dispy-peer-UID/node].
    #[arg(long, value_name = "DIR")]
    pub(crate) dest_path: Option<PathBuf>,
    /// Refuse files larger than this (bytes, or with k/M/G/T suffix: 10M, 1G).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(crate) max_file_size: Option<u64>,
    /// Keep at most this much of each job's stdout and of its stderr.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "1M")]
    pub(crate) max_output: u64,
    /// Return at most this many bytes of files per job (`submit --return`); what is over
    /// stays behind, named in the job's report.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(crate) max_return: Option<u64>,
    /// Name shown to clients [default: the host name].
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// On the first SIGTERM/SIGINT, wait this long for running jobs before killing them (a
    /// second signal kills them at once).
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub(crate) drain_timeout: f64,
    /// Seconds a disconnected client's jobs keep running (and results wait) before the
    /// node decides it is gone: kills its jobs, frees its CPUs, deletes its files.
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub(crate) zombie_interval: f64,
    /// Expose Prometheus metrics at http://ADDR/metrics: ADDR is PORT (on 127.0.0.1),
    /// IP:PORT or [IPv6]:PORT; port 0 picks one. The address is printed on stdout.
    #[arg(long, value_name = "ADDR", value_parser = dispy::web::parse_addr)]
    pub(crate) metrics: Option<std::net::SocketAddr>,
    /// Seconds the results a gone client never collected are kept for `recover`.
    #[arg(long, default_value_t = 86400.0, value_name = "SECS")]
    pub(crate) result_ttl: f64,
    /// Exit (draining) after serving N clusters.
    #[arg(long = "serve", value_name = "N")]
    pub(crate) serve_clusters: Option<u64>,
    /// Serve only this client (its peer id, from `dispy-peer identity FILE`); repeatable.
    /// Others are refused with a message naming their id.
    #[arg(long = "allow-peer", value_name = "PEER_ID")]
    pub(crate) allow_peers: Vec<libp2p::PeerId>,
    #[command(flatten)]
    pub(crate) identity: IdentityOpt,
}

/// A lasting identity.
#[derive(Args, Debug, Clone)]
pub(crate) struct IdentityOpt {
    /// Keep this peer's identity (its peer id) in FILE, made (mode 0600) if missing; by
    /// default each run has a fresh one.
    #[arg(long, value_name = "FILE")]
    pub(crate) identity: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct SubmitOpt {
    /// The program to run (any executable or script).
    pub(crate) program: PathBuf,
    /// A dependency file, placed in each job's directory; repeatable. A directory sends the
    /// tree of its regular files under its base name (symbolic links inside are refused).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub(crate) files: Vec<PathBuf>,
    /// A program run once on each node before the cluster's first job there, in the
    /// cluster's directory (DISPY_CLUSTER_DIR, which jobs get too); a node where it fails is
    /// not used.
    #[arg(long, value_name = "PROGRAM")]
    pub(crate) setup: Option<PathBuf>,
    /// A program run on each node when the cluster releases it, in DISPY_CLUSTER_DIR (at
    /// most 30 s).
    #[arg(long, value_name = "PROGRAM")]
    pub(crate) cleanup: Option<PathBuf>,
    /// Arguments of one job, split like a shell splits words; repeatable (one job each).
    /// With --each-file: the one template, `{}` standing for each file's name.
    #[arg(short = 'a', long = "args", value_name = "ARGS", allow_hyphen_values = true)]
    pub(crate) args: Vec<String>,
    /// One job per file: the file goes only to the node that runs the job, sits in its
    /// directory under its base name, and the name is appended to the job's arguments (or
    /// replaces `{}` in the -a template).
    #[arg(long = "each-file", value_name = "FILE", num_args = 1..)]
    pub(crate) each_file: Vec<PathBuf>,
    /// Bring back the files a job leaves that match GLOB (relative to its directory; `*`,
    /// `?`, `**`), whatever its outcome; repeatable.
    #[arg(long = "return", value_name = "GLOB")]
    pub(crate) returns: Vec<String>,
    /// Where returned files are saved, as `DIR/<job number>/<path>`.
    #[arg(long, value_name = "DIR", default_value = "dispy-results")]
    pub(crate) results_dir: PathBuf,
    /// A file of jobs' arguments, one job per line, split like -a (`-`: stdin). Blank and
    /// `#` comment lines are skipped; with -a too, the -a jobs run first. Read as results
    /// come back, so it may hold millions of lines. A line that cannot be split runs no
    /// job and is named on stderr (FILE:LINE: why); the other jobs run, and the exit
    /// status is 2.
    #[arg(long, value_name = "FILE")]
    pub(crate) args_file: Option<PathBuf>,
    /// Use only nodes matching: IP glob (10.77.0.*), peer id or name; repeatable.
    #[arg(long = "nodes", value_name = "PATTERN")]
    pub(crate) nodes: Vec<String>,
    #[command(flatten)]
    pub(crate) find: FindOpt,
    #[command(flatten)]
    pub(crate) secret: SecretOpt,
    /// Run an in-process node on this machine too.
    #[arg(long)]
    pub(crate) local: bool,
    /// Send every node its own copy of the program and files. By default a file of 4 MiB
    /// or more is sent once: the nodes after the first fetch it from the nodes that hold
    /// it, checked against its hash.
    #[arg(long)]
    pub(crate) no_fanout: bool,
    /// MiB of files the client may send a node it reaches only through a relay; a node
    /// needing more is not used, and says why.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub(crate) relay_limit: u64,
    /// Use at most this many CPUs per node.
    #[arg(long, value_name = "N")]
    pub(crate) cpus_per_node: Option<u32>,
    /// Kill a job (its whole process group) after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub(crate) timeout: Option<f64>,
    /// Re-run a lost node's jobs elsewhere instead of abandoning them.
    #[arg(long)]
    pub(crate) reentrant: bool,
    /// Once jobs have run, how long to wait for a node to come back when every node is
    /// lost or unreachable (a switch reboot, a Wi-Fi roam), before reporting the rest as
    /// not run. --discover-timeout bounds the search for the first node only.
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub(crate) wait_nodes: f64,
    /// With --reentrant: fail a job once this many nodes died while it ran on them.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub(crate) max_retries: u32,
    /// Print one JSON object per job per line (and one for the summary).
    #[arg(long)]
    pub(crate) json: bool,
    /// Print only the summary, not a line per job. (A progress bar shows on stderr when
    /// it is a terminal, unless --json.)
    #[arg(long, short = 'q')]
    pub(crate) quiet: bool,
    /// Record the cluster and its jobs here, for `dispy-peer recover` after a crash.
    #[arg(long, value_name = "FILE")]
    pub(crate) journal: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) identity: IdentityOpt,
    /// Serve a live web page of the run (nodes, jobs, cancel buttons) at ADDR: PORT (on
    /// 127.0.0.1), IP:PORT or [IPv6]:PORT; port 0 picks one. Its URL, printed on stderr,
    /// holds the token cancelling needs.
    #[arg(long, value_name = "ADDR", value_parser = dispy::web::parse_addr)]
    pub(crate) web: Option<std::net::SocketAddr>,
}

#[derive(Args, Debug)]
pub(crate) struct RecoverOpt {
    /// The journal written by `submit --journal`.
    pub(crate) journal: PathBuf,
    #[command(flatten)]
    pub(crate) secret: SecretOpt,
    /// Seconds to wait for the journal's nodes.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub(crate) wait: f64,
    /// Print JSON lines.
    #[arg(long)]
    pub(crate) json: bool,
    // The identity the run used (`submit --identity`): nodes that serve only some peers
    // (`serve --allow-peer`) answer only it.
    #[command(flatten)]
    pub(crate) identity: IdentityOpt,
}

#[derive(Args, Debug)]
pub(crate) struct NodesOpt {
    #[command(flatten)]
    pub(crate) find: FindOpt,
    #[command(flatten)]
    pub(crate) secret: SecretOpt,
    #[command(flatten)]
    pub(crate) identity: IdentityOpt,
    /// Print JSON lines.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Parses `10M`, `1G`, `512k`, `4096`.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'B' => 1,
                _ => return Err(format!("unknown size suffix in {s:?} (use k, M, G or T)")),
            };
            (&s[..i], mult)
        }
        _ => (s, 1),
    };
    let n: f64 = num.parse().map_err(|_| format!("not a size: {s:?} (e.g. 4096, 10M, 1G)"))?;
    if n.is_nan() || n < 0.0 {
        return Err(format!("not a size: {s:?}"));
    }
    Ok((n * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10M").unwrap(), 10 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1.5K").unwrap(), 1536);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5X").is_err());
    }
}
