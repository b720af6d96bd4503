//! The events of a route's batch, for the backends that reshape them. A route
//! carries NDJSON that Weir wrote itself (Event::write_json), so a line is
//! read directly, without the intake's decoder or its limits: `heads` borrows
//! the few fields a wire format needs and keeps the line as written for the
//! document; `events` (OTLP, which maps every attribute) reads whole events.
//! A line not of that shape travels as the message of an event marked
//! `weir.undecodable_line`, so that delivery never panics and nothing is lost.
use crate::event::{split_tags, Event};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// What a wire format needs of one event line.
pub struct Line<'a> {
    /// The event's JSON, as written.
    pub json: Cow<'a, str>,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    pub host: Option<Cow<'a, str>>,
    pub service: Option<Cow<'a, str>>,
    pub source: Option<Cow<'a, str>>,
    pub status: Option<Cow<'a, str>>,
}

/// The reserved fields of a line, in Event's JSON names; the rest is skipped unread.
#[derive(Deserialize)]
struct Head<'a> {
    /// Read only to check its type (text), as for `ddtags`.
    #[serde(borrow, default, rename = "message")]
    _message: Option<Cow<'a, str>>,
    #[serde(default)]
    timestamp: i64,
    #[serde(borrow, default, rename = "hostname")]
    host: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    service: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "ddsource")]
    source: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "ddtags")]
    _ddtags: Option<Cow<'a, str>>,
}

fn split(ndjson: &[u8]) -> impl Iterator<Item = &[u8]> {
    ndjson.split(|&b| b == b'\n').filter(|l| !l.is_empty())
}

/// The lines of an NDJSON batch, each with its reserved fields.
pub fn heads(ndjson: &[u8]) -> Vec<Line<'_>> {
    split(ndjson)
        .map(|l| {
            let head = std::str::from_utf8(l)
                .ok()
                .and_then(|json| Some((json, serde_json::from_str::<Head>(json).ok()?)));
            match head {
                Some((json, h)) => Line {
                    json: Cow::Borrowed(json),
                    timestamp: h.timestamp,
                    host: h.host,
                    service: h.service,
                    source: h.source,
                    status: h.status,
                },
                None => Line {
                    json: Cow::Owned(serde_json::to_string(&undecodable(l)).unwrap()),
                    timestamp: 0,
                    host: None,
                    service: None,
                    source: None,
                    status: None,
                },
            }
        })
        .collect()
}

/// The events of an NDJSON batch.
pub fn events(ndjson: &[u8]) -> Vec<Event> {
    split(ndjson)
        .map(|l| event(l).unwrap_or_else(|| undecodable(l)))
        .collect()
}

/// One line as the event it was written from; none when it is not of that shape.
fn event(line: &[u8]) -> Option<Event> {
    let mut m: Map<String, Value> = serde_json::from_slice(line).ok()?;
    let mut text = |k: &str| match m.remove(k) {
        None => Some(None),
        Some(Value::String(s)) => Some(Some(s)),
        Some(_) => None,
    };
    let message = text("message")?.unwrap_or_default();
    let status = text("status")?;
    let host = text("hostname")?;
    let service = text("service")?;
    let source = text("ddsource")?;
    let tags = text("ddtags")?.map_or_else(Vec::new, |t| split_tags(&t).collect());
    let timestamp = match m.remove("timestamp") {
        None => 0,
        Some(v) => v.as_i64()?,
    };
    Some(Event {
        timestamp,
        message,
        host,
        service,
        source,
        status,
        tags,
        attributes: m,
    })
}

fn undecodable(line: &[u8]) -> Event {
    tracing::error!("an event's own JSON did not decode; sent as text");
    let mut ev = Event::from_message(String::from_utf8_lossy(line).into_owned(), 0);
    ev.mark("undecodable_line", Value::Bool(true));
    ev
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Two events: one with every field, one with a message only (earlier).
    pub fn sample() -> Vec<Event> {
        let mut a = Event::from_message("GET / 200".into(), 1_700_000_000_123);
        a.host = Some("web-1".into());
        a.service = Some("nginx".into());
        a.status = Some("warn".into());
        a.tags = vec!["env:prod".into()];
        a.attributes.insert(
            "http".into(),
            serde_json::json!({"status_code": 200, "ok": true}),
        );
        let b = Event::from_message("later".into(), 1_700_000_000_000);
        vec![a, b]
    }

    /// Events as a route carries them.
    pub fn ndjson(events: &[Event]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in events {
            e.write_json(&mut out);
            out.push(b'\n');
        }
        out
    }

    #[test]
    fn a_line_that_does_not_decode_travels_as_text_instead_of_panicking() {
        let evs = events(b"{\"message\":\"ok\"}\n{\"ddtags\":5}\n");
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].message, "ok");
        assert_eq!(evs[1].message, "{\"ddtags\":5}");
        assert_eq!(evs[1].attributes["weir"]["undecodable_line"], true);
        let heads = heads(b"{\"message\":\"ok\",\"hostname\":\"h\"}\n{\"ddtags\":5}\n");
        assert_eq!(heads[0].host.as_deref(), Some("h"));
        let v: Value = serde_json::from_str(&heads[1].json).unwrap();
        assert_eq!(v["message"], "{\"ddtags\":5}");
        assert_eq!(v["weir"]["undecodable_line"], true);
    }

    #[test]
    fn an_event_reads_back_as_written() {
        let mut e = Event::from_message("GET / 200".into(), 1_700_000_000_123);
        e.host = Some("web-1".into());
        e.status = Some("warn".into());
        e.tags = vec!["env:prod".into(), "team:a".into()];
        e.attributes
            .insert("http".into(), serde_json::json!({"status_code": 200}));
        let mut line = Vec::new();
        e.write_json(&mut line);
        line.push(b'\n');
        assert_eq!(events(&line), vec![e]);
    }
}
