//! One syslog message into an event: RFC 5424 (`<PRI>1 TIMESTAMP HOST APP
//! PROCID MSGID [SD] MSG`) and RFC 3164, the BSD form rsyslog and most devices
//! send (`<PRI>Mmm dd hh:mm:ss HOST TAG[PID]: MSG`, or an RFC 3339 time in
//! place of the BSD one). Parsing is lenient, as syslog senders are: what does
//! not parse stays in the message, nothing is refused.
//!
//! Fields: `host` (HOSTNAME), `service` (APP-NAME, or the 3164 tag), `status`
//! (the severity's name); attributes under `syslog`: `facility` (its name),
//! `severity` (0-7), `appname`, `procid`, `msgid`, and RFC 5424's structured
//! data as `structured_data.{SD-ID}.{PARAM}`. A BSD time has no year nor zone:
//! it is read as UTC, in the year that puts it closest to its arrival.
use crate::event::Event;
use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde_json::{Map, Value};

const SEVERITIES: [&str; 8] = [
    "emerg", "alert", "critical", "error", "warn", "notice", "info", "debug",
];

const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

/// RFC 3164's default for a message without a PRI: user.notice.
const DEFAULT_PRI: u8 = 13;

/// The event of one message (its frame's bytes, without the trailer).
pub fn event(line: &[u8], received_at_ms: i64) -> Event {
    let line = trim_end(line);
    let mut ev = Event::from_message(String::new(), received_at_ms);
    let mut syslog = Map::new();
    let (pri, rest) = match pri(line) {
        Some((pri, rest)) => (pri, rest),
        // Not syslog at all (a bare line): all message, the default priority.
        None => (DEFAULT_PRI, line),
    };
    let severity = pri & 7;
    syslog.insert("facility".into(), FACILITIES[usize::from(pri >> 3)].into());
    syslog.insert("severity".into(), severity.into());
    ev.status = Some(SEVERITIES[usize::from(severity)].to_string());
    let message = match rest.strip_prefix(b"1 ") {
        Some(after_version) => rfc5424(after_version, &mut ev, &mut syslog),
        None => None,
    }
    .unwrap_or_else(|| rfc3164(rest, &mut ev, &mut syslog));
    ev.message = text(
        message
            .strip_prefix("\u{feff}".as_bytes())
            .unwrap_or(message),
    );
    if let Some(app) = syslog.get("appname").and_then(Value::as_str) {
        ev.service = Some(app.to_string());
    }
    ev.attributes.insert("syslog".into(), Value::Object(syslog));
    ev
}

fn trim_end(mut line: &[u8]) -> &[u8] {
    while let [head @ .., b'\r' | b'\n' | b'\0'] = line {
        line = head;
    }
    line
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `<PRI>`: 0 to 191, one to three digits.
fn pri(line: &[u8]) -> Option<(u8, &[u8])> {
    let rest = line.strip_prefix(b"<")?;
    let close = rest.iter().take(4).position(|&b| b == b'>')?;
    let digits = &rest[..close];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value: u16 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    (value <= 191).then(|| (value as u8, &rest[close + 1..]))
}

/// The text up to the next space, and what follows that space.
fn token(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let sp = memchr::memchr(b' ', b)?;
    Some((&b[..sp], &b[sp + 1..]))
}

/// RFC 5424 after `<PRI>1 `; `None` when the header is not whole (the caller
/// then reads the message as BSD).
fn rfc5424<'a>(b: &'a [u8], ev: &mut Event, syslog: &mut Map<String, Value>) -> Option<&'a [u8]> {
    let (time, b) = token(b)?;
    let (host, b) = token(b)?;
    let (app, b) = token(b)?;
    let (procid, b) = token(b)?;
    let (msgid, b) = token(b)?;
    let nil = |v: &[u8]| v == b"-";
    if !nil(time) {
        if let Some(ms) = rfc3339_ms(time) {
            ev.timestamp = ms;
        }
    }
    if !nil(host) {
        ev.host = Some(text(host));
    }
    for (key, v) in [("appname", app), ("procid", procid), ("msgid", msgid)] {
        if !nil(v) {
            syslog.insert(key.into(), text(v).into());
        }
    }
    let message = match b {
        [b'-'] => &[][..],
        [b'-', b' ', msg @ ..] => msg,
        [b'[', ..] => match structured_data(b) {
            Some((sd, rest)) => {
                syslog.insert("structured_data".into(), Value::Object(sd));
                rest.strip_prefix(b" ").unwrap_or(rest)
            }
            // Not valid structured data: left in the message, not lost.
            None => b,
        },
        _ => b,
    };
    // rsyslog relays a BSD message's `TAG: MSG` keeping the space after the
    // colon in MSG, so its RFC 5424 output has two spaces before the text.
    Some(message.strip_prefix(b" ").unwrap_or(message))
}

