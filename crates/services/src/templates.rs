//! Provisioning templates (CreateProvisioningTemplate, DescribeProvisioningTemplate,
//! ListProvisioningTemplates, UpdateProvisioningTemplate, DeleteProvisioningTemplate) and their
//! versions (Create/Describe/List/DeleteProvisioningTemplateVersion).
//!
//! A JITP template is named by a CA's registrationConfig (`templateName`) instead of an inline
//! `templateBody`; a FLEET_PROVISIONING template (AWS's default type) is what devices provision
//! with (claim certificates, RegisterThing over MQTT: the gateway) and may carry a
//! pre-provisioning hook, an `https://` URL the gateway POSTs to. A body is parsed and checked
//! as its type's language ([`crate::provisioning`]) whenever it is stored. A template has at
//! most [`MAX_TEMPLATE_VERSIONS`] versions; its default version cannot be deleted; a template
//! named by a CA cannot be deleted (DeleteConflict).

use certfleet_registry::{
    self as registry, AccountId, KeyPage, KeyPageRequest, PageRequest, ProvisioningHook, ProvisioningTemplate,
    ProvisioningTemplateVersion, Tx,
};

use crate::ids::uuid_v4;
use crate::provisioning::{MAX_BODY_CHARS, Template, TemplateKind};
use crate::{Caller, Error, Services};

/// The type of template a CA's registrationConfig may name.
pub const JITP: &str = "JITP";
/// The type of template devices provision with (AWS's default).
pub const FLEET_PROVISIONING: &str = "FLEET_PROVISIONING";
/// AWS's limit of versions per provisioning template.
pub const MAX_TEMPLATE_VERSIONS: usize = 5;
/// The one pre-provisioning hook payload version AWS defines, and the default.
pub const HOOK_PAYLOAD_VERSION: &str = "2020-04-01";

/// CreateProvisioningTemplate's request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TemplateDefinition {
    pub name: String,
    pub description: Option<String>,
    pub body: String,
    pub enabled: bool,
    pub role_arn: String,
    /// `JITP` or `FLEET_PROVISIONING` (AWS's default when absent).
    pub template_type: Option<String>,
    pub pre_provisioning_hook: Option<HookDefinition>,
}

/// A `preProvisioningHook` as requested.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HookDefinition {
    /// An `https://` URL.
    pub target: String,
    /// Default [`HOOK_PAYLOAD_VERSION`].
    pub payload_version: Option<String>,
}

/// UpdateProvisioningTemplate's request: every field optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TemplateUpdate {
    pub description: Option<String>,
    pub enabled: Option<bool>,
    pub default_version: Option<i64>,
    pub role_arn: Option<String>,
    pub pre_provisioning_hook: Option<HookDefinition>,
    pub remove_pre_provisioning_hook: bool,
}

impl Services {
    /// The ARN of a provisioning template.
    pub fn provisioning_template_arn(&self, account: &AccountId, name: &str) -> String {
        self.arn(account, &format!("provisioningtemplate/{name}"))
    }

