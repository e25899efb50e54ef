//! The registry operations of thing types, static thing groups (their attributes, members and
//! hierarchy) and the policies attached to groups, written once over [`Conn`](crate::conn).
//!
//! The hierarchy is walked with recursive common table expressions both backends run; each
//! carries a depth guard, so a walk ends even if a stored tree were broken.

use std::collections::BTreeMap;

use time::OffsetDateTime;

use crate::Error;
use crate::conn::{Row, Value};
use crate::model::*;
use crate::model_groups::*;
use crate::tx::{Tx, cert_id, from_millis, millis};

const TYPE_COLUMNS: &str = "account_id, name, id, description, searchable_attributes, deprecated_at, created_at";
const GROUP_COLUMNS: &str = "account_id, name, id, parent_name, description, version, created_at";
const POLICY_COLUMNS_OF_P: &str =
    "p.account_id, p.name, p.default_version, p.next_version, p.generation_id, p.created_at, p.last_modified";

/// The deepest a hierarchy walk goes: past any hierarchy services allow (7 levels).
const WALK_DEPTH: i64 = 16;

/// `descendants(name)`: the groups under `$2` (not `$2` itself) of account `$1`.
fn descendants_cte() -> String {
    format!(
        "WITH RECURSIVE descendants(name, depth) AS (\
         SELECT name, 1 FROM thing_groups WHERE account_id = $1 AND parent_name = $2 \
         UNION ALL SELECT g.name, d.depth + 1 FROM thing_groups g JOIN descendants d ON g.parent_name = d.name \
         WHERE g.account_id = $1 AND d.depth < {WALK_DEPTH}) "
    )
}

/// `member_groups(name)`: the groups the things attached to certificate `$2` of account `$1`
/// are members of, and all their ancestors.
fn certificate_groups_cte() -> String {
    format!(
        "WITH RECURSIVE member_groups(name, depth) AS (\
         SELECT m.group_name, 1 FROM thing_group_members m JOIN thing_principals tp \
         ON tp.account_id = m.account_id AND tp.thing_name = m.thing_name \
         WHERE m.account_id = $1 AND tp.certificate_id = $2 \
         UNION ALL SELECT g.parent_name, mg.depth + 1 FROM thing_groups g JOIN member_groups mg ON g.name = mg.name \
         WHERE g.account_id = $1 AND g.parent_name IS NOT NULL AND mg.depth < {WALK_DEPTH}) "
    )
}

impl<'a> Tx<'a> {
    // ---- thing types ----------------------------------------------------------------------

    /// Adds a thing type.
    pub fn insert_thing_type(&mut self, thing_type: &ThingType) -> Result<(), Error> {
        self.conn.execute(
            &format!("INSERT INTO thing_types ({TYPE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"),
            &[
                thing_type.account.as_str().into(),
                thing_type.name.as_str().into(),
                thing_type.id.as_str().into(),
                thing_type.description.as_deref().into(),
                thing_type.searchable_attributes.join("\n").into(),
                thing_type.deprecated_at.map(millis).into(),
                millis(thing_type.created_at).into(),
            ],
        )?;
        Ok(())
    }

    /// Rewrites a thing type's description, searchable attributes and deprecation.
    pub fn update_thing_type(&mut self, thing_type: &ThingType) -> Result<(), Error> {
        self.conn.execute(
            "UPDATE thing_types SET description = $1, searchable_attributes = $2, deprecated_at = $3 \
             WHERE account_id = $4 AND name = $5",
            &[
                thing_type.description.as_deref().into(),
                thing_type.searchable_attributes.join("\n").into(),
                thing_type.deprecated_at.map(millis).into(),
                thing_type.account.as_str().into(),
                thing_type.name.as_str().into(),
            ],
        )?;
        Ok(())
    }

    /// A thing type of an account.
    pub fn get_thing_type(&mut self, account: &AccountId, name: &ThingName) -> Result<Option<ThingType>, Error> {
        let rows = self.conn.query(
            &format!("SELECT {TYPE_COLUMNS} FROM thing_types WHERE account_id = $1 AND name = $2"),
            &[account.as_str().into(), name.as_str().into()],
        )?;
        rows.first().map(thing_type_from_row).transpose()
    }

