//! Syslog: a run of frames (octet-counted or newline-ended), each RFC 5424 or
//! RFC 3164.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weir::intake::syslog::SyslogBody;
use weir_fuzz::{decode, Input};

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::new(data) else {
        return;
    };
    decode(SyslogBody, &input);
});
