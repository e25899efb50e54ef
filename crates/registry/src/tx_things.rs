//! The registry operations of policies (their versions and attachments to certificates) and of
//! things (their attributes and attached certificates), written once over [`Conn`](crate::conn).

use std::collections::BTreeMap;

use certfleet_pki::CertificateId;
use time::OffsetDateTime;

use crate::Error;
use crate::conn::{Row, Value};
use crate::model::*;
use crate::tx::{Tx, cert_id, from_millis, millis, parse_text};

const POLICY_COLUMNS: &str =
    "account_id, name, default_version, next_version, generation_id, created_at, last_modified";
const VERSION_COLUMNS: &str = "account_id, policy_name, version, document, created_at";
const POLICY_COLUMNS_OF_P: &str =
    "p.account_id, p.name, p.default_version, p.next_version, p.generation_id, p.created_at, p.last_modified";
const THING_COLUMNS: &str = "account_id, name, id, type_name, version, created_at";
const THING_COLUMNS_OF_T: &str = "t.account_id, t.name, t.id, t.type_name, t.version, t.created_at";
const THING_PRINCIPAL_COLUMNS: &str = "account_id, thing_name, certificate_id, principal_type, attached_at";

impl<'a> Tx<'a> {
    // ---- policies -------------------------------------------------------------------------

    /// Adds a policy (its versions are added separately).
    pub fn insert_policy(&mut self, policy: &Policy) -> Result<(), Error> {
        self.conn.execute(
            &format!("INSERT INTO policies ({POLICY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"),
            &[
                policy.account.as_str().into(),
                policy.name.as_str().into(),
                policy.default_version.into(),
                policy.next_version.into(),
                policy.generation_id.as_str().into(),
                millis(policy.created_at).into(),
                millis(policy.last_modified).into(),
            ],
        )?;
        Ok(())
    }

    /// Rewrites a policy's mutable fields (default version, next version, generation).
    pub fn update_policy(&mut self, policy: &Policy) -> Result<(), Error> {
        self.conn.execute(
            "UPDATE policies SET default_version = $1, next_version = $2, generation_id = $3, last_modified = $4 \
             WHERE account_id = $5 AND name = $6",
            &[
                policy.default_version.into(),
                policy.next_version.into(),
                policy.generation_id.as_str().into(),
                millis(policy.last_modified).into(),
                policy.account.as_str().into(),
                policy.name.as_str().into(),
            ],
        )?;
        Ok(())
    }

    /// A policy of an account.
    pub fn get_policy(&mut self, account: &AccountId, name: &PolicyName) -> Result<Option<Policy>, Error> {
        let rows = self.conn.query(
            &format!("SELECT {POLICY_COLUMNS} FROM policies WHERE account_id = $1 AND name = $2"),
            &[account.as_str().into(), name.as_str().into()],
        )?;
        rows.first().map(policy_from_row).transpose()
    }

    /// Deletes a policy with all its versions. Returns whether it existed.
    pub fn delete_policy(&mut self, account: &AccountId, name: &PolicyName) -> Result<bool, Error> {
        let key = [Value::from(account.as_str()), Value::from(name.as_str())];
        self.conn.execute("DELETE FROM policy_versions WHERE account_id = $1 AND policy_name = $2", &key)?;
        Ok(self.conn.execute("DELETE FROM policies WHERE account_id = $1 AND name = $2", &key)? == 1)
    }

    /// A page of an account's policies, by creation date (then name).
    pub fn list_policies(&mut self, account: &AccountId, page: &PageRequest) -> Result<Page<Policy>, Error> {
        let (comparison, order) = if page.ascending { (">", "ASC") } else { ("<", "DESC") };
        let mut sql = format!("SELECT {POLICY_COLUMNS} FROM policies WHERE account_id = $1");
        let mut params = vec![Value::from(account.as_str())];
        if let Some(after) = &page.after {
            sql.push_str(&format!(" AND (created_at {comparison} $2 OR (created_at = $2 AND name {comparison} $3))"));
            params.push(after.created_at_ms.into());
            params.push(after.id.as_str().into());
        }
        let limit = i64::from(page.limit.max(1));
        sql.push_str(&format!(" ORDER BY created_at {order}, name {order} LIMIT ${}", params.len() + 1));
        params.push((limit + 1).into());
        let mut items = self.conn.query(&sql, &params)?.iter().map(policy_from_row).collect::<Result<Vec<_>, _>>()?;
        let next = if items.len() as i64 > limit {
            items.truncate(limit as usize);
            items
                .last()
                .map(|last| Cursor { created_at_ms: millis(last.created_at), id: last.name.as_str().to_owned() })
        } else {
            None
        };
        Ok(Page { items, next })
    }

