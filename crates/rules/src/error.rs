//! The one error type of the crate: why a statement was refused, and where.
//!
//! Every [`Reason`] is a reason for AWS IoT's `SqlParseException`: the API layer maps any
//! [`ParseError`] to that one shape and passes the message on. The message names the place in
//! the statement (line and column, counted in characters from 1) so the author can find it.

use std::fmt;

/// Why [`Rule::parse`](crate::Rule::parse) refused a statement, and where in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    reason: Reason,
    offset: usize,
    line: usize,
    column: usize,
}

impl ParseError {
    /// Locates `offset` (a byte offset into `sql`, on a character boundary) as a line and column.
    pub(crate) fn new(sql: &str, offset: usize, reason: Reason) -> ParseError {
        let before = sql.get(..offset).unwrap_or(sql);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
        let column = before[line_start..].chars().count() + 1;
        ParseError { reason, offset, line, column }
    }

    /// What is wrong.
    pub fn reason(&self) -> &Reason {
        &self.reason
    }

    /// Where: the byte offset into the statement (0 for its start, its length for its end).
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Where: the line, counted from 1.
    pub fn line(&self) -> usize {
        self.line
    }

    /// Where: the column in [`line`](Self::line), in characters, counted from 1.
    pub fn column(&self) -> usize {
        self.column
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (line {}, column {})", self.reason, self.line, self.column)
    }
}

impl std::error::Error for ParseError {}

/// What is wrong with a statement.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// The statement is empty or holds only whitespace.
    #[error("the sql statement is empty")]
    Empty,
    /// A string opened with `'` is never closed.
    #[error("unterminated string: the string opened here has no closing '")]
    UnterminatedString,
    /// Double quotes and backticks: not part of the language.
    #[error(
        "{0} is not supported: write strings in single quotes ('text'), and read a member whose name is not \
         an identifier with get(*, 'name')"
    )]
    Quote(char),
    /// A character that starts no token.
    #[error("unexpected character {0:?}")]
    UnexpectedCharacter(char),
    /// A number literal that is not a finite number.
    #[error("invalid number {0}")]
    InvalidNumber(String),
    /// The grammar wanted something else here.
    #[error("expected {expected}, found {found}")]
    Expected {
        /// What the grammar allows here ("FROM", "an expression", ...).
        expected: &'static str,
        /// What the statement holds instead.
        found: String,
    },
    /// A call of a function the language does not have (or certfleet does not implement).
    #[error("unknown function {0}()")]
    UnknownFunction(String),
    /// A call with too few or too many arguments.
    #[error("function {function}() takes {expected} argument(s), not {found}")]
    ArgumentCount {
        /// The function's name.
        function: &'static str,
        /// How many it takes ("1", "1 or 2", "at least 2").
        expected: &'static str,
        /// How many the call gives.
        found: usize,
    },
    /// A literal argument the function can never accept (`encode(*, 'hex')`).
    #[error("function {function}(): {problem}")]
    InvalidArgument {
        /// The function's name.
        function: &'static str,
        /// What is wrong with the argument.
        problem: &'static str,
    },
    /// `cast(x AS T)` with a `T` that is not a type of the language.
    #[error("unknown type {0} in cast: use Int, Decimal, Boolean or String")]
    UnknownType(String),
    /// The `FROM` topic filter is not a valid MQTT topic filter.
    #[error("invalid topic filter '{filter}' in FROM: {problem}")]
    InvalidTopicFilter {
        /// The filter as written.
        filter: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// Something follows a complete statement.
    #[error("unexpected {0} after the end of the statement")]
    TrailingInput(String),
    /// Expressions nest (or chain) deeper than the parser allows.
    #[error("the expression nests deeper than {0} levels")]
    TooDeep(usize),
}

/// Why evaluating a rule for a message failed: a bound of the evaluation's
/// [`Limits`](crate::Limits) would have been exceeded. Nothing was built past the bound; the
/// caller runs the rule's error action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// A value (a function's result, a literal array or object, the output) would be larger
    /// than [`Limits::max_value_bytes`](crate::Limits::max_value_bytes).
    #[error("the rule's output would be larger than {limit} bytes")]
    OutputTooLarge {
        /// The bound, in bytes.
        limit: usize,
    },
    /// The evaluation took more steps than [`Limits::max_steps`](crate::Limits::max_steps).
    #[error("the rule's evaluation took more than {budget} steps")]
    StepBudgetExceeded {
        /// The budget, in steps.
        budget: u64,
    },
    /// Expressions nest deeper than [`Limits::max_depth`](crate::Limits::max_depth).
    #[error("the rule's expressions nest deeper than {limit} levels")]
    TooDeep {
        /// The bound, in levels.
        limit: usize,
    },
    /// The payload's JSON nests deeper than
    /// [`Limits::max_payload_depth`](crate::Limits::max_payload_depth).
    #[error("the payload's JSON nests deeper than {limit} levels")]
    PayloadTooDeep {
        /// The bound, in levels.
        limit: usize,
    },
}
