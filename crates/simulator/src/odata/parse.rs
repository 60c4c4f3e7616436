//! Lexer and recursive-descent parser for `$filter` (grammar in `mod.rs`).
//!
//! Errors name the position and what was expected, since a client author reads them while
//! fixing a query; nesting is bounded so hostile input cannot exhaust the stack.

use super::{Field, Filter, Op, Value};
use crate::timestamp;

/// Deeper nesting is refused rather than risking the stack.
const MAX_DEPTH: usize = 50;
/// Longest piece of the filter quoted back in an error.
const MAX_QUOTE: usize = 200;

pub(super) fn parse(src: &str) -> Result<Filter, String> {
    let mut parser = Parser {
        tokens: lex(src)?,
        next: 0,
        src,
        depth: 0,
    };
    let filter = parser.or()?;
    match parser.tokens.get(parser.next) {
        None => Ok(filter),
        Some(t) => Err(parser.syntax(t.pos, &format!("unexpected '{}'", t.text))),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Word,
    Str,
    Open,
    Close,
    Comma,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    /// Unquoted content for strings, the raw text otherwise.
    text: String,
    /// Character offset in the filter, for messages.
    pos: usize,
}

fn lex(src: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        let pos = i;
        let single = |kind| Token {
            kind,
            text: c.to_string(),
            pos,
        };
        match c {
            c if c.is_whitespace() => i += 1,
            '(' | ')' | ',' => {
                tokens.push(single(match c {
                    '(' => Kind::Open,
                    ')' => Kind::Close,
                    _ => Kind::Comma,
                }));
                i += 1;
            }
            '\'' => {
                // OData escapes a quote inside a string by doubling it.
                let mut text = String::new();
                i += 1;
                loop {
                    match (chars.get(i), chars.get(i + 1)) {
                        (Some('\''), Some('\'')) => {
                            text.push('\'');
                            i += 2;
                        }
                        (Some('\''), _) => break,
                        (Some(&c), _) => {
                            text.push(c);
                            i += 1;
                        }
                        (None, _) => {
                            return Err(format!(
                                "There is an unterminated string literal at position {pos} in '{}'.",
                                quote(src)
                            ));
                        }
                    }
                }
                i += 1;
                tokens.push(Token {
                    kind: Kind::Str,
                    text,
                    pos,
                });
            }
            _ => {
                let start = i;
                while chars
                    .get(i)
                    .is_some_and(|c| !c.is_whitespace() && !matches!(c, '(' | ')' | ',' | '\''))
                {
                    i += 1;
                }
                let text = chars.get(start..i).unwrap_or_default().iter().collect();
                tokens.push(Token {
                    kind: Kind::Word,
                    text,
                    pos,
                });
            }
        }
    }
    Ok(tokens)
}

pub(super) fn quote(src: &str) -> String {
    match src.char_indices().nth(MAX_QUOTE) {
        Some((cut, _)) => format!("{}...", &src[..cut]),
        None => src.to_owned(),
    }
}

struct Parser<'a> {
    tokens: Vec<Token>,
    next: usize,
    src: &'a str,
    depth: usize,
}

