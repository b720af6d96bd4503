//! `grok`: extracts fields from a message (or a string attribute) with grok patterns, as Logstash's grok filter
//! does, and stores them as attributes. Every event is kept.
//!
//! ```yaml
//! config:
//!   source: message              # default: the message; otherwise an attribute path (`a.b` walks nested maps)
//!   target: parsed               # optional: nest the captures under this attribute (default: top level)
//!   keep_empty_captures: false   # default false: captures that matched the empty string are not stored
//!   custom_patterns:
//!     SSHPID: '[0-9]+'
//!   patterns:                    # tried in order, the first that matches wins
//!     - name: sshd
//!       pattern: '^%{SYSLOGTIMESTAMP:ts} %{SYSLOGHOST:host} sshd\[%{SSHPID:pid:int}\]: %{GREEDYDATA:msg}$'
//!     - name: apache
//!       pattern: '%{COMBINEDAPACHELOG}'
//! ```
//!
//! Syntax: `%{SYNTAX}` matches without capturing, `%{SYNTAX:field}` captures a string, `%{SYNTAX:field:int}` and
//! `%{SYNTAX:field:float}` convert (a value that does not convert stays a string). A field written `[a][b]` is
//! nested (`{"a": {"b": …}}`); other names are used as they are. Raw regex named groups (`(?P<name>…)` or
//! `(?<name>…)`) in a pattern capture strings too. Patterns are searched, not anchored: use `^`/`$` to anchor.
//!
//! A matching event gets its captures and the attribute `grok_pattern` (the matching pattern's `name`). A
//! non-matching event is kept unchanged. Counters: `grok_match`, `grok_nomatch`.
//!
//! The built-in library (see [`patterns::BUILTIN`]) follows Logstash's `grok-patterns`, adapted to the `regex`
//! crate (no lookaround: boundary guards become `\b` or are dropped). All patterns compile once, at init.

pub mod patterns;

use std::collections::{BTreeMap, HashMap};

use regex::{Regex, RegexBuilder};
use serde::Deserialize;
use serde_json::{Map, Number, Value};
use weir_sdk::{Event, Fields, Plugin, Verdict};

/// The attribute holding the name of the pattern that matched.
pub const PATTERN_ATTRIBUTE: &str = "grok_pattern";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedPattern {
    pub name: String,
    pub pattern: String,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub patterns: Vec<NamedPattern>,
    pub custom_patterns: BTreeMap<String, String>,
    pub source: Option<String>,
    pub target: Option<String>,
    pub keep_empty_captures: bool,
}

/// How a capture is converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    String,
    Int,
    Float,
}

#[derive(Debug, Clone)]
struct Field {
    /// Capture group index in the compiled regex.
    group: usize,
    /// Path of the attribute (one element unless written `[a][b]`).
    path: Vec<String>,
    conversion: Conversion,
}

/// One compiled grok expression.
#[derive(Debug, Clone)]
pub struct Grok {
    pub name: String,
    regex: Regex,
    fields: Vec<Field>,
}

/// A value extracted by a match.
pub type Captures = Vec<(Vec<String>, Value)>;

impl Grok {
    /// The compiled regular expression (after expansion of every `%{…}`).
    pub fn regex(&self) -> &Regex {
        &self.regex
    }

    /// Matches `text`; on success, the captured fields in pattern order (unmatched and, unless `keep_empty`,
    /// empty captures left out).
    pub fn captures(&self, text: &str, keep_empty: bool) -> Option<Captures> {
        let caps = self.regex.captures(text)?;
        let mut out = Vec::with_capacity(self.fields.len());
        for f in &self.fields {
            let Some(m) = caps.get(f.group) else { continue };
            let s = m.as_str();
            if s.is_empty() && !keep_empty {
                continue;
            }
            out.push((f.path.clone(), convert(s, f.conversion)));
        }
        Some(out)
    }
}

fn convert(s: &str, c: Conversion) -> Value {
    match c {
        Conversion::String => Value::String(s.to_string()),
        Conversion::Int => match s.trim().parse::<i64>() {
            Ok(v) => Value::Number(v.into()),
            // Logstash truncates "3.7" to 3 for :int.
            Err(_) => match s.trim().parse::<f64>() {
                Ok(f) if f.is_finite() && f.abs() < 9.2e18 => {
                    Value::Number((f.trunc() as i64).into())
                }
                _ => Value::String(s.to_string()),
            },
        },
        Conversion::Float => match s.trim().parse::<f64>().ok().and_then(Number::from_f64) {
            Some(n) => Value::Number(n),
            None => Value::String(s.to_string()),
        },
    }
}

/// The pattern library: built-ins plus custom patterns (custom ones override built-ins of the same name).
#[derive(Debug, Clone)]
pub struct Library {
    defs: HashMap<String, String>,
}

