//! Certificate revocation lists operators upload for the revocation checks (a certfleet
//! extension: AWS reads the CRL distribution points of the certificates themselves).
//!
//! A CRL is verified against the account's CA certificates with the CRL's issuer as subject:
//! when such a CA exists, one of them must have signed it (a forged list is refused); a CRL of an
//! issuer the account has not registered is kept unverified (the CA of a registered CA, say).

use certfleet_pki::{Certificate, Crl};
use certfleet_registry::{self as registry, PageRequest, StoredCrl};

use crate::{Caller, Error, Services};

/// At most this many CRLs per account.
pub const MAX_CRLS: usize = 100;

impl Services {
    /// Stores (or replaces) the CRL `name` of the caller's account, given as PEM or DER.
    pub fn put_crl(&self, caller: &Caller, name: &str, bytes: &[u8]) -> Result<StoredCrl, Error> {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.';
        if !(1..=128).contains(&name.len()) || !name.bytes().all(allowed) {
            return Err(Error::InvalidRequest(format!(
                "a CRL name must match [a-zA-Z0-9_.-]+ (1 to 128), got {name:?}"
            )));
        }
        let crl = Crl::parse(bytes).map_err(|error| Error::InvalidRequest(format!("not a CRL: {error}")))?;
        let now = self.now();
        let stored = registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let mut candidates = Vec::new();
            let mut after = None;
            loop {
                let page = tx.list_cas(&caller.account, &PageRequest { limit: 250, ascending: true, after })?;
                candidates.extend(page.items);
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            let mut issuer_ca = None;
            let mut same_subject = false;
            for ca in candidates {
                let Ok(certificate) = Certificate::from_pem(&ca.pem) else { continue };
                if certificate.subject_der() != crl.issuer_der() {
                    continue;
                }
                same_subject = true;
                if crl.verify_signature(certificate.public_key()).is_ok() {
                    issuer_ca = Some(ca.id);
                    break;
                }
            }
            if same_subject && issuer_ca.is_none() {
                return Err(Error::InvalidRequest(format!(
                    "the CRL's signature does not verify with any registered CA named {}",
                    crl.issuer_string()
                )));
            }
            let existing = tx.list_crls(&caller.account)?;
            if existing.len() >= MAX_CRLS && !existing.iter().any(|stored| stored.name == name) {
                return Err(Error::LimitExceeded(format!("an account has at most {MAX_CRLS} CRLs")));
            }
            let stored = StoredCrl {
                account: caller.account.clone(),
                name: name.to_owned(),
                der: crl.der().to_vec(),
                issuer_ca,
                uploaded_at: now,
            };
            tx.put_crl(&stored)?;
            Ok::<_, Error>(stored)
        })?;
        tracing::info!(account = %caller.account, crl = name, issuer = %crl.issuer_string(), revoked = crl.revoked_count(),
            verified_by = ?stored.issuer_ca, "crl stored");
        Ok(stored)
    }

    /// The caller's CRLs, by name.
    pub fn list_crls(&self, caller: &Caller) -> Result<Vec<StoredCrl>, Error> {
        registry::read(self.store(), |tx| tx.list_crls(&caller.account).map_err(Error::from))
    }

    /// Deletes a CRL.
    pub fn delete_crl(&self, caller: &Caller, name: &str) -> Result<(), Error> {
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            if !tx.delete_crl(&caller.account, name)? {
                return Err(Error::NotFound(format!("the CRL {name} does not exist")));
            }
            Ok(())
        })
    }
}