/// `[id name="value" ...]...`, then what follows it.
fn structured_data(mut b: &[u8]) -> Option<(Map<String, Value>, &[u8])> {
    let mut out = Map::new();
    while let Some(rest) = b.strip_prefix(b"[") {
        let id_end = rest.iter().position(|&c| c == b' ' || c == b']')?;
        let id = text(&rest[..id_end]);
        let mut params = Map::new();
        b = &rest[id_end..];
        loop {
            match b {
                [b']', rest @ ..] => {
                    b = rest;
                    break;
                }
                [b' ', rest @ ..] => {
                    let eq = memchr::memchr(b'=', rest)?;
                    let name = text(&rest[..eq]);
                    let (value, after) = quoted(rest[eq + 1..].strip_prefix(b"\"")?)?;
                    params.insert(name, Value::String(value));
                    b = after;
                }
                _ => return None,
            }
        }
        out.insert(id, Value::Object(params));
    }
    Some((out, b))
}

/// A PARAM-VALUE up to its closing quote, unescaping `\"`, `\\` and `\]`.
fn quoted(b: &[u8]) -> Option<(String, &[u8])> {
    let mut value = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => return Some((String::from_utf8_lossy(&value).into_owned(), &b[i + 1..])),
            b'\\' if matches!(b.get(i + 1), Some(b'"' | b'\\' | b']')) => {
                value.push(b[i + 1]);
                i += 2;
            }
            c => {
                value.push(c);
                i += 1;
            }
        }
    }
    None
}

/// RFC 3164 after `<PRI>`: the time and host when there, the tag, the message.
fn rfc3164<'a>(b: &'a [u8], ev: &mut Event, syslog: &mut Map<String, Value>) -> &'a [u8] {
    let mut b = b;
    let mut timed = false;
    if let Some(ms) = bsd_time_ms(b, ev.timestamp) {
        ev.timestamp = ms;
        b = &b[BSD_TIME_LEN..];
        timed = true;
    } else if let Some((ms, rest)) = token(b).and_then(|(t, rest)| Some((rfc3339_ms(t)?, rest))) {
        ev.timestamp = ms;
        b = rest;
        timed = true;
    }
    if timed {
        b = b.strip_prefix(b" ").unwrap_or(b);
        // HOSTNAME, unless what follows the time is already the tag (a local sender).
        if let Some((host, rest)) = token(b) {
            if !host.is_empty() && tag(b).is_none_or(|t| t.consumed > host.len() + 1) {
                ev.host = Some(text(host));
                b = rest;
            }
        }
    }
    match tag(b) {
        Some(t) => {
            syslog.insert("appname".into(), text(t.name).into());
            if let Some(pid) = t.pid {
                syslog.insert("procid".into(), text(pid).into());
            }
            &b[t.consumed..]
        }
        None => b,
    }
}

struct Tag<'a> {
    name: &'a [u8],
    pid: Option<&'a [u8]>,
    /// Bytes through the colon and the space after it.
    consumed: usize,
}

