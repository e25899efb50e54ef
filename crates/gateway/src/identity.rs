//! Who a device is: its certificate checked against the registry of the account its SNI names.
//!
//! The registry is read through a cache, so a connected device costs no database query per
//! packet and a reconnecting fleet costs one per certificate. The cache is kept true by the
//! change feed (`follow.rs`): every committed change to a certificate, CA or account invalidates
//! its entries on every node.
//!
//! A certificate the endpoint's account does not hold may be registered just in time (JITR):
//! signed by one of the account's CAs that is ACTIVE and allows auto-registration, it is
//! registered PENDING_ACTIVATION (`Services::auto_register_certificate`), AWS's registration
//! event goes to the [`EventSink`], and the device is refused until an operator activates it.

use certfleet_cache::BoundedMap;
use std::sync::{Arc, Mutex};

use certfleet_pki::{self as pki, Certificate, CertificateId};
use certfleet_registry::{AccountId, CaCertificate, CaStatus, CertificateMode, CertificateStatus, DeviceCertificate};
use certfleet_services::Services;
use time::OffsetDateTime;

use crate::events::{EventSink, certificate_registered};
pub use crate::model::{Identity, Refusal};

/// The registry as the gateway sees it: cached, invalidated by the change feed.
pub struct Registry {
    services: Arc<Services>,
    /// Certificates the registry holds (positive answers).
    certificates: Mutex<BoundedMap<AccountCertificate, Arc<DeviceCertificate>>>,
    /// Certificates it does not hold: kept apart, so that a stream of strangers evicts only
    /// strangers, never a fleet's devices.
    unknown: Mutex<BoundedMap<AccountCertificate, ()>>,
    cas: Mutex<BoundedMap<AccountCertificate, Option<Arc<CaCertificate>>>>,
    /// (device, CA) pairs whose signature verified; a certificate's bytes never change.
    verified: Mutex<BoundedMap<(CertificateId, CertificateId), ()>>,
    /// Where just-in-time registration events go (the node's broker); none: not published.
    events: Option<Arc<dyn EventSink>>,
}

/// A certificate (device or CA) as an account holds it: the caches' key.
type AccountCertificate = (AccountId, CertificateId);

/// How many entries each of the registry's caches holds at most. A full cache drops its least
/// recently used half ([`BoundedMap`]), never everything.
#[derive(Clone, Copy, Debug)]
pub struct CacheLimits {
    /// Registered certificates (about 1.5 KiB each).
    pub certificates: usize,
    /// Certificates the registry does not hold (strangers).
    pub unknown_certificates: usize,
    /// CA certificates.
    pub cas: usize,
    /// Verified (device, CA) signatures (about 150 bytes each).
    pub verified_chains: usize,
    /// SNI names that name a domain configuration, resolved (each holds a rustls configuration).
    pub sni_endpoints: usize,
    /// SNI names that name nothing (served the default endpoint).
    pub sni_unknown_names: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            certificates: 200_000,
            unknown_certificates: 50_000,
            cas: 10_000,
            verified_chains: 200_000,
            sni_endpoints: 4096,
            sni_unknown_names: 65_536,
        }
    }
}

/// One cache's size and evictions, for `/metrics`.
#[derive(Clone, Copy, Debug)]
pub struct CacheStats {
    pub name: &'static str,
    pub entries: usize,
    pub capacity: usize,
    pub evicted: u64,
}

impl Registry {
    /// A registry view with the default cache bounds that publishes no event.
    pub fn new(services: Arc<Services>) -> Self {
        Registry::with_limits(services, CacheLimits::default(), None)
    }

    /// A registry view whose caches hold at most `limits` and whose just-in-time registration
    /// events go to `events` (none: certificates are still registered just in time, but no
    /// event is published).
    pub fn with_limits(services: Arc<Services>, limits: CacheLimits, events: Option<Arc<dyn EventSink>>) -> Self {
        Registry {
            services,
            certificates: Mutex::new(BoundedMap::new(limits.certificates)),
            unknown: Mutex::new(BoundedMap::new(limits.unknown_certificates)),
            cas: Mutex::new(BoundedMap::new(limits.cas)),
            verified: Mutex::new(BoundedMap::new(limits.verified_chains)),
            events,
        }
    }

