//! Enforcing AWS IoT policies: the [`Authorizer`] the broker asks at CONNECT, PUBLISH (and the
//! will), SUBSCRIBE and delivery.
//!
//! **No database and no JSON per packet.** When a device has authenticated, the listener awaits
//! [`PolicyAuthorizer::load`]: the policies that apply to its certificate, its own and those
//! inherited from the thing groups of its things and their ancestors (default versions,
//! compiled once with `certfleet_policy::Policy::parse`), the things attached to it and the
//! certificate's attributes are kept per (account, certificate) as one immutable [`Principal`].
//! Loading failed means the connection is refused (as `RegistryUnavailable`). The synchronous
//! checks then only read that snapshot: a `RwLock` read, two map lookups, the connection's
//! [`Context`] (built once per client ID and kept in the snapshot) and the evaluation, with the
//! resource ARN written into a reused thread-local buffer.
//!
//! **Live changes.** The change feed's follower (`follow::apply_all`) hands each entry to
//! [`PolicyAuthorizer::changed`], which re-reads the principals it touches — those holding the
//! policy (`Policy`), attached to the thing (`Thing`, which a thing's group membership changes
//! record too), loaded with the thing group (`ThingGroup`: a policy attached to or detached from
//! it, or the group deleted) or using the certificate (`Certificate`, which attach and detach
//! record) — and swaps their snapshots, so the next packet of a live
//! session is decided by the new policies without a reconnect. A principal that cannot be
//! re-read is forgotten: its sessions are then refused everything (fail closed) until they
//! reconnect.
//!
//! **The thing of a connection** (AWS's rule): the thing attached to the certificate
//! EXCLUSIVE_THING, else the attached thing whose name equals the client ID, else none
//! (`iot:Connection.Thing.IsAttached` is then `false`).
//!
//! Not known here: `aws:SourceIp` (the broker does not pass the peer) and the certificates'
//! alternative names; variables naming them have no value, so they never widen access.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use certfleet_pki::{Certificate, CertificateId};
use certfleet_policy::{Action, CertificateAttributes, Context, DistinguishedName, Policy, Request, evaluate};
use certfleet_registry::{AccountId, Change, ChangeKind, Thing, ThingPrincipalType};
use certfleet_services::Services;

use crate::broker::Authorizer;
use crate::live::LiveSessions;
use crate::model::Identity;

/// Client IDs whose context one principal keeps; past it the contexts are built again.
const MAX_CONTEXTS: usize = 64;

/// Why a principal's policies could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The registry could not be read.
    #[error("reading the principal's policies and things failed")]
    Registry(#[source] certfleet_services::Error),
    /// A stored policy document does not compile (services never store one: a bug or a
    /// newer node's document).
    #[error("the policy {name} does not compile")]
    Policy {
        name: String,
        #[source]
        source: certfleet_policy::Error,
    },
    /// The blocking task reading the registry did not finish.
    #[error("the loading task failed")]
    Task,
}

/// What a certificate may do: its policies, its things and its attributes, read at one moment.
pub struct Principal {
    /// The names of the policies that apply (to know which principals a policy change touches).
    policy_names: Vec<String>,
    /// The thing groups (with their ancestors) whose policies were read: a change to one of them
    /// (a policy attached or detached, the group deleted) re-reads this principal.
    groups: Vec<String>,
    policies: Vec<Policy>,
    things: Vec<(Thing, ThingPrincipalType)>,
    certificate: CertificateAttributes,
    /// `arn:<partition>:iot:<region>:<account>:`.
    arn_prefix: String,
    /// The [`Context`] of each client ID seen with this principal.
    contexts: Mutex<HashMap<String, Arc<Context>>>,
    /// Orders loads: an older read never replaces a newer one.
    generation: u64,
    loaded_at: Instant,
}

impl Principal {
    /// The context of a connection with `client_id`, built on first use.
    fn context(&self, client_id: &str) -> Arc<Context> {
        let mut contexts = self.contexts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(context) = contexts.get(client_id) {
            return context.clone();
        }
        if contexts.len() >= MAX_CONTEXTS {
            contexts.clear();
        }
        let context = Arc::new(Context {
            client_id: client_id.to_owned(),
            source_ip: None,
            thing: connection_thing(&self.things, client_id),
            certificate: self.certificate.clone(),
        });
        contexts.insert(client_id.to_owned(), context.clone());
        context
    }

    /// Whether `action` on `<resource type>/<name>` is allowed for a connection with `client_id`.
    fn allows(&self, client_id: &str, action: Action, name: &str) -> bool {
        if self.policies.is_empty() {
            return false;
        }
        let context = self.context(client_id);
        RESOURCE.with_borrow_mut(|resource| {
            resource.clear();
            resource.push_str(&self.arn_prefix);
            resource.push_str(action.resource_type());
            resource.push('/');
            resource.push_str(name);
            evaluate(&self.policies, &Request { action, resource, context: &context }).is_allowed()
        })
    }
}

