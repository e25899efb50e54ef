//! The `Condition` element: the operators certfleet implements, compiled once, and their
//! evaluation with IAM's rules for absent keys and multi-valued keys.
//!
//! Implemented: `StringEquals`, `StringNotEquals`, `StringEqualsIgnoreCase`,
//! `StringNotEqualsIgnoreCase`, `StringLike`, `StringNotLike`, `Bool` (each with an optional
//! `ForAnyValue:`/`ForAllValues:` prefix and `IfExists` suffix) and `Null`. Anything else is
//! refused when the policy is parsed.

use crate::context::Context;
use crate::outcome::Outcome;
use crate::pattern::{Case, Match, Pattern, Wildcards};
use crate::variable::{Usage, Variable};

/// One key tested by one operator.
#[derive(Debug)]
pub(crate) struct Condition {
    key: Variable,
    set: SetOperator,
    if_exists: bool,
    test: Test,
}

/// How a key with several values is tested.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SetOperator {
    /// No prefix: the key must have one value.
    Single,
    /// `ForAnyValue:`: at least one value passes.
    AnyValue,
    /// `ForAllValues:`: every value passes (true when the key has no value).
    AllValues,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Comparison {
    Equals,
    EqualsIgnoreCase,
    Like,
}

/// A parsed operator name, before its values are known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Operator {
    pub(crate) set: SetOperator,
    pub(crate) if_exists: bool,
    pub(crate) kind: OperatorKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OperatorKind {
    String { comparison: Comparison, negated: bool },
    Bool,
    Null,
}

#[derive(Debug)]
enum Test {
    String {
        comparison: Comparison,
        negated: bool,
        values: Box<[Pattern]>,
    },
    Bool {
        accepts_true: bool,
        accepts_false: bool,
    },
    /// `Null`: `"true"` accepts an absent key, `"false"` a present one (IAM ORs listed values).
    Null {
        accepts_absent: bool,
        accepts_present: bool,
    },
}

impl Operator {
    /// The operator called `name`, `None` when certfleet does not implement it.
    pub(crate) fn parse(name: &str) -> Option<Operator> {
        let (set, rest) = if let Some(rest) = name.strip_prefix("ForAnyValue:") {
            (SetOperator::AnyValue, rest)
        } else if let Some(rest) = name.strip_prefix("ForAllValues:") {
            (SetOperator::AllValues, rest)
        } else {
            (SetOperator::Single, name)
        };
        let (if_exists, base) = match rest.strip_suffix("IfExists") {
            Some(base) => (true, base),
            None => (false, rest),
        };
        let string = |comparison, negated| OperatorKind::String { comparison, negated };
        let kind = match base {
            "StringEquals" => string(Comparison::Equals, false),
            "StringNotEquals" => string(Comparison::Equals, true),
            "StringEqualsIgnoreCase" => string(Comparison::EqualsIgnoreCase, false),
            "StringNotEqualsIgnoreCase" => string(Comparison::EqualsIgnoreCase, true),
            "StringLike" => string(Comparison::Like, false),
            "StringNotLike" => string(Comparison::Like, true),
            "Bool" => OperatorKind::Bool,
            // `Null` tests presence itself: a set prefix or `IfExists` makes no sense on it.
            "Null" if set == SetOperator::Single && !if_exists => OperatorKind::Null,
            _ => return None,
        };
        Some(Operator { set, if_exists, kind })
    }
}

impl Condition {
    /// A string condition; `values` are compiled by the caller (it reports their errors).
    pub(crate) fn string(
        key: Variable,
        operator: Operator,
        comparison: Comparison,
        negated: bool,
        values: Vec<Pattern>,
    ) -> Condition {
        Condition {
            key,
            set: operator.set,
            if_exists: operator.if_exists,
            test: Test::String { comparison, negated, values: values.into() },
        }
    }

    /// A `Bool` condition accepting the listed values.
    pub(crate) fn bool(key: Variable, operator: Operator, accepted: &[bool]) -> Condition {
        Condition {
            key,
            set: operator.set,
            if_exists: operator.if_exists,
            test: Test::Bool { accepts_true: accepted.contains(&true), accepts_false: accepted.contains(&false) },
        }
    }

