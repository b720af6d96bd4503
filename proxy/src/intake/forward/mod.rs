//! Fluentd's forward protocol (v1), as Fluent Bit's and Fluentd's `forward`
//! outputs and the fluent-logger libraries speak it: MessagePack over TCP (or
//! TLS), one message after another on a connection, each in one of four modes:
//! - Message: `[tag, time, record, option?]`;
//! - Forward: `[tag, [[time, record], ...], option?]`;
//! - PackedForward: `[tag, bin, option?]`, the bin holding `[time, record]`
//!   entries back to back;
//! - CompressedPackedForward: the same with `option.compressed: "gzip"`.
//!
//! `time` is seconds, or the EventTime extension (type 0: seconds and
//! nanoseconds). A message whose option carries a `chunk` id is answered
//! `{"ack": chunk}` once its events are in (per the buffer's ack mode); a
//! message refused (no room, a rate limit, a malformed message) gets no ack
//! and its connection is closed, so the sender sends it again. The listener
//! names the tenant, or its `shared_keys` do: then each connection starts
//! with the shared-key handshake (see `handshake`), and the key the sender
//! proves names its tenant.
//!
//! A record reads as a Datadog log object (`message`, `status`, `service`, ...
//! become the fields); Fluent Bit's `log` key is the message when there is
//! no `message`; the tag is kept as `fluent_tag`.
mod frame;
mod handshake;

pub use handshake::SharedKeys;

use super::body::Encoding;
use super::core::{Core, Decode, Payload};
use super::refusals::Origin;
use super::Refusal;
use crate::event::{hex, Event, Intake, PayloadLimits};
use crate::tenant::Tenant;
use bytes::{Bytes, BytesMut};
use rmpv::Value as Mp;
use serde_json::{Map, Value};
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Serves one connection of a listener with `shared_keys`: the handshake
/// first (within `handshake_timeout`), then the proved key's tenant's events.
pub async fn serve_shared<S: AsyncRead + AsyncWrite + Unpin>(
    core: &Arc<Core>,
    mut stream: S,
    origin: &Origin,
    keys: &SharedKeys,
    stop: CancellationToken,
    (handshake_timeout, idle): (Duration, Duration),
) {
    let refusal = match handshake::run(&mut stream, keys, handshake_timeout).await {
        Ok((tenant, rest)) => match core.tenant_named(&tenant) {
            Some(t) => return serve(core, stream, origin, t, stop, idle, rest).await,
            None => {
                tracing::error!(tenant, listener = %origin.listener, "a shared key names a tenant that does not exist");
                return;
            }
        },
        Err(handshake::Failure::KeyMismatch) => Refusal::UnknownKey,
        Err(handshake::Failure::Malformed(error)) => Refusal::InvalidPayload {
            format: "Fluent forward PING",
            error,
        },
        Err(handshake::Failure::Gone) => return,
    };
    core.finish(
        origin,
        Intake::Fluent,
        None,
        std::time::Instant::now(),
        &Err(refusal),
    );
}

/// Serves one connection until the sender closes it, stays idle past
/// `idle`, sends what is not a forward message, or the proxy stops; `buf`
/// holds what was read of it already.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    core: &Arc<Core>,
    mut stream: S,
    origin: &Origin,
    tenant: Arc<Tenant>,
    stop: CancellationToken,
    idle: Duration,
    mut buf: BytesMut,
) {
    let max = core.max_payload();
    buf.reserve(64 << 10);
    // When the message now partly read began to arrive.
    let mut partial_since = None;
    loop {
        // Every whole message already read, in order.
        loop {
            let framed = match frame(&buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    let r = Refusal::InvalidPayload {
                        format: "Fluent forward message",
                        error: e,
                    };
                    return refused(core, origin, &tenant, r);
                }
            };
            let message = buf.split_to(framed.len).freeze();
            let started = std::time::Instant::now();
            let result = take(core, &tenant, message).await;
            core.finish(origin, Intake::Fluent, Some(&tenant), started, &result);
            if result.is_err() {
                // No ack: the sender sends it again, on a new connection.
                return;
            }
            if let Some(chunk) = framed.chunk {
                if stream.write_all(&ack(&chunk)).await.is_err() {
                    return;
                }
            }
        }
        if buf.len() > max {
            return refused(core, origin, &tenant, Refusal::BodyTooLarge { max });
        }
        if buf.is_empty() {
            partial_since = None;
        } else {
            partial_since.get_or_insert_with(std::time::Instant::now);
        }
        let (wait, for_message) = core.stream_read_wait(idle, partial_since);
        let read = tokio::select! {
            r = tokio::time::timeout(wait, stream.read_buf(&mut buf)) => r,
            _ = stop.cancelled() => return,
        };
        match read {
            Err(_) if for_message => return refused(core, origin, &tenant, Refusal::BodyTimeout),
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(_)) => {}
        }
    }
}

