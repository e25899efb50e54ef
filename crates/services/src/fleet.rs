//! Fleet provisioning: what the gateway's MQTT fleet provisioning (written by the lead) and the
//! control plane's RegisterThing and CreateProvisioningClaim call.
//!
//! - Issuing ([`Services::issue_certificate_from_csr`], [`Services::issue_keys_and_certificate`])
//!   signs a device certificate with the server's device issuer and writes nothing: the
//!   registry row is written by [`Services::apply_fleet_provisioning`], so an abandoned request
//!   leaves no rows.
//! - [`Services::fleet_template_for_provisioning`]: the ENABLED FLEET_PROVISIONING template's
//!   default version, parsed, with its hook; the refusals typed ([`TemplateRefusal`]).
//! - [`Services::apply_fleet_provisioning`]: one write transaction inserting the certificate,
//!   creating or updating the thing (its OverrideSettings), creating and attaching the policies,
//!   all or nothing; the same code JITP applies (`jitr::apply`).
//! - [`Services::register_thing`] (RegisterThing): a template body with a CSR or certificate
//!   parameter, resolved and applied in one call.
//! - [`Services::create_provisioning_claim`] (CreateProvisioningClaim): a claim certificate valid
//!   5 minutes, ACTIVE, bound in the registry to its template.

use std::collections::BTreeMap;

use certfleet_pki::{self as pki, Certificate, CertificateId, Csr, GeneratedKeyPair, KeyAlgorithm};
use certfleet_registry::{
    self as registry, AccountId, CaStatus, CertificateMode, CertificateStatus, ChangeKind, DeviceCertificate,
    ProvisioningClaim, ProvisioningHook, ThingName, Tx,
};
use time::Duration;

use crate::ids::uuid_v4;
use crate::jitr::{apply, not_applicable};
use crate::provisioning::{CertificateSource, Provisioning, Template, TemplateKind};
use crate::templates::{FLEET_PROVISIONING, check_template_name, find_template};
use crate::{Caller, Error, Services};

/// How long a provisioning claim certificate is valid (AWS: 5 minutes).
pub const CLAIM_VALIDITY: Duration = Duration::minutes(5);

/// The common name of the certificates certfleet issues with a key it made (AWS's).
const ISSUED_COMMON_NAME: &str = "AWS IoT Certificate";

/// A device certificate the server's device issuer signed, not yet in the registry.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    pub der: Vec<u8>,
    pub pem: String,
    pub id: CertificateId,
}

impl IssuedCertificate {
    fn of(certificate: &Certificate) -> Self {
        IssuedCertificate { der: certificate.der().to_vec(), pem: certificate.to_pem(), id: certificate.id().clone() }
    }
}

/// A certificate issued for a key pair the server made (its private key never stored).
pub struct IssuedKeys {
    pub certificate: IssuedCertificate,
    pub key_pair: GeneratedKeyPair,
}

/// A FLEET_PROVISIONING template ready to provision with: its default version parsed.
#[derive(Clone, Debug)]
pub struct FleetTemplate {
    pub name: String,
    pub arn: String,
    pub version_id: i64,
    pub template: Template,
    pub hook: Option<ProvisioningHook>,
}

/// Why a template cannot be provisioned with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateRefusal {
    /// The account has no template of that name.
    NotFound,
    /// The template exists and is disabled.
    Disabled,
    /// The template is a JITP template.
    NotFleetProvisioning,
}

impl TemplateRefusal {
    pub fn as_str(&self) -> &'static str {
        match self {
            TemplateRefusal::NotFound => "the provisioning template does not exist",
            TemplateRefusal::Disabled => "the provisioning template is disabled",
            TemplateRefusal::NotFleetProvisioning => "the provisioning template is not a FLEET_PROVISIONING template",
        }
    }
}

/// What a fleet provisioning registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisioningOutcome {
    pub thing_name: Option<ThingName>,
    pub certificate_id: CertificateId,
    pub certificate_pem: String,
    pub device_configuration: BTreeMap<String, String>,
    /// Each provisioned resource's ARN by its logical name in the template.
    pub resource_arns: BTreeMap<String, String>,
}

/// A claim certificate (CreateProvisioningClaim).
pub struct ProvisioningClaimCertificate {
    pub certificate: IssuedCertificate,
    pub key_pair: GeneratedKeyPair,
    pub expiration: time::OffsetDateTime,
}

