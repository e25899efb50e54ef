//! Things: the registry entries of devices, their attributes, and the certificates attached to
//! them.
//!
//! The rules: CreateThing is idempotent for an identical definition; a thing without a type has
//! at most [`MAX_UNTYPED_ATTRIBUTES`] attributes, one with a type [`MAX_TYPED_ATTRIBUTES`]; an
//! empty attribute value means "no such attribute" (in UpdateThing with `merge`, it removes
//! the attribute); `expectedVersion` must match; a thing with certificates attached cannot be
//! deleted. A certificate attached to a thing EXCLUSIVE_THING is attached to that thing only:
//! it cannot be attached to another, and it cannot be attached exclusively while it has another.
//! A thing names an existing thing type that is not deprecated (`thing_types`); deleting a
//! thing removes it from its groups.

use std::collections::BTreeMap;

use certfleet_pki::CertificateId;
use certfleet_registry::{
    self as registry, AccountId, CertificateStatus, ChangeKind, KeyPage, KeyPageRequest, Thing, ThingFilter, ThingName,
    ThingPrincipal, ThingPrincipalType, Tx,
};
use time::OffsetDateTime;

use crate::ids::uuid_v4;
use crate::policies::{certificate_changed, no_such_principal};
use crate::thing_types::check_thing_type_usable;
use crate::{Caller, Error, Services};

/// The most attributes of a thing without a type (AWS: 3).
pub const MAX_UNTYPED_ATTRIBUTES: usize = 3;

/// The most attributes of a thing with a type (AWS: 50).
pub const MAX_TYPED_ATTRIBUTES: usize = 50;

/// CreateThing's request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThingDefinition {
    pub type_name: Option<ThingName>,
    /// Attributes with an empty value are not stored.
    pub attributes: BTreeMap<String, String>,
    /// certfleet has no billing groups: naming one is refused.
    pub billing_group: Option<String>,
}

/// New attributes for a thing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttributePayload {
    pub attributes: BTreeMap<String, String>,
    /// Merge into the stored attributes (an empty value removes one) instead of replacing them.
    pub merge: bool,
}

/// UpdateThing's request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThingUpdate {
    pub type_name: Option<ThingName>,
    pub remove_type: bool,
    pub attributes: Option<AttributePayload>,
    pub expected_version: Option<i64>,
}

impl Services {
    /// The ARN of a thing.
    pub fn thing_arn(&self, account: &AccountId, name: &ThingName) -> String {
        self.arn(account, &format!("thing/{name}"))
    }

