//! The compiled form of a query and its evaluation against an event. Every
//! needle is prepared at compile time (case-folded, numbers parsed, wildcard
//! patterns split into pieces) so that evaluation never allocates.
use crate::event::Event;
use serde_json::{Map, Number, Value};
use std::cmp::Ordering;

#[derive(Debug, Clone)]
pub(super) enum Node {
    /// `*`
    All,
    And(Box<[Node]>),
    Or(Box<[Node]>),
    Not(Box<Node>),
    /// A bare word, a phrase, or a `message:` value: full-text over the message.
    Text(TextMatch),
    Field(Field, Test),
}

impl Node {
    pub(super) fn matches(&self, e: &Event) -> bool {
        match self {
            Node::All => true,
            Node::And(parts) => parts.iter().all(|n| n.matches(e)),
            Node::Or(parts) => parts.iter().any(|n| n.matches(e)),
            Node::Not(n) => !n.matches(e),
            Node::Text(t) => t.matches(&e.message),
            Node::Field(field, test) => match field {
                Field::Message => test.str(&e.message, true),
                Field::Host => e.host.as_deref().is_some_and(|s| test.str(s, true)),
                Field::Service => e.service.as_deref().is_some_and(|s| test.str(s, true)),
                Field::Source => e.source.as_deref().is_some_and(|s| test.str(s, true)),
                // Datadog's status remapper gives a log without one `info`.
                Field::Status => test.str(e.status_or_default(), true),
                Field::Tag(key) => e.tags.iter().any(|t| {
                    t.split_once(':')
                        .is_some_and(|(k, v)| eq_folded(k, key) && test.str(v, true))
                }),
                Field::Attr(path) => any_at(&e.attributes, path, &mut |v| test.value(v)),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Field {
    /// `message:` with a comparison or range (plain values compile to `Node::Text`).
    Message,
    Host,
    Service,
    Source,
    Status,
    /// A tag key, case-folded.
    Tag(Box<str>),
    /// An attribute path as written after `@`.
    Attr(Box<str>),
}

impl Field {
    /// Only `@attributes` compare case-sensitively (see the module docs).
    pub(super) fn case_insensitive(&self) -> bool {
        !matches!(self, Field::Attr(_))
    }
}

/// What a field's value must satisfy. For case-insensitive fields the needles
/// are stored folded.
#[derive(Debug, Clone)]
pub(super) enum Test {
    /// `field:*`: present (for attributes: present and not null).
    Exists,
    Exact(Literal),
    Glob(Glob),
    Range(Range),
}

impl Test {
    /// Tests a string value; `ci` means the needle is folded and `s` must be too.
    fn str(&self, s: &str, ci: bool) -> bool {
        match self {
            Test::Exists => true,
            Test::Exact(lit) => {
                if ci {
                    eq_folded(s, &lit.text)
                } else {
                    s == &*lit.text
                }
            }
            Test::Glob(g) => g.matches(s, ci),
            Test::Range(r) => r.contains_str(s, ci),
        }
    }

    /// Tests an attribute value (case-sensitive). Arrays match when any element does.
    fn value(&self, v: &Value) -> bool {
        match v {
            Value::Null => false,
            Value::Array(items) => items.iter().any(|x| self.value(x)),
            Value::String(s) => self.str(s, false),
            Value::Number(n) => match self {
                Test::Exists => true,
                Test::Exact(lit) => lit.num.as_ref().is_some_and(|x| x.eq_json(n)),
                Test::Glob(_) => false,
                Test::Range(r) => n.as_f64().is_some_and(|x| r.contains_num(x)),
            },
            Value::Bool(b) => match self {
                Test::Range(_) => false,
                _ => self.str(if *b { "true" } else { "false" }, false),
            },
            Value::Object(_) => matches!(self, Test::Exists),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Literal {
    pub(super) text: Box<str>,
    pub(super) num: Option<Num>,
}

impl Literal {
    pub(super) fn new(text: &str, ci: bool) -> Literal {
        Literal {
            text: fold_str(text, ci),
            num: Num::parse(text),
        }
    }
}

/// A number literal, kept as an integer too so large ids compare exactly.
#[derive(Debug, Clone, Copy)]
pub(super) struct Num {
    f: f64,
    i: Option<i64>,
    u: Option<u64>,
}

impl Num {
    fn parse(text: &str) -> Option<Num> {
        let f = text.parse::<f64>().ok().filter(|f| f.is_finite())?;
        Some(Num {
            f,
            i: text.parse().ok(),
            u: text.parse().ok(),
        })
    }

    fn eq_json(&self, n: &Number) -> bool {
        if let (Some(a), Some(b)) = (n.as_i64(), self.i) {
            return a == b;
        }
        if let (Some(a), Some(b)) = (n.as_u64(), self.u) {
            return a == b;
        }
        n.as_f64() == Some(self.f)
    }
}

/// One end of a range; `None` in `Range` means unbounded (`*`).
#[derive(Debug, Clone)]
pub(super) struct Bound {
    text: Box<str>,
    num: Option<f64>,
}

impl Bound {
    pub(super) fn new(text: &str, ci: bool) -> Bound {
        Bound {
            text: fold_str(text, ci),
            num: Num::parse(text).map(|n| n.f),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Range {
    pub(super) lo: Option<Bound>,
    pub(super) lo_inclusive: bool,
    pub(super) hi: Option<Bound>,
    pub(super) hi_inclusive: bool,
}

impl Range {
    fn accepts(&self, lo: Option<Ordering>, hi: Option<Ordering>) -> bool {
        let lo_ok = match lo {
            None => true,
            Some(o) => o == Ordering::Greater || (self.lo_inclusive && o == Ordering::Equal),
        };
        let hi_ok = match hi {
            None => true,
            Some(o) => o == Ordering::Less || (self.hi_inclusive && o == Ordering::Equal),
        };
        lo_ok && hi_ok
    }

    /// Numeric comparison: every present bound must be a number.
    fn contains_num(&self, x: f64) -> bool {
        let cmp = |b: &Option<Bound>| match b {
            None => Some(None),
            Some(b) => b.num.and_then(|n| x.partial_cmp(&n)).map(Some),
        };
        match (cmp(&self.lo), cmp(&self.hi)) {
            (Some(lo), Some(hi)) => self.accepts(lo, hi),
            _ => false,
        }
    }

    /// Lexical comparison (by code point), folded when `ci`.
    fn contains_str(&self, s: &str, ci: bool) -> bool {
        let cmp = |b: &Option<Bound>| {
            b.as_ref().map(|b| {
                if ci {
                    s.chars().map(fold).cmp(b.text.chars())
                } else {
                    s.cmp(&b.text)
                }
            })
        };
        self.accepts(cmp(&self.lo), cmp(&self.hi))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Piece {
    Char(char),
    /// `?`: exactly one character.
    One,
    /// `*`: any run of characters, including none.
    Star,
}

/// A wildcard pattern matched against a whole value.
#[derive(Debug, Clone)]
pub(super) struct Glob(Box<[Piece]>);

impl Glob {
    pub(super) fn new(pieces: &[Piece], ci: bool) -> Glob {
        Glob(
            pieces
                .iter()
                .map(|p| {
                    if let Piece::Char(c) = p {
                        Piece::Char(fold_if(*c, ci))
                    } else {
                        *p
                    }
                })
                .collect(),
        )
    }

    /// Iterative matching that backtracks only to the last `*`: O(pattern × text), no allocation.
    fn matches(&self, text: &str, ci: bool) -> bool {
        let pat = &self.0;
        let (mut p, mut t) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        loop {
            let c = text[t..].chars().next();
            match (pat.get(p), c) {
                (Some(Piece::Star), _) => {
                    p += 1;
                    star = Some((p, t));
                    continue;
                }
                (Some(Piece::One), Some(c)) => {
                    p += 1;
                    t += c.len_utf8();
                    continue;
                }
                (Some(Piece::Char(pc)), Some(c)) if *pc == fold_if(c, ci) => {
                    p += 1;
                    t += c.len_utf8();
                    continue;
                }
                (None, None) => return true,
                _ => {}
            }
            // Mismatch: let the last `*` swallow one more character.
            let Some((sp, st)) = star else { return false };
            let Some(c) = text[st..].chars().next() else {
                return false;
            };
            star = Some((sp, st + c.len_utf8()));
            p = sp;
            t = st + c.len_utf8();
        }
    }
}

/// Full-text matching: the term's tokens must match consecutive message
/// tokens (case-insensitive, each query token a pattern over one message token).
#[derive(Debug, Clone)]
pub(super) struct TextMatch {
    tokens: Box<[Glob]>,
    /// For a term without any word character (say `"=>"`): a folded substring.
    substring: Box<str>,
    /// The longest run of ASCII word characters the term spells out (lowercase):
    /// an ASCII message without it cannot match, which a byte search tells
    /// far faster than tokenizing the message.
    required: Box<[u8]>,
}

impl TextMatch {
    pub(super) fn new(pieces: &[Piece]) -> TextMatch {
        let mut tokens = Vec::new();
        for run in pieces.split(|p| matches!(p, Piece::Char(c) if !is_word(*c))) {
            if !run.is_empty() {
                tokens.push(Glob::new(run, true));
            }
        }
        let substring = pieces
            .iter()
            .filter_map(|p| {
                if let Piece::Char(c) = p {
                    Some(fold(*c))
                } else {
                    None
                }
            })
            .collect();
        let mut required: &[Piece] = &[];
        for run in pieces.split(|p| !matches!(p, Piece::Char(c) if c.is_ascii() && is_word(*c))) {
            if run.len() > required.len() {
                required = run;
            }
        }
        let required = required
            .iter()
            .map(|p| {
                if let Piece::Char(c) = p {
                    c.to_ascii_lowercase() as u8
                } else {
                    unreachable!()
                }
            })
            .collect();
        TextMatch {
            tokens: tokens.into(),
            substring,
            required,
        }
    }

    fn matches(&self, message: &str) -> bool {
        if self.tokens.is_empty() {
            return contains_folded(message, &self.substring);
        }
        // Only for ASCII messages: elsewhere case folding can map other characters onto ASCII ones.
        if !self.required.is_empty()
            && message.is_ascii()
            && !contains_ascii_ci(message.as_bytes(), &self.required)
        {
            return false;
        }
        Tokens::new(message, 0).any(|(start, _)| {
            let mut run = Tokens::new(message, start);
            self.tokens
                .iter()
                .all(|g| run.next().is_some_and(|(_, tok)| g.matches(tok, true)))
        })
    }
}

/// Whether `hay` contains `needle` (lowercase ASCII), ignoring ASCII case.
fn contains_ascii_ci(hay: &[u8], needle: &[u8]) -> bool {
    let n = needle.len();
    if hay.len() < n {
        return false;
    }
    let first = needle[0];
    memchr::memchr2_iter(first, first.to_ascii_uppercase(), &hay[..=hay.len() - n])
        .any(|i| hay[i..i + n].eq_ignore_ascii_case(needle))
}

/// Word characters: letters, digits and `_`; everything else separates tokens.
fn is_word(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphanumeric() || c == '_'
    } else {
        c.is_alphanumeric()
    }
}

/// The message's tokens from byte offset `pos`, with their offsets.
struct Tokens<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Tokens<'a> {
    fn new(s: &'a str, pos: usize) -> Tokens<'a> {
        Tokens { s, pos }
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = (usize, &'a str);
    fn next(&mut self) -> Option<Self::Item> {
        let start = self.pos + self.s[self.pos..].find(is_word)?;
        let end = self.s[start..]
            .find(|c: char| !is_word(c))
            .map_or(self.s.len(), |n| start + n);
        self.pos = end;
        Some((start, &self.s[start..end]))
    }
}

/// Simple case folding: one lowercase char, or the char itself when lowercasing
/// would expand it (so it can be compared char by char without allocating).
pub(super) fn fold(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    let mut lower = c.to_lowercase();
    match (lower.next(), lower.next()) {
        (Some(l), None) => l,
        _ => c,
    }
}

fn fold_if(c: char, ci: bool) -> char {
    if ci {
        fold(c)
    } else {
        c
    }
}

pub(super) fn fold_str(s: &str, ci: bool) -> Box<str> {
    s.chars().map(|c| fold_if(c, ci)).collect()
}

/// `s` equals the already-folded `folded`, ignoring case.
fn eq_folded(s: &str, folded: &str) -> bool {
    s.chars().map(fold).eq(folded.chars())
}

fn contains_folded(hay: &str, folded: &str) -> bool {
    folded.is_empty()
        || hay.char_indices().any(|(i, _)| {
            let mut h = hay[i..].chars().map(fold);
            folded.chars().all(|n| h.next() == Some(n))
        })
}

/// Calls `f` on every value at `path`; true as soon as one call is. A dot
/// descends into an object (or into each object of an array), but a key that
/// itself contains dots (`"http.url": ...`) matches too.
fn any_at(map: &Map<String, Value>, path: &str, f: &mut dyn FnMut(&Value) -> bool) -> bool {
    if map.get(path).is_some_and(&mut *f) {
        return true;
    }
    path.match_indices('.').any(|(i, _)| {
        map.get(&path[..i])
            .is_some_and(|v| descend(v, &path[i + 1..], f))
    })
}

fn descend(v: &Value, rest: &str, f: &mut dyn FnMut(&Value) -> bool) -> bool {
    match v {
        Value::Object(m) => any_at(m, rest, f),
        Value::Array(items) => items.iter().any(|x| descend(x, rest, f)),
        _ => false,
    }
}
