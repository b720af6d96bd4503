//! Weir's generic intake (`POST /v1/input`): one log per line, a JSON log
//! object or plain text; `ddtags` from the query on each.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weir::intake::http::HttpProtocol;
use weir::intake::input::Input as Generic;
use weir_fuzz::{decode, head, Input};

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::new(data) else {
        return;
    };
    let mut head = head("/v1/input?ddtags=env:fuzz", None);
    let body = Generic
        .body(&mut head)
        .expect("the generic intake takes any head");
    decode(body, &input);
});
