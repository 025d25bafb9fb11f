//! The messages: [`Request`] (what the asking side sends) and [`Response`] (its answer).
//!
//! Any peer may ask: a client asks nodes to reserve, stage and run; a node asks its client
//! to take results. Every request is answered at once — long work (running jobs) is
//! acknowledged with [`Response::Accepted`] and reported later by a request in the other
//! direction ([`Request::Results`]).

use crate::ids::{ClusterId, FileHash, JobId, OwnerHash, OwnerToken, ShareToken};
use crate::job::{JobResult, JobSpec};
use crate::share::{Pull, Pulled};
use serde::{Deserialize, Serialize};

/// What a peer asks another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Request {
    /// Introduce yourself; answered with [`Response::Hello`].
    Hello(Hello),
    /// Claim CPUs for a cluster and declare its files; answered with [`Response::Reserved`].
    Reserve(Reserve),
    /// Bytes of a file the node lacks; answered with [`Response::ChunkStored`].
    Chunk(Chunk),
    /// Jobs to run; answered with [`Response::Accepted`].
    Submit(Submit),
    /// Stop jobs; answered with [`Response::Ok`].
    Cancel(Cancel),
    /// The cluster is done; answered with [`Response::Ok`].
    Release(Release),
    /// Finished jobs, from a node to the cluster's client; answered with [`Response::Ok`],
    /// which acknowledges every result in the batch.
    Results(Results),
    /// A client recovering from a crash asks for the results a node still holds for a
    /// cluster; answered with [`Response::Recovered`]. Only the cluster's owner may: the
    /// peer that reserved it, or whoever presents the [`OwnerToken`] whose hash came with
    /// the [`Reserve`] (kept only in the client's journal).
    Recover(Recover),
    /// The recovered results are safe with the client: the node deletes them. Only the
    /// cluster's owner may, as for [`Request::Recover`].
    Forget(Forget),
    /// Input files of jobs about to be submitted; answered with [`Response::Declared`].
    Declare(Declare),
    /// A chunk of a file a job returned, or (with the cluster's [`ShareToken`]) of a file
    /// the cluster staged, asked by another node of the cluster; answered with
    /// [`Response::Data`].
    Fetch(Fetch),
    /// Fetch a file of the cluster from other nodes that hold it instead of from the
    /// client; answered with [`Response::Pulled`] once the file is stored, or failed, or
    /// after a while with how far it got (ask again to wait on).
    Pull(Pull),
}

/// An answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Response {
    /// The answering peer's introduction.
    Hello(Hello),
    /// CPUs granted and files missing.
    Reserved(Reserved),
    /// A chunk was written.
    ChunkStored(ChunkStored),
    /// Jobs were queued.
    Accepted(Accepted),
    /// The results a node holds for a cluster.
    Recovered(Results),
    /// Done.
    Ok,
    /// The request was refused; the message says why in words a person can act on.
    Refused(Refusal),
    /// The declared files the node lacks.
    Declared(Declared),
    /// A chunk of a returned file.
    Data(Data),
    /// Where a [`Pull`] stands.
    Pulled(Pulled),
}

/// Which part a peer plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Role {
    /// Runs jobs (`dispy-peer serve`).
    Node,
    /// Schedules jobs and gathers results (`submit`, the library); runs none.
    Client,
}

/// A peer's introduction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Hello {
    /// [`crate::WIRE_VERSION`] of the sender.
    pub wire_version: u32,
    /// The sender's software version (for people).
    pub software: String,
    /// Node or client.
    pub role: Role,
    /// A name for people (`--name`, default the host name).
    pub name: String,
    /// `std::env::consts::OS` of the sender.
    pub os: String,
    /// `std::env::consts::ARCH` of the sender.
    pub arch: String,
    /// CPU slots served (0 for clients).
    pub cpus: u32,
    /// CPU slots not running a job right now.
    pub free_cpus: u32,
    /// Largest file the node accepts, if it has a limit.
    pub max_file_size: Option<u64>,
    /// The node's memory in bytes, if known (for node filters).
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// How long the node keeps a silent client's jobs and results (its zombie interval),
    /// in seconds: a client waits this long for a node that went unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zombie_secs: Option<u64>,
    /// What the node is doing and has left right now (dispy's `DispyNodeAvailInfo`), for
    /// `dispy-peer status` and node filters. Absent from clients and older nodes, and then
    /// absent on the wire, so they read and send Hellos as before. (Boxed: every message
    /// enum holding a Hello stays small.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<Box<NodeLoad>>,
}

