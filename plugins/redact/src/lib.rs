//! `redact`: masks sensitive data in the message and in string attributes (recursively, in nested maps and
//! arrays; keys are left alone). Every event is kept.
//!
//! Built-in detectors (names as used in the config and in `[REDACTED:<name>]`):
//!
//! | name | what |
//! |---|---|
//! | `credit_card` | 13–19 digits, optionally grouped by single spaces or dashes (groups of 3–6), passing Luhn |
//! | `email` | `local@domain.tld` |
//! | `ipv4` | dotted quads with octets 0–255 (not part of a longer dotted number such as a version) |
//! | `ipv6` | anything `std::net::Ipv6Addr` parses, full or compressed (`::`), with embedded IPv4 |
//! | `aws_access_key` | `AKIA`/`ASIA` + 16 upper-case letters or digits |
//! | `bearer_token` | the token after `Bearer ` (case-insensitive); the word `Bearer` is kept |
//! | `jwt` | three base64url segments, the first starting `eyJ` |
//!
//! Config (all optional):
//!
//! ```yaml
//! style: full            # full | last4 | hash — the default for every detector
//! hash_key: "s3cret"     # required when any detector uses `hash`
//! detectors: [email, credit_card]   # built-ins to run; default: all of them
//! styles: { email: hash }           # per-detector style overrides (built-in or custom names)
//! custom:                           # extra patterns (Rust `regex` syntax)
//!   - name: ssn
//!     pattern: '\b\d{3}-\d{2}-\d{4}\b'
//!     style: last4                  # optional; a named group `secret` limits masking to that group
//! attributes: true                  # also redact string attributes (default true)
//! ```
//!
//! Styles: `full` → `[REDACTED:email]`; `last4` → every character but the last four becomes `*`
//! (`**** **** **** 1111`); `hash` → `[REDACTED:email:<first 16 hex chars of HMAC-SHA256(hash_key, value)>]`,
//! where card numbers are hashed without their separators so one card always gives one hash.
//!
//! Counters: `redacted_<name>`, per match.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use hmac::{Hmac, Mac};
use memchr::memmem;
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;
use weir_sdk::{Event, Fields, Plugin, Verdict};

/// How a match is masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Style {
    #[default]
    Full,
    Last4,
    Hash,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomRule {
    pub name: String,
    pub pattern: String,
    #[serde(default)]
    pub style: Option<Style>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub style: Style,
    pub hash_key: Option<String>,
    pub detectors: Option<Vec<String>>,
    pub styles: BTreeMap<String, Style>,
    pub custom: Vec<CustomRule>,
    pub attributes: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            style: Style::Full,
            hash_key: None,
            detectors: None,
            styles: BTreeMap::new(),
            custom: Vec::new(),
            attributes: true,
        }
    }
}

/// The built-in detector names, in priority order (on equal spans the earlier one names the match).
pub const BUILTINS: [&str; 7] = [
    "credit_card",
    "email",
    "ipv4",
    "ipv6",
    "aws_access_key",
    "bearer_token",
    "jwt",
];

enum Matcher {
    CreditCard(Regex),
    Ipv4,
    Ipv6,
    /// A regex; with `group`, only that capture group is masked. `needles`: the regex runs only on strings
    /// holding one of them (searchers built once: this check runs on every string of every event).
    Pattern {
        re: Regex,
        group: Option<usize>,
        needles: Vec<memmem::Finder<'static>>,
        /// Like `needles`, in any ASCII case (lowercase here).
        caseless: Option<&'static [u8]>,
    },
}

struct Rule {
    name: String,
    counter: String,
    style: Style,
    matcher: Matcher,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    rule: usize,
}

pub struct Redact {
    rules: Vec<Rule>,
    hmac: Option<Hmac<Sha256>>,
    attributes: bool,
    counts: Vec<i64>,
}

