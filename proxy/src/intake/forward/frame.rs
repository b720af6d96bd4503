//! Where a forward message ends and which chunk id it carries, read from its
//! MessagePack markers without building the message: the connection task
//! frames every message, and its events are decoded once, on an intake
//! thread (building the whole value here as well cost as much as decoding).
use rmp::Marker;

/// The length of the MessagePack value at the start of `buf`; `None` while
/// it is not all there. Iterative: nesting depth costs no stack.
pub fn value_len(buf: &[u8]) -> Result<Option<usize>, String> {
    let mut pos = 0usize;
    // Values still to be skipped: 1, plus the elements of open arrays and maps.
    let mut pending: u64 = 1;
    while pending > 0 {
        let Some(&b) = buf.get(pos) else {
            return Ok(None);
        };
        pos += 1;
        pending -= 1;
        // Bytes after the marker: fixed, or a length of 1, 2 or 4 bytes, then that many.
        let (fixed, length_bytes, plus) = match Marker::from_u8(b) {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
                (0, 0, 0)
            }
            Marker::U8 | Marker::I8 => (1, 0, 0),
            Marker::U16 | Marker::I16 => (2, 0, 0),
            Marker::U32 | Marker::I32 | Marker::F32 => (4, 0, 0),
            Marker::U64 | Marker::I64 | Marker::F64 => (8, 0, 0),
            Marker::FixStr(n) => (usize::from(n), 0, 0),
            Marker::Str8 | Marker::Bin8 => (0, 1, 0),
            Marker::Str16 | Marker::Bin16 => (0, 2, 0),
            Marker::Str32 | Marker::Bin32 => (0, 4, 0),
            // An ext: its type byte, then its data.
            Marker::FixExt1 => (2, 0, 0),
            Marker::FixExt2 => (3, 0, 0),
            Marker::FixExt4 => (5, 0, 0),
            Marker::FixExt8 => (9, 0, 0),
            Marker::FixExt16 => (17, 0, 0),
            Marker::Ext8 => (0, 1, 1),
            Marker::Ext16 => (0, 2, 1),
            Marker::Ext32 => (0, 4, 1),
            Marker::FixArray(n) => {
                pending += u64::from(n);
                continue;
            }
            Marker::FixMap(n) => {
                pending += 2 * u64::from(n);
                continue;
            }
            m @ (Marker::Array16 | Marker::Array32 | Marker::Map16 | Marker::Map32) => {
                let width = if matches!(m, Marker::Array16 | Marker::Map16) {
                    2
                } else {
                    4
                };
                let Some(n) = read_len(buf, pos, width) else {
                    return Ok(None);
                };
                pos += width;
                let per = if matches!(m, Marker::Map16 | Marker::Map32) {
                    2
                } else {
                    1
                };
                pending += per * n as u64;
                continue;
            }
            Marker::Reserved => return Err("invalid MessagePack marker 0xc1".into()),
        };
        let data = if length_bytes == 0 {
            fixed
        } else {
            let Some(n) = read_len(buf, pos, length_bytes) else {
                return Ok(None);
            };
            pos += length_bytes;
            n + plus
        };
        pos = pos.saturating_add(data);
        if pos > buf.len() {
            return Ok(None);
        }
    }
    Ok(Some(pos))
}

/// A big-endian length of `width` bytes at `at`.
fn read_len(buf: &[u8], at: usize, width: usize) -> Option<usize> {
    let b = buf.get(at..at + width)?;
    Some(b.iter().fold(0usize, |n, &x| (n << 8) | usize::from(x)))
}

/// The `chunk` of a whole message's option map, if it has one:
/// `[tag, time, record, option]` (Message mode) or `[tag, entries, option]`.
pub fn chunk_of(message: &[u8]) -> Option<String> {
    let mut rest = message;
    let n = rmp::decode::read_array_len(&mut rest).ok()? as usize;
    if !(3..=4).contains(&n) {
        return None;
    }
    let mut second_is_time = false;
    for i in 0..n - 1 {
        if i == 1 {
            second_is_time = is_time(rest);
        }
        let len = value_len(rest).ok()??;
        rest = &rest[len..];
    }
    if (second_is_time && n != 4) || (!second_is_time && n != 3) {
        return None;
    }
    let option = rmpv::decode::read_value(&mut rest).ok()?;
    option
        .as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some("chunk"))
        .and_then(|(_, v)| v.as_str())
        .map(str::to_string)
}