/// A node's current load and free resources, as its [`Hello`] reports them. The machine's
/// figures are sampled every few seconds, so they may be that old; each is `None` where the
/// node cannot read it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct NodeLoad {
    /// Clients holding a cluster on the node.
    pub clients: u32,
    /// Jobs waiting in the node's queues for a CPU slot (running ones are
    /// `cpus - free_cpus`).
    pub jobs_queued: u64,
    /// The machine's load average over the last minute (`/proc/loadavg`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_avg: Option<f64>,
    /// Memory available for new work, in bytes (`MemAvailable` of `/proc/meminfo`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_free_bytes: Option<u64>,
    /// Bytes free to the node's user on the file system of its store (its dest path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_free_bytes: Option<u64>,
}

impl Hello {
    /// This software's greeting as a client: it serves no CPUs.
    ///
    /// ```
    /// let h = dispy_protocol::Hello::client("laptop".into());
    /// assert_eq!(h.role, dispy_protocol::Role::Client);
    /// assert_eq!(h.cpus, 0);
    /// ```
    pub fn client(name: String) -> Hello {
        Hello::ours(Role::Client, name)
    }

    /// This software's greeting as a node serving `cpus` slots, `free_cpus` of them idle.
    pub fn node(
        name: String,
        cpus: u32,
        free_cpus: u32,
        max_file_size: Option<u64>,
        memory_bytes: Option<u64>,
    ) -> Hello {
        Hello { cpus, free_cpus, max_file_size, memory_bytes, ..Hello::ours(Role::Node, name) }
    }

    fn ours(role: Role, name: String) -> Hello {
        Hello {
            wire_version: crate::WIRE_VERSION,
            software: env!("CARGO_PKG_VERSION").to_string(),
            role,
            name,
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            cpus: 0,
            free_cpus: 0,
            max_file_size: None,
            memory_bytes: None,
            zombie_secs: None,
            load: None,
        }
    }
}

/// A file of a computation, named by its path relative to the job directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct FileEntry {
    /// Relative path inside the job directory: no `..`, not absolute.
    pub name: String,
    /// SHA-256 of the content.
    pub hash: FileHash,
    /// Size in bytes.
    pub size: u64,
    /// Whether the file is made executable in the job directory.
    pub executable: bool,
}

/// Claims CPUs on a node for a cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Reserve {
    /// The cluster.
    pub cluster: ClusterId,
    /// At most this many CPU slots (`None` = all the node serves).
    pub cpus: Option<u32>,
    /// The program each job runs (for a function cluster: the client's own executable,
    /// started as a persistent worker); it is also in `files`.
    pub program: String,
    /// For a function cluster: the function's name in the program's registry. The node keeps
    /// one worker process per CPU slot and sends each job's input to one of them.
    #[serde(default)]
    pub function: Option<String>,
    /// Every file each job directory holds (the program included).
    pub files: Vec<FileEntry>,
    /// A program among `files` run once on the node before the cluster's first job, in the
    /// cluster's own directory (`DISPY_CLUSTER_DIR`); jobs start only after it exited 0.
    /// Program clusters only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<String>,
    /// A program among `files` run when the cluster releases the node, in the same
    /// directory, before it is deleted. Program clusters only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<String>,
    /// Seconds the setup may run before the node kills it (the cluster's job timeout);
    /// `None` = no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_timeout_secs: Option<f64>,
    /// Files a job leaves that match one of these globs (relative to its directory, `*`,
    /// `?` and `**`) go back to the client with its result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub returns: Vec<String>,
    /// The hash of the client's [`OwnerToken`] for this cluster: a later [`Recover`] or
    /// [`Forget`] from another peer (the client restarted after a crash) must present the
    /// token. `None` (an older client): only the peer that reserved may, while the lease
    /// lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerHash>,
    /// The cluster's [`ShareToken`]: with it this node may fetch the cluster's files from
    /// the other nodes (and they from it). `None`: the client sends every file itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<ShareToken>,
}

