//! Just-in-time registration (JITR): a device presenting an unknown certificate signed by one of
//! the account's CAs that is ACTIVE and allows auto-registration gets that certificate registered
//! as PENDING_ACTIVATION; an operator (or a rule) then activates it.
//!
//! Just-in-time provisioning (JITP): when that CA's registrationConfig carries a `templateBody`
//! (checked when it was registered, see [`crate::provisioning`]), the template is applied in the
//! same write transaction: its thing (created when absent) and policy (created from its
//! document, or an existing one by name) are attached to the certificate, which gets the
//! template's status (ACTIVE). When the template does not apply to this certificate (a
//! parameter it lacks, a name it makes invalid, a named policy that does not exist), the
//! certificate is registered as with JITR alone, PENDING_ACTIVATION, and the reason is logged.
//!
//! The gateway calls [`Services::auto_register_certificate`] for a certificate its account does
//! not hold, and publishes AWS's registration event itself (the services know no topics).
//! Strangers are the common case, so the CAs are looked up in a read transaction first: a
//! certificate no auto-registering CA could have signed never costs a write. The signature is
//! checked outside the write transaction (a certificate's bytes never change); the write
//! transaction then checks again, under the account lock, that the certificate is still unknown
//! and its CA still ACTIVE with auto-registration enabled.

use std::sync::atomic::Ordering;

use certfleet_pki::{self as pki, Certificate, CertificateId};
use certfleet_registry::{
    self as registry, AccountId, CaCertificate, CaStatus, CertificateMode, CertificateStatus, ChangeKind,
    DeviceCertificate, Policy, PolicyName, PolicyVersion, RegistrationConfig, Thing, ThingName, ThingPrincipal,
    ThingPrincipalType, Tx,
};

use crate::groups::{GroupMembership, put_thing_in_groups};
use crate::ids::uuid_v4;
use crate::provisioning::{Override, ProvisionedThing, Provisioning, Template};
use crate::rate::Admission;
use crate::thing_types::check_thing_type_usable;
use crate::{Error, Services};

impl Services {
    /// Registers `device` in `account` as PENDING_ACTIVATION, with the mode of the CA that
    /// signed it, if one of the account's CAs with the device's issuer subject is ACTIVE, allows
    /// auto-registration and verifies the device's signature (and validity) now. Returns the new
    /// record and the CA's ID.
    ///
    /// `sni` says whether the device named the account's endpoint; without it only CAs in
    /// DEFAULT mode count (as AWS finds the account of a connection without SNI by its DEFAULT
    /// CA, and an SNI_ONLY certificate could never connect without SNI anyway).
    ///
    /// `Ok(None)` when no such CA exists, when the certificate breaks the key rules, and when
    /// the certificate is already registered in `account` (whatever its status, e.g. registered a
    /// moment ago by a concurrent connection of the same device): only the call that inserted the
    /// record gets `Some`, so the registration event is published once. A certificate held by
    /// another account is registered here too: JITR is per account, and the device named this
    /// account (by SNI, or the default account without SNI).
    ///
    /// `Err(LimitExceeded)` past `Config::max_registrations_per_second` for the account on this
    /// node: nothing is written, the device may retry.
    pub fn auto_register_certificate(
        &self,
        account: &AccountId,
        device: &Certificate,
        sni: bool,
    ) -> Result<Option<(DeviceCertificate, CertificateId)>, Error> {
        let now = self.now();
        if pki::check_key_rules(device.public_key()).is_err() || device.signature_algorithm().is_err() {
            return Ok(None);
        }
        let issuer_key = device.issuer_fingerprint();
        let candidates =
            registry::read(self.store(), |tx| tx.cas_with_subject(account, &issuer_key).map_err(Error::from))?;
        let allowed = |ca: &CaCertificate| allows_auto_registration(ca) && (sni || ca.mode == CertificateMode::Default);
        let Some(signer) = candidates.iter().filter(|ca| allowed(ca)).find(|ca| signed(device, ca, now)) else {
            return Ok(None);
        };
        let signer_id = signer.id.clone();
        let generation_id = uuid_v4()?;

        let registered = registry::write(self.store(), |tx| {
            if tx.lock_account_if_present(account)?.is_none() || tx.get_certificate(account, device.id())?.is_some() {
                return Ok(None);
            }
            // Charged only for a certificate about to be registered: a device's concurrent
            // retries, and strangers no CA signed, cost the account nothing.
            self.admit_registration(account, device.id())?;
            let Some(ca) = tx.get_ca(account, &signer_id)?.filter(|ca| allowed(ca)) else {
                return Ok(None);
            };
            let body = match &ca.registration_config {
                Some(config) => template_body(tx, account, config)?,
                None => None,
            };
            let provisioning = match body.and_then(|body| provisioning_for(&body, device)) {
                Some(provisioning) => applicable(tx, account, provisioning)?,
                None => None,
            };
            let status =
                provisioning.as_ref().map_or(CertificateStatus::PendingActivation, |provisioning| provisioning.status);
            let record = DeviceCertificate::registered(
                account.clone(),
                device,
                Some(ca.id.clone()),
                status,
                ca.mode,
                generation_id.clone(),
                now,
            );
            tx.insert_certificate(&record)?;
            if let Some(provisioning) = &provisioning {
                apply(tx, account, &record.id, provisioning, now)?;
            }
            tx.record_change(account, ChangeKind::Certificate, record.id.as_str(), now)?;
            Ok::<_, Error>(Some((record, ca.id)))
        })?;
        if let Some((record, ca)) = &registered {
            tracing::info!(%account, cert = %record.id, %ca, status = record.status.as_str(), "certificate registered just in time");
        }
        Ok(registered)
    }
}

