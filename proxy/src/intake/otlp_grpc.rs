//! OTLP/gRPC: `LogsService/Export`, as the OpenTelemetry SDKs' and the
//! Collector's `otlp` exporters send it, over HTTP/2 on any listener (give
//! it one of its own, on 4317 by convention). tonic does gRPC's part
//! (framing, `grpc-encoding` gzip and zstd, size limit, status trailers); the
//! message is decoded by the OTLP intake's decoder on the tenant's intake
//! threads, as an OTLP/HTTP protobuf body would be.
//!
//! As over HTTP, the key is a bearer token (`authorization` metadata) or
//! `dd-api-key`, checked before the message is read; the message's memory is
//! reserved before it is read (the largest allowed, gRPC senders declare no
//! length). Refusals are gRPC statuses: UNAVAILABLE (retried by exporters)
//! for backpressure and rate limits, the others not retried (see
//! [`otlp::grpc_code`]).
use super::core::{Core, Payload};
use super::datadog::api_key;
use super::otlp::{self, Form, Otlp, OtlpBody};
use super::refusals::{Origin, RefusedAt};
use super::{body::Encoding, http::HttpProtocol, Refusal};
use crate::budget::Reservation;
use crate::event::Intake;
use bytes::{Buf, Bytes};
use http::{Request, Response};
use hyper::body::Incoming;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use prost::Message;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{Grpc, UnaryService};
use tonic::Status;

pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

pub type GrpcAnswer = Response<tonic::body::Body>;

/// Serves one `Export` call.
pub async fn serve(core: &Arc<Core>, req: Request<Incoming>, origin: &Origin) -> GrpcAnswer {
    let started = std::time::Instant::now();
    // Who it is for and room for it, before a byte of the message is read.
    let key = origin
        .key(req.headers())
        .or_else(|| api_key(req.headers(), None));
    let tenant = match core
        .authenticate(origin, key.as_deref(), Otlp::KEY_HINT)
        .await
    {
        Ok(t) => t,
        Err(r) => return refused(core, origin, None, started, r),
    };
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let reservation = match core.reserve_payload(declared).await {
        Ok(r) => r,
        Err(r) => return refused(core, origin, Some(&tenant), started, r),
    };
    let reservation = Arc::new(Mutex::new(Some(reservation)));
    let export = Export {
        core: core.clone(),
        origin: origin.clone(),
        tenant: tenant.clone(),
        reservation: reservation.clone(),
        started,
    };
    let mut grpc = Grpc::new(ExportCodec)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(core.max_decompressed());
    let answer = match tokio::time::timeout(core.read_timeout(), grpc.unary(export, req)).await {
        Ok(answer) => answer,
        Err(_) => {
            let r = Refusal::BodyTimeout;
            core.refused(origin, RefusedAt::Protocol(Intake::Otlp), None, &r);
            return status(&r).into_http();
        }
    };
    // The call never ran: tonic refused the message itself (too large, an
    // unknown `grpc-encoding`, broken framing). Counted as any refusal is.
    if reservation
        .lock()
        .expect("reservation lock")
        .take()
        .is_some()
    {
        let r = tonic_refusal(&answer, core.max_decompressed());
        core.finish(origin, Intake::Otlp, Some(&tenant), started, &Err(r));
    }
    answer
}

/// The refusal of a call tonic answered without running it, from its status.
fn tonic_refusal(answer: &GrpcAnswer, max: usize) -> Refusal {
    let status = Status::from_header_map(answer.headers())
        .unwrap_or_else(|| Status::unknown("no grpc-status in the answer"));
    match status.code() {
        tonic::Code::ResourceExhausted | tonic::Code::OutOfRange => {
            Refusal::DecompressedTooLarge { max }
        }
        tonic::Code::Unimplemented => Refusal::UnsupportedEncoding(status.message().to_string()),
        _ => Refusal::InvalidPayload {
            format: "OTLP gRPC message",
            error: status.message().to_string(),
        },
    }
}

fn refused(
    core: &Core,
    origin: &Origin,
    tenant: Option<&crate::tenant::Tenant>,
    started: std::time::Instant,
    r: Refusal,
) -> GrpcAnswer {
    let answer = status(&r).into_http();
    core.finish(origin, Intake::Otlp, tenant, started, &Err(r));
    answer
}

fn status(r: &Refusal) -> Status {
    Status::new(otlp::grpc_code(r), r.to_string())
}

/// The call once tonic has read the message.
struct Export {
    core: Arc<Core>,
    origin: Origin,
    tenant: Arc<crate::tenant::Tenant>,
    /// Taken by the one call.
    reservation: Arc<Mutex<Option<Reservation>>>,
    started: std::time::Instant,
}

type ExportFuture = Pin<
    Box<dyn Future<Output = Result<tonic::Response<ExportLogsServiceResponse>, Status>> + Send>,
>;

impl UnaryService<Bytes> for Export {
    type Response = ExportLogsServiceResponse;
    type Future = ExportFuture;

    fn call(&mut self, request: tonic::Request<Bytes>) -> ExportFuture {
        let (core, origin, tenant, started) = (
            self.core.clone(),
            self.origin.clone(),
            self.tenant.clone(),
            self.started,
        );
        let reservation = self.reservation.lock().expect("reservation lock").take();
        Box::pin(async move {
            let result = match reservation {
                Some(reservation) => {
                    let payload = Payload {
                        // tonic has inflated it already.
                        bytes: request.into_inner(),
                        encoding: Encoding::Identity,
                        reservation,
                    };
                    core.take(
                        Intake::Otlp,
                        tenant.clone(),
                        payload,
                        OtlpBody(Form::Protobuf),
                    )
                    .await
                }
                None => Err(Refusal::Busy),
            };
            let answer = match &result {
                Ok(()) => Ok(tonic::Response::new(ExportLogsServiceResponse {
                    partial_success: None,
                })),
                Err(r) => Err(status(r)),
            };
            core.finish(&origin, Intake::Otlp, Some(&tenant), started, &result);
            answer
        })
    }
}

/// The request message as bytes (the OTLP decoder reads it where the
/// tenant's batches are decoded), the answer as protobuf.
struct ExportCodec;

impl Codec for ExportCodec {
    type Encode = ExportLogsServiceResponse;
    type Decode = Bytes;
    type Encoder = AnswerEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> AnswerEncoder {
        AnswerEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

struct AnswerEncoder;

impl Encoder for AnswerEncoder {
    type Item = ExportLogsServiceResponse;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the answer: {e}")))
    }
}

struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
