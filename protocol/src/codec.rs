//! CBOR encoding, the same `cbor4ii::serde` calls the libp2p request-response codec makes.

use crate::MAX_MESSAGE_SIZE;
use serde::{Serialize, de::DeserializeOwned};

/// A message could not be encoded or decoded. Retrying the same bytes will not help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The message is larger than [`MAX_MESSAGE_SIZE`].
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The encoded size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The bytes are not a valid encoding of the expected message.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Encodes a message to CBOR.
///
/// # Errors
/// [`CodecError::TooLarge`] when the result would exceed [`MAX_MESSAGE_SIZE`].
///
/// # Examples
/// ```
/// use dispy_protocol::{encode, decode, JobId};
/// let bytes = encode(&JobId(7)).unwrap();
/// assert_eq!(decode::<JobId>(&bytes).unwrap(), JobId(7));
/// ```
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let bytes = cbor4ii::serde::to_vec(Vec::new(), msg).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if bytes.len() as u64 > MAX_MESSAGE_SIZE {
        return Err(CodecError::TooLarge { size: bytes.len() as u64, limit: MAX_MESSAGE_SIZE });
    }
    Ok(bytes)
}

/// Decodes a message from CBOR.
///
/// # Errors
/// [`CodecError::TooLarge`] or [`CodecError::Malformed`]; never panics on any input.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() as u64 > MAX_MESSAGE_SIZE {
        return Err(CodecError::TooLarge { size: bytes.len() as u64, limit: MAX_MESSAGE_SIZE });
    }
    cbor4ii::serde::from_slice(bytes).map_err(|e| CodecError::Malformed(e.to_string()))
}
