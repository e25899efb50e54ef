//! Static thing groups: their hierarchy, their members, and the changes that reach devices.
//!
//! The rules (AWS's): a hierarchy is at most [`MAX_GROUP_DEPTH`] levels deep; a thing is a
//! member of at most [`MAX_GROUPS_PER_THING`] groups; a group's parent is set at creation and
//! never changes; a group with child groups cannot be deleted; deleting a group detaches its
//! policies and removes its members; `expectedVersion` must match. Dynamic groups do not exist.
//!
//! What reaches the gateway: a membership change records a `Thing` change-feed entry (the
//! thing's certificates' policies change), a policy attached to or detached from a group and a
//! deleted group record a `ThingGroup` entry (entity: the group name); a gateway re-reads the
//! principals whose snapshot was loaded with that group.

use std::collections::BTreeMap;

use certfleet_registry::{
    self as registry, AccountId, ChangeKind, KeyPage, KeyPageRequest, Tag, ThingGroup, ThingGroupFilter,
    ThingGroupName, ThingName, Tx,
};
use time::OffsetDateTime;

use crate::ids::uuid_v4;
use crate::thing_types::{check_description, check_tags};
use crate::things::{AttributePayload, check_attributes};
use crate::{Caller, Error, Services};

/// The most levels of a group hierarchy, the root included (AWS: 7).
pub const MAX_GROUP_DEPTH: usize = 7;

/// The most groups a thing is a member of (AWS: 10).
pub const MAX_GROUPS_PER_THING: usize = 10;

/// The most attributes of a thing group (as a thing with a type: 50).
pub const MAX_GROUP_ATTRIBUTES: usize = 50;

/// CreateThingGroup's request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThingGroupDefinition {
    pub parent: Option<ThingGroupName>,
    pub description: Option<String>,
    /// Attributes with an empty value are not stored.
    pub attributes: BTreeMap<String, String>,
}

/// UpdateThingGroup's request: `None` keeps what is stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThingGroupUpdate {
    pub description: Option<String>,
    pub attributes: Option<AttributePayload>,
    pub expected_version: Option<i64>,
}

/// A group as DescribeThingGroup shows it: with the names of its ancestors, root first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThingGroupDescription {
    pub group: ThingGroup,
    pub root_to_parent: Vec<ThingGroupName>,
}

/// How [`put_thing_in_groups`] treats the groups a thing is a member of already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupMembership {
    /// Keep them; add the new ones.
    Merge,
    /// Remove the thing from every group not in the list.
    Replace,
}

impl Services {
    /// The ARN of a thing group.
    pub fn thing_group_arn(&self, account: &AccountId, name: &ThingGroupName) -> String {
        self.arn(account, &format!("thinggroup/{name}"))
    }

    /// The group an ARN names: `arn:<partition>:iot:<region>:<account>:thinggroup/<name>` of this
    /// deployment. Another account's or region's group does not exist here (`NotFound`).
    pub fn thing_group_from_arn(&self, account: &AccountId, arn: &str) -> Result<ThingGroupName, Error> {
        let name = self.resource_of_arn(account, arn, "thinggroup/")?;
        ThingGroupName::parse(name).map_err(|_| Error::InvalidRequest(format!("{arn:?} is not a thing group ARN")))
    }

    /// The thing an ARN names (like [`Services::thing_group_from_arn`]).
    pub fn thing_from_arn(&self, account: &AccountId, arn: &str) -> Result<ThingName, Error> {
        let name = self.resource_of_arn(account, arn, "thing/")?;
        ThingName::parse(name).map_err(|_| Error::InvalidRequest(format!("{arn:?} is not a thing ARN")))
    }

