//! Tokens of a message as the miner sees them: split at whitespace, with the
//! parts that look variable (numbers, hex, ids, IPs, times, UUIDs) replaced by
//! the wildcard [`WILD`] inside the token, so `rhost=10.0.0.1` becomes
//! `rhost=<*>` and `sshd[4242]:` becomes `sshd[<*>]:`. What stays is text of
//! the message as written, which is what lets a pattern's constant text be
//! searched for in the message again (see `query.rs`).

/// The wildcard a template holds where messages differ.
pub const WILD: &str = "<*>";

/// Letters and digits: what Drain-style maskers treat as the inside of a value
/// (`_` and punctuation separate, so `blk_-160899` masks its number).
fn alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// Whether one run of ASCII letters and digits looks like a value rather than
/// a word: a number, hex with a digit in it (`e29b`, `0x1f`, `7fa3c2`), or an
/// id that is mostly digits (`user12345`, `123Z`). `ssh2`, `sha256`, `x86` stay words.
fn variable_run(run: &str) -> bool {
    let digits = run.bytes().filter(u8::is_ascii_digit).count();
    if digits == 0 {
        return false;
    }
    if digits == run.len() {
        return true;
    }
    if let Some(hex) = run.strip_prefix("0x").or_else(|| run.strip_prefix("0X")) {
        return !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    let letters = run.len() - digits;
    (run.len() >= 4 && run.bytes().all(|b| b.is_ascii_hexdigit()))
        || (run.len() >= 4 && digits > letters)
}

/// Separators that join the parts of one value: `10.0.0.1`, `12:30:05`,
/// `2026-12-03`, `550e8400-e29b-...`, `fe80::1`, `1/2`.
fn joins_values(c: char) -> bool {
    matches!(c, '.' | ':' | '-' | '/' | ',')
}

/// `token` with its variable parts replaced by [`WILD`] (a run of values
/// joined by separators becomes one wildcard). Cheap: one pass, and no
/// allocation when nothing is masked.
pub fn mask(token: &str) -> std::borrow::Cow<'_, str> {
    // Fast path: a token without digits has nothing to mask.
    if !token.bytes().any(|b| b.is_ascii_digit()) {
        return std::borrow::Cow::Borrowed(token);
    }
    let mut out = String::with_capacity(token.len());
    let mut pending_sep = String::new();
    let mut last_wild = false;
    let mut rest = token;
    while let Some(c) = rest.chars().next() {
        if alnum(c) {
            let end = rest.find(|c: char| !alnum(c)).unwrap_or(rest.len());
            let run = &rest[..end];
            if variable_run(run) {
                // Separators between two values belong to the one wildcard.
                if !(last_wild && !pending_sep.is_empty() && pending_sep.len() <= 2) {
                    out.push_str(&pending_sep);
                    out.push_str(WILD);
                }
                last_wild = true;
            } else {
                out.push_str(&pending_sep);
                out.push_str(run);
                last_wild = false;
            }
            pending_sep.clear();
            rest = &rest[end..];
        } else {
            rest = &rest[c.len_utf8()..];
            if last_wild && joins_values(c) {
                pending_sep.push(c);
            } else {
                out.push_str(&pending_sep);
                pending_sep.clear();
                out.push(c);
                last_wild = false;
            }
        }
    }
    out.push_str(&pending_sep);
    std::borrow::Cow::Owned(out)
}

/// Whether `token` holds a wildcard (a byte search: this runs per token compared).
pub fn has_wild(token: &str) -> bool {
    memchr::memmem::find(token.as_bytes(), WILD.as_bytes()).is_some()
}

