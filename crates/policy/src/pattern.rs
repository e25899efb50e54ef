//! Compiled strings of the policy language: literal text, the IAM wildcards `*` and `?`, and
//! policy variables, matched against a request without allocating.
//!
//! Matching is the classic two-pointer wildcard algorithm (backtracking only to the last `*`),
//! so it takes at most `text × pattern` steps whatever the pattern: a policy author cannot make
//! evaluation exponential. Variable values are matched as literal text: a `*` in a client id is a
//! star, not a wildcard.

use crate::context::Context;
use crate::variable::{Usage, Values, Variable};

/// Variables resolved on the stack before a pattern with more of them spills to the heap.
const INLINE_VARIABLES: usize = 4;

/// Whether `*` and `?` are wildcards in a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wildcards {
    /// `*` matches any sequence of characters (`/` and `:` included), `?` any one character.
    Glob,
    /// `*` and `?` are themselves (`StringEquals`).
    Literal,
}

/// Whether `${...}` is a policy variable in a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Variables {
    /// Resources and condition values.
    Substitute,
    /// Actions: `$` is an ordinary character.
    Literal,
}

/// How characters are compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Case {
    Sensitive,
    Insensitive,
}

/// The result of matching a pattern that may hold variables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Match {
    Yes,
    No,
    /// A variable in the pattern has no value for this request.
    Unresolved,
}

/// Why a string could not be compiled.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PatternError {
    Unterminated,
    UnknownVariable(String),
    MultipleListVariables,
}

#[derive(Debug)]
enum Piece {
    Literal(Box<str>),
    AnyChars,
    AnyChar,
    /// A variable, with its position among the pattern's variables.
    Variable {
        variable: Variable,
        slot: usize,
    },
}

/// One piece after variables are resolved.
#[derive(Clone, Copy)]
enum Segment<'a> {
    Literal(&'a str),
    AnyChars,
    AnyChar,
}

/// A compiled string.
#[derive(Debug)]
pub(crate) struct Pattern {
    pieces: Box<[Piece]>,
    variable_count: usize,
}

impl Pattern {
    pub(crate) fn compile(text: &str, wildcards: Wildcards, variables: Variables) -> Result<Pattern, PatternError> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut variable_count = 0;
        let mut has_list_variable = false;
        let mut rest = text;
        while let Some(character) = rest.chars().next() {
            if variables == Variables::Substitute && rest.starts_with("${") {
                let end = rest.find('}').ok_or(PatternError::Unterminated)?;
                let name = &rest[2..end];
                rest = &rest[end + 1..];
                // `${*}`, `${?}` and `${$}` write the character itself, never a wildcard.
                if matches!(name, "*" | "?" | "$") {
                    literal.push_str(name);
                    continue;
                }
                let variable = Variable::parse(name).ok_or_else(|| PatternError::UnknownVariable(name.to_owned()))?;
                if variable.is_multi_valued() {
                    if has_list_variable {
                        return Err(PatternError::MultipleListVariables);
                    }
                    has_list_variable = true;
                }
                flush(&mut literal, &mut pieces);
                pieces.push(Piece::Variable { variable, slot: variable_count });
                variable_count += 1;
                continue;
            }
            rest = &rest[character.len_utf8()..];
            match (character, wildcards) {
                ('*', Wildcards::Glob) => {
                    flush(&mut literal, &mut pieces);
                    if !matches!(pieces.last(), Some(Piece::AnyChars)) {
                        pieces.push(Piece::AnyChars);
                    }
                }
                ('?', Wildcards::Glob) => {
                    flush(&mut literal, &mut pieces);
                    pieces.push(Piece::AnyChar);
                }
                _ => literal.push(character),
            }
        }
        flush(&mut literal, &mut pieces);
        Ok(Pattern { pieces: pieces.into(), variable_count })
    }

    /// Matches a pattern compiled with [`Variables::Literal`] (it has no variables).
    pub(crate) fn matches_plain(&self, text: &str, case: Case) -> bool {
        glob(text, &self.pieces, &[], case)
    }

    /// Matches `text` with the pattern's variables resolved from `context` for `usage`
    /// ([`Usage::Substitution`] or [`Usage::TopicSubstitution`]).
    ///
    /// A multi-valued variable (at most one per pattern) matches if any of its values does. A
    /// variable with a value `usage` does not admit has no value (`Match::Unresolved`).
    pub(crate) fn matches(&self, text: &str, context: &Context, case: Case, usage: Usage) -> Match {
        if self.variable_count == 0 {
            return Match::from(glob(text, &self.pieces, &[], case));
        }
        let mut inline = [""; INLINE_VARIABLES];
        let mut spilled: Vec<&str>;
        let values: &mut [&str] = if self.variable_count <= INLINE_VARIABLES {
            &mut inline[..self.variable_count]
        } else {
            spilled = vec![""; self.variable_count];
            &mut spilled
        };
        let mut list: Option<(usize, Values<'_>)> = None;
        for piece in &self.pieces {
            let Piece::Variable { variable, slot } = piece else {
                continue;
            };
            let resolved = variable.resolve(context, usage);
            if resolved.is_empty() || !(0..resolved.len()).all(|index| usage.admits(resolved.get(index))) {
                return Match::Unresolved;
            }
            if variable.is_multi_valued() {
                list = Some((*slot, resolved));
            } else {
                values[*slot] = resolved.get(0);
            }
        }
        let Some((slot, list)) = list else {
            return Match::from(glob(text, &self.pieces, values, case));
        };
        for index in 0..list.len() {
            values[slot] = list.get(index);
            if glob(text, &self.pieces, values, case) {
                return Match::Yes;
            }
        }
        Match::No
    }
}

