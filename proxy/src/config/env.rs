//! `${NAME}` and `${NAME:-default}` in any value of the YAML, expanded from the
//! environment before the YAML is read; `$${` writes a literal `${`. Comments are
//! left alone. A value is inserted so that it stays one scalar whatever it holds:
//! escaped inside quotes, as is when it is a plain word, quoted when it is the whole
//! value; elsewhere a value that YAML would read as syntax is refused, with the
//! line, so that an environment variable can never change the config's structure.
use std::fmt;

#[derive(Debug, PartialEq)]
pub struct EnvError {
    /// 1-based line and column of the `${`.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Quote {
    None,
    Double,
    Single,
}

/// Expands every `${...}` in `text` (see the module docs).
pub fn expand(text: &str) -> Result<String, EnvError> {
    expand_with(text, &|name| std::env::var(name).ok())
}

fn expand_with(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, EnvError> {
    if !text.contains("${") {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    for (n, line) in text.split_inclusive('\n').enumerate() {
        expand_line(line, n + 1, env, &mut out)?;
    }
    Ok(out)
}

fn expand_line(
    line: &str,
    line_no: usize,
    env: &dyn Fn(&str) -> Option<String>,
    out: &mut String,
) -> Result<(), EnvError> {
    let b = line.as_bytes();
    let mut quote = Quote::None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let prev = if i == 0 { b' ' } else { b[i - 1] };
        match (quote, c) {
            (Quote::None, b'#') if prev.is_ascii_whitespace() => {
                out.push_str(&line[i..]);
                return Ok(());
            }
            (Quote::None, b'"') => quote = Quote::Double,
            (Quote::None, b'\'') if b" \t[{,:-".contains(&prev) => quote = Quote::Single,
            (Quote::Double, b'\\') if i + 1 < b.len() => {
                out.push_str(&line[i..i + 2]);
                i += 2;
                continue;
            }
            (Quote::Double, b'"') | (Quote::Single, b'\'') => quote = Quote::None,
            (_, b'$') if line[i..].starts_with("$${") => {
                out.push_str("${");
                i += 3;
                continue;
            }
            (_, b'$') if line[i..].starts_with("${") => {
                let err = |message: String| EnvError {
                    line: line_no,
                    column: i + 1,
                    message,
                };
                let Some(end) = line[i + 2..].find('}') else {
                    return Err(err(
                        "unterminated ${: write ${NAME} or ${NAME:-default}".into()
                    ));
                };
                let spec = &line[i + 2..i + 2 + end];
                let value = lookup(spec, env).map_err(err)?;
                let after = i + 2 + end + 1;
                let rest = &line[after..];
                let before = &line[..i];
                let whole = quote == Quote::None
                    && before.ends_with([' ', '\t'])
                    && before.trim_end().ends_with([':', '-'])
                    && (rest.trim().is_empty() || rest.trim_start().starts_with('#'));
                insert(&value, quote, whole, spec, out).map_err(err)?;
                i = after;
                continue;
            }
            _ => {}
        }
        // Copy one UTF-8 character.
        let len = line[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&line[i..i + len]);
        i += len;
    }
    Ok(())
}

/// `NAME` or `NAME:-default` to its value.
fn lookup(spec: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let (name, default) = match spec.split_once(":-") {
        Some((n, d)) => (n, Some(d)),
        None => (spec, None),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "invalid environment variable name {name:?} in ${{...}}"
        ));
    }
    match (env(name), default) {
        (Some(v), _) => Ok(v),
        (None, Some(d)) => Ok(d.to_string()),
        (None, None) => Err(format!(
            "environment variable {name} is not set (write ${{{name}:-default}} for a default)"
        )),
    }
}

fn insert(
    value: &str,
    quote: Quote,
    whole: bool,
    spec: &str,
    out: &mut String,
) -> Result<(), String> {
    match quote {
        Quote::Double => {
            let json = serde_json::to_string(value).expect("a string serializes");
            out.push_str(&json[1..json.len() - 1]);
        }
        Quote::Single if value.contains('\n') => {
            return Err(format!(
                "${{{spec}}} holds a line break, which a single-quoted value cannot: use double quotes"
            ))
        }
        Quote::Single => out.push_str(&value.replace('\'', "''")),
        Quote::None if is_plain_word(value) && (!whole || reads_as_itself(value)) => {
            out.push_str(value)
        }
        Quote::None if whole => {
            out.push_str(&serde_json::to_string(value).expect("a string serializes"))
        }
        Quote::None => {
            return Err(format!(
                "${{{spec}}} holds characters YAML would read as syntax here: put the whole value in double quotes"
            ))
        }
    }
    Ok(())
}