impl Services {
    /// A certificate for the CSR's key (the pki key rules and the CSR's signature checked),
    /// with the CSR's subject, signed by the device issuer. Writes nothing.
    pub fn issue_certificate_from_csr(&self, account: &AccountId, csr_pem: &str) -> Result<IssuedCertificate, Error> {
        let csr = Csr::from_pem(csr_pem)
            .map_err(|error| Error::InvalidRequest(format!("the certificate signing request is not valid: {error}")))?;
        let certificate = self
            .device_issuer()?
            .issue_from_csr(&csr, self.config().device_certificate_validity, self.now())
            .map_err(|error| Error::InvalidRequest(format!("cannot issue a certificate for this request: {error}")))?;
        tracing::debug!(%account, cert = %certificate.id(), "certificate issued for fleet provisioning");
        Ok(IssuedCertificate::of(&certificate))
    }

    /// A new key pair and a certificate for it signed by the device issuer. The key is RSA 2048,
    /// as AWS's CreateKeysAndCertificate gives (and certfleet's). Writes nothing.
    pub fn issue_keys_and_certificate(&self, account: &AccountId) -> Result<IssuedKeys, Error> {
        let (certificate, key_pair) = self.issue_with_new_key(self.config().device_certificate_validity)?;
        tracing::debug!(%account, cert = %certificate.id, "keys and certificate issued for fleet provisioning");
        Ok(IssuedKeys { certificate, key_pair })
    }

    fn issue_with_new_key(&self, validity: Duration) -> Result<(IssuedCertificate, GeneratedKeyPair), Error> {
        let key_pair = GeneratedKeyPair::generate(KeyAlgorithm::Rsa2048)
            .map_err(|error| Error::Internal(format!("key generation: {error}")))?;
        let certificate = self
            .device_issuer()?
            .issue_for_key(key_pair.public_key(), ISSUED_COMMON_NAME, validity, self.now())
            .map_err(|error| Error::Internal(format!("issuing: {error}")))?;
        Ok((IssuedCertificate::of(&certificate), key_pair))
    }

    /// The ENABLED FLEET_PROVISIONING template `name` of `account`: its default version parsed,
    /// its hook and ARN. A missing, disabled or JITP template is [`Error::TemplateNotUsable`].
    pub fn fleet_template_for_provisioning(&self, account: &AccountId, name: &str) -> Result<FleetTemplate, Error> {
        let refused = |why: TemplateRefusal| Error::TemplateNotUsable { template: name.to_owned(), why };
        if check_template_name(name).is_err() {
            return Err(refused(TemplateRefusal::NotFound));
        }
        let record =
            registry::read(self.store(), |tx| tx.get_provisioning_template(account, name).map_err(Error::from))?
                .ok_or_else(|| refused(TemplateRefusal::NotFound))?;
        if record.template_type != FLEET_PROVISIONING {
            return Err(refused(TemplateRefusal::NotFleetProvisioning));
        }
        if !record.enabled {
            return Err(refused(TemplateRefusal::Disabled));
        }
        // Checked when it was stored; a body that no longer parses is certfleet's fault.
        let template = Template::parse_as(TemplateKind::FleetProvisioning, &record.body)
            .map_err(|error| Error::Internal(format!("the stored template {name} does not parse: {error}")))?;
        Ok(FleetTemplate {
            arn: self.provisioning_template_arn(account, name),
            name: record.name,
            version_id: record.default_version,
            template,
            hook: record.pre_provisioning_hook,
        })
    }

