//! OTLP logs (`POST /v1/logs`): an `ExportLogsServiceRequest` in protobuf or
//! in OTLP's JSON. Selector variant 0: protobuf, 1: JSON.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weir::intake::otlp::{Form, OtlpBody};
use weir_fuzz::{decode, Input};

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::new(data) else {
        return;
    };
    let form = match input.variant(2) {
        0 => Form::Protobuf,
        _ => Form::Json,
    };
    decode(OtlpBody(form), &input);
});
