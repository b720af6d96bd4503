//! Fluent forward: one MessagePack message (Message, Forward or PackedForward,
//! gzip'd or not), as the stream's framing hands it to the decoder.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weir::intake::forward::ForwardBody;
use weir_fuzz::{decode, Input};

/// How far gzip'd entries may inflate: small, so the limit is reached.
const MAX_INFLATED: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::new(data) else {
        return;
    };
    decode(
        ForwardBody {
            max_inflated: MAX_INFLATED,
        },
        &input,
    );
});
