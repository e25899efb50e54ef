//! CA and device certificates: registration, issuing, status, listing, transfer and endpoints.
//!
//! The seed's rules live here: a CA is held in DEFAULT mode by one account per region and in
//! SNI_ONLY mode by any number; inside an account a CA exists in one mode only; at most
//! `max_cas_per_subject` CAs share a subject; RegisterCertificate needs `caCertificatePem` when
//! several registered CAs share the issuer's subject; and status transitions follow AWS.

use certfleet_pki::{self as pki, Certificate, CertificateId, Csr, GeneratedKeyPair, KeyAlgorithm};
use certfleet_registry::{
    self as registry, AccountId, CaCertificate, CaStatus, CertificateMode, CertificateStatus, ChangeKind,
    DeviceCertificate, Page, PageRequest, RegistrationConfig, Tag, TransferData, Tx,
};
use time::OffsetDateTime;

use crate::ids::uuid_v4;
use crate::{Caller, Error, Services};

/// RegisterCACertificate's request.
#[derive(Clone, Debug, Default)]
pub struct CaRegistration {
    pub ca_certificate_pem: String,
    pub verification_certificate_pem: Option<String>,
    pub mode: Option<CertificateMode>,
    pub set_as_active: bool,
    pub allow_auto_registration: bool,
    pub registration_config: Option<RegistrationConfig>,
    pub tags: Vec<Tag>,
}

/// UpdateCACertificate's request.
#[derive(Clone, Debug, Default)]
pub struct CaUpdate {
    pub new_status: Option<CaStatus>,
    pub new_auto_registration: Option<bool>,
    pub registration_config: Option<RegistrationConfig>,
    pub remove_auto_registration: bool,
}

/// RegisterCertificate's and RegisterCertificateWithoutCA's request.
#[derive(Clone, Debug, Default)]
pub struct CertificateRegistration {
    pub certificate_pem: String,
    /// The signing CA, required when several registered CAs share the issuer's subject.
    pub ca_certificate_pem: Option<String>,
    pub status: Option<CertificateStatus>,
    /// The deprecated query flag; `status` wins when both are given.
    pub set_as_active: bool,
}

/// CreateKeysAndCertificate's result: the private key is handed out this once only.
pub struct CreatedKeysAndCertificate {
    pub certificate: DeviceCertificate,
    pub key_pair: GeneratedKeyPair,
}

impl Services {
    // ---- CA certificates ------------------------------------------------------------------

    /// RegisterCACertificate.
    pub fn register_ca_certificate(
        &self,
        caller: &Caller,
        request: &CaRegistration,
    ) -> Result<(String, CertificateId), Error> {
        self.check_registration_config(&caller.account, request.registration_config.as_ref())?;
        let now = self.now();
        let ca = parse_certificate(&request.ca_certificate_pem, "caCertificate")?;
        pki::check_ca_certificate(&ca, now).map_err(validation)?;
        let mode = request.mode.unwrap_or(CertificateMode::Default);
        let verification = match (mode, &request.verification_certificate_pem) {
            (CertificateMode::Default, Some(pem)) => Some(parse_certificate(pem, "verificationCertificate")?),
            (CertificateMode::Default, None) => {
                return Err(Error::InvalidRequest(
                    "a verification certificate is required to register a CA in DEFAULT mode".into(),
                ));
            }
            (CertificateMode::SniOnly, Some(_)) => {
                return Err(Error::InvalidRequest(
                    "a CA registered in SNI_ONLY mode takes no verification certificate".into(),
                ));
            }
            (CertificateMode::SniOnly, None) => None,
        };
        let id = ca.id().clone();
        let arn = self.ca_certificate_arn(&caller.account, &id);
        let record = CaCertificate {
            account: caller.account.clone(),
            id: id.clone(),
            pem: ca.to_pem(),
            subject_key: ca.subject_fingerprint(),
            status: if request.set_as_active { CaStatus::Active } else { CaStatus::Inactive },
            mode,
            auto_registration: request.allow_auto_registration,
            registration_config: request.registration_config.clone(),
            generation_id: uuid_v4()?,
            customer_version: 1,
            not_before: ca.not_before(),
            not_after: ca.not_after(),
            created_at: now,
            last_modified: now,
        };

        registry::write(self.store(), |tx| {
            let account = tx.lock_account(&caller.account)?;
            if let Some(verification) = &verification {
                let code = account.registration_code.as_deref().ok_or_else(|| {
                    Error::RegistrationCodeValidation(
                        "the account has no registration code: call GetRegistrationCode first".into(),
                    )
                })?;
                pki::check_verification_certificate(&ca, verification, code, now).map_err(|error| match error {
                    pki::Error::RegistrationCodeMismatch { .. } => Error::RegistrationCodeValidation(error.to_string()),
                    other => validation(other),
                })?;
            }
            if tx.get_ca(&caller.account, &id)?.is_some() {
                return Err(already_exists(
                    "the CA certificate is already registered in this account",
                    &id,
                    Some(&arn),
                ));
            }
            if mode == CertificateMode::Default && tx.default_mode_holder(&id)?.is_some() {
                return Err(already_exists(
                    "the CA certificate is already registered in DEFAULT mode by another account in this region; \
                     register it in SNI_ONLY mode",
                    &id,
                    None,
                ));
            }
            if tx.cas_with_subject(&caller.account, &record.subject_key)?.len() >= self.config().max_cas_per_subject {
                return Err(Error::LimitExceeded(format!(
                    "at most {} CA certificates with the same subject may be registered in an account",
                    self.config().max_cas_per_subject
                )));
            }
            tx.insert_ca(&record)?;
            tx.put_tags(&arn, &request.tags)?;
            tx.record_change(&caller.account, ChangeKind::CaCertificate, id.as_str(), now)?;
            Ok(())
        })?;
        tracing::info!(account = %caller.account, ca = %id, mode = mode.as_str(), "CA certificate registered");
        Ok((arn, id))
    }

