//! The request-response codec: CBOR through `dispy_protocol::{encode, decode}` (the same
//! cbor4ii calls as libp2p's stock codec), with one difference that matters on a network:
//! an oversized or malformed message is reported in the log, named as such, instead of
//! vanishing (the stock codec truncates silently and libp2p emits no event).

use dispy_protocol::{CodecError, MAX_MESSAGE_SIZE, Request, Response, decode, encode};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{Serialize, de::DeserializeOwned};
use std::io;
use tracing::warn;

/// dispy's codec for [`Request`] / [`Response`].
#[derive(Clone, Copy, Debug, Default)]
pub struct DispyCodec;

async fn read_message<T: DeserializeOwned, R: AsyncRead + Unpin + Send>(io: &mut R, what: &str) -> io::Result<T> {
    let mut buf = Vec::new();
    // One byte past the limit tells "too large" apart from "exactly at the limit".
    io.take(MAX_MESSAGE_SIZE + 1).read_to_end(&mut buf).await?;
    match decode(&buf) {
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
        read_message(io, "request").await
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
