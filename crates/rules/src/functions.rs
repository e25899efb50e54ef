//! The functions the language offers: their names and argument counts, checked when a statement
//! is parsed. What each does is in `eval`.

/// A built-in function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Function {
    /// `abs(x)`: the absolute value of a number.
    Abs,
    /// `cardinality(array)`: the number of elements.
    Cardinality,
    /// `clientid()`: the MQTT client id of the publisher.
    ClientId,
    /// `concat(a, b, ...)`: strings concatenated, or arrays joined.
    Concat,
    /// `encode(value, 'base64')`: `*` encodes the raw payload.
    Encode,
    /// `endswith(string, suffix)`.
    EndsWith,
    /// `get(array_or_object_or_string, index_or_key)`.
    Get,
    /// `isNull(x)`: true for Null (not for Undefined).
    IsNull,
    /// `isUndefined(x)`.
    IsUndefined,
    /// `length(string)`: the number of characters.
    Length,
    /// `lower(string)`.
    Lower,
    /// `newuuid()`: a random version 4 UUID.
    NewUuid,
    /// `principal()`: the identity of the publisher (a certificate id for X.509 clients).
    Principal,
    /// `startswith(string, prefix)`.
    StartsWith,
    /// `substring(string, start[, end])`: characters from `start` (from 0) to `end` (exclusive).
    Substring,
    /// `timestamp()`: milliseconds since the Unix epoch, from the context.
    Timestamp,
    /// `topic()`, `topic(n)`: the topic, or its n-th level (from 1).
    Topic,
    /// `upper(string)`.
    Upper,
}

impl Function {
    /// Every function.
    pub const ALL: [Function; 18] = [
        Function::Abs,
        Function::Cardinality,
        Function::ClientId,
        Function::Concat,
        Function::Encode,
        Function::EndsWith,
        Function::Get,
        Function::IsNull,
        Function::IsUndefined,
        Function::Length,
        Function::Lower,
        Function::NewUuid,
        Function::Principal,
        Function::StartsWith,
        Function::Substring,
        Function::Timestamp,
        Function::Topic,
        Function::Upper,
    ];

    /// The function's name as AWS documents it (matched case-insensitively when parsing).
    pub fn name(self) -> &'static str {
        match self {
            Function::Abs => "abs",
            Function::Cardinality => "cardinality",
            Function::ClientId => "clientid",
            Function::Concat => "concat",
            Function::Encode => "encode",
            Function::EndsWith => "endswith",
            Function::Get => "get",
            Function::IsNull => "isNull",
            Function::IsUndefined => "isUndefined",
            Function::Length => "length",
            Function::Lower => "lower",
            Function::NewUuid => "newuuid",
            Function::Principal => "principal",
            Function::StartsWith => "startswith",
            Function::Substring => "substring",
            Function::Timestamp => "timestamp",
            Function::Topic => "topic",
            Function::Upper => "upper",
        }
    }

    /// The function named `name`, case-insensitively.
    pub(crate) fn lookup(name: &str) -> Option<Function> {
        Function::ALL.into_iter().find(|function| function.name().eq_ignore_ascii_case(name))
    }

    /// Whether the function accepts `count` arguments; if not, the accepted counts in words.
    pub(crate) fn check_arguments(self, count: usize) -> Result<(), &'static str> {
        let (accepted, words) = match self {
            Function::ClientId | Function::NewUuid | Function::Principal | Function::Timestamp => (count == 0, "0"),
            Function::Topic => (count <= 1, "0 or 1"),
            Function::Abs
            | Function::Cardinality
            | Function::IsNull
            | Function::IsUndefined
            | Function::Length
            | Function::Lower
            | Function::Upper => (count == 1, "1"),
            Function::Encode | Function::EndsWith | Function::Get | Function::StartsWith => (count == 2, "2"),
            Function::Substring => ((2..=3).contains(&count), "2 or 3"),
            Function::Concat => (count >= 2, "at least 2"),
        };
        if accepted { Ok(()) } else { Err(words) }
    }
}