    /// CreateThingGroup: the group, or the existing one when its definition is identical.
    pub fn create_thing_group(
        &self,
        caller: &Caller,
        name: &ThingGroupName,
        definition: &ThingGroupDefinition,
        tags: &[Tag],
    ) -> Result<ThingGroup, Error> {
        if let Some(description) = &definition.description {
            check_description(description)?;
        }
        check_group_attributes(&definition.attributes)?;
        check_tags(tags)?;
        let now = self.now();
        let arn = self.thing_group_arn(&caller.account, name);
        let mut attributes = definition.attributes.clone();
        attributes.retain(|_, value| !value.is_empty());
        let record = ThingGroup {
            account: caller.account.clone(),
            name: name.clone(),
            id: uuid_v4()?,
            parent: definition.parent.clone(),
            description: definition.description.clone().filter(|text| !text.is_empty()),
            attributes,
            version: 1,
            created_at: now,
        };
        let (group, created) = registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            if let Some(existing) = tx.get_thing_group(&caller.account, name)? {
                if existing.parent == record.parent
                    && existing.description == record.description
                    && existing.attributes == record.attributes
                {
                    return Ok((existing, false));
                }
                return Err(Error::AlreadyExists {
                    message: format!("the thing group {name} already exists with a different definition"),
                    resource_id: existing.id,
                    resource_arn: Some(arn.clone()),
                });
            }
            if let Some(parent) = &record.parent {
                find_group(tx, &caller.account, parent)?;
                let ancestors = tx.thing_group_ancestors(&caller.account, parent, MAX_GROUP_DEPTH)?;
                // The parent's depth is its ancestors and itself; the new group adds one level.
                if ancestors.len() + 2 > MAX_GROUP_DEPTH {
                    return Err(Error::InvalidRequest(format!(
                        "a thing group hierarchy has at most {MAX_GROUP_DEPTH} levels: {parent} is at level {}",
                        ancestors.len() + 1
                    )));
                }
            }
            tx.insert_thing_group(&record)?;
            tx.put_tags(&arn, tags)?;
            Ok::<_, Error>((record.clone(), true))
        })?;
        if created {
            tracing::info!(account = %caller.account, group = %name, parent = ?group.parent, "thing group created");
        }
        Ok(group)
    }

    /// DescribeThingGroup.
    pub fn describe_thing_group(&self, caller: &Caller, name: &ThingGroupName) -> Result<ThingGroupDescription, Error> {
        registry::read(self.store(), |tx| {
            let group = find_group(tx, &caller.account, name)?;
            let mut root_to_parent = tx.thing_group_ancestors(&caller.account, name, MAX_GROUP_DEPTH)?;
            root_to_parent.reverse();
            Ok(ThingGroupDescription { group, root_to_parent })
        })
    }

    /// UpdateThingGroup. Returns the new version.
    pub fn update_thing_group(
        &self,
        caller: &Caller,
        name: &ThingGroupName,
        update: &ThingGroupUpdate,
    ) -> Result<i64, Error> {
        if let Some(description) = &update.description {
            check_description(description)?;
        }
        if let Some(payload) = &update.attributes {
            check_attributes(&payload.attributes)?;
            if payload.attributes.len() > MAX_GROUP_ATTRIBUTES {
                return Err(too_many_attributes(payload.attributes.len()));
            }
        }
        let version = registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let mut group = find_group(tx, &caller.account, name)?;
            check_expected_version(&group, update.expected_version)?;
            if let Some(description) = &update.description {
                group.description = Some(description.clone()).filter(|text| !text.is_empty());
            }
            match &update.attributes {
                None => {}
                Some(payload) if payload.merge => {
                    for (key, value) in &payload.attributes {
                        if value.is_empty() {
                            group.attributes.remove(key);
                        } else {
                            group.attributes.insert(key.clone(), value.clone());
                        }
                    }
                }
                Some(payload) => {
                    group.attributes = payload.attributes.clone();
                    group.attributes.retain(|_, value| !value.is_empty());
                }
            }
            if group.attributes.len() > MAX_GROUP_ATTRIBUTES {
                return Err(too_many_attributes(group.attributes.len()));
            }
            group.version += 1;
            tx.update_thing_group(&group)?;
            Ok(group.version)
        })?;
        tracing::info!(account = %caller.account, group = %name, version, "thing group updated");
        Ok(version)
    }

    /// DeleteThingGroup: a group that does not exist is deleted already; one with child groups
    /// is refused; its policies are detached and its members removed.
    pub fn delete_thing_group(
        &self,
        caller: &Caller,
        name: &ThingGroupName,
        expected_version: Option<i64>,
    ) -> Result<(), Error> {
        let now = self.now();
        let arn = self.thing_group_arn(&caller.account, name);
        let deleted = registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let Some(group) = tx.get_thing_group(&caller.account, name)? else { return Ok(false) };
            check_expected_version(&group, expected_version)?;
            let children = tx.count_child_groups(&caller.account, name)?;
            if children > 0 {
                return Err(Error::InvalidRequest(format!(
                    "cannot delete the thing group {name}: it has {children} child group(s); delete them first"
                )));
            }
            tx.delete_thing_group(&caller.account, name)?;
            tx.delete_tags(&arn)?;
            group_changed(tx, &caller.account, name, now)?;
            Ok::<_, Error>(true)
        })?;
        if deleted {
            tracing::info!(account = %caller.account, group = %name, "thing group deleted");
        }
        Ok(())
    }

    /// ListThingGroups, by name.
    pub fn list_thing_groups(
        &self,
        caller: &Caller,
        filter: &ThingGroupFilter,
        page: &KeyPageRequest,
    ) -> Result<KeyPage<ThingGroupName>, Error> {
        registry::read(self.store(), |tx| {
            if let Some(parent) = &filter.parent {
                find_group(tx, &caller.account, parent)?;
            }
            tx.list_thing_groups(&caller.account, filter, page).map_err(Error::from)
        })
    }

    /// AddThingToThingGroup. Adding a member again changes nothing.
    pub fn add_thing_to_thing_group(
        &self,
        caller: &Caller,
        group: &ThingGroupName,
        thing: &ThingName,
    ) -> Result<(), Error> {
        self.update_thing_groups_for_thing(caller, thing, std::slice::from_ref(group), &[])
    }

    /// RemoveThingFromThingGroup. Removing a thing that is not a member changes nothing.
    pub fn remove_thing_from_thing_group(
        &self,
        caller: &Caller,
        group: &ThingGroupName,
        thing: &ThingName,
    ) -> Result<(), Error> {
        self.update_thing_groups_for_thing(caller, thing, &[], std::slice::from_ref(group))
    }

    /// UpdateThingGroupsForThing: removes, then adds, in one transaction (all or nothing).
    pub fn update_thing_groups_for_thing(
        &self,
        caller: &Caller,
        thing: &ThingName,
        add: &[ThingGroupName],
        remove: &[ThingGroupName],
    ) -> Result<(), Error> {
        // Past the bound nothing could succeed: refuse before reading anything.
        if add.len() > MAX_GROUPS_PER_THING || remove.len() > MAX_GROUPS_PER_THING {
            return Err(too_many_groups(add.len().max(remove.len())));
        }
        let now = self.now();
        let changed = registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            find_thing(tx, &caller.account, thing)?;
            let mut changed = false;
            for group in remove {
                find_group(tx, &caller.account, group)?;
                changed |= tx.remove_thing_from_group(&caller.account, group, thing)?;
            }
            if changed {
                thing_membership_changed(tx, &caller.account, thing, now)?;
            }
            put_thing_in_groups(tx, &caller.account, thing, add, GroupMembership::Merge, now)?;
            Ok::<_, Error>(changed || !add.is_empty())
        })?;
        if changed {
            tracing::info!(account = %caller.account, %thing, added = ?add, removed = ?remove, "thing groups of a thing updated");
        }
        Ok(())
    }

    /// ListThingsInThingGroup, by thing name (with the descendants' members when `recursive`).
    pub fn list_things_in_thing_group(
        &self,
        caller: &Caller,
        group: &ThingGroupName,
        recursive: bool,
        page: &KeyPageRequest,
    ) -> Result<KeyPage<ThingName>, Error> {
        registry::read(self.store(), |tx| {
            find_group(tx, &caller.account, group)?;
            tx.things_in_group(&caller.account, group, recursive, page).map_err(Error::from)
        })
    }

    /// ListThingGroupsForThing: the groups the thing is a member of directly, by name.
    pub fn list_thing_groups_for_thing(
        &self,
        caller: &Caller,
        thing: &ThingName,
        page: &KeyPageRequest,
    ) -> Result<KeyPage<ThingGroupName>, Error> {
        registry::read(self.store(), |tx| {
            find_thing(tx, &caller.account, thing)?;
            tx.groups_of_thing_page(&caller.account, thing, page).map_err(Error::from)
        })
    }

    /// The text after `<kind>` in an ARN of this deployment and `account`.
    fn resource_of_arn<'t>(&self, account: &AccountId, arn: &'t str, kind: &str) -> Result<&'t str, Error> {
        let invalid = || {
            Error::InvalidRequest(format!(
                "{arn:?} is not an ARN of the form arn:aws:iot:<region>:<account>:{kind}<name>"
            ))
        };
        let parts: Vec<&str> = arn.strip_prefix("arn:").ok_or_else(invalid)?.splitn(5, ':').collect();
        let [partition, service, region, owner, resource] = parts[..] else { return Err(invalid()) };
        let name = resource.strip_prefix(kind).filter(|_| service == "iot").ok_or_else(invalid)?;
        if partition != self.config().partition || region != self.config().region || owner != account.as_str() {
            return Err(Error::NotFound(format!("the resource {arn} does not exist")));
        }
        Ok(name)
    }
}