/// `TAG[PID]: ` or `TAG: `: a name of at most 48 characters that are not
/// spaces, brackets or colons.
fn tag(b: &[u8]) -> Option<Tag<'_>> {
    let end = b
        .iter()
        .take(49)
        .position(|&c| matches!(c, b'[' | b':' | b' '))?;
    if end == 0 {
        return None;
    }
    let name = &b[..end];
    let (pid, after) = match b[end] {
        b'[' => {
            let close = end + 1 + b[end + 1..].iter().take(21).position(|&c| c == b']')?;
            (Some(&b[end + 1..close]), close + 1)
        }
        _ => (None, end),
    };
    if b.get(after) != Some(&b':') {
        return None;
    }
    let consumed = after + 1 + usize::from(b.get(after + 1) == Some(&b' '));
    Some(Tag {
        name,
        pid,
        consumed,
    })
}

fn rfc3339_ms(t: &[u8]) -> Option<i64> {
    let t = std::str::from_utf8(t).ok()?;
    DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|d| d.timestamp_millis())
}

/// `Mmm dd hh:mm:ss`, the day space-padded (or zero-padded).
const BSD_TIME_LEN: usize = 15;

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// A BSD time, in the year that puts it closest to `received_ms` (a December
/// message read in January belongs to last year).
fn bsd_time_ms(b: &[u8], received_ms: i64) -> Option<i64> {
    let t = b.get(..BSD_TIME_LEN)?;
    let month = MONTHS.iter().position(|m| &t[..3] == *m)? as u32 + 1;
    let num = |s: &[u8]| -> Option<u32> {
        let s = std::str::from_utf8(s).ok()?.trim_start();
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    if t[3] != b' ' || t[6] != b' ' || t[9] != b':' || t[12] != b':' {
        return None;
    }
    let (day, h, m, s) = (
        num(&t[4..6])?,
        num(&t[7..9])?,
        num(&t[10..12])?,
        num(&t[13..15])?,
    );
    let now = Utc.timestamp_millis_opt(received_ms).single()?;
    let at = |year: i32| -> Option<i64> {
        let d = NaiveDate::from_ymd_opt(year, month, day)?.and_hms_opt(h, m, s)?;
        Some(d.and_utc().timestamp_millis())
    };
    let year = now.year();
    [year, year - 1, year + 1]
        .into_iter()
        .filter_map(at)
        .min_by_key(|ms| (ms - received_ms).abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-12-02T21:00:00Z
    const NOW: i64 = 1_796_245_200_000;

    fn attr<'a>(ev: &'a Event, key: &str) -> Option<&'a Value> {
        ev.attributes["syslog"].get(key)
    }

    #[test]
    fn rfc5424_with_structured_data() {
        // RFC 5424, section 6.5, example 3 (with a BOM before the message).
        let line = "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"Application\" eventID=\"1011\"][examplePriority@32473 class=\"high\"] \u{feff}An application event log entry...";
        let ev = event(line.as_bytes(), NOW);
        assert_eq!(ev.timestamp, 1_065_910_455_003);
        assert_eq!(ev.host.as_deref(), Some("mymachine.example.com"));
        assert_eq!(ev.service.as_deref(), Some("evntslog"));
        assert_eq!(ev.status.as_deref(), Some("notice"));
        assert_eq!(ev.message, "An application event log entry...");
        assert_eq!(attr(&ev, "facility").unwrap(), "local4");
        assert_eq!(attr(&ev, "severity").unwrap(), 5);
        assert_eq!(attr(&ev, "msgid").unwrap(), "ID47");
        assert!(attr(&ev, "procid").is_none());
        let sd = attr(&ev, "structured_data").unwrap();
        assert_eq!(sd["exampleSDID@32473"]["eventID"], "1011");
        assert_eq!(sd["examplePriority@32473"]["class"], "high");
    }

    #[test]
    fn rfc5424_nil_values_and_escapes() {
        let ev = event(b"<34>1 - - su 42 - [a b=\"x\\\"y\\]z\"]\r\n", NOW);
        assert_eq!(ev.timestamp, NOW);
        assert_eq!(ev.host, None);
        assert_eq!(ev.service.as_deref(), Some("su"));
        assert_eq!(ev.status.as_deref(), Some("critical"));
        assert_eq!(attr(&ev, "facility").unwrap(), "auth");
        assert_eq!(attr(&ev, "procid").unwrap(), "42");
        assert_eq!(attr(&ev, "structured_data").unwrap()["a"]["b"], "x\"y]z");
        assert_eq!(ev.message, "");
        // Broken structured data stays in the message.
        let ev = event(b"<34>1 - h app - - [oops no close", NOW);
        assert_eq!(ev.message, "[oops no close");
        assert_eq!(ev.host.as_deref(), Some("h"));
    }

    #[test]
    fn rfc3164_as_rsyslog_forwards_it() {
        let ev = event(
            b"<86>Jun 14 15:16:01 combo sshd(pam_unix)[19939]: authentication failure; logname= uid=0",
            NOW,
        );
        assert_eq!(ev.host.as_deref(), Some("combo"));
        assert_eq!(ev.service.as_deref(), Some("sshd(pam_unix)"));
        assert_eq!(attr(&ev, "procid").unwrap(), "19939");
        assert_eq!(attr(&ev, "facility").unwrap(), "authpriv");
        assert_eq!(ev.status.as_deref(), Some("info"));
        assert_eq!(ev.message, "authentication failure; logname= uid=0");
        // June 14, 2026 at 15:16:01 UTC: this year, the closest to December 2nd.
        assert_eq!(ev.timestamp, 1_781_450_161_000);
    }

    #[test]
    fn rfc3164_variants() {
        // A space-padded day, a December message read on January 1st: last year.
        let jan1 = 1_798_761_600_000; // 2027-01-01T00:00:00Z
        let ev = event(b"<13>Dec  31 23:59:59 h t: m", jan1);
        assert_eq!(ev.timestamp, jan1, "malformed day: not a BSD time");
        let ev = event(b"<13>Dec 31 23:59:59 h t: m", jan1);
        assert_eq!(ev.timestamp, jan1 - 1000);
        // An RFC 3339 time (rsyslog's RSYSLOG_ForwardFormat).
        let ev = event(b"<30>2026-12-02T20:59:59.5+00:00 web nginx: GET /", NOW);
        assert_eq!(ev.timestamp, NOW - 500);
        assert_eq!(ev.host.as_deref(), Some("web"));
        assert_eq!(ev.service.as_deref(), Some("nginx"));
        assert_eq!(ev.message, "GET /");
        // No host: the tag right after the time.
        let ev = event(b"<13>Dec  2 20:00:00 cron[7]: job ran", NOW);
        assert_eq!(ev.host, None);
        assert_eq!(ev.service.as_deref(), Some("cron"));
        assert_eq!(ev.message, "job ran");
        // No tag: all message.
        let ev = event(b"<13>Dec  2 20:00:00 host just words here", NOW);
        assert_eq!(ev.host.as_deref(), Some("host"));
        assert_eq!(ev.service, None);
        assert_eq!(ev.message, "just words here");
    }

    #[test]
    fn not_syslog_is_all_message() {
        for line in ["plain line", "<999>x", "<>x", "<1a>x"] {
            let ev = event(line.as_bytes(), NOW);
            assert_eq!(ev.message, line);
            assert_eq!(ev.status.as_deref(), Some("notice"));
            assert_eq!(attr(&ev, "facility").unwrap(), "user");
        }
        let ev = event(b"<0>\xff\xfe bad utf8", NOW);
        assert_eq!(ev.status.as_deref(), Some("emerg"));
        assert!(ev.message.ends_with(" bad utf8"));
    }
}