    /// Deletes a thing type. Returns whether it existed.
    pub fn delete_thing_type(&mut self, account: &AccountId, name: &ThingName) -> Result<bool, Error> {
        Ok(self.conn.execute(
            "DELETE FROM thing_types WHERE account_id = $1 AND name = $2",
            &[account.as_str().into(), name.as_str().into()],
        )? == 1)
    }

    /// A page of an account's thing types (only `name` when given), by name.
    pub fn list_thing_types(
        &mut self,
        account: &AccountId,
        name: Option<&ThingName>,
        page: &KeyPageRequest,
    ) -> Result<KeyPage<ThingType>, Error> {
        let mut sql = format!("SELECT {TYPE_COLUMNS} FROM thing_types WHERE account_id = $1");
        let mut params = vec![Value::from(account.as_str())];
        if let Some(name) = name {
            sql.push_str(" AND name = $2");
            params.push(name.as_str().into());
        }
        let (rows, next) = self.key_page(&sql, params, "name", 1, page)?;
        Ok(KeyPage { items: rows.iter().map(thing_type_from_row).collect::<Result<_, _>>()?, next })
    }

    /// How many things of an account have this type.
    pub fn count_things_of_type(&mut self, account: &AccountId, name: &ThingName) -> Result<i64, Error> {
        self.count_rows(
            "SELECT COUNT(*) FROM things WHERE account_id = $1 AND type_name = $2",
            &[account.as_str().into(), name.as_str().into()],
        )
    }

    // ---- thing groups ---------------------------------------------------------------------

    /// Adds a thing group with its attributes.
    pub fn insert_thing_group(&mut self, group: &ThingGroup) -> Result<(), Error> {
        self.conn.execute(
            &format!("INSERT INTO thing_groups ({GROUP_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"),
            &[
                group.account.as_str().into(),
                group.name.as_str().into(),
                group.id.as_str().into(),
                group.parent.as_ref().map(ThingGroupName::as_str).into(),
                group.description.as_deref().into(),
                group.version.into(),
                millis(group.created_at).into(),
            ],
        )?;
        self.insert_group_attributes(group)
    }

    /// Rewrites a group's description, attributes and version (never its parent).
    pub fn update_thing_group(&mut self, group: &ThingGroup) -> Result<(), Error> {
        let key = [Value::from(group.account.as_str()), group.name.as_str().into()];
        self.conn.execute(
            "UPDATE thing_groups SET description = $1, version = $2 WHERE account_id = $3 AND name = $4",
            &[group.description.as_deref().into(), group.version.into(), key[0].clone(), key[1].clone()],
        )?;
        self.conn.execute("DELETE FROM thing_group_attributes WHERE account_id = $1 AND group_name = $2", &key)?;
        self.insert_group_attributes(group)
    }

    fn insert_group_attributes(&mut self, group: &ThingGroup) -> Result<(), Error> {
        for (name, value) in &group.attributes {
            self.conn.execute(
                "INSERT INTO thing_group_attributes (account_id, group_name, name, value) VALUES ($1, $2, $3, $4)",
                &[
                    group.account.as_str().into(),
                    group.name.as_str().into(),
                    name.as_str().into(),
                    value.as_str().into(),
                ],
            )?;
        }
        Ok(())
    }

    /// A thing group of an account, with its attributes.
    pub fn get_thing_group(&mut self, account: &AccountId, name: &ThingGroupName) -> Result<Option<ThingGroup>, Error> {
        let key = [Value::from(account.as_str()), name.as_str().into()];
        let rows = self
            .conn
            .query(&format!("SELECT {GROUP_COLUMNS} FROM thing_groups WHERE account_id = $1 AND name = $2"), &key)?;
        let Some(mut group) = rows.first().map(thing_group_from_row).transpose()? else { return Ok(None) };
        let rows = self
            .conn
            .query("SELECT name, value FROM thing_group_attributes WHERE account_id = $1 AND group_name = $2", &key)?;
        for row in &rows {
            group.attributes.insert(row.text(0)?, row.text(1)?);
        }
        Ok(Some(group))
    }

