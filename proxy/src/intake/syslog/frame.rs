//! Syslog over a stream (RFC 6587): each message either octet-counted
//! (`LEN SP MSG`, what RFC 5425 and syslog-ng's `syslog()` driver send) or
//! ended by a newline (non-transparent framing, rsyslog's default). Told
//! apart per message, as RFC 6587 suggests: a message starting with digits
//! and a space is counted, anything else runs to its newline.

/// The next message at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// The message is `buf[start..end]` (trailer excluded); the next starts at `next`.
    Whole {
        start: usize,
        end: usize,
        next: usize,
    },
    /// Not all there yet.
    Partial,
    /// Longer than the largest message taken: `len` bytes counted, of which
    /// `header` are the count itself; or a line that ran past the limit
    /// without its newline (`len: None`).
    TooLong { header: usize, len: Option<usize> },
}

/// Digits of an octet count: a message of 10^9 bytes or more is refused by size anyway.
const MAX_COUNT_DIGITS: usize = 9;

/// The first message of `buf`; `max`: the largest message taken.
pub fn next(buf: &[u8], max: usize) -> Frame {
    if let Some((header, len)) = octet_count(buf) {
        if len > max {
            return Frame::TooLong {
                header,
                len: Some(len),
            };
        }
        return if buf.len() - header >= len {
            Frame::Whole {
                start: header,
                end: header + len,
                next: header + len,
            }
        } else {
            Frame::Partial
        };
    }
    match memchr::memchr(b'\n', buf) {
        Some(nl) => Frame::Whole {
            start: 0,
            end: nl,
            next: nl + 1,
        },
        None if buf.len() > max => Frame::TooLong {
            header: 0,
            len: None,
        },
        None => Frame::Partial,
    }
}

/// `LEN SP`: the header's length and LEN, when `buf` starts with one. A count
/// whose space has not arrived yet reads as none: with no newline either, the
/// frame is `Partial` until it has.
fn octet_count(buf: &[u8]) -> Option<(usize, usize)> {
    if !matches!(buf.first(), Some(b'1'..=b'9')) {
        return None;
    }
    let digits = buf
        .iter()
        .take(MAX_COUNT_DIGITS + 1)
        .position(|b| !b.is_ascii_digit())?;
    if digits > MAX_COUNT_DIGITS || buf[digits] != b' ' {
        return None;
    }
    let len = std::str::from_utf8(&buf[..digits]).ok()?.parse().ok()?;
    Some((digits + 1, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(buf: &[u8]) -> (&[u8], usize) {
        match next(buf, 100) {
            Frame::Whole { start, end, next } => (&buf[start..end], next),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn both_framings() {
        assert_eq!(whole(b"11 <13>1 - - x<13>y\n"), (&b"<13>1 - - x"[..], 14));
        assert_eq!(whole(b"<13>y\n11 "), (&b"<13>y"[..], 6));
        // A line starting with a number that is not a count.
        assert_eq!(whole(b"2026-12-02 x\n"), (&b"2026-12-02 x"[..], 13));
        assert_eq!(next(b"11 <13>1", 100), Frame::Partial);
        assert_eq!(next(b"<13>no newline yet", 100), Frame::Partial);
        assert_eq!(next(b"", 100), Frame::Partial);
    }

    #[test]
    fn too_long() {
        assert_eq!(
            next(b"101 <13>", 100),
            Frame::TooLong {
                header: 4,
                len: Some(101)
            }
        );
        assert_eq!(
            next(&[b'x'; 101], 100),
            Frame::TooLong {
                header: 0,
                len: None
            }
        );
        // A count of ten digits is not a count.
        assert_eq!(next(b"1234567890 x\n", 100), whole_of(b"1234567890 x\n"));
    }

    fn whole_of(b: &[u8]) -> Frame {
        Frame::Whole {
            start: 0,
            end: b.len() - 1,
            next: b.len(),
        }
    }
}
