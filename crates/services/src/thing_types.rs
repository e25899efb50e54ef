//! Thing types: what a thing may name as its `thingTypeName`.
//!
//! The rules (AWS's): a type is created once (a second CreateThingType is
//! ResourceAlreadyExists); it has a description of at most 2,028 printable characters and at
//! most [`MAX_SEARCHABLE_ATTRIBUTES`] searchable attribute names. A deprecated type may not be
//! given to a thing (CreateThing, UpdateThing, JITP); things that have it keep it. A type may be
//! deleted only once deprecated for [`Config::thing_type_deletion_wait`](crate::Config) (AWS:
//! five minutes, the default) and only when no thing has it.

use certfleet_registry::{self as registry, AccountId, KeyPage, KeyPageRequest, Tag, ThingName, ThingType, Tx};

use crate::ids::uuid_v4;
use crate::{Caller, Error, Services};

/// The most searchable attributes of a thing type (AWS: 3).
pub const MAX_SEARCHABLE_ATTRIBUTES: usize = 3;

/// The longest description of a thing type or a thing group (AWS: 2,028 characters).
pub const MAX_DESCRIPTION_CHARS: usize = 2028;

/// The most tags given with a new thing type or thing group (AWS: 50 per resource).
pub const MAX_TAGS: usize = 50;

/// The properties of a thing type. In an update, `None` keeps what is stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThingTypeProperties {
    pub description: Option<String>,
    pub searchable_attributes: Option<Vec<String>>,
}

impl Services {
    /// The ARN of a thing type.
    pub fn thing_type_arn(&self, account: &AccountId, name: &ThingName) -> String {
        self.arn(account, &format!("thingtype/{name}"))
    }

    /// CreateThingType.
    pub fn create_thing_type(
        &self,
        caller: &Caller,
        name: &ThingName,
        properties: &ThingTypeProperties,
        tags: &[Tag],
    ) -> Result<ThingType, Error> {
        check_properties(properties)?;
        check_tags(tags)?;
        let now = self.now();
        let arn = self.thing_type_arn(&caller.account, name);
        let record = ThingType {
            account: caller.account.clone(),
            name: name.clone(),
            id: uuid_v4()?,
            description: properties.description.clone().filter(|text| !text.is_empty()),
            searchable_attributes: properties.searchable_attributes.clone().unwrap_or_default(),
            deprecated_at: None,
            created_at: now,
        };
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            if let Some(existing) = tx.get_thing_type(&caller.account, name)? {
                return Err(Error::AlreadyExists {
                    message: format!("the thing type {name} already exists"),
                    resource_id: existing.id,
                    resource_arn: Some(arn.clone()),
                });
            }
            tx.insert_thing_type(&record)?;
            tx.put_tags(&arn, tags)?;
            Ok(())
        })?;
        tracing::info!(account = %caller.account, thing_type = %name, "thing type created");
        Ok(record)
    }

    /// DescribeThingType.
    pub fn describe_thing_type(&self, caller: &Caller, name: &ThingName) -> Result<ThingType, Error> {
        registry::read(self.store(), |tx| find_thing_type(tx, &caller.account, name))
    }

    /// ListThingTypes, by name (only `name` when given).
    pub fn list_thing_types(
        &self,
        caller: &Caller,
        name: Option<&ThingName>,
        page: &KeyPageRequest,
    ) -> Result<KeyPage<ThingType>, Error> {
        registry::read(self.store(), |tx| tx.list_thing_types(&caller.account, name, page).map_err(Error::from))
    }

    /// UpdateThingType: replaces the properties given.
    pub fn update_thing_type(
        &self,
        caller: &Caller,
        name: &ThingName,
        properties: &ThingTypeProperties,
    ) -> Result<(), Error> {
        check_properties(properties)?;
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let mut thing_type = find_thing_type(tx, &caller.account, name)?;
            if let Some(description) = &properties.description {
                thing_type.description = Some(description.clone()).filter(|text| !text.is_empty());
            }
            if let Some(searchable) = &properties.searchable_attributes {
                thing_type.searchable_attributes = searchable.clone();
            }
            tx.update_thing_type(&thing_type)?;
            Ok::<_, Error>(())
        })?;
        tracing::info!(account = %caller.account, thing_type = %name, "thing type updated");
        Ok(())
    }

    /// DeprecateThingType; `undo` makes it usable again. Deprecating a deprecated type keeps its
    /// deprecation date (the wait before deletion does not start again).
    pub fn deprecate_thing_type(&self, caller: &Caller, name: &ThingName, undo: bool) -> Result<(), Error> {
        let now = self.now();
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let mut thing_type = find_thing_type(tx, &caller.account, name)?;
            thing_type.deprecated_at = match (undo, thing_type.deprecated_at) {
                (true, _) => None,
                (false, Some(since)) => Some(since),
                (false, None) => Some(now),
            };
            tx.update_thing_type(&thing_type)?;
            Ok::<_, Error>(())
        })?;
        tracing::info!(account = %caller.account, thing_type = %name, undo, "thing type deprecation changed");
        Ok(())
    }

    /// DeleteThingType: only a type deprecated for the configured wait and given to no thing.
    pub fn delete_thing_type(&self, caller: &Caller, name: &ThingName) -> Result<(), Error> {
        let now = self.now();
        let wait = self.config().thing_type_deletion_wait;
        let arn = self.thing_type_arn(&caller.account, name);
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let thing_type = find_thing_type(tx, &caller.account, name)?;
            let Some(since) = thing_type.deprecated_at else {
                return Err(Error::InvalidRequest(format!(
                    "the thing type {name} must be deprecated before it can be deleted"
                )));
            };
            if now - since < wait {
                return Err(Error::InvalidRequest(format!(
                    "the thing type {name} can be deleted {} seconds after its deprecation",
                    wait.whole_seconds()
                )));
            }
            let things = tx.count_things_of_type(&caller.account, name)?;
            if things > 0 {
                return Err(Error::InvalidRequest(format!(
                    "the thing type {name} cannot be deleted: {things} thing(s) have it"
                )));
            }
            tx.delete_thing_type(&caller.account, name)?;
            tx.delete_tags(&arn)?;
            Ok(())
        })?;
        tracing::info!(account = %caller.account, thing_type = %name, "thing type deleted");
        Ok(())
    }
}