    /// Adds a version to a policy.
    pub fn insert_policy_version(&mut self, version: &PolicyVersion) -> Result<(), Error> {
        self.conn.execute(
            &format!("INSERT INTO policy_versions ({VERSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5)"),
            &[
                version.account.as_str().into(),
                version.policy_name.as_str().into(),
                version.version.into(),
                version.document.as_str().into(),
                millis(version.created_at).into(),
            ],
        )?;
        Ok(())
    }

    /// One version of a policy.
    pub fn get_policy_version(
        &mut self,
        account: &AccountId,
        name: &PolicyName,
        version: i64,
    ) -> Result<Option<PolicyVersion>, Error> {
        let rows = self.conn.query(
            &format!("SELECT {VERSION_COLUMNS} FROM policy_versions WHERE account_id = $1 AND policy_name = $2 AND version = $3"),
            &[account.as_str().into(), name.as_str().into(), version.into()],
        )?;
        rows.first().map(version_from_row).transpose()
    }

    /// Every version of a policy, newest first.
    pub fn list_policy_versions(
        &mut self,
        account: &AccountId,
        name: &PolicyName,
    ) -> Result<Vec<PolicyVersion>, Error> {
        let rows = self.conn.query(
            &format!(
                "SELECT {VERSION_COLUMNS} FROM policy_versions WHERE account_id = $1 AND policy_name = $2 ORDER BY version DESC"
            ),
            &[account.as_str().into(), name.as_str().into()],
        )?;
        rows.iter().map(version_from_row).collect()
    }

    /// Deletes one version of a policy. Returns whether it existed.
    pub fn delete_policy_version(
        &mut self,
        account: &AccountId,
        name: &PolicyName,
        version: i64,
    ) -> Result<bool, Error> {
        Ok(self.conn.execute(
            "DELETE FROM policy_versions WHERE account_id = $1 AND policy_name = $2 AND version = $3",
            &[account.as_str().into(), name.as_str().into(), version.into()],
        )? == 1)
    }

    // ---- policy attachments ---------------------------------------------------------------

    /// Attaches a policy to a certificate. Returns false when it was attached already.
    pub fn attach_policy(
        &mut self,
        account: &AccountId,
        name: &PolicyName,
        certificate: &CertificateId,
        at: OffsetDateTime,
    ) -> Result<bool, Error> {
        let key = [Value::from(account.as_str()), name.as_str().into(), certificate.as_str().into()];
        // Look first: a unique violation would abort a PostgreSQL transaction.
        let existing = self.conn.query(
            "SELECT 1 FROM policy_attachments WHERE account_id = $1 AND policy_name = $2 AND certificate_id = $3",
            &key,
        )?;
        if !existing.is_empty() {
            return Ok(false);
        }
        let mut values = key.to_vec();
        values.push(millis(at).into());
        self.conn.execute(
            "INSERT INTO policy_attachments (account_id, policy_name, certificate_id, attached_at) VALUES ($1, $2, $3, $4)",
            &values,
        )?;
        Ok(true)
    }

    /// Detaches a policy from a certificate. Returns whether it was attached.
    pub fn detach_policy(
        &mut self,
        account: &AccountId,
        name: &PolicyName,
        certificate: &CertificateId,
    ) -> Result<bool, Error> {
        Ok(self.conn.execute(
            "DELETE FROM policy_attachments WHERE account_id = $1 AND policy_name = $2 AND certificate_id = $3",
            &[account.as_str().into(), name.as_str().into(), certificate.as_str().into()],
        )? == 1)
    }