/// The node's grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Reserved {
    /// CPU slots the cluster may count on.
    pub cpus: u32,
    /// Files whose bytes the node lacks and wants sent, as [`Chunk`]s.
    pub missing: Vec<FileHash>,
    /// The node held the cluster already (its client reconnected): its queued and running
    /// jobs and its results are still there. False: the cluster starts afresh on the node
    /// (e.g. it restarted), so jobs the client had sent there are gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
}

/// A piece of a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Chunk {
    /// The cluster the file belongs to.
    pub cluster: ClusterId,
    /// Which file.
    pub hash: FileHash,
    /// Where the bytes go in the file.
    pub offset: u64,
    /// The bytes, at most [`crate::CHUNK_SIZE`].
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// A chunk was written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ChunkStored {
    /// Which file.
    pub hash: FileHash,
    /// True once the whole file is present and its hash verified.
    pub complete: bool,
}

/// Jobs for the cluster's program.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Submit {
    /// The cluster.
    pub cluster: ClusterId,
    /// The jobs, run in this order as CPU slots free.
    pub jobs: Vec<JobSpec>,
}

/// Jobs were queued on the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Accepted {
    /// How many.
    pub count: u32,
}

/// Stops jobs, queued or running (their process groups are killed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Cancel {
    /// The cluster.
    pub cluster: ClusterId,
    /// The jobs.
    pub jobs: Vec<JobId>,
}

/// Ends a cluster on a node: its jobs are killed and its job directories deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Release {
    /// The cluster.
    pub cluster: ClusterId,
}

/// Jobs of a cluster that started and ended, sent by the node to the client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Results {
    /// The cluster.
    pub cluster: ClusterId,
    /// Jobs that started running (left the node's queue for a CPU slot) since the last
    /// message. The client counts a job's attempts by them: only a job that was running
    /// when its node died is suspected of killing it.
    #[serde(default)]
    pub started: Vec<JobId>,
    /// Results in the order the jobs ended.
    pub results: Vec<JobResult>,
    /// Provisional results of running function jobs (`dispy::provisional`), in the order
    /// they were made, ahead of any result in this message. Absent on the wire when empty,
    /// so older peers read these messages as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provisional: Vec<Provisional>,
}

/// What a running function job sent before its result: a value (dispy's provisional
/// result) or a file (dispy's `dispy_send_file`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Provisional {
    /// Which job.
    pub job: JobId,
    /// The value, CBOR-encoded as the job's function chose; empty when `file` is set.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// A file the job sent: stored on the node, to be fetched at once (as a returned file
    /// is) while the job goes on. Absent on the wire for a value, so values travel as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileEntry>,
}

impl Provisional {
    /// A provisional value of `job`.
    pub fn value(job: JobId, value: Vec<u8>) -> Self {
        Provisional { job, value, file: None }
    }

    /// A file `job` sent while it runs.
    pub fn file(job: JobId, file: FileEntry) -> Self {
        Provisional { job, value: Vec::new(), file: Some(file) }
    }
}

/// Names the input files of jobs about to be submitted (`--each-file`), so the node accepts
/// their chunks; answered with [`Response::Declared`], the ones it lacks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Declare {
    /// The cluster.
    pub cluster: ClusterId,
    /// The files.
    pub files: Vec<FileEntry>,
}

/// Which declared files the node lacks: send those before the jobs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Declared {
    /// The files to send.
    pub missing: Vec<FileHash>,
}