    /// CreateProvisioningTemplate: the template and its version 1.
    pub fn create_provisioning_template(
        &self,
        caller: &Caller,
        definition: &TemplateDefinition,
    ) -> Result<ProvisioningTemplate, Error> {
        check_template_name(&definition.name)?;
        let kind = match definition.template_type.as_deref() {
            None => TemplateKind::FleetProvisioning,
            Some(text) => TemplateKind::parse(text).ok_or_else(|| {
                Error::InvalidRequest(format!("unknown template type {text:?} (JITP or FLEET_PROVISIONING)"))
            })?,
        };
        check_description(definition.description.as_deref())?;
        check_role_arn(&definition.role_arn)?;
        check_body(kind, &definition.body)?;
        let hook = match &definition.pre_provisioning_hook {
            None => None,
            Some(_) if kind == TemplateKind::Jitp => {
                return Err(Error::InvalidRequest(
                    "preProvisioningHook applies to FLEET_PROVISIONING templates only".into(),
                ));
            }
            Some(hook) => Some(check_hook(hook)?),
        };
        let now = self.now();
        let record = ProvisioningTemplate {
            account: caller.account.clone(),
            name: definition.name.clone(),
            id: uuid_v4()?,
            description: definition.description.clone(),
            body: definition.body.clone(),
            enabled: definition.enabled,
            template_type: kind.as_str().into(),
            role_arn: definition.role_arn.clone(),
            default_version: 1,
            next_version: 2,
            pre_provisioning_hook: hook,
            created_at: now,
            last_modified: now,
        };
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            if let Some(existing) = tx.get_provisioning_template(&caller.account, &definition.name)? {
                return Err(Error::AlreadyExists {
                    message: format!("the provisioning template {} already exists", definition.name),
                    resource_id: existing.id,
                    resource_arn: Some(self.provisioning_template_arn(&caller.account, &definition.name)),
                });
            }
            tx.insert_provisioning_template(&record)?;
            tx.insert_provisioning_template_version(&ProvisioningTemplateVersion {
                account: caller.account.clone(),
                template_name: record.name.clone(),
                version_id: 1,
                body: record.body.clone(),
                created_at: now,
            })
            .map_err(Error::from)
        })?;
        tracing::info!(account = %caller.account, template = %record.name, kind = kind.as_str(), "provisioning template created");
        Ok(record)
    }

    /// UpdateProvisioningTemplate.
    pub fn update_provisioning_template(
        &self,
        caller: &Caller,
        name: &str,
        update: &TemplateUpdate,
    ) -> Result<(), Error> {
        check_template_name(name)?;
        check_description(update.description.as_deref())?;
        if let Some(role_arn) = &update.role_arn {
            check_role_arn(role_arn)?;
        }
        if update.remove_pre_provisioning_hook && update.pre_provisioning_hook.is_some() {
            return Err(Error::InvalidRequest("removePreProvisioningHook contradicts preProvisioningHook".into()));
        }
        let hook = update.pre_provisioning_hook.as_ref().map(check_hook).transpose()?;
        let now = self.now();
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let mut template = find_template(tx, &caller.account, name)?;
            if hook.is_some() && template.template_type != FLEET_PROVISIONING {
                return Err(Error::InvalidRequest(
                    "preProvisioningHook applies to FLEET_PROVISIONING templates only".into(),
                ));
            }
            if let Some(description) = &update.description {
                template.description = Some(description.clone());
            }
            if let Some(enabled) = update.enabled {
                template.enabled = enabled;
            }
            if let Some(role_arn) = &update.role_arn {
                template.role_arn.clone_from(role_arn);
            }
            if let Some(version_id) = update.default_version {
                let version = tx
                    .get_provisioning_template_version(&caller.account, name, version_id)?
                    .ok_or_else(|| version_not_found(name, version_id))?;
                template.default_version = version_id;
                template.body = version.body;
            }
            if hook.is_some() {
                template.pre_provisioning_hook.clone_from(&hook);
            }
            if update.remove_pre_provisioning_hook {
                template.pre_provisioning_hook = None;
            }
            template.last_modified = now;
            tx.update_provisioning_template(&template).map_err(Error::from)
        })?;
        tracing::info!(account = %caller.account, template = %name, "provisioning template updated");
        Ok(())
    }

    /// CreateProvisioningTemplateVersion: refused past [`MAX_TEMPLATE_VERSIONS`]
    /// (VersionsLimitExceeded). Returns the version and whether it is now the default.
    pub fn create_provisioning_template_version(
        &self,
        caller: &Caller,
        name: &str,
        body: &str,
        set_as_default: bool,
    ) -> Result<(ProvisioningTemplateVersion, bool), Error> {
        check_template_name(name)?;
        let now = self.now();
        let version = registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let mut template = find_template(tx, &caller.account, name)?;
            let kind = TemplateKind::parse(&template.template_type)
                .ok_or_else(|| Error::Internal(format!("a stored template type {:?}", template.template_type)))?;
            check_body(kind, body)?;
            if tx.provisioning_template_versions(&caller.account, name)?.len() >= MAX_TEMPLATE_VERSIONS {
                return Err(Error::VersionsLimitExceeded(format!(
                    "the provisioning template {name} has {MAX_TEMPLATE_VERSIONS} versions, the most it may have: delete one first"
                )));
            }
            let version = ProvisioningTemplateVersion {
                account: caller.account.clone(),
                template_name: name.to_owned(),
                version_id: template.next_version,
                body: body.to_owned(),
                created_at: now,
            };
            tx.insert_provisioning_template_version(&version)?;
            template.next_version += 1;
            if set_as_default {
                template.default_version = version.version_id;
                template.body = version.body.clone();
            }
            template.last_modified = now;
            tx.update_provisioning_template(&template)?;
            Ok::<_, Error>(version)
        })?;
        tracing::info!(account = %caller.account, template = %name, version = version.version_id, set_as_default, "provisioning template version created");
        Ok((version, set_as_default))
    }

    /// DescribeProvisioningTemplateVersion: the version and whether it is the default.
    pub fn describe_provisioning_template_version(
        &self,
        caller: &Caller,
        name: &str,
        version_id: i64,
    ) -> Result<(ProvisioningTemplateVersion, bool), Error> {
        check_template_name(name)?;
        registry::read(self.store(), |tx| {
            let template = find_template(tx, &caller.account, name)?;
            let version = tx
                .get_provisioning_template_version(&caller.account, name, version_id)?
                .ok_or_else(|| version_not_found(name, version_id))?;
            Ok((version, template.default_version == version_id))
        })
    }

    /// ListProvisioningTemplateVersions, oldest first; `after` a version ID (the page token).
    /// Each version with whether it is the default.
    pub fn list_provisioning_template_versions(
        &self,
        caller: &Caller,
        name: &str,
        page: &KeyPageRequest,
    ) -> Result<KeyPage<(ProvisioningTemplateVersion, bool)>, Error> {
        check_template_name(name)?;
        let after = match &page.after {
            None => None,
            Some(token) => {
                Some(token.parse::<i64>().map_err(|_| Error::InvalidRequest("nextToken is not valid".into()))?)
            }
        };
        registry::read(self.store(), |tx| {
            let template = find_template(tx, &caller.account, name)?;
            let mut versions: Vec<_> = tx
                .provisioning_template_versions(&caller.account, name)?
                .into_iter()
                .filter(|version| after.is_none_or(|after| version.version_id > after))
                .map(|version| {
                    let default = version.version_id == template.default_version;
                    (version, default)
                })
                .collect();
            let limit = usize::try_from(page.limit.max(1)).unwrap_or(usize::MAX);
            let next = if versions.len() > limit {
                versions.truncate(limit);
                versions.last().map(|(version, _)| version.version_id.to_string())
            } else {
                None
            };
            Ok(KeyPage { items: versions, next })
        })
    }

    /// DeleteProvisioningTemplateVersion: the default version cannot be deleted
    /// (DeleteConflict).
    pub fn delete_provisioning_template_version(
        &self,
        caller: &Caller,
        name: &str,
        version_id: i64,
    ) -> Result<(), Error> {
        check_template_name(name)?;
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let template = find_template(tx, &caller.account, name)?;
            if template.default_version == version_id {
                return Err(Error::DeleteConflict(format!(
                    "version {version_id} is the default version of the provisioning template {name}: make another version the default first"
                )));
            }
            if !tx.delete_provisioning_template_version(&caller.account, name, version_id)? {
                return Err(version_not_found(name, version_id));
            }
            Ok(())
        })?;
        tracing::info!(account = %caller.account, template = %name, version = version_id, "provisioning template version deleted");
        Ok(())
    }

    /// DescribeProvisioningTemplate.
    pub fn describe_provisioning_template(&self, caller: &Caller, name: &str) -> Result<ProvisioningTemplate, Error> {
        check_template_name(name)?;
        registry::read(self.store(), |tx| find_template(tx, &caller.account, name))
    }

    /// ListProvisioningTemplates, by name.
    pub fn list_provisioning_templates(
        &self,
        caller: &Caller,
        page: &KeyPageRequest,
    ) -> Result<KeyPage<ProvisioningTemplate>, Error> {
        registry::read(self.store(), |tx| tx.list_provisioning_templates(&caller.account, page).map_err(Error::from))
    }

    /// DeleteProvisioningTemplate: refused while a CA's registrationConfig names the template.
    pub fn delete_provisioning_template(&self, caller: &Caller, name: &str) -> Result<(), Error> {
        check_template_name(name)?;
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            find_template(tx, &caller.account, name)?;
            let mut page = PageRequest { limit: 250, ascending: true, after: None };
            loop {
                let cas = tx.list_cas(&caller.account, &page)?;
                let named = |config: &registry::RegistrationConfig| config.template_name.as_deref() == Some(name);
                if let Some(ca) = cas.items.iter().find(|ca| ca.registration_config.as_ref().is_some_and(named)) {
                    return Err(Error::DeleteConflict(format!(
                        "the provisioning template {name} is named by the registrationConfig of the CA {}",
                        ca.id
                    )));
                }
                match cas.next {
                    Some(next) => page.after = Some(next),
                    None => break,
                }
            }
            tx.delete_provisioning_template(&caller.account, name)?;
            Ok::<_, Error>(())
        })?;
        tracing::info!(account = %caller.account, template = %name, "provisioning template deleted");
        Ok(())
    }

    /// Refuses a `templateName` in a registrationConfig that is not one of the caller's JITP
    /// templates.
    pub(crate) fn check_template_reference(&self, account: &AccountId, name: &str) -> Result<(), Error> {
        let template =
            registry::read(self.store(), |tx| tx.get_provisioning_template(account, name).map_err(Error::from))?;
        match template {
            Some(template) if template.template_type == JITP => Ok(()),
            Some(_) => Err(Error::InvalidRequest(format!("the provisioning template {name} is not a JITP template"))),
            None => Err(Error::InvalidRequest(format!("the provisioning template {name} does not exist"))),
        }
    }
}

