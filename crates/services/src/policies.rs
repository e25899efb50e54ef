//! Policies: their versions (at most five, one the default), their attachment to certificates
//! and thing groups, and the read the gateway evaluates (a certificate's own policies and those
//! its things inherit from their groups and the groups' ancestors).
//!
//! A document is compiled with `certfleet_policy` before anything is stored, so the registry
//! only ever holds documents the gateway can evaluate. A certificate carries at most
//! [`MAX_POLICIES_PER_TARGET`] policies. Every change to what a certificate is allowed (an
//! attachment, a new default version, a deleted policy) is recorded in the change feed in its
//! transaction, so that gateway nodes re-evaluate the live sessions it touches.

use certfleet_pki::CertificateId;
use certfleet_registry::{
    self as registry, AccountId, CertificateStatus, ChangeKind, KeyPage, KeyPageRequest, Page, PageRequest, Policy,
    PolicyName, PolicyTarget, PolicyVersion, Tag, Tx,
};
use time::OffsetDateTime;

use crate::groups::{MAX_GROUP_DEPTH, find_group, group_changed};
use crate::ids::uuid_v4;
use crate::{Caller, Error, Services};

/// The most versions a policy has (AWS: 5).
pub const MAX_POLICY_VERSIONS: usize = 5;

/// What applies to a device's certificate ([`Services::principal_policies`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrincipalPolicies {
    /// Each policy's name and default-version document, by name.
    pub policies: Vec<(String, String)>,
    /// The thing groups (and their ancestors) of the things attached to the certificate: a
    /// change to one of them changes what the device may do.
    pub groups: Vec<String>,
}

/// The most policies attached to one certificate or thing group (AWS: 10).
pub const MAX_POLICIES_PER_TARGET: i64 = 10;

impl Services {
    /// The ARN of a policy.
    pub fn policy_arn(&self, account: &AccountId, name: &PolicyName) -> String {
        self.arn(account, &format!("policy/{name}"))
    }

