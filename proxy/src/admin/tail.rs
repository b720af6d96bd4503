//! `GET /admin/tail?tenant=T[&query=Q][&rate=N]`: a live tail as a stream of
//! server-sent events (observe/tail.rs decides what goes in it). The answer
//! never ends by itself; the tail closes when the client goes away.
use super::control::Control;
use super::AdminBody;
use crate::intake::http::query_param;
use crate::observe::tail::{TailError, DEFAULT_RATE, KEEPALIVE, MAX_RATE};
use crate::pipeline::{RejectReason, Rejection};
use crate::rules::query::Query;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

fn bad(status: StatusCode, message: impl Into<String>) -> Rejection {
    Rejection::new(status, RejectReason::Admin, message)
}

/// Opens the tail the request asks for, or says why it cannot.
pub fn open(query: Option<&str>, control: &Control) -> Result<Response<AdminBody>, Rejection> {
    let tails = control
        .tails
        .as_ref()
        .ok_or_else(|| bad(StatusCode::NOT_FOUND, "live tail is not available here"))?;
    let tenant = query_param(query, "tenant")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            bad(
                StatusCode::BAD_REQUEST,
                "`tenant` is required: /admin/tail?tenant=NAME",
            )
        })?;
    let filter = match query_param(query, "query").filter(|q| !q.trim().is_empty()) {
        Some(q) => Some(Query::parse(&q).map_err(|e| {
            bad(
                StatusCode::BAD_REQUEST,
                format!("query {q:?}: {}", e.message),
            )
        })?),
        None => None,
    };
    let rate = match query_param(query, "rate") {
        None => DEFAULT_RATE,
        Some(r) => r
            .parse::<u32>()
            .ok()
            .filter(|r| (1..=MAX_RATE).contains(r))
            .ok_or_else(|| {
                bad(
                    StatusCode::BAD_REQUEST,
                    format!("rate {r:?}: events per second, from 1 to {MAX_RATE}"),
                )
            })?,
    };
    let tail = tails.open(&tenant, filter, rate).map_err(|e| match e {
        TailError::UnknownTenant(_) => bad(StatusCode::NOT_FOUND, e.to_string()),
        TailError::TooMany(_) => bad(StatusCode::TOO_MANY_REQUESTS, e.to_string()).retry_after(5),
    })?;
    tracing::info!(target: "weir::audit", tenant = %tenant, rate, "live tail opened");
    // The first message says the tail is open, so a client knows before any event matches.
    let hello = Bytes::from(format!(": tailing {tenant} at up to {rate} events/s\n\n"));
    let tick = tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    // `tail` lives in the stream's state: dropped with it (the client went away), it closes.
    let stream = futures::stream::unfold(
        (Some(hello), tail, tick),
        |(first, mut tail, mut tick)| async move {
            let message = match first {
                Some(hello) => hello,
                None => tokio::select! {
                    m = tail.messages.recv() => m?,
                    _ = tick.tick() => Bytes::from_static(b": keepalive\n\n"),
                },
            };
            Some((Ok(Frame::data(message)), (None, tail, tick)))
        },
    );
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}