    /// Detaches every policy from a certificate. Returns how many were attached.
    pub fn detach_all_policies(&mut self, account: &AccountId, certificate: &CertificateId) -> Result<u64, Error> {
        self.conn.execute(
            "DELETE FROM policy_attachments WHERE account_id = $1 AND certificate_id = $2",
            &[account.as_str().into(), certificate.as_str().into()],
        )
    }

    /// How many policies are attached to a certificate.
    pub fn count_certificate_policies(
        &mut self,
        account: &AccountId,
        certificate: &CertificateId,
    ) -> Result<i64, Error> {
        self.count(
            "SELECT COUNT(*) FROM policy_attachments WHERE account_id = $1 AND certificate_id = $2",
            &[account.as_str().into(), certificate.as_str().into()],
        )
    }

    /// How many certificates a policy is attached to.
    pub fn count_policy_targets(&mut self, account: &AccountId, name: &PolicyName) -> Result<i64, Error> {
        self.count(
            "SELECT COUNT(*) FROM policy_attachments WHERE account_id = $1 AND policy_name = $2",
            &[account.as_str().into(), name.as_str().into()],
        )
    }

    /// A page of the policies attached to a certificate, by name.
    pub fn certificate_policies(
        &mut self,
        account: &AccountId,
        certificate: &CertificateId,
        page: &KeyPageRequest,
    ) -> Result<KeyPage<Policy>, Error> {
        let (rows, next) = self.key_page(
            &format!(
                "SELECT {POLICY_COLUMNS_OF_P} FROM policies p JOIN policy_attachments a \
                 ON a.account_id = p.account_id AND a.policy_name = p.name \
                 WHERE a.account_id = $1 AND a.certificate_id = $2"
            ),
            vec![account.as_str().into(), certificate.as_str().into()],
            "p.name",
            1,
            page,
        )?;
        Ok(KeyPage { items: rows.iter().map(policy_from_row).collect::<Result<_, _>>()?, next })
    }

    /// A page of the certificates a policy is attached to, by certificate ID.
    pub fn policy_targets(
        &mut self,
        account: &AccountId,
        name: &PolicyName,
        page: &KeyPageRequest,
    ) -> Result<KeyPage<CertificateId>, Error> {
        let (rows, next) = self.key_page(
            "SELECT certificate_id FROM policy_attachments WHERE account_id = $1 AND policy_name = $2",
            vec![account.as_str().into(), name.as_str().into()],
            "certificate_id",
            0,
            page,
        )?;
        Ok(KeyPage { items: rows.iter().map(|row| cert_id(&row.text(0)?)).collect::<Result<_, _>>()?, next })
    }

    // ---- things ---------------------------------------------------------------------------

    /// Adds a thing with its attributes.
    pub fn insert_thing(&mut self, thing: &Thing) -> Result<(), Error> {
        self.conn.execute(
            &format!("INSERT INTO things ({THING_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"),
            &[
                thing.account.as_str().into(),
                thing.name.as_str().into(),
                thing.id.as_str().into(),
                thing.type_name.as_ref().map(ThingName::as_str).into(),
                thing.version.into(),
                millis(thing.created_at).into(),
            ],
        )?;
        self.insert_attributes(thing)
    }

    /// Rewrites a thing's type, attributes and version.
    pub fn update_thing(&mut self, thing: &Thing) -> Result<(), Error> {
        self.conn.execute(
            "UPDATE things SET type_name = $1, version = $2 WHERE account_id = $3 AND name = $4",
            &[
                thing.type_name.as_ref().map(ThingName::as_str).into(),
                thing.version.into(),
                thing.account.as_str().into(),
                thing.name.as_str().into(),
            ],
        )?;
        self.conn.execute(
            "DELETE FROM thing_attributes WHERE account_id = $1 AND thing_name = $2",
            &[thing.account.as_str().into(), thing.name.as_str().into()],
        )?;
        self.insert_attributes(thing)
    }

