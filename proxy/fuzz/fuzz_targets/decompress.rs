//! The decompression HTTP intake does (`intake::body::decompress`), within a
//! small limit: the output is never over it. Selector variant 0: identity,
//! 1: gzip, 2: deflate (zlib or raw), 3: zstd; bit 7 a limit of 100 bytes
//! rather than 64 KiB.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weir::intake::body::{decompress, Encoding};
use weir_fuzz::Input;

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::new(data) else {
        return;
    };
    let encoding = match input.variant(4) {
        0 => Encoding::Identity,
        1 => Encoding::Gzip,
        2 => Encoding::Deflate,
        _ => Encoding::Zstd,
    };
    let limit = if input.selector & 0x80 != 0 {
        100
    } else {
        64 * 1024
    };
    let body = bytes::Bytes::copy_from_slice(input.payload);
    if let Ok(plain) = decompress(body, encoding, limit) {
        assert!(
            plain.len() <= limit,
            "{} bytes out, the limit is {limit}",
            plain.len()
        );
    }
});