    /// The caches' sizes and evictions.
    pub fn cache_stats(&self) -> [CacheStats; 4] {
        fn stats<K: Eq + std::hash::Hash, V>(name: &'static str, map: &Mutex<BoundedMap<K, V>>) -> CacheStats {
            let map = lock(map);
            CacheStats { name, entries: map.len(), capacity: map.capacity(), evicted: map.evicted() }
        }
        [
            stats("certificates", &self.certificates),
            stats("unknown_certificates", &self.unknown),
            stats("cas", &self.cas),
            stats("verified_chains", &self.verified),
        ]
    }

    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// Decides whether `certificate`, presented at an endpoint of `account` (`sni` says whether
    /// the client named the endpoint), may connect now.
    pub async fn authenticate(
        &self,
        account: &AccountId,
        sni: bool,
        certificate: &Certificate,
        now: OffsetDateTime,
    ) -> Result<Identity, Refusal> {
        let id = certificate.id();
        let Some(record) = self.certificate(account, id).await? else {
            if self.register_just_in_time(account, sni, certificate).await? {
                return Err(Refusal::PendingActivation);
            }
            let services = self.services.clone();
            let lookup = id.clone();
            let elsewhere = tokio::task::spawn_blocking(move || services.accounts_holding_certificate(&lookup))
                .await
                .map_err(|_| Refusal::RegistryUnavailable)?
                .map_err(|_| Refusal::RegistryUnavailable)?;
            if elsewhere.contains(account) {
                // It arrived after the cache said "unknown": a concurrent connection of the same
                // device registered it just in time. Decided afresh at the next connection.
                self.forget_certificate(account, id);
                return Err(Refusal::PendingActivation);
            }
            return Err(if elsewhere.is_empty() { Refusal::Unregistered } else { Refusal::WrongAccount });
        };
        check_status(record.status)?;
        if now < certificate.not_before() {
            return Err(Refusal::NotYetValid);
        }
        if now > certificate.not_after() {
            return Err(Refusal::Expired);
        }
        if record.mode == CertificateMode::SniOnly && !sni {
            return Err(Refusal::SniRequired);
        }
        if let Some(ca_id) = &record.ca_certificate_id {
            let ca = self.ca(account, ca_id).await?.ok_or(Refusal::CaMissing)?;
            if ca.status != CaStatus::Active {
                return Err(Refusal::CaInactive);
            }
            self.check_chain(certificate, &ca, now)?;
        }
        Ok(Identity {
            account: account.clone(),
            certificate_id: id.clone(),
            ca_certificate_id: record.ca_certificate_id.clone(),
            not_after: certificate.not_after(),
        })
    }

    /// Whether a connected identity is still acceptable (after a change touched it).
    pub async fn recheck(&self, identity: &Identity, now: OffsetDateTime) -> Result<(), Refusal> {
        let record =
            self.certificate(&identity.account, &identity.certificate_id).await?.ok_or(Refusal::Unregistered)?;
        check_status(record.status)?;
        if now > identity.not_after {
            return Err(Refusal::Expired);
        }
        if let Some(ca_id) = &identity.ca_certificate_id {
            let ca = self.ca(&identity.account, ca_id).await?.ok_or(Refusal::CaMissing)?;
            if ca.status != CaStatus::Active {
                return Err(Refusal::CaInactive);
            }
        }
        Ok(())
    }

    /// JITR: registers `certificate` in `account` if one of its CAs allows it, publishes the
    /// registration event, and says whether it did.
    async fn register_just_in_time(
        &self,
        account: &AccountId,
        sni: bool,
        certificate: &Certificate,
    ) -> Result<bool, Refusal> {
        let services = self.services.clone();
        let (lookup_account, device) = (account.clone(), certificate.clone());
        let registered =
            tokio::task::spawn_blocking(move || services.auto_register_certificate(&lookup_account, &device, sni))
                .await
                .map_err(|_| Refusal::RegistryUnavailable)?
                .map_err(|error| {
                    // The services logged the first refusal of each second themselves.
                    if matches!(error, certfleet_services::Error::LimitExceeded(_)) {
                        return Refusal::RegistrationThrottled;
                    }
                    tracing::warn!(%error, cert = %certificate.id(), %account, "just-in-time registration failed");
                    Refusal::RegistryUnavailable
                })?;
        let Some((record, ca)) = registered else { return Ok(false) };
        let event = certificate_registered(&record, &ca, self.services.now());
        // The cache said "unknown"; the change feed would correct it, but only at its next poll.
        let key = (account.clone(), record.id.clone());
        lock(&self.unknown).remove(&key);
        lock(&self.certificates).insert(key, Arc::new(record));
        match (&self.events, event) {
            (Some(events), Some(event)) => events.publish_event(account, event),
            _ => {
                tracing::warn!(cert = %certificate.id(), %ca, "no event sink: the registration event is not published")
            }
        }
        Ok(true)
    }