    /// A `Null` condition: `true` accepts an absent key, `false` a present one.
    pub(crate) fn null(key: Variable, accepted: &[bool]) -> Condition {
        Condition {
            key,
            set: SetOperator::Single,
            if_exists: false,
            test: Test::Null { accepts_absent: accepted.contains(&true), accepts_present: accepted.contains(&false) },
        }
    }

    /// Whether the condition holds for a request made under `context`.
    pub(crate) fn evaluate(&self, context: &Context) -> Outcome {
        let values = self.key.resolve(context, Usage::ConditionKey);
        if let Test::Null { accepts_absent, accepts_present } = self.test {
            return Outcome::from(if values.is_empty() { accepts_absent } else { accepts_present });
        }
        if values.is_empty() {
            // IAM: an absent key fails a positive test and passes a negated one; `IfExists` and
            // `ForAllValues` pass, `ForAnyValue` fails.
            return Outcome::from(match self.set {
                _ if self.if_exists => true,
                SetOperator::AllValues => true,
                SetOperator::AnyValue => false,
                SetOperator::Single => self.is_negated(),
            });
        }
        match self.set {
            // Parsing refuses a multi-valued key here, so there is exactly one value.
            SetOperator::Single => self.test_value(values.get(0), context),
            SetOperator::AnyValue => (0..values.len())
                .fold(Outcome::No, |outcome, index| outcome.or(|| self.test_value(values.get(index), context))),
            SetOperator::AllValues => (0..values.len())
                .fold(Outcome::Yes, |outcome, index| outcome.and(|| self.test_value(values.get(index), context))),
        }
    }

    fn is_negated(&self) -> bool {
        matches!(self.test, Test::String { negated: true, .. })
    }

    fn test_value(&self, value: &str, context: &Context) -> Outcome {
        match &self.test {
            Test::String { comparison, negated, values } => {
                let case = match comparison {
                    Comparison::EqualsIgnoreCase => Case::Insensitive,
                    Comparison::Equals | Comparison::Like => Case::Sensitive,
                };
                let mut unresolved = false;
                for pattern in values {
                    match pattern.matches(value, context, case, Usage::Substitution) {
                        Match::Yes => return Outcome::from(!negated),
                        Match::Unresolved => unresolved = true,
                        Match::No => {}
                    }
                }
                // A value whose variable has no value equals nothing. Under a negation that
                // would grant ("not equal to an unknown"), so the outcome is left unknown and
                // the statement fails closed (see `Outcome`).
                match (negated, unresolved) {
                    (false, _) => Outcome::No,
                    (true, true) => Outcome::Unknown,
                    (true, false) => Outcome::Yes,
                }
            }
            Test::Bool { accepts_true, accepts_false } => Outcome::from(
                (*accepts_true && value.eq_ignore_ascii_case("true"))
                    || (*accepts_false && value.eq_ignore_ascii_case("false")),
            ),
            Test::Null { accepts_present, .. } => Outcome::from(*accepts_present),
        }
    }
}

/// How `StringLike` and `StringEquals` values treat `*` and `?`.
pub(crate) fn wildcards(comparison: Comparison) -> Wildcards {
    match comparison {
        Comparison::Like => Wildcards::Glob,
        Comparison::Equals | Comparison::EqualsIgnoreCase => Wildcards::Literal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_names() {
        let check = |name: &str, expected: Option<&str>| {
            let actual = Operator::parse(name).map(|operator| format!("{operator:?}"));
            assert_eq!(actual.as_deref(), expected, "{name}");
        };
        check(
            "StringEquals",
            Some("Operator { set: Single, if_exists: false, kind: String { comparison: Equals, negated: false } }"),
        );
        check(
            "ForAnyValue:StringNotLikeIfExists",
            Some("Operator { set: AnyValue, if_exists: true, kind: String { comparison: Like, negated: true } }"),
        );
        check("ForAllValues:Bool", Some("Operator { set: AllValues, if_exists: false, kind: Bool }"));
        check("Null", Some("Operator { set: Single, if_exists: false, kind: Null }"));
        check("NullIfExists", None);
        check("ForAnyValue:Null", None);
        check("stringequals", None);
        check("DateGreaterThan", None);
        check("IpAddress", None);
        check("ArnLike", None);
    }
}