    /// The ancestors of a group, its parent first and the root last (at most `limit`).
    pub fn thing_group_ancestors(
        &mut self,
        account: &AccountId,
        name: &ThingGroupName,
        limit: usize,
    ) -> Result<Vec<ThingGroupName>, Error> {
        let mut ancestors = Vec::new();
        let mut current = name.clone();
        while ancestors.len() < limit {
            let rows = self.conn.query(
                "SELECT parent_name FROM thing_groups WHERE account_id = $1 AND name = $2",
                &[account.as_str().into(), current.as_str().into()],
            )?;
            let Some(parent) = rows.first().map(|row| row.opt_text(0)).transpose()?.flatten() else { break };
            current = ThingGroupName::parse(&parent)?;
            ancestors.push(current.clone());
        }
        Ok(ancestors)
    }

    /// Deletes a group with its attributes, memberships and policy attachments. Returns whether
    /// it existed.
    pub fn delete_thing_group(&mut self, account: &AccountId, name: &ThingGroupName) -> Result<bool, Error> {
        let key = [Value::from(account.as_str()), Value::from(name.as_str())];
        self.conn.execute("DELETE FROM thing_group_attributes WHERE account_id = $1 AND group_name = $2", &key)?;
        self.conn.execute("DELETE FROM thing_group_members WHERE account_id = $1 AND group_name = $2", &key)?;
        self.conn.execute("DELETE FROM group_policy_attachments WHERE account_id = $1 AND group_name = $2", &key)?;
        Ok(self.conn.execute("DELETE FROM thing_groups WHERE account_id = $1 AND name = $2", &key)? == 1)
    }

    /// How many groups have this group as their parent.
    pub fn count_child_groups(&mut self, account: &AccountId, name: &ThingGroupName) -> Result<i64, Error> {
        self.count_rows(
            "SELECT COUNT(*) FROM thing_groups WHERE account_id = $1 AND parent_name = $2",
            &[account.as_str().into(), name.as_str().into()],
        )
    }

    /// A page of the names of an account's groups that pass `filter`, by name.
    pub fn list_thing_groups(
        &mut self,
        account: &AccountId,
        filter: &ThingGroupFilter,
        page: &KeyPageRequest,
    ) -> Result<KeyPage<ThingGroupName>, Error> {
        let mut params = vec![Value::from(account.as_str())];
        let mut sql = match (&filter.parent, filter.recursive) {
            (Some(parent), true) => {
                params.push(parent.as_str().into());
                format!(
                    "{}SELECT name FROM thing_groups WHERE account_id = $1 AND name IN (SELECT name FROM descendants)",
                    descendants_cte()
                )
            }
            (Some(parent), false) => {
                params.push(parent.as_str().into());
                "SELECT name FROM thing_groups WHERE account_id = $1 AND parent_name = $2".to_owned()
            }
            (None, true) => "SELECT name FROM thing_groups WHERE account_id = $1".to_owned(),
            (None, false) => "SELECT name FROM thing_groups WHERE account_id = $1 AND parent_name IS NULL".to_owned(),
        };
        if let Some(prefix) = &filter.name_prefix {
            params.push((prefix.chars().count() as i64).into());
            params.push(prefix.as_str().into());
            sql.push_str(&format!(
                " AND substr(name, 1, CAST(CAST(${} AS BIGINT) AS INTEGER)) = ${}",
                params.len() - 1,
                params.len()
            ));
        }
        let (rows, next) = self.key_page(&sql, params, "name", 0, page)?;
        Ok(KeyPage {
            items: rows.iter().map(|row| ThingGroupName::parse(&row.text(0)?)).collect::<Result<_, _>>()?,
            next,
        })
    }

    // ---- members --------------------------------------------------------------------------