/// Puts `thing` in each of `groups`, inside the caller's open write transaction (the account
/// locked), for the operations that create or provision things (fleet provisioning templates'
/// `ThingGroups`). `Merge` keeps the thing's other groups; `Replace` removes it from every group
/// not in `groups` (AWS's `OverrideSettings.ThingGroups: REPLACE`).
///
/// Checks the thing and each group exist in `account` (`NotFound`) and that the thing ends in
/// at most [`MAX_GROUPS_PER_THING`] groups (`InvalidRequest`); records the `Thing` change-feed
/// entry gateways need, so certificates attached to the thing get the groups' policies. A
/// refusal writes nothing the caller does not roll back with its transaction.
pub(crate) fn put_thing_in_groups(
    tx: &mut Tx<'_>,
    account: &AccountId,
    thing: &ThingName,
    groups: &[ThingGroupName],
    mode: GroupMembership,
    at: OffsetDateTime,
) -> Result<(), Error> {
    if groups.len() > MAX_GROUPS_PER_THING {
        return Err(too_many_groups(groups.len()));
    }
    find_thing(tx, account, thing)?;
    for group in groups {
        find_group(tx, account, group)?;
    }
    let mut changed = false;
    if mode == GroupMembership::Replace {
        for current in tx.groups_of_thing(account, thing)? {
            if !groups.contains(&current) {
                changed |= tx.remove_thing_from_group(account, &current, thing)?;
            }
        }
    }
    for group in groups {
        changed |= tx.add_thing_to_group(account, group, thing, at)?;
    }
    let count = tx.groups_of_thing(account, thing)?.len();
    if count > MAX_GROUPS_PER_THING {
        return Err(too_many_groups(count));
    }
    if changed {
        thing_membership_changed(tx, account, thing, at)?;
    }
    Ok(())
}