/// Asks for a chunk of a file a job returned; answered with [`Response::Data`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Fetch {
    /// The cluster whose job returned it.
    pub cluster: ClusterId,
    /// The file.
    pub hash: FileHash,
    /// Where the chunk starts.
    pub offset: u64,
    /// Present when a node of the cluster asks for one of the cluster's own files (a
    /// [`Pull`]): the token its Reserve brought. Absent: a returned file, asked by the
    /// cluster's client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<ShareToken>,
}

/// A chunk of a returned file: at most [`crate::CHUNK_SIZE`] bytes from `offset` (fewer
/// only at the file's end).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Data {
    /// The file.
    pub hash: FileHash,
    /// Where the chunk starts.
    pub offset: u64,
    /// The bytes.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// Asks for a cluster's results after a client crash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Recover {
    /// The cluster.
    pub cluster: ClusterId,
    /// The cluster's owner token (from the client's journal); needed by any peer other
    /// than the one that reserved the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<OwnerToken>,
}

/// Deletes recovered results.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Forget {
    /// The cluster.
    pub cluster: ClusterId,
    /// The jobs whose results the client now holds.
    pub jobs: Vec<JobId>,
    /// The cluster's owner token, as in [`Recover`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<OwnerToken>,
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum RefusalKind {
    /// The peers speak different [`crate::WIRE_VERSION`]s.
    Version,
    /// The peer is not a node (or not the cluster's client).
    WrongRole,
    /// The node admits only peers it was given by id (`serve --allow-peer`, or an embedded
    /// node, which serves only its own client); the message names the refused peer.
    NotAllowed,
    /// The peer has too many requests waiting for the node's answers; retry after the
    /// earlier ones are answered.
    Overloaded,
    /// The cluster is not reserved on this node.
    UnknownCluster,
    /// A file name is absolute or escapes the job directory.
    BadPath,
    /// A file is larger than the node's `--max-file-size`.
    TooLarge,
    /// A chunk or file does not match what was declared.
    BadFile,
    /// The node is shutting down.
    ShuttingDown,
    /// The node failed (disk full, ...); the message says how.
    Internal,
    /// The cluster's setup program failed on this node; the message has its exit status
    /// and the end of its stderr. Retrying on this node will not help.
    SetupFailed,
    /// A value in the request is out of range (a time limit that is not a positive number
    /// of seconds, more items than [`crate::MAX_ITEMS_PER_REQUEST`]); the message names it.
    /// Retrying the same request will not help.
    BadRequest,
    /// The peer is over one of the node's per-client limits (clusters, queued jobs, bytes
    /// held, files arriving at once); the message names it. Other clients are served as
    /// before; retrying after the peer's earlier work has ended can help.
    OverLimit,
    /// The peer is not the cluster's owner (for recover and forget): it neither reserved
    /// the cluster nor holds its owner token. Retrying will not help.
    NotOwner,
    /// The node does not hold those bytes yet: its own copy of the file is still arriving.
    /// Ask again shortly.
    NotYet,
}

/// A refusal, with a message for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Refusal {
    /// The class, for programs.
    pub kind: RefusalKind,
    /// The explanation, for people.
    pub message: String,
}

impl Refusal {
    /// A refusal of `kind` saying `message`.
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Self {
        Refusal { kind, message: message.into() }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobOutcome, Output};
    use crate::{decode, encode};

    fn hello() -> Hello {
        Hello {
            wire_version: crate::WIRE_VERSION,
            software: "0.1.0".into(),
            role: Role::Node,
            name: "n1".into(),
            os: "linux".into(),
            arch: "x86_64".into(),
            cpus: 2,
            free_cpus: 1,
            max_file_size: Some(10),
            memory_bytes: Some(1 << 30),
            zombie_secs: Some(60),
            load: Some(Box::new(NodeLoad {
                clients: 2,
                jobs_queued: 7,
                load_avg: Some(1.25),
                memory_free_bytes: Some(1 << 29),
                disk_free_bytes: None,
            })),
        }
    }

