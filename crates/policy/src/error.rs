//! The one error type of the crate: why a policy document was refused.
//!
//! Every variant is a reason for AWS IoT's `MalformedPolicyException`; the API layer maps all of
//! them to that one shape and passes the message on. Each message names the offending element by
//! its path in the document (`Statement[1].Resource[0]`), so the author can find it.

/// Why a policy document was refused by [`Policy::parse`](crate::Policy::parse).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The document is empty or holds only whitespace.
    #[error("policy document is empty")]
    Empty,
    /// The document is longer than AWS IoT allows (2048 characters, whitespace not counted).
    #[error("policy document has {length} characters excluding whitespace: at most {limit} are allowed")]
    TooLong {
        /// The number of non-whitespace characters in the document.
        length: usize,
        /// The limit, 2048.
        limit: usize,
    },
    /// The document is not well-formed JSON.
    #[error("policy document is not valid json")]
    NotJson(#[source] serde_json::Error),
    /// An element has the wrong JSON type.
    #[error("{element} must be {expected}")]
    WrongType {
        /// The path of the element (`Statement[0].Effect`).
        element: String,
        /// What it must be ("a string", "an object", ...).
        expected: &'static str,
    },
    /// A required element is absent.
    #[error("{element} is missing")]
    Missing {
        /// The path of the missing element (`Version`, `Statement[0].Effect`).
        element: String,
    },
    /// An object has a member the policy language does not define here (AWS IoT policies have no
    /// `Principal`, for example). Names are case-sensitive.
    #[error("{element} has unknown element {name:?}")]
    UnknownElement {
        /// The path of the object.
        element: String,
        /// The unknown member name.
        name: String,
    },
    /// An object names the same member twice; JSON parsers disagree on which one wins, so the
    /// document is refused instead of guessing.
    #[error("{element} has element {name:?} more than once")]
    DuplicateElement {
        /// The path of the object.
        element: String,
        /// The repeated member name.
        name: String,
    },
    /// `Version` is not `2012-10-17`, the only version AWS IoT accepts (the one that has policy
    /// variables).
    #[error("policy version {found:?} is not supported: use \"2012-10-17\"")]
    UnsupportedVersion {
        /// The version found.
        found: String,
    },
    /// A list that must have entries is empty (`"Statement": []`, `"Action": []`).
    #[error("{element} is empty")]
    EmptyList {
        /// The path of the list.
        element: String,
    },
    /// A statement has both an element and its negation (`Action` and `NotAction`).
    #[error("{element} has both {first} and {second}: use one of them")]
    Conflicting {
        /// The path of the statement.
        element: String,
        /// The element (`Action`, `Resource`).
        first: &'static str,
        /// Its negation (`NotAction`, `NotResource`).
        second: &'static str,
    },
    /// `Effect` is neither `Allow` nor `Deny` (case-sensitive).
    #[error("{element} is {found:?}: expected \"Allow\" or \"Deny\"")]
    InvalidEffect {
        /// The path of the `Effect` element.
        element: String,
        /// The value found.
        found: String,
    },
    /// An action is neither `*` nor `service:action`.
    #[error("{element} is {found:?}: an action is \"*\" or \"service:action\", such as \"iot:Publish\"")]
    InvalidAction {
        /// The path of the action.
        element: String,
        /// The value found.
        found: String,
    },
    /// An `iot:` action (without wildcards) that AWS IoT does not have, e.g. `iot:Publsh`.
    #[error("{element} is {found:?}: AWS IoT has no such action")]
    UnknownAction {
        /// The path of the action.
        element: String,
        /// The value found.
        found: String,
    },
    /// A resource is neither `*` nor an ARN.
    #[error(
        "{element} is {found:?}: a resource is \"*\" or an arn, such as \"arn:aws:iot:us-east-1:123456789012:topic/a\""
    )]
    InvalidResource {
        /// The path of the resource.
        element: String,
        /// The value found.
        found: String,
    },
    /// A `${` has no closing `}`.
    #[error("{element} has an unterminated policy variable: {found:?}")]
    UnterminatedVariable {
        /// The path of the value.
        element: String,
        /// The whole value.
        found: String,
    },
    /// A `${...}` names no policy variable certfleet knows (see the crate documentation for the
    /// list). Names are case-insensitive; a thing attribute name is not.
    #[error("{element} uses unknown policy variable ${{{variable}}}")]
    UnknownVariable {
        /// The path of the value.
        element: String,
        /// The name between `${` and `}`.
        variable: String,
    },
    /// One value uses two multi-valued variables (`.List` or `iot:Certificate.AvailableKeys`);
    /// matching every combination is not supported.
    #[error("{element} uses more than one multi-valued policy variable: at most one is supported")]
    MultipleListVariables {
        /// The path of the value.
        element: String,
    },
    /// A condition operator certfleet does not implement (`DateGreaterThan`, `IpAddress`, ...).
    /// A condition that cannot be evaluated is refused rather than ignored.
    #[error("{element}: condition operator {operator:?} is not supported")]
    UnsupportedConditionOperator {
        /// The path of the `Condition` element.
        element: String,
        /// The operator as written.
        operator: String,
    },
    /// A condition key certfleet does not provide (`iot:LastWillTopic`, `aws:CurrentTime`, ...).
    #[error("{element}: condition key {key:?} is not supported")]
    UnsupportedConditionKey {
        /// The path of the operator block.
        element: String,
        /// The key as written.
        key: String,
    },
    /// A multi-valued key (`...List`, `iot:Certificate.AvailableKeys`) is used with a
    /// single-valued operator.
    #[error("{element}: condition key {key:?} has several values: use ForAnyValue: or ForAllValues:")]
    MultiValuedConditionKey {
        /// The path of the operator block.
        element: String,
        /// The key as written.
        key: String,
    },
    /// A `Bool` or `Null` condition value is not `true` or `false`.
    #[error("{element} is {found:?}: expected \"true\" or \"false\"")]
    InvalidBoolean {
        /// The path of the value.
        element: String,
        /// The value found.
        found: String,
    },
}
