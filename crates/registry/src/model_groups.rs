//! The model of thing types and static thing groups (migration 14): a thing names an existing
//! type; groups form a tree by parent name; things are members of groups; policies are
//! attached to groups as well as to certificates.
//!
//! Plain values, like the rest of the model: services decide the rules (depth, bounds,
//! deprecation), the registry stores and finds.

use std::collections::BTreeMap;
use std::fmt;

use certfleet_pki::CertificateId;
use time::OffsetDateTime;

use crate::{AccountId, Error, ThingName};

/// The name of a thing group: `[a-zA-Z0-9:_-]+`, 1 to 128 characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ThingGroupName(String);

impl ThingGroupName {
    /// Parses a thing group name.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b":_-".contains(&b);
        if (1..=128).contains(&text.len()) && text.bytes().all(allowed) {
            Ok(ThingGroupName(text.to_owned()))
        } else {
            Err(Error::InvalidValue(format!(
                "a thing group name must match [a-zA-Z0-9:_-]+ (1 to 128 characters), got {text:?}"
            )))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ThingGroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A thing type of an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThingType {
    pub account: AccountId,
    pub name: ThingName,
    /// The thingTypeId, a UUID.
    pub id: String,
    pub description: Option<String>,
    /// At most three attribute names (services check the bound).
    pub searchable_attributes: Vec<String>,
    /// When it was deprecated; `None` while it is usable.
    pub deprecated_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
}

/// A static thing group of an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThingGroup {
    pub account: AccountId,
    pub name: ThingGroupName,
    /// The thingGroupId, a UUID.
    pub id: String,
    /// Set at creation and never changed.
    pub parent: Option<ThingGroupName>,
    pub description: Option<String>,
    pub attributes: BTreeMap<String, String>,
    /// Starts at 1 and grows by one with every update.
    pub version: i64,
    pub created_at: OffsetDateTime,
}

/// Which groups a listing of thing groups returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThingGroupFilter {
    /// Children of this group only (all descendants when `recursive`); without it, every group
    /// (root groups only when not `recursive`).
    pub parent: Option<ThingGroupName>,
    pub recursive: bool,
    /// Names starting with this text.
    pub name_prefix: Option<String>,
}

/// What a policy is attached to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PolicyTarget {
    Certificate(CertificateId),
    ThingGroup(ThingGroupName),
}
