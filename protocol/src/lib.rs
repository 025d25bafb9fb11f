//! Wire types of dispy-peer: what a client (the transient scheduler) and a node
//! (`dispy-peer serve`) say to each other.
//!
//! Pure data: no I/O, no tokio, no swarm. The peer runtime (`dispy-node`) carries these
//! messages over libp2p request-response with the CBOR codec; [`codec`] encodes them with
//! the same `cbor4ii::serde` calls so that tests and tools can produce real wire bytes.
//!
//! # Layout
//! - [`ids`]: newtypes for clusters, jobs and file hashes.
//! - [`message`]: [`Request`] and [`Response`] (one enum per direction of a request), a
//!   struct per message.
//! - [`job`]: job specifications and results.
//! - [`codec`]: CBOR encode/decode with size limits.
//! - [`worker`]: frames between a node and its function worker processes.
//!
//! # Flow
//! 1. `Hello` — versions, roles, node facts (name, OS/arch, CPUs).
//! 2. `Reserve` — a client claims CPUs for a cluster and declares its files by content hash;
//!    the node answers which it lacks.
//! 3. `Chunk` — the missing files' bytes, in chunks of at most [`CHUNK_SIZE`]; or `Pull`
//!    — the node fetches a large file from other nodes of the cluster that hold it
//!    (`Fetch` with the cluster's [`ShareToken`]), so the client sends it about once.
//! 4. `Submit` — batches of jobs; the node accepts at once and runs them as CPU slots free.
//! 5. `Results` — sent by the node to the client as jobs finish (a request in the other
//!    direction); the client's `Ack` answer lets the node forget them.
//! 6. `Cancel`, `Release` — control.
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod codec;
pub mod ids;
pub mod job;
pub mod message;
pub mod share;
pub mod worker;

pub use codec::{CodecError, decode, encode};
pub use ids::{ClusterId, FileHash, JobId, OwnerHash, OwnerToken, ShareToken};
pub use job::{JobOutcome, JobResult, JobSpec, Output};
pub use message::*;
pub use share::{Pull, PullState, Pulled, Source};

/// The request-response protocol name. The version in it changes with any incompatible
/// change of the messages; peers with another name simply do not talk this protocol.
pub const PROTOCOL_NAME: &str = "/dispy/job/1.0.0";

/// The Kademlia protocol name, kept apart from IPFS's `/ipfs/kad/1.0.0`.
pub const KAD_PROTOCOL_NAME: &str = "/dispy/kad/1.0.0";

/// The identify protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/dispy/1.0.0";

/// The version of the message set, exchanged in [`Hello`] so that an incompatible peer gets
/// an error naming both versions instead of undecodable messages.
pub const WIRE_VERSION: u32 = 1;

/// Largest encoded message accepted in either direction. Big enough for a full result batch
/// (see [`MAX_RESULT_BATCH_BYTES`]); bulk file bytes travel in chunks far below it.
pub const MAX_MESSAGE_SIZE: u64 = 64 << 20;

/// Size of one file chunk. 1 MiB keeps the per-request overhead (≈ 0.6 ms) small beside
/// the transfer time while bounding what each side buffers per chunk in flight.
pub const CHUNK_SIZE: usize = 1 << 20;

/// How many chunks of one file a client may have on their way at once (a node refuses
/// more): enough to keep both ends busy, few enough to bound what a node holds per file.
pub const CHUNKS_IN_FLIGHT: usize = 4;

/// Longest time limit a job or a setup may have, in seconds (10^9 s, about 31 years):
/// past it a limit is a mistake (`Duration::MAX`), and a node refuses it rather than
/// convert it.
pub const MAX_TIMEOUT_SECS: f64 = 1e9;

/// Most items (files, jobs, job ids) one request may carry. Far above what a client sends
/// at once (a Submit batch is a node's CPUs × 16; a cluster has files by the dozen), and a
/// bound on the work one request can ask of a node; a node refuses a request over it.
pub const MAX_ITEMS_PER_REQUEST: usize = 100_000;

/// A node stops adding results to one `Results` message past this many bytes of output,
/// so a batch always fits [`MAX_MESSAGE_SIZE`] with room for CBOR overhead.
pub const MAX_RESULT_BATCH_BYTES: usize = 16 << 20;
