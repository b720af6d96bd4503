//! Recursive-descent parser from query text to the compiled `Node` tree. It
//! works on chars so error positions are character offsets.
use super::matcher::{fold_str, Bound, Field, Glob, Literal, Node, Piece, Range, Test, TextMatch};
use super::QueryError;

pub(super) fn parse(text: &str) -> Result<Node, QueryError> {
    let mut p = Parser {
        chars: text.chars().collect(),
        pos: 0,
        depth: 0,
    };
    p.skip_ws();
    p.expect_term("a search term")?;
    let node = p.or(None)?;
    // `or` stops only at the end or at a `)` no group is waiting for.
    if p.pos < p.chars.len() {
        return Err(p.fail(
            p.pos,
            "a search term or end of query",
            "`)` without a matching `(`",
        ));
    }
    Ok(node)
}

/// How deep groups and negations may nest. Each level is a few frames of this
/// recursive parser (and of the matcher, and of dropping the tree): about 10,000
/// `(` overflowed an 8 MiB stack, a few thousand a 2 MiB one (a tokio worker's,
/// where the admin API parses a query of up to 64 KiB), which aborts the process.
pub(super) const MAX_DEPTH: usize = 100;

struct Parser {
    chars: Vec<char>,
    pos: usize,
    /// Groups and negations open around `pos`.
    depth: usize,
}