    /// CreatePolicy: the policy and its version 1, the default. Returns that version.
    pub fn create_policy(
        &self,
        caller: &Caller,
        name: &PolicyName,
        document: &str,
        tags: &[Tag],
    ) -> Result<PolicyVersion, Error> {
        check_document(document)?;
        let now = self.now();
        let arn = self.policy_arn(&caller.account, name);
        let policy = Policy {
            account: caller.account.clone(),
            name: name.clone(),
            default_version: 1,
            next_version: 2,
            generation_id: uuid_v4()?,
            created_at: now,
            last_modified: now,
        };
        let version = PolicyVersion {
            account: caller.account.clone(),
            policy_name: name.clone(),
            version: 1,
            document: document.to_owned(),
            created_at: now,
        };
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            if tx.get_policy(&caller.account, name)?.is_some() {
                return Err(Error::AlreadyExists {
                    message: format!("the policy {name} already exists"),
                    resource_id: name.to_string(),
                    resource_arn: Some(arn.clone()),
                });
            }
            tx.insert_policy(&policy)?;
            tx.insert_policy_version(&version)?;
            tx.put_tags(&arn, tags)?;
            policy_changed(tx, &caller.account, name, now)
        })?;
        tracing::info!(account = %caller.account, policy = %name, "policy created");
        Ok(version)
    }

    /// GetPolicy: the policy and its default version.
    pub fn get_policy(&self, caller: &Caller, name: &PolicyName) -> Result<(Policy, PolicyVersion), Error> {
        registry::read(self.store(), |tx| {
            let policy = find_policy(tx, &caller.account, name)?;
            let version = find_version(tx, &policy, policy.default_version)?;
            Ok((policy, version))
        })
    }

    /// DeletePolicy: refused while the policy is attached or has versions besides the default.
    pub fn delete_policy(&self, caller: &Caller, name: &PolicyName) -> Result<(), Error> {
        let now = self.now();
        let arn = self.policy_arn(&caller.account, name);
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            find_policy(tx, &caller.account, name)?;
            if tx.count_policy_targets(&caller.account, name)? + tx.count_policy_group_targets(&caller.account, name)?
                > 0
            {
                return Err(Error::DeleteConflict(format!(
                    "the policy cannot be deleted as it is attached to one or more principals (name={name})"
                )));
            }
            if tx.list_policy_versions(&caller.account, name)?.len() > 1 {
                return Err(Error::DeleteConflict(format!(
                    "the policy cannot be deleted as versions other than the default version exist (name={name})"
                )));
            }
            tx.delete_policy(&caller.account, name)?;
            tx.delete_tags(&arn)?;
            policy_changed(tx, &caller.account, name, now)
        })?;
        tracing::info!(account = %caller.account, policy = %name, "policy deleted");
        Ok(())
    }

    /// ListPolicies, by creation date.
    pub fn list_policies(&self, caller: &Caller, page: &PageRequest) -> Result<Page<Policy>, Error> {
        registry::read(self.store(), |tx| tx.list_policies(&caller.account, page).map_err(Error::from))
    }

    /// CreatePolicyVersion: a sixth version is refused; `set_as_default` makes it the default.
    /// Returns the policy as it is after the call, and the new version.
    pub fn create_policy_version(
        &self,
        caller: &Caller,
        name: &PolicyName,
        document: &str,
        set_as_default: bool,
    ) -> Result<(Policy, PolicyVersion), Error> {
        check_document(document)?;
        let now = self.now();
        let generation_id = uuid_v4()?;
        let created = registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let mut policy = find_policy(tx, &caller.account, name)?;
            if tx.list_policy_versions(&caller.account, name)?.len() >= MAX_POLICY_VERSIONS {
                return Err(Error::VersionsLimitExceeded(format!(
                    "the policy {name} already has the maximum number of versions ({MAX_POLICY_VERSIONS}): delete one first"
                )));
            }
            let version = PolicyVersion {
                account: caller.account.clone(),
                policy_name: name.clone(),
                version: policy.next_version,
                document: document.to_owned(),
                created_at: now,
            };
            policy.next_version += 1;
            if set_as_default {
                policy.default_version = version.version;
            }
            policy.generation_id = generation_id.clone();
            policy.last_modified = now;
            tx.insert_policy_version(&version)?;
            tx.update_policy(&policy)?;
            if set_as_default {
                policy_changed(tx, &caller.account, name, now)?;
            }
            Ok((policy, version))
        })?;
        tracing::info!(account = %caller.account, policy = %name, version = created.1.version, set_as_default, "policy version created");
        Ok(created)
    }

    /// ListPolicyVersions, newest first, with the policy (which names the default).
    pub fn list_policy_versions(
        &self,
        caller: &Caller,
        name: &PolicyName,
    ) -> Result<(Policy, Vec<PolicyVersion>), Error> {
        registry::read(self.store(), |tx| {
            let policy = find_policy(tx, &caller.account, name)?;
            let versions = tx.list_policy_versions(&caller.account, name)?;
            Ok((policy, versions))
        })
    }

    /// GetPolicyVersion, with the policy (which names the default).
    pub fn get_policy_version(
        &self,
        caller: &Caller,
        name: &PolicyName,
        version: i64,
    ) -> Result<(Policy, PolicyVersion), Error> {
        registry::read(self.store(), |tx| {
            let policy = find_policy(tx, &caller.account, name)?;
            let found = find_version(tx, &policy, version)?;
            Ok((policy, found))
        })
    }

    /// SetDefaultPolicyVersion.
    pub fn set_default_policy_version(&self, caller: &Caller, name: &PolicyName, version: i64) -> Result<(), Error> {
        let now = self.now();
        let generation_id = uuid_v4()?;
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let mut policy = find_policy(tx, &caller.account, name)?;
            find_version(tx, &policy, version)?;
            if policy.default_version == version {
                return Ok(());
            }
            policy.default_version = version;
            policy.generation_id = generation_id.clone();
            policy.last_modified = now;
            tx.update_policy(&policy)?;
            policy_changed(tx, &caller.account, name, now)
        })?;
        tracing::info!(account = %caller.account, policy = %name, version, "default policy version set");
        Ok(())
    }

    /// DeletePolicyVersion: the default version cannot be deleted.
    pub fn delete_policy_version(&self, caller: &Caller, name: &PolicyName, version: i64) -> Result<(), Error> {
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let policy = find_policy(tx, &caller.account, name)?;
            find_version(tx, &policy, version)?;
            if policy.default_version == version {
                return Err(Error::DeleteConflict(format!(
                    "version {version} is the default version of the policy {name}: make another version the default first"
                )));
            }
            tx.delete_policy_version(&caller.account, name, version)?;
            Ok(())
        })?;
        tracing::info!(account = %caller.account, policy = %name, version, "policy version deleted");
        Ok(())
    }

    /// AttachPolicy (and the deprecated AttachPrincipalPolicy): `target` is the ARN of one of
    /// the caller's certificates or thing groups. Attaching twice changes nothing.
    pub fn attach_policy(&self, caller: &Caller, name: &PolicyName, target: &str) -> Result<(), Error> {
        let target = self.policy_target(&caller.account, target)?;
        let now = self.now();
        let attached = registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            find_policy(tx, &caller.account, name)?;
            let (count, attached) = match &target {
                PolicyTarget::Certificate(certificate) => {
                    let found = tx
                        .get_certificate(&caller.account, certificate)?
                        .ok_or_else(|| no_such_certificate(certificate))?;
                    if found.status == CertificateStatus::PendingTransfer {
                        return Err(Error::CertificateState(
                            "the certificate is being transferred: cancel or complete the transfer first".into(),
                        ));
                    }
                    let count = tx.count_certificate_policies(&caller.account, certificate)?;
                    (count, tx.attach_policy(&caller.account, name, certificate, now)?)
                }
                PolicyTarget::ThingGroup(group) => {
                    find_group(tx, &caller.account, group)?;
                    let count = tx.count_group_policies(&caller.account, group)?;
                    (count, tx.attach_group_policy(&caller.account, name, group, now)?)
                }
            };
            if !attached {
                return Ok(false);
            }
            // Counted before attaching, so that attaching again never hits the limit; the
            // refusal rolls the attachment back.
            if count >= MAX_POLICIES_PER_TARGET {
                return Err(Error::LimitExceeded(format!(
                    "at most {MAX_POLICIES_PER_TARGET} policies may be attached to a certificate or thing group"
                )));
            }
            target_changed(tx, &caller.account, &target, now)?;
            Ok(true)
        })?;
        if attached {
            tracing::info!(account = %caller.account, policy = %name, target = ?target, "policy attached");
        }
        Ok(())
    }

    /// DetachPolicy (and the deprecated DetachPrincipalPolicy). Detaching a policy that is not
    /// attached changes nothing.
    pub fn detach_policy(&self, caller: &Caller, name: &PolicyName, target: &str) -> Result<(), Error> {
        let target = self.policy_target(&caller.account, target)?;
        let now = self.now();
        let detached = registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            find_policy(tx, &caller.account, name)?;
            let detached = match &target {
                PolicyTarget::Certificate(certificate) => {
                    tx.get_certificate(&caller.account, certificate)?
                        .ok_or_else(|| no_such_certificate(certificate))?;
                    tx.detach_policy(&caller.account, name, certificate)?
                }
                PolicyTarget::ThingGroup(group) => {
                    find_group(tx, &caller.account, group)?;
                    tx.detach_group_policy(&caller.account, name, group)?
                }
            };
            if !detached {
                return Ok::<_, Error>(false);
            }
            target_changed(tx, &caller.account, &target, now)?;
            Ok(true)
        })?;
        if detached {
            tracing::info!(account = %caller.account, policy = %name, target = ?target, "policy detached");
        }
        Ok(())
    }

    /// ListAttachedPolicies (and the deprecated ListPrincipalPolicies), by name. For a thing
    /// group, `recursive` adds the policies of its ancestors (what its members inherit).
    pub fn list_attached_policies(
        &self,
        caller: &Caller,
        target: &str,
        recursive: bool,
        page: &KeyPageRequest,
    ) -> Result<KeyPage<Policy>, Error> {
        let target = self.policy_target(&caller.account, target)?;
        registry::read(self.store(), |tx| match &target {
            PolicyTarget::Certificate(certificate) => {
                tx.get_certificate(&caller.account, certificate)?.ok_or_else(|| no_such_certificate(certificate))?;
                tx.certificate_policies(&caller.account, certificate, page).map_err(Error::from)
            }
            PolicyTarget::ThingGroup(group) => {
                find_group(tx, &caller.account, group)?;
                let mut groups = vec![group.clone()];
                if recursive {
                    groups.extend(tx.thing_group_ancestors(&caller.account, group, MAX_GROUP_DEPTH)?);
                }
                tx.group_policies(&caller.account, &groups, page).map_err(Error::from)
            }
        })
    }

    /// ListTargetsForPolicy (and the deprecated ListPolicyPrincipals): the certificates (by ID)
    /// then the thing groups (by name) a policy is attached to.
    pub fn list_targets_for_policy(
        &self,
        caller: &Caller,
        name: &PolicyName,
        page: &KeyPageRequest,
    ) -> Result<KeyPage<PolicyTarget>, Error> {
        registry::read(self.store(), |tx| {
            find_policy(tx, &caller.account, name)?;
            tx.policy_targets_all(&caller.account, name, page).map_err(Error::from)
        })
    }

    /// The ARN of a policy target.
    pub fn policy_target_arn(&self, account: &AccountId, target: &PolicyTarget) -> String {
        match target {
            PolicyTarget::Certificate(id) => self.certificate_arn(account, id),
            PolicyTarget::ThingGroup(group) => self.thing_group_arn(account, group),
        }
    }

    /// What a policy target ARN names: one of the caller's certificates
    /// (`arn:aws:iot:<region>:<account>:cert/<id>`) or thing groups (`...:thinggroup/<name>`).
    /// Another account's or region's does not exist here (`NotFound`).
    pub(crate) fn policy_target(&self, account: &AccountId, target: &str) -> Result<PolicyTarget, Error> {
        let is_group = target.starts_with("arn:")
            && target.splitn(6, ':').nth(5).is_some_and(|resource| resource.starts_with("thinggroup/"));
        if is_group {
            return self.thing_group_from_arn(account, target).map(PolicyTarget::ThingGroup);
        }
        self.certificate_principal(account, target).map(PolicyTarget::Certificate)
    }

    /// GetEffectivePolicies: the policies that apply to the principal (attached to it, or
    /// inherited from the thing groups of the things attached to it); the thing must exist,
    /// and adds nothing beyond the principal's. Returns each policy's name and default-version
    /// document.
    pub fn effective_policies(
        &self,
        caller: &Caller,
        principal: Option<&str>,
        thing: Option<&certfleet_registry::ThingName>,
    ) -> Result<Vec<(PolicyName, String)>, Error> {
        let certificate =
            principal.map(|principal| self.certificate_principal(&caller.account, principal)).transpose()?;
        registry::read(self.store(), |tx| {
            if let Some(thing) = thing {
                tx.get_thing(&caller.account, thing)?
                    .ok_or_else(|| Error::NotFound(format!("the thing {thing} does not exist")))?;
            }
            let Some(certificate) = &certificate else { return Ok(Vec::new()) };
            tx.get_certificate(&caller.account, certificate)?
                .ok_or_else(|| no_such_principal(principal.unwrap_or_default()))?;
            tx.certificate_policy_documents(&caller.account, certificate).map_err(Error::from)
        })
    }

    /// What the gateway evaluates for a device, in one read: the name and default-version
    /// document of every policy that applies to a certificate (attached to it, or to a group of
    /// a thing attached to it, or to an ancestor of such a group), by name, and those groups.
    pub fn principal_policies(
        &self,
        account: &AccountId,
        certificate: &CertificateId,
    ) -> Result<PrincipalPolicies, Error> {
        let (documents, groups) = registry::read(self.store(), |tx| {
            // A claim certificate made by CreateProvisioningClaim may do one thing: provision
            // with its template. Whatever is attached to it or its things is not looked at.
            if let Some(claim) = tx.get_provisioning_claim(account, certificate)? {
                return Ok((vec![(claim_policy_name(), claim_policy_document(&claim.template_name))], Vec::new()));
            }
            let documents = tx.certificate_policy_documents(account, certificate)?;
            let groups = tx.certificate_groups(account, certificate)?;
            Ok::<_, Error>((documents, groups))
        })?;
        Ok(PrincipalPolicies {
            policies: documents.into_iter().map(|(name, document)| (name.to_string(), document)).collect(),
            groups: groups.into_iter().map(|group| group.to_string()).collect(),
        })
    }

    /// The certificate a principal names: `arn:<partition>:iot:<region>:<account>:cert/<id>`
    /// of this deployment and account. Another account's or region's certificate does not
    /// exist here; Cognito identities are not supported.
    pub(crate) fn certificate_principal(&self, account: &AccountId, principal: &str) -> Result<CertificateId, Error> {
        let invalid = || {
            Error::InvalidRequest(format!(
                "the principal {principal:?} is not a certificate ARN (arn:aws:iot:<region>:<account>:cert/<certificateId>)"
            ))
        };
        let Some(rest) = principal.strip_prefix("arn:") else {
            if principal.split_once(':').is_some_and(|(region, id)| !region.is_empty() && !id.is_empty()) {
                return Err(Error::InvalidRequest("Amazon Cognito identities are not supported as principals".into()));
            }
            return Err(invalid());
        };
        let parts: Vec<&str> = rest.splitn(5, ':').collect();
        let [partition, service, region, owner, resource] = parts[..] else { return Err(invalid()) };
        if service != "iot" {
            return Err(invalid());
        }
        let id = resource.strip_prefix("cert/").ok_or_else(invalid)?;
        let id = CertificateId::parse(id).map_err(|_| invalid())?;
        if partition != self.config().partition || region != self.config().region || owner != account.as_str() {
            return Err(no_such_principal(principal));
        }
        Ok(id)
    }
}