fn finders(needles: &[&'static str]) -> Vec<memmem::Finder<'static>> {
    needles
        .iter()
        .map(|n| memmem::Finder::new(n.as_bytes()))
        .collect()
}

/// Whether `bytes` holds 13 or more digits in one run of digit groups joined by single spaces or dashes:
/// the least a card number needs. Most strings have none, and then the card regex need not run at all.
fn may_hold_card(bytes: &[u8]) -> bool {
    let mut digits = 0;
    let mut prev_digit = false;
    for (i, &b) in bytes.iter().enumerate() {
        if b.is_ascii_digit() {
            digits += 1;
            if digits >= 13 {
                return true;
            }
            prev_digit = true;
        } else {
            let joins = prev_digit
                && (b == b' ' || b == b'-')
                && bytes.get(i + 1).is_some_and(u8::is_ascii_digit);
            if !joins {
                digits = 0;
            }
            prev_digit = false;
        }
    }
    false
}

/// Whether `hay` holds `needle` (ASCII lowercase) in any ASCII case.
fn contains_caseless(hay: &[u8], needle: &[u8]) -> bool {
    let first = needle[0];
    memchr::memchr2_iter(first, first.to_ascii_uppercase(), hay).any(|i| {
        hay[i..].len() >= needle.len() && hay[i..i + needle.len()].eq_ignore_ascii_case(needle)
    })
}

fn re(pattern: &str) -> Regex {
    Regex::new(pattern).expect("built-in pattern compiles")
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The Luhn checksum over ASCII digits.
pub fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = (d - b'0') as u32;
        if !i.is_multiple_of(2) {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

fn find_cards(run_re: &Regex, s: &str, rule: usize, out: &mut Vec<Span>) {
    let bytes = s.as_bytes();
    if !may_hold_card(bytes) {
        return;
    }
    for m in run_re.find_iter(s) {
        let (start, end) = (m.start(), m.end());
        // Not part of a word or of a decimal number.
        if start > 0
            && (is_word_byte(bytes[start - 1])
                || (bytes[start - 1] == b'.' && start >= 2 && bytes[start - 2].is_ascii_digit()))
        {
            continue;
        }
        if end < bytes.len()
            && (is_word_byte(bytes[end])
                || (bytes[end] == b'.' && bytes.get(end + 1).is_some_and(u8::is_ascii_digit)))
        {
            continue;
        }
        // Groups of digits: (start, end) byte offsets.
        let mut groups: Vec<(usize, usize)> = Vec::new();
        let mut g = start;
        for (i, b) in bytes[start..end].iter().enumerate() {
            if !b.is_ascii_digit() {
                groups.push((g, start + i));
                g = start + i + 1;
            }
        }
        groups.push((g, end));
        let mut i = 0;
        while i < groups.len() {
            let mut found = None;
            for j in (i..groups.len()).rev() {
                let n: usize = groups[i..=j].iter().map(|(a, b)| b - a).sum();
                if !(13..=19).contains(&n) {
                    continue;
                }
                if j > i
                    && !groups[i..=j]
                        .iter()
                        .all(|(a, b)| (3..=6).contains(&(b - a)))
                {
                    continue;
                }
                let digits: Vec<u8> = bytes[groups[i].0..groups[j].1]
                    .iter()
                    .copied()
                    .filter(u8::is_ascii_digit)
                    .collect();
                if luhn_valid(&digits) {
                    found = Some(j);
                    break;
                }
            }
            match found {
                Some(j) => {
                    out.push(Span {
                        start: groups[i].0,
                        end: groups[j].1,
                        rule,
                    });
                    i = j + 1;
                }
                None => i += 1,
            }
        }
    }
}

/// IPv4 addresses in dotted-quad form (octets 0-255, no leading zeros), not
/// part of a word or of a longer dotted number. Hand-written: in Wasm, a
/// regex without a literal to search for costs more than the rest of the
/// plugin (see the differential test against the regex it replaced).
fn find_ipv4(s: &str, rule: usize, out: &mut Vec<Span>) {
    let bytes = s.as_bytes();
    let octet = |from: usize| -> Option<usize> {
        let len = bytes[from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if !(1..=3).contains(&len) {
            return None;
        }
        let digits = &bytes[from..from + len];
        let value = digits.iter().fold(0u32, |v, d| v * 10 + (d - b'0') as u32);
        (value <= 255 && (len == 1 || digits[0] != b'0')).then_some(from + len)
    };
    let mut from = 0;
    while let Some(off) = memchr::memchr(b'.', &bytes[from..]) {
        let dot = from + off;
        from = dot + 1;
        // The first octet ends at this dot.
        let start = bytes[..dot]
            .iter()
            .rposition(|b| !b.is_ascii_digit())
            .map_or(0, |i| i + 1);
        if start == dot
            || (start > 0 && (is_word_byte(bytes[start - 1]) || bytes[start - 1] == b'.'))
        {
            continue;
        }
        let mut end = start;
        let mut parsed = true;
        for i in 0..4 {
            if i > 0 {
                if bytes.get(end) != Some(&b'.') {
                    parsed = false;
                    break;
                }
                end += 1;
            }
            match octet(end) {
                Some(e) => end = e,
                None => {
                    parsed = false;
                    break;
                }
            }
        }
        if !parsed
            || (end < bytes.len()
                && (is_word_byte(bytes[end])
                    || (bytes[end] == b'.' && bytes.get(end + 1).is_some_and(u8::is_ascii_digit))))
        {
            continue;
        }
        out.push(Span { start, end, rule });
        from = end;
    }
}

fn is_ipv6_byte(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b':' || b == b'.'
}

/// IPv6 addresses (any form `Ipv6Addr` parses, IPv4-mapped too): each maximal
/// run of hex digits, colons and dots that holds a colon is a candidate.
fn find_ipv6(s: &str, rule: usize, out: &mut Vec<Span>) {
    let bytes = s.as_bytes();
    let mut from = 0;
    while let Some(off) = memchr::memchr(b':', &bytes[from..]) {
        let colon = from + off;
        let start = bytes[..colon]
            .iter()
            .rposition(|&b| !is_ipv6_byte(b))
            .map_or(0, |i| i + 1);
        let run_end = bytes[colon..]
            .iter()
            .position(|&b| !is_ipv6_byte(b))
            .map_or(bytes.len(), |i| colon + i);
        from = run_end;
        if start > 0 && is_word_byte(bytes[start - 1]) {
            continue;
        }
        let mut cand = s[start..run_end].trim_end_matches('.');
        if cand.ends_with(':') && !cand.ends_with("::") {
            cand = &cand[..cand.len() - 1];
        }
        let end = start + cand.len();
        if end < bytes.len() && is_word_byte(bytes[end]) {
            continue;
        }
        // Every IPv6 address has two colons at least (`::`); times like 12:30 have fewer hex groups to offer.
        if memchr::memchr_iter(b':', cand.as_bytes()).count() < 2
            || !cand.bytes().any(|b| b.is_ascii_hexdigit())
        {
            continue;
        }
        if cand.parse::<Ipv6Addr>().is_ok() {
            out.push(Span { start, end, rule });
        }
    }
}

impl Rule {
    fn find(&self, s: &str, rule: usize, out: &mut Vec<Span>) {
        match &self.matcher {
            Matcher::CreditCard(r) => find_cards(r, s, rule, out),
            Matcher::Ipv4 => find_ipv4(s, rule, out),
            Matcher::Ipv6 => find_ipv6(s, rule, out),
            Matcher::Pattern {
                re,
                group,
                needles,
                caseless,
            } => {
                if !needles.is_empty() && !needles.iter().any(|n| n.find(s.as_bytes()).is_some()) {
                    return;
                }
                if caseless.is_some_and(|n| !contains_caseless(s.as_bytes(), n)) {
                    return;
                }
                match group {
                    None => out.extend(re.find_iter(s).map(|m| Span {
                        start: m.start(),
                        end: m.end(),
                        rule,
                    })),
                    Some(g) => {
                        for caps in re.captures_iter(s) {
                            if let Some(m) = caps.get(*g) {
                                out.push(Span {
                                    start: m.start(),
                                    end: m.end(),
                                    rule,
                                });
                            }
                        }
                    }
                }
            }
        }
    }
}

fn builtin(name: &str) -> Option<Matcher> {
    Some(match name {
        "credit_card" => Matcher::CreditCard(re(r"[0-9]+(?:[ -][0-9]+)*")),
        "email" => Matcher::Pattern {
            re: re(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
            group: None,
            needles: finders(&["@"]),
            caseless: None,
        },
        "ipv4" => Matcher::Ipv4,
        "ipv6" => Matcher::Ipv6,
        "aws_access_key" => Matcher::Pattern {
            re: re(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),
            group: None,
            needles: finders(&["AKIA", "ASIA"]),
            caseless: None,
        },
        "bearer_token" => Matcher::Pattern {
            re: re(r"\b(?i:bearer)[ \t]+([A-Za-z0-9\-._~+/]+=*)"),
            group: Some(1),
            needles: Vec::new(),
            caseless: Some(b"bearer"),
        },
        "jwt" => Matcher::Pattern {
            re: re(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"),
            group: None,
            needles: finders(&["eyJ"]),
            caseless: None,
        },
        _ => return None,
    })
}

impl Redact {
    /// Finds the non-overlapping spans to mask in `s` (earliest first; on a tie the longest, then rule order).
    fn spans(&self, s: &str) -> Vec<Span> {
        let mut all = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            rule.find(s, i, &mut all);
        }
        if all.len() <= 1 {
            return all;
        }
        all.sort_by(|a, b| {
            a.start
                .cmp(&b.start)
                .then(b.end.cmp(&a.end))
                .then(a.rule.cmp(&b.rule))
        });
        let mut kept: Vec<Span> = Vec::with_capacity(all.len());
        let mut last_end = 0;
        for sp in all {
            if sp.start >= last_end && sp.end > sp.start {
                last_end = sp.end;
                kept.push(sp);
            }
        }
        kept
    }

    fn mask(&self, rule: &Rule, text: &str, out: &mut String) {
        match rule.style {
            Style::Full => {
                out.push_str("[REDACTED:");
                out.push_str(&rule.name);
                out.push(']');
            }
            Style::Last4 => {
                let n = text.chars().count();
                for (i, c) in text.chars().enumerate() {
                    out.push(if n > 4 && i >= n - 4 { c } else { '*' });
                }
            }
            Style::Hash => {
                let mut mac = self.hmac.clone().expect("hash_key checked at init");
                if matches!(rule.matcher, Matcher::CreditCard(_)) {
                    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_digit).collect();
                    mac.update(&digits);
                } else {
                    mac.update(text.as_bytes());
                }
                let digest = mac.finalize().into_bytes();
                out.push_str("[REDACTED:");
                out.push_str(&rule.name);
                out.push(':');
                for b in &digest[..8] {
                    out.push_str(&format!("{b:02x}"));
                }
                out.push(']');
            }
        }
    }

    /// Redacts one string; `Cow::Borrowed` when nothing matched.
    pub fn redact_str<'a>(&mut self, s: &'a str) -> Cow<'a, str> {
        let spans = self.spans(s);
        if spans.is_empty() {
            return Cow::Borrowed(s);
        }
        let mut out = String::with_capacity(s.len() + 16 * spans.len());
        let mut pos = 0;
        for sp in spans {
            out.push_str(&s[pos..sp.start]);
            self.mask(&self.rules[sp.rule], &s[sp.start..sp.end], &mut out);
            self.counts[sp.rule] += 1;
            pos = sp.end;
        }
        out.push_str(&s[pos..]);
        Cow::Owned(out)
    }

    /// Redacts a value in place; whether anything changed.
    fn redact_value(&mut self, v: &mut Value) -> bool {
        match v {
            Value::String(s) => match self.redact_str(s) {
                Cow::Owned(new) => {
                    *s = new;
                    true
                }
                Cow::Borrowed(_) => false,
            },
            // Every element is visited (no short-circuit).
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |c, i| self.redact_value(i) | c),
            Value::Object(map) => map
                .values_mut()
                .fold(false, |c, i| self.redact_value(i) | c),
            _ => false,
        }
    }

    /// Redacts an event in place; whether anything changed.
    pub fn redact_event(&mut self, event: &mut Event) -> bool {
        let mut changed = false;
        if let Cow::Owned(new) = self.redact_str(&event.message) {
            event.message = new;
            changed = true;
        }
        if self.attributes {
            for v in event.attributes.values_mut() {
                changed |= self.redact_value(v);
            }
        }
        changed
    }

    fn flush_counters(&mut self) {
        for (rule, count) in self.rules.iter().zip(self.counts.iter_mut()) {
            if *count > 0 {
                weir_sdk::counter_add(&rule.counter, *count);
                *count = 0;
            }
        }
    }
}

impl Plugin for Redact {
    type Config = Config;
    // Reads the message and writes attributes: nothing else needs to cross the boundary.
    const FIELDS: Fields = Fields::MESSAGE.with(Fields::ATTRIBUTES);

    fn new(config: Config) -> Result<Self, String> {
        let names: Vec<String> = match &config.detectors {
            Some(list) => list.clone(),
            None => BUILTINS.iter().map(|s| s.to_string()).collect(),
        };
        let mut rules = Vec::new();
        for name in &names {
            let matcher = builtin(name).ok_or_else(|| {
                format!(
                    "redact: unknown detector `{name}` (known: {})",
                    BUILTINS.join(", ")
                )
            })?;
            let style = config.styles.get(name).copied().unwrap_or(config.style);
            rules.push(Rule {
                name: name.clone(),
                counter: format!("redacted_{name}"),
                style,
                matcher,
            });
        }
        for c in &config.custom {
            if c.name.is_empty()
                || !c
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
            {
                return Err(format!(
                    "redact: custom rule name `{}` must be non-empty [A-Za-z0-9_-]",
                    c.name
                ));
            }
            if rules.iter().any(|r| r.name == c.name) {
                return Err(format!("redact: duplicate rule name `{}`", c.name));
            }
            let regex = Regex::new(&c.pattern)
                .map_err(|e| format!("redact: custom rule `{}`: {e}", c.name))?;
            let group = regex.capture_names().position(|n| n == Some("secret"));
            let style = c
                .style
                .or_else(|| config.styles.get(&c.name).copied())
                .unwrap_or(config.style);
            rules.push(Rule {
                name: c.name.clone(),
                counter: format!("redacted_{}", c.name),
                style,
                matcher: Matcher::Pattern {
                    re: regex,
                    group,
                    needles: Vec::new(),
                    caseless: None,
                },
            });
        }
        for key in config.styles.keys() {
            if !rules.iter().any(|r| &r.name == key) {
                return Err(format!("redact: `styles` names `{key}`, which is not an enabled detector or custom rule"));
            }
        }
        let hmac = match config.hash_key.as_deref() {
            Some(k) if !k.is_empty() => {
                Some(Hmac::<Sha256>::new_from_slice(k.as_bytes()).map_err(|e| e.to_string())?)
            }
            _ => None,
        };
        if hmac.is_none() && rules.iter().any(|r| r.style == Style::Hash) {
            return Err("redact: style `hash` needs a non-empty `hash_key`".into());
        }
        let counts = vec![0; rules.len()];
        Ok(Redact {
            rules,
            hmac,
            attributes: config.attributes,
            counts,
        })
    }

    fn process(&mut self, event: &mut Event) -> Verdict {
        self.redact_event(event);
        self.flush_counters();
        Verdict::Keep
    }

    fn process_batch(&mut self, events: &mut [Event]) -> Vec<Verdict> {
        self.process_batch_tracked(events)
            .into_iter()
            .map(|(v, _)| v)
            .collect()
    }

    // Redaction knows what it changed: no copy of the batch to compare with.
    fn process_batch_tracked(&mut self, events: &mut [Event]) -> Vec<(Verdict, bool)> {
        let tracked = events
            .iter_mut()
            .map(|e| (Verdict::Keep, self.redact_event(e)))
            .collect();
        self.flush_counters();
        tracked
    }
}

weir_sdk::export_plugin!(Redact);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use weir_sdk::testing;

    fn redactor(config: Value) -> Redact {
        testing::init(config).unwrap()
    }

    fn r(p: &mut Redact, s: &str) -> String {
        p.redact_str(s).into_owned()
    }

    #[test]
    fn card_prefilter() {
        for s in [
            "4111111111111111",
            "x 4111 1111 1111 1111 y",
            "4111-1111-1111-1",
            "1234567890123",
        ] {
            assert!(may_hold_card(s.as_bytes()), "{s}");
        }
        for s in [
            "",
            "GET /a/12345 200 123ms id=1234",
            "1234 5678 9012",
            "123456789012 x3",
            "12  345678901234",
        ] {
            assert!(!may_hold_card(s.as_bytes()), "{s}");
        }
    }

    #[test]
    fn luhn() {
        assert!(luhn_valid(b"4111111111111111"));
        assert!(luhn_valid(b"378282246310005"));
        assert!(!luhn_valid(b"4111111111111112"));
    }

    #[test]
    fn cards() {
        let mut p = redactor(Value::Null);
        assert_eq!(
            r(&mut p, "card 4111111111111111 ok"),
            "card [REDACTED:credit_card] ok"
        );
        assert_eq!(
            r(&mut p, "card 4111 1111 1111 1111."),
            "card [REDACTED:credit_card]."
        );
        assert_eq!(
            r(&mut p, "amex 3782-822463-10005,"),
            "amex [REDACTED:credit_card],"
        );
        assert_eq!(
            r(&mut p, "card 4111 1111 1111 1111 2024"),
            "card [REDACTED:credit_card] 2024"
        );
        assert_eq!(
            r(&mut p, "order 12 4111 1111 1111 1111"),
            "order 12 [REDACTED:credit_card]"
        );
        // Fails Luhn, or embedded in a word / decimal: untouched.
        for s in [
            "id 4111111111111112",
            "x4111111111111111",
            "4111111111111111y",
            "v 0.4111111111111111",
            "1234 5678 9012 3456",
        ] {
            assert_eq!(r(&mut p, s), s);
        }
    }

    #[test]
    fn emails_ips_keys_tokens() {
        let mut p = redactor(Value::Null);
        assert_eq!(
            r(&mut p, "from Jane.Doe+x@mail.example.co.uk."),
            "from [REDACTED:email]."
        );
        assert_eq!(
            r(&mut p, "client=10.0.0.255:443"),
            "client=[REDACTED:ipv4]:443"
        );
        for s in ["version 1.2.3.4.5", "1.2.3.256", "v10.0.0.1", "999.1.1.1"] {
            assert_eq!(r(&mut p, s), s);
        }
        assert_eq!(
            r(&mut p, "peer [2001:db8::1]:443"),
            "peer [[REDACTED:ipv6]]:443"
        );
        assert_eq!(
            r(&mut p, "lo ::1, fe80::1: up"),
            "lo [REDACTED:ipv6], [REDACTED:ipv6]: up"
        );
        assert_eq!(r(&mut p, "m ::ffff:192.168.1.1 x"), "m [REDACTED:ipv6] x");
        assert_eq!(
            r(&mut p, "full 2001:0db8:0000:0000:0000:ff00:0042:8329"),
            "full [REDACTED:ipv6]"
        );
        for s in [
            "at 12:30:45",
            "std::net::Ipv6Addr",
            "mac aa:bb:cc:dd:ee:ff",
            "a :: b",
        ] {
            assert_eq!(r(&mut p, s), s);
        }
        assert_eq!(
            r(&mut p, "key AKIAIOSFODNN7EXAMPLE used"),
            "key [REDACTED:aws_access_key] used"
        );
        assert_eq!(
            r(&mut p, "Authorization: Bearer abc.DEF-123_~+/=="),
            "Authorization: Bearer [REDACTED:bearer_token]"
        );
        let jwt =
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(r(&mut p, &format!("t={jwt}")), "t=[REDACTED:jwt]");
        assert_eq!(
            r(&mut p, &format!("authorization: bearer {jwt}")),
            "authorization: bearer [REDACTED:bearer_token]"
        );
    }

    /// The regexes the hand-written IP scanners replaced, as they were used: the oracle for the scanners.
    fn ips_by_regex(v4: &Regex, v6: &Regex, s: &str) -> Vec<(usize, usize, usize)> {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        for m in v4.find_iter(s) {
            let (start, end) = (m.start(), m.end());
            if start > 0 && (is_word_byte(bytes[start - 1]) || bytes[start - 1] == b'.') {
                continue;
            }
            if end < bytes.len()
                && (is_word_byte(bytes[end])
                    || (bytes[end] == b'.' && bytes.get(end + 1).is_some_and(u8::is_ascii_digit)))
            {
                continue;
            }
            out.push((start, end, 0));
        }
        for m in v6.find_iter(s) {
            let start = m.start();
            if start > 0 && is_word_byte(bytes[start - 1]) {
                continue;
            }
            let mut cand = m.as_str().trim_end_matches('.');
            if cand.ends_with(':') && !cand.ends_with("::") {
                cand = &cand[..cand.len() - 1];
            }
            let end = start + cand.len();
            if end < bytes.len() && is_word_byte(bytes[end]) {
                continue;
            }
            if cand.bytes().any(|b| b.is_ascii_hexdigit()) && cand.parse::<Ipv6Addr>().is_ok() {
                out.push((start, end, 1));
            }
        }
        out
    }

    fn ips_by_scanner(s: &str) -> Vec<(usize, usize, usize)> {
        let mut spans = Vec::new();
        find_ipv4(s, 0, &mut spans);
        find_ipv6(s, 1, &mut spans);
        spans.iter().map(|sp| (sp.start, sp.end, sp.rule)).collect()
    }

    #[test]
    fn ip_scanners_find_what_the_regexes_found() {
        let mut lines: Vec<String> = Vec::new();
        let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/loghub");
        for f in std::fs::read_dir(data).expect("../shared/data/loghub beside the repository") {
            let path = f.unwrap().path();
            if path.extension().is_some_and(|e| e == "log") {
                lines.extend(
                    std::fs::read_to_string(&path)
                        .unwrap()
                        .lines()
                        .map(String::from),
                );
            }
        }
        // Random strings from the bytes that matter to the scanners (xorshift: deterministic).
        let alphabet = b"0123456789012345678901234567890123456789abcdefABCDEF:::...._-xz [/]";
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..200_000 {
            let mut line = String::new();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            for i in 0..(x % 40) {
                line.push(
                    alphabet[((x >> (i % 50)) as usize ^ (i as usize * 7)) % alphabet.len()]
                        as char,
                );
            }
            lines.push(line);
        }
        let v4 = re(
            r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])",
        );
        let v6 = re(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*");
        let mut found = [0; 2];
        for line in &lines {
            let want = ips_by_regex(&v4, &v6, line);
            for (.., kind) in &want {
                found[*kind] += 1;
            }
            assert_eq!(ips_by_scanner(line), want, "{line:?}");
        }
        eprintln!("IPv4, IPv6 addresses found: {found:?}");
        assert!(
            found[0] > 4000 && found[1] > 500,
            "the lines hold addresses to find: {found:?}"
        );
    }

    #[test]
    fn styles_and_hash() {
        let mut p =
            redactor(json!({"style": "last4", "styles": {"email": "hash"}, "hash_key": "k"}));
        assert_eq!(
            r(&mut p, "card 4111-1111-1111-1111"),
            "card ***************1111"
        );
        let a = r(&mut p, "a@b.io");
        assert!(
            a.starts_with("[REDACTED:email:") && a.len() == "[REDACTED:email:]".len() + 16,
            "{a}"
        );
        assert_eq!(a, r(&mut p, "a@b.io"), "hash is deterministic");
        assert_ne!(a, r(&mut p, "c@b.io"));
        let mut other_key = redactor(json!({"style": "hash", "hash_key": "other"}));
        assert_ne!(a, r(&mut other_key, "a@b.io"));
        // Card hashes ignore the separators.
        assert_eq!(
            r(&mut other_key, "4111 1111 1111 1111"),
            r(&mut other_key, "4111111111111111")
        );
        // Known HMAC-SHA256 value: HMAC("key", "The quick brown fox jumps over the lazy dog") = f7bc83f430538424...
        let mut p = redactor(json!({"style": "hash", "hash_key": "key", "detectors": [],
            "custom": [{"name": "fox", "pattern": "The quick brown fox jumps over the lazy dog"}]}));
        assert_eq!(
            r(&mut p, "The quick brown fox jumps over the lazy dog"),
            "[REDACTED:fox:f7bc83f430538424]"
        );
    }

    #[test]
    fn custom_rules_and_detector_selection() {
        let mut p = redactor(json!({
            "detectors": ["email"],
            "custom": [
                {"name": "ssn", "pattern": r"\b\d{3}-\d{2}-\d{4}\b"},
                {"name": "password", "pattern": r"password=(?P<secret>\S+)", "style": "last4"},
            ],
        }));
        assert_eq!(
            r(
                &mut p,
                "ssn 123-45-6789 password=hunter2xyz ip 10.0.0.1 a@b.cd"
            ),
            "ssn [REDACTED:ssn] password=******2xyz ip 10.0.0.1 [REDACTED:email]"
        );
    }

    #[test]
    fn config_errors() {
        for bad in [
            json!({"detectors": ["nope"]}),
            json!({"style": "hash"}),
            json!({"styles": {"email": "hash"}, "hash_key": ""}),
            json!({"custom": [{"name": "x", "pattern": "("}]}),
            json!({"custom": [{"name": "email", "pattern": "x"}]}),
            json!({"styles": {"unknown": "full"}}),
            json!({"stlye": "full"}),
        ] {
            assert!(testing::init::<Redact>(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn redacts_attributes_recursively_and_reports_changes() {
        let mut p = redactor(Value::Null);
        let mut ev = Event::with_message("user a@b.io logged in");
        ev.attributes.insert("ip".into(), json!("10.1.2.3"));
        ev.attributes.insert(
            "nested".into(),
            json!({"list": ["x", "AKIAIOSFODNN7EXAMPLE", 5], "n": null}),
        );
        let clean = Event::with_message("nothing here");
        let result = testing::run_raw(&mut p, &[ev, clean]);
        let out = result.results[0].event.as_ref().expect("modified");
        assert_eq!(out.message, "user [REDACTED:email] logged in");
        assert_eq!(out.attributes["ip"], json!("[REDACTED:ipv4]"));
        assert_eq!(
            out.attributes["nested"],
            json!({"list": ["x", "[REDACTED:aws_access_key]", 5], "n": null})
        );
        assert!(
            result.results[1].event.is_none(),
            "unchanged event sent back as nil"
        );
        let counters = testing::counters();
        assert_eq!(counters["redacted_email"], 1);
        assert_eq!(counters["redacted_ipv4"], 1);

        let mut p = redactor(json!({"attributes": false}));
        let mut ev = Event::with_message("x");
        ev.attributes.insert("ip".into(), json!("10.1.2.3"));
        assert_eq!(testing::run_one(&mut p, ev.clone()).1, ev);
    }
}