    /// Adds a thing to a group. Returns false when it was a member already.
    pub fn add_thing_to_group(
        &mut self,
        account: &AccountId,
        group: &ThingGroupName,
        thing: &ThingName,
        at: OffsetDateTime,
    ) -> Result<bool, Error> {
        let key = [Value::from(account.as_str()), group.as_str().into(), thing.as_str().into()];
        // Look first: a unique violation would abort a PostgreSQL transaction.
        let existing = self.conn.query(
            "SELECT 1 FROM thing_group_members WHERE account_id = $1 AND group_name = $2 AND thing_name = $3",
            &key,
        )?;
        if !existing.is_empty() {
            return Ok(false);
        }
        let mut values = key.to_vec();
        values.push(millis(at).into());
        self.conn.execute(
            "INSERT INTO thing_group_members (account_id, group_name, thing_name, added_at) VALUES ($1, $2, $3, $4)",
            &values,
        )?;
        Ok(true)
    }

    /// Removes a thing from a group. Returns whether it was a member.
    pub fn remove_thing_from_group(
        &mut self,
        account: &AccountId,
        group: &ThingGroupName,
        thing: &ThingName,
    ) -> Result<bool, Error> {
        Ok(self.conn.execute(
            "DELETE FROM thing_group_members WHERE account_id = $1 AND group_name = $2 AND thing_name = $3",
            &[account.as_str().into(), group.as_str().into(), thing.as_str().into()],
        )? == 1)
    }

    /// Removes a thing from every group. Returns how many it was a member of.
    pub fn remove_thing_from_all_groups(&mut self, account: &AccountId, thing: &ThingName) -> Result<u64, Error> {
        self.conn.execute(
            "DELETE FROM thing_group_members WHERE account_id = $1 AND thing_name = $2",
            &[account.as_str().into(), thing.as_str().into()],
        )
    }

    /// Every group a thing is a member of (directly), by name.
    pub fn groups_of_thing(&mut self, account: &AccountId, thing: &ThingName) -> Result<Vec<ThingGroupName>, Error> {
        let rows = self.conn.query(
            "SELECT group_name FROM thing_group_members WHERE account_id = $1 AND thing_name = $2 ORDER BY group_name",
            &[account.as_str().into(), thing.as_str().into()],
        )?;
        rows.iter().map(|row| ThingGroupName::parse(&row.text(0)?)).collect()
    }

    /// A page of the groups a thing is a member of (directly), by name.
    pub fn groups_of_thing_page(
        &mut self,
        account: &AccountId,
        thing: &ThingName,
        page: &KeyPageRequest,
    ) -> Result<KeyPage<ThingGroupName>, Error> {
        let (rows, next) = self.key_page(
            "SELECT group_name FROM thing_group_members WHERE account_id = $1 AND thing_name = $2",
            vec![account.as_str().into(), thing.as_str().into()],
            "group_name",
            0,
            page,
        )?;
        Ok(KeyPage {
            items: rows.iter().map(|row| ThingGroupName::parse(&row.text(0)?)).collect::<Result<_, _>>()?,
            next,
        })
    }

    /// A page of the things in a group (and, when `recursive`, in its descendants), by name.
    pub fn things_in_group(
        &mut self,
        account: &AccountId,
        group: &ThingGroupName,
        recursive: bool,
        page: &KeyPageRequest,
    ) -> Result<KeyPage<ThingName>, Error> {
        let sql = if recursive {
            format!(
                "{}SELECT DISTINCT thing_name FROM thing_group_members WHERE account_id = $1 \
                 AND (group_name = $2 OR group_name IN (SELECT name FROM descendants))",
                descendants_cte()
            )
        } else {
            "SELECT thing_name FROM thing_group_members WHERE account_id = $1 AND group_name = $2".to_owned()
        };
        let (rows, next) =
            self.key_page(&sql, vec![account.as_str().into(), group.as_str().into()], "thing_name", 0, page)?;
        Ok(KeyPage { items: rows.iter().map(|row| ThingName::parse(&row.text(0)?)).collect::<Result<_, _>>()?, next })
    }