/// Counts and logs a refusal that ends the connection (nothing was taken).
fn refused(core: &Core, origin: &Origin, tenant: &Tenant, r: Refusal) {
    core.finish(
        origin,
        Intake::Fluent,
        Some(tenant),
        std::time::Instant::now(),
        &Err(r),
    );
}

async fn take(core: &Arc<Core>, tenant: &Arc<Tenant>, message: Bytes) -> Result<(), Refusal> {
    let reservation = core.reserve_payload(Some(message.len())).await?;
    let payload = Payload {
        bytes: message,
        encoding: Encoding::Identity,
        reservation,
    };
    let body = ForwardBody {
        max_inflated: core.max_decompressed(),
    };
    core.take(Intake::Fluent, tenant.clone(), payload, body)
        .await
}

/// `{"ack": chunk}`, MessagePack.
fn ack(chunk: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunk.len() + 8);
    let v = Mp::Map(vec![(Mp::from("ack"), Mp::from(chunk))]);
    rmpv::encode::write_value(&mut out, &v).expect("writing to memory");
    out
}

/// One whole message at the start of a buffer: its length, and its chunk id.
struct Framed {
    len: usize,
    chunk: Option<String>,
}

/// The first whole message in `buf`; `None` when it is not all there yet.
fn frame(buf: &[u8]) -> Result<Option<Framed>, String> {
    Ok(frame::value_len(buf)?.map(|len| Framed {
        len,
        chunk: frame::chunk_of(&buf[..len]),
    }))
}

/// A message's option map: its last element, when it is a map after the tag and entries.
fn option(v: &Mp) -> Option<&Mp> {
    let a = v.as_array()?;
    let last = a.last()?;
    let has_option = match a.get(1) {
        // Message mode: [tag, time, record, option]
        Some(t) if is_time(t) => a.len() == 4,
        _ => a.len() == 3,
    };
    (has_option && last.is_map()).then_some(last)
}

fn field<'a>(map: &'a Mp, key: &str) -> Option<&'a Mp> {
    map.as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

fn is_time(v: &Mp) -> bool {
    v.is_u64() || v.is_i64() || matches!(v, Mp::Ext(0, _)) || v.is_f64()
}

/// Milliseconds since the epoch of a forward `time`.
fn time_ms(v: &Mp) -> Option<i64> {
    match v {
        Mp::Ext(0, b) if b.len() == 8 => {
            let secs = u32::from_be_bytes(b[0..4].try_into().ok()?) as i64;
            let nanos = u32::from_be_bytes(b[4..8].try_into().ok()?) as i64;
            Some(secs * 1000 + nanos / 1_000_000)
        }
        Mp::F64(f) => Some((f * 1000.0) as i64),
        other => other.as_i64().and_then(|s| s.checked_mul(1000)),
    }
}

/// The decoder of one forward message.
pub struct ForwardBody {
    /// How far gzip'd entries may inflate (`limits.max_decompressed_bytes`).
    pub max_inflated: usize,
}