/// Whether a thing may be given the type `name` now (inside an open registry transaction): it
/// exists in `account` (else `NotFound`, as AWS's ResourceNotFoundException) and is not
/// deprecated (else `InvalidRequest`). CreateThing, UpdateThing and JITP call it; fleet
/// provisioning should too before it creates a thing with a type.
pub(crate) fn check_thing_type_usable(tx: &mut Tx<'_>, account: &AccountId, name: &ThingName) -> Result<(), Error> {
    let thing_type = find_thing_type(tx, account, name)?;
    if thing_type.deprecated_at.is_some() {
        return Err(Error::InvalidRequest(format!("the thing type {name} is deprecated: no thing may be given it")));
    }
    Ok(())
}

fn find_thing_type(tx: &mut Tx<'_>, account: &AccountId, name: &ThingName) -> Result<ThingType, Error> {
    tx.get_thing_type(account, name)?.ok_or_else(|| Error::NotFound(format!("the thing type {name} does not exist")))
}

fn check_properties(properties: &ThingTypeProperties) -> Result<(), Error> {
    if let Some(description) = &properties.description {
        check_description(description)?;
    }
    if let Some(searchable) = &properties.searchable_attributes {
        if searchable.len() > MAX_SEARCHABLE_ATTRIBUTES {
            return Err(Error::InvalidRequest(format!(
                "a thing type has at most {MAX_SEARCHABLE_ATTRIBUTES} searchable attributes, {} were given",
                searchable.len()
            )));
        }
        let attributes = searchable.iter().map(|name| (name.clone(), String::new())).collect();
        crate::things::check_attributes(&attributes)?;
        if attributes.len() != searchable.len() {
            return Err(Error::InvalidRequest("the searchable attributes must be different names".into()));
        }
    }
    Ok(())
}

/// AWS's description pattern `[\p{Graph}\x20]*`, at most [`MAX_DESCRIPTION_CHARS`] characters.
pub(crate) fn check_description(description: &str) -> Result<(), Error> {
    let printable = |c: char| c == ' ' || !(c.is_control() || c.is_whitespace());
    if description.chars().count() > MAX_DESCRIPTION_CHARS || !description.chars().all(printable) {
        return Err(Error::InvalidRequest(format!(
            "a description is at most {MAX_DESCRIPTION_CHARS} printable characters (spaces allowed, no other whitespace)"
        )));
    }
    Ok(())
}

pub(crate) fn check_tags(tags: &[Tag]) -> Result<(), Error> {
    if tags.len() > MAX_TAGS {
        return Err(Error::InvalidRequest(format!("at most {MAX_TAGS} tags, {} were given", tags.len())));
    }
    Ok(())
}
