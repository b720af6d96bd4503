//! The Datadog logs intake (`POST /api/v2/logs`): a JSON array of log objects
//! (or one object), or `text/plain` lines; `ddtags` from the query on each.
//! Selector variant 0: JSON, 1: text/plain.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weir::intake::datadog::Datadog;
use weir::intake::http::HttpProtocol;
use weir_fuzz::{decode, head, Input};

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::new(data) else {
        return;
    };
    let content_type = match input.variant(2) {
        0 => "application/json",
        _ => "text/plain",
    };
    let mut head = head("/api/v2/logs?ddtags=env:fuzz,team", Some(content_type));
    let body = Datadog
        .body(&mut head)
        .expect("the Datadog intake takes any head");
    decode(body, &input);
});
