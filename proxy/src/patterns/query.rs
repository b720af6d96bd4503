//! The exclusion-rule query for a pattern, in the query language rules use
//! (Datadog's log search syntax, no extension).
//!
//! Every message of a pattern holds the template's constant text verbatim
//! (masking only ever replaces values), so the query is the conjunction of
//! the runs of constant text between wildcards: a quoted phrase for a run, a
//! bare word with `*` where a wildcard is glued to a word (`*id`, `user\=*`).
//! Phrases match consecutive word tokens, so every member matches its
//! pattern's query. The language cannot say "exactly N whitespace tokens" or
//! "in this order", so a query may match messages of other patterns too: each
//! query is checked against the examples every pattern keeps, and for each
//! other pattern it matches, a `-term` of constant text that pattern has and
//! no example of this one has is added. The result is exact on the miner's
//! examples (reported as `exact_on_examples`); on unseen messages it is exact
//! unless a value happens to contain another pattern's distinguishing text.
use super::mask::WILD;
use crate::event::Event;
use crate::rules::query::Query;

/// At most this many `-term` clauses: past it the query is reported inexact.
const MAX_NOT_CLAUSES: usize = 16;

/// What the query builder knows of one pattern.
pub struct View<'a> {
    pub id: u64,
    pub tokens: &'a [Box<str>],
    pub examples: &'a [Box<str>],
}

/// A pattern's query and how far it was verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Built {
    /// None when the template has no constant text to search for.
    pub query: Option<String>,
    /// The query matches every example of the pattern and none of any other.
    pub exact_on_examples: bool,
    /// Why it is not exact, when it is not.
    pub note: Option<String>,
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The query terms of a template: one per run of constant text that has a
/// word character (punctuation alone would be a substring search).
pub fn terms(tokens: &[Box<str>]) -> Vec<String> {
    let text = tokens.join(" ");
    let runs: Vec<&str> = text.split(WILD).collect();
    let last = runs.len() - 1;
    let mut out = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let left = i > 0 && run.starts_with(is_word);
        let right = i < last && run.ends_with(is_word);
        // Words of punctuation alone at either end (`: Bye`) match nothing
        // more: phrases match by words. Dropping them reads better.
        let words: Vec<&str> = run.split(' ').filter(|w| !w.is_empty()).collect();
        let (Some(first), Some(last)) = (
            words.iter().position(|w| w.contains(is_word)),
            words.iter().rposition(|w| w.contains(is_word)),
        ) else {
            continue;
        };
        let run = words[first..=last].join(" ");
        let run = run.as_str();
        let term = if !left && !right && run.chars().all(is_word) && !operator(run) {
            run.to_string()
        } else if left || right {
            let mut w = String::with_capacity(run.len() * 2 + 2);
            if left {
                w.push('*');
            }
            for c in run.chars() {
                if !is_word(c) {
                    w.push('\\');
                }
                w.push(c);
            }
            if right {
                w.push('*');
            }
            w
        } else {
            let mut p = String::with_capacity(run.len() + 2);
            p.push('"');
            for c in run.chars() {
                if matches!(c, '"' | '\\') {
                    p.push('\\');
                }
                p.push(c);
            }
            p.push('"');
            p
        };
        if !out.contains(&term) {
            out.push(term);
        }
    }
    out
}

/// Upper-case words the query language reads as operators.
fn operator(word: &str) -> bool {
    matches!(word, "AND" | "OR" | "NOT" | "TO")
}

fn parse(text: &str) -> Option<Query> {
    Query::parse(text).ok()
}

fn matches(q: &Query, message: &str) -> bool {
    q.matches(&Event::from_message(message.to_string(), 0))
}

