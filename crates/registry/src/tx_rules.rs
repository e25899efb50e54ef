//! The registry operations of topic rules (the rules engine's rules), written once over
//! [`Conn`](crate::conn).
//!
//! A rule's actions are kept as the JSON text the services validated: the registry stores them,
//! it does not know their shape. Every write records a [`ChangeKind::TopicRule`] entry itself, in
//! the same transaction, so gateway nodes reload the account's rules.

use time::OffsetDateTime;

use crate::Error;
use crate::conn::{Row, Value};
use crate::model::*;
use crate::tx::{Tx, from_millis, millis};

/// A topic rule of an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicRule {
    pub account: AccountId,
    /// `[a-zA-Z0-9_]+`, 1 to 128 characters (checked by the services).
    pub name: String,
    pub arn: String,
    /// The statement as written.
    pub sql: String,
    /// The statement's `FROM` topic filter (ListTopicRules' `topicPattern`).
    pub topic_pattern: String,
    pub description: Option<String>,
    pub aws_iot_sql_version: String,
    pub rule_disabled: bool,
    /// The actions, a JSON array of the services' canonical action objects.
    pub actions: String,
    /// The error action, a JSON object, if any.
    pub error_action: Option<String>,
    pub created_at: OffsetDateTime,
    pub last_modified: OffsetDateTime,
}

/// What ListTopicRules filters on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicRuleFilter {
    /// Only rules whose `FROM` filter is exactly this.
    pub topic_pattern: Option<String>,
    /// Only rules disabled (`true`) or enabled (`false`).
    pub rule_disabled: Option<bool>,
}

const RULE_COLUMNS: &str = "account_id, name, arn, sql_text, topic_pattern, description, aws_iot_sql_version, rule_disabled, actions, error_action, created_at, last_modified";

impl<'a> Tx<'a> {
    /// Adds a topic rule (a duplicate name is [`Error::Conflict`]).
    pub fn insert_topic_rule(&mut self, rule: &TopicRule) -> Result<(), Error> {
        self.conn.execute(
            &format!(
                "INSERT INTO topic_rules ({RULE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            ),
            &[
                rule.account.as_str().into(),
                rule.name.as_str().into(),
                rule.arn.as_str().into(),
                rule.sql.as_str().into(),
                rule.topic_pattern.as_str().into(),
                rule.description.as_deref().into(),
                rule.aws_iot_sql_version.as_str().into(),
                i64::from(rule.rule_disabled).into(),
                rule.actions.as_str().into(),
                rule.error_action.as_deref().into(),
                millis(rule.created_at).into(),
                millis(rule.last_modified).into(),
            ],
        )?;
        self.record_change(&rule.account, ChangeKind::TopicRule, &rule.name, rule.last_modified)
    }

    /// Replaces everything of a rule but its name, ARN and creation time. Returns whether it
    /// existed.
    pub fn replace_topic_rule(&mut self, rule: &TopicRule) -> Result<bool, Error> {
        let updated = self.conn.execute(
            "UPDATE topic_rules SET sql_text = $1, topic_pattern = $2, description = $3, aws_iot_sql_version = $4, \
             rule_disabled = $5, actions = $6, error_action = $7, last_modified = $8 \
             WHERE account_id = $9 AND name = $10",
            &[
                rule.sql.as_str().into(),
                rule.topic_pattern.as_str().into(),
                rule.description.as_deref().into(),
                rule.aws_iot_sql_version.as_str().into(),
                i64::from(rule.rule_disabled).into(),
                rule.actions.as_str().into(),
                rule.error_action.as_deref().into(),
                millis(rule.last_modified).into(),
                rule.account.as_str().into(),
                rule.name.as_str().into(),
            ],
        )? == 1;
        if updated {
            self.record_change(&rule.account, ChangeKind::TopicRule, &rule.name, rule.last_modified)?;
        }
        Ok(updated)
    }

    /// Enables or disables a rule. Returns whether it existed.
    pub fn set_topic_rule_disabled(
        &mut self,
        account: &AccountId,
        name: &str,
        disabled: bool,
        at: OffsetDateTime,
    ) -> Result<bool, Error> {
        let updated = self.conn.execute(
            "UPDATE topic_rules SET rule_disabled = $1, last_modified = $2 WHERE account_id = $3 AND name = $4",
            &[i64::from(disabled).into(), millis(at).into(), account.as_str().into(), name.into()],
        )? == 1;
        if updated {
            self.record_change(account, ChangeKind::TopicRule, name, at)?;
        }
        Ok(updated)
    }

    /// A topic rule of an account.
    pub fn get_topic_rule(&mut self, account: &AccountId, name: &str) -> Result<Option<TopicRule>, Error> {
        let rows = self.conn.query(
            &format!("SELECT {RULE_COLUMNS} FROM topic_rules WHERE account_id = $1 AND name = $2"),
            &[account.as_str().into(), name.into()],
        )?;
        rows.first().map(rule_from_row).transpose()
    }

    /// Deletes a topic rule. Returns whether it existed.
    pub fn delete_topic_rule(&mut self, account: &AccountId, name: &str, at: OffsetDateTime) -> Result<bool, Error> {
        let key = [Value::from(account.as_str()), Value::from(name)];
        let deleted = self.conn.execute("DELETE FROM topic_rules WHERE account_id = $1 AND name = $2", &key)? == 1;
        if deleted {
            self.record_change(account, ChangeKind::TopicRule, name, at)?;
        }
        Ok(deleted)
    }

    /// A page of an account's topic rules, by name.
    pub fn list_topic_rules(
        &mut self,
        account: &AccountId,
        filter: &TopicRuleFilter,
        page: &KeyPageRequest,
    ) -> Result<KeyPage<TopicRule>, Error> {
        let mut select = format!("SELECT {RULE_COLUMNS} FROM topic_rules WHERE account_id = $1");
        let mut params: Vec<Value> = vec![account.as_str().into()];
        if let Some(topic_pattern) = &filter.topic_pattern {
            params.push(topic_pattern.as_str().into());
            select.push_str(&format!(" AND topic_pattern = ${}", params.len()));
        }
        if let Some(disabled) = filter.rule_disabled {
            params.push(i64::from(disabled).into());
            select.push_str(&format!(" AND rule_disabled = ${}", params.len()));
        }
        let (rows, next) = self.key_page(&select, params, "name", 1, page)?;
        Ok(KeyPage { items: rows.iter().map(rule_from_row).collect::<Result<_, _>>()?, next })
    }

    /// Every enabled rule of an account, by name: what a gateway node runs.
    pub fn enabled_topic_rules(&mut self, account: &AccountId) -> Result<Vec<TopicRule>, Error> {
        let rows = self.conn.query(
            &format!(
                "SELECT {RULE_COLUMNS} FROM topic_rules WHERE account_id = $1 AND rule_disabled = 0 ORDER BY name"
            ),
            &[account.as_str().into()],
        )?;
        rows.iter().map(rule_from_row).collect()
    }
}

fn rule_from_row(row: &Row) -> Result<TopicRule, Error> {
    Ok(TopicRule {
        account: AccountId::parse(&row.text(0)?)?,
        name: row.text(1)?,
        arn: row.text(2)?,
        sql: row.text(3)?,
        topic_pattern: row.text(4)?,
        description: row.opt_text(5)?,
        aws_iot_sql_version: row.text(6)?,
        rule_disabled: row.int(7)? != 0,
        actions: row.text(8)?,
        error_action: row.opt_text(9)?,
        created_at: from_millis(row.int(10)?)?,
        last_modified: from_millis(row.int(11)?)?,
    })
}
