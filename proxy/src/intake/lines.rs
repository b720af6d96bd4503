//! Line-delimited payloads: one event per line, as plain text or (where the
//! protocol takes them) a JSON log object. Used by the Datadog intake's
//! `text/plain` form and by `/v1/input`.
use super::Refusal;
use crate::event::{decode_entry, Event, PayloadLimits};

/// One event per line: raw text, or, with `json_objects`, a JSON object where
/// a line holds one (a line that only looks like one is kept as text).
pub fn decode_lines(
    body: &[u8],
    limits: PayloadLimits,
    json_objects: bool,
    admit: &mut dyn FnMut(usize) -> bool,
) -> Result<Vec<Event>, Refusal> {
    let mut events = Vec::new();
    for line in body.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if events.len() == limits.max_events {
            return Err(Refusal::TooManyEvents {
                max: limits.max_events,
            });
        }
        if !admit(events.len()) {
            return Err(Refusal::Busy);
        }
        let trimmed = line.trim_ascii_start();
        if json_objects && trimmed.first() == Some(&b'{') {
            if let Ok(ev) = decode_entry(line, limits) {
                events.push(ev);
                continue;
            }
            // Not valid JSON after all: kept as the text it is, nothing lost.
        }
        let mut ev = Event::from_message(
            String::from_utf8_lossy(line).into_owned(),
            limits.received_at_ms,
        );
        ev.limit_message(limits.max_log_bytes);
        events.push(ev);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn limits() -> PayloadLimits {
        PayloadLimits {
            max_events: 3,
            max_log_bytes: 10,
            received_at_ms: 42,
        }
    }

    #[test]
    fn lines_and_generic_ndjson() {
        let body = b"plain one\r\n\n{\"message\":\"json\",\"service\":\"s\"}\n{not json\n";
        let evs = decode_lines(body, limits(), true, &mut |_| true).unwrap();
        assert_eq!(evs.len(), 3);
        assert_eq!(evs[0].message, "plain one");
        assert_eq!(evs[1].message, "json");
        assert_eq!(evs[1].service.as_deref(), Some("s"));
        assert_eq!(evs[2].message, "{not json");
        // The Datadog text/plain intake takes JSON-looking lines as text.
        let evs = decode_lines(b"{\"message\":\"x\"}", limits(), false, &mut |_| true).unwrap();
        assert_eq!(evs[0].message, "{\"message\"");
        assert!(evs[0].is_truncated());
    }

    #[test]
    fn line_count_is_limited() {
        let r = decode_lines(b"a\nb\nc\nd\n", limits(), false, &mut |_| true).unwrap_err();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
