//! The recursive-descent parser: a statement's tokens to its `SELECT`, `FROM` and `WHERE`.
//!
//! ```text
//! statement  := SELECT [VALUE] (expr | items) FROM 'filter' [WHERE expr] [;]
//! items      := item (, item)*          item := * | expr [AS name]
//! expr       := and (OR and)*           and := not (AND not)*
//! not        := NOT not | comparison    comparison := sum [(= | <> | != | < | <= | > | >=) sum]
//! sum        := product ((+ | -) product)*
//! product    := unary ((* | / | %) unary)*
//! unary      := - unary | postfix       postfix := primary (. name | [ expr ])*
//! primary    := number | 'string' | TRUE | FALSE | NULL | * | name | name ( [expr (, expr)*] )
//!             | cast ( expr AS type ) | ( expr ) | [ ... ] | { key : expr, ... } | CASE ... END
//! ```
//!
//! Keywords are case-insensitive. Nesting and operator chains are bounded ([`MAX_DEPTH`]) so
//! that neither parsing nor evaluating a hostile statement can exhaust the stack.

use crate::ast::{BinaryOp, CastType, Expr, Select, SelectItem, UnaryOp};
use crate::error::{ParseError, Reason};
use crate::functions::Function;
use crate::lexer::{Kind, Symbol, Token, tokenize};
use crate::topic;
use crate::value::Value;

/// The deepest nesting of expressions (and the longest chain of operators) accepted.
pub(crate) const MAX_DEPTH: usize = 100;

/// Words that cannot name a payload member.
const RESERVED: [&str; 15] = [
    "SELECT", "FROM", "WHERE", "AS", "AND", "OR", "NOT", "TRUE", "FALSE", "NULL", "CASE", "WHEN", "THEN", "ELSE", "END",
];

/// A parsed statement.
pub(crate) struct Statement {
    pub(crate) select: Select,
    pub(crate) topic_filter: String,
    pub(crate) condition: Option<Expr>,
}

type Parse<T> = Result<T, (usize, Reason)>;

/// Parses `sql` as a whole statement.
pub(crate) fn parse(sql: &str) -> Result<Statement, ParseError> {
    if sql.trim().is_empty() {
        return Err(ParseError::new(sql, 0, Reason::Empty));
    }
    let to_error = |(offset, reason)| ParseError::new(sql, offset, reason);
    let tokens = tokenize(sql).map_err(to_error)?;
    Parser { tokens, next: 0, depth: 0 }.statement().map_err(to_error)
}

struct Parser<'s> {
    tokens: Vec<Token<'s>>,
    next: usize,
    depth: usize,
}

impl<'s> Parser<'s> {
    fn statement(&mut self) -> Parse<Statement> {
        self.expect_keyword("SELECT", "SELECT")?;
        let select = if self.at_value_keyword() {
            self.advance();
            let value = self.expression()?;
            self.expect_keyword("FROM", "FROM")?;
            Select::Value(value)
        } else {
            let items = self.items()?;
            self.expect_keyword("FROM", "',' or FROM")?;
            Select::Items(items)
        };
        let offset = self.offset();
        let Kind::Text(filter) = &mut self.tokens[self.next].kind else {
            return Err(self.expected("a topic filter in single quotes"));
        };
        let topic_filter = std::mem::take(filter);
        self.advance();
        if let Err(problem) = topic::check_filter(&topic_filter) {
            return Err((offset, Reason::InvalidTopicFilter { filter: topic_filter, problem }));
        }
        let condition = if self.eat_keyword("WHERE") { Some(self.expression()?) } else { None };
        self.eat_symbol(Symbol::Semicolon);
        if self.kind() != &Kind::End {
            return Err((self.offset(), Reason::TrailingInput(self.found())));
        }
        Ok(Statement { select, topic_filter, condition })
    }

    /// `VALUE` right after `SELECT` is the keyword when an expression follows it; otherwise
    /// (`SELECT value FROM ...`, `SELECT value.x, ...`) it names a payload member.
    fn at_value_keyword(&self) -> bool {
        if !self.is_keyword("VALUE") {
            return false;
        }
        match self.following() {
            Kind::Word(word) => !word.eq_ignore_ascii_case("FROM") && !word.eq_ignore_ascii_case("AS"),
            Kind::Number(_) | Kind::Text(_) => true,
            Kind::Symbol(symbol) => {
                matches!(symbol, Symbol::OpenParen | Symbol::OpenBrace | Symbol::Star | Symbol::Minus)
            }
            Kind::End => false,
        }
    }

