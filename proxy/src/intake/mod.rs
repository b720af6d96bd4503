//! Intake: payloads in, batches of events out, one module per protocol.
//!
//! The transport-independent core ([`core::Core`]) does what every protocol
//! needs the same way: a credential to a tenant, the memory budget of payloads
//! in flight (refusing a payload whole before it is read when there is no
//! room, and charging the events it decodes into), decoding through the
//! protocol's [`Decode`] where the tenant's batches run, submitting the batch
//! to the stage chain, and the metrics and log lines of what was accepted or
//! refused. A refusal is one typed [`Refusal`], which each protocol answers in
//! its own form.
//!
//! A protocol adds what is its own. Over HTTP it implements
//! [`http::HttpProtocol`]: which requests it serves (method and path), where
//! its key is (a header, a query parameter), the decoder of a request's body,
//! and its answers (status and body); [`http::handle`] asks each protocol in
//! turn and runs the shared steps. Today: `datadog` (`/api/v2/logs`,
//! `/api/v1/validate`), `input` (`/v1/input`), `otlp` (`/v1/logs`) and `hec`
//! (Splunk's `/services/collector/...`, with its acknowledgement state) and
//! `elasticsearch` (`_bulk`, and the probes its clients make at start); gRPC
//! calls (OTLP's `LogsService/Export`) go to `otlp_grpc`, over tonic.
//!
//! A protocol over a TCP stream (`syslog`, `forward`) plugs into the same
//! core without the HTTP adapter: its connection task (spawned by listen/ for
//! a listener of that protocol) reads the stream's framing, finds the tenant
//! once per connection ([`Core::authenticate`] with the handshake's shared
//! key, or the listener's tenant), and for each frame or chunk reserves its
//! memory ([`Core::reserve_payload`] with the frame's length), has
//! [`Core::take`] decode and submit it with the protocol's [`Decode`], records
//! the outcome ([`Core::finish`]), and answers in its own form: an ack for the
//! chunk once taken, or none (and the connection closed) on a refusal; syslog,
//! which has no ack, holds its sender back and tries again, as the refusal's
//! status class says.
mod auth_guard;
pub mod body;
pub mod core;
pub mod datadog;
pub mod elasticsearch;
pub mod forward;
pub mod hec;
pub mod http;
pub mod input;
mod lines;
pub mod otlp;
pub mod otlp_grpc;
pub mod refusal;
pub mod refusals;
pub mod syslog;

pub use self::core::{Core, Decode};
pub use self::http::{error_response, json_response};
pub use refusal::Refusal;

use crate::config::Limits;
use crate::tenant::Tenants;
use ::http::{Request, Response};
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use refusals::Origin;
use std::convert::Infallible;
use std::sync::Arc;

/// An answer's body: a whole HTTP body, or a gRPC call's (data, then trailers).
pub type Reply = Either<Full<Bytes>, tonic::body::Body>;

/// A protocol framed over a TCP (or TLS) stream rather than HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamProtocol {
    FluentForward,
    Syslog,
}

/// Whose events a stream connection carries.
#[derive(Clone)]
pub enum StreamTenant {
    /// The listener's tenant.
    Named(String),
    /// The tenant of the shared key the sender proves (Fluent forward's handshake).
    SharedKeys(Arc<forward::SharedKeys>),
}

/// The intake the listeners dispatch to.
pub struct Intake {
    core: Arc<Core>,
    protocols: http::Protocols,
}

impl Intake {
    pub fn new(tenants: Tenants, limits: Limits) -> Arc<Intake> {
        Arc::new(Intake {
            core: Core::new(tenants, limits),
            protocols: http::Protocols::default(),
        })
    }

    /// Serves one connection of a protocol framed over TCP or TLS, for the
    /// listener's tenant or the one its sender's shared key names.
    pub async fn stream<S>(
        self: Arc<Self>,
        protocol: StreamProtocol,
        owner: &StreamTenant,
        stream: S,
        origin: Origin,
        stop: tokio_util::sync::CancellationToken,
        (handshake_timeout, idle): (std::time::Duration, std::time::Duration),
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let core = &self.core;
        let tenant = match owner {
            StreamTenant::Named(name) => match core.tenant_named(name) {
                Some(t) => t,
                None => {
                    tracing::error!(
                        tenant = name,
                        listener = %origin.listener,
                        "the listener names a tenant that does not exist"
                    );
                    return;
                }
            },
            StreamTenant::SharedKeys(keys) => {
                let timers = (handshake_timeout, idle);
                return forward::serve_shared(core, stream, &origin, keys, stop, timers).await;
            }
        };
        match protocol {
            StreamProtocol::FluentForward => {
                let buf = bytes::BytesMut::new();
                forward::serve(core, stream, &origin, tenant, stop, idle, buf).await
            }
            StreamProtocol::Syslog => {
                syslog::serve(core, stream, &origin, tenant, stop, idle).await
            }
        }
    }

    /// Answers one HTTP request, in the form of the protocol that serves its
    /// path: gRPC's (OTLP's `Export`) or one of the HTTP protocols'.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        origin: Origin,
    ) -> Result<Response<Reply>, Infallible> {
        if req.uri().path() == otlp_grpc::EXPORT_PATH {
            let answer = otlp_grpc::serve(&self.core, req, &origin).await;
            return Ok(answer.map(Either::Right));
        }
        Ok(http::handle(&self.core, &self.protocols, req, &origin)
            .await
            .map(Either::Left))
    }
}