    /// DescribeCACertificate.
    pub fn describe_ca_certificate(&self, caller: &Caller, id: &CertificateId) -> Result<CaCertificate, Error> {
        registry::read(self.store(), |tx| tx.get_ca(&caller.account, id)?.ok_or_else(|| ca_not_found(id)))
    }

    /// UpdateCACertificate.
    pub fn update_ca_certificate(&self, caller: &Caller, id: &CertificateId, update: &CaUpdate) -> Result<(), Error> {
        if update.remove_auto_registration && update.new_auto_registration == Some(true) {
            return Err(Error::InvalidRequest(
                "removeAutoRegistration contradicts newAutoRegistrationStatus ENABLE".into(),
            ));
        }
        self.check_registration_config(&caller.account, update.registration_config.as_ref())?;
        let now = self.now();
        let generation_id = uuid_v4()?;
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let mut ca = tx.get_ca(&caller.account, id)?.ok_or_else(|| ca_not_found(id))?;
            let before = ca.clone();
            if let Some(status) = update.new_status {
                ca.status = status;
            }
            if let Some(enabled) = update.new_auto_registration {
                ca.auto_registration = enabled;
            }
            if update.remove_auto_registration {
                ca.auto_registration = false;
            }
            if let Some(config) = &update.registration_config {
                ca.registration_config = Some(config.clone());
            }
            if ca != before {
                ca.customer_version += 1;
                ca.generation_id = generation_id.clone();
                ca.last_modified = now;
                tx.update_ca(&ca)?;
                tx.record_change(&caller.account, ChangeKind::CaCertificate, id.as_str(), now)?;
            }
            Ok::<(), Error>(())
        })?;
        tracing::info!(account = %caller.account, ca = %id, ?update.new_status, "CA certificate updated");
        Ok(())
    }

    /// DeleteCACertificate: only an INACTIVE CA can be deleted.
    pub fn delete_ca_certificate(&self, caller: &Caller, id: &CertificateId) -> Result<(), Error> {
        let arn = self.ca_certificate_arn(&caller.account, id);
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let ca = tx.get_ca(&caller.account, id)?.ok_or_else(|| ca_not_found(id))?;
            if ca.status == CaStatus::Active {
                return Err(Error::CertificateState(
                    "an ACTIVE CA certificate cannot be deleted: set it INACTIVE first".into(),
                ));
            }
            tx.delete_ca(&caller.account, id)?;
            tx.delete_tags(&arn)?;
            tx.record_change(&caller.account, ChangeKind::CaCertificate, id.as_str(), self.now())?;
            Ok(())
        })?;
        tracing::info!(account = %caller.account, ca = %id, "CA certificate deleted");
        Ok(())
    }

    /// ListCACertificates.
    pub fn list_ca_certificates(&self, caller: &Caller, page: &PageRequest) -> Result<Page<CaCertificate>, Error> {
        registry::read(self.store(), |tx| tx.list_cas(&caller.account, page).map_err(Error::from))
    }

    /// ListCertificatesByCA.
    pub fn list_certificates_by_ca(
        &self,
        caller: &Caller,
        ca: &CertificateId,
        page: &PageRequest,
    ) -> Result<Page<DeviceCertificate>, Error> {
        registry::read(self.store(), |tx| tx.list_certificates_by_ca(&caller.account, ca, page).map_err(Error::from))
    }

    // ---- device certificates --------------------------------------------------------------

    /// CreateKeysAndCertificate: a new RSA-2048 key pair and a certificate for it.
    pub fn create_keys_and_certificate(
        &self,
        caller: &Caller,
        set_as_active: bool,
    ) -> Result<CreatedKeysAndCertificate, Error> {
        let now = self.now();
        let key_pair = GeneratedKeyPair::generate(KeyAlgorithm::Rsa2048)
            .map_err(|error| Error::Internal(format!("key generation: {error}")))?;
        let certificate = self
            .device_issuer()?
            .issue_for_key(key_pair.public_key(), "AWS IoT Certificate", self.config().device_certificate_validity, now)
            .map_err(|error| Error::Internal(format!("issuing: {error}")))?;
        let certificate = self.store_issued(caller, &certificate, set_as_active, now)?;
        Ok(CreatedKeysAndCertificate { certificate, key_pair })
    }

    /// CreateCertificateFromCsr: a certificate for the CSR's key, signed by the device CA.
    pub fn create_certificate_from_csr(
        &self,
        caller: &Caller,
        csr_pem: &str,
        set_as_active: bool,
    ) -> Result<DeviceCertificate, Error> {
        let now = self.now();
        let csr = Csr::from_pem(csr_pem)
            .map_err(|error| Error::InvalidRequest(format!("the certificate signing request is not valid: {error}")))?;
        let certificate = self
            .device_issuer()?
            .issue_from_csr(&csr, self.config().device_certificate_validity, now)
            .map_err(|error| Error::InvalidRequest(format!("cannot issue a certificate for this request: {error}")))?;
        self.store_issued(caller, &certificate, set_as_active, now)
    }

    fn store_issued(
        &self,
        caller: &Caller,
        certificate: &Certificate,
        set_as_active: bool,
        now: OffsetDateTime,
    ) -> Result<DeviceCertificate, Error> {
        let status = if set_as_active { CertificateStatus::Active } else { CertificateStatus::Inactive };
        let record = self.device_record(caller, certificate, None, status, CertificateMode::Default, now)?;
        registry::write(self.store(), |tx| {
            tx.lock_account(&record.account)?;
            tx.insert_certificate(&record)?;
            certificate_changed(tx, &record.account, &record.id, now)
        })?;
        tracing::info!(account = %caller.account, cert = %record.id, status = record.status.as_str(), "certificate issued");
        Ok(record)
    }

    /// RegisterCertificate: a device certificate signed by a CA registered in the account.
    pub fn register_certificate(
        &self,
        caller: &Caller,
        request: &CertificateRegistration,
    ) -> Result<DeviceCertificate, Error> {
        let now = self.now();
        let device = parse_device_certificate(&request.certificate_pem)?;
        let status = registration_status(request)?;
        let named_ca =
            request.ca_certificate_pem.as_deref().map(|pem| parse_certificate(pem, "caCertificatePem")).transpose()?;
        let issuer_key = device.issuer_fingerprint();

        let record = registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let candidates = tx.cas_with_subject(&caller.account, &issuer_key)?;
            let ca = match &named_ca {
                Some(named) => candidates.into_iter().find(|ca| &ca.id == named.id()).ok_or_else(|| {
                    Error::CertificateValidation(format!(
                        "the CA certificate {} is not registered in this account",
                        named.id()
                    ))
                })?,
                None => match candidates.len() {
                    0 => {
                        return Err(Error::CertificateValidation(format!(
                            "no registered CA certificate has the issuer's subject {}",
                            device.issuer_string()
                        )));
                    }
                    1 => candidates.into_iter().next().ok_or_else(|| Error::Internal("no candidate".into()))?,
                    _ => {
                        return Err(Error::CertificateConflict(
                            "several registered CA certificates share the issuer's subject: give caCertificatePem"
                                .into(),
                        ));
                    }
                },
            };
            if ca.status != CaStatus::Active {
                return Err(Error::CertificateState(format!("the CA certificate {} is not ACTIVE", ca.id)));
            }
            let ca_certificate = Certificate::from_pem(&ca.pem)
                .map_err(|error| Error::Internal(format!("stored CA certificate {}: {error}", ca.id)))?;
            pki::check_issued_by(&device, &ca_certificate, now).map_err(validation)?;
            let record = self.device_record(caller, &device, Some(ca.id.clone()), status, ca.mode, now)?;
            insert_new_certificate(tx, &record, &self.certificate_arn(&caller.account, &record.id))?;
            Ok(record)
        })?;
        tracing::info!(account = %caller.account, cert = %record.id, ca = ?record.ca_certificate_id, "certificate registered");
        Ok(record)
    }

    /// RegisterCertificateWithoutCA: a certificate whose CA nobody registered (multi-account
    /// registration); it gets mode SNI_ONLY, so devices must send SNI.
    pub fn register_certificate_without_ca(
        &self,
        caller: &Caller,
        request: &CertificateRegistration,
    ) -> Result<DeviceCertificate, Error> {
        let now = self.now();
        let device = parse_device_certificate(&request.certificate_pem)?;
        if !device.is_valid_at(now) {
            return Err(Error::CertificateValidation(format!(
                "the certificate is not valid now (valid from {} to {})",
                device.not_before(),
                device.not_after()
            )));
        }
        let status = registration_status(request)?;
        let record = self.device_record(caller, &device, None, status, CertificateMode::SniOnly, now)?;
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            insert_new_certificate(tx, &record, &self.certificate_arn(&caller.account, &record.id))
        })?;
        tracing::info!(account = %caller.account, cert = %record.id, "certificate registered without CA");
        Ok(record)
    }

    fn device_record(
        &self,
        caller: &Caller,
        device: &Certificate,
        ca_certificate_id: Option<CertificateId>,
        status: CertificateStatus,
        mode: CertificateMode,
        now: OffsetDateTime,
    ) -> Result<DeviceCertificate, Error> {
        Ok(DeviceCertificate::registered(
            caller.account.clone(),
            device,
            ca_certificate_id,
            status,
            mode,
            uuid_v4()?,
            now,
        ))
    }

    /// DescribeCertificate: the caller's certificate, or one offered to it by a pending transfer.
    pub fn describe_certificate(&self, caller: &Caller, id: &CertificateId) -> Result<DeviceCertificate, Error> {
        registry::read(self.store(), |tx| {
            if let Some(certificate) = tx.get_certificate(&caller.account, id)? {
                return Ok(certificate);
            }
            tx.certificate_pending_transfer_to(&caller.account, id)?.ok_or_else(|| cert_not_found(id))
        })
    }

    /// UpdateCertificate: REVOKED is final, PENDING_TRANSFER and PENDING_ACTIVATION cannot be set,
    /// and a certificate being transferred keeps its status until the transfer ends.
    /// Returns the certificate as it is after the call.
    pub fn update_certificate(
        &self,
        caller: &Caller,
        id: &CertificateId,
        new_status: CertificateStatus,
    ) -> Result<DeviceCertificate, Error> {
        if matches!(new_status, CertificateStatus::PendingTransfer | CertificateStatus::PendingActivation) {
            return Err(Error::InvalidRequest(format!(
                "the status {} cannot be set by UpdateCertificate",
                new_status.as_str()
            )));
        }
        let now = self.now();
        let generation_id = uuid_v4()?;
        let (before, after) = registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let mut certificate = tx.get_certificate(&caller.account, id)?.ok_or_else(|| cert_not_found(id))?;
            let before = certificate.status;
            if before == new_status {
                return Ok((before, certificate));
            }
            match before {
                CertificateStatus::Revoked => {
                    return Err(Error::CertificateState("a REVOKED certificate cannot change status".into()));
                }
                CertificateStatus::PendingTransfer => {
                    return Err(Error::CertificateState(
                        "the certificate is being transferred: cancel or complete the transfer first".into(),
                    ));
                }
                _ => {}
            }
            certificate.status = new_status;
            bump(&mut certificate, &generation_id, now);
            tx.update_certificate(&certificate)?;
            certificate_changed(tx, &caller.account, id, now)?;
            Ok((before, certificate))
        })?;
        tracing::info!(account = %caller.account, cert = %id, from = before.as_str(), to = new_status.as_str(), "certificate status updated");
        Ok(after)
    }

    /// DeleteCertificate: an ACTIVE or transferring certificate cannot be deleted, nor one
    /// attached to a thing or (unless `force`, which detaches them) to policies.
    pub fn delete_certificate(&self, caller: &Caller, id: &CertificateId, force: bool) -> Result<(), Error> {
        let arn = self.certificate_arn(&caller.account, id);
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let certificate = tx.get_certificate(&caller.account, id)?.ok_or_else(|| cert_not_found(id))?;
            match certificate.status {
                CertificateStatus::Active => {
                    return Err(Error::CertificateState(
                        "an ACTIVE certificate cannot be deleted: deactivate or revoke it first".into(),
                    ));
                }
                CertificateStatus::PendingTransfer => {
                    return Err(Error::CertificateState(
                        "a certificate being transferred cannot be deleted: cancel the transfer first".into(),
                    ));
                }
                _ => {}
            }
            if let Some(attached) = tx.certificate_things(&caller.account, id)?.first() {
                return Err(Error::DeleteConflict(format!(
                    "things must be detached before deletion (arn: {})",
                    self.thing_arn(&caller.account, &attached.thing_name)
                )));
            }
            if tx.count_certificate_policies(&caller.account, id)? > 0 {
                if !force {
                    return Err(Error::DeleteConflict(format!(
                        "certificate policies must be detached before deletion (arn: {arn})"
                    )));
                }
                tx.detach_all_policies(&caller.account, id)?;
            }
            tx.delete_certificate(&caller.account, id)?;
            tx.delete_tags(&arn)?;
            certificate_changed(tx, &caller.account, id, self.now())?;
            Ok(())
        })?;
        tracing::info!(account = %caller.account, cert = %id, force, "certificate deleted");
        Ok(())
    }

    /// ListCertificates.
    pub fn list_certificates(&self, caller: &Caller, page: &PageRequest) -> Result<Page<DeviceCertificate>, Error> {
        registry::read(self.store(), |tx| tx.list_certificates(&caller.account, page).map_err(Error::from))
    }

    // ---- transfers ------------------------------------------------------------------------

    /// TransferCertificate: offers an INACTIVE certificate without policies or things attached
    /// to another account. Returns the ARN
    /// the certificate will have there.
    pub fn transfer_certificate(
        &self,
        caller: &Caller,
        id: &CertificateId,
        target: &AccountId,
        message: Option<String>,
    ) -> Result<String, Error> {
        if target == &caller.account {
            return Err(Error::InvalidRequest("a certificate cannot be transferred to its own account".into()));
        }
        let now = self.now();
        let generation_id = uuid_v4()?;
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let mut certificate = tx.get_certificate(&caller.account, id)?.ok_or_else(|| cert_not_found(id))?;
            match certificate.status {
                CertificateStatus::Inactive => {}
                CertificateStatus::Active => {
                    return Err(Error::CertificateState(
                        "an ACTIVE certificate cannot be transferred: deactivate it first".into(),
                    ));
                }
                other => {
                    return Err(Error::CertificateState(format!(
                        "a certificate in status {} cannot be transferred",
                        other.as_str()
                    )));
                }
            }
            if tx.count_certificate_policies(&caller.account, id)? > 0 {
                return Err(Error::TransferConflict(
                    "the certificate has policies attached: detach them before the transfer".into(),
                ));
            }
            if !tx.certificate_things(&caller.account, id)?.is_empty() {
                return Err(Error::TransferConflict(
                    "the certificate is attached to things: detach it before the transfer".into(),
                ));
            }
            certificate.status = CertificateStatus::PendingTransfer;
            certificate.transfer = TransferData {
                pending_to: Some(target.clone()),
                transfer_message: message.clone(),
                transfer_date: Some(now),
                ..TransferData::default()
            };
            bump(&mut certificate, &generation_id, now);
            tx.update_certificate(&certificate)?;
            certificate_changed(tx, &caller.account, id, now)
        })?;
        tracing::info!(account = %caller.account, cert = %id, %target, "certificate offered for transfer");
        Ok(self.certificate_arn(target, id))
    }

    /// AcceptCertificateTransfer: the offered certificate moves into the caller's account.
    pub fn accept_certificate_transfer(
        &self,
        caller: &Caller,
        id: &CertificateId,
        set_as_active: bool,
    ) -> Result<(), Error> {
        let now = self.now();
        let generation_id = uuid_v4()?;
        let source = registry::write(self.store(), |tx| {
            let mut certificate = pending_for(tx, caller, id)?;
            let source = certificate.account.clone();
            // Lock both accounts in a fixed order so two transfers cannot deadlock.
            let (first, second) =
                if source < caller.account { (&source, &caller.account) } else { (&caller.account, &source) };
            let first_present = tx.lock_account_if_present(first)?.is_some();
            let second_present = tx.lock_account_if_present(second)?.is_some();
            if !(first_present && second_present) {
                // The caller's own account gone is AccountGone; the offering account gone took
                // its certificate with it.
                tx.lock_account(&caller.account)?;
                return Err(Error::NotFound(format!("certificate {id} is no longer offered")));
            }
            if tx.get_certificate(&caller.account, id)?.is_some() {
                return Err(Error::InvalidRequest("the certificate is already registered in this account".into()));
            }
            tx.change_certificate_owner(id, &source, &caller.account)?;
            certificate.account = caller.account.clone();
            certificate.previous_owner = Some(source.clone());
            certificate.status = if set_as_active { CertificateStatus::Active } else { CertificateStatus::Inactive };
            certificate.transfer.pending_to = None;
            certificate.transfer.accept_date = Some(now);
            bump(&mut certificate, &generation_id, now);
            tx.update_certificate(&certificate)?;
            certificate_changed(tx, &source, id, now)?;
            certificate_changed(tx, &caller.account, id, now)?;
            Ok(source)
        })?;
        tracing::info!(account = %caller.account, cert = %id, from = %source, "certificate transfer accepted");
        Ok(())
    }

    /// RejectCertificateTransfer: the certificate stays with its owner, INACTIVE.
    pub fn reject_certificate_transfer(
        &self,
        caller: &Caller,
        id: &CertificateId,
        reason: Option<String>,
    ) -> Result<(), Error> {
        let now = self.now();
        let generation_id = uuid_v4()?;
        registry::write(self.store(), |tx| {
            let mut certificate = pending_for(tx, caller, id)?;
            tx.lock_account(&certificate.account.clone())?;
            certificate.status = CertificateStatus::Inactive;
            certificate.transfer.pending_to = None;
            certificate.transfer.reject_reason = reason.clone();
            certificate.transfer.reject_date = Some(now);
            bump(&mut certificate, &generation_id, now);
            tx.update_certificate(&certificate)?;
            certificate_changed(tx, &certificate.account, id, now)
        })?;
        tracing::info!(account = %caller.account, cert = %id, "certificate transfer rejected");
        Ok(())
    }

    /// CancelCertificateTransfer: the owner withdraws its offer; the certificate is INACTIVE again.
    pub fn cancel_certificate_transfer(&self, caller: &Caller, id: &CertificateId) -> Result<(), Error> {
        let now = self.now();
        let generation_id = uuid_v4()?;
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let mut certificate = tx.get_certificate(&caller.account, id)?.ok_or_else(|| cert_not_found(id))?;
            if certificate.status != CertificateStatus::PendingTransfer {
                return Err(Error::TransferAlreadyCompleted("the certificate has no pending transfer".into()));
            }
            certificate.status = CertificateStatus::Inactive;
            certificate.transfer.pending_to = None;
            bump(&mut certificate, &generation_id, now);
            tx.update_certificate(&certificate)?;
            certificate_changed(tx, &caller.account, id, now)
        })?;
        tracing::info!(account = %caller.account, cert = %id, "certificate transfer cancelled");
        Ok(())
    }

    // ---- endpoints ------------------------------------------------------------------------
}

