//! What the fuzz targets share: the limits a payload is decoded under, request
//! heads for the HTTP protocols' decoders, the checks every decoded payload
//! must pass, and the fixed events the query and plugin-result targets work on.
//!
//! A decoder's input is one selector byte, then the payload. The selector's bit
//! 7 picks tight limits (3 events, 5 bytes a log: the refusal and truncation
//! paths, multi-byte characters cut at 5 bytes) over the ordinary ones (10,000
//! events, 64 KiB a log); its low bits pick the variant where a decoder has
//! several (a content type, an endpoint, an encoding). The `query` and `config`
//! targets take their text whole; `plugin_result` takes a selector byte too
//! (the fields the plugin asked for). A target never panics on any input: a
//! refusal (`Err`) is a fine outcome.
use serde_json::json;
use weir::event::{Event, PayloadLimits};
use weir::intake::Decode;

pub const MAX_EVENTS: usize = 10_000;
pub const MAX_LOG_BYTES: usize = 64 * 1024;
/// The arrival time every decoded event without its own gets.
pub const RECEIVED_AT_MS: i64 = 1_700_000_000_000;

/// One fuzz input: its selector byte and the payload after it (`None` when empty).
pub struct Input<'a> {
    pub selector: u8,
    pub payload: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Option<Input<'a>> {
        let (&selector, payload) = data.split_first()?;
        Some(Input { selector, payload })
    }

    /// The variant among `n`, from the selector's low bits.
    pub fn variant(&self, n: u8) -> u8 {
        (self.selector & 0x7f) % n
    }

    /// The limits this input is decoded under: tight ones when bit 7 is set.
    pub fn limits(&self) -> PayloadLimits {
        if self.selector & 0x80 != 0 {
            PayloadLimits {
                max_events: 3,
                max_log_bytes: 5,
                received_at_ms: RECEIVED_AT_MS,
            }
        } else {
            PayloadLimits {
                max_events: MAX_EVENTS,
                max_log_bytes: MAX_LOG_BYTES,
                received_at_ms: RECEIVED_AT_MS,
            }
        }
    }
}

/// The head of a request to `uri` (path and query), with a Content-Type if given.
pub fn head(uri: &str, content_type: Option<&str>) -> http::request::Parts {
    let mut b = http::Request::builder().method(http::Method::POST).uri(uri);
    if let Some(ct) = content_type {
        b = b.header(http::header::CONTENT_TYPE, ct);
    }
    b.body(()).expect("a valid request head").into_parts().0
}

/// Decodes `input`'s payload with `decoder` (every entry admitted) and checks
/// what a decoder promises the intake core: no more events than `max_events`,
/// `admit` asked for every event kept, no message over `max_log_bytes` (cut,
/// marked truncated), and every event serializes (what the stages do next).
pub fn decode<D: Decode>(decoder: D, input: &Input) {
    let limits = input.limits();
    // One more than the highest index `admit` was asked about.
    let mut asked = 0usize;
    let mut admit = |i: usize| {
        asked = asked.max(i + 1);
        true
    };
    let Ok(events) = decoder.decode(input.payload, limits, &mut admit) else {
        return;
    };
    assert!(
        events.len() <= limits.max_events,
        "{} events decoded, the limit is {}",
        events.len(),
        limits.max_events
    );
    assert!(
        events.len() <= asked,
        "{} events kept, admit asked for {asked}",
        events.len()
    );
    let mut json = Vec::new();
    for (i, ev) in events.iter().enumerate() {
        assert!(
            ev.message.len() <= limits.max_log_bytes,
            "event {i}: a message of {} bytes, over max_log_bytes {}",
            ev.message.len(),
            limits.max_log_bytes
        );
        json.clear();
        ev.write_json(&mut json);
    }
}

/// A small fixed batch: a busy event (every reserved field, tags, nested
/// attributes of each JSON type, an array of objects, a key with dots), one with
/// only a message, and one with no status, a bare tag, and non-ASCII text.
pub fn events() -> Vec<Event> {
    let busy = json!({
        "http": { "status_code": 503, "method": "GET", "url": "/api/v1/users",
                  "url_details": { "path": "/health" } },
        "duration": 250,
        "ratio": 0.5,
        "code": "600",
        "big": 12345678901234567890u64,
        "delta": -5,
        "user": { "name": "Alice", "roles": ["admin", "dev"] },
        "items": [{ "id": 1 }, { "id": 7 }],
        "ok": false,
        "nothing": null,
        "db.statement": "SELECT 1",
        "empty": "",
    });
    let other = json!({ "Ünïcode": "Grüße", "n": [1, 2.5, "3"], "weir": "theirs" });
    vec![
        Event {
            timestamp: RECEIVED_AT_MS,
            message: "GET /api/v1/users failed: Connection refused (ConnectTimeoutError) \
                      user=AliceMartin after 250ms [ERROR] retrying connection"
                .into(),
            host: Some("web-1".into()),
            service: Some("Checkout-API".into()),
            source: Some("nginx".into()),
            status: Some("error".into()),
            tags: vec![
                "env:prod".into(),
                "team:Payments".into(),
                "canary".into(),
                "region:eu:west".into(),
            ],
            attributes: busy.as_object().expect("an object").clone(),
        },
        Event::from_message("hello world".into(), RECEIVED_AT_MS),
        Event {
            timestamp: -1,
            message: "ŞĨŦ straße ǅ — 💥 timeout".into(),
            host: Some("Ωmega".into()),
            service: Some("web".into()),
            tags: vec!["bare".into(), "env:".into(), ":x".into()],
            attributes: other.as_object().expect("an object").clone(),
            ..Default::default()
        },
    ]
}