    // ---- policies attached to groups ------------------------------------------------------

    /// Attaches a policy to a group. Returns false when it was attached already.
    pub fn attach_group_policy(
        &mut self,
        account: &AccountId,
        policy: &PolicyName,
        group: &ThingGroupName,
        at: OffsetDateTime,
    ) -> Result<bool, Error> {
        let key = [Value::from(account.as_str()), policy.as_str().into(), group.as_str().into()];
        let existing = self.conn.query(
            "SELECT 1 FROM group_policy_attachments WHERE account_id = $1 AND policy_name = $2 AND group_name = $3",
            &key,
        )?;
        if !existing.is_empty() {
            return Ok(false);
        }
        let mut values = key.to_vec();
        values.push(millis(at).into());
        self.conn.execute(
            "INSERT INTO group_policy_attachments (account_id, policy_name, group_name, attached_at) VALUES ($1, $2, $3, $4)",
            &values,
        )?;
        Ok(true)
    }

    /// Detaches a policy from a group. Returns whether it was attached.
    pub fn detach_group_policy(
        &mut self,
        account: &AccountId,
        policy: &PolicyName,
        group: &ThingGroupName,
    ) -> Result<bool, Error> {
        Ok(self.conn.execute(
            "DELETE FROM group_policy_attachments WHERE account_id = $1 AND policy_name = $2 AND group_name = $3",
            &[account.as_str().into(), policy.as_str().into(), group.as_str().into()],
        )? == 1)
    }

    /// How many policies are attached to a group.
    pub fn count_group_policies(&mut self, account: &AccountId, group: &ThingGroupName) -> Result<i64, Error> {
        self.count_rows(
            "SELECT COUNT(*) FROM group_policy_attachments WHERE account_id = $1 AND group_name = $2",
            &[account.as_str().into(), group.as_str().into()],
        )
    }

    /// How many groups a policy is attached to.
    pub fn count_policy_group_targets(&mut self, account: &AccountId, policy: &PolicyName) -> Result<i64, Error> {
        self.count_rows(
            "SELECT COUNT(*) FROM group_policy_attachments WHERE account_id = $1 AND policy_name = $2",
            &[account.as_str().into(), policy.as_str().into()],
        )
    }

    /// A page of the policies attached to any of `groups` (at most a hierarchy's worth), by name.
    pub fn group_policies(
        &mut self,
        account: &AccountId,
        groups: &[ThingGroupName],
        page: &KeyPageRequest,
    ) -> Result<KeyPage<Policy>, Error> {
        if groups.is_empty() {
            return Ok(KeyPage { items: Vec::new(), next: None });
        }
        let mut params = vec![Value::from(account.as_str())];
        let placeholders: Vec<String> = groups
            .iter()
            .map(|group| {
                params.push(group.as_str().into());
                format!("${}", params.len())
            })
            .collect();
        let (rows, next) = self.key_page(
            &format!(
                "SELECT {POLICY_COLUMNS_OF_P} FROM policies p WHERE p.account_id = $1 AND p.name IN \
                 (SELECT policy_name FROM group_policy_attachments WHERE account_id = $1 AND group_name IN ({}))",
                placeholders.join(", ")
            ),
            params,
            "p.name",
            1,
            page,
        )?;
        Ok(KeyPage { items: rows.iter().map(crate::tx_things::policy_from_row).collect::<Result<_, _>>()?, next })
    }