/// The certificate offered to the caller, or why there is none.
fn pending_for(tx: &mut Tx<'_>, caller: &Caller, id: &CertificateId) -> Result<DeviceCertificate, Error> {
    if let Some(certificate) = tx.certificate_pending_transfer_to(&caller.account, id)? {
        return Ok(certificate);
    }
    match tx.get_certificate(&caller.account, id)? {
        Some(owned) if owned.transfer.accept_date.is_some() => {
            Err(Error::TransferAlreadyCompleted("the transfer of this certificate was already accepted".into()))
        }
        _ => Err(cert_not_found(id)),
    }
}

fn insert_new_certificate(tx: &mut Tx<'_>, record: &DeviceCertificate, arn: &str) -> Result<(), Error> {
    if tx.get_certificate(&record.account, &record.id)?.is_some() {
        return Err(already_exists("the certificate is already registered in this account", &record.id, Some(arn)));
    }
    tx.insert_certificate(record)?;
    certificate_changed(tx, &record.account, &record.id, record.created_at)
}

/// Tells the change feed (and so every gateway node) that a certificate must be looked at again.
fn certificate_changed(
    tx: &mut Tx<'_>,
    account: &AccountId,
    id: &CertificateId,
    now: OffsetDateTime,
) -> Result<(), Error> {
    tx.record_change(account, ChangeKind::Certificate, id.as_str(), now).map_err(Error::from)
}

