//! `redact`: masks sensitive data in the message and in string attributes (recursively, in nested maps and
//! arrays; keys are left alone), and masks named attributes whole. Every event is kept.
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
//! attributes: true                  # also run the detectors on string attributes (default true)
//! fields: [card, user.ssn]          # attributes masked whole, whatever they hold (see FieldNames)
//! default_fields: true              # also mask DEFAULT_FIELDS: password, token, authorization, ...
//! ```
//!
//! Styles: `full` → `[REDACTED:email]`; `last4` → every character but the last four becomes `*`
//! (`**** **** **** 1111`); `hash` → `[REDACTED:email:<first 16 hex chars of HMAC-SHA256(hash_key, value)>]`,
//! where card numbers are hashed without their separators so one card always gives one hash.
//!
//! A named field's value is masked by the rule `fields` (`[REDACTED:fields]`, its style set by `style` or
//! `styles: {fields: ...}`); a value that is not a string is masked as its JSON text; null stays null.
//!
//! Counters: `redacted_<name>`, per match (`redacted_fields` per masked field).

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
    /// Attribute names (`password`) or paths (`user.password`) whose whole value is masked.
    pub fields: Vec<String>,
    /// Whether [`DEFAULT_FIELDS`] are masked too (in addition to `fields`).
    pub default_fields: bool,
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
            fields: Vec::new(),
            default_fields: true,
        }
    }
}

/// Attribute names masked unless `default_fields: false`: names that hold a credential whatever its
/// shape, so no detector would recognize the value. Compared as attribute names are (see [`FieldNames`]).
pub const DEFAULT_FIELDS: [&str; 17] = [
    "password",
    "passwd",
    "pwd",
    "secret",
    "client_secret",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "auth_token",
    "api_key",
    "apikey",
    "x_api_key",
    "private_key",
    "authorization",
    "cookie",
    "set_cookie",
];

/// The name of the rule that masks named fields: in `styles`, in the mask and in the counter.
pub const FIELDS_RULE: &str = "fields";

/// Whether `key` equals `name` (already normalized: ASCII lower case, `_` for `-`), ignoring ASCII case
/// and taking `-` for `_`.
fn name_eq(key: &str, name: &str) -> bool {
    key.len() == name.len()
        && key.bytes().zip(name.bytes()).all(|(k, n)| {
            let k = k.to_ascii_lowercase();
            k == n || (k == b'-' && n == b'_')
        })
}

fn normalize(name: &str) -> String {
    name.to_ascii_lowercase().replace('-', "_")
}

/// The attribute names and paths whose values are masked whole.
///
/// A name without a dot matches a key of that name at any depth (`password` matches `password`,
/// `user.password` and `a.b[3].password`); a dotted path matches from the top of the attributes only
/// (`user.password` matches `{"user": {"password": …}}`, and the flattened key `"user.password"`).
/// Arrays are walked through: `users.password` reaches the `password` of every element of `users`.
/// Keys compare ignoring ASCII case, with `-` equal to `_` (`Api-Key` matches `api_key`).
#[derive(Debug, Default)]
pub struct FieldNames {
    anywhere: Vec<String>,
    paths: Vec<Vec<String>>,
}

impl FieldNames {
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<FieldNames, String> {
        let mut f = FieldNames::default();
        for name in names {
            if name.is_empty() || name.split('.').any(str::is_empty) {
                return Err(format!(
                    "redact: `fields` entry {name:?} must be an attribute name or a dotted path (`user.password`)"
                ));
            }
            let norm = normalize(name);
            if norm.contains('.') {
                let path: Vec<String> = norm.split('.').map(String::from).collect();
                if !f.paths.contains(&path) {
                    f.paths.push(path);
                }
            } else if !f.anywhere.contains(&norm) {
                f.anywhere.push(norm);
            }
        }
        Ok(f)
    }

    pub fn is_empty(&self) -> bool {
        self.anywhere.is_empty() && self.paths.is_empty()
    }

    /// Whether the attribute at `path` (its keys from the top, each split at its dots) is masked.
    fn matches(&self, path: &[&str]) -> bool {
        let Some(last) = path.last() else {
            return false;
        };
        self.anywhere.iter().any(|n| name_eq(last, n))
            || self
                .paths
                .iter()
                .any(|p| p.len() == path.len() && path.iter().zip(p).all(|(k, n)| name_eq(k, n)))
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
    /// Named attributes, masked whole; finds nothing in text.
    Fields,
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
    /// The text rules (detectors and custom patterns), run on every string.
    rules: Vec<Rule>,
    hmac: Option<Hmac<Sha256>>,
    attributes: bool,
    counts: Vec<i64>,
    field_names: FieldNames,
    /// How named fields are masked (its matcher is [`Matcher::Fields`]).
    field_rule: Rule,
    field_count: i64,
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
            Matcher::Fields => {}
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

    /// Redacts a value in place (the text rules, on every string in it); whether anything changed.
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

    /// Masks the whole of a named field's value (kept as is when null: there is nothing to hide).
    fn mask_field(&mut self, v: &mut Value) -> bool {
        let text = match &mut *v {
            Value::Null => return false,
            Value::String(s) => std::mem::take(s),
            other => other.to_string(),
        };
        let mut out = String::with_capacity(text.len().max(24));
        self.mask(&self.field_rule, &text, &mut out);
        *v = Value::String(out);
        self.field_count += 1;
        true
    }

    /// Redacts the attributes under `path` (the keys above them, split at their dots): named fields are
    /// masked whole, and the text rules run on the other strings when `scan`.
    fn redact_attributes<'a>(
        &mut self,
        entries: impl Iterator<Item = (&'a String, &'a mut Value)>,
        path: &mut Vec<&'a str>,
        scan: bool,
    ) -> bool {
        let mut changed = false;
        for (key, v) in entries {
            let depth = path.len();
            path.extend(key.split('.'));
            changed |= if self.field_names.matches(path) {
                self.mask_field(v)
            } else {
                self.redact_attribute(v, path, scan)
            };
            path.truncate(depth);
        }
        changed
    }