/// Compiles a document; a document the gateway could not evaluate is never stored.
fn check_document(document: &str) -> Result<(), Error> {
    certfleet_policy::Policy::parse(document).map(drop).map_err(|error| Error::MalformedPolicy(error.to_string()))
}

fn find_policy(tx: &mut Tx<'_>, account: &AccountId, name: &PolicyName) -> Result<Policy, Error> {
    tx.get_policy(account, name)?.ok_or_else(|| Error::NotFound(format!("the policy {name} does not exist")))
}

fn find_version(tx: &mut Tx<'_>, policy: &Policy, version: i64) -> Result<PolicyVersion, Error> {
    tx.get_policy_version(&policy.account, &policy.name, version)?
        .ok_or_else(|| Error::NotFound(format!("the policy {} has no version {version}", policy.name)))
}

fn no_such_certificate(certificate: &CertificateId) -> Error {
    Error::NotFound(format!("the certificate {certificate} does not exist"))
}

/// Tells the change feed what an attachment changed: a certificate's policies, or a group's.
fn target_changed(
    tx: &mut Tx<'_>,
    account: &AccountId,
    target: &PolicyTarget,
    now: OffsetDateTime,
) -> Result<(), Error> {
    match target {
        PolicyTarget::Certificate(certificate) => certificate_changed(tx, account, certificate, now),
        PolicyTarget::ThingGroup(group) => group_changed(tx, account, group, now),
    }
}

