//! The Datadog log search syntax, as written in exclusion filters: parsed once
//! into a tree of matchers, then evaluated against each [`Event`] without
//! allocating.
//!
//! # Grammar
//!
//! ```text
//! query    = ws* or ws* EOF
//! or       = and { "OR" and }
//! and      = unary { ["AND"] unary }          -- juxtaposition is AND
//! unary    = "NOT" unary | "-" unary | primary -- `-` sticks to its term: `-a`, not `- a`
//! primary  = "(" or ")" | term
//! term     = "*" | phrase | field ":" value | word
//! field    = "@" path | "host" | "service" | "source" | "status" | "message" | tag-key
//! value    = "(" or-of-values ")"             -- `status:(error OR warn)`, same operators
//!          | phrase | ("<" | "<=" | ">" | ">=") bound
//!          | ("[" | "{") bound "TO" bound ("]" | "}")   -- `[`/`]` inclusive, `{`/`}` exclusive
//!          | word
//! bound    = phrase | word | "*"              -- `*` leaves that side open
//! phrase   = '"' { char | "\" char } '"'      -- wildcards are literal inside quotes
//! word     = { char | "\" char | "*" | "?" }  -- ends at whitespace, `(`, `)`, `"`;
//!                                             -- at top level also at the first `:`
//! ```
//!
//! Operators `AND`, `OR`, `NOT` (and `TO`) are upper-case only, as in Datadog;
//! `and` is an ordinary word. `NOT`/`-` bind tighter than `AND`, which binds
//! tighter than `OR`. Backslash escapes any character (`\:`, `\ `, `\*`, `\(`,
//! `\\`); `/` needs no escaping. Inside a field value `:` is ordinary
//! (`@url:http://x` works), and a leading `-` is part of the value
//! (`@delta:-5`). An empty query is an error: write `*` to match everything.
//! Groups and negations (`(`, `NOT`, `-`) nest at most 100 deep.
//! `*:term` (Datadog full-text over all attributes) is rejected, since Datadog
//! does not allow it in index filters either.
//!
//! # Semantics
//!
//! * **Bare words and phrases** search the message only, case-insensitively, by
//!   tokens: a token is a maximal run of letters, digits and `_`; everything
//!   else separates tokens. A term matches when its own tokens equal
//!   consecutive tokens of the message. So `error` matches "ERROR: x" but not
//!   "errors"; `"hello world"` matches "Hello, world" and "hello-world";
//!   `user\=alice` matches "user=Alice". A wildcard works within a token:
//!   `*timeout*` matches "ConnectTimeoutError", `time?ut` matches "timeout".
//!   A term with no word character at all (`"=>"`) is a case-insensitive
//!   substring. `message:value` is the same as the bare term.
//! * **Reserved attributes** `host`, `service`, `source`, `status` and **tags**
//!   (`env:prod` matches the tag `env:prod`, splitting tags at their first `:`)
//!   compare the whole value, **case-insensitively** (Datadog lower-cases
//!   these at intake, so a filter cannot tell cases apart there either). Bare
//!   tags without a `:` are not searchable by `key:value`.
//! * **Attributes** `@a.b.c` compare the whole value **case-sensitively**, as
//!   Datadog's attribute search does. Dots descend into nested objects (and
//!   into every object of an array); a key that itself contains dots is found
//!   too. An array matches when any element does. A string value is compared
//!   as text; a number matches a numeric literal by value (`@code:500`
//!   matches 500 and 500.0; integers compare exactly); a boolean matches
//!   `true`/`false`. Wildcards match strings and booleans only.
//! * **Comparisons and ranges** (`>`, `>=`, `<`, `<=`, `[a TO b]`, `{a TO b}`):
//!   a number attribute compares numerically (a non-numeric bound never
//!   matches it); a string value compares **lexically** by code point, even
//!   when it looks like a number (`"600" >= "500"`, but `"1000" < "500"`), as
//!   Datadog does for non-numeric facets. Reserved attributes and tags compare
//!   lexically after case-folding. Booleans, objects and null never match.
//! * `field:*` matches when the field is present (for attributes: present and
//!   not null). A missing field never matches a positive term, so `-@a:x`
//!   matches every event without `@a`. `*` alone matches every event.
//! * Case-insensitivity is simple per-character folding (`char::to_lowercase`
//!   when it yields one character).
use crate::event::Event;
use std::fmt;

mod matcher;
mod parse;
#[cfg(test)]
mod tests;

/// A compiled query. Cheap to evaluate; share it behind an `Arc` or clone it.
#[derive(Debug, Clone)]
pub struct Query {
    text: String,
    root: matcher::Node,
}

impl Query {
    pub fn parse(text: &str) -> Result<Query, QueryError> {
        Ok(Query {
            text: text.to_string(),
            root: parse::parse(text)?,
        })
    }

    /// Whether the event satisfies the query. Does not allocate.
    pub fn matches(&self, event: &Event) -> bool {
        self.root.matches(event)
    }

    /// The text the query was parsed from.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Why a query does not parse: where (0-based character offset) and what the
/// parser expected there.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryError {
    pub position: usize,
    /// What would have been valid at `position`, e.g. "a value after `service:`".
    pub expected: String,
    /// The full sentence, e.g. "expected a value after `service:`, found end of query".
    pub message: String,
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at position {}: {}", self.position, self.message)
    }
}

impl std::error::Error for QueryError {}