impl Services {
    /// Charges one just-in-time registration to `account`'s bound on this node; past it the
    /// registration is refused with `LimitExceeded` (logged once per account and second) and
    /// counted in [`Services::registrations_throttled`].
    fn admit_registration(&self, account: &AccountId, certificate: &CertificateId) -> Result<(), Error> {
        let now = self.now();
        let admission =
            self.registrations.lock().unwrap_or_else(std::sync::PoisonError::into_inner).admit(account, now);
        match admission {
            Admission::Admitted => Ok(()),
            Admission::Refused { first_in_window } => {
                let throttled = self.registrations_throttled.fetch_add(1, Ordering::Relaxed) + 1;
                if first_in_window {
                    tracing::warn!(%account, cert = %certificate, throttled,
                        per_second = self.config().max_registrations_per_second,
                        "just-in-time registrations over the account's rate: refused");
                }
                Err(Error::LimitExceeded(format!(
                    "account {account} registers more than {} certificates per second just in time",
                    self.config().max_registrations_per_second
                )))
            }
        }
    }

    /// Just-in-time registrations refused by the per-account rate on this node, so far.
    pub fn registrations_throttled(&self) -> u64 {
        self.registrations_throttled.load(Ordering::Relaxed)
    }
}

/// The template a CA's registration config applies: its inline body, else the body of the
/// provisioning template it names (when that still exists and is enabled).
fn template_body(tx: &mut Tx<'_>, account: &AccountId, config: &RegistrationConfig) -> Result<Option<String>, Error> {
    if let Some(body) = &config.template_body {
        return Ok(Some(body.clone()));
    }
    let Some(name) = &config.template_name else { return Ok(None) };
    match tx.get_provisioning_template(account, name)? {
        Some(template) if template.enabled => Ok(Some(template.body)),
        Some(_) => {
            tracing::warn!(%account, template = %name, "the CA's provisioning template is disabled: registered pending activation");
            Ok(None)
        }
        None => {
            tracing::warn!(%account, template = %name, "the CA's provisioning template does not exist: registered pending activation");
            Ok(None)
        }
    }
}

/// What a template provisions for `device`; `None` (JITR only, the certificate
/// PENDING_ACTIVATION) when it does not resolve for this certificate.
fn provisioning_for(body: &str, device: &Certificate) -> Option<Provisioning> {
    match Template::parse(body).and_then(|template| template.resolve(device, device.id())) {
        Ok(provisioning) => Some(provisioning),
        Err(error) => {
            tracing::warn!(cert = %device.id(), %error, "the CA's template does not apply to this certificate: registered pending activation");
            None
        }
    }
}

/// `provisioning` if the account's state allows it (see [`not_applicable`]). Looks only, so a
/// refusal changes nothing.
fn applicable(tx: &mut Tx<'_>, account: &AccountId, provisioning: Provisioning) -> Result<Option<Provisioning>, Error> {
    if let Some(why) = not_applicable(tx, account, &provisioning)? {
        tracing::warn!(%account, reason = %why, "the CA's template does not apply: registered pending activation");
        return Ok(None);
    }
    Ok(Some(provisioning))
}

/// Why a resolved template cannot be applied in the account's current state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NotApplicable {
    /// The template attaches a policy by name that does not exist.
    MissingPolicy(PolicyName),
    /// The template creates a policy whose name an existing policy with another document has.
    PolicyDocumentDiffers(PolicyName),
    /// The thing exists, its `field` differs from the template's, and OverrideSettings say FAIL.
    OverrideFails { thing: ThingName, field: &'static str },
    /// The thing type the template gives the thing does not exist or is deprecated.
    ThingType { type_name: ThingName, reason: String },
    /// A thing group the template puts the thing in does not exist.
    MissingGroup(String),
}