/// The query of `all[me]`, checked against every pattern's examples.
pub fn build(all: &[View], me: usize) -> Built {
    let p = &all[me];
    let base = terms(p.tokens);
    if base.is_empty() {
        return Built {
            query: None,
            exact_on_examples: false,
            note: Some("the template has no constant text to search for".into()),
        };
    }
    let mut text = base.join(" ");
    let Some(base_q) = parse(&text) else {
        return inexact(Some(text), "the query does not parse".into());
    };
    let mut nots: Vec<String> = Vec::new();
    let mut unresolved = Vec::new();
    for (i, other) in all.iter().enumerate() {
        if i == me || !other.examples.iter().any(|e| matches(&base_q, e)) {
            continue;
        }
        // Constant text of the other pattern that no example of this one has.
        let apart = terms(other.tokens)
            .into_iter()
            .filter(|t| parse(t).is_some_and(|q| !p.examples.iter().any(|e| matches(&q, e))))
            .max_by_key(|t| t.len());
        match apart {
            Some(t) if nots.contains(&t) => {}
            Some(t) if nots.len() < MAX_NOT_CLAUSES => nots.push(t),
            _ => unresolved.push(other.id),
        }
    }
    for t in &nots {
        text.push_str(" -");
        text.push_str(t);
    }
    let Some(q) = parse(&text) else {
        return inexact(Some(text), "the query does not parse".into());
    };
    let own = p.examples.iter().all(|e| matches(&q, e));
    let others = all
        .iter()
        .enumerate()
        .filter(|(i, o)| *i != me && o.examples.iter().any(|e| matches(&q, e)))
        .map(|(_, o)| o.id)
        .collect::<Vec<_>>();
    if own && others.is_empty() {
        return Built {
            query: Some(text),
            exact_on_examples: true,
            note: None,
        };
    }
    let why = if !own {
        "it misses an example of its own pattern".to_string()
    } else {
        format!(
            "it also matches examples of pattern(s) {:?}",
            if unresolved.is_empty() {
                others
            } else {
                unresolved
            }
        )
    };
    inexact(Some(text), why)
}

fn inexact(query: Option<String>, note: String) -> Built {
    Built {
        query,
        exact_on_examples: false,
        note: Some(note),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Box<str>> {
        s.split(' ').map(Box::from).collect()
    }

    #[test]
    fn terms_are_the_constant_runs_with_wildcards_where_glued_to_a_word() {
        assert_eq!(
            terms(&toks("Failed password for <*> from <*> port <*> ssh2")),
            ["\"Failed password for\"", "from", "port", "ssh2"]
        );
        assert_eq!(
            terms(&toks("session <*>id=<*> \"quoted\\\" [<*>]")),
            ["session", "*id\\=", "\"\\\"quoted\\\\\\\"\""]
        );
        assert_eq!(terms(&toks("<*> - <*>")), Vec::<String>::new());
        assert_eq!(terms(&toks("NOT <*>")), ["\"NOT\""]);
        for t in terms(&toks("a:b (c) -d \"e\" f\\g <*>h*? <*>")) {
            Query::parse(&t).unwrap_or_else(|e| panic!("{t}: {e}"));
        }
    }

    #[test]
    fn a_query_matches_its_members_and_is_told_apart_from_a_more_specific_sibling() {
        let general = toks("Failed password for <*> from <*> port <*> ssh2");
        let specific = toks("Failed password for invalid user <*> from <*> port <*> ssh2");
        let other = toks("Accepted password for <*> from <*> port <*> ssh2");
        let ex_general: Vec<Box<str>> =
            vec!["Failed password for root from 10.0.0.1 port 22 ssh2".into()];
        let ex_specific: Vec<Box<str>> =
            vec!["Failed password for invalid user bob from 10.0.0.2 port 2 ssh2".into()];
        let ex_other: Vec<Box<str>> =
            vec!["Accepted password for root from 10.0.0.1 port 22 ssh2".into()];
        let all = [
            View {
                id: 1,
                tokens: &general,
                examples: &ex_general,
            },
            View {
                id: 2,
                tokens: &specific,
                examples: &ex_specific,
            },
            View {
                id: 3,
                tokens: &other,
                examples: &ex_other,
            },
        ];
        let b = build(&all, 0);
        assert_eq!(
            b.query.as_deref(),
            Some("\"Failed password for\" from port ssh2 -\"Failed password for invalid user\"")
        );
        assert!(b.exact_on_examples, "{b:?}");
        let s = build(&all, 1);
        assert!(s.exact_on_examples, "{s:?}");
        assert!(!s.query.unwrap().contains(" -"), "nothing to exclude");
    }

    #[test]
    fn patterns_that_cannot_be_told_apart_are_reported_inexact() {
        // Only the case differs: queries are case-insensitive.
        let a = toks("Disk full on <*>");
        let b = toks("disk FULL on <*>");
        let ea: Vec<Box<str>> = vec!["Disk full on sda".into()];
        let eb: Vec<Box<str>> = vec!["disk FULL on sdb".into()];
        let all = [
            View {
                id: 1,
                tokens: &a,
                examples: &ea,
            },
            View {
                id: 2,
                tokens: &b,
                examples: &eb,
            },
        ];
        let r = build(&all, 0);
        assert!(!r.exact_on_examples);
        assert!(r.note.unwrap().contains("[2]"));
        let none = toks("<*> <*>");
        let all = [View {
            id: 1,
            tokens: &none,
            examples: &ea,
        }];
        assert_eq!(build(&all, 0).query, None);
    }
}