    /// Applies a resolved fleet provisioning for `certificate_der` (a certificate the device
    /// issuer signed, from [`Services::issue_certificate_from_csr`] or
    /// [`Services::issue_keys_and_certificate`]) in ONE registry write transaction: the
    /// certificate inserted with the template's status, the thing created or updated as its
    /// OverrideSettings say, the policies created (or found) and attached, the thing attached;
    /// everything or nothing. `claim` is the claim certificate the device provisioned with
    /// (logged). Refusals: a certificate already registered or a template policy that does not
    /// apply ([`Error::ResourceRegistrationFailure`]), an OverrideSettings FAIL
    /// ([`Error::ConflictingResourceUpdate`]), thing groups (not yet, [`Error::InvalidRequest`]).
    pub fn apply_fleet_provisioning(
        &self,
        account: &AccountId,
        provisioning: &Provisioning,
        certificate_der: &[u8],
        claim: Option<&CertificateId>,
    ) -> Result<ProvisioningOutcome, Error> {
        if provisioning.certificate != CertificateSource::Provisioned {
            return Err(Error::InvalidRequest(
                "this provisioning's certificate comes from a RegisterThing parameter".into(),
            ));
        }
        let certificate = Certificate::from_der(certificate_der.to_vec())
            .map_err(|error| Error::Internal(format!("an issued certificate does not parse: {error}")))?;
        let outcome = self.provision(account, provisioning, &certificate, None, CertificateMode::Default)?;
        tracing::info!(%account, cert = %outcome.certificate_id, thing = ?outcome.thing_name.as_ref().map(ThingName::as_str),
            claim = ?claim.map(CertificateId::as_str), "device provisioned by a fleet provisioning template");
        Ok(outcome)
    }

    /// RegisterThing: `body` is a FLEET_PROVISIONING template whose certificate resource names a
    /// `CertificateSigningRequest` parameter (a certificate is issued for it by the device
    /// issuer) or a `CertificatePem` parameter (a certificate signed by one of the account's
    /// ACTIVE CAs); resolved with `parameters` and applied in one transaction.
    pub fn register_thing(
        &self,
        caller: &Caller,
        body: &str,
        parameters: &BTreeMap<String, String>,
    ) -> Result<ProvisioningOutcome, Error> {
        let template = Template::parse_as(TemplateKind::FleetProvisioning, body)?;
        if !template.certificate_is_supplied() {
            return Err(Error::InvalidRequest(
                "RegisterThing needs a certificate resource with a CertificateSigningRequest or CertificatePem parameter"
                    .into(),
            ));
        }
        let provisioning = template.resolve_fleet(parameters, None)?;
        let outcome = match &provisioning.certificate {
            CertificateSource::SigningRequest(csr) => {
                let issued = self.issue_certificate_from_csr(&caller.account, csr)?;
                let certificate = Certificate::from_der(issued.der)
                    .map_err(|error| Error::Internal(format!("an issued certificate does not parse: {error}")))?;
                self.provision(&caller.account, &provisioning, &certificate, None, CertificateMode::Default)?
            }
            CertificateSource::Pem(pem) => {
                let certificate = Certificate::from_pem(pem).map_err(|error| {
                    Error::CertificateValidation(format!("the CertificatePem parameter is not a certificate: {error}"))
                })?;
                pki::check_key_rules(certificate.public_key())
                    .map_err(|error| Error::CertificateValidation(error.to_string()))?;
                let now = self.now();
                let issuer_key = certificate.issuer_fingerprint();
                let ca = registry::read(self.store(), |tx| {
                    tx.cas_with_subject(&caller.account, &issuer_key).map_err(Error::from)
                })?
                .into_iter()
                .filter(|ca| ca.status == CaStatus::Active)
                .find(|ca| {
                    Certificate::from_pem(&ca.pem)
                        .is_ok_and(|ca_certificate| pki::check_issued_by(&certificate, &ca_certificate, now).is_ok())
                })
                .ok_or_else(|| {
                    Error::ResourceRegistrationFailure(
                        "no ACTIVE CA of this account signed the CertificatePem parameter".into(),
                    )
                })?;
                let mut provisioning = provisioning.clone();
                provisioning.certificate = CertificateSource::Provisioned;
                self.provision(&caller.account, &provisioning, &certificate, Some(ca.id), ca.mode)?
            }
            CertificateSource::Provisioned => {
                return Err(Error::Internal("a supplied certificate resolved to the provisioned one".into()));
            }
        };
        tracing::info!(account = %caller.account, cert = %outcome.certificate_id, "thing registered (RegisterThing)");
        Ok(outcome)
    }