    /// A page of everything a policy is attached to: certificates (`cert/<id>`) first, then
    /// groups (`thinggroup/<name>`), each by its key.
    pub fn policy_targets_all(
        &mut self,
        account: &AccountId,
        policy: &PolicyName,
        page: &KeyPageRequest,
    ) -> Result<KeyPage<PolicyTarget>, Error> {
        let (rows, next) = self.key_page(
            "SELECT target FROM (\
             SELECT 'cert/' || certificate_id AS target FROM policy_attachments WHERE account_id = $1 AND policy_name = $2 \
             UNION ALL \
             SELECT 'thinggroup/' || group_name AS target FROM group_policy_attachments WHERE account_id = $1 AND policy_name = $2\
             ) targets WHERE 1 = 1",
            vec![account.as_str().into(), policy.as_str().into()],
            "target",
            0,
            page,
        )?;
        let items = rows
            .iter()
            .map(|row| {
                let target = row.text(0)?;
                if let Some(id) = target.strip_prefix("cert/") {
                    Ok(PolicyTarget::Certificate(cert_id(id)?))
                } else if let Some(name) = target.strip_prefix("thinggroup/") {
                    Ok(PolicyTarget::ThingGroup(ThingGroupName::parse(name)?))
                } else {
                    Err(Error::InvalidValue(format!("policy target {target:?}")))
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(KeyPage { items, next })
    }

    /// The groups whose policies apply to a certificate: those the things attached to it are
    /// members of, and their ancestors, by name.
    pub fn certificate_groups(
        &mut self,
        account: &AccountId,
        certificate: &certfleet_pki::CertificateId,
    ) -> Result<Vec<ThingGroupName>, Error> {
        let rows = self.conn.query(
            &format!("{}SELECT DISTINCT name FROM member_groups ORDER BY name", certificate_groups_cte()),
            &[account.as_str().into(), certificate.as_str().into()],
        )?;
        rows.iter().map(|row| ThingGroupName::parse(&row.text(0)?)).collect()
    }

    /// The name and default-version document of every policy that applies to a certificate:
    /// attached to it, or to a group of a thing attached to it or to an ancestor of such a
    /// group (AWS's inheritance), by name.
    pub fn certificate_policy_documents(
        &mut self,
        account: &AccountId,
        certificate: &certfleet_pki::CertificateId,
    ) -> Result<Vec<(PolicyName, String)>, Error> {
        let rows = self.conn.query(
            &format!(
                "{}SELECT p.name, v.document FROM policies p \
                 JOIN policy_versions v ON v.account_id = p.account_id AND v.policy_name = p.name AND v.version = p.default_version \
                 WHERE p.account_id = $1 AND (\
                 p.name IN (SELECT policy_name FROM policy_attachments WHERE account_id = $1 AND certificate_id = $2) \
                 OR p.name IN (SELECT policy_name FROM group_policy_attachments WHERE account_id = $1 \
                 AND group_name IN (SELECT name FROM member_groups))) ORDER BY p.name",
                certificate_groups_cte()
            ),
            &[account.as_str().into(), certificate.as_str().into()],
        )?;
        rows.iter().map(|row| Ok((PolicyName::parse(&row.text(0)?)?, row.text(1)?))).collect()
    }

    fn count_rows(&mut self, sql: &str, params: &[Value]) -> Result<i64, Error> {
        self.conn.query(sql, params)?.first().map_or(Ok(0), |row| row.int(0))
    }
}

fn thing_type_from_row(row: &Row) -> Result<ThingType, Error> {
    let searchable = row.text(4)?;
    Ok(ThingType {
        account: AccountId::parse(&row.text(0)?)?,
        name: ThingName::parse(&row.text(1)?)?,
        id: row.text(2)?,
        description: row.opt_text(3)?,
        searchable_attributes: searchable.split('\n').filter(|name| !name.is_empty()).map(str::to_owned).collect(),
        deprecated_at: row.opt_int(5)?.map(from_millis).transpose()?,
        created_at: from_millis(row.int(6)?)?,
    })
}

fn thing_group_from_row(row: &Row) -> Result<ThingGroup, Error> {
    Ok(ThingGroup {
        account: AccountId::parse(&row.text(0)?)?,
        name: ThingGroupName::parse(&row.text(1)?)?,
        id: row.text(2)?,
        parent: row.opt_text(3)?.map(|name| ThingGroupName::parse(&name)).transpose()?,
        description: row.opt_text(4)?,
        attributes: BTreeMap::new(),
        version: row.int(5)?,
        created_at: from_millis(row.int(6)?)?,
    })
}
