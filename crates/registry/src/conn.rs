//! The little each backend must provide: run a statement, run a query, lock an account row.
//!
//! Statements use PostgreSQL's `$1, $2, ...` placeholders. SQLite reads `$1` as a named
//! parameter and numbers parameters by first appearance, so statements whose placeholders first
//! appear in order bind positionally on both backends. All integers are 64-bit and all other
//! values text, so one schema and one set of statements serve both.

use crate::Error;

/// A value bound to, or read from, a statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Text(String),
}

impl From<i64> for Value {
    fn from(value: i64) -> Self {
        Value::Int(value)
    }
}

impl From<&str> for Value {
    fn from(value: &str) -> Self {
        Value::Text(value.to_owned())
    }
}

impl From<String> for Value {
    fn from(value: String) -> Self {
        Value::Text(value)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(value: Option<T>) -> Self {
        value.map_or(Value::Null, Into::into)
    }
}

/// One result row.
pub(crate) struct Row(pub(crate) Vec<Value>);

impl Row {
    pub(crate) fn text(&self, index: usize) -> Result<String, Error> {
        match self.0.get(index) {
            Some(Value::Text(text)) => Ok(text.clone()),
            other => Err(Error::InvalidValue(format!("column {index}: expected text, found {other:?}"))),
        }
    }

    pub(crate) fn opt_text(&self, index: usize) -> Result<Option<String>, Error> {
        match self.0.get(index) {
            Some(Value::Null) => Ok(None),
            _ => self.text(index).map(Some),
        }
    }

    pub(crate) fn int(&self, index: usize) -> Result<i64, Error> {
        match self.0.get(index) {
            Some(Value::Int(value)) => Ok(*value),
            other => Err(Error::InvalidValue(format!("column {index}: expected integer, found {other:?}"))),
        }
    }

    pub(crate) fn opt_int(&self, index: usize) -> Result<Option<i64>, Error> {
        match self.0.get(index) {
            Some(Value::Null) => Ok(None),
            _ => self.int(index).map(Some),
        }
    }
}

/// A connection inside an open transaction.
pub(crate) trait Conn {
    /// Runs a statement and returns the number of rows it changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, Error>;
    /// Runs a query and returns its rows.
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, Error>;
    /// The clause that locks selected rows until the transaction ends (empty where the whole
    /// database is already locked by the write transaction).
    fn for_update(&self) -> &'static str;
}
