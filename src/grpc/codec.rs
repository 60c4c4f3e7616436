//! The protobuf codec of `ScanService` with small buffers, answering a message it cannot
//! decode with `INVALID_ARGUMENT` (the caller sent it; tonic's default says `INTERNAL`).
//!
//! tonic keeps one encode buffer per response stream for the stream's whole life, 8 KiB by
//! default. The gateway's messages are a few hundred bytes and its streams can number in the
//! tens of thousands (one per followed scan), so 128-byte buffers, which grow to the size of a
//! message when one is sent, keep an idle stream's cost small (measured with
//! `cargo bench --bench watch`: 8 KiB -> 1 KiB -> 128 B took 10,000 streams from 175 to 121
//! MB, and 77 to 70 MB after streams stopped needing a task).

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Code, Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial size of a stream's encode and decode buffers.
const BUFFER_SIZE: usize = 128;
/// tonic's default: how much is encoded before the encoder yields to other tasks.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with [`BUFFER_SIZE`] buffers; named in `build.rs` for the generated code.
#[derive(Debug, Clone, Copy)]
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = CallerDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        CallerDecoder(ProstCodec::<T, U>::raw_decoder(BufferSettings::new(
            BUFFER_SIZE,
            YIELD_THRESHOLD,
        )))
    }
}

/// [`ProstDecoder`] whose decode errors are the caller's: `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct CallerDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for CallerDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| match status.code() {
            Code::Internal => Status::invalid_argument(format!(
                "the request message could not be decoded as protobuf: {}",
                status.message()
            )),
            _ => status,
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