    fn insert_attributes(&mut self, thing: &Thing) -> Result<(), Error> {
        for (name, value) in &thing.attributes {
            self.conn.execute(
                "INSERT INTO thing_attributes (account_id, thing_name, name, value) VALUES ($1, $2, $3, $4)",
                &[
                    thing.account.as_str().into(),
                    thing.name.as_str().into(),
                    name.as_str().into(),
                    value.as_str().into(),
                ],
            )?;
        }
        Ok(())
    }

    /// A thing of an account, with its attributes.
    pub fn get_thing(&mut self, account: &AccountId, name: &ThingName) -> Result<Option<Thing>, Error> {
        let rows = self.conn.query(
            &format!("SELECT {THING_COLUMNS} FROM things WHERE account_id = $1 AND name = $2"),
            &[account.as_str().into(), name.as_str().into()],
        )?;
        let Some(mut thing) = rows.first().map(thing_from_row).transpose()? else { return Ok(None) };
        let rows = self.conn.query(
            "SELECT name, value FROM thing_attributes WHERE account_id = $1 AND thing_name = $2",
            &[account.as_str().into(), name.as_str().into()],
        )?;
        for row in &rows {
            thing.attributes.insert(row.text(0)?, row.text(1)?);
        }
        Ok(Some(thing))
    }

    /// Deletes a thing with its attributes. Returns whether it existed.
    pub fn delete_thing(&mut self, account: &AccountId, name: &ThingName) -> Result<bool, Error> {
        let key = [Value::from(account.as_str()), Value::from(name.as_str())];
        self.conn.execute("DELETE FROM thing_attributes WHERE account_id = $1 AND thing_name = $2", &key)?;
        Ok(self.conn.execute("DELETE FROM things WHERE account_id = $1 AND name = $2", &key)? == 1)
    }

