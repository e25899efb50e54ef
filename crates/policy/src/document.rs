//! The policy document parser: JSON in, compiled [`Statement`]s out, every refusal naming the
//! element at fault by its path (`Statement[1].Resource[0]`).

use crate::Error;
use crate::condition::{self, Condition, Operator, OperatorKind, SetOperator};
use crate::json::Json;
use crate::pattern::{Case, Pattern, PatternError, Variables, Wildcards};
use crate::policy::{Action, Effect, Statement};
use crate::variable::Variable;

/// AWS IoT's limit on a policy document, in characters, whitespace not counted.
pub(crate) const MAX_DOCUMENT_CHARACTERS: usize = 2048;

/// The only policy language version AWS IoT accepts.
pub(crate) const VERSION: &str = "2012-10-17";

pub(crate) fn parse_statements(document: &str) -> Result<Vec<Statement>, Error> {
    // Counted before parsing, so an oversized document costs no JSON work.
    let length = document.chars().filter(|character| !character.is_whitespace()).count();
    if length == 0 {
        return Err(Error::Empty);
    }
    if length > MAX_DOCUMENT_CHARACTERS {
        return Err(Error::TooLong { length, limit: MAX_DOCUMENT_CHARACTERS });
    }
    let json: Json = serde_json::from_str(document).map_err(Error::NotJson)?;
    let [version, statement, id] = members(&json, "policy document", ["Version", "Statement", "Id"])?;
    match version {
        None => {
            return Err(Error::Missing { element: "Version".into() });
        }
        Some(Json::String(version)) if version == VERSION => {}
        Some(Json::String(version)) => {
            return Err(Error::UnsupportedVersion { found: version.clone() });
        }
        Some(_) => return Err(wrong_type("Version", "a string")),
    }
    if let Some(id) = id
        && !matches!(id, Json::String(_))
    {
        return Err(wrong_type("Id", "a string"));
    }
    match statement {
        None => Err(Error::Missing { element: "Statement".into() }),
        Some(json @ Json::Object(_)) => Ok(vec![parse_statement(json, "Statement")?]),
        Some(Json::Array(items)) if items.is_empty() => Err(Error::EmptyList { element: "Statement".into() }),
        Some(Json::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(index, item)| parse_statement(item, &format!("Statement[{index}]")))
            .collect(),
        Some(_) => Err(wrong_type("Statement", "an object or an array of objects")),
    }
}

fn parse_statement(json: &Json, element: &str) -> Result<Statement, Error> {
    let [sid, effect, action, not_action, resource, not_resource, condition] =
        members(json, element, ["Sid", "Effect", "Action", "NotAction", "Resource", "NotResource", "Condition"])?;
    let sid = match sid {
        None => None,
        Some(Json::String(sid)) => Some(sid.clone()),
        Some(_) => return Err(wrong_type(&format!("{element}.Sid"), "a string")),
    };
    let effect = match effect {
        None => {
            return Err(Error::Missing { element: format!("{element}.Effect") });
        }
        Some(Json::String(effect)) if effect == "Allow" => Effect::Allow,
        Some(Json::String(effect)) if effect == "Deny" => Effect::Deny,
        Some(Json::String(effect)) => {
            return Err(Error::InvalidEffect { element: format!("{element}.Effect"), found: effect.clone() });
        }
        Some(_) => return Err(wrong_type(&format!("{element}.Effect"), "a string")),
    };
    let (actions, not_action) = one_of(element, ("Action", action), ("NotAction", not_action))?;
    let mut action_mask = 0;
    for (path, action) in &actions {
        action_mask |= compile_action(path, action)?;
    }
    if not_action {
        action_mask = Action::ALL.iter().fold(0, |mask, action| mask | action.bit()) & !action_mask;
    }
    let (resources, not_resource) = one_of(element, ("Resource", resource), ("NotResource", not_resource))?;
    let resource_patterns = resources
        .iter()
        .map(|(path, resource)| compile_resource(path, resource))
        .collect::<Result<Box<[Pattern]>, Error>>()?;
    let conditions = match condition {
        None => Box::default(),
        Some(condition) => parse_conditions(condition, &format!("{element}.Condition"))?.into(),
    };
    Ok(Statement {
        sid,
        effect,
        actions: actions.into_iter().map(|(_, action)| action).collect(),
        not_action,
        action_mask,
        resources: resources.into_iter().map(|(_, resource)| resource).collect(),
        not_resource,
        resource_patterns,
        conditions,
    })
}

