//! The parsed statement: what [`Rule::select`](crate::Rule::select) and
//! [`Rule::condition`](crate::Rule::condition) describe.
//!
//! The tree is what the parser built, with functions resolved and literals converted to JSON
//! values; evaluation walks it as is.

use crate::functions::Function;

/// The `SELECT` clause.
#[derive(Clone, Debug, PartialEq)]
pub enum Select {
    /// `SELECT item, item, ...`: the output is a JSON object.
    Items(Vec<SelectItem>),
    /// `SELECT VALUE expr`: the output is the expression's value itself, of any type.
    Value(Expr),
}

/// One item of a `SELECT` list.
#[derive(Clone, Debug, PartialEq)]
pub enum SelectItem {
    /// `*`: the members of the payload object.
    Wildcard,
    /// `expr [AS name]`: one member of the output, omitted when the value is Undefined.
    Field {
        /// What is selected.
        expr: Expr,
        /// The member's name: the alias, or one derived from the expression (`a.b` gives `b`,
        /// `clientid()` gives `clientid`, anything else `_N` for the N-th item, from 1).
        name: String,
    },
}

/// An expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// A literal: a number, a string, `true`, `false` or `null`.
    Literal(serde_json::Value),
    /// `*` inside an expression (`encode(*, 'base64')`, `get(*, 'a-b')`): the whole payload.
    Payload,
    /// A name at the top level of the payload (`temperature`).
    Field(String),
    /// `expr.name`: a member of an object.
    Member(Box<Expr>, String),
    /// `expr[index]`: an element of an array (from 0), a member of an object, a character of a
    /// string.
    Index(Box<Expr>, Box<Expr>),
    /// `[a, b, ...]`: an array literal (Undefined elements are left out).
    Array(Vec<Expr>),
    /// `{'key': value, ...}`: an object literal (Undefined members are left out).
    Object(Vec<(String, Expr)>),
    /// `-x`, `NOT x`.
    Unary(UnaryOp, Box<Expr>),
    /// `a + b`, `a = b`, `a AND b`, ...
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// `function(arguments...)`, its argument count checked.
    Call(Function, Vec<Expr>),
    /// `cast(expr AS type)`.
    Cast(Box<Expr>, CastType),
    /// `CASE [operand] WHEN a THEN b ... [ELSE c] END`.
    Case {
        /// The value compared with each `WHEN` (with `=`); without it each `WHEN` is a condition.
        operand: Option<Box<Expr>>,
        /// The `WHEN ... THEN ...` pairs, in order.
        branches: Vec<(Expr, Expr)>,
        /// The `ELSE` value; without it, no match gives Undefined.
        otherwise: Option<Box<Expr>>,
    },
}

/// A prefix operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    /// `-x`.
    Negate,
    /// `NOT x`.
    Not,
}

/// An infix operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// `+`: addition, or concatenation of two strings.
    Add,
    /// `-`.
    Subtract,
    /// `*`.
    Multiply,
    /// `/`: integer division for two Ints.
    Divide,
    /// `%`.
    Remainder,
    /// `=`.
    Equal,
    /// `<>` or `!=`.
    NotEqual,
    /// `<`.
    Less,
    /// `<=`.
    LessEqual,
    /// `>`.
    Greater,
    /// `>=`.
    GreaterEqual,
    /// `AND`.
    And,
    /// `OR`.
    Or,
}

/// The target type of `cast`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CastType {
    /// `Int`.
    Int,
    /// `Decimal`.
    Decimal,
    /// `Boolean` (or `Bool`).
    Boolean,
    /// `String`.
    String,
}