    /// The one transaction of a provisioning: the certificate inserted, then the template
    /// applied (`jitr::apply`, shared with JITP).
    fn provision(
        &self,
        account: &AccountId,
        provisioning: &Provisioning,
        certificate: &Certificate,
        ca: Option<CertificateId>,
        mode: CertificateMode,
    ) -> Result<ProvisioningOutcome, Error> {
        let now = self.now();
        let record =
            DeviceCertificate::registered(account.clone(), certificate, ca, provisioning.status, mode, uuid_v4()?, now);
        registry::write(self.store(), |tx| {
            tx.lock_account(account)?;
            provision_in(tx, account, &record, provisioning, now)
        })?;
        let mut resource_arns = BTreeMap::new();
        if let Some(name) = &provisioning.certificate_logical_name {
            resource_arns.insert(name.clone(), self.certificate_arn(account, &record.id));
        }
        if let Some(thing) = &provisioning.thing {
            resource_arns.insert(thing.logical_name.clone(), self.thing_arn(account, &thing.name));
        }
        for policy in &provisioning.policies {
            resource_arns.insert(policy.logical_name.clone(), self.policy_arn(account, &policy.name));
        }
        Ok(ProvisioningOutcome {
            thing_name: provisioning.thing.as_ref().map(|thing| thing.name.clone()),
            certificate_id: record.id.clone(),
            certificate_pem: record.pem.clone(),
            device_configuration: provisioning.device_configuration.clone(),
            resource_arns,
        })
    }

    /// CreateProvisioningClaim: a claim certificate for the FLEET_PROVISIONING template `name`,
    /// valid [`CLAIM_VALIDITY`], with a new RSA 2048 key pair, registered ACTIVE and bound to
    /// the template (the gateway refuses it for any other).
    pub fn create_provisioning_claim(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<ProvisioningClaimCertificate, Error> {
        check_template_name(name)?;
        let template = registry::read(self.store(), |tx| find_template(tx, &caller.account, name))?;
        if template.template_type != FLEET_PROVISIONING {
            return Err(Error::InvalidRequest(format!(
                "the provisioning template {name} is not a FLEET_PROVISIONING template"
            )));
        }
        let (certificate, key_pair) = self.issue_with_new_key(CLAIM_VALIDITY)?;
        let parsed = Certificate::from_der(certificate.der.clone())
            .map_err(|error| Error::Internal(format!("an issued certificate does not parse: {error}")))?;
        let now = self.now();
        let record = DeviceCertificate::registered(
            caller.account.clone(),
            &parsed,
            None,
            CertificateStatus::Active,
            CertificateMode::Default,
            uuid_v4()?,
            now,
        );
        let claim = ProvisioningClaim {
            account: caller.account.clone(),
            certificate_id: record.id.clone(),
            template_name: name.to_owned(),
            expires_at: parsed.not_after(),
            created_at: now,
        };
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            // The template may have gone since it was read.
            find_template(tx, &caller.account, name)?;
            tx.insert_certificate(&record)?;
            tx.insert_provisioning_claim(&claim)?;
            tx.record_change(&caller.account, ChangeKind::Certificate, record.id.as_str(), now).map_err(Error::from)
        })?;
        tracing::info!(account = %caller.account, template = %name, cert = %record.id, "provisioning claim created");
        Ok(ProvisioningClaimCertificate { certificate, key_pair, expiration: claim.expires_at })
    }

    /// The template a claim certificate is bound to, if `certificate` is a claim (for the
    /// gateway: a claim provisions with its own template only, until `expires_at`).
    pub fn provisioning_claim(
        &self,
        account: &AccountId,
        certificate: &CertificateId,
    ) -> Result<Option<ProvisioningClaim>, Error> {
        registry::read(self.store(), |tx| tx.get_provisioning_claim(account, certificate).map_err(Error::from))
    }
}

/// Inserts `record` and applies `provisioning` to it, in the caller's transaction.
fn provision_in(
    tx: &mut Tx<'_>,
    account: &AccountId,
    record: &DeviceCertificate,
    provisioning: &Provisioning,
    now: time::OffsetDateTime,
) -> Result<(), Error> {
    if tx.get_certificate(account, &record.id)?.is_some() {
        return Err(Error::ResourceRegistrationFailure(format!(
            "the certificate {} is already registered in this account",
            record.id
        )));
    }
    if let Some(why) = not_applicable(tx, account, provisioning)? {
        return Err(why.into_error());
    }
    tx.insert_certificate(record)?;
    apply(tx, account, &record.id, provisioning, now)?;
    tx.record_change(account, ChangeKind::Certificate, record.id.as_str(), now)?;
    Ok(())
}