    fn items(&mut self) -> Parse<Vec<SelectItem>> {
        let mut items = Vec::new();
        loop {
            let wildcard = self.kind() == &Kind::Symbol(Symbol::Star)
                && match self.following() {
                    Kind::Symbol(Symbol::Comma) | Kind::End => true,
                    Kind::Word(word) => word.eq_ignore_ascii_case("FROM"),
                    _ => false,
                };
            if wildcard {
                self.advance();
                items.push(SelectItem::Wildcard);
            } else {
                let expr = self.expression()?;
                let name = if self.eat_keyword("AS") {
                    self.name("a name after AS")?
                } else {
                    default_name(&expr, items.len() + 1)
                };
                items.push(SelectItem::Field { expr, name });
            }
            if !self.eat_symbol(Symbol::Comma) {
                return Ok(items);
            }
        }
    }

    fn expression(&mut self) -> Parse<Expr> {
        self.enter()?;
        let expr = self.or()?;
        self.depth -= 1;
        Ok(expr)
    }

    fn or(&mut self) -> Parse<Expr> {
        let mut left = self.and()?;
        let depth = self.depth;
        while self.eat_keyword("OR") {
            self.enter()?;
            left = binary(BinaryOp::Or, left, self.and()?);
        }
        self.depth = depth;
        Ok(left)
    }

    fn and(&mut self) -> Parse<Expr> {
        let mut left = self.not()?;
        let depth = self.depth;
        while self.eat_keyword("AND") {
            self.enter()?;
            left = binary(BinaryOp::And, left, self.not()?);
        }
        self.depth = depth;
        Ok(left)
    }

    fn not(&mut self) -> Parse<Expr> {
        if !self.eat_keyword("NOT") {
            return self.comparison();
        }
        self.enter()?;
        let operand = self.not()?;
        self.depth -= 1;
        Ok(Expr::Unary(UnaryOp::Not, Box::new(operand)))
    }

    fn comparison(&mut self) -> Parse<Expr> {
        let left = self.sum()?;
        let op = match self.kind() {
            Kind::Symbol(Symbol::Equal) => BinaryOp::Equal,
            Kind::Symbol(Symbol::NotEqual) => BinaryOp::NotEqual,
            Kind::Symbol(Symbol::Less) => BinaryOp::Less,
            Kind::Symbol(Symbol::LessEqual) => BinaryOp::LessEqual,
            Kind::Symbol(Symbol::Greater) => BinaryOp::Greater,
            Kind::Symbol(Symbol::GreaterEqual) => BinaryOp::GreaterEqual,
            _ => return Ok(left),
        };
        self.advance();
        Ok(binary(op, left, self.sum()?))
    }

    fn sum(&mut self) -> Parse<Expr> {
        let mut left = self.product()?;
        let depth = self.depth;
        loop {
            let op = match self.kind() {
                Kind::Symbol(Symbol::Plus) => BinaryOp::Add,
                Kind::Symbol(Symbol::Minus) => BinaryOp::Subtract,
                _ => break,
            };
            self.advance();
            self.enter()?;
            left = binary(op, left, self.product()?);
        }
        self.depth = depth;
        Ok(left)
    }

    fn product(&mut self) -> Parse<Expr> {
        let mut left = self.unary()?;
        let depth = self.depth;
        loop {
            let op = match self.kind() {
                Kind::Symbol(Symbol::Star) => BinaryOp::Multiply,
                Kind::Symbol(Symbol::Slash) => BinaryOp::Divide,
                Kind::Symbol(Symbol::Percent) => BinaryOp::Remainder,
                _ => break,
            };
            self.advance();
            self.enter()?;
            left = binary(op, left, self.unary()?);
        }
        self.depth = depth;
        Ok(left)
    }

    fn unary(&mut self) -> Parse<Expr> {
        if !self.eat_symbol(Symbol::Minus) {
            return self.postfix();
        }
        self.enter()?;
        let operand = self.unary()?;
        self.depth -= 1;
        Ok(Expr::Unary(UnaryOp::Negate, Box::new(operand)))
    }

    fn postfix(&mut self) -> Parse<Expr> {
        let mut expr = self.primary()?;
        let depth = self.depth;
        loop {
            if self.eat_symbol(Symbol::Dot) {
                self.enter()?;
                let name = match self.kind() {
                    Kind::Word(name) if !is_reserved(name) => *name,
                    _ => return Err(self.expected("a member name after '.'")),
                };
                expr = Expr::Member(Box::new(expr), name.to_owned());
                self.advance();
            } else if self.eat_symbol(Symbol::OpenBracket) {
                self.enter()?;
                let index = self.expression()?;
                self.expect_symbol(Symbol::CloseBracket, "']'")?;
                expr = Expr::Index(Box::new(expr), Box::new(index));
            } else {
                break;
            }
        }
        self.depth = depth;
        Ok(expr)
    }