    fn result() -> JobResult {
        JobResult {
            id: JobId(3),
            outcome: JobOutcome::Signaled(9),
            stdout: Output { bytes: b"out".to_vec(), truncated: 0 },
            stderr: Output { bytes: vec![0, 255], truncated: 12 },
            start_us: 1,
            end_us: 2,
            value: vec![9],
            returned: Vec::new(),
            return_note: None,
        }
    }

    #[test]
    fn every_request_round_trips() {
        let h = FileHash([7; 32]);
        let c = ClusterId(42);
        let all = vec![
            Request::Hello(hello()),
            Request::Reserve(Reserve {
                cluster: c,
                cpus: Some(1),
                program: "p.sh".into(),
                function: Some("demo::square".into()),
                files: vec![FileEntry { name: "p.sh".into(), hash: h, size: 5, executable: true }],
                setup: Some("p.sh".into()),
                cleanup: None,
                setup_timeout_secs: Some(2.5),
                returns: vec!["**/*.gz".into()],
                owner: Some(OwnerToken([3; 32]).hash()),
                share: Some(ShareToken([5; 32])),
            }),
            Request::Declare(Declare {
                cluster: c,
                files: vec![FileEntry { name: "in.txt".into(), hash: h, size: 5, executable: false }],
            }),
            Request::Fetch(Fetch { cluster: c, hash: h, offset: 1 << 20, share: None }),
            Request::Chunk(Chunk { cluster: c, hash: h, offset: 9, data: vec![1, 2, 3] }),
            Request::Submit(Submit {
                cluster: c,
                jobs: vec![JobSpec {
                    id: JobId(1),
                    args: vec!["a b".into()],
                    timeout_secs: Some(1.5),
                    input: vec![1, 2],
                    files: vec![FileEntry { name: "in/a.txt".into(), hash: h, size: 3, executable: false }],
                }],
            }),
            Request::Cancel(Cancel { cluster: c, jobs: vec![JobId(1)] }),
            Request::Release(Release { cluster: c }),
            Request::Results(Results {
                cluster: c,
                started: vec![JobId(8)],
                results: vec![result()],
                provisional: vec![Provisional::value(JobId(8), vec![1, 2])],
            }),
            Request::Recover(Recover { cluster: c, token: Some(OwnerToken([4; 32])) }),
            Request::Forget(Forget { cluster: c, jobs: vec![JobId(2)], token: None }),
        ];
        for msg in all {
            let bytes = encode(&msg).unwrap();
            assert_eq!(decode::<Request>(&bytes).unwrap(), msg);
        }
    }

    #[test]
    fn every_response_round_trips() {
        let h = FileHash([1; 32]);
        let all = vec![
            Response::Hello(hello()),
            Response::Reserved(Reserved { cpus: 2, missing: vec![h], resumed: false }),
            Response::ChunkStored(ChunkStored { hash: h, complete: true }),
            Response::Accepted(Accepted { count: 3 }),
            Response::Recovered(Results {
                cluster: ClusterId(5),
                started: vec![],
                results: vec![result()],
                provisional: vec![],
            }),
            Response::Ok,
            Response::Refused(Refusal::new(RefusalKind::BadPath, "no")),
            Response::Declared(Declared { missing: vec![h] }),
            Response::Data(Data { hash: h, offset: 7, data: vec![1, 2] }),
        ];
        for msg in all {
            let bytes = encode(&msg).unwrap();
            assert_eq!(decode::<Response>(&bytes).unwrap(), msg);
        }
    }

    #[test]
    fn bytes_are_compact() {
        // serde_bytes keeps a chunk's overhead to a few bytes, not one per byte.
        let chunk =
            Request::Chunk(Chunk { cluster: ClusterId(1), hash: FileHash([0; 32]), offset: 0, data: vec![200; 1000] });
        assert!(encode(&chunk).unwrap().len() < 1100);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&[][..], &[0xff; 16][..], &[0x9f, 0x9f, 0x9f][..], b"hello"] {
            assert!(decode::<Request>(bytes).is_err());
        }
    }
}