impl Default for Library {
    fn default() -> Self {
        Library {
            defs: patterns::BUILTIN
                .iter()
                .map(|(n, d)| (n.to_string(), d.to_string()))
                .collect(),
        }
    }
}

fn valid_pattern_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

struct Expander<'a> {
    lib: &'a Library,
    next: usize,
    fields: Vec<(String, String, Conversion)>, // (group name, semantic, conversion)
    stack: Vec<String>,
}

impl Library {
    /// Adds or replaces a pattern definition.
    pub fn add(&mut self, name: &str, definition: &str) -> Result<(), String> {
        if !valid_pattern_name(name) {
            return Err(format!(
                "invalid custom pattern name {name:?} (letters, digits and _ only)"
            ));
        }
        self.defs.insert(name.to_string(), definition.to_string());
        Ok(())
    }

    /// Whether a pattern of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.defs.contains_key(name)
    }

    /// Expands and compiles a grok expression.
    pub fn compile(&self, name: &str, pattern: &str) -> Result<Grok, String> {
        let mut ex = Expander {
            lib: self,
            next: 0,
            fields: Vec::new(),
            stack: Vec::new(),
        };
        let expanded = ex
            .expand(pattern)
            .map_err(|e| format!("pattern {name:?}: {e}"))?;
        let regex = RegexBuilder::new(&expanded)
            .size_limit(64 << 20)
            .dfa_size_limit(16 << 20)
            .build()
            .map_err(|e| format!("pattern {name:?}: invalid regex: {e}"))?;
        let index: HashMap<&str, usize> = regex
            .capture_names()
            .enumerate()
            .filter_map(|(i, n)| n.map(|n| (n, i)))
            .collect();
        let mut fields: Vec<Field> = ex
            .fields
            .iter()
            .map(|(g, sem, conv)| Field {
                group: index[g.as_str()],
                path: field_path(sem),
                conversion: *conv,
            })
            .collect();
        // Raw named groups written by the user.
        for (i, n) in regex.capture_names().enumerate() {
            if let Some(n) = n {
                if !n.starts_with("__grok") {
                    fields.push(Field {
                        group: i,
                        path: field_path(n),
                        conversion: Conversion::String,
                    });
                }
            }
        }
        fields.sort_by_key(|f| f.group);
        Ok(Grok {
            name: name.to_string(),
            regex,
            fields,
        })
    }
}

/// `[a][b]` → `["a", "b"]`; anything else is one key.
fn field_path(semantic: &str) -> Vec<String> {
    if semantic.starts_with('[') && semantic.ends_with(']') {
        let parts: Vec<String> = semantic[1..semantic.len() - 1]
            .split("][")
            .map(str::to_string)
            .collect();
        if parts
            .iter()
            .all(|p| !p.is_empty() && !p.contains(['[', ']']))
        {
            return parts;
        }
    }
    vec![semantic.to_string()]
}

impl Expander<'_> {
    fn expand(&mut self, pattern: &str) -> Result<String, String> {
        let mut out = String::with_capacity(pattern.len() * 2);
        let mut rest = pattern;
        while let Some(pos) = rest.find("%{") {
            // A `%{` escaped as `\%{` stays literal.
            if rest[..pos].ends_with('\\') {
                out.push_str(&rest[..pos + 2]);
                rest = &rest[pos + 2..];
                continue;
            }
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("unterminated %{{ in {pattern:?}"))?;
            let inner = &after[..end];
            rest = &after[end + 1..];
            let mut parts = inner.splitn(3, ':');
            let syntax = parts.next().unwrap_or_default();
            let semantic = parts.next().filter(|s| !s.is_empty());
            let conversion = match parts.next() {
                None => Conversion::String,
                Some("int") => Conversion::Int,
                Some("float") => Conversion::Float,
                Some("string") => Conversion::String,
                Some(other) => {
                    return Err(format!(
                        "unknown conversion {other:?} in %{{{inner}}} (int, float or string)"
                    ))
                }
            };
            if !valid_pattern_name(syntax) {
                return Err(format!("invalid pattern reference %{{{inner}}}"));
            }
            let def = self
                .lib
                .defs
                .get(syntax)
                .ok_or_else(|| format!("unknown pattern %{{{syntax}}}"))?;
            if self.stack.iter().any(|s| s == syntax) {
                return Err(format!(
                    "recursive pattern: {} -> {syntax}",
                    self.stack.join(" -> ")
                ));
            }
            if self.stack.len() > 64 {
                return Err("patterns nested too deeply".into());
            }
            self.stack.push(syntax.to_string());
            let body = self.expand(def)?;
            self.stack.pop();
            match semantic {
                Some(sem) => {
                    let group = format!("__grok{}", self.next);
                    self.next += 1;
                    out.push_str(&format!("(?P<{group}>{body})"));
                    self.fields.push((group, sem.to_string(), conversion));
                }
                None => {
                    out.push_str("(?:");
                    out.push_str(&body);
                    out.push(')');
                }
            }
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// Stores `value` at `path` in `map`, creating (or replacing non-map values with) intermediate maps.
fn set_path(map: &mut BTreeMap<String, Value>, path: &[String], value: Value) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        map.insert(first.clone(), value);
    } else {
        set_path_json(
            child_object(map.entry(first.clone()).or_insert(Value::Null)),
            rest,
            value,
        );
    }
}

