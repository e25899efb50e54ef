//! The registry operations of provisioning templates, their versions and provisioning claims,
//! written once over [`Conn`](crate::conn).

use certfleet_pki::CertificateId;

use crate::Error;
use crate::conn::{Row, Value};
use crate::model::*;
use crate::tx::{Tx, cert_id, from_millis, millis};

const TEMPLATE_COLUMNS: &str = "account_id, name, id, description, body, enabled, template_type, role_arn, default_version, created_at, last_modified, next_version, hook_target, hook_payload_version";

const VERSION_COLUMNS: &str = "account_id, template_name, version_id, body, created_at";

const CLAIM_COLUMNS: &str = "account_id, certificate_id, template_name, expires_at, created_at";

impl<'a> Tx<'a> {
    /// Adds a provisioning template (its versions are added with
    /// [`insert_provisioning_template_version`](Self::insert_provisioning_template_version)).
    pub fn insert_provisioning_template(&mut self, template: &ProvisioningTemplate) -> Result<(), Error> {
        self.conn.execute(
            &format!("INSERT INTO provisioning_templates ({TEMPLATE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"),
            &template_values(template),
        )?;
        Ok(())
    }

    /// Rewrites a provisioning template's row (everything but its account, name, ID, type and
    /// creation date).
    pub fn update_provisioning_template(&mut self, template: &ProvisioningTemplate) -> Result<(), Error> {
        self.conn.execute(
            "UPDATE provisioning_templates SET description = $1, body = $2, enabled = $3, role_arn = $4, default_version = $5, last_modified = $6, next_version = $7, hook_target = $8, hook_payload_version = $9 WHERE account_id = $10 AND name = $11",
            &[
                template.description.as_deref().into(),
                template.body.as_str().into(),
                i64::from(template.enabled).into(),
                template.role_arn.as_str().into(),
                template.default_version.into(),
                millis(template.last_modified).into(),
                template.next_version.into(),
                template.pre_provisioning_hook.as_ref().map(|hook| hook.target.as_str()).into(),
                template.pre_provisioning_hook.as_ref().map(|hook| hook.payload_version.as_str()).into(),
                template.account.as_str().into(),
                template.name.as_str().into(),
            ],
        )?;
        Ok(())
    }

    /// A provisioning template of an account.
    pub fn get_provisioning_template(
        &mut self,
        account: &AccountId,
        name: &str,
    ) -> Result<Option<ProvisioningTemplate>, Error> {
        let rows = self.conn.query(
            &format!("SELECT {TEMPLATE_COLUMNS} FROM provisioning_templates WHERE account_id = $1 AND name = $2"),
            &[account.as_str().into(), name.into()],
        )?;
        rows.first().map(template_from_row).transpose()
    }

    /// Deletes a provisioning template and its versions. Returns whether it existed.
    pub fn delete_provisioning_template(&mut self, account: &AccountId, name: &str) -> Result<bool, Error> {
        let key = [Value::from(account.as_str()), Value::from(name)];
        self.conn
            .execute("DELETE FROM provisioning_template_versions WHERE account_id = $1 AND template_name = $2", &key)?;
        Ok(self.conn.execute("DELETE FROM provisioning_templates WHERE account_id = $1 AND name = $2", &key)? == 1)
    }

    /// A page of an account's provisioning templates, by name.
    pub fn list_provisioning_templates(
        &mut self,
        account: &AccountId,
        page: &KeyPageRequest,
    ) -> Result<KeyPage<ProvisioningTemplate>, Error> {
        let (rows, next) = self.key_page(
            &format!("SELECT {TEMPLATE_COLUMNS} FROM provisioning_templates WHERE account_id = $1"),
            vec![account.as_str().into()],
            "name",
            1,
            page,
        )?;
        Ok(KeyPage { items: rows.iter().map(template_from_row).collect::<Result<_, _>>()?, next })
    }

    // ---- versions ---------------------------------------------------------------------------

    /// Adds a version of a provisioning template.
    pub fn insert_provisioning_template_version(&mut self, version: &ProvisioningTemplateVersion) -> Result<(), Error> {
        self.conn.execute(
            &format!("INSERT INTO provisioning_template_versions ({VERSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5)"),
            &[
                version.account.as_str().into(),
                version.template_name.as_str().into(),
                version.version_id.into(),
                version.body.as_str().into(),
                millis(version.created_at).into(),
            ],
        )?;
        Ok(())
    }

    /// One version of a provisioning template.
    pub fn get_provisioning_template_version(
        &mut self,
        account: &AccountId,
        template: &str,
        version_id: i64,
    ) -> Result<Option<ProvisioningTemplateVersion>, Error> {
        let rows = self.conn.query(
            &format!("SELECT {VERSION_COLUMNS} FROM provisioning_template_versions WHERE account_id = $1 AND template_name = $2 AND version_id = $3"),
            &[account.as_str().into(), template.into(), version_id.into()],
        )?;
        rows.first().map(version_from_row).transpose()
    }