/// The values of an element that a statement must have exactly one form of (`Action` or
/// `NotAction`), with whether it was the negated form.
fn one_of(
    element: &str,
    (name, plain): (&'static str, Option<&Json>),
    (negated_name, negated): (&'static str, Option<&Json>),
) -> Result<(Vec<(String, String)>, bool), Error> {
    match (plain, negated) {
        (Some(_), Some(_)) => {
            Err(Error::Conflicting { element: element.to_owned(), first: name, second: negated_name })
        }
        (Some(json), None) => Ok((strings(json, &format!("{element}.{name}"))?, false)),
        (None, Some(json)) => Ok((strings(json, &format!("{element}.{negated_name}"))?, true)),
        (None, None) => Err(Error::Missing { element: format!("{element}.{name}") }),
    }
}

/// The data-plane actions an `Action` entry covers.
fn compile_action(element: &str, action: &str) -> Result<u8, Error> {
    let well_formed = action == "*"
        || action
            .split_once(':')
            .is_some_and(|(service, name)| !service.is_empty() && !name.is_empty() && !name.contains(':'));
    if !well_formed {
        return Err(Error::InvalidAction { element: element.to_owned(), found: action.to_owned() });
    }
    if let Some((service, name)) = action.split_once(':')
        && service.eq_ignore_ascii_case("iot")
        && !name.contains(['*', '?'])
        && !crate::actions::is_known_iot_action(name)
    {
        return Err(Error::UnknownAction { element: element.to_owned(), found: action.to_owned() });
    }
    // Actions have no variables, so a pattern (matched here, once) is all they need; an action
    // that is not a data-plane one (`iot:UpdateThingShadow`, `s3:GetObject`) covers nothing.
    let pattern = Pattern::compile(action, Wildcards::Glob, Variables::Literal)
        .map_err(|error| pattern_error(element, action, error))?;
    Ok(Action::ALL
        .iter()
        .filter(|data_plane| pattern.matches_plain(data_plane.name(), Case::Insensitive))
        .fold(0, |mask, data_plane| mask | data_plane.bit()))
}

fn compile_resource(element: &str, resource: &str) -> Result<Pattern, Error> {
    if resource != "*" && !resource.starts_with("arn:") {
        return Err(Error::InvalidResource { element: element.to_owned(), found: resource.to_owned() });
    }
    Pattern::compile(resource, Wildcards::Glob, Variables::Substitute)
        .map_err(|error| pattern_error(element, resource, error))
}

fn parse_conditions(json: &Json, element: &str) -> Result<Vec<Condition>, Error> {
    let operators = object(json, element)?;
    let mut conditions = Vec::new();
    for (operator_name, keys) in operators {
        let operator_element = format!("{element}.{operator_name}");
        let operator = Operator::parse(operator_name).ok_or_else(|| Error::UnsupportedConditionOperator {
            element: element.to_owned(),
            operator: operator_name.clone(),
        })?;
        let keys = object(keys, &operator_element)?;
        if keys.is_empty() {
            return Err(Error::EmptyList { element: operator_element });
        }
        for (key_name, values) in keys {
            let key_element = format!("{operator_element}.{key_name}");
            let key = Variable::parse(key_name).ok_or_else(|| Error::UnsupportedConditionKey {
                element: operator_element.clone(),
                key: key_name.clone(),
            })?;
            if key.is_multi_valued() && operator.set == SetOperator::Single && operator.kind != OperatorKind::Null {
                return Err(Error::MultiValuedConditionKey {
                    element: operator_element.clone(),
                    key: key_name.clone(),
                });
            }
            let values = condition_values(values, &key_element)?;
            conditions.push(compile_condition(key, operator, values)?);
        }
    }
    Ok(conditions)
}

fn compile_condition(key: Variable, operator: Operator, values: Vec<(String, String)>) -> Result<Condition, Error> {
    match operator.kind {
        OperatorKind::String { comparison, negated } => {
            let patterns = values
                .iter()
                .map(|(path, value)| {
                    Pattern::compile(value, condition::wildcards(comparison), Variables::Substitute)
                        .map_err(|error| pattern_error(path, value, error))
                })
                .collect::<Result<Vec<Pattern>, Error>>()?;
            Ok(Condition::string(key, operator, comparison, negated, patterns))
        }
        OperatorKind::Bool => {
            let accepted =
                values.iter().map(|(path, value)| boolean(path, value)).collect::<Result<Vec<bool>, Error>>()?;
            Ok(Condition::bool(key, operator, &accepted))
        }
        OperatorKind::Null => {
            let accepted =
                values.iter().map(|(path, value)| boolean(path, value)).collect::<Result<Vec<bool>, Error>>()?;
            Ok(Condition::null(key, &accepted))
        }
    }
}

fn boolean(element: &str, value: &str) -> Result<bool, Error> {
    if value.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if value.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(Error::InvalidBoolean { element: element.to_owned(), found: value.to_owned() })
    }
}

/// Condition values: a string, boolean or number, or a non-empty array of them, as text.
fn condition_values(json: &Json, element: &str) -> Result<Vec<(String, String)>, Error> {
    const EXPECTED: &str = "a string, boolean or number, or an array of them";
    let scalar = |json: &Json, element: &str| match json {
        Json::String(value) | Json::Number(value) => Ok(value.clone()),
        Json::Bool(value) => Ok(value.to_string()),
        Json::Null | Json::Array(_) | Json::Object(_) => Err(wrong_type(element, EXPECTED)),
    };
    match json {
        Json::Array(items) if items.is_empty() => Err(Error::EmptyList { element: element.to_owned() }),
        Json::Array(items) => items
            .iter()
            .enumerate()
            .map(|(index, item)| {
                let path = format!("{element}[{index}]");
                scalar(item, &path).map(|value| (path, value))
            })
            .collect(),
        json => Ok(vec![(element.to_owned(), scalar(json, element)?)]),
    }
}

/// A string or a non-empty array of strings, each with its path.
fn strings(json: &Json, element: &str) -> Result<Vec<(String, String)>, Error> {
    const EXPECTED: &str = "a string or an array of strings";
    match json {
        Json::String(value) => Ok(vec![(element.to_owned(), value.clone())]),
        Json::Array(items) if items.is_empty() => Err(Error::EmptyList { element: element.to_owned() }),
        Json::Array(items) => items
            .iter()
            .enumerate()
            .map(|(index, item)| {
                let path = format!("{element}[{index}]");
                match item {
                    Json::String(value) => Ok((path, value.clone())),
                    _ => Err(wrong_type(&path, "a string")),
                }
            })
            .collect(),
        _ => Err(wrong_type(element, EXPECTED)),
    }
}

/// The members of an object, refusing duplicate names.
fn object<'j>(json: &'j Json, element: &str) -> Result<&'j [(String, Json)], Error> {
    let Json::Object(members) = json else {
        return Err(wrong_type(element, "an object"));
    };
    for (index, (name, _)) in members.iter().enumerate() {
        if members[..index].iter().any(|(earlier, _)| earlier == name) {
            return Err(Error::DuplicateElement { element: element.to_owned(), name: name.clone() });
        }
    }
    Ok(members)
}

/// The members of an object that may only have the members `names`, each at most once.
fn members<'j, const N: usize>(
    json: &'j Json,
    element: &str,
    names: [&str; N],
) -> Result<[Option<&'j Json>; N], Error> {
    let mut found = [None; N];
    for (name, value) in object(json, element)? {
        let Some(index) = names.iter().position(|known| known == name) else {
            return Err(Error::UnknownElement { element: element.to_owned(), name: name.clone() });
        };
        found[index] = Some(value);
    }
    Ok(found)
}

fn wrong_type(element: &str, expected: &'static str) -> Error {
    Error::WrongType { element: element.to_owned(), expected }
}

fn pattern_error(element: &str, value: &str, error: PatternError) -> Error {
    let element = element.to_owned();
    match error {
        PatternError::Unterminated => Error::UnterminatedVariable { element, found: value.to_owned() },
        PatternError::UnknownVariable(variable) => Error::UnknownVariable { element, variable },
        PatternError::MultipleListVariables => Error::MultipleListVariables { element },
    }
}
