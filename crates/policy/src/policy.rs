//! Compiled policies, the requests a gateway asks about, and the evaluation that answers them.

use std::fmt;
use std::sync::Arc;

use crate::Error;
use crate::condition::Condition;
use crate::context::Context;
use crate::outcome::Outcome;
use crate::pattern::{Case, Match, Pattern};
use crate::variable::Usage;

/// A data-plane action a gateway asks about.
///
/// A retained publish needs both [`Action::Publish`] and [`Action::RetainPublish`], as in AWS
/// IoT: the gateway makes two requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// `iot:Connect`, on `client/<clientId>`.
    Connect,
    /// `iot:Publish`, on `topic/<topicName>`.
    Publish,
    /// `iot:Subscribe`, on `topicfilter/<topicFilter>`.
    Subscribe,
    /// `iot:Receive` (delivering a message to the client), on `topic/<topicName>`.
    Receive,
    /// `iot:RetainPublish` (publishing with the retain flag), on `topic/<topicName>`.
    RetainPublish,
}

impl Action {
    /// Every data-plane action.
    pub const ALL: [Action; 5] =
        [Action::Connect, Action::Publish, Action::Subscribe, Action::Receive, Action::RetainPublish];

    /// The action's name in policies: `iot:Connect`, `iot:Publish`, ...
    pub fn name(self) -> &'static str {
        match self {
            Action::Connect => "iot:Connect",
            Action::Publish => "iot:Publish",
            Action::Subscribe => "iot:Subscribe",
            Action::Receive => "iot:Receive",
            Action::RetainPublish => "iot:RetainPublish",
        }
    }

    /// The resource type in the ARN of the action's resource: `client`, `topic` or
    /// `topicfilter` (`arn:aws:iot:<region>:<account>:<type>/<name>`).
    pub fn resource_type(self) -> &'static str {
        match self {
            Action::Connect => "client",
            Action::Publish | Action::Receive | Action::RetainPublish => "topic",
            Action::Subscribe => "topicfilter",
        }
    }

    /// How variables are substituted into the action's resource: inside a topic or a topic
    /// filter a value must be one literal level.
    pub(crate) fn substitution(self) -> Usage {
        match self {
            Action::Connect => Usage::Substitution,
            Action::Publish | Action::Receive | Action::RetainPublish | Action::Subscribe => Usage::TopicSubstitution,
        }
    }

    pub(crate) fn bit(self) -> u8 {
        match self {
            Action::Connect => 1,
            Action::Publish => 1 << 1,
            Action::Subscribe => 1 << 2,
            Action::Receive => 1 << 3,
            Action::RetainPublish => 1 << 4,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// What a statement does when it applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Effect {
    /// Grants the request, unless a Deny applies too.
    Allow,
    /// Refuses the request, whatever else allows it.
    Deny,
}

/// One question to the policies: may this connection do `action` on `resource`?
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The action asked for.
    pub action: Action,
    /// The full ARN of the resource, such as
    /// `arn:aws:iot:us-east-1:123456789012:topic/a/b` (see [`Action::resource_type`]).
    pub resource: &'a str,
    /// The connection the request comes from.
    pub context: &'a Context,
}

/// The answer to a [`Request`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// An Allow statement applies and no Deny statement does.
    Allow,
    /// A Deny statement applies.
    ExplicitDeny,
    /// No statement applies: what is not allowed is denied.
    ImplicitDeny,
}

impl Decision {
    /// Whether the request may go ahead.
    pub fn is_allowed(self) -> bool {
        self == Decision::Allow
    }
}

/// A parsed and compiled policy document. Immutable; cloning shares it.
#[derive(Clone, Debug)]
pub struct Policy {
    statements: Arc<[Statement]>,
}

impl Policy {
    /// Parses and compiles a policy document: the only JSON work this crate does.
    ///
    /// # Errors
    ///
    /// Every [`Error`] is a reason the document is malformed (AWS IoT's
    /// `MalformedPolicyException`).
    pub fn parse(document: &str) -> Result<Policy, Error> {
        let statements = crate::document::parse_statements(document)?;
        Ok(Policy { statements: statements.into() })
    }

