//! Frames between a node and a function worker process (the client's executable started in
//! worker mode), over the worker's stdin and stdout: a 4-byte little-endian length, then
//! CBOR. The node writes one [`WorkerCall`] at a time and reads one [`WorkerReply`] back,
//! after any number of [`WorkerNote`]s the job sends while it runs (provisional results,
//! files sent back). A node reads a frame as a note first and as a reply otherwise: the
//! two never decode as each other (an enum against a map), so workers that send no notes
//! speak exactly the protocol they always did.

use crate::codec::{CodecError, decode, encode};
use crate::ids::JobId;
use crate::job::Output;
use serde::{Deserialize, Serialize};

/// Environment variable that starts a program in worker mode; its value is the function.
pub const WORKER_ENV: &str = "DISPY_WORKER_FUNCTION";

/// Run one job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerCall {
    /// Which job.
    pub job: JobId,
    /// The argument, CBOR-encoded.
    #[serde(with = "serde_bytes")]
    pub input: Vec<u8>,
    /// Bytes of stdout (and of stderr) to keep.
    pub max_output: u64,
}

/// How a call ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallOutcome {
    /// The function returned this value (CBOR).
    Returned(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The function panicked.
    Panicked {
        /// The message.
        message: String,
        /// The backtrace.
        trace: String,
    },
    /// The input could not be decoded, or the function is unknown.
    Refused(String),
    /// The worker's setup function (`dispy::worker!(setup = init; ...)`) failed: this
    /// worker runs no job, and none of its cluster's on this node would fare better.
    SetupFailed(String),
}

/// Something a running job sends before its reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerNote {
    /// A provisional result (CBOR), for the client as it comes.
    Provisional(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A file to send back at once: its name in the worker's [`SENT_DIR`], where the
    /// worker put a copy of it. The node takes only regular files from there, so no path a
    /// job names makes the node read anything else.
    SendFile(String),
}

/// Bytes of one provisional value, at most: it rides in result batches beside other
/// jobs' results, so a job cannot crowd them out with one value.
pub const MAX_PROVISIONAL_BYTES: usize = 1 << 20;

/// The directory, inside a worker's own, where files sent by `dispy::send_file` wait for
/// the node to take them.
pub const SENT_DIR: &str = ".dispy-sent";

/// A finished call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerReply {
    /// Which job.
    pub job: JobId,
    /// How it ended.
    pub outcome: CallOutcome,
    /// What the function wrote to stdout.
    pub stdout: Output,
    /// What the function wrote to stderr.
    pub stderr: Output,
}

/// Encodes a frame: length prefix and CBOR.
///
/// # Errors
/// [`CodecError::TooLarge`] past [`crate::MAX_MESSAGE_SIZE`].
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let body = encode(msg)?;
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// The body length announced by a frame header.
///
/// # Errors
/// [`CodecError::TooLarge`] when it exceeds [`crate::MAX_MESSAGE_SIZE`].
pub fn frame_len(header: [u8; 4]) -> Result<usize, CodecError> {
    let len = u32::from_le_bytes(header) as u64;
    if len > crate::MAX_MESSAGE_SIZE {
        return Err(CodecError::TooLarge { size: len, limit: crate::MAX_MESSAGE_SIZE });
    }
    Ok(len as usize)
}

/// Decodes a frame body.
///
/// # Errors
/// [`CodecError::Malformed`].
pub fn decode_frame<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    decode(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let call = WorkerCall { job: JobId(4), input: vec![1, 2, 3], max_output: 10 };
        let f = encode_frame(&call).unwrap();
        let len = frame_len([f[0], f[1], f[2], f[3]]).unwrap();
        assert_eq!(decode_frame::<WorkerCall>(&f[4..4 + len]).unwrap(), call);
        let reply = WorkerReply {
            job: JobId(4),
            outcome: CallOutcome::Panicked { message: "boom".into(), trace: "at x".into() },
            stdout: Output::default(),
            stderr: Output { bytes: b"e".to_vec(), truncated: 1 },
        };
        let f = encode_frame(&reply).unwrap();
        assert_eq!(decode_frame::<WorkerReply>(&f[4..]).unwrap(), reply);
        assert!(frame_len(u32::MAX.to_le_bytes()).is_err());
        // A note is never mistaken for a reply, nor a reply for a note.
        let note = WorkerNote::Provisional(vec![7]);
        let f = encode_frame(&note).unwrap();
        assert_eq!(decode_frame::<WorkerNote>(&f[4..]).unwrap(), note);
        assert!(decode_frame::<WorkerReply>(&f[4..]).is_err());
        let f = encode_frame(&reply).unwrap();
        assert!(decode_frame::<WorkerNote>(&f[4..]).is_err());
    }
}
