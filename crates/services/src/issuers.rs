//! The CAs whose keys certfleet holds: found in the registry, or created on first start.
//! Their private keys are sealed (AES-256-GCM under a passphrase-derived key) before they are
//! stored, so the registry never holds a CA key in clear.

use certfleet_pki::{Certificate, Issuer, KeyAlgorithm, sealed};
use certfleet_registry::{self as registry, IssuerPurpose, IssuerRecord};

use crate::{Clock, Error};

/// Loads the current issuer for `purpose`, or creates a root CA for it when there is none.
/// `passphrase` seals and opens its private key.
pub fn load_or_create_issuer(
    store: &dyn registry::Store,
    clock: &dyn Clock,
    purpose: IssuerPurpose,
    common_name: &str,
    validity: time::Duration,
    passphrase: &[u8],
) -> Result<Issuer, Error> {
    if let Some(record) = registry::read(store, |tx| tx.current_issuer(purpose).map_err(Error::from))? {
        let key = sealed::open(passphrase, &record.sealed_key).map_err(|error| {
            Error::Internal(format!(
                "the {} issuer's key cannot be opened ({error}): is this the passphrase it was sealed with?",
                purpose.as_str()
            ))
        })?;
        let certificate = Certificate::from_pem(&record.certificate_pem)
            .map_err(|error| Error::Internal(format!("stored issuer certificate: {error}")))?;
        return Issuer::from_parts(certificate, &key)
            .map_err(|error| Error::Internal(format!("stored issuer: {error}")));
    }

    let now = clock.now();
    let issuer = Issuer::generate_root(common_name, "certfleet", validity, KeyAlgorithm::EcdsaP256, now)
        .map_err(|error| Error::Internal(format!("generating the {} root: {error}", purpose.as_str())))?;
    let sealed_key = sealed::seal(passphrase, &issuer.private_key_pkcs8_der())
        .map_err(|error| Error::Internal(format!("sealing the {} root key: {error}", purpose.as_str())))?;
    let record = IssuerRecord {
        id: issuer.certificate().id().clone(),
        purpose,
        certificate_pem: issuer.certificate().to_pem(),
        sealed_key,
        created_at: now,
    };
    registry::write(store, |tx| tx.insert_issuer(&record).map_err(Error::from))?;
    tracing::info!(purpose = purpose.as_str(), id = %record.id, "created a root CA");
    Ok(issuer)
}