    /// The statements, in document order, for audits and display.
    pub fn statements(&self) -> &[Statement] {
        &self.statements
    }
}

/// One statement of a policy, compiled.
#[derive(Debug)]
pub struct Statement {
    pub(crate) sid: Option<String>,
    pub(crate) effect: Effect,
    pub(crate) actions: Vec<String>,
    pub(crate) not_action: bool,
    /// The data-plane actions the statement covers, one [`Action::bit`] each.
    pub(crate) action_mask: u8,
    pub(crate) resources: Vec<String>,
    pub(crate) not_resource: bool,
    pub(crate) resource_patterns: Box<[Pattern]>,
    pub(crate) conditions: Box<[Condition]>,
}

/// The values of an `Action`/`NotAction` or `Resource`/`NotResource` element, as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written<'a> {
    /// True when written as the negation (`NotAction`, `NotResource`): the statement covers
    /// everything except `values`.
    pub negated: bool,
    /// The strings, in document order.
    pub values: &'a [String],
}

impl Statement {
    /// The statement's `Sid`, if it has one.
    pub fn sid(&self) -> Option<&str> {
        self.sid.as_deref()
    }

    /// Allow or Deny.
    pub fn effect(&self) -> Effect {
        self.effect
    }

    /// The `Action` or `NotAction` element as written.
    pub fn actions(&self) -> Written<'_> {
        Written { negated: self.not_action, values: &self.actions }
    }

    /// The `Resource` or `NotResource` element as written.
    pub fn resources(&self) -> Written<'_> {
        Written { negated: self.not_resource, values: &self.resources }
    }

    /// Whether the statement has a `Condition` element with at least one test.
    pub fn has_condition(&self) -> bool {
        !self.conditions.is_empty()
    }

    /// Whether the statement's `Action`/`NotAction` covers `action` (wildcards and case
    /// applied), whatever its resources and conditions.
    pub fn covers(&self, action: Action) -> bool {
        self.action_mask & action.bit() != 0
    }

    /// Whether the statement applies to a request whose action it covers.
    fn applies(&self, request: &Request<'_>) -> Outcome {
        let context = request.context;
        let usage = request.action.substitution();
        let matches = |pattern: &Pattern| pattern.matches(request.resource, context, Case::Sensitive, usage);
        let resource = if self.not_resource {
            // A pattern whose variable has no value excludes an unknown set: fail closed.
            !self.resource_patterns.iter().fold(Outcome::No, |outcome, pattern| {
                outcome.or(|| match matches(pattern) {
                    Match::Yes => Outcome::Yes,
                    Match::No => Outcome::No,
                    Match::Unresolved => Outcome::Unknown,
                })
            })
        } else {
            // A pattern whose variable has no value matches nothing (IAM's null).
            Outcome::from(self.resource_patterns.iter().any(|pattern| matches(pattern) == Match::Yes))
        };
        self.conditions.iter().fold(resource, |outcome, condition| outcome.and(|| condition.evaluate(context)))
    }
}

/// Decides a request against every policy attached to the connection's principal.
///
/// An applying Deny in any policy wins over any Allow; without an applying Allow the answer is
/// [`Decision::ImplicitDeny`]. Evaluation reads only compiled data: no JSON, and no allocation
/// unless a pattern holds more than four variables.
pub fn evaluate(policies: &[Policy], request: &Request<'_>) -> Decision {
    let bit = request.action.bit();
    let mut allowed = false;
    for statement in policies.iter().flat_map(|policy| policy.statements.iter()) {
        if statement.action_mask & bit == 0 || (allowed && statement.effect == Effect::Allow) {
            continue;
        }
        match (statement.effect, statement.applies(request)) {
            (Effect::Deny, Outcome::Yes | Outcome::Unknown) => return Decision::ExplicitDeny,
            (Effect::Allow, Outcome::Yes) => allowed = true,
            (Effect::Deny, Outcome::No) | (Effect::Allow, Outcome::No | Outcome::Unknown) => {}
        }
    }
    if allowed { Decision::Allow } else { Decision::ImplicitDeny }
}