impl std::fmt::Display for NotApplicable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotApplicable::MissingPolicy(name) => write!(f, "the template's policy {name} does not exist"),
            NotApplicable::PolicyDocumentDiffers(name) => {
                write!(f, "a policy named {name} exists with another document than the template's")
            }
            NotApplicable::OverrideFails { thing, field } => {
                write!(f, "the thing {thing} exists with another {field} and the template's OverrideSettings say FAIL")
            }
            NotApplicable::ThingType { type_name, reason } => {
                write!(f, "the template's thing type {type_name} cannot be used: {reason}")
            }
            NotApplicable::MissingGroup(name) => write!(f, "the template's thing group {name} does not exist"),
        }
    }
}

impl NotApplicable {
    /// The refusal of a fleet provisioning (or RegisterThing) that meets it.
    pub(crate) fn into_error(self) -> Error {
        match self {
            NotApplicable::OverrideFails { .. } => Error::ConflictingResourceUpdate(self.to_string()),
            NotApplicable::MissingPolicy(_)
            | NotApplicable::PolicyDocumentDiffers(_)
            | NotApplicable::ThingType { .. }
            | NotApplicable::MissingGroup(_) => Error::ResourceRegistrationFailure(self.to_string()),
        }
    }
}

/// Why `provisioning` cannot be applied now, if it cannot: a named policy is missing, a policy
/// to create exists with another document, or an existing thing conflicts with the template
/// where its OverrideSettings say FAIL. Reads only.
pub(crate) fn not_applicable(
    tx: &mut Tx<'_>,
    account: &AccountId,
    provisioning: &Provisioning,
) -> Result<Option<NotApplicable>, Error> {
    for policy in &provisioning.policies {
        let existing = match tx.get_policy(account, &policy.name)? {
            None => None,
            Some(found) => {
                tx.get_policy_version(account, &policy.name, found.default_version)?.map(|version| version.document)
            }
        };
        match (&policy.document, existing) {
            (None, None) => return Ok(Some(NotApplicable::MissingPolicy(policy.name.clone()))),
            (Some(document), Some(existing)) if *document != existing => {
                return Ok(Some(NotApplicable::PolicyDocumentDiffers(policy.name.clone())));
            }
            _ => {}
        }
    }
    let Some(thing) = &provisioning.thing else { return Ok(None) };
    let existing = tx.get_thing(account, &thing.name)?;
    // The type is given to a new thing, or to an existing one when OverrideSettings say REPLACE.
    if let Some(type_name) = &thing.type_name
        && (existing.is_none() || thing.overrides.type_name == Override::Replace)
    {
        match check_thing_type_usable(tx, account, type_name) {
            Ok(()) => {}
            Err(Error::NotFound(reason) | Error::InvalidRequest(reason)) => {
                return Ok(Some(NotApplicable::ThingType { type_name: type_name.clone(), reason }));
            }
            Err(other) => return Err(other),
        }
    }
    for group in &thing.groups {
        let exists = match certfleet_registry::ThingGroupName::parse(group) {
            Ok(name) => tx.get_thing_group(account, &name)?.is_some(),
            Err(_) => false,
        };
        if !exists {
            return Ok(Some(NotApplicable::MissingGroup(group.clone())));
        }
    }
    if let Some(existing) = existing {
        let fails = |setting: Override, differs: bool| setting == Override::Fail && differs;
        let mut groups_differ = || -> Result<bool, Error> {
            let mut current: Vec<String> =
                tx.groups_of_thing(account, &thing.name)?.iter().map(|name| name.as_str().to_owned()).collect();
            let mut wanted = thing.groups.clone();
            current.sort();
            wanted.sort();
            wanted.dedup();
            Ok(current != wanted)
        };
        let field = if fails(thing.overrides.attributes, existing.attributes != thing.attributes) {
            Some("AttributePayload")
        } else if fails(thing.overrides.type_name, thing.type_name.is_some() && existing.type_name != thing.type_name) {
            Some("ThingTypeName")
        } else if thing.overrides.groups == Override::Fail && !thing.groups.is_empty() && groups_differ()? {
            Some("ThingGroups")
        } else {
            None
        };
        if let Some(field) = field {
            return Ok(Some(NotApplicable::OverrideFails { thing: thing.name.clone(), field }));
        }
    }
    Ok(None)
}

