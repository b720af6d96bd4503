//! Syslog over TCP and TLS (RFC 6587, RFC 5425), as rsyslog's `omfwd` and
//! syslog-ng's `network()` and `syslog()` destinations send it: messages in
//! RFC 5424 or RFC 3164 form (see `parse`), octet-counted or one per line
//! (see `frame`), on a listener that names their tenant.
//!
//! Syslog has no acknowledgement: a sender counts a message delivered once
//! its TCP stack took it. So nothing read is dropped for want of room: the
//! whole messages read so far go in as one payload, and while the proxy has
//! no room for them or the tenant is over its rate limit (429 and 503
//! refusals), the connection stops reading and tries again: TCP's window
//! closes and the sender holds its messages (rsyslog and syslog-ng queue
//! them). Only a message that can never be taken (longer than
//! `limits.max_body_bytes`) is skipped, counted as refused.
mod frame;
pub mod parse;

use super::body::Encoding;
use super::core::{Core, Decode, Payload};
use super::refusals::Origin;
use super::Refusal;
use crate::event::{Event, Intake, PayloadLimits};
use crate::tenant::Tenant;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use frame::Frame;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

/// Room a frame takes beyond its message: a count of 9 digits and its space,
/// or the newline.
const FRAME_OVERHEAD: usize = 10;

/// What of an over-long message is still to be skipped.
enum Skip {
    Nothing,
    Bytes(usize),
    ToNewline,
}

/// Serves one connection until the sender closes it, stays idle past
/// `idle`, or the proxy stops.
pub async fn serve<S: AsyncRead + Unpin>(
    core: &Arc<Core>,
    mut stream: S,
    origin: &Origin,
    tenant: Arc<Tenant>,
    stop: CancellationToken,
    idle: Duration,
) {
    let max = core.max_payload();
    let max_message = max.saturating_sub(FRAME_OVERHEAD);
    let max_messages = core.max_events();
    let mut buf = BytesMut::with_capacity(256 << 10);
    let mut skip = Skip::Nothing;
    let mut closed = false;
    // When the message now partly read began to arrive.
    let mut partial_since = None;
    loop {
        match skip {
            Skip::Nothing => {}
            Skip::Bytes(n) => {
                let k = n.min(buf.len());
                buf.advance(k);
                skip = if k == n {
                    Skip::Nothing
                } else {
                    Skip::Bytes(n - k)
                };
            }
            Skip::ToNewline => match memchr::memchr(b'\n', &buf) {
                Some(nl) => {
                    buf.advance(nl + 1);
                    skip = Skip::Nothing;
                }
                None => buf.clear(),
            },
        }
        if matches!(skip, Skip::Nothing) {
            let (end, too_long) = whole_messages(&buf, max_message, max, max_messages);
            if end > 0 {
                let chunk = buf.split_to(end).freeze();
                if !deliver(core, origin, &tenant, chunk, &stop).await {
                    return;
                }
                continue;
            }
            if let Some(Frame::TooLong { header, len }) = too_long {
                let r = Refusal::BodyTooLarge { max: max_message };
                core.finish(
                    origin,
                    Intake::Syslog,
                    Some(&tenant),
                    Instant::now(),
                    &Err(r),
                );
                skip = match len {
                    Some(n) => Skip::Bytes(header + n),
                    None => Skip::ToNewline,
                };
                continue;
            }
        }
        if closed {
            return;
        }
        if buf.is_empty() {
            partial_since = None;
        } else {
            partial_since.get_or_insert_with(Instant::now);
        }
        let (wait, for_message) = core.stream_read_wait(idle, partial_since);
        buf.reserve(64 << 10);
        let read = tokio::select! {
            r = tokio::time::timeout(wait, stream.read_buf(&mut buf)) => r,
            _ = stop.cancelled() => return,
        };
        if read.is_err() && for_message {
            // What came of the message is taken (as a last line would be); the connection ends.
            let r = Refusal::BodyTimeout;
            core.finish(
                origin,
                Intake::Syslog,
                Some(&tenant),
                Instant::now(),
                &Err(r),
            );
        }
        match read {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => {
                // A last line the sender closed without its newline still counts.
                closed = true;
                if !buf.is_empty() && matches!(skip, Skip::Nothing) {
                    buf.put_u8(b'\n');
                }
            }
            Ok(Ok(_)) => {}
        }
    }
}

/// How many bytes the whole messages at the start of `buf` take, at most
/// `max_bytes` of them (at least one) and `max_messages`; and the
/// over-long message that stopped them, if one did.
fn whole_messages(
    buf: &[u8],
    max_message: usize,
    max_bytes: usize,
    max_messages: usize,
) -> (usize, Option<Frame>) {
    let (mut end, mut count) = (0, 0);
    while count < max_messages {
        match frame::next(&buf[end..], max_message) {
            Frame::Whole { next, .. } => {
                if end > 0 && end + next > max_bytes {
                    break;
                }
                end += next;
                count += 1;
            }
            Frame::Partial => break,
            too_long @ Frame::TooLong { .. } => return (end, Some(too_long)),
        }
    }
    (end, None)
}

/// Takes `chunk`, trying again while the refusal says to wait (no room, a
/// rate limit): the sender is held back meanwhile. Other refusals are
/// counted and the messages skipped. False once the proxy stops.
async fn deliver(
    core: &Arc<Core>,
    origin: &Origin,
    tenant: &Arc<Tenant>,
    chunk: Bytes,
    stop: &CancellationToken,
) -> bool {
    loop {
        let started = Instant::now();
        let result = take(core, tenant, chunk.clone()).await;
        core.finish(origin, Intake::Syslog, Some(tenant), started, &result);
        let Err(r) = result else { return true };
        let Some(wait) = held_back(&r) else {
            return true;
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return false,
        }
    }
}

/// How long to hold the sender back before trying a refused chunk again;
/// `None`: it cannot be taken.
fn held_back(r: &Refusal) -> Option<Duration> {
    let status = r.status();
    if status != http::StatusCode::TOO_MANY_REQUESTS
        && status != http::StatusCode::SERVICE_UNAVAILABLE
    {
        return None;
    }
    let secs = r.retry_after().unwrap_or(1);
    Some(Duration::from_secs(secs).clamp(Duration::from_millis(100), Duration::from_secs(1)))
}

async fn take(core: &Arc<Core>, tenant: &Arc<Tenant>, chunk: Bytes) -> Result<(), Refusal> {
    let reservation = core.reserve_payload(Some(chunk.len())).await?;
    let payload = Payload {
        bytes: chunk,
        encoding: Encoding::Identity,
        reservation,
    };
    core.take(Intake::Syslog, tenant.clone(), payload, SyslogBody)
        .await
}

/// The decoder of a run of whole syslog frames.
pub struct SyslogBody;

impl Decode for SyslogBody {
    fn decode(
        self,
        payload: &[u8],
        limits: PayloadLimits,
        admit: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Vec<Event>, Refusal> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < payload.len() {
            let message = match frame::next(&payload[at..], usize::MAX) {
                Frame::Whole { start, end, next } => {
                    let m = &payload[at + start..at + end];
                    at += next;
                    m
                }
                // A last message without its newline.
                _ => &payload[std::mem::replace(&mut at, payload.len())..],
            };
            if message.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            if out.len() == limits.max_events {
                return Err(Refusal::TooManyEvents {
                    max: limits.max_events,
                });
            }
            if !admit(out.len()) {
                return Err(Refusal::Busy);
            }
            let mut ev = parse::event(message, limits.received_at_ms);
            ev.limit_message(limits.max_log_bytes);
            out.push(ev);
        }
        Ok(out)
    }
}
