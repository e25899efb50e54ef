//! Splits a statement into tokens, each with the byte offset where it starts.
//!
//! Words (keywords and identifiers alike: the parser tells them apart), numbers, strings in
//! single quotes (`''` writes one quote) and symbols. The last token is always [`Kind::End`].

use crate::error::Reason;

/// A token and where it starts.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Token<'s> {
    pub(crate) kind: Kind<'s>,
    pub(crate) offset: usize,
}

/// What a token is.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Kind<'s> {
    /// A keyword or an identifier: `[A-Za-z_][A-Za-z0-9_]*`.
    Word(&'s str),
    /// A number as written: digits, an optional fraction and an optional exponent.
    Number(&'s str),
    /// A string literal, quotes removed and `''` unescaped.
    Text(String),
    /// An operator or punctuation.
    Symbol(Symbol),
    /// The end of the statement.
    End,
}

/// Operators and punctuation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Symbol {
    OpenParen,
    CloseParen,
    OpenBracket,
    CloseBracket,
    OpenBrace,
    CloseBrace,
    Comma,
    Dot,
    Colon,
    Semicolon,
    Star,
    Plus,
    Minus,
    Slash,
    Percent,
    Equal,
    NotEqual,
    Less,
    LessEqual,
    Greater,
    GreaterEqual,
}

impl Symbol {
    /// The symbol as written (`!=` and `<>` both write [`Symbol::NotEqual`]; this gives `<>`).
    pub(crate) fn text(self) -> &'static str {
        match self {
            Symbol::OpenParen => "(",
            Symbol::CloseParen => ")",
            Symbol::OpenBracket => "[",
            Symbol::CloseBracket => "]",
            Symbol::OpenBrace => "{",
            Symbol::CloseBrace => "}",
            Symbol::Comma => ",",
            Symbol::Dot => ".",
            Symbol::Colon => ":",
            Symbol::Semicolon => ";",
            Symbol::Star => "*",
            Symbol::Plus => "+",
            Symbol::Minus => "-",
            Symbol::Slash => "/",
            Symbol::Percent => "%",
            Symbol::Equal => "=",
            Symbol::NotEqual => "<>",
            Symbol::Less => "<",
            Symbol::LessEqual => "<=",
            Symbol::Greater => ">",
            Symbol::GreaterEqual => ">=",
        }
    }
}

/// The tokens of `sql`, ending with [`Kind::End`], or the first lexical error and its offset.
pub(crate) fn tokenize(sql: &str) -> Result<Vec<Token<'_>>, (usize, Reason)> {
    let bytes = sql.as_bytes();
    let mut tokens = Vec::new();
    let mut position = 0;
    while position < bytes.len() {
        let start = position;
        let kind = match bytes[start] {
            b' ' | b'\t' | b'\r' | b'\n' => {
                position += 1;
                continue;
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                while position < bytes.len() && (bytes[position].is_ascii_alphanumeric() || bytes[position] == b'_') {
                    position += 1;
                }
                Kind::Word(&sql[start..position])
            }
            b'0'..=b'9' => {
                position = number_end(bytes, start);
                Kind::Number(&sql[start..position])
            }
            b'\'' => {
                let (text, end) = string(sql, start)?;
                position = end;
                Kind::Text(text)
            }
            quote @ (b'"' | b'`') => return Err((start, Reason::Quote(char::from(quote)))),
            _ => {
                let Some((symbol, length)) = symbol(&bytes[start..]) else {
                    let character = sql[start..].chars().next().unwrap_or(char::REPLACEMENT_CHARACTER);
                    return Err((start, Reason::UnexpectedCharacter(character)));
                };
                position += length;
                Kind::Symbol(symbol)
            }
        };
        tokens.push(Token { kind, offset: start });
    }
    tokens.push(Token { kind: Kind::End, offset: sql.len() });
    Ok(tokens)
}

/// Where the number starting at `start` ends: digits, then `.` and digits, then `e`, an optional
/// sign and digits. A `.` or `e` not followed by a digit is not part of the number.
fn number_end(bytes: &[u8], start: usize) -> usize {
    let digits_from = |mut position: usize| {
        while bytes.get(position).is_some_and(u8::is_ascii_digit) {
            position += 1;
        }
        position
    };
    let mut end = digits_from(start);
    if bytes.get(end) == Some(&b'.') && bytes.get(end + 1).is_some_and(u8::is_ascii_digit) {
        end = digits_from(end + 1);
    }
    if matches!(bytes.get(end), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(bytes.get(end + 1), Some(b'+' | b'-')));
        if bytes.get(end + 1 + sign).is_some_and(u8::is_ascii_digit) {
            end = digits_from(end + 1 + sign);
        }
    }
    end
}

/// The string literal whose opening quote is at `start`, and the offset after its closing quote.
fn string(sql: &str, start: usize) -> Result<(String, usize), (usize, Reason)> {
    let bytes = sql.as_bytes();
    let mut text = String::new();
    let mut from = start + 1;
    let mut position = from;
    while position < bytes.len() {
        if bytes[position] == b'\'' {
            if bytes.get(position + 1) == Some(&b'\'') {
                text.push_str(&sql[from..=position]);
                position += 2;
                from = position;
                continue;
            }
            text.push_str(&sql[from..position]);
            return Ok((text, position + 1));
        }
        position += 1;
    }
    Err((start, Reason::UnterminatedString))
}

/// The symbol at the start of `bytes` and its length in bytes.
fn symbol(bytes: &[u8]) -> Option<(Symbol, usize)> {
    let two = match bytes {
        [b'<', b'>', ..] | [b'!', b'=', ..] => Some(Symbol::NotEqual),
        [b'<', b'=', ..] => Some(Symbol::LessEqual),
        [b'>', b'=', ..] => Some(Symbol::GreaterEqual),
        _ => None,
    };
    if let Some(symbol) = two {
        return Some((symbol, 2));
    }
    let one = match bytes.first()? {
        b'(' => Symbol::OpenParen,
        b')' => Symbol::CloseParen,
        b'[' => Symbol::OpenBracket,
        b']' => Symbol::CloseBracket,
        b'{' => Symbol::OpenBrace,
        b'}' => Symbol::CloseBrace,
        b',' => Symbol::Comma,
        b'.' => Symbol::Dot,
        b':' => Symbol::Colon,
        b';' => Symbol::Semicolon,
        b'*' => Symbol::Star,
        b'+' => Symbol::Plus,
        b'-' => Symbol::Minus,
        b'/' => Symbol::Slash,
        b'%' => Symbol::Percent,
        b'=' => Symbol::Equal,
        b'<' => Symbol::Less,
        b'>' => Symbol::Greater,
        _ => return None,
    };
    Some((one, 1))
}
