//! Provisioning templates (CreateProvisioningTemplate, DescribeProvisioningTemplate,
//! ListProvisioningTemplates, DeleteProvisioningTemplate): named templates a CA's
//! registrationConfig may refer to by `templateName` instead of carrying a `templateBody`.
//!
//! Only JITP templates are supported (fleet provisioning, which needs claim certificates and
//! RegisterThing, is not). A template's body is checked like an inline one when it is created;
//! a template named by a CA cannot be deleted (DeleteConflict).

use certfleet_registry::{self as registry, AccountId, KeyPage, KeyPageRequest, PageRequest, ProvisioningTemplate, Tx};

use crate::ids::uuid_v4;
use crate::provisioning::Template;
use crate::{Caller, Error, Services};

/// The type of template certfleet applies.
pub const JITP: &str = "JITP";

/// CreateProvisioningTemplate's request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TemplateDefinition {
    pub name: String,
    pub description: Option<String>,
    pub body: String,
    pub enabled: bool,
    pub role_arn: String,
    /// `JITP` or `FLEET_PROVISIONING` (AWS's default, refused).
    pub template_type: Option<String>,
}

impl Services {
    /// The ARN of a provisioning template.
    pub fn provisioning_template_arn(&self, account: &AccountId, name: &str) -> String {
        self.arn(account, &format!("provisioningtemplate/{name}"))
    }

    /// CreateProvisioningTemplate.
    pub fn create_provisioning_template(
        &self,
        caller: &Caller,
        definition: &TemplateDefinition,
    ) -> Result<ProvisioningTemplate, Error> {
        check_template_name(&definition.name)?;
        match definition.template_type.as_deref() {
            Some(JITP) => {}
            Some("FLEET_PROVISIONING") | None => {
                return Err(Error::InvalidRequest("only JITP provisioning templates are supported (type JITP)".into()));
            }
            Some(other) => return Err(Error::InvalidRequest(format!("unknown template type {other:?}"))),
        }
        if definition.description.as_ref().is_some_and(|description| description.len() > 500) {
            return Err(Error::InvalidRequest("description is at most 500 characters".into()));
        }
        if definition.body.len() > 10240 {
            return Err(Error::InvalidRequest("templateBody is at most 10240 characters".into()));
        }
        if !(20..=2048).contains(&definition.role_arn.len()) {
            return Err(Error::InvalidRequest("provisioningRoleArn must be 20 to 2048 characters".into()));
        }
        Template::parse(&definition.body)?;
        let now = self.now();
        let record = ProvisioningTemplate {
            account: caller.account.clone(),
            name: definition.name.clone(),
            id: uuid_v4()?,
            description: definition.description.clone(),
            body: definition.body.clone(),
            enabled: definition.enabled,
            template_type: JITP.into(),
            role_arn: definition.role_arn.clone(),
            default_version: 1,
            next_version: 2,
            pre_provisioning_hook: None,
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
            tx.insert_provisioning_template(&record).map_err(Error::from)
        })?;
        tracing::info!(account = %caller.account, template = %record.name, "provisioning template created");
        Ok(record)
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

/// AWS's template names: `[0-9A-Za-z_-]+`, 1 to 36 characters.
fn check_template_name(name: &str) -> Result<(), Error> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"_-".contains(&b);
    if (1..=36).contains(&name.len()) && name.bytes().all(allowed) {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!("templateName must match [0-9A-Za-z_-]+ (1 to 36 characters), got {name:?}")))
    }
}

fn find_template(tx: &mut Tx<'_>, account: &AccountId, name: &str) -> Result<ProvisioningTemplate, Error> {
    tx.get_provisioning_template(account, name)?
        .ok_or_else(|| Error::NotFound(format!("the provisioning template {name} does not exist")))
}