fn check_description(description: Option<&str>) -> Result<(), Error> {
    if description.is_some_and(|description| description.chars().count() > 500) {
        return Err(Error::InvalidRequest("description is at most 500 characters".into()));
    }
    Ok(())
}

fn check_role_arn(role_arn: &str) -> Result<(), Error> {
    if !(20..=2048).contains(&role_arn.chars().count()) {
        return Err(Error::InvalidRequest("provisioningRoleArn must be 20 to 2048 characters".into()));
    }
    Ok(())
}

/// A body of `kind`: parsed and checked; a FLEET_PROVISIONING template's certificate is the
/// certificate being provisioned (CertificatePem and CertificateSigningRequest are RegisterThing's).
fn check_body(kind: TemplateKind, body: &str) -> Result<(), Error> {
    if body.chars().count() > MAX_BODY_CHARS {
        return Err(Error::InvalidRequest(format!("templateBody is at most {MAX_BODY_CHARS} characters")));
    }
    let template = Template::parse_as(kind, body)?;
    if template.certificate_is_supplied() {
        return Err(Error::InvalidRequest(
            "a provisioning template's certificate is {\"Ref\": \"AWS::IoT::Certificate::Id\"}: CertificatePem and CertificateSigningRequest are for RegisterThing".into(),
        ));
    }
    Ok(())
}