fn too_many_groups(count: usize) -> Error {
    Error::InvalidRequest(format!(
        "a thing can be a member of at most {MAX_GROUPS_PER_THING} thing groups, not {count}"
    ))
}

fn too_many_attributes(count: usize) -> Error {
    Error::InvalidRequest(format!("a thing group has at most {MAX_GROUP_ATTRIBUTES} attributes, {count} were given"))
}

fn check_group_attributes(attributes: &BTreeMap<String, String>) -> Result<(), Error> {
    check_attributes(attributes)?;
    if attributes.len() > MAX_GROUP_ATTRIBUTES {
        return Err(too_many_attributes(attributes.len()));
    }
    Ok(())
}

fn check_expected_version(group: &ThingGroup, expected: Option<i64>) -> Result<(), Error> {
    match expected {
        Some(expected) if expected != group.version => Err(Error::VersionConflict(format!(
            "the thing group {} is at version {}, not the expected version {expected}",
            group.name, group.version
        ))),
        _ => Ok(()),
    }
}

pub(crate) fn find_group(tx: &mut Tx<'_>, account: &AccountId, name: &ThingGroupName) -> Result<ThingGroup, Error> {
    tx.get_thing_group(account, name)?.ok_or_else(|| Error::NotFound(format!("the thing group {name} does not exist")))
}

fn find_thing(tx: &mut Tx<'_>, account: &AccountId, name: &ThingName) -> Result<(), Error> {
    tx.get_thing(account, name)?.ok_or_else(|| Error::NotFound(format!("the thing {name} does not exist")))?;
    Ok(())
}

/// Tells the change feed that what a group grants changed (a policy attached or detached, the
/// group deleted).
pub(crate) fn group_changed(
    tx: &mut Tx<'_>,
    account: &AccountId,
    name: &ThingGroupName,
    now: OffsetDateTime,
) -> Result<(), Error> {
    tx.record_change(account, ChangeKind::ThingGroup, name.as_str(), now).map_err(Error::from)
}

/// Tells the change feed that a thing's groups changed: the principals attached to it are
/// re-read (a `Thing` entry).
fn thing_membership_changed(
    tx: &mut Tx<'_>,
    account: &AccountId,
    thing: &ThingName,
    now: OffsetDateTime,
) -> Result<(), Error> {
    tx.record_change(account, ChangeKind::Thing, thing.as_str(), now).map_err(Error::from)
}
