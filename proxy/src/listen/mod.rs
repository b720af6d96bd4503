//! Listeners: accept TCP connections (at most `max_connections` at once),
//! terminate TLS when configured, and serve HTTP/1.1 and HTTP/2 with hyper,
//! guarded by header-read and idle timeouts, handing each request to
//! [`Intake::handle`]. Shutdown stops accepting and lets open requests finish.
//! A listener of a stream protocol (Fluent forward) shares the accept loop,
//! connection limit and TLS here and hands the connection, not hyper, to
//! that protocol's task over the intake core (see `intake::forward`).
mod idle;
mod per_ip;
pub mod tls;

use crate::config::{Limits, ListenerConfig, ListenerProtocol};
use crate::intake::forward::SharedKeys;
use crate::intake::{Intake, StreamProtocol, StreamTenant};
use crate::telemetry::METRICS;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use idle::{Activity, ConnTimers};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Why a listener could not start or a connection could not begin.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("listener {name}: cannot bind {address}: {error}")]
    Bind {
        name: String,
        address: SocketAddr,
        error: std::io::Error,
    },
    #[error("listener {name}: {error}")]
    Tls { name: String, error: tls::TlsError },
    #[error("handshake not completed within {0:?}")]
    HandshakeTimeout(Duration),
    #[error(transparent)]
    Handshake(#[from] std::io::Error),
}

pub struct Listener {
    name: String,
    /// A protocol framed over the stream (not HTTP), and the tenant its
    /// connections' events belong to.
    stream: Option<(StreamProtocol, StreamTenant)>,
    key_header: Option<http::HeaderName>,
    tcp: TcpListener,
    tls: Option<Arc<tls::ServerTls>>,
}