/// Whether the value at the start of `b` is a forward time: an integer, a
/// float, or the EventTime extension (type 0).
fn is_time(b: &[u8]) -> bool {
    match b.first().map(|&m| Marker::from_u8(m)) {
        Some(
            Marker::FixPos(_)
            | Marker::FixNeg(_)
            | Marker::U8
            | Marker::U16
            | Marker::U32
            | Marker::U64
            | Marker::I8
            | Marker::I16
            | Marker::I32
            | Marker::I64
            | Marker::F32
            | Marker::F64,
        ) => true,
        Some(Marker::FixExt8) => b.get(1) == Some(&0),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value as Mp;

    fn pack(v: &Mp) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).unwrap();
        out
    }

    #[test]
    fn lengths_match_the_decoder_for_every_kind_of_value() {
        let big = "y".repeat(70_000);
        let values = [
            Mp::Nil,
            Mp::from(true),
            Mp::from(-3),
            Mp::from(200u64),
            Mp::from(70_000u64),
            Mp::from(u64::MAX),
            Mp::from(i64::MIN),
            Mp::F32(1.5),
            Mp::F64(2.5),
            Mp::from("short"),
            Mp::from("x".repeat(300)),
            Mp::from(big.as_str()),
            Mp::Binary(vec![1; 300]),
            Mp::Ext(0, vec![0; 8]),
            Mp::Ext(5, vec![0; 3]),
            Mp::Ext(5, vec![0; 300]),
            Mp::Array((0..20).map(Mp::from).collect()),
            Mp::Map((0..20).map(|i| (Mp::from(i), Mp::from("v"))).collect()),
            Mp::Array(vec![Mp::Array(vec![Mp::Map(vec![(
                Mp::from("k"),
                Mp::Array(vec![]),
            )])])]),
        ];
        for v in &values {
            let b = pack(v);
            assert_eq!(value_len(&b), Ok(Some(b.len())), "{v}");
            // Cut anywhere: not all there yet.
            for cut in [0, 1, b.len() / 2, b.len() - 1] {
                if cut < b.len() {
                    assert_eq!(value_len(&b[..cut]), Ok(None), "{v} cut at {cut}");
                }
            }
            // Followed by more: only its own length.
            let mut two = b.clone();
            two.extend(pack(&Mp::from(1)));
            assert_eq!(value_len(&two), Ok(Some(b.len())));
        }
        assert!(value_len(&[0xc1]).is_err());
    }

    #[test]
    fn the_chunk_is_found_in_every_mode() {
        let opt = Mp::Map(vec![(Mp::from("chunk"), Mp::from("c9"))]);
        let rec = Mp::Map(vec![(Mp::from("log"), Mp::from("x"))]);
        let message = Mp::Array(vec![
            Mp::from("t"),
            Mp::from(1u64),
            rec.clone(),
            opt.clone(),
        ]);
        assert_eq!(chunk_of(&pack(&message)).as_deref(), Some("c9"));
        let et = Mp::Ext(0, vec![0; 8]);
        let message = Mp::Array(vec![Mp::from("t"), et, rec.clone(), opt.clone()]);
        assert_eq!(chunk_of(&pack(&message)).as_deref(), Some("c9"));
        let forward = Mp::Array(vec![Mp::from("t"), Mp::Array(vec![]), opt.clone()]);
        assert_eq!(chunk_of(&pack(&forward)).as_deref(), Some("c9"));
        let packed = Mp::Array(vec![Mp::from("t"), Mp::Binary(vec![0x90]), opt]);
        assert_eq!(chunk_of(&pack(&packed)).as_deref(), Some("c9"));
        // Message mode without an option: the record is not one.
        let message = Mp::Array(vec![Mp::from("t"), Mp::from(1u64), rec]);
        assert_eq!(chunk_of(&pack(&message)), None);
    }
}