    fn primary(&mut self) -> Parse<Expr> {
        let offset = self.offset();
        let expr = match &mut self.tokens[self.next].kind {
            Kind::Number(text) => {
                Expr::Literal(number(text).ok_or((offset, Reason::InvalidNumber((*text).to_owned())))?)
            }
            Kind::Text(text) => Expr::Literal(serde_json::Value::String(std::mem::take(text))),
            Kind::Symbol(Symbol::Star) => Expr::Payload,
            Kind::Symbol(Symbol::OpenParen) => {
                self.advance();
                let expr = self.expression()?;
                self.expect_symbol(Symbol::CloseParen, "')'")?;
                return Ok(expr);
            }
            Kind::Symbol(Symbol::OpenBracket) => return self.array(),
            Kind::Symbol(Symbol::OpenBrace) => return self.object(),
            Kind::Word(word) => {
                let word = *word;
                if word.eq_ignore_ascii_case("TRUE") {
                    Expr::Literal(serde_json::Value::Bool(true))
                } else if word.eq_ignore_ascii_case("FALSE") {
                    Expr::Literal(serde_json::Value::Bool(false))
                } else if word.eq_ignore_ascii_case("NULL") {
                    Expr::Literal(serde_json::Value::Null)
                } else if word.eq_ignore_ascii_case("CASE") {
                    return self.case();
                } else if is_reserved(word) {
                    return Err(self.expected("an expression"));
                } else if *self.following() == Kind::Symbol(Symbol::OpenParen) {
                    return self.call(word, offset);
                } else {
                    Expr::Field(word.to_owned())
                }
            }
            Kind::Symbol(_) | Kind::End => return Err(self.expected("an expression")),
        };
        self.advance();
        Ok(expr)
    }

    fn array(&mut self) -> Parse<Expr> {
        self.advance();
        let mut elements = Vec::new();
        if !self.eat_symbol(Symbol::CloseBracket) {
            loop {
                elements.push(self.expression()?);
                if !self.eat_symbol(Symbol::Comma) {
                    break;
                }
            }
            self.expect_symbol(Symbol::CloseBracket, "',' or ']'")?;
        }
        Ok(Expr::Array(elements))
    }

    fn object(&mut self) -> Parse<Expr> {
        self.advance();
        let mut members = Vec::new();
        if !self.eat_symbol(Symbol::CloseBrace) {
            loop {
                let key = match &mut self.tokens[self.next].kind {
                    Kind::Text(text) => std::mem::take(text),
                    Kind::Word(word) if !is_reserved(word) => (*word).to_owned(),
                    _ => return Err(self.expected("a key ('name')")),
                };
                self.advance();
                self.expect_symbol(Symbol::Colon, "':'")?;
                members.push((key, self.expression()?));
                if !self.eat_symbol(Symbol::Comma) {
                    break;
                }
            }
            self.expect_symbol(Symbol::CloseBrace, "',' or '}'")?;
        }
        Ok(Expr::Object(members))
    }

    fn case(&mut self) -> Parse<Expr> {
        self.advance();
        let operand = if self.is_keyword("WHEN") { None } else { Some(Box::new(self.expression()?)) };
        let mut branches = Vec::new();
        while self.eat_keyword("WHEN") {
            let when = self.expression()?;
            self.expect_keyword("THEN", "THEN")?;
            branches.push((when, self.expression()?));
        }
        if branches.is_empty() {
            return Err(self.expected("WHEN"));
        }
        let otherwise = if self.eat_keyword("ELSE") { Some(Box::new(self.expression()?)) } else { None };
        self.expect_keyword("END", "WHEN, ELSE or END")?;
        Ok(Expr::Case { operand, branches, otherwise })
    }

    /// A call of `name`, whose `(` is the next token but one.
    fn call(&mut self, name: &str, offset: usize) -> Parse<Expr> {
        if name.eq_ignore_ascii_case("cast") {
            return self.cast();
        }
        let function = Function::lookup(name).ok_or_else(|| (offset, Reason::UnknownFunction(name.to_owned())))?;
        self.advance();
        self.advance();
        let mut arguments = Vec::new();
        if !self.eat_symbol(Symbol::CloseParen) {
            loop {
                arguments.push(self.expression()?);
                if !self.eat_symbol(Symbol::Comma) {
                    break;
                }
            }
            self.expect_symbol(Symbol::CloseParen, "',' or ')'")?;
        }
        if let Err(expected) = function.check_arguments(arguments.len()) {
            let function = function.name();
            return Err((offset, Reason::ArgumentCount { function, expected, found: arguments.len() }));
        }
        let unknown_scheme =
            matches!(arguments.get(1), Some(Expr::Literal(serde_json::Value::String(scheme))) if scheme != "base64");
        if function == Function::Encode && unknown_scheme {
            let problem = "the only encoding scheme is 'base64'";
            return Err((offset, Reason::InvalidArgument { function: "encode", problem }));
        }
        Ok(Expr::Call(function, arguments))
    }

