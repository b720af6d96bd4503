//! What the fuzz targets share: the limits a payload is decoded under, request
//! heads for the HTTP protocols' decoders, and the checks every decoded payload
//! must pass.
//!
//! An input is one selector byte, then the payload. The selector's bit 7 picks
//! tight limits (3 events, 5 bytes a log: the refusal and truncation paths,
//! multi-byte characters cut at 5 bytes) over the ordinary ones (10,000 events,
//! 64 KiB a log); its low bits pick the variant where a decoder has several (a
//! content type, an endpoint, an encoding). A target never panics on any input:
//! a refusal (`Err`) is a fine outcome.
use weir::event::PayloadLimits;
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