/// A pre-provisioning hook: an `https://` (or `http://`) URL with a host and no user
/// information, at most 2048 characters (AWS's `targetArn`); payload version `2020-04-01`, the
/// one AWS defines. Whether `http://` is allowed is the operator's egress policy
/// (`egress.allow_http`, checked by the api), and whether the gateway may connect there is the
/// egress policy's decision when it POSTs.
fn check_hook(hook: &HookDefinition) -> Result<ProvisioningHook, Error> {
    if hook.target.chars().count() > 2048 {
        return Err(Error::InvalidRequest("preProvisioningHook targetArn is at most 2048 characters".into()));
    }
    if !hook.target.starts_with("https://") && !hook.target.starts_with("http://") {
        return Err(Error::InvalidRequest(format!(
            "preProvisioningHook targetArn {:?} must be an https:// URL (certfleet calls a webhook, not a Lambda function)",
            hook.target
        )));
    }
    crate::topic_rules::check_url_syntax(&hook.target, "preProvisioningHook targetArn")?;
    let payload_version = hook.payload_version.clone().unwrap_or_else(|| HOOK_PAYLOAD_VERSION.to_owned());
    if payload_version != HOOK_PAYLOAD_VERSION {
        return Err(Error::InvalidRequest(format!(
            "preProvisioningHook payloadVersion must be {HOOK_PAYLOAD_VERSION}, got {payload_version:?}"
        )));
    }
    Ok(ProvisioningHook { target: hook.target.clone(), payload_version })
}

fn version_not_found(name: &str, version_id: i64) -> Error {
    Error::NotFound(format!("the provisioning template {name} has no version {version_id}"))
}

/// AWS's template names: `[0-9A-Za-z_-]+`, 1 to 36 characters.
pub(crate) fn check_template_name(name: &str) -> Result<(), Error> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"_-".contains(&b);
    if (1..=36).contains(&name.len()) && name.bytes().all(allowed) {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!("templateName must match [0-9A-Za-z_-]+ (1 to 36 characters), got {name:?}")))
    }
}

pub(crate) fn find_template(tx: &mut Tx<'_>, account: &AccountId, name: &str) -> Result<ProvisioningTemplate, Error> {
    tx.get_provisioning_template(account, name)?
        .ok_or_else(|| Error::NotFound(format!("the provisioning template {name} does not exist")))
}