impl Decode for ForwardBody {
    fn decode(
        self,
        payload: &[u8],
        limits: PayloadLimits,
        admit: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Vec<Event>, Refusal> {
        let bad = |error: String| Refusal::InvalidPayload {
            format: "Fluent forward message",
            error,
        };
        let v = rmpv::decode::read_value(&mut &payload[..]).map_err(|e| bad(e.to_string()))?;
        let a = v
            .as_array()
            .ok_or_else(|| bad("a message is an array: [tag, entries, option]".into()))?;
        let tag = a
            .first()
            .and_then(Mp::as_str)
            .ok_or_else(|| bad("a message starts with its tag, a string".into()))?;
        let second = a
            .get(1)
            .ok_or_else(|| bad("a message has entries".into()))?;
        let mut out = Vec::new();
        let mut push = |time: &Mp, record: &Mp| -> Result<(), Refusal> {
            if out.len() == limits.max_events {
                return Err(Refusal::TooManyEvents {
                    max: limits.max_events,
                });
            }
            if !admit(out.len()) {
                return Err(Refusal::Busy);
            }
            out.push(event(tag, time, record, limits).map_err(bad)?);
            Ok(())
        };
        match second {
            // Forward: [[time, record], ...]
            Mp::Array(entries) => {
                for e in entries {
                    let (t, r) =
                        entry(e).ok_or_else(|| bad("an entry is [time, record]".into()))?;
                    push(t, r)?;
                }
            }
            // PackedForward, compressed or not: entries back to back in a bin (or str).
            Mp::Binary(_) | Mp::String(_) => {
                let packed: &[u8] = match second {
                    Mp::Binary(b) => b,
                    Mp::String(s) => s.as_bytes(),
                    _ => unreachable!(),
                };
                let compressed = option(&v)
                    .and_then(|o| field(o, "compressed"))
                    .and_then(Mp::as_str);
                let inflated;
                let mut entries: &[u8] = match compressed {
                    None => packed,
                    Some("gzip") => {
                        let mut plain = Vec::new();
                        flate2::read::MultiGzDecoder::new(packed)
                            .take(self.max_inflated as u64 + 1)
                            .read_to_end(&mut plain)
                            .map_err(|e| bad(format!("the gzip'd entries do not inflate: {e}")))?;
                        if plain.len() > self.max_inflated {
                            return Err(Refusal::DecompressedTooLarge {
                                max: self.max_inflated,
                            });
                        }
                        inflated = plain;
                        &inflated
                    }
                    Some(other) => {
                        return Err(bad(format!("unknown compression {other:?}; use gzip")))
                    }
                };
                while !entries.is_empty() {
                    let e =
                        rmpv::decode::read_value(&mut entries).map_err(|e| bad(e.to_string()))?;
                    let (t, r) =
                        entry(&e).ok_or_else(|| bad("an entry is [time, record]".into()))?;
                    push(t, r)?;
                }
            }
            // Message: [tag, time, record, option?]
            time => {
                let record = a
                    .get(2)
                    .ok_or_else(|| bad("a message has a record".into()))?;
                push(time, record)?;
            }
        }
        Ok(out)
    }
}

fn entry(e: &Mp) -> Option<(&Mp, &Mp)> {
    match e.as_array()?.as_slice() {
        [t, r, ..] => Some((t, r)),
        _ => None,
    }
}

fn event(tag: &str, time: &Mp, record: &Mp, limits: PayloadLimits) -> Result<Event, String> {
    let ms = time_ms(time).ok_or("the time is neither seconds nor an EventTime")?;
    let Mp::Map(pairs) = record else {
        return Err("a record is a map".into());
    };
    let mut attributes = Map::new();
    for (k, v) in pairs {
        let key = match k {
            Mp::String(s) => s
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(s.as_bytes()).into_owned()),
            other => other.to_string(),
        };
        attributes.insert(key, json(v));
    }
    // Fluent Bit's tail and Docker logs put the line under `log`.
    if !attributes.contains_key("message") {
        if let Some(Value::String(line)) = attributes.remove("log") {
            attributes.insert("message".into(), Value::String(line));
        }
    }
    attributes
        .entry("fluent_tag")
        .or_insert_with(|| Value::String(tag.to_string()));
    let mut ev = Event::from_message(String::new(), ms);
    ev.attributes = attributes;
    ev.adopt_reserved_attributes();
    ev.limit_message(limits.max_log_bytes);
    Ok(ev)
}