    fn check_chain(&self, certificate: &Certificate, ca: &CaCertificate, now: OffsetDateTime) -> Result<(), Refusal> {
        let key = (certificate.id().clone(), ca.id.clone());
        if lock(&self.verified).get(&key).is_some() {
            return if ca.not_after >= now && ca.not_before <= now { Ok(()) } else { Err(Refusal::ChainInvalid) };
        }
        let ca_certificate = Certificate::from_pem(&ca.pem).map_err(|_| Refusal::ChainInvalid)?;
        pki::check_issued_by(certificate, &ca_certificate, now).map_err(|error| {
            tracing::debug!(cert = %certificate.id(), ca = %ca.id, %error, "chain check failed");
            Refusal::ChainInvalid
        })?;
        lock(&self.verified).insert(key, ());
        Ok(())
    }

    async fn certificate(
        &self,
        account: &AccountId,
        id: &CertificateId,
    ) -> Result<Option<Arc<DeviceCertificate>>, Refusal> {
        let key = (account.clone(), id.clone());
        if let Some(cached) = lock(&self.certificates).get(&key) {
            return Ok(Some(cached.clone()));
        }
        if lock(&self.unknown).get(&key).is_some() {
            return Ok(None);
        }
        let services = self.services.clone();
        let (lookup_account, lookup_id) = key.clone();
        let loaded = tokio::task::spawn_blocking(move || services.lookup_certificate(&lookup_account, &lookup_id))
            .await
            .map_err(|_| Refusal::RegistryUnavailable)?
            .map_err(|error| {
                tracing::warn!(%error, "registry lookup failed");
                Refusal::RegistryUnavailable
            })?
            .map(Arc::new);
        match &loaded {
            Some(record) => lock(&self.certificates).insert(key, record.clone()),
            None => lock(&self.unknown).insert(key, ()),
        }
        Ok(loaded)
    }

    async fn ca(&self, account: &AccountId, id: &CertificateId) -> Result<Option<Arc<CaCertificate>>, Refusal> {
        let key = (account.clone(), id.clone());
        if let Some(cached) = lock(&self.cas).get(&key) {
            return Ok(cached.clone());
        }
        let services = self.services.clone();
        let (lookup_account, lookup_id) = key.clone();
        let loaded = tokio::task::spawn_blocking(move || services.lookup_ca_certificate(&lookup_account, &lookup_id))
            .await
            .map_err(|_| Refusal::RegistryUnavailable)?
            .map_err(|_| Refusal::RegistryUnavailable)?
            .map(Arc::new);
        lock(&self.cas).insert(key, loaded.clone());
        Ok(loaded)
    }

    /// Forgets what the cache knows of a certificate (a change-feed entry named it).
    pub fn forget_certificate(&self, account: &AccountId, id: &CertificateId) {
        let key = (account.clone(), id.clone());
        lock(&self.certificates).remove(&key);
        lock(&self.unknown).remove(&key);
    }

    /// Forgets what the cache knows of a CA.
    pub fn forget_ca(&self, account: &AccountId, id: &CertificateId) {
        lock(&self.cas).remove(&(account.clone(), id.clone()));
    }

    /// Forgets everything of an account.
    pub fn forget_account(&self, account: &AccountId) {
        lock(&self.certificates).retain(|(owner, _), _| owner != account);
        lock(&self.unknown).retain(|(owner, _), _| owner != account);
        lock(&self.cas).retain(|(owner, _), _| owner != account);
    }

    /// Forgets everything (the change feed was lost and must be assumed to have missed entries).
    pub fn forget_all(&self) {
        lock(&self.certificates).clear();
        lock(&self.unknown).clear();
        lock(&self.cas).clear();
    }
}

fn check_status(status: CertificateStatus) -> Result<(), Refusal> {
    match status {
        CertificateStatus::Active => Ok(()),
        CertificateStatus::Inactive | CertificateStatus::RegisterInactive => Err(Refusal::Inactive),
        CertificateStatus::Revoked => Err(Refusal::Revoked),
        CertificateStatus::PendingTransfer => Err(Refusal::PendingTransfer),
        CertificateStatus::PendingActivation => Err(Refusal::PendingActivation),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
