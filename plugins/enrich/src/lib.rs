//! `enrich`: adds static tags and attributes to the events that match a query. Every event is kept.
//!
//! ```yaml
//! config:
//!   rules:                                   # all rules are tried, in order
//!     - query: 'service:payments* env:prod -status:debug'
//!       tags: ["team:payments", "pci"]
//!       attributes: { owner: payments-oncall, tier: 1 }
//!     - query: '*'
//!       tags: ["via:weir"]
//! ```
//!
//! Query language (small on purpose):
//!
//! * a query is whitespace-separated terms, all of which must hold (implicit AND); `*` alone matches everything;
//! * a term is `field:value`; a leading `-` negates it;
//! * fields: `service`, `host`, `source`, `status`, `message`; `tags` (any tag, compared whole: `tags:pci`,
//!   `tags:env:prod`); `@a.b.c` (the attribute at that path: the literal key `a.b.c` first, else nested maps;
//!   strings, numbers and booleans compare by their text, arrays match when any element does); any other name
//!   `key` means the tag `key:value` (`env:prod` matches the tag `env:prod`);
//! * values may be double-quoted (`message:"disk full"`, `\"` and `\\` escape) and may contain `*`, which
//!   matches any run of characters (`web-*`, `*.internal`, `*timeout*`); `field:*` means "present";
//! * matching is ASCII case-insensitive; a missing field matches nothing (so `-host:x` holds when there is no host),
//!   except `status`: an event without one has status `info`, as Datadog (and the proxy's rules and quotas) read it.
//!
//! Tags already on the event are not added twice. Rule attributes overwrite attributes of the same name. Each
//! rule sees the event as left by the rules before it. Counters: `enriched` (events changed), `rule_<index>`
//! (per rule match).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use weir_sdk::{Event, Plugin, Verdict};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub query: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub rules: Vec<RuleConfig>,
}

/// The status of an event that has none: Datadog's default, as the proxy reads it too.
pub const DEFAULT_STATUS: &str = "info";

/// What a term looks at.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Service,
    Host,
    Source,
    Status,
    Message,
    /// Any tag, compared whole.
    Tags,
    /// The tag `key:value`.
    Tag(String),
    /// An attribute path (`@a.b`), without the `@`.
    Attribute(String),
}

/// A value pattern: literal pieces separated by `*`, stored lower-cased.
#[derive(Debug, Clone, PartialEq)]
pub struct Glob {
    parts: Vec<String>,
    leading_star: bool,
    trailing_star: bool,
}

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        let lower = pattern.to_ascii_lowercase();
        let parts: Vec<String> = lower
            .split('*')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        Glob {
            leading_star: lower.starts_with('*'),
            trailing_star: lower.ends_with('*'),
            parts,
        }
    }

    /// `*` (or `**`…): anything, including the empty string.
    pub fn is_any(&self) -> bool {
        self.parts.is_empty() && self.leading_star
    }

    pub fn matches(&self, text: &str) -> bool {
        let text = text.to_ascii_lowercase();
        if self.parts.is_empty() {
            return self.leading_star || text.is_empty();
        }
        let mut rest = text.as_str();
        let last = self.parts.len() - 1;
        for (i, part) in self.parts.iter().enumerate() {
            if i == 0 && !self.leading_star {
                if !rest.starts_with(part.as_str()) {
                    return false;
                }
                rest = &rest[part.len()..];
                if i == last && !self.trailing_star {
                    return rest.is_empty();
                }
                continue;
            }
            if i == last && !self.trailing_star {
                return rest.len() >= part.len() && rest.ends_with(part.as_str());
            }
            match rest.find(part.as_str()) {
                Some(pos) => rest = &rest[pos + part.len()..],
                None => return false,
            }
        }
        true
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    pub negated: bool,
    pub field: Field,
    pub value: Glob,
}

/// A parsed query: `None` terms means `*` (everything).
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    terms: Option<Vec<Term>>,
}

/// Splits a query into raw terms, honouring double quotes in values.
fn tokenize(query: &str) -> Result<Vec<(String, bool)>, String> {
    // (token with quotes removed, whether the value part was quoted)
    let mut out = Vec::new();
    let mut chars = query.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut tok = String::new();
        let mut quoted = false;
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() {
                break;
            }
            chars.next();
            if c == '"' {
                quoted = true;
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\\' => match chars.next() {
                            Some(e) => tok.push(e),
                            None => break,
                        },
                        c => tok.push(c),
                    }
                }
                if !closed {
                    return Err(format!("unterminated quote in query {query:?}"));
                }
            } else {
                tok.push(c);
            }
        }
        out.push((tok, quoted));
    }
    Ok(out)
}