/// A bare word YAML reads as the same text, or as an integer written the same
/// way: not `true`, `null`, `0123` or `1.50`, which would change on the way.
fn reads_as_itself(v: &str) -> bool {
    const SPECIAL: [&str; 10] = [
        "true", "false", "null", "yes", "no", "on", "off", "y", "n", "~",
    ];
    if SPECIAL.iter().any(|w| w.eq_ignore_ascii_case(v)) {
        return false;
    }
    let digits = v.strip_prefix('-').unwrap_or(v);
    let numeric = digits
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_digit() || c == '.')
        && digits
            .chars()
            .all(|c| c.is_ascii_digit() || "._eE+-".contains(c));
    if !numeric {
        return true;
    }
    // Only a plain integer keeps its text: no leading zero, no fraction, fits in 64 bits.
    digits.chars().all(|c| c.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && digits.len() <= 18
}

/// A value that reads as itself when written bare in YAML.
fn is_plain_word(v: &str) -> bool {
    let first_ok = v
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '/' || c == '.' || c == '_');
    first_ok
        && !v.contains(": ")
        && !v.ends_with(':')
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/@+=~%^-:".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("8088".into()),
            "KEY" => Some("s3cr3t".into()),
            "HASHY" => Some("a#b: c'd\"e".into()),
            "EMPTY" => Some(String::new()),
            "ZEROS" => Some("00123".into()),
            "TRUE" => Some("true".into()),
            "FRACTION" => Some("1.50".into()),
            _ => None,
        }
    }

    fn x(text: &str) -> Result<String, EnvError> {
        expand_with(text, &env)
    }

    #[test]
    fn any_value_plain_quoted_or_whole() {
        assert_eq!(
            x("address: 127.0.0.1:${PORT}\n").unwrap(),
            "address: 127.0.0.1:8088\n"
        );
        assert_eq!(x("k: \"${HASHY}\"\n").unwrap(), "k: \"a#b: c'd\\\"e\"\n");
        assert_eq!(x("k: '${HASHY}'\n").unwrap(), "k: 'a#b: c''d\"e'\n");
        assert_eq!(
            x("k: ${HASHY}   # note\n").unwrap(),
            "k: \"a#b: c'd\\\"e\"   # note\n"
        );
        assert_eq!(x("- ${EMPTY}\n").unwrap(), "- \"\"\n");
        assert_eq!(x("k: ${MISSING:-fallback}\n").unwrap(), "k: fallback\n");
        assert_eq!(x("k: ${MISSING:-}\n").unwrap(), "k: \"\"\n");
        assert_eq!(x("k: $${LITERAL}\n").unwrap(), "k: ${LITERAL}\n");
        assert_eq!(x("k: cost$5\n").unwrap(), "k: cost$5\n");
        // Comments are not expanded, so a documented unset variable is no error.
        assert_eq!(x("k: v # ${MISSING}\n").unwrap(), "k: v # ${MISSING}\n");
        // Flow mappings: a plain word goes in as is.
        assert_eq!(x("{a: ${KEY}, b: 1}\n").unwrap(), "{a: s3cr3t, b: 1}\n");
        // A whole value YAML would read as something else is quoted; an integer stays one.
        assert_eq!(x("k: ${ZEROS}\n").unwrap(), "k: \"00123\"\n");
        assert_eq!(x("k: ${TRUE}\n").unwrap(), "k: \"true\"\n");
        assert_eq!(x("k: ${FRACTION}\n").unwrap(), "k: \"1.50\"\n");
        assert_eq!(x("port: ${PORT}\n").unwrap(), "port: 8088\n");
        assert_eq!(x("k: key-${ZEROS}\n").unwrap(), "k: key-00123\n");
    }

    #[test]
    fn errors_name_line_and_column_and_never_restructure() {
        let e = x("a: 1\nb: ${MISSING}\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 4));
        assert!(e.message.contains("MISSING is not set"), "{}", e.message);
        let e = x("b: pre-${HASHY}\n").unwrap_err();
        assert!(e.message.contains("double quotes"), "{}", e.message);
        let e = x("b: ${OPEN\n").unwrap_err();
        assert!(e.message.contains("unterminated"), "{}", e.message);
        let e = x("b: ${bad name}\n").unwrap_err();
        assert!(
            e.message.contains("invalid environment variable name"),
            "{}",
            e.message
        );
    }
}