impl Listener {
    /// Binds now, so a port conflict is reported before the proxy says it is up.
    pub async fn bind(cfg: &ListenerConfig) -> Result<Listener, ListenError> {
        let tcp = TcpListener::bind(cfg.address)
            .await
            .map_err(|error| ListenError::Bind {
                name: cfg.name.clone(),
                address: cfg.address,
                error,
            })?;
        let tls = match (cfg.protocol, &cfg.tls) {
            (p, Some(t)) if p == ListenerProtocol::Https || p.is_stream() => {
                Some(tls::ServerTls::load(t).map_err(|error| ListenError::Tls {
                    name: cfg.name.clone(),
                    error,
                })?)
            }
            _ => None,
        };
        Ok(Listener {
            name: cfg.name.clone(),
            stream: stream_protocol(cfg.protocol).zip(stream_tenant(cfg)),
            // Checked by the config's validation.
            key_header: cfg
                .key_header
                .as_deref()
                .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok()),
            tcp,
            tls,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.tcp.local_addr().expect("bound socket has an address")
    }

    /// The next connection, with its slot (`max_connections`, and its IP's
    /// `max_connections_per_ip`: one past it is closed here); `None` once
    /// `stop` is cancelled.
    async fn accept(
        &self,
        admission: &Admission,
        stop: &CancellationToken,
    ) -> Option<(per_ip::Slot, TcpStream, SocketAddr)> {
        let mut permit = tokio::select! {
            p = admission.slots.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = stop.cancelled() => return None,
        };
        loop {
            tokio::select! {
                r = self.tcp.accept() => match r {
                    Ok((stream, peer)) => {
                        match admission.per_ip.enter(peer.ip(), permit) {
                            Some(slot) => {
                                let _ = stream.set_nodelay(true);
                                return Some((slot, stream, peer));
                            }
                            None => {
                                admission.refused.inc();
                                tracing::debug!(listener = %self.name, %peer, "connection refused: its IP holds max_connections_per_ip");
                                drop(stream);
                                // The refused connection's permit went with it: take another.
                                permit = tokio::select! {
                                    p = admission.slots.clone().acquire_owned() => p.expect("semaphore never closed"),
                                    _ = stop.cancelled() => return None,
                                };
                            }
                        }
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(listener = %self.name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = stop.cancelled() => return None,
            }
        }
    }

    /// Serves until `stop` is cancelled, then waits up to `grace` for open connections to finish.
    pub async fn serve(
        self,
        intake: Arc<Intake>,
        limits: Limits,
        stop: CancellationToken,
        grace: Duration,
    ) {
        let builder = http_builder(&limits);
        let graceful = GracefulShutdown::new();
        let admission = Admission::new(&self.name, &limits);
        let open = METRICS.open_connections.with_label_values(&[&self.name]);
        let listener_name: Arc<str> = self.name.as_str().into();
        if let Some(tls) = &self.tls {
            watch_tls(tls.clone(), self.name.clone(), stop.clone());
        }
        while let Some((permit, stream, peer)) = self.accept(&admission, &stop).await {
            let intake = intake.clone();
            let origin = crate::intake::refusals::Origin {
                listener: listener_name.clone(),
                peer,
                key_header: self.key_header.clone(),
                client: None,
            };
            if let Some((protocol, tenant)) = &self.stream {
                let conn = StreamConn {
                    protocol: *protocol,
                    tenant: tenant.clone(),
                    tls: self.tls.as_ref().map(|t| t.acceptor()),
                    stop: stop.clone(),
                    limits: &limits,
                };
                conn.spawn(intake, stream, origin, open.clone(), permit);
                continue;
            }
            let activity = Activity::new();
            let requests = activity.clone();
            // Made once the origin is known whole (after TLS: the client's certificate).
            let service = move |origin: crate::intake::refusals::Origin| {
                service_fn(move |req| {
                    let in_flight = requests.begin();
                    let answer = intake.clone().handle(req, origin.clone());
                    async move {
                        let r = answer.await;
                        drop(in_flight);
                        r
                    }
                })
            };
            let (idle, header) = (limits.idle_timeout.0, limits.header_read_timeout.0);
            let (open, name) = (open.clone(), self.name.clone());
            open.inc();
            match &self.tls {
                None => {
                    let io = TokioIo::new(ConnTimers::new(stream, activity, idle, header));
                    let conn =
                        graceful.watch(builder.serve_connection(io, service(origin)).into_owned());
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(listener = %name, %peer, error = %e, "connection ended with an error");
                        }
                        open.dec();
                        drop(permit);
                    });
                }
                Some(tls) => {
                    // Handshake in the connection's task; watched for shutdown once HTTP starts.
                    let (acceptor, builder) = (tls.acceptor(), builder.clone());
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        // The header timeout bounds the handshake too.
                        match handshake(acceptor, stream, header).await {
                            Ok(tls) => {
                                let mut origin = origin;
                                origin.client = tls::client_identity(tls.get_ref().1);
                                let io = TokioIo::new(ConnTimers::new(tls, activity, idle, header));
                                let svc = service(origin);
                                let conn =
                                    watcher.watch(builder.serve_connection(io, svc).into_owned());
                                if let Err(e) = conn.await {
                                    tracing::debug!(listener = %name, %peer, error = %e, "connection ended with an error");
                                }
                            }
                            Err(e) => handshake_failed(&name, peer, &e),
                        }
                        open.dec();
                        drop(permit);
                    });
                }
            }
        }
        drop(self.tcp);
        if tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(listener = %self.name, "connections still open after the shutdown grace period; closing them");
        }
    }
}

/// What a listener's connections take a place in: its `max_connections`, and
/// their IP's share.
struct Admission {
    slots: Arc<Semaphore>,
    per_ip: Arc<per_ip::PerIp>,
    refused: prometheus::IntCounter,
}

impl Admission {
    fn new(listener: &str, limits: &Limits) -> Admission {
        Admission {
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            per_ip: per_ip::PerIp::new(limits.max_connections_per_ip),
            refused: METRICS
                .refused_connections
                .with_label_values(&[listener, "per_ip_limit"]),
        }
    }
}

