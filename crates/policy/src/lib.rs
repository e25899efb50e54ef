//! AWS IoT policy documents: parsed and compiled once ([`Policy::parse`]), then evaluated for
//! every request a device makes ([`evaluate`]).
//!
//! # Architecture invariant
//!
//! This crate is pure: no IO, no async, no clock, no logging. It never sees a certificate, a
//! database row or an MQTT packet: the gateway hands it a [`Context`] per connection and a
//! [`Request`] per action. JSON is read only in [`Policy::parse`]; evaluation walks compiled
//! statements and does not allocate (a pattern with more than four variables is the exception).
//! It is not an API boundary: every [`Error`] maps to AWS IoT's `MalformedPolicyException`.
//!
//! # Resources
//!
//! A [`Request`] names its resource by full ARN; [`Action::resource_type`] gives the type:
//!
//! | Action                                          | Resource                                                  |
//! |-------------------------------------------------|-----------------------------------------------------------|
//! | `iot:Connect`                                   | `arn:aws:iot:<region>:<account>:client/<clientId>`        |
//! | `iot:Publish`, `iot:Receive`, `iot:RetainPublish` | `arn:aws:iot:<region>:<account>:topic/<topicName>`      |
//! | `iot:Subscribe`                                 | `arn:aws:iot:<region>:<account>:topicfilter/<topicFilter>` |
//!
//! A retained publish needs both `iot:Publish` and `iot:RetainPublish`: the gateway asks twice.
//!
//! # The language accepted
//!
//! - The document: an object with `Version` (required, exactly `"2012-10-17"`, the only version
//!   AWS IoT accepts), `Statement` (an object or a non-empty array of objects) and an optional
//!   `Id`. At most 2048 characters, whitespace not counted (AWS IoT's limit). Element names are
//!   case-sensitive; an unknown or repeated element is refused.
//! - A statement: `Effect` (`"Allow"` or `"Deny"`), exactly one of `Action`/`NotAction`, exactly
//!   one of `Resource`/`NotResource` (each a string or a non-empty array of strings), optional
//!   `Sid` and `Condition`. There is no `Principal` in an AWS IoT policy.
//! - Actions: `*` or `service:action`, matched case-insensitively with the wildcards `*` and `?`
//!   (`iot:*`, `iot:P*`, `*`). A well-formed action that is not one of the five data-plane
//!   actions (`iot:UpdateThingShadow`, `s3:GetObject`) is kept for [`Policy::statements`] but
//!   covers no [`Request`]; under `NotAction` it excludes nothing.
//! - Resources: `*` or a string starting with `arn:`, matched case-sensitively against the whole
//!   ARN. `*` matches any sequence of characters, `/` and `:` included; `?` matches one
//!   character. The MQTT wildcards `+` and `#` are ordinary characters: `topicfilter/a/+`
//!   matches only the filter `a/+`.
//!
//! # Evaluation
//!
//! A statement applies to a request when its actions cover the request's action, a resource
//! matches (for `NotResource`: none matches) and every condition holds. Across all the policies
//! given to [`evaluate`], an applying Deny wins; otherwise an applying Allow allows; otherwise
//! the answer is [`Decision::ImplicitDeny`].
//!
//! # Policy variables
//!
//! Resources and string condition values may hold `${...}` variables (names case-insensitive):
//!
//! - `iot:ClientId`, `aws:SourceIp`;
//! - `iot:Connection.Thing.ThingName`, `.ThingTypeName`, `.Attributes[name]` (the name is
//!   case-sensitive), `.IsAttached` (`"true"` or `"false"`, always known);
//! - `iot:Certificate.SerialNumber` (decimal), and for `Subject` and `Issuer`:
//!   `iot:Certificate.Subject.X` with X one of `Country`, `Organization`, `OrganizationalUnit`,
//!   `DistinguishedNameQualifier`, `State`, `CommonName`, `SerialNumber`, `Title`, `Surname`,
//!   `GivenName`, `Initials`, `Pseudonym`, `GenerationQualifier`, and
//!   `iot:Certificate.Subject.AlternativeName.Y` with Y one of `RFC822Name`, `DNSName`,
//!   `DirectoryName`, `UniformResourceIdentifier`, `IPAddress`;
//! - `iot:Certificate.AvailableKeys`: the names of the certificate variables that have a value.
//!
//! That is the list AWS IoT documents; anything else (`${iot:Nope}`, `Subject.Locality`,
//! `Subject.EmailAddress`, `Validity.NotAfter`, `${aws:username}`, Cognito variables) is refused
//! when the policy is parsed, and so is an unterminated `${`. `${*}`, `${?}` and `${$}` write a
//! literal `*`, `?` and `$`.
//!
//! A certificate attribute may hold several values; as in AWS IoT only the first five count.
//! The plain name stands for the first value, `Name.N` for the value at index N (`.1` is the
//! second) and `Name.List` for all of them. In a resource or condition value a `.List` variable
//! matches if **any** of its values fits; one such multi-valued variable per string at most. As
//! a condition key, a multi-valued key needs `ForAnyValue:` or `ForAllValues:`.
//!
//! Substituted values are literal: a `*` or `?` in a client id or a thing attribute is that
//! character, never a wildcard. For certificate attributes certfleet follows AWS IoT further:
//! a value holding `*`, `$`, `+`, `?` or `#`, or longer than 1024 characters, is not substituted,
//! so the variable has no value (below).
//!
//! **A substituted value is one topic level.** In a `topic/...` or `topicfilter/...` resource
//! (the resources of `iot:Publish`, `iot:Receive`, `iot:RetainPublish` and `iot:Subscribe`), a
//! value holding `/`, `+`, `#` or NUL is not substituted either, whichever variable it comes
//! from (client id, thing name or attribute, certificate field): the variable has no value.
//! Otherwise a client id `+` under `topicfilter/clients/${iot:ClientId}/#` could subscribe to
//! every client's topics, and a client id `victim/x` under `topic/clients/${iot:ClientId}/*`
//! could publish inside `clients/victim/`. AWS IoT substitutes such values as they are (its
//! documentation only advises restricting `iot:Connect`); certfleet's gateway also refuses
//! client ids holding `+`, `#` or NUL at CONNECT. In a `client/...` resource the client id is
//! substituted as it is, `/` included.
//!
//! # Variables without a value
//!
//! A variable has no value when the request lacks it: no attached thing, a missing attribute or
//! type, a certificate without the attribute, an index past the last value. Such a variable can
//! never widen access:
//!
//! - in `Resource` the pattern matches nothing (IAM's null semantics), so an Allow does not
//!   apply through it (other patterns of the same statement still can);
//! - in `NotResource` the excluded set is unknown, so the statement fails closed: an Allow does
//!   not apply, a Deny does (when its actions and other conditions do);
//! - in a positive string condition (`StringEquals`, `StringLike`, ...) the value matches
//!   nothing; in a negated one (`StringNotEquals`, ...) the statement fails closed as above.
//!
//! # Conditions
//!
//! `StringEquals`, `StringNotEquals`, `StringEqualsIgnoreCase`, `StringNotEqualsIgnoreCase`,
//! `StringLike`, `StringNotLike`, `Bool` (each with optional `ForAnyValue:`/`ForAllValues:` and
//! `IfExists`) and `Null`, on the keys listed above. Several values under one key are ORed;
//! several keys and operators are ANDed. A key without a value fails positive operators, passes
//! negated ones, `IfExists` and `ForAllValues:`, and fails `ForAnyValue:` (IAM's rules).
//! Anything else (`DateGreaterThan`, `IpAddress`, `ArnLike`, `iot:LastWillTopic`, ...) is refused
//! with [`Error::UnsupportedConditionOperator`] or [`Error::UnsupportedConditionKey`] rather than
//! ignored. `IgnoreCase` compares Unicode lowercase, character by character.

mod actions;
mod condition;
mod context;
mod document;
mod error;
mod json;
mod outcome;
mod pattern;
mod policy;
mod variable;

#[cfg(test)]
mod tests;

pub use context::{AlternativeNames, CertificateAttributes, Context, DistinguishedName, Thing};
pub use error::Error;
pub use policy::{Action, Decision, Effect, Policy, Request, Statement, Written, evaluate};
