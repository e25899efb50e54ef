//! Three-valued results for the parts of a statement (Kleene logic).
//!
//! `Unknown` appears only where a variable without a value sits under a negation (`NotResource`,
//! `StringNotEquals`, ...), where treating it as "no match" would widen access. The evaluator
//! resolves it closed: an Allow statement that is `Unknown` does not allow, a Deny statement that
//! is `Unknown` denies.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Yes,
    No,
    Unknown,
}

impl Outcome {
    /// Kleene "and"; `other` is not evaluated when `self` is already `No`.
    pub(crate) fn and(self, other: impl FnOnce() -> Outcome) -> Outcome {
        match self {
            Outcome::No => Outcome::No,
            Outcome::Yes => other(),
            Outcome::Unknown => match other() {
                Outcome::No => Outcome::No,
                Outcome::Yes | Outcome::Unknown => Outcome::Unknown,
            },
        }
    }

    /// Kleene "or"; `other` is not evaluated when `self` is already `Yes`.
    pub(crate) fn or(self, other: impl FnOnce() -> Outcome) -> Outcome {
        match self {
            Outcome::Yes => Outcome::Yes,
            Outcome::No => other(),
            Outcome::Unknown => match other() {
                Outcome::Yes => Outcome::Yes,
                Outcome::No | Outcome::Unknown => Outcome::Unknown,
            },
        }
    }
}

impl std::ops::Not for Outcome {
    type Output = Outcome;

    fn not(self) -> Outcome {
        match self {
            Outcome::Yes => Outcome::No,
            Outcome::No => Outcome::Yes,
            Outcome::Unknown => Outcome::Unknown,
        }
    }
}

impl From<bool> for Outcome {
    fn from(value: bool) -> Outcome {
        if value { Outcome::Yes } else { Outcome::No }
    }
}