/// Polls the listener's TLS files every [`crate::watch::WATCH_EVERY`] and
/// reloads them when they change, until `stop`.
fn watch_tls(tls: Arc<tls::ServerTls>, name: String, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(crate::watch::WATCH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stop.cancelled() => return,
            }
            let (tls, name) = (tls.clone(), name.clone());
            let _ = tokio::task::spawn_blocking(move || tls.reload_if_changed(&name)).await;
        }
    });
}

/// Whose events a stream listener's connections carry (the config checked one is named).
fn stream_tenant(cfg: &ListenerConfig) -> Option<StreamTenant> {
    if !cfg.shared_keys.is_empty() {
        let keys = cfg
            .shared_keys
            .iter()
            .map(|k| (k.key.expose().to_string(), k.tenant.clone()));
        let hostname = cfg.self_hostname.clone().unwrap_or_else(|| "weir".into());
        return Some(StreamTenant::SharedKeys(Arc::new(SharedKeys::new(
            hostname, keys,
        ))));
    }
    cfg.tenant.clone().map(StreamTenant::Named)
}

fn stream_protocol(p: ListenerProtocol) -> Option<StreamProtocol> {
    match p {
        ListenerProtocol::Http | ListenerProtocol::Https => None,
        ListenerProtocol::FluentForward => Some(StreamProtocol::FluentForward),
        ListenerProtocol::Syslog => Some(StreamProtocol::Syslog),
    }
}

/// One connection of a `fluent_forward` or `syslog` listener: no hyper, the
/// protocol's own task (after the TLS handshake, when the listener has TLS).
struct StreamConn<'a> {
    protocol: StreamProtocol,
    tenant: StreamTenant,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
    limits: &'a Limits,
}

impl StreamConn<'_> {
    fn spawn(
        self,
        intake: Arc<Intake>,
        stream: TcpStream,
        origin: crate::intake::refusals::Origin,
        open: prometheus::IntGauge,
        permit: per_ip::Slot,
    ) {
        let (idle, handshake_timeout) = (
            self.limits.idle_timeout.0,
            self.limits.header_read_timeout.0,
        );
        let (protocol, tenant, stop) = (self.protocol, self.tenant, self.stop);
        let timers = (handshake_timeout, idle);
        open.inc();
        tokio::spawn(async move {
            match self.tls {
                None => {
                    intake
                        .stream(protocol, &tenant, stream, origin, stop, timers)
                        .await
                }
                Some(acceptor) => match handshake(acceptor, stream, handshake_timeout).await {
                    Ok(s) => {
                        intake
                            .stream(protocol, &tenant, s, origin, stop, timers)
                            .await
                    }
                    Err(e) => handshake_failed(&origin.listener, origin.peer, &e),
                },
            }
            open.dec();
            drop(permit);
        });
    }
}

/// HTTP/1.1 and HTTP/2 as every listener serves them.
fn http_builder(limits: &Limits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Its timer also runs between keep-alive requests; ConnTimers has ours.
        .header_read_timeout(None)
        .keep_alive(true)
        // Headers past either limit: 431. (The buffer also bounds each body read.)
        .max_buf_size(limits.max_header_bytes.as_usize())
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes.0).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.max_concurrent_streams)
        // Pings find dead peers; they do not keep a connection from being idle.
        .keep_alive_interval(Some(Duration::from_secs(30).min(limits.idle_timeout.0 / 2)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// A TLS handshake that failed or timed out: counted, and logged at debug
/// (a scanner's probes are not worth more).
fn handshake_failed(listener: &str, peer: SocketAddr, e: &ListenError) {
    METRICS
        .tls_handshake_failures
        .with_label_values(&[listener])
        .inc();
    tracing::debug!(listener, %peer, error = %e, "TLS handshake failed");
}

async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    timeout: Duration,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, ListenError> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ListenError::HandshakeTimeout(timeout)),
    }
}
