//! The request-response codec: CBOR through `dispy_protocol::{encode, decode}` (the same
//! cbor4ii calls as libp2p's stock codec), with one difference that matters on a network:
//! an oversized or malformed message is reported in the log, named as such, instead of
//! vanishing (the stock codec truncates silently and libp2p emits no event).
//!
//! Requests that are small by nature (a greeting, a chunk) have limits of their own, read
//! from the message's first bytes (its variant's name), so that a peer cannot make the node
//! buffer 64 MiB "greetings" on hundreds of streams at once.

use dispy_protocol::{CHUNK_SIZE, CodecError, MAX_MESSAGE_SIZE, Request, Response, decode, encode};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{Serialize, de::DeserializeOwned};
use std::io;
use tracing::warn;

/// dispy's codec for [`Request`] / [`Response`].
#[derive(Clone, Copy, Debug, Default)]
pub struct DispyCodec;

/// Bytes read before a request's limit is chosen: enough for the longest variant name.
const HEAD: u64 = 32;

/// Room for a message's fields around its payload.
const ENVELOPE: u64 = 64 << 10;

/// The name of the variant a CBOR-encoded enum starts with (`{"Hello": ...}` or `"Ok"`).
fn variant_name(head: &[u8]) -> Option<&str> {
    // A one-entry map (0xa1) for a variant with data, or the bare name for one without.
    let at = usize::from(head.first() == Some(&0xa1));
    let h = *head.get(at)?;
    if h >> 5 != 3 {
        return None;
    }
    let (len, start) = match h & 0x1f {
        n @ 0..=23 => (usize::from(n), at + 1),
        24 => (usize::from(*head.get(at + 1)?), at + 2),
        _ => return None,
    };
    std::str::from_utf8(head.get(start..start + len)?).ok()
}

/// The largest encoded size of a request, by its variant's name.
fn request_limit(name: Option<&str>) -> u64 {
    match name {
        Some("Hello" | "Release" | "Recover" | "Fetch") => ENVELOPE,
        Some("Chunk") => CHUNK_SIZE as u64 + ENVELOPE,
        // Batches and lists: bounded by the message limit, and by the node per item.
        _ => MAX_MESSAGE_SIZE,
    }
}

async fn read_request<R: AsyncRead + Unpin + Send>(io: &mut R) -> io::Result<Request> {
    let mut buf = Vec::new();
    (&mut *io).take(HEAD).read_to_end(&mut buf).await?;
    let name = variant_name(&buf).map(str::to_owned);
    let limit = request_limit(name.as_deref());
    if buf.len() as u64 == HEAD {
        if name.as_deref() == Some("Chunk") {
            // Room for a whole chunk at once: growing by doubling zeroed and copied it
            // twice over (a tenth of a node's CPU while staging).
            buf.reserve(CHUNK_SIZE + 1024);
        }
        // One byte past the limit tells "too large" apart from "exactly at the limit".
        (&mut *io).take(limit + 1 - HEAD).read_to_end(&mut buf).await?;
    }
    if buf.len() as u64 > limit {
        let what = name.as_deref().unwrap_or("request");
        warn!(limit, "dropped an inbound {what} larger than the limit of {limit} bytes for its kind");
        let e = CodecError::TooLarge { size: buf.len() as u64, limit };
        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
    }
    decoded(&buf, "request")
}

async fn read_message<T: DeserializeOwned, R: AsyncRead + Unpin + Send>(io: &mut R, what: &str) -> io::Result<T> {
    let mut buf = Vec::new();
    // One byte past the limit tells "too large" apart from "exactly at the limit".
    io.take(MAX_MESSAGE_SIZE + 1).read_to_end(&mut buf).await?;
    decoded(&buf, what)
}

fn decoded<T: DeserializeOwned>(buf: &[u8], what: &str) -> io::Result<T> {
    match decode(buf) {
        Ok(msg) => Ok(msg),
        Err(e) => {
            match &e {
                CodecError::TooLarge { limit, .. } => {
                    warn!(limit, "dropped an inbound {what} larger than the limit of {limit} bytes")
                }
                _ => warn!(cause = %e, bytes = buf.len(), "dropped a malformed inbound {what}"),
            }
            Err(io::Error::new(io::ErrorKind::InvalidData, e))
        }
    }
}

async fn write_message<T: Serialize, W: AsyncWrite + Unpin + Send>(io: &mut W, msg: &T) -> io::Result<()> {
    // Encoding first means an oversized message fails here, before a byte is sent.
    let bytes = encode(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    io.write_all(&bytes).await?;
    io.close().await
}

impl libp2p::request_response::Codec for DispyCodec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Request> {
        read_request(io).await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Response> {
        read_message(io, "response").await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()> {
        write_message(io, &req).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()> {
        write_message(io, &res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispy_protocol::{Chunk, ClusterId, FileHash, Hello};

    fn read(bytes: Vec<u8>) -> io::Result<Request> {
        futures::executor::block_on(read_request(&mut futures::io::Cursor::new(bytes)))
    }

    #[test]
    fn small_requests_have_small_limits() {
        let hello = Request::Hello(Hello::client("n".repeat(100)));
        assert_eq!(variant_name(&encode(&hello).unwrap()), Some("Hello"));
        assert_eq!(read(encode(&hello).unwrap()).unwrap(), hello);
        // A greeting of 1 MiB is refused as too large, not buffered to 64 MiB.
        let huge = encode(&Request::Hello(Hello::client("n".repeat(1 << 20)))).unwrap();
        let err = read(huge).unwrap_err();
        assert!(err.to_string().contains("exceeds the limit of 65536"), "{err}");
        // A full chunk fits; a chunk past CHUNK_SIZE plus its envelope does not.
        let chunk =
            |n| Request::Chunk(Chunk { cluster: ClusterId(1), hash: FileHash([1; 32]), offset: 0, data: vec![0; n] });
        assert!(read(encode(&chunk(CHUNK_SIZE)).unwrap()).is_ok());
        assert!(read(encode(&chunk(CHUNK_SIZE + ENVELOPE as usize)).unwrap()).is_err());
        // Short and malformed messages are still decoded (and refused) as before.
        assert!(read(vec![0xa1]).is_err());
        assert!(read(Vec::new()).is_err());
    }
}