/// Whether `template` (a token with wildcards) matches `token`: each wildcard
/// stands for any text, possibly empty. Plain text must be equal.
pub fn token_matches(template: &str, token: &str) -> bool {
    if !has_wild(template) {
        return template == token;
    }
    let mut parts = template.split(WILD);
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = token.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return rest.len() >= part.len() && rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// One template token for two that differ: their common head and tail around
/// a wildcard (`user=root` and `user=admin` give `user=<*>`), cut back to end
/// and start at punctuation so a wildcard never splits a word; just [`WILD`]
/// when nothing is shared. The result matches both and whatever each matched.
pub fn merge(a: &str, b: &str) -> String {
    if a == b {
        return a.to_string();
    }
    if token_matches(a, b) {
        return a.to_string();
    }
    let head = shared_head(a, b);
    let tail = shared_tail(&a[head.len()..], &b[head.len()..]);
    if head.is_empty() && tail.is_empty() {
        return WILD.to_string();
    }
    format!("{head}{WILD}{tail}")
}

/// The common prefix of `a` and `b` up to its last punctuation character,
/// before any wildcard of either.
fn shared_head<'a>(a: &'a str, b: &str) -> &'a str {
    let mut end = 0;
    let mut cut = 0;
    for ((i, x), y) in a.char_indices().zip(b.chars()) {
        if x != y || matches!(x, '<' | '*' | '>') {
            break;
        }
        end = i + x.len_utf8();
        if !x.is_alphanumeric() {
            cut = end;
        }
    }
    let _ = end;
    &a[..cut]
}

/// The common suffix of `a` and `b` from its first punctuation character,
/// after any wildcard of either.
fn shared_tail<'a>(a: &'a str, b: &str) -> &'a str {
    let mut start = a.len();
    let mut cut = a.len();
    for ((i, x), y) in a.char_indices().rev().zip(b.chars().rev()) {
        if x != y || matches!(x, '<' | '*' | '>') {
            break;
        }
        start = i;
        if !x.is_alphanumeric() {
            cut = start;
        }
    }
    let _ = start;
    &a[cut..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_values_inside_tokens_and_keeps_words() {
        for (token, masked) in [
            ("10.0.0.1", "<*>"),
            ("rhost=173.234.31.186", "rhost=<*>"),
            ("sshd[24200]:", "sshd[<*>]:"),
            ("173.234.31.186:", "<*>:"),
            ("blk_-1608999687919862906", "blk_-<*>"),
            ("550e8400-e29b-41d4-a716-446655440000", "<*>"),
            ("0x7fa3c2", "<*>"),
            ("2026-12-03T10:30:05.123Z", "<*>"),
            ("uid=0", "uid=<*>"),
            ("ssh2", "ssh2"),
            ("sha256", "sha256"),
            ("x86", "x86"),
            ("user12345", "<*>"),
            ("user1234", "user1234"),
            ("[preauth]", "[preauth]"),
            ("port", "port"),
            ("1.2.3.4...", "<*>..."),
            ("a-1", "a-<*>"),
        ] {
            assert_eq!(mask(token), masked, "{token}");
        }
    }

    #[test]
    fn templates_match_tokens_and_merge_to_their_common_text() {
        assert!(token_matches("user=<*>", "user=root"));
        assert!(token_matches("<*>", "anything"));
        assert!(token_matches("sshd[<*>]:", "sshd[<*>]:"));
        assert!(!token_matches("sshd[<*>]:", "sshd[1]"));
        assert!(!token_matches("user=<*>", "ruser=x"));
        assert!(token_matches("a<*>b<*>c", "a-b-c"));
        assert!(
            !token_matches("ab<*>ba", "aba"),
            "head and tail may not overlap"
        );
        assert_eq!(merge("user=root", "user=admin"), "user=<*>");
        assert_eq!(merge("root", "admin"), "<*>");
        assert_eq!(merge("root", "rob"), "<*>", "never half a word");
        assert_eq!(merge("[a]", "[bc]"), "[<*>]");
        assert_eq!(merge("user=<*>", "user=x"), "user=<*>");
        assert_eq!(merge("user=<*>", "name=x"), "<*>");
        assert_eq!(merge("x=", "x=1"), "x=<*>");
        for (a, b) in [
            ("k=v", "k=w"),
            ("(a)", "(b)"),
            ("<*>:", "x:"),
            ("p<", "p<q"),
        ] {
            let m = merge(a, b);
            assert!(
                token_matches(&m, a) && token_matches(&m, b),
                "{a} {b} -> {m}"
            );
        }
    }
}