thread_local! {
    /// The ARN of the resource being decided, reused so that deciding does not allocate.
    static RESOURCE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// The thing a connection is attached to, for the `iot:Connection.Thing.*` variables.
fn connection_thing(things: &[(Thing, ThingPrincipalType)], client_id: &str) -> Option<certfleet_policy::Thing> {
    let (thing, _) = things
        .iter()
        .find(|(_, kind)| *kind == ThingPrincipalType::Exclusive)
        .or_else(|| things.iter().find(|(thing, _)| thing.name.as_str() == client_id))?;
    Some(certfleet_policy::Thing {
        name: thing.name.as_str().to_owned(),
        type_name: thing.type_name.as_ref().map(|name| name.as_str().to_owned()),
        attributes: thing.attributes.clone(),
    })
}

/// The `iot:Certificate.*` attributes of a certificate.
pub fn certificate_attributes(certificate: &Certificate) -> CertificateAttributes {
    CertificateAttributes {
        serial_number: Some(certificate.serial_decimal()),
        subject: distinguished_name(&certificate.subject_attributes()),
        issuer: distinguished_name(&certificate.issuer_attributes()),
        ..CertificateAttributes::default()
    }
}

fn distinguished_name(attributes: &[(String, String)]) -> DistinguishedName {
    let mut name = DistinguishedName::default();
    for (oid, value) in attributes {
        let values = match oid.as_str() {
            "2.5.4.6" => &mut name.country,
            "2.5.4.10" => &mut name.organization,
            "2.5.4.11" => &mut name.organizational_unit,
            "2.5.4.46" => &mut name.distinguished_name_qualifier,
            "2.5.4.8" => &mut name.state,
            "2.5.4.3" => &mut name.common_name,
            "2.5.4.5" => &mut name.serial_number,
            "2.5.4.12" => &mut name.title,
            "2.5.4.4" => &mut name.surname,
            "2.5.4.42" => &mut name.given_name,
            "2.5.4.43" => &mut name.initials,
            "2.5.4.65" => &mut name.pseudonym,
            "2.5.4.44" => &mut name.generation_qualifier,
            _ => continue,
        };
        values.push(value.clone());
    }
    name
}

type Principals = HashMap<AccountId, HashMap<CertificateId, Arc<Principal>>>;

/// The policy engine as the broker's [`Authorizer`]; see the module documentation.
pub struct PolicyAuthorizer {
    services: Arc<Services>,
    /// `arn:<partition>:iot:<region>:`.
    arn_prefix: String,
    principals: RwLock<Principals>,
    generations: AtomicU64,
    /// Principals of this generation or older are re-read before a new session uses them (the
    /// change feed could not be read, so they may have missed a change).
    trusted_from: AtomicU64,
}

impl PolicyAuthorizer {
    /// An authorizer over `services`, naming resources in `region` (the gateway's).
    pub fn new(services: Arc<Services>, region: &str) -> Arc<Self> {
        let arn_prefix = format!("arn:{}:iot:{region}:", services.config().partition);
        Arc::new(PolicyAuthorizer {
            services,
            arn_prefix,
            principals: RwLock::new(HashMap::new()),
            generations: AtomicU64::new(0),
            trusted_from: AtomicU64::new(0),
        })
    }

    /// The change feed could not be read: every principal held may have missed a change, so the
    /// next connection of each re-reads it (live sessions keep theirs until then).
    pub fn distrust_held(&self) {
        self.trusted_from.store(self.generations.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Makes sure the policies and things of an authenticated device are loaded, before its
    /// session starts. A principal already held is as fresh as the live sessions using it (the
    /// change feed re-reads every held principal a change touches), so a reconnecting device
    /// costs no registry read; only the first connection of a certificate reads.
    pub async fn load(&self, identity: &Identity, certificate: &Certificate) -> Result<(), LoadError> {
        let trusted_from = self.trusted_from.load(Ordering::Relaxed);
        if self.principal(identity).is_some_and(|held| held.generation > trusted_from) {
            return Ok(());
        }
        self.read(&identity.account, &identity.certificate_id, certificate_attributes(certificate)).await
    }

    /// Re-reads the principals a change-feed entry touches (see the module documentation).
    pub async fn changed(&self, change: &Change) {
        let account = &change.account;
        let affected: Vec<(CertificateId, CertificateAttributes)> = {
            let principals = self.principals.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(of_account) = principals.get(account) else { return };
            of_account
                .iter()
                .filter(|(id, principal)| match change.kind {
                    ChangeKind::Certificate => id.as_str() == change.entity_id,
                    ChangeKind::Policy => principal.policy_names.contains(&change.entity_id),
                    ChangeKind::Thing => {
                        principal.things.iter().any(|(thing, _)| thing.name.as_str() == change.entity_id)
                    }
                    ChangeKind::ThingGroup => principal.groups.contains(&change.entity_id),
                    _ => false,
                })
                .map(|(id, principal)| (id.clone(), principal.certificate.clone()))
                .collect()
        };
        for (id, certificate) in affected {
            if let Err(error) = self.read(account, &id, certificate).await {
                tracing::error!(%account, cert = %id, %error, "reloading a principal's policies failed; its sessions are refused everything");
                let mut principals = self.principals.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(of_account) = principals.get_mut(account) {
                    of_account.remove(&id);
                }
            } else {
                tracing::debug!(%account, cert = %id, seq = change.seq, "principal's policies reloaded");
            }
        }
    }

    /// Forgets the principals no live session uses that were loaded longer than `age` ago (a
    /// just-loaded principal's session may not have joined yet).
    pub fn forget_unused(&self, live: &LiveSessions, age: Duration) {
        let used: HashSet<(AccountId, CertificateId)> =
            live.list().into_iter().map(|info| (info.identity.account, info.identity.certificate_id)).collect();
        let now = Instant::now();
        let mut principals = self.principals.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (account, of_account) in principals.iter_mut() {
            of_account.retain(|id, principal| {
                now.duration_since(principal.loaded_at) < age || used.contains(&(account.clone(), id.clone()))
            });
        }
        principals.retain(|_, of_account| !of_account.is_empty());
    }

    /// Reads a principal and swaps it in, unless a newer read did already.
    async fn read(
        &self,
        account: &AccountId,
        id: &CertificateId,
        certificate: CertificateAttributes,
    ) -> Result<(), LoadError> {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let services = self.services.clone();
        let (lookup_account, lookup_id) = (account.clone(), id.clone());
        let (applying, things) = tokio::task::spawn_blocking(move || {
            let applying = services.principal_policies(&lookup_account, &lookup_id)?;
            let things = services.principal_thing_attachments(&lookup_account, &lookup_id)?;
            Ok::<_, certfleet_services::Error>((applying, things))
        })
        .await
        .map_err(|_| LoadError::Task)?
        .map_err(LoadError::Registry)?;
        let documents = applying.policies;
        let mut policy_names = Vec::with_capacity(documents.len());
        let mut policies = Vec::with_capacity(documents.len());
        for (name, document) in documents {
            let policy = Policy::parse(&document).map_err(|source| LoadError::Policy { name: name.clone(), source })?;
            policy_names.push(name);
            policies.push(policy);
        }
        let principal = Arc::new(Principal {
            policy_names,
            groups: applying.groups,
            policies,
            things,
            certificate,
            arn_prefix: format!("{}{account}:", self.arn_prefix),
            contexts: Mutex::new(HashMap::new()),
            generation,
            loaded_at: Instant::now(),
        });
        let mut principals = self.principals.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let of_account = principals.entry(account.clone()).or_default();
        if of_account.get(id).is_none_or(|current| current.generation < generation) {
            of_account.insert(id.clone(), principal);
        }
        Ok(())
    }

    /// The snapshot of a device's principal, if loaded.
    fn principal(&self, identity: &Identity) -> Option<Arc<Principal>> {
        let principals = self.principals.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        principals.get(&identity.account)?.get(&identity.certificate_id).cloned()
    }

    fn allows(&self, identity: &Identity, client_id: &str, action: Action, name: &str) -> bool {
        self.principal(identity).is_some_and(|principal| principal.allows(client_id, action, name))
    }
}

impl Authorizer for PolicyAuthorizer {
    fn connect(&self, identity: &Identity, client_id: &str) -> bool {
        self.allows(identity, client_id, Action::Connect, client_id)
    }

    fn publish(&self, identity: &Identity, client_id: &str, topic: &str, retain: bool) -> bool {
        let Some(principal) = self.principal(identity) else { return false };
        principal.allows(client_id, Action::Publish, topic)
            && (!retain || principal.allows(client_id, Action::RetainPublish, topic))
    }

    fn subscribe(&self, identity: &Identity, client_id: &str, filter: &str) -> bool {
        self.allows(identity, client_id, Action::Subscribe, filter)
    }

    fn receive(&self, identity: &Identity, client_id: &str, topic: &str) -> bool {
        self.allows(identity, client_id, Action::Receive, topic)
    }
}
