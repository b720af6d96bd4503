//! Payload encodings and decompression within a limit, for every protocol
//! (HTTP's Content-Encoding today; a TCP protocol's compressed chunks the same
//! way). Decompression streams and stops at the limit, so a zip bomb costs at
//! most `max_decompressed_bytes` of memory.
use super::Refusal;
use bytes::Bytes;
use std::io::Read;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Deflate,
    Zstd,
}

impl Encoding {
    /// From a Content-Encoding header value (absent means identity).
    pub fn parse(header: Option<&str>) -> Result<Encoding, Refusal> {
        let Some(v) = header.map(|v| v.trim().to_ascii_lowercase()) else {
            return Ok(Encoding::Identity);
        };
        match v.as_str() {
            "" | "identity" => Ok(Encoding::Identity),
            "gzip" | "x-gzip" => Ok(Encoding::Gzip),
            "deflate" => Ok(Encoding::Deflate),
            "zstd" => Ok(Encoding::Zstd),
            other => Err(Refusal::UnsupportedEncoding(other.to_string())),
        }
    }
}

/// Decompresses `body`, refusing with 413 once the output passes `limit` bytes.
pub fn decompress(body: Bytes, encoding: Encoding, limit: usize) -> Result<Bytes, Refusal> {
    let body = match encoding {
        Encoding::Identity if body.len() > limit => return Err(too_large(limit)),
        Encoding::Identity => return Ok(body),
        _ => &body[..],
    };
    match encoding {
        Encoding::Identity => unreachable!(),
        Encoding::Gzip => read_limited(
            flate2::read::MultiGzDecoder::new(body),
            body.len(),
            limit,
            "gzip",
        ),
        Encoding::Deflate => {
            // HTTP's "deflate" is zlib-wrapped (RFC 9110), but some clients send raw deflate: the zlib header tells.
            let zlib = body.len() >= 2
                && (body[0] & 0x0f) == 8
                && (u16::from(body[0]) << 8 | u16::from(body[1])) % 31 == 0;
            if zlib {
                read_limited(
                    flate2::read::ZlibDecoder::new(body),
                    body.len(),
                    limit,
                    "deflate",
                )
            } else {
                read_limited(
                    flate2::read::DeflateDecoder::new(body),
                    body.len(),
                    limit,
                    "deflate",
                )
            }
        }
        Encoding::Zstd => {
            let dec =
                zstd::stream::read::Decoder::with_buffer(body).map_err(|e| corrupt("zstd", e))?;
            read_limited(dec, body.len(), limit, "zstd")
        }
    }
}

fn read_limited(
    reader: impl Read,
    compressed_len: usize,
    limit: usize,
    what: &'static str,
) -> Result<Bytes, Refusal> {
    // Logs compress about 5-10x: start near the likely size instead of doubling up to it.
    let mut out = Vec::with_capacity(compressed_len.saturating_mul(8).min(limit + 1));
    // One byte past the limit tells "exactly at the limit" from "over it".
    let n = reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| corrupt(what, e))?;
    if n > limit {
        return Err(too_large(limit));
    }
    Ok(Bytes::from(out))
}

fn too_large(max: usize) -> Refusal {
    Refusal::DecompressedTooLarge { max }
}

fn corrupt(codec: &'static str, e: impl std::fmt::Display) -> Refusal {
    Refusal::BadEncoding {
        codec,
        error: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn every_codec_round_trips() {
        let data = b"[{\"message\":\"hello\"}]".repeat(50);
        assert_eq!(
            decompress(gzip(&data).into(), Encoding::Gzip, 1 << 20).unwrap(),
            &data[..]
        );
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&data).unwrap();
        assert_eq!(
            decompress(z.finish().unwrap().into(), Encoding::Deflate, 1 << 20).unwrap(),
            &data[..]
        );
        let mut raw =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(&data).unwrap();
        assert_eq!(
            decompress(raw.finish().unwrap().into(), Encoding::Deflate, 1 << 20).unwrap(),
            &data[..]
        );
        let zs = zstd::bulk::compress(&data, 3).unwrap();
        assert_eq!(
            decompress(zs.into(), Encoding::Zstd, 1 << 20).unwrap(),
            &data[..]
        );
        assert_eq!(
            decompress(data.clone().into(), Encoding::Identity, 1 << 20).unwrap(),
            &data[..]
        );
    }

    #[test]
    fn concatenated_gzip_members_are_read() {
        let mut body = gzip(b"first ");
        body.extend(gzip(b"second"));
        assert_eq!(
            decompress(body.into(), Encoding::Gzip, 100).unwrap(),
            &b"first second"[..]
        );
    }

    #[test]
    fn limit_is_exact() {
        let data = vec![b'a'; 1000];
        assert!(decompress(gzip(&data).into(), Encoding::Gzip, 1000).is_ok());
        let e = decompress(gzip(&data).into(), Encoding::Gzip, 999).unwrap_err();
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let e = decompress(
            zstd::bulk::compress(&data, 1).unwrap().into(),
            Encoding::Zstd,
            999,
        )
        .unwrap_err();
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn garbage_is_a_bad_request() {
        let e = decompress(
            Bytes::from_static(b"definitely not gzip"),
            Encoding::Gzip,
            100,
        )
        .unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let e = decompress(Bytes::from_static(b"nor zstd"), Encoding::Zstd, 100).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            Encoding::parse(Some("br")).unwrap_err().status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }
}