fn bump(certificate: &mut DeviceCertificate, generation_id: &str, now: OffsetDateTime) {
    certificate.customer_version += 1;
    certificate.generation_id = generation_id.to_owned();
    certificate.last_modified = now;
}

fn registration_status(request: &CertificateRegistration) -> Result<CertificateStatus, Error> {
    match request.status {
        Some(CertificateStatus::PendingTransfer | CertificateStatus::PendingActivation) => Err(Error::InvalidRequest(
            "a certificate cannot be registered as PENDING_TRANSFER or PENDING_ACTIVATION".into(),
        )),
        Some(status) => Ok(status),
        None if request.set_as_active => Ok(CertificateStatus::Active),
        None => Ok(CertificateStatus::Inactive),
    }
}

fn parse_certificate(pem: &str, member: &str) -> Result<Certificate, Error> {
    Certificate::from_pem(pem)
        .map_err(|error| Error::CertificateValidation(format!("{member} is not a valid certificate: {error}")))
}

fn parse_device_certificate(pem: &str) -> Result<Certificate, Error> {
    let device = parse_certificate(pem, "certificatePem")?;
    pki::check_key_rules(device.public_key()).map_err(validation)?;
    device.signature_algorithm().map_err(validation)?;
    Ok(device)
}

fn validation(error: pki::Error) -> Error {
    Error::CertificateValidation(error.to_string())
}

fn already_exists(message: &str, id: &CertificateId, arn: Option<&str>) -> Error {
    Error::AlreadyExists { message: message.into(), resource_id: id.to_string(), resource_arn: arn.map(str::to_owned) }
}

fn ca_not_found(id: &CertificateId) -> Error {
    Error::NotFound(format!("the CA certificate {id} does not exist"))
}

fn cert_not_found(id: &CertificateId) -> Error {
    Error::NotFound(format!("the certificate {id} does not exist"))
}

impl Services {
    /// Refuses a registrationConfig whose `templateBody` is not a valid JITP template or whose
    /// `templateName` is not one of the account's JITP templates, so that a bad template never
    /// reaches a device's first connection.
    fn check_registration_config(&self, account: &AccountId, config: Option<&RegistrationConfig>) -> Result<(), Error> {
        let Some(config) = config else { return Ok(()) };
        if let Some(body) = &config.template_body {
            crate::provisioning::Template::parse(body)?;
        }
        match &config.template_name {
            Some(name) if config.template_body.is_none() => self.check_template_reference(account, name),
            _ => Ok(()),
        }
    }
}
