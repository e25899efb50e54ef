//! The registry operations of provisioning templates, written once over [`Conn`](crate::conn).

use crate::Error;
use crate::conn::{Row, Value};
use crate::model::*;
use crate::tx::{Tx, from_millis, millis};

const TEMPLATE_COLUMNS: &str = "account_id, name, id, description, body, enabled, template_type, role_arn, default_version, created_at, last_modified";

impl<'a> Tx<'a> {
    /// Adds a provisioning template.
    pub fn insert_provisioning_template(&mut self, template: &ProvisioningTemplate) -> Result<(), Error> {
        self.conn.execute(
            &format!("INSERT INTO provisioning_templates ({TEMPLATE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"),
            &[
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

    /// Deletes a provisioning template. Returns whether it existed.
    pub fn delete_provisioning_template(&mut self, account: &AccountId, name: &str) -> Result<bool, Error> {
        let key = [Value::from(account.as_str()), Value::from(name)];
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
}

fn template_from_row(row: &Row) -> Result<ProvisioningTemplate, Error> {
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
    })
}
