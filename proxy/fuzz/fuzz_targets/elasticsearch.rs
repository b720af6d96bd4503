//! Elasticsearch `_bulk`: NDJSON of action and document lines.
//! Selector variant 0: `/_bulk`, 1: `/{index}/_bulk` (a default index).
#![no_main]
use libfuzzer_sys::fuzz_target;
use weir::intake::elasticsearch::Elasticsearch;
use weir::intake::http::HttpProtocol;
use weir_fuzz::{decode, head, Input};

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::new(data) else {
        return;
    };
    let uri = match input.variant(2) {
        0 => "/_bulk",
        _ => "/logs-fuzz/_bulk",
    };
    let mut head = head(uri, None);
    let body = Elasticsearch
        .body(&mut head)
        .expect("the Elasticsearch intake takes any head");
    decode(body, &input);
});