impl Query {
    pub fn parse(query: &str) -> Result<Query, String> {
        let tokens = tokenize(query)?;
        if tokens.is_empty() {
            return Err("empty query (use `*` to match every event)".into());
        }
        if tokens.len() == 1 && tokens[0].0 == "*" && !tokens[0].1 {
            return Ok(Query { terms: None });
        }
        let mut terms = Vec::with_capacity(tokens.len());
        for (tok, _) in tokens {
            let (negated, body) = match tok.strip_prefix('-') {
                Some(b) => (true, b),
                None => (false, tok.as_str()),
            };
            let Some((name, value)) = body.split_once(':') else {
                return Err(format!(
                    "term {tok:?} is not `field:value` (use `message:*{body}*` to search the message, `*` for all)"
                ));
            };
            if value.is_empty() {
                return Err(format!(
                    "term {tok:?} has an empty value (use `{name}:*` for \"present\")"
                ));
            }
            let field = match name.to_ascii_lowercase().as_str() {
                "service" => Field::Service,
                "host" => Field::Host,
                "source" => Field::Source,
                "status" => Field::Status,
                "message" => Field::Message,
                "tags" => Field::Tags,
                _ if name.starts_with('@') => {
                    let path = &name[1..];
                    if path.is_empty() || path.split('.').any(str::is_empty) {
                        return Err(format!("term {tok:?}: bad attribute path {name:?}"));
                    }
                    Field::Attribute(path.to_string())
                }
                "" => return Err(format!("term {tok:?} has no field name")),
                _ => Field::Tag(name.to_ascii_lowercase()),
            };
            terms.push(Term {
                negated,
                field,
                value: Glob::new(value),
            });
        }
        Ok(Query { terms: Some(terms) })
    }

    pub fn matches(&self, event: &Event) -> bool {
        match &self.terms {
            None => true,
            Some(terms) => terms.iter().all(|t| t.matches(event) != t.negated),
        }
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn value_matches(v: &Value, glob: &Glob) -> bool {
    match v {
        Value::Array(items) => items.iter().any(|i| value_matches(i, glob)),
        Value::Null => false,
        Value::Object(_) => glob.is_any(),
        other => scalar_text(other).is_some_and(|s| glob.matches(&s)),
    }
}

fn lookup<'a>(attrs: &'a BTreeMap<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = attrs.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut cur = attrs.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

impl Term {
    /// Whether the (non-negated) term holds.
    fn matches(&self, e: &Event) -> bool {
        let opt = |o: &Option<String>| o.as_deref().is_some_and(|s| self.value.matches(s));
        match &self.field {
            Field::Service => opt(&e.service),
            Field::Host => opt(&e.host),
            Field::Source => opt(&e.source),
            Field::Status => self
                .value
                .matches(e.status.as_deref().unwrap_or(DEFAULT_STATUS)),
            Field::Message => self.value.matches(&e.message),
            Field::Tags => e.tags.iter().any(|t| self.value.matches(t)),
            Field::Tag(key) => e.tags.iter().any(|t| {
                t.split_once(':')
                    .is_some_and(|(k, v)| k.eq_ignore_ascii_case(key) && self.value.matches(v))
            }),
            Field::Attribute(path) => {
                lookup(&e.attributes, path).is_some_and(|v| value_matches(v, &self.value))
            }
        }
    }
}

pub struct Rule {
    pub query: Query,
    pub tags: Vec<String>,
    pub attributes: BTreeMap<String, Value>,
    counter: String,
}

pub struct Enrich {
    rules: Vec<Rule>,
}

impl Plugin for Enrich {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.rules.is_empty() {
            return Err("enrich: `rules` must list at least one {query, tags, attributes}".into());
        }
        let mut rules = Vec::with_capacity(config.rules.len());
        for (i, r) in config.rules.into_iter().enumerate() {
            let query = Query::parse(&r.query).map_err(|e| format!("enrich: rule {i}: {e}"))?;
            if r.tags.is_empty() && r.attributes.is_empty() {
                return Err(format!("enrich: rule {i} adds neither tags nor attributes"));
            }
            if let Some(t) = r.tags.iter().find(|t| t.is_empty()) {
                return Err(format!("enrich: rule {i}: empty tag {t:?}"));
            }
            rules.push(Rule {
                query,
                tags: r.tags,
                attributes: r.attributes,
                counter: format!("rule_{i}"),
            });
        }
        Ok(Enrich { rules })
    }

    fn process(&mut self, event: &mut Event) -> Verdict {
        self.enrich(event);
        Verdict::Keep
    }

    // Enrich knows which events it changed: no copy of the batch to compare with.
    fn process_batch_tracked(&mut self, events: &mut [Event]) -> Vec<(Verdict, bool)> {
        events
            .iter_mut()
            .map(|e| (Verdict::Keep, self.enrich(e)))
            .collect()
    }
}

impl Enrich {
    /// Applies every matching rule; whether the event changed.
    fn enrich(&mut self, event: &mut Event) -> bool {
        let mut changed = false;
        for rule in &self.rules {
            if !rule.query.matches(event) {
                continue;
            }
            weir_sdk::counter_add(&rule.counter, 1);
            for t in &rule.tags {
                if !event.tags.contains(t) {
                    event.tags.push(t.clone());
                    changed = true;
                }
            }
            for (k, v) in &rule.attributes {
                if event.attributes.get(k) != Some(v) {
                    event.attributes.insert(k.clone(), v.clone());
                    changed = true;
                }
            }
        }
        if changed {
            weir_sdk::counter_add("enriched", 1);
        }
        changed
    }
}

weir_sdk::export_plugin!(Enrich);

#[cfg(test)]
mod tests;