    /// CreateThing: the thing, or the existing one when its definition is identical.
    pub fn create_thing(
        &self,
        caller: &Caller,
        name: &ThingName,
        definition: &ThingDefinition,
    ) -> Result<Thing, Error> {
        if let Some(group) = &definition.billing_group {
            return Err(Error::NotFound(format!(
                "the billing group {group} does not exist (certfleet has no billing groups)"
            )));
        }
        check_attributes(&definition.attributes)?;
        let attributes = without_empty_values(definition.attributes.clone());
        check_attribute_count(&attributes, definition.type_name.as_ref())?;
        let now = self.now();
        let record = Thing {
            account: caller.account.clone(),
            name: name.clone(),
            id: uuid_v4()?,
            type_name: definition.type_name.clone(),
            attributes,
            version: 1,
            created_at: now,
        };
        let (thing, created) = registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            if let Some(existing) = tx.get_thing(&caller.account, name)? {
                if existing.type_name == record.type_name && existing.attributes == record.attributes {
                    return Ok((existing, false));
                }
                return Err(Error::AlreadyExists {
                    message: format!("the thing {name} already exists with a different definition"),
                    resource_id: existing.id,
                    resource_arn: Some(self.thing_arn(&caller.account, name)),
                });
            }
            if let Some(type_name) = &record.type_name {
                check_thing_type_usable(tx, &caller.account, type_name)?;
            }
            tx.insert_thing(&record)?;
            thing_changed(tx, &caller.account, name, now)?;
            Ok((record.clone(), true))
        })?;
        if created {
            tracing::info!(account = %caller.account, thing = %name, "thing created");
        }
        Ok(thing)
    }

    /// DescribeThing.
    pub fn describe_thing(&self, caller: &Caller, name: &ThingName) -> Result<Thing, Error> {
        registry::read(self.store(), |tx| find_thing(tx, &caller.account, name))
    }

    /// UpdateThing. Returns the thing as it is after the call.
    pub fn update_thing(&self, caller: &Caller, name: &ThingName, update: &ThingUpdate) -> Result<Thing, Error> {
        if update.remove_type && update.type_name.is_some() {
            return Err(Error::InvalidRequest("removeThingType cannot be combined with a thingTypeName".into()));
        }
        if let Some(payload) = &update.attributes {
            check_attributes(&payload.attributes)?;
        }
        let now = self.now();
        let thing = registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let mut thing = find_thing(tx, &caller.account, name)?;
            check_expected_version(&thing, update.expected_version)?;
            if update.remove_type {
                thing.type_name = None;
            } else if let Some(type_name) = &update.type_name {
                if thing.type_name.as_ref() != Some(type_name) {
                    check_thing_type_usable(tx, &caller.account, type_name)?;
                }
                thing.type_name = Some(type_name.clone());
            }
            match &update.attributes {
                None => {}
                Some(payload) if payload.merge => {
                    for (key, value) in &payload.attributes {
                        if value.is_empty() {
                            thing.attributes.remove(key);
                        } else {
                            thing.attributes.insert(key.clone(), value.clone());
                        }
                    }
                }
                Some(payload) => thing.attributes = without_empty_values(payload.attributes.clone()),
            }
            check_attribute_count(&thing.attributes, thing.type_name.as_ref())?;
            thing.version += 1;
            tx.update_thing(&thing)?;
            thing_changed(tx, &caller.account, name, now)?;
            Ok::<_, Error>(thing)
        })?;
        tracing::info!(account = %caller.account, thing = %name, version = thing.version, "thing updated");
        Ok(thing)
    }

    /// DeleteThing: a thing that does not exist is deleted already; one with certificates
    /// attached is refused.
    pub fn delete_thing(&self, caller: &Caller, name: &ThingName, expected_version: Option<i64>) -> Result<(), Error> {
        let now = self.now();
        let deleted = registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let Some(thing) = tx.get_thing(&caller.account, name)? else { return Ok(false) };
            check_expected_version(&thing, expected_version)?;
            if tx.count_thing_principals(&caller.account, name)? > 0 {
                return Err(Error::InvalidRequest(format!(
                    "cannot delete: the thing {name} is still attached to one or more principals"
                )));
            }
            tx.remove_thing_from_all_groups(&caller.account, name)?;
            tx.delete_thing(&caller.account, name)?;
            thing_changed(tx, &caller.account, name, now)?;
            Ok(true)
        })?;
        if deleted {
            tracing::info!(account = %caller.account, thing = %name, "thing deleted");
        }
        Ok(())
    }

    /// ListThings, by name.
    pub fn list_things(
        &self,
        caller: &Caller,
        filter: &ThingFilter,
        page: &KeyPageRequest,
    ) -> Result<KeyPage<Thing>, Error> {
        registry::read(self.store(), |tx| tx.list_things(&caller.account, filter, page).map_err(Error::from))
    }

    /// AttachThingPrincipal: `principal` is the ARN of one of the caller's certificates.
    /// Attaching again with another type changes the type (when the exclusivity rule allows).
    pub fn attach_thing_principal(
        &self,
        caller: &Caller,
        name: &ThingName,
        principal: &str,
        principal_type: ThingPrincipalType,
    ) -> Result<(), Error> {
        let certificate = self.certificate_principal(&caller.account, principal)?;
        let now = self.now();
        let changed = registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            find_thing(tx, &caller.account, name)?;
            let found =
                tx.get_certificate(&caller.account, &certificate)?.ok_or_else(|| no_such_principal(principal))?;
            if found.status == CertificateStatus::PendingTransfer {
                return Err(Error::CertificateState(
                    "the certificate is being transferred: cancel or complete the transfer first".into(),
                ));
            }
            let attachments = tx.certificate_things(&caller.account, &certificate)?;
            let (this, others): (Vec<_>, Vec<_>) =
                attachments.iter().partition(|attachment| &attachment.thing_name == name);
            if let Some(exclusive) = others.iter().find(|other| other.principal_type == ThingPrincipalType::Exclusive) {
                return Err(Error::InvalidRequest(format!(
                    "the principal is attached exclusively to the thing {}: detach it first",
                    exclusive.thing_name
                )));
            }
            if principal_type == ThingPrincipalType::Exclusive && !others.is_empty() {
                return Err(Error::InvalidRequest(format!(
                    "the principal is attached to {} other thing(s): an EXCLUSIVE_THING attachment must be its only one",
                    others.len()
                )));
            }
            if this.first().is_some_and(|current| current.principal_type == principal_type) {
                return Ok(false);
            }
            tx.put_thing_principal(&ThingPrincipal {
                account: caller.account.clone(),
                thing_name: name.clone(),
                certificate_id: certificate.clone(),
                principal_type,
                attached_at: now,
            })?;
            certificate_changed(tx, &caller.account, &certificate, now)?;
            Ok(true)
        })?;
        if changed {
            tracing::info!(account = %caller.account, thing = %name, cert = %certificate, kind = principal_type.as_str(), "principal attached to thing");
        }
        Ok(())
    }

    /// DetachThingPrincipal. Detaching a principal that is not attached changes nothing.
    pub fn detach_thing_principal(&self, caller: &Caller, name: &ThingName, principal: &str) -> Result<(), Error> {
        let certificate = self.certificate_principal(&caller.account, principal)?;
        let now = self.now();
        let detached = registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            find_thing(tx, &caller.account, name)?;
            if !tx.delete_thing_principal(&caller.account, name, &certificate)? {
                return Ok::<_, Error>(false);
            }
            certificate_changed(tx, &caller.account, &certificate, now)?;
            Ok(true)
        })?;
        if detached {
            tracing::info!(account = %caller.account, thing = %name, cert = %certificate, "principal detached from thing");
        }
        Ok(())
    }

    /// ListThingPrincipals(V2): the certificates attached to a thing (by one type of attachment
    /// when given), by ID.
    pub fn list_thing_principals(
        &self,
        caller: &Caller,
        name: &ThingName,
        principal_type: Option<ThingPrincipalType>,
        page: &KeyPageRequest,
    ) -> Result<KeyPage<ThingPrincipal>, Error> {
        registry::read(self.store(), |tx| {
            find_thing(tx, &caller.account, name)?;
            tx.thing_principals(&caller.account, name, principal_type, page).map_err(Error::from)
        })
    }

    /// ListPrincipalThings(V2): the things a certificate is attached to (by one type of
    /// attachment when given), by name.
    pub fn list_principal_things(
        &self,
        caller: &Caller,
        principal: &str,
        principal_type: Option<ThingPrincipalType>,
        page: &KeyPageRequest,
    ) -> Result<KeyPage<ThingPrincipal>, Error> {
        let certificate = self.certificate_principal(&caller.account, principal)?;
        registry::read(self.store(), |tx| {
            tx.get_certificate(&caller.account, &certificate)?.ok_or_else(|| no_such_principal(principal))?;
            tx.certificate_things_page(&caller.account, &certificate, principal_type, page).map_err(Error::from)
        })
    }

    /// The things a certificate is attached to, with their attributes, by name: what the
    /// gateway needs for the thing policy variables.
    pub fn principal_things(&self, account: &AccountId, certificate: &CertificateId) -> Result<Vec<Thing>, Error> {
        Ok(self.principal_thing_attachments(account, certificate)?.into_iter().map(|(thing, _)| thing).collect())
    }

    /// Like [`Services::principal_things`], with each attachment's type (an EXCLUSIVE_THING
    /// attachment associates the thing with the connection whatever its client ID).
    pub fn principal_thing_attachments(
        &self,
        account: &AccountId,
        certificate: &CertificateId,
    ) -> Result<Vec<(Thing, ThingPrincipalType)>, Error> {
        registry::read(self.store(), |tx| tx.certificate_things_described(account, certificate).map_err(Error::from))
    }
}