pub(crate) fn no_such_principal(principal: &str) -> Error {
    Error::NotFound(format!("the certificate {principal} does not exist"))
}

/// Tells the change feed that what a policy allows changed (a new default, a deletion).
fn policy_changed(tx: &mut Tx<'_>, account: &AccountId, name: &PolicyName, now: OffsetDateTime) -> Result<(), Error> {
    tx.record_change(account, ChangeKind::Policy, name.as_str(), now).map_err(Error::from)
}

/// Tells the change feed that a certificate's attachments changed.
pub(crate) fn certificate_changed(
    tx: &mut Tx<'_>,
    account: &AccountId,
    certificate: &CertificateId,
    now: OffsetDateTime,
) -> Result<(), Error> {
    tx.record_change(account, ChangeKind::Certificate, certificate.as_str(), now).map_err(Error::from)
}

/// The name the built-in policy of provisioning claims is known by in the gateway's snapshot.
fn claim_policy_name() -> PolicyName {
    PolicyName::parse("certfleet-provisioning-claim").expect("a valid policy name")
}

/// The policy of a claim certificate made by CreateProvisioningClaim (docs/provisioning.md):
/// connect, and the fleet provisioning topics of its one template. `template` is a template name
/// (`[0-9A-Za-z_-]+`), which holds no policy wildcard.
pub(crate) fn claim_policy_document(template: &str) -> String {
    let topics = [
        "$aws/certificates/create/*".to_owned(),
        "$aws/certificates/create-from-csr/*".to_owned(),
        format!("$aws/provisioning-templates/{template}/provision/*"),
    ];
    let resources =
        |kind: &str| -> Vec<String> { topics.iter().map(|topic| format!("arn:aws:iot:*:*:{kind}/{topic}")).collect() };
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"},
            {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": resources("topic")},
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": resources("topicfilter")},
        ],
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use certfleet_policy::{Action, Context, Policy, Request, evaluate};

    use super::*;

    /// A claim made by CreateProvisioningClaim reaches its template's provisioning topics and
    /// nothing else.
    #[test]
    fn the_claim_policy_allows_only_its_templates_topics() {
        let policies = [Policy::parse(&claim_policy_document("Fleet_1")).unwrap()];
        let context = Context::default();
        let arn = |kind: &str, topic: &str| format!("arn:aws:iot:us-east-1:123456789012:{kind}/{topic}");
        let check = |action: Action, resource: String, allowed: bool| {
            let request = Request { action, resource: &resource, context: &context };
            assert_eq!(evaluate(&policies, &request).is_allowed(), allowed, "{action:?} {resource}");
        };
        check(Action::Connect, arn("client", "anything"), true);
        for topic in [
            "$aws/certificates/create/json",
            "$aws/certificates/create-from-csr/cbor",
            "$aws/provisioning-templates/Fleet_1/provision/json",
        ] {
            check(Action::Publish, arn("topic", topic), true);
            check(Action::Receive, arn("topic", &format!("{topic}/accepted")), true);
            check(Action::Subscribe, arn("topicfilter", &format!("{topic}/rejected")), true);
        }
        for topic in ["$aws/provisioning-templates/Other/provision/json", "devices/x", "$aws/things/t/shadow/update"] {
            check(Action::Publish, arn("topic", topic), false);
            check(Action::Subscribe, arn("topicfilter", topic), false);
            check(Action::Receive, arn("topic", topic), false);
        }
    }
}