impl Parser<'_> {
    fn syntax(&self, pos: usize, detail: &str) -> String {
        format!(
            "Syntax error at position {pos} in '{}': {detail}.",
            quote(self.src)
        )
    }

    /// Position just past the last token, for "unexpected end" messages.
    fn end(&self) -> usize {
        self.src.chars().count()
    }

    fn peek_word(&self, word: &str) -> bool {
        self.tokens
            .get(self.next)
            .is_some_and(|t| t.kind == Kind::Word && t.text == word)
    }

    fn take(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.next).cloned();
        self.next += 1;
        token
    }

    fn expect(&mut self, kind: Kind, what: &str) -> Result<(), String> {
        match self.take() {
            Some(t) if t.kind == kind => Ok(()),
            Some(t) => Err(self.syntax(t.pos, &format!("{what} expected, found '{}'", t.text))),
            None => Err(self.syntax(self.end(), &format!("{what} expected at the end"))),
        }
    }

    fn nest(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!(
                "The $filter is nested more than {MAX_DEPTH} levels deep."
            ));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Filter, String> {
        let mut left = self.and()?;
        while self.peek_word("or") {
            self.next += 1;
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, String> {
        let mut left = self.unary()?;
        while self.peek_word("and") {
            self.next += 1;
            left = Filter::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, String> {
        if !self.peek_word("not") {
            return self.primary();
        }
        self.next += 1;
        self.nest()?;
        let inner = self.unary()?;
        self.depth -= 1;
        Ok(Filter::Not(Box::new(inner)))
    }

    fn primary(&mut self) -> Result<Filter, String> {
        let Some(token) = self.take() else {
            return Err(self.syntax(self.end(), "a property name expected at the end"));
        };
        match token.kind {
            Kind::Open => {
                self.nest()?;
                let inner = self.or()?;
                self.expect(Kind::Close, "')'")?;
                self.depth -= 1;
                Ok(inner)
            }
            Kind::Word => self.comparison(&token),
            _ => Err(self.syntax(
                token.pos,
                &format!("a property name expected, found '{}'", token.text),
            )),
        }
    }

    fn comparison(&mut self, name: &Token) -> Result<Filter, String> {
        let field = Field::parse(&name.text)?;
        let expected = "eq, ne, gt, ge, lt, le or in expected";
        let op_token = match self.take() {
            Some(t) if t.kind == Kind::Word => t,
            Some(t) => return Err(self.syntax(t.pos, &format!("{expected} after '{}'", name.text))),
            None => {
                return Err(self.syntax(self.end(), &format!("{expected} after '{}'", name.text)));
            }
        };
        let op = match op_token.text.as_str() {
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "gt" => Op::Gt,
            "ge" => Op::Ge,
            "lt" => Op::Lt,
            "le" => Op::Le,
            "in" => return self.in_list(field),
            other => return Err(self.syntax(op_token.pos, &format!("{expected}, found '{other}'"))),
        };
        let value = self.value(field)?;
        let ordered = !matches!(op, Op::Eq | Op::Ne);
        if ordered && (field != Field::CreationDateTimeUtc || value == Value::Null) {
            return Err(format!(
                "The operator '{}' is not supported for property '{}' and this value; use eq or ne.",
                op_token.text, name.text
            ));
        }
        Ok(Filter::Compare(field, op, value))
    }

    fn in_list(&mut self, field: Field) -> Result<Filter, String> {
        self.expect(Kind::Open, "'('")?;
        let mut values = vec![self.value(field)?];
        while self
            .tokens
            .get(self.next)
            .is_some_and(|t| t.kind == Kind::Comma)
        {
            self.next += 1;
            values.push(self.value(field)?);
        }
        self.expect(Kind::Close, "')'")?;
        Ok(Filter::In(field, values))
    }

    fn value(&mut self, field: Field) -> Result<Value, String> {
        let Some(token) = self.take() else {
            return Err(self.syntax(self.end(), "a value expected at the end"));
        };
        let is_time = field == Field::CreationDateTimeUtc;
        match token.kind {
            Kind::Word if token.text == "null" => Ok(Value::Null),
            Kind::Word if is_time => timestamp::parse_literal(&token.text)
                .map(Value::Time)
                .ok_or_else(|| {
                    format!(
                        "'{}' is not a valid DateTimeOffset literal; use e.g. 2024-01-02T13:39:46Z.",
                        quote(&token.text)
                    )
                }),
            // A quoted date is a string, which OData does not compare with a DateTimeOffset.
            Kind::Str if is_time => Err(format!(
                "A binary operator with incompatible types was detected. Found operand types 'Edm.DateTimeOffset' and 'Edm.String' for property 'creationDateTimeUtc'; write the date unquoted, e.g. creationDateTimeUtc ge {}.",
                quote(&token.text)
            )),
            Kind::Str => match field.members() {
                Some(members) if !members.contains(&token.text.as_str()) => Err(format!(
                    "The string '{}' is not a valid enumeration type constant. Use one of: {}.",
                    quote(&token.text),
                    members.join(", ")
                )),
                _ => Ok(Value::Text(token.text)),
            },
            Kind::Word => Err(self.syntax(
                token.pos,
                &format!("'{}' must be a quoted string, e.g. status eq 'Pending'", token.text),
            )),
            _ => Err(self.syntax(token.pos, &format!("a value expected, found '{}'", token.text))),
        }
    }
}