/// A MessagePack value as JSON: bin as (lossy) text, ext as its bytes in hex.
fn json(v: &Mp) -> Value {
    match v {
        Mp::Nil => Value::Null,
        Mp::Boolean(b) => Value::Bool(*b),
        Mp::Integer(i) => i
            .as_i64()
            .map(Value::from)
            .or_else(|| i.as_u64().map(Value::from))
            .unwrap_or(Value::Null),
        Mp::F32(f) => {
            serde_json::Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number)
        }
        Mp::F64(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Mp::String(s) => Value::String(
            s.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(s.as_bytes()).into_owned()),
        ),
        Mp::Binary(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        Mp::Array(a) => Value::Array(a.iter().map(json).collect()),
        Mp::Map(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    (
                        k.as_str().map_or_else(|| k.to_string(), str::to_string),
                        json(v),
                    )
                })
                .collect(),
        ),
        Mp::Ext(_, b) => Value::String(hex(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: ForwardBody = ForwardBody {
        max_inflated: 1 << 20,
    };

    fn limits() -> PayloadLimits {
        PayloadLimits {
            max_events: 100,
            max_log_bytes: 1000,
            received_at_ms: 42,
        }
    }

    fn pack(v: &Mp) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).unwrap();
        out
    }

    fn record(msg: &str) -> Mp {
        Mp::Map(vec![
            (Mp::from("log"), Mp::from(msg)),
            (Mp::from("level"), Mp::from("warn")),
        ])
    }

    fn event_time(secs: u32, nanos: u32) -> Mp {
        let mut b = secs.to_be_bytes().to_vec();
        b.extend(nanos.to_be_bytes());
        Mp::Ext(0, b)
    }

    #[test]
    fn every_mode_decodes() {
        let message = Mp::Array(vec![
            Mp::from("app.web"),
            Mp::from(1_700_000_000u64),
            record("one"),
        ]);
        let forward = Mp::Array(vec![
            Mp::from("app.web"),
            Mp::Array(vec![
                Mp::Array(vec![event_time(1_700_000_000, 250_000_000), record("two")]),
                Mp::Array(vec![Mp::from(1_700_000_001u64), record("three")]),
            ]),
            Mp::Map(vec![(Mp::from("chunk"), Mp::from("c1"))]),
        ]);
        let mut packed = pack(&Mp::Array(vec![Mp::from(1u64), record("four")]));
        packed.extend(pack(&Mp::Array(vec![Mp::from(2u64), record("five")])));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &packed).unwrap();
        let compressed = Mp::Array(vec![
            Mp::from("app.web"),
            Mp::Binary(gz.finish().unwrap()),
            Mp::Map(vec![(Mp::from("compressed"), Mp::from("gzip"))]),
        ]);
        let packed = Mp::Array(vec![Mp::from("app.web"), Mp::Binary(packed)]);
        let all: Vec<Event> = [message, forward.clone(), packed, compressed]
            .iter()
            .flat_map(|m| BODY.decode(&pack(m), limits(), &mut |_| true).unwrap())
            .collect();
        let messages: Vec<&str> = all.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            messages,
            ["one", "two", "three", "four", "five", "four", "five"]
        );
        assert_eq!(all[0].timestamp, 1_700_000_000_000);
        assert_eq!(all[1].timestamp, 1_700_000_000_250);
        assert_eq!(all[0].attributes["fluent_tag"], "app.web");
        assert_eq!(all[0].attributes["level"], "warn");
        // The chunk id is found for the ack, and the framing finds the message's end.
        let bytes = pack(&forward);
        let f = frame(&bytes).unwrap().unwrap();
        assert_eq!((f.len, f.chunk.as_deref()), (bytes.len(), Some("c1")));
        assert!(frame(&bytes[..bytes.len() - 1]).unwrap().is_none());
        assert_eq!(
            rmpv::decode::read_value(&mut &ack("c1")[..]).unwrap()["ack"].as_str(),
            Some("c1")
        );
    }

    /// Found by the `forward` fuzz target: a time of i64::MAX seconds
    /// overflowed into milliseconds (a panic with overflow checks, a wrapped
    /// time without); refused as any unreadable time is.
    #[test]
    fn a_time_past_the_millisecond_range_is_refused() {
        let m = Mp::Array(vec![Mp::from("t"), Mp::from(i64::MAX), record("x")]);
        let r = BODY.decode(&pack(&m), limits(), &mut |_| true).unwrap_err();
        assert_eq!(r.status(), http::StatusCode::BAD_REQUEST, "{r}");
    }

    #[test]
    fn malformed_messages_are_refused() {
        for m in [
            Mp::from("just a string"),
            Mp::Array(vec![Mp::from(5u64), Mp::from(1u64), record("x")]),
            Mp::Array(vec![Mp::from("t"), Mp::from(1u64), Mp::from("not a map")]),
        ] {
            let r = BODY.decode(&pack(&m), limits(), &mut |_| true).unwrap_err();
            assert_eq!(r.status(), http::StatusCode::BAD_REQUEST, "{r}");
        }
    }
}