impl From<bool> for Match {
    fn from(matched: bool) -> Match {
        if matched { Match::Yes } else { Match::No }
    }
}

fn flush(literal: &mut String, pieces: &mut Vec<Piece>) {
    if !literal.is_empty() {
        pieces.push(Piece::Literal(std::mem::take(literal).into()));
    }
}

fn same_character(expected: char, found: char, case: Case) -> bool {
    expected == found || (case == Case::Insensitive && expected.to_lowercase().eq(found.to_lowercase()))
}

/// Whether `text` matches `pieces`, each variable standing for `values[slot]`.
fn glob(text: &str, pieces: &[Piece], values: &[&str], case: Case) -> bool {
    let segment = |index: usize| -> Option<Segment<'_>> {
        Some(match pieces.get(index)? {
            Piece::Literal(literal) => Segment::Literal(literal),
            Piece::AnyChars => Segment::AnyChars,
            Piece::AnyChar => Segment::AnyChar,
            Piece::Variable { slot, .. } => Segment::Literal(values.get(*slot).copied().unwrap_or("")),
        })
    };
    // The pattern position is a piece and a byte offset inside it (literals only).
    let (mut index, mut offset, mut position) = (0, 0, 0);
    // Where to resume after the last `*`: the piece after it and the text it has swallowed to.
    let mut star: Option<(usize, usize)> = None;
    loop {
        // Step over finished literals (a variable's value may be empty).
        while let Some(Segment::Literal(literal)) = segment(index) {
            if offset < literal.len() {
                break;
            }
            index += 1;
            offset = 0;
        }
        if let Some(found) = text[position..].chars().next() {
            match segment(index) {
                Some(Segment::AnyChars) => {
                    index += 1;
                    star = Some((index, position));
                    continue;
                }
                Some(Segment::AnyChar) => {
                    index += 1;
                    position += found.len_utf8();
                    continue;
                }
                Some(Segment::Literal(literal)) => {
                    // Case-sensitive literals compare as whole runs of bytes: a mismatch anywhere
                    // in the run backtracks to the same `*` as a character-wise mismatch would.
                    let expected = &literal[offset..];
                    if case == Case::Sensitive {
                        if text[position..].starts_with(expected) {
                            offset = literal.len();
                            position += expected.len();
                            continue;
                        }
                    } else if let Some(expected) = expected.chars().next()
                        && same_character(expected, found, case)
                    {
                        offset += expected.len_utf8();
                        position += found.len_utf8();
                        continue;
                    }
                }
                None => {}
            }
        } else {
            // The text is used up: the pattern matches if only `*` (or empty values) remain.
            loop {
                match segment(index) {
                    Some(Segment::AnyChars) => index += 1,
                    Some(Segment::Literal(literal)) if offset >= literal.len() => {
                        index += 1;
                        offset = 0;
                    }
                    _ => break,
                }
            }
            if index == pieces.len() {
                return true;
            }
        }
        // A mismatch: let the last `*` swallow one more character and retry from after it.
        let Some((star_index, star_position)) = star else {
            return false;
        };
        let Some(swallowed) = text[star_position..].chars().next() else {
            return false;
        };
        let resumed = star_position + swallowed.len_utf8();
        star = Some((star_index, resumed));
        index = star_index;
        offset = 0;
        position = resumed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, text: &str, expected: bool) {
        let compiled = Pattern::compile(pattern, Wildcards::Glob, Variables::Literal).expect("compiles");
        assert_eq!(compiled.matches_plain(text, Case::Sensitive), expected, "{pattern:?} against {text:?}");
    }

    #[test]
    fn wildcards() {
        check("", "", true);
        check("", "a", false);
        check("*", "", true);
        check("*", "anything/at:all", true);
        check("a", "a", true);
        check("a", "A", false);
        check("a", "ab", false);
        check("ab", "a", false);
        check("?", "", false);
        check("?", "é", true);
        check("?", "ab", false);
        check("a?c", "abc", true);
        check("a?c", "a/c", true);
        check("a*c", "ac", true);
        check("a*c", "a/b:c", true);
        check("a*c", "a/b:cd", false);
        check("a*b*c", "aXbYbZc", true);
        check("a*b*c", "aXbYbZ", false);
        check("*a*a*a*a*a*a*a*a*b", &"a".repeat(200), false);
        check("topic/*", "topic/", true);
        check("topic/*/x", "topic/a/b/x", true);
        check("**", "x", true);
        check("*?", "", false);
        check("*?", "x", true);
        check("é*ü", "éabcü", true);
        check("a+/#", "a+/#", true);
        check("a+/#", "ab/c", false);
    }

    /// Every pattern over `ab*?` up to five characters against every text over `abB` up to five,
    /// compared with the textbook recursive definition, in both cases.
    #[test]
    fn agrees_with_the_recursive_definition() {
        fn reference(pattern: &[u8], text: &[u8], case: Case) -> bool {
            match (pattern.first(), text.first()) {
                (None, _) => text.is_empty(),
                (Some(b'*'), _) => {
                    reference(&pattern[1..], text, case) || (!text.is_empty() && reference(pattern, &text[1..], case))
                }
                (Some(_), None) => false,
                (Some(b'?'), Some(_)) => reference(&pattern[1..], &text[1..], case),
                (Some(expected), Some(found)) => {
                    let same = match case {
                        Case::Sensitive => expected == found,
                        Case::Insensitive => expected.eq_ignore_ascii_case(found),
                    };
                    same && reference(&pattern[1..], &text[1..], case)
                }
            }
        }
        fn all(alphabet: &[u8], max_length: usize) -> Vec<Vec<u8>> {
            let mut words = vec![Vec::new()];
            let mut last = vec![Vec::new()];
            for _ in 0..max_length {
                last = last
                    .iter()
                    .flat_map(|word| alphabet.iter().map(move |letter| [word.as_slice(), &[*letter]].concat()))
                    .collect();
                words.extend(last.iter().cloned());
            }
            words
        }
        let texts = all(b"abB", 5);
        for pattern in all(b"ab*?", 5) {
            let text_pattern = String::from_utf8(pattern.clone()).expect("ascii");
            let compiled = Pattern::compile(&text_pattern, Wildcards::Glob, Variables::Literal).expect("compiles");
            for text in &texts {
                for case in [Case::Sensitive, Case::Insensitive] {
                    let text_str = std::str::from_utf8(text).expect("ascii");
                    assert_eq!(
                        compiled.matches_plain(text_str, case),
                        reference(&pattern, text, case),
                        "{text_pattern:?} against {text_str:?} ({case:?})"
                    );
                }
            }
        }
    }

    #[test]
    fn literal_mode_keeps_stars() {
        let compiled = Pattern::compile("a*", Wildcards::Literal, Variables::Literal).expect("compiles");
        assert!(compiled.matches_plain("a*", Case::Sensitive));
        assert!(!compiled.matches_plain("ab", Case::Sensitive));
    }

    #[test]
    fn case_insensitive() {
        let compiled = Pattern::compile("iot:P*", Wildcards::Glob, Variables::Literal).expect("compiles");
        assert!(compiled.matches_plain("IOT:publish", Case::Insensitive));
        assert!(!compiled.matches_plain("IOT:publish", Case::Sensitive));
    }

    #[test]
    fn compile_errors() {
        let compile = |text: &str| Pattern::compile(text, Wildcards::Glob, Variables::Substitute).map(|_| ());
        assert_eq!(compile("a/${iot:ClientId"), Err(PatternError::Unterminated));
        assert_eq!(compile("${iot:Nope}"), Err(PatternError::UnknownVariable("iot:Nope".into())));
        assert_eq!(
            compile("${iot:Certificate.Subject.Country.List}/${iot:Certificate.AvailableKeys}"),
            Err(PatternError::MultipleListVariables)
        );
        assert_eq!(compile("$a${$}{x}${*}${?}"), Ok(()));
    }
}