fn find_thing(tx: &mut Tx<'_>, account: &AccountId, name: &ThingName) -> Result<Thing, Error> {
    tx.get_thing(account, name)?.ok_or_else(|| Error::NotFound(format!("the thing {name} does not exist")))
}

fn check_expected_version(thing: &Thing, expected: Option<i64>) -> Result<(), Error> {
    match expected {
        Some(expected) if expected != thing.version => Err(Error::VersionConflict(format!(
            "the thing {} is at version {}, not the expected version {expected}",
            thing.name, thing.version
        ))),
        _ => Ok(()),
    }
}

/// AWS's attribute patterns: names `[a-zA-Z0-9_.,@/:#-]+` (at most 128), values
/// `[a-zA-Z0-9_.,@/:#=\[\]-]*` (at most 800).
pub(crate) fn check_attributes(attributes: &BTreeMap<String, String>) -> Result<(), Error> {
    let name_byte = |b: u8| b.is_ascii_alphanumeric() || b"_.,@/:#-".contains(&b);
    let value_byte = |b: u8| name_byte(b) || b"=[]".contains(&b);
    for (name, value) in attributes {
        if name.is_empty() || name.len() > 128 || !name.bytes().all(name_byte) {
            return Err(Error::InvalidRequest(format!(
                "the attribute name {name:?} must match [a-zA-Z0-9_.,@/:#-]+ (1 to 128 characters)"
            )));
        }
        if value.len() > 800 || !value.bytes().all(value_byte) {
            return Err(Error::InvalidRequest(format!(
                "the value of attribute {name:?} must match [a-zA-Z0-9_.,@/:#=\\[\\]-]* (at most 800 characters)"
            )));
        }
    }
    Ok(())
}

pub(crate) fn check_attribute_count(
    attributes: &BTreeMap<String, String>,
    type_name: Option<&ThingName>,
) -> Result<(), Error> {
    let (limit, kind) = match type_name {
        Some(_) => (MAX_TYPED_ATTRIBUTES, "a thing with a type"),
        None => (MAX_UNTYPED_ATTRIBUTES, "a thing without a type"),
    };
    if attributes.len() > limit {
        return Err(Error::InvalidRequest(format!(
            "{kind} has at most {limit} attributes, {} were given",
            attributes.len()
        )));
    }
    Ok(())
}

fn without_empty_values(mut attributes: BTreeMap<String, String>) -> BTreeMap<String, String> {
    attributes.retain(|_, value| !value.is_empty());
    attributes
}

/// Tells the change feed that a thing changed (its attributes feed policy variables).
fn thing_changed(tx: &mut Tx<'_>, account: &AccountId, name: &ThingName, now: OffsetDateTime) -> Result<(), Error> {
    tx.record_change(account, ChangeKind::Thing, name.as_str(), now).map_err(Error::from)
}
