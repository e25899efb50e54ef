//! Just-in-time registration (JITR): a device presenting an unknown certificate signed by one of
//! the account's CAs that is ACTIVE and allows auto-registration gets that certificate registered
//! as PENDING_ACTIVATION; an operator (or a rule) then activates it.
//!
//! The gateway calls [`Services::auto_register_certificate`] for a certificate its account does
//! not hold, and publishes AWS's registration event itself (the services know no topics).
//! Strangers are the common case, so the CAs are looked up in a read transaction first: a
//! certificate no auto-registering CA could have signed never costs a write. The signature is
//! checked outside the write transaction (a certificate's bytes never change); the write
//! transaction then checks again, under the account lock, that the certificate is still unknown
//! and its CA still ACTIVE with auto-registration enabled.

use certfleet_pki::{self as pki, Certificate, CertificateId};
use certfleet_registry::{
    self as registry, AccountId, CaCertificate, CaStatus, CertificateMode, CertificateStatus, ChangeKind, DeviceCertificate,
    TransferData,
};

use crate::ids::uuid_v4;
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
        let candidates = registry::read(self.store(), |tx| tx.cas_with_subject(account, &issuer_key).map_err(Error::from))?;
        let allowed = |ca: &CaCertificate| allows_auto_registration(ca) && (sni || ca.mode == CertificateMode::Default);
        let Some(signer) = candidates.iter().filter(|ca| allowed(ca)).find(|ca| signed(device, ca, now)) else {
            return Ok(None);
        };
        let signer_id = signer.id.clone();
        let generation_id = uuid_v4()?;

        let registered = registry::write(self.store(), |tx| {
            if tx.lock_account(account)?.is_none() || tx.get_certificate(account, device.id())?.is_some() {
                return Ok(None);
            }
            let Some(ca) = tx.get_ca(account, &signer_id)?.filter(|ca| allowed(ca)) else {
                return Ok(None);
            };
            let record = DeviceCertificate {
                account: account.clone(),
                id: device.id().clone(),
                pem: device.to_pem(),
                ca_certificate_id: Some(ca.id.clone()),
                status: CertificateStatus::PendingActivation,
                mode: ca.mode,
                previous_owner: None,
                generation_id: generation_id.clone(),
                customer_version: 1,
                not_before: device.not_before(),
                not_after: device.not_after(),
                created_at: now,
                last_modified: now,
                transfer: TransferData::default(),
            };
            tx.insert_certificate(&record)?;
            tx.record_change(account, ChangeKind::Certificate, record.id.as_str(), now)?;
            Ok::<_, Error>(Some((record, ca.id)))
        })?;
        if let Some((record, ca)) = &registered {
            tracing::info!(%account, cert = %record.id, %ca, "certificate registered just in time, pending activation");
        }
        Ok(registered)
    }
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