    /// Every version of a provisioning template (a handful: services bound them), oldest first.
    pub fn provisioning_template_versions(
        &mut self,
        account: &AccountId,
        template: &str,
    ) -> Result<Vec<ProvisioningTemplateVersion>, Error> {
        let rows = self.conn.query(
            &format!("SELECT {VERSION_COLUMNS} FROM provisioning_template_versions WHERE account_id = $1 AND template_name = $2 ORDER BY version_id"),
            &[account.as_str().into(), template.into()],
        )?;
        rows.iter().map(version_from_row).collect()
    }

    /// Deletes one version of a provisioning template. Returns whether it existed.
    pub fn delete_provisioning_template_version(
        &mut self,
        account: &AccountId,
        template: &str,
        version_id: i64,
    ) -> Result<bool, Error> {
        Ok(self.conn.execute(
            "DELETE FROM provisioning_template_versions WHERE account_id = $1 AND template_name = $2 AND version_id = $3",
            &[account.as_str().into(), template.into(), version_id.into()],
        )? == 1)
    }

    // ---- claims -----------------------------------------------------------------------------

    /// Records which template a claim certificate may provision with.
    pub fn insert_provisioning_claim(&mut self, claim: &ProvisioningClaim) -> Result<(), Error> {
        self.conn.execute(
            &format!("INSERT INTO provisioning_claims ({CLAIM_COLUMNS}) VALUES ($1, $2, $3, $4, $5)"),
            &[
                claim.account.as_str().into(),
                claim.certificate_id.as_str().into(),
                claim.template_name.as_str().into(),
                millis(claim.expires_at).into(),
                millis(claim.created_at).into(),
            ],
        )?;
        Ok(())
    }

    /// The claim a certificate is, if it is one.
    pub fn get_provisioning_claim(
        &mut self,
        account: &AccountId,
        certificate: &CertificateId,
    ) -> Result<Option<ProvisioningClaim>, Error> {
        let rows = self.conn.query(
            &format!("SELECT {CLAIM_COLUMNS} FROM provisioning_claims WHERE account_id = $1 AND certificate_id = $2"),
            &[account.as_str().into(), certificate.as_str().into()],
        )?;
        rows.first().map(claim_from_row).transpose()
    }
}

fn template_values(template: &ProvisioningTemplate) -> [Value; 14] {
    [
        template.account.as_str().into(),
        template.name.as_str().into(),
        template.id.as_str().into(),
        template.description.as_deref().into(),
        template.body.as_str().into(),
        i64::from(template.enabled).into(),
        template.template_type.as_str().into(),
        template.role_arn.as_str().into(),
        template.default_version.into(),
        millis(template.created_at).into(),
        millis(template.last_modified).into(),
        template.next_version.into(),
        template.pre_provisioning_hook.as_ref().map(|hook| hook.target.as_str()).into(),
        template.pre_provisioning_hook.as_ref().map(|hook| hook.payload_version.as_str()).into(),
    ]
}

fn template_from_row(row: &Row) -> Result<ProvisioningTemplate, Error> {
    let pre_provisioning_hook = match (row.opt_text(12)?, row.opt_text(13)?) {
        (Some(target), Some(payload_version)) => Some(ProvisioningHook { target, payload_version }),
        _ => None,
    };
    Ok(ProvisioningTemplate {
        account: AccountId::parse(&row.text(0)?)?,
        name: row.text(1)?,
        id: row.text(2)?,
        description: row.opt_text(3)?,
        body: row.text(4)?,
        enabled: row.int(5)? != 0,
        template_type: row.text(6)?,
        role_arn: row.text(7)?,
        default_version: row.int(8)?,
        created_at: from_millis(row.int(9)?)?,
        last_modified: from_millis(row.int(10)?)?,
        next_version: row.int(11)?,
        pre_provisioning_hook,
    })
}

fn version_from_row(row: &Row) -> Result<ProvisioningTemplateVersion, Error> {
    Ok(ProvisioningTemplateVersion {
        account: AccountId::parse(&row.text(0)?)?,
        template_name: row.text(1)?,
        version_id: row.int(2)?,
        body: row.text(3)?,
        created_at: from_millis(row.int(4)?)?,
    })
}

fn claim_from_row(row: &Row) -> Result<ProvisioningClaim, Error> {
    Ok(ProvisioningClaim {
        account: AccountId::parse(&row.text(0)?)?,
        certificate_id: cert_id(&row.text(1)?)?,
        template_name: row.text(2)?,
        expires_at: from_millis(row.int(3)?)?,
        created_at: from_millis(row.int(4)?)?,
    })
}