    fn redact_attribute<'a>(
        &mut self,
        v: &'a mut Value,
        path: &mut Vec<&'a str>,
        scan: bool,
    ) -> bool {
        match v {
            Value::Object(map) => self.redact_attributes(map.iter_mut(), path, scan),
            // Arrays are transparent to field paths; every element is visited.
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |c, i| self.redact_attribute(i, path, scan) | c),
            other if scan => self.redact_value(other),
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
        if self.field_names.is_empty() {
            if self.attributes {
                for v in event.attributes.values_mut() {
                    changed |= self.redact_value(v);
                }
            }
        } else {
            let scan = self.attributes;
            changed |= self.redact_attributes(event.attributes.iter_mut(), &mut Vec::new(), scan);
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
        if self.field_count > 0 {
            weir_sdk::counter_add(&self.field_rule.counter, self.field_count);
            self.field_count = 0;
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
            if c.name == FIELDS_RULE {
                return Err(format!(
                    "redact: custom rule name `{FIELDS_RULE}` is taken (it names the `fields` masking in `styles`)"
                ));
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
        let defaults = config.default_fields.then_some(DEFAULT_FIELDS.as_slice());
        let field_names = FieldNames::new(
            defaults
                .into_iter()
                .flatten()
                .copied()
                .chain(config.fields.iter().map(String::as_str)),
        )?;
        let field_rule = Rule {
            name: FIELDS_RULE.into(),
            counter: format!("redacted_{FIELDS_RULE}"),
            style: config
                .styles
                .get(FIELDS_RULE)
                .copied()
                .unwrap_or(config.style),
            matcher: Matcher::Fields,
        };
        for key in config.styles.keys() {
            let fields = key == FIELDS_RULE && !field_names.is_empty();
            if !fields && !rules.iter().any(|r| &r.name == key) {
                return Err(format!("redact: `styles` names `{key}`, which is not an enabled detector, custom rule or `fields`"));
            }
        }
        let hmac = match config.hash_key.as_deref() {
            Some(k) if !k.is_empty() => {
                Some(Hmac::<Sha256>::new_from_slice(k.as_bytes()).map_err(|e| e.to_string())?)
            }
            _ => None,
        };
        let field_hash = !field_names.is_empty() && field_rule.style == Style::Hash;
        if hmac.is_none() && (field_hash || rules.iter().any(|r| r.style == Style::Hash)) {
            return Err("redact: style `hash` needs a non-empty `hash_key`".into());
        }
        let counts = vec![0; rules.len()];
        Ok(Redact {
            rules,
            hmac,
            attributes: config.attributes,
            counts,
            field_names,
            field_rule,
            field_count: 0,
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

#[cfg(test)]
mod field_tests {
    use super::*;
    use serde_json::json;
    use weir_sdk::testing;

    fn event(attributes: Value) -> Event {
        let mut ev = Event::with_message("login ok");
        ev.attributes = serde_json::from_value(attributes).unwrap();
        ev
    }

    fn run(config: Value, attributes: Value) -> Value {
        let mut p: Redact = testing::init(config).unwrap();
        let (v, out) = testing::run_one(&mut p, event(attributes));
        assert_eq!(v, Verdict::Keep);
        serde_json::to_value(&out.attributes).unwrap()
    }

    /// The README's example (`config: {fields: [password, card]}`) loads and masks both fields, whatever
    /// their values hold (a number is masked too: no detector would have recognized it as secret).
    #[test]
    fn readme_example_masks_password_and_card() {
        let out = run(
            json!({"fields": ["password", "card"]}),
            json!({"user": "jane", "password": "hunter2", "card": 4111111111111111u64, "amount": 12}),
        );
        assert_eq!(
            out,
            json!({"user": "jane", "password": "[REDACTED:fields]", "card": "[REDACTED:fields]", "amount": 12})
        );
        assert_eq!(testing::counters()["redacted_fields"], 2);
    }

    /// Without any config, commonly sensitive names are masked: a `password` attribute never passes.
    #[test]
    fn sensitive_names_are_masked_by_default() {
        let out = run(
            Value::Null,
            json!({"password": "hunter2", "Authorization": "Basic dXNlcjpwYXNz", "api-key": "k-123",
                   "db": {"passwd": "p", "port": 5432}, "token": ["a", "b"], "secret": {"x": 1},
                   "tokens_used": 17, "user": "jane"}),
        );
        assert_eq!(
            out,
            json!({"password": "[REDACTED:fields]", "Authorization": "[REDACTED:fields]",
                   "api-key": "[REDACTED:fields]", "db": {"passwd": "[REDACTED:fields]", "port": 5432},
                   "token": "[REDACTED:fields]", "secret": "[REDACTED:fields]",
                   "tokens_used": 17, "user": "jane"})
        );
        // The configured names add to the defaults; `default_fields: false` leaves only them.
        let out = run(
            json!({"fields": ["card"]}),
            json!({"password": "x", "card": "y"}),
        );
        assert_eq!(
            out,
            json!({"password": "[REDACTED:fields]", "card": "[REDACTED:fields]"})
        );
        let out = run(
            json!({"fields": ["card"], "default_fields": false}),
            json!({"password": "x", "card": "y"}),
        );
        assert_eq!(out, json!({"password": "x", "card": "[REDACTED:fields]"}));
    }

    /// A bare name matches at any depth (through arrays too); a dotted path only from the top, nested or as
    /// a flattened key.
    #[test]
    fn nested_paths() {
        let config = json!({"default_fields": false, "fields": ["pin", "user.ssn"]});
        let out = run(
            config.clone(),
            json!({"pin": 1, "a": {"b": [{"pin": "2"}, {"c": 3}]},
                   "user": {"ssn": "078-05-1120", "name": "x"}, "user.ssn": "flat",
                   "other": {"user": {"ssn": "not anchored"}}, "ssn": "top"}),
        );
        assert_eq!(
            out,
            json!({"pin": "[REDACTED:fields]", "a": {"b": [{"pin": "[REDACTED:fields]"}, {"c": 3}]},
                   "user": {"ssn": "[REDACTED:fields]", "name": "x"}, "user.ssn": "[REDACTED:fields]",
                   "other": {"user": {"ssn": "not anchored"}}, "ssn": "top"})
        );
        // Paths through arrays: `users.password` reaches every element.
        let out = run(
            json!({"default_fields": false, "fields": ["users.pw"]}),
            json!({"users": [{"pw": "a"}, {"pw": "b", "n": 1}]}),
        );
        assert_eq!(
            out,
            json!({"users": [{"pw": "[REDACTED:fields]"}, {"pw": "[REDACTED:fields]", "n": 1}]})
        );
    }

    #[test]
    fn styles_apply_to_fields_and_null_stays_null() {
        let out = run(
            json!({"styles": {"fields": "last4"}, "fields": ["card"]}),
            json!({"card": "4111111111111111", "password": null, "pin": 1234567}),
        );
        assert_eq!(
            out,
            json!({"card": "************1111", "password": null, "pin": 1234567})
        );
        let mut p: Redact =
            testing::init(json!({"styles": {"fields": "hash"}, "hash_key": "k"})).unwrap();
        let (_, a) = testing::run_one(&mut p, event(json!({"token": "abc"})));
        let (_, b) = testing::run_one(&mut p, event(json!({"token": "abc"})));
        let (_, c) = testing::run_one(&mut p, event(json!({"token": "abd"})));
        let masked = a.attributes["token"].as_str().unwrap().to_string();
        assert!(
            masked.starts_with("[REDACTED:fields:") && masked.len() == 34,
            "{masked}"
        );
        assert_eq!(a.attributes["token"], b.attributes["token"]);
        assert_ne!(a.attributes["token"], c.attributes["token"]);
    }

    /// Named fields are masked even where detectors do not look (`attributes: false`), and the masked value
    /// is not scanned again; an event whose only change is a field is reported as modified.
    #[test]
    fn fields_with_detectors() {
        let mut p: Redact = testing::init(json!({"attributes": false})).unwrap();
        let mut ev = event(json!({"password": "a@b.io", "ip": "10.0.0.1"}));
        ev.message = "from a@b.io".into();
        let result = testing::run_raw(&mut p, &[ev]);
        let out = result.results[0].event.as_ref().expect("modified");
        assert_eq!(out.message, "from [REDACTED:email]");
        assert_eq!(
            serde_json::to_value(&out.attributes).unwrap(),
            json!({"password": "[REDACTED:fields]", "ip": "10.0.0.1"})
        );
    }

    #[test]
    fn field_config_errors() {
        for bad in [
            json!({"fields": [""]}),
            json!({"fields": ["a..b"]}),
            json!({"fields": ["a."]}),
            json!({"fields": "password"}),
            json!({"custom": [{"name": "fields", "pattern": "x"}]}),
        ] {
            assert!(testing::init::<Redact>(bad.clone()).is_err(), "{bad}");
        }
        // With no names at all, `styles: {fields: ...}` names nothing that runs.
        assert!(testing::init::<Redact>(
            json!({"default_fields": false, "styles": {"fields": "last4"}})
        )
        .is_err());
    }
}