    /// A page of an account's things that pass `filter`, by name, with their attributes.
    pub fn list_things(
        &mut self,
        account: &AccountId,
        filter: &ThingFilter,
        page: &KeyPageRequest,
    ) -> Result<KeyPage<Thing>, Error> {
        let mut sql = format!("SELECT {THING_COLUMNS_OF_T} FROM things t WHERE t.account_id = $1");
        let mut params = vec![Value::from(account.as_str())];
        if let Some(type_name) = &filter.type_name {
            params.push(type_name.as_str().into());
            sql.push_str(&format!(" AND t.type_name = ${}", params.len()));
        }
        if let Some(attribute) = &filter.attribute {
            let name = match attribute {
                AttributeFilter::Present { name }
                | AttributeFilter::Equals { name, .. }
                | AttributeFilter::StartsWith { name, .. } => name,
            };
            params.push(name.as_str().into());
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM thing_attributes a WHERE a.account_id = t.account_id AND a.thing_name = t.name AND a.name = ${}",
                params.len()
            ));
            match attribute {
                AttributeFilter::Present { .. } => {}
                AttributeFilter::Equals { value, .. } => {
                    params.push(value.as_str().into());
                    sql.push_str(&format!(" AND a.value = ${}", params.len()));
                }
                AttributeFilter::StartsWith { prefix, .. } => {
                    // substr on both backends; the length travels as BIGINT, the one integer
                    // type the statements bind.
                    params.push((prefix.chars().count() as i64).into());
                    params.push(prefix.as_str().into());
                    sql.push_str(&format!(
                        " AND substr(a.value, 1, CAST(CAST(${} AS BIGINT) AS INTEGER)) = ${}",
                        params.len() - 1,
                        params.len()
                    ));
                }
            }
            sql.push(')');
        }
        let (rows, next) = self.key_page(&sql, params, "t.name", 1, page)?;
        let mut things = rows.iter().map(thing_from_row).collect::<Result<Vec<_>, _>>()?;
        if let (Some(first), Some(last)) = (things.first(), things.last()) {
            // One query for the whole page's attributes: the names lie between the first and the last.
            let rows = self.conn.query(
                "SELECT thing_name, name, value FROM thing_attributes WHERE account_id = $1 AND thing_name >= $2 AND thing_name <= $3",
                &[account.as_str().into(), first.name.as_str().into(), last.name.as_str().into()],
            )?;
            let mut by_thing: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
            for row in &rows {
                by_thing.entry(row.text(0)?).or_default().insert(row.text(1)?, row.text(2)?);
            }
            for thing in &mut things {
                if let Some(attributes) = by_thing.remove(thing.name.as_str()) {
                    thing.attributes = attributes;
                }
            }
        }
        Ok(KeyPage { items: things, next })
    }

    // ---- thing principals -----------------------------------------------------------------

    /// Attaches a certificate to a thing, or changes the type of an existing attachment.
    pub fn put_thing_principal(&mut self, attachment: &ThingPrincipal) -> Result<(), Error> {
        let key = [
            Value::from(attachment.account.as_str()),
            attachment.thing_name.as_str().into(),
            attachment.certificate_id.as_str().into(),
        ];
        self.conn.execute(
            "DELETE FROM thing_principals WHERE account_id = $1 AND thing_name = $2 AND certificate_id = $3",
            &key,
        )?;
        let mut values = key.to_vec();
        values.push(attachment.principal_type.as_str().into());
        values.push(millis(attachment.attached_at).into());
        self.conn.execute(
            &format!("INSERT INTO thing_principals ({THING_PRINCIPAL_COLUMNS}) VALUES ($1, $2, $3, $4, $5)"),
            &values,
        )?;
        Ok(())
    }

    /// Detaches a certificate from a thing. Returns whether it was attached.
    pub fn delete_thing_principal(
        &mut self,
        account: &AccountId,
        thing: &ThingName,
        certificate: &CertificateId,
    ) -> Result<bool, Error> {
        Ok(self.conn.execute(
            "DELETE FROM thing_principals WHERE account_id = $1 AND thing_name = $2 AND certificate_id = $3",
            &[account.as_str().into(), thing.as_str().into(), certificate.as_str().into()],
        )? == 1)
    }

    /// Every attachment of a certificate to a thing, by thing name.
    pub fn certificate_things(
        &mut self,
        account: &AccountId,
        certificate: &CertificateId,
    ) -> Result<Vec<ThingPrincipal>, Error> {
        let rows = self.conn.query(
            &format!(
                "SELECT {THING_PRINCIPAL_COLUMNS} FROM thing_principals WHERE account_id = $1 AND certificate_id = $2 ORDER BY thing_name"
            ),
            &[account.as_str().into(), certificate.as_str().into()],
        )?;
        rows.iter().map(thing_principal_from_row).collect()
    }

    /// A page of the attachments of a certificate to things (of one type when given), by thing name.
    pub fn certificate_things_page(
        &mut self,
        account: &AccountId,
        certificate: &CertificateId,
        principal_type: Option<ThingPrincipalType>,
        page: &KeyPageRequest,
    ) -> Result<KeyPage<ThingPrincipal>, Error> {
        let mut sql = format!(
            "SELECT {THING_PRINCIPAL_COLUMNS} FROM thing_principals WHERE account_id = $1 AND certificate_id = $2"
        );
        let mut params = vec![Value::from(account.as_str()), certificate.as_str().into()];
        if let Some(principal_type) = principal_type {
            sql.push_str(" AND principal_type = $3");
            params.push(principal_type.as_str().into());
        }
        let (rows, next) = self.key_page(&sql, params, "thing_name", 1, page)?;
        Ok(KeyPage { items: rows.iter().map(thing_principal_from_row).collect::<Result<_, _>>()?, next })
    }

    /// A page of the certificates attached to a thing (by one type of attachment when given),
    /// by certificate ID.
    pub fn thing_principals(
        &mut self,
        account: &AccountId,
        thing: &ThingName,
        principal_type: Option<ThingPrincipalType>,
        page: &KeyPageRequest,
    ) -> Result<KeyPage<ThingPrincipal>, Error> {
        let mut sql =
            format!("SELECT {THING_PRINCIPAL_COLUMNS} FROM thing_principals WHERE account_id = $1 AND thing_name = $2");
        let mut params = vec![Value::from(account.as_str()), thing.as_str().into()];
        if let Some(principal_type) = principal_type {
            sql.push_str(" AND principal_type = $3");
            params.push(principal_type.as_str().into());
        }
        let (rows, next) = self.key_page(&sql, params, "certificate_id", 2, page)?;
        Ok(KeyPage { items: rows.iter().map(thing_principal_from_row).collect::<Result<_, _>>()?, next })
    }

    /// How many certificates are attached to a thing.
    pub fn count_thing_principals(&mut self, account: &AccountId, thing: &ThingName) -> Result<i64, Error> {
        self.count(
            "SELECT COUNT(*) FROM thing_principals WHERE account_id = $1 AND thing_name = $2",
            &[account.as_str().into(), thing.as_str().into()],
        )
    }

    /// The things a certificate is attached to, with their attributes and the attachment type,
    /// by name: what a gateway needs to know of a device's things.
    pub fn certificate_things_described(
        &mut self,
        account: &AccountId,
        certificate: &CertificateId,
    ) -> Result<Vec<(Thing, ThingPrincipalType)>, Error> {
        let mut described = Vec::new();
        for attachment in self.certificate_things(account, certificate)? {
            if let Some(thing) = self.get_thing(account, &attachment.thing_name)? {
                described.push((thing, attachment.principal_type));
            }
        }
        Ok(described)
    }

    // ---- helpers --------------------------------------------------------------------------

    fn count(&mut self, sql: &str, params: &[Value]) -> Result<i64, Error> {
        self.conn.query(sql, params)?.first().map_or(Ok(0), |row| row.int(0))
    }

    /// Runs `select` (a query whose WHERE clause binds `params`) for one page ordered by the
    /// text column `key` (found at `key_index` in each row), fetching one extra row to know
    /// whether another page follows.
    pub(crate) fn key_page(
        &mut self,
        select: &str,
        mut params: Vec<Value>,
        key: &str,
        key_index: usize,
        page: &KeyPageRequest,
    ) -> Result<(Vec<Row>, Option<String>), Error> {
        let mut sql = select.to_owned();
        if let Some(after) = &page.after {
            params.push(after.as_str().into());
            sql.push_str(&format!(" AND {key} > ${}", params.len()));
        }
        let limit = i64::from(page.limit.max(1));
        params.push((limit + 1).into());
        sql.push_str(&format!(" ORDER BY {key} LIMIT ${}", params.len()));
        let mut rows = self.conn.query(&sql, &params)?;
        let next = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|last| last.text(key_index)).transpose()?
        } else {
            None
        };
        Ok((rows, next))
    }
}