/// Where a word ends besides whitespace, `(`, `)` and `"`.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// A top-level term: the first unescaped `:` ends the field name.
    Term,
    /// A field's value: `:` is an ordinary character.
    Value,
    /// A range bound: `]` and `}` end it too.
    Bound,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn ends_word(&self, i: usize) -> bool {
        self.chars
            .get(i)
            .is_none_or(|c| c.is_whitespace() || matches!(c, '(' | ')' | '"'))
    }

    fn at(&self, word: &str) -> bool {
        let n = word.chars().count();
        self.chars[self.pos..]
            .iter()
            .copied()
            .take(n)
            .eq(word.chars())
    }

    /// Operators are upper-case whole words, as in Datadog: `and` is a search term.
    fn keyword(&self) -> Option<&'static str> {
        ["AND", "OR", "NOT"]
            .into_iter()
            .find(|k| self.at(k) && self.ends_word(self.pos + k.len()))
    }

    fn found(&self) -> String {
        match self.peek() {
            None => "end of query".into(),
            Some(c) if c.is_whitespace() => "whitespace".into(),
            Some(c) => match self.keyword() {
                Some(k) => format!("`{k}`"),
                None => format!("`{c}`"),
            },
        }
    }

    fn fail(
        &self,
        position: usize,
        expected: impl Into<String>,
        found: impl AsRef<str>,
    ) -> QueryError {
        let expected = expected.into();
        let message = format!("expected {expected}, found {}", found.as_ref());
        QueryError {
            position,
            expected,
            message,
        }
    }

    fn error(&self, expected: impl Into<String>) -> QueryError {
        self.fail(self.pos, expected, self.found())
    }

    /// Opens a group or negation at `pos` (leave it with `depth -= 1`).
    fn enter(&mut self) -> Result<(), QueryError> {
        if self.depth == MAX_DEPTH {
            return Err(self.fail(
                self.pos,
                format!("at most {MAX_DEPTH} nested groups and negations"),
                "one more",
            ));
        }
        self.depth += 1;
        Ok(())
    }

    /// A term must start here: not the end, a `)` or a binary operator.
    fn expect_term(&self, expected: &str) -> Result<(), QueryError> {
        match (self.peek(), self.keyword()) {
            (None | Some(')'), _) | (_, Some("AND" | "OR")) => Err(self.error(expected)),
            _ => Ok(()),
        }
    }

    /// `ctx` is the field of an enclosing value group (`status:(a OR b)`), whose
    /// terms are values of that field rather than full-text terms.
    fn or(&mut self, ctx: Option<&Field>) -> Result<Node, QueryError> {
        let mut parts = vec![self.and(ctx)?];
        while self.keyword() == Some("OR") {
            self.pos += 2;
            self.skip_ws();
            self.expect_term("a search term after `OR`")?;
            parts.push(self.and(ctx)?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().unwrap()
        } else {
            Node::Or(parts.into())
        })
    }

    /// Returns with whitespace skipped, at the end, a `)` or an `OR`.
    fn and(&mut self, ctx: Option<&Field>) -> Result<Node, QueryError> {
        let mut parts = vec![self.unary(ctx)?];
        loop {
            self.skip_ws();
            if matches!(self.peek(), None | Some(')')) {
                break;
            }
            match self.keyword() {
                Some("OR") => break,
                Some("AND") => {
                    self.pos += 3;
                    self.skip_ws();
                    self.expect_term("a search term after `AND`")?;
                }
                _ => {}
            }
            parts.push(self.unary(ctx)?);
        }
        Ok(if parts.len() == 1 {
            parts.pop().unwrap()
        } else {
            Node::And(parts.into())
        })
    }

    fn unary(&mut self, ctx: Option<&Field>) -> Result<Node, QueryError> {
        if self.keyword() == Some("NOT") {
            self.enter()?;
            self.pos += 3;
            self.skip_ws();
            self.expect_term("a search term after `NOT`")?;
            let inner = self.unary(ctx)?;
            self.depth -= 1;
            return Ok(Node::Not(Box::new(inner)));
        }
        if self.peek() == Some('-') {
            self.enter()?;
            self.pos += 1;
            // `-` binds to the term right after it: `- a` is an error, not `NOT a`.
            if self.peek().is_some_and(char::is_whitespace) {
                return Err(self.error("a search term right after `-`"));
            }
            self.expect_term("a search term right after `-`")?;
            let inner = self.unary(ctx)?;
            self.depth -= 1;
            return Ok(Node::Not(Box::new(inner)));
        }
        self.primary(ctx)
    }

    fn primary(&mut self, ctx: Option<&Field>) -> Result<Node, QueryError> {
        if self.peek() == Some('(') {
            let open = self.pos;
            self.enter()?;
            self.pos += 1;
            self.skip_ws();
            self.expect_term("a search term after `(`")?;
            let node = self.or(ctx)?;
            if self.peek() != Some(')') {
                return Err(self.error(format!("`)` to close the `(` at position {open}")));
            }
            self.pos += 1;
            self.depth -= 1;
            return Ok(node);
        }
        match ctx {
            None => self.term(),
            Some(field) => self.value(field),
        }
    }

    /// A top-level term: a phrase, `field:value`, or a bare word.
    fn term(&mut self) -> Result<Node, QueryError> {
        if self.peek() == Some('"') {
            return self.value(&Field::Message);
        }
        let start = self.pos;
        let (pieces, colon) = self.word(Mode::Term)?;
        if !colon {
            if pieces == [Piece::Star] {
                return Ok(Node::All);
            }
            return Ok(Node::Text(TextMatch::new(&pieces)));
        }
        let name: String = self.chars[start..self.pos - 1].iter().collect();
        let field = self.field(&pieces, &name, start)?;
        if self.peek().is_none_or(|c| c.is_whitespace() || c == ')') {
            return Err(self.error(format!("a value after `{name}:`")));
        }
        self.primary(Some(&field))
    }

    fn field(&self, pieces: &[Piece], name: &str, start: usize) -> Result<Field, QueryError> {
        if pieces.is_empty() {
            return Err(self.fail(start, "a field name before `:`", "`:`"));
        }
        if pieces == [Piece::Star] {
            return Err(self.fail(
                start,
                "a field name",
                "`*:` (full-text search over all attributes is not supported in filters)",
            ));
        }
        if pieces.iter().any(|p| !matches!(p, Piece::Char(_))) {
            return Err(self.fail(start, "a field name without wildcards", format!("`{name}`")));
        }
        let text = as_text(pieces);
        if let Some(path) = text.strip_prefix('@') {
            if path.is_empty() {
                return Err(self.fail(start + 1, "an attribute name after `@`", "`:`"));
            }
            return Ok(Field::Attr(path.into()));
        }
        Ok(match text.as_str() {
            "message" => Field::Message,
            "host" => Field::Host,
            "service" => Field::Service,
            "source" => Field::Source,
            "status" => Field::Status,
            _ => Field::Tag(fold_str(&text, true)),
        })
    }

    /// A single value of `field` (groups were handled by `primary`).
    fn value(&mut self, field: &Field) -> Result<Node, QueryError> {
        let ci = field.case_insensitive();
        let test = match self.peek() {
            Some('"') => {
                let start = self.pos;
                let text = self.phrase()?;
                if *field != Field::Message {
                    Test::Exact(Literal::new(&text, ci))
                } else if text.is_empty() {
                    // It would match every message: surely a mistake in a filter.
                    return Err(self.fail(start, "text between the quotes", "`\"\"`"));
                } else {
                    return Ok(Node::Text(TextMatch::new(&as_pieces(&text))));
                }
            }
            Some('>' | '<') => {
                let op_len = if self.chars.get(self.pos + 1) == Some(&'=') {
                    2
                } else {
                    1
                };
                let op: String = self.chars[self.pos..self.pos + op_len].iter().collect();
                self.pos += op_len;
                let bound = self.bound(Mode::Value, &format!("a value after `{op}`"), ci)?;
                let (lo, hi) = if op.starts_with('>') {
                    (bound, None)
                } else {
                    (None, bound)
                };
                let inclusive = op_len == 2;
                Test::Range(Range {
                    lo,
                    lo_inclusive: inclusive,
                    hi,
                    hi_inclusive: inclusive,
                })
            }
            Some('[' | '{') => self.range(ci)?,
            _ => {
                let (pieces, _) = self.word(Mode::Value)?;
                if pieces.is_empty() {
                    return Err(self.error("a value"));
                } else if pieces == [Piece::Star] {
                    Test::Exists
                } else if *field == Field::Message {
                    return Ok(Node::Text(TextMatch::new(&pieces)));
                } else if pieces.iter().any(|p| !matches!(p, Piece::Char(_))) {
                    Test::Glob(Glob::new(&pieces, ci))
                } else {
                    Test::Exact(Literal::new(&as_text(&pieces), ci))
                }
            }
        };
        Ok(Node::Field(field.clone(), test))
    }

    /// `[lo TO hi]`, `{lo TO hi}`, or mixed: square brackets include the bound.
    fn range(&mut self, ci: bool) -> Result<Test, QueryError> {
        let open_at = self.pos;
        let open = self.chars[open_at];
        self.pos += 1;
        self.skip_ws();
        if self.at("TO")
            && self
                .chars
                .get(self.pos + 2)
                .is_some_and(|c| c.is_whitespace())
        {
            return Err(self.fail(self.pos, format!("a lower bound after `{open}`"), "`TO`"));
        }
        let lo = self.bound(Mode::Bound, &format!("a lower bound after `{open}`"), ci)?;
        self.skip_ws();
        let after_to = self.chars.get(self.pos + 2);
        if !(self.at("TO") && after_to.is_none_or(|c| c.is_whitespace() || matches!(c, ']' | '}')))
        {
            return Err(self.error("`TO` between the bounds of the range"));
        }
        self.pos += 2;
        self.skip_ws();
        let hi = self.bound(Mode::Bound, "an upper bound after `TO`", ci)?;
        self.skip_ws();
        let hi_inclusive = match self.peek() {
            Some(']') => true,
            Some('}') => false,
            _ => {
                return Err(self.error(format!(
                    "`]` or `}}` to close the range at position {open_at}"
                )))
            }
        };
        self.pos += 1;
        Ok(Test::Range(Range {
            lo,
            lo_inclusive: open == '[',
            hi,
            hi_inclusive,
        }))
    }

    /// A range or comparison bound: a phrase, a word, or `*` for unbounded.
    fn bound(&mut self, mode: Mode, expected: &str, ci: bool) -> Result<Option<Bound>, QueryError> {
        if self.peek() == Some('"') {
            return Ok(Some(Bound::new(&self.phrase()?, ci)));
        }
        let start = self.pos;
        let (pieces, _) = self.word(mode)?;
        if pieces.is_empty() {
            return Err(self.error(expected));
        }
        if pieces == [Piece::Star] {
            return Ok(None);
        }
        if pieces.iter().any(|p| !matches!(p, Piece::Char(_))) {
            let text: String = self.chars[start..self.pos].iter().collect();
            return Err(self.fail(
                start,
                "a bound without wildcards (escape `*` and `?` as `\\*`, `\\?`)",
                format!("`{text}`"),
            ));
        }
        Ok(Some(Bound::new(&as_text(&pieces), ci)))
    }

    /// Reads an unquoted word, resolving escapes; says whether it stopped at a field `:`.
    fn word(&mut self, mode: Mode) -> Result<(Vec<Piece>, bool), QueryError> {
        let mut pieces = Vec::new();
        while !self.ends_word(self.pos) {
            let c = self.chars[self.pos];
            if mode == Mode::Bound && matches!(c, ']' | '}') {
                break;
            }
            self.pos += 1;
            pieces.push(match c {
                ':' if mode == Mode::Term => return Ok((pieces, true)),
                '\\' => match self.peek() {
                    Some(e) => {
                        self.pos += 1;
                        Piece::Char(e)
                    }
                    None => return Err(self.error("a character after `\\`")),
                },
                '*' => Piece::Star,
                '?' => Piece::One,
                c => Piece::Char(c),
            });
        }
        Ok((pieces, false))
    }

    /// Reads a `"quoted phrase"`; inside, `\` escapes the next character.
    fn phrase(&mut self) -> Result<String, QueryError> {
        let open = self.pos;
        self.pos += 1;
        let mut text = String::new();
        loop {
            match self.peek() {
                None => {
                    return Err(
                        self.error(format!("a closing `\"` for the quote at position {open}"))
                    )
                }
                Some('"') => break,
                Some('\\') if self.pos + 1 < self.chars.len() => {
                    text.push(self.chars[self.pos + 1]);
                    self.pos += 1;
                }
                Some(c) => text.push(c),
            }
            self.pos += 1;
        }
        self.pos += 1;
        Ok(text)
    }
}

fn as_pieces(text: &str) -> Vec<Piece> {
    text.chars().map(Piece::Char).collect()
}

/// The text of a wildcard-free word.
fn as_text(pieces: &[Piece]) -> String {
    pieces
        .iter()
        .map(|p| if let Piece::Char(c) = p { *c } else { '*' })
        .collect()
}