/// Creates what `provisioning` needs that does not exist yet, updates an existing thing as its
/// OverrideSettings say, and attaches the thing and policies to `certificate` (already
/// inserted). The caller checked [`not_applicable`] in the same transaction.
pub(crate) fn apply(
    tx: &mut Tx<'_>,
    account: &AccountId,
    certificate: &CertificateId,
    provisioning: &Provisioning,
    now: time::OffsetDateTime,
) -> Result<(), Error> {
    for policy in &provisioning.policies {
        if let (Some(document), None) = (&policy.document, tx.get_policy(account, &policy.name)?) {
            tx.insert_policy(&Policy {
                account: account.clone(),
                name: policy.name.clone(),
                default_version: 1,
                next_version: 2,
                generation_id: uuid_v4()?,
                created_at: now,
                last_modified: now,
            })?;
            tx.insert_policy_version(&PolicyVersion {
                account: account.clone(),
                policy_name: policy.name.clone(),
                version: 1,
                document: document.clone(),
                created_at: now,
            })?;
            tx.record_change(account, ChangeKind::Policy, policy.name.as_str(), now)?;
            tracing::info!(%account, policy = %policy.name, "policy created by a provisioning template");
        }
        tx.attach_policy(account, &policy.name, certificate, now)?;
    }
    if let Some(thing) = &provisioning.thing {
        let created = match tx.get_thing(account, &thing.name)? {
            None => {
                tx.insert_thing(&Thing {
                    account: account.clone(),
                    name: thing.name.clone(),
                    id: uuid_v4()?,
                    type_name: thing.type_name.clone(),
                    attributes: thing.attributes.clone(),
                    version: 1,
                    created_at: now,
                })?;
                tx.record_change(account, ChangeKind::Thing, thing.name.as_str(), now)?;
                tracing::info!(%account, thing = %thing.name, "thing created by a provisioning template");
                true
            }
            Some(existing) => {
                let mut updated = existing.clone();
                match thing.overrides.attributes {
                    Override::Merge => updated.attributes.extend(thing.attributes.clone()),
                    Override::Replace => updated.attributes.clone_from(&thing.attributes),
                    Override::DoNothing | Override::Fail => {}
                }
                match thing.overrides.type_name {
                    Override::Replace if thing.type_name.is_some() => updated.type_name.clone_from(&thing.type_name),
                    Override::Replace | Override::Merge | Override::DoNothing | Override::Fail => {}
                }
                if updated != existing {
                    crate::things::check_attribute_count(&updated.attributes, updated.type_name.as_ref())?;
                    updated.version += 1;
                    tx.update_thing(&updated)?;
                    tx.record_change(account, ChangeKind::Thing, thing.name.as_str(), now)?;
                    tracing::info!(%account, thing = %thing.name, "thing updated by a provisioning template");
                }
                false
            }
        };
        apply_thing_groups(tx, account, thing, created, now)?;
        tx.put_thing_principal(&ThingPrincipal {
            account: account.clone(),
            thing_name: thing.name.clone(),
            certificate_id: certificate.clone(),
            principal_type: ThingPrincipalType::NonExclusive,
            attached_at: now,
        })?;
    }
    Ok(())
}

/// Puts the provisioned thing in its template's `ThingGroups`: a new thing in all of them; an
/// existing one as its `OverrideSettings` say (MERGE adds them, REPLACE makes them its only
/// groups, DO_NOTHING and FAIL, checked by [`not_applicable`], leave it as it is). A missing
/// group or an eleventh one fails the whole transaction.
fn apply_thing_groups(
    tx: &mut Tx<'_>,
    account: &AccountId,
    thing: &ProvisionedThing,
    created: bool,
    now: time::OffsetDateTime,
) -> Result<(), Error> {
    if thing.groups.is_empty() {
        return Ok(());
    }
    let mode = match (created, thing.overrides.groups) {
        (true, _) | (false, Override::Merge) => GroupMembership::Merge,
        (false, Override::Replace) => GroupMembership::Replace,
        (false, Override::DoNothing | Override::Fail) => return Ok(()),
    };
    let groups = thing
        .groups
        .iter()
        .map(|name| certfleet_registry::ThingGroupName::parse(name))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| Error::ResourceRegistrationFailure(error.to_string()))?;
    put_thing_in_groups(tx, account, &thing.name, &groups, mode, now)
}

/// Whether a CA may register the certificates it signed on their first connection.
fn allows_auto_registration(ca: &CaCertificate) -> bool {
    ca.status == CaStatus::Active && ca.auto_registration
}

/// Whether `ca` signed `device`, both valid at `now`.
fn signed(device: &Certificate, ca: &CaCertificate, now: time::OffsetDateTime) -> bool {
    let Ok(ca_certificate) = Certificate::from_pem(&ca.pem) else {
        tracing::warn!(ca = %ca.id, "a stored CA certificate does not parse");
        return false;
    };
    pki::check_issued_by(device, &ca_certificate, now).is_ok()
}