pub(crate) fn policy_from_row(row: &Row) -> Result<Policy, Error> {
    Ok(Policy {
        account: AccountId::parse(&row.text(0)?)?,
        name: PolicyName::parse(&row.text(1)?)?,
        default_version: row.int(2)?,
        next_version: row.int(3)?,
        generation_id: row.text(4)?,
        created_at: from_millis(row.int(5)?)?,
        last_modified: from_millis(row.int(6)?)?,
    })
}

fn version_from_row(row: &Row) -> Result<PolicyVersion, Error> {
    Ok(PolicyVersion {
        account: AccountId::parse(&row.text(0)?)?,
        policy_name: PolicyName::parse(&row.text(1)?)?,
        version: row.int(2)?,
        document: row.text(3)?,
        created_at: from_millis(row.int(4)?)?,
    })
}

fn thing_from_row(row: &Row) -> Result<Thing, Error> {
    Ok(Thing {
        account: AccountId::parse(&row.text(0)?)?,
        name: ThingName::parse(&row.text(1)?)?,
        id: row.text(2)?,
        type_name: row.opt_text(3)?.map(|text| ThingName::parse(&text)).transpose()?,
        attributes: BTreeMap::new(),
        version: row.int(4)?,
        created_at: from_millis(row.int(5)?)?,
    })
}

fn thing_principal_from_row(row: &Row) -> Result<ThingPrincipal, Error> {
    Ok(ThingPrincipal {
        account: AccountId::parse(&row.text(0)?)?,
        thing_name: ThingName::parse(&row.text(1)?)?,
        certificate_id: cert_id(&row.text(2)?)?,
        principal_type: parse_text(&row.text(3)?, ThingPrincipalType::parse)?,
        attached_at: from_millis(row.int(4)?)?,
    })
}