fn set_path_json(map: &mut Map<String, Value>, path: &[String], value: Value) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        map.insert(first.clone(), value);
    } else {
        set_path_json(
            child_object(map.entry(first.clone()).or_insert(Value::Null)),
            rest,
            value,
        );
    }
}

/// The object in `slot`, replacing whatever non-object value was there.
fn child_object(slot: &mut Value) -> &mut Map<String, Value> {
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut().expect("just made an object")
}

/// Finds a string attribute by a dotted path (the literal key is tried first).
fn get_attr<'a>(attrs: &'a BTreeMap<String, Value>, path: &str) -> Option<&'a str> {
    if let Some(v) = attrs.get(path) {
        return v.as_str();
    }
    let mut parts = path.split('.');
    let mut cur = attrs.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    cur.as_str()
}

/// The plugin.
pub struct GrokPlugin {
    groks: Vec<Grok>,
    source: Option<String>,
    target: Option<String>,
    keep_empty: bool,
}

impl GrokPlugin {
    /// The compiled patterns, in order.
    pub fn groks(&self) -> &[Grok] {
        &self.groks
    }

    /// Matches a text against the patterns in order: the first match's name and captures.
    pub fn match_text(&self, text: &str) -> Option<(&str, Captures)> {
        self.groks.iter().find_map(|g| {
            g.captures(text, self.keep_empty)
                .map(|c| (g.name.as_str(), c))
        })
    }
}

impl Plugin for GrokPlugin {
    type Config = Config;
    // Reads the message and writes attributes: nothing else needs to cross the boundary.
    const FIELDS: Fields = Fields::MESSAGE.with(Fields::ATTRIBUTES);

    fn new(config: Config) -> Result<Self, String> {
        let mut lib = Library::default();
        for (name, def) in &config.custom_patterns {
            lib.add(name, def)?;
        }
        if config.patterns.is_empty() {
            return Err("grok: `patterns` must list at least one {name, pattern}".into());
        }
        let mut groks = Vec::with_capacity(config.patterns.len());
        for p in &config.patterns {
            groks.push(lib.compile(&p.name, &p.pattern)?);
        }
        let source = match config.source.as_deref() {
            None | Some("message") => None,
            Some("") => return Err("grok: `source` must not be empty".into()),
            Some(s) => Some(s.strip_prefix('@').unwrap_or(s).to_string()),
        };
        if config.target.as_deref() == Some("") {
            return Err("grok: `target` must not be empty".into());
        }
        Ok(GrokPlugin {
            groks,
            source,
            target: config.target,
            keep_empty: config.keep_empty_captures,
        })
    }

    fn process(&mut self, event: &mut Event) -> Verdict {
        self.parse(event);
        Verdict::Keep
    }

    // Grok knows which events it changed (those a pattern matched): no copy of the batch to compare with.
    fn process_batch_tracked(&mut self, events: &mut [Event]) -> Vec<(Verdict, bool)> {
        events
            .iter_mut()
            .map(|e| (Verdict::Keep, self.parse(e)))
            .collect()
    }
}

impl GrokPlugin {
    /// Adds the captures of the first matching pattern to the event; whether one matched (and so changed it).
    fn parse(&mut self, event: &mut Event) -> bool {
        let text = match &self.source {
            None => Some(event.message.as_str()),
            Some(path) => get_attr(&event.attributes, path),
        };
        let found = text.and_then(|t| self.match_text(t));
        let Some((name, captures)) = found else {
            weir_sdk::counter_add("grok_nomatch", 1);
            return false;
        };
        let name = name.to_string();
        weir_sdk::counter_add("grok_match", 1);
        match &self.target {
            None => {
                for (path, value) in captures {
                    set_path(&mut event.attributes, &path, value);
                }
            }
            Some(t) => {
                let entry = event
                    .attributes
                    .entry(t.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                let obj = entry.as_object_mut().expect("object");
                for (path, value) in captures {
                    set_path_json(obj, &path, value);
                }
            }
        }
        event
            .attributes
            .insert(PATTERN_ATTRIBUTE.to_string(), Value::String(name));
        true
    }
}

weir_sdk::export_plugin!(GrokPlugin);

#[cfg(test)]
mod tests;