    fn cast(&mut self) -> Parse<Expr> {
        self.advance();
        self.advance();
        let value = self.expression()?;
        self.expect_keyword("AS", "AS")?;
        let Kind::Word(name) = self.kind() else {
            return Err(self.expected("a type (Int, Decimal, Boolean or String)"));
        };
        let cast_type = match name.to_ascii_lowercase().as_str() {
            "int" => CastType::Int,
            "decimal" => CastType::Decimal,
            "boolean" | "bool" => CastType::Boolean,
            "string" => CastType::String,
            _ => return Err((self.offset(), Reason::UnknownType((*name).to_owned()))),
        };
        self.advance();
        self.expect_symbol(Symbol::CloseParen, "')'")?;
        Ok(Expr::Cast(Box::new(value), cast_type))
    }

    /// A name after `AS`: an identifier that is not a reserved word.
    fn name(&mut self, expected: &'static str) -> Parse<String> {
        match self.kind() {
            Kind::Word(word) if !is_reserved(word) => {
                let name = (*word).to_owned();
                self.advance();
                Ok(name)
            }
            _ => Err(self.expected(expected)),
        }
    }

    /// Counts one level of nesting, refusing the statement past [`MAX_DEPTH`]. Callers restore
    /// `depth` when they return.
    fn enter(&mut self) -> Parse<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err((self.offset(), Reason::TooDeep(MAX_DEPTH)));
        }
        Ok(())
    }

    fn kind(&self) -> &Kind<'s> {
        &self.tokens[self.next].kind
    }

    /// The token after the current one (the last token, [`Kind::End`], is its own follower).
    fn following(&self) -> &Kind<'s> {
        &self.tokens[(self.next + 1).min(self.tokens.len() - 1)].kind
    }

    fn offset(&self) -> usize {
        self.tokens[self.next].offset
    }

    /// Moves to the next token; the last ([`Kind::End`]) is never passed.
    fn advance(&mut self) {
        if self.next + 1 < self.tokens.len() {
            self.next += 1;
        }
    }

    fn is_keyword(&self, keyword: &str) -> bool {
        matches!(self.kind(), Kind::Word(word) if word.eq_ignore_ascii_case(keyword))
    }

    fn eat_keyword(&mut self, keyword: &str) -> bool {
        let found = self.is_keyword(keyword);
        if found {
            self.advance();
        }
        found
    }

    fn expect_keyword(&mut self, keyword: &str, expected: &'static str) -> Parse<()> {
        if self.eat_keyword(keyword) { Ok(()) } else { Err(self.expected(expected)) }
    }

    fn eat_symbol(&mut self, symbol: Symbol) -> bool {
        let found = self.kind() == &Kind::Symbol(symbol);
        if found {
            self.advance();
        }
        found
    }

    fn expect_symbol(&mut self, symbol: Symbol, expected: &'static str) -> Parse<()> {
        if self.eat_symbol(symbol) { Ok(()) } else { Err(self.expected(expected)) }
    }

    fn expected(&self, expected: &'static str) -> (usize, Reason) {
        (self.offset(), Reason::Expected { expected, found: self.found() })
    }

    /// The current token, described for an error message.
    fn found(&self) -> String {
        match self.kind() {
            Kind::Word(word) => format!("'{word}'"),
            Kind::Number(number) => format!("the number {number}"),
            Kind::Text(_) => "a string".to_owned(),
            Kind::Symbol(symbol) => format!("'{}'", symbol.text()),
            Kind::End => "the end of the statement".to_owned(),
        }
    }
}

fn binary(op: BinaryOp, left: Expr, right: Expr) -> Expr {
    Expr::Binary(op, Box::new(left), Box::new(right))
}

fn is_reserved(word: &str) -> bool {
    RESERVED.iter().any(|reserved| reserved.eq_ignore_ascii_case(word))
}

/// A number literal as a JSON number: Int when it has no fraction or exponent and fits 64 bits;
/// otherwise a Decimal (whole Decimals become Ints, as in SQL version 2016-03-23).
fn number(text: &str) -> Option<serde_json::Value> {
    if let Ok(integer) = text.parse::<i64>() {
        return Some(integer.into());
    }
    let decimal = text.parse::<f64>().ok()?;
    Value::decimal(decimal).into_json()
}

/// The output member name of an item without `AS`.
fn default_name(expr: &Expr, position: usize) -> String {
    match expr {
        Expr::Field(name) | Expr::Member(_, name) => name.clone(),
        Expr::Index(inner, _) if matches!(**inner, Expr::Field(_) | Expr::Member(..) | Expr::Index(..)) => {
            default_name(inner, position)
        }
        Expr::Call(function, _) => function.name().to_owned(),
        _ => format!("_{position}"),
    }
}
