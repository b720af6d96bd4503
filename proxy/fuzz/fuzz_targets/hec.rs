//! Splunk HEC: concatenated event objects (`/services/collector/event`) or
//! raw lines with the query's metadata (`/services/collector/raw`).
//! Selector variant 0: event, 1: raw.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weir::intake::hec::Hec;
use weir::intake::http::HttpProtocol;
use weir_fuzz::{decode, head, Input};

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::new(data) else {
        return;
    };
    let uri = match input.variant(2) {
        0 => "/services/collector/event",
        _ => "/services/collector/raw?host=h&source=s&sourcetype=st&index=i",
    };
    let mut head = head(uri, None);
    let body = Hec::default()
        .body(&mut head)
        .expect("the HEC intake takes any head");
    decode(body, &input);
});
