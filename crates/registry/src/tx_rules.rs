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

// ---- topic rule destinations ---------------------------------------------------------------------

/// The status of a topic rule destination (AWS's `TopicRuleDestinationStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestinationStatus {
    /// Created (or asked to confirm again); the confirmation was sent, not yet answered.
    InProgress,
    /// Confirmed and enabled: http actions under its URL run.
    Enabled,
    /// Disabled by the account: http actions under its URL fail.
    Disabled,
    /// The confirmation could not be delivered.
    Error,
}

impl DestinationStatus {
    /// The stored (and AWS) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationStatus::InProgress => "IN_PROGRESS",
            DestinationStatus::Enabled => "ENABLED",
            DestinationStatus::Disabled => "DISABLED",
            DestinationStatus::Error => "ERROR",
        }
    }

    /// Parses the stored (and AWS) spelling.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "IN_PROGRESS" => Some(DestinationStatus::InProgress),
            "ENABLED" => Some(DestinationStatus::Enabled),
            "DISABLED" => Some(DestinationStatus::Disabled),
            "ERROR" => Some(DestinationStatus::Error),
            _ => None,
        }
    }
}

/// A topic rule destination of an account (an http URL prefix it confirmed it controls).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicRuleDestination {
    pub account: AccountId,
    pub arn: String,
    pub confirmation_url: String,
    pub status: DestinationStatus,
    pub status_reason: Option<String>,
    /// SHA-256 (lowercase hex) of the confirmation token last sent.
    pub token_sha256: String,
    /// Whether the token was ever confirmed (then DISABLED may go back to ENABLED).
    pub confirmed: bool,
    pub created_at: OffsetDateTime,
    pub last_updated_at: OffsetDateTime,
}

const DESTINATION_COLUMNS: &str =
    "account_id, arn, confirmation_url, status, status_reason, token_sha256, confirmed, created_at, last_updated_at";

impl<'a> Tx<'a> {
    /// Adds a destination and records a `TopicRule` change (entity: its ARN).
    pub fn insert_topic_rule_destination(&mut self, destination: &TopicRuleDestination) -> Result<(), Error> {
        self.conn.execute(
            &format!("INSERT INTO topic_rule_destinations ({DESTINATION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"),
            &[
                destination.account.as_str().into(),
                destination.arn.as_str().into(),
                destination.confirmation_url.as_str().into(),
                destination.status.as_str().into(),
                destination.status_reason.as_deref().into(),
                destination.token_sha256.as_str().into(),
                i64::from(destination.confirmed).into(),
                millis(destination.created_at).into(),
                millis(destination.last_updated_at).into(),
            ],
        )?;
        self.record_change(&destination.account, ChangeKind::TopicRule, &destination.arn, destination.last_updated_at)
    }

    /// Writes a destination's status, reason, token and confirmation, and records a `TopicRule`
    /// change. Returns whether it existed.
    pub fn update_topic_rule_destination(&mut self, destination: &TopicRuleDestination) -> Result<bool, Error> {
        let updated = self.conn.execute(
            "UPDATE topic_rule_destinations SET status = $1, status_reason = $2, token_sha256 = $3, confirmed = $4, \
             last_updated_at = $5 WHERE account_id = $6 AND arn = $7",
            &[
                destination.status.as_str().into(),
                destination.status_reason.as_deref().into(),
                destination.token_sha256.as_str().into(),
                i64::from(destination.confirmed).into(),
                millis(destination.last_updated_at).into(),
                destination.account.as_str().into(),
                destination.arn.as_str().into(),
            ],
        )? == 1;
        if updated {
            self.record_change(
                &destination.account,
                ChangeKind::TopicRule,
                &destination.arn,
                destination.last_updated_at,
            )?;
        }
        Ok(updated)
    }

    /// A destination of an account, by ARN.
    pub fn get_topic_rule_destination(
        &mut self,
        account: &AccountId,
        arn: &str,
    ) -> Result<Option<TopicRuleDestination>, Error> {
        let rows = self.conn.query(
            &format!("SELECT {DESTINATION_COLUMNS} FROM topic_rule_destinations WHERE account_id = $1 AND arn = $2"),
            &[account.as_str().into(), arn.into()],
        )?;
        rows.first().map(destination_from_row).transpose()
    }

    /// The destination of an account whose last confirmation token hashes to `token_sha256`.
    pub fn topic_rule_destination_by_token(
        &mut self,
        account: &AccountId,
        token_sha256: &str,
    ) -> Result<Option<TopicRuleDestination>, Error> {
        let rows = self.conn.query(
            &format!(
                "SELECT {DESTINATION_COLUMNS} FROM topic_rule_destinations WHERE account_id = $1 AND token_sha256 = $2"
            ),
            &[account.as_str().into(), token_sha256.into()],
        )?;
        rows.first().map(destination_from_row).transpose()
    }

    /// The destination of an account with this confirmation URL, if any.
    pub fn topic_rule_destination_by_url(
        &mut self,
        account: &AccountId,
        confirmation_url: &str,
    ) -> Result<Option<TopicRuleDestination>, Error> {
        let rows = self.conn.query(
            &format!(
                "SELECT {DESTINATION_COLUMNS} FROM topic_rule_destinations WHERE account_id = $1 AND confirmation_url = $2"
            ),
            &[account.as_str().into(), confirmation_url.into()],
        )?;
        rows.first().map(destination_from_row).transpose()
    }

    /// How many destinations an account has.
    pub fn count_topic_rule_destinations(&mut self, account: &AccountId) -> Result<i64, Error> {
        let rows = self
            .conn
            .query("SELECT COUNT(*) FROM topic_rule_destinations WHERE account_id = $1", &[account.as_str().into()])?;
        rows.first().map_or(Ok(0), |row| row.int(0))
    }

    /// A page of an account's destinations, by ARN.
    pub fn list_topic_rule_destinations(
        &mut self,
        account: &AccountId,
        page: &KeyPageRequest,
    ) -> Result<KeyPage<TopicRuleDestination>, Error> {
        let select = format!("SELECT {DESTINATION_COLUMNS} FROM topic_rule_destinations WHERE account_id = $1");
        let (rows, next) = self.key_page(&select, vec![account.as_str().into()], "arn", 1, page)?;
        Ok(KeyPage { items: rows.iter().map(destination_from_row).collect::<Result<_, _>>()?, next })
    }

    /// The confirmation URLs of an account's ENABLED destinations.
    pub fn enabled_destination_urls(&mut self, account: &AccountId) -> Result<Vec<String>, Error> {
        let rows = self.conn.query(
            "SELECT confirmation_url FROM topic_rule_destinations WHERE account_id = $1 AND status = $2 \
             ORDER BY confirmation_url",
            &[account.as_str().into(), DestinationStatus::Enabled.as_str().into()],
        )?;
        rows.iter().map(|row| row.text(0)).collect()
    }

    /// Deletes a destination and records a `TopicRule` change. Returns whether it existed.
    pub fn delete_topic_rule_destination(
        &mut self,
        account: &AccountId,
        arn: &str,
        at: OffsetDateTime,
    ) -> Result<bool, Error> {
        let deleted = self.conn.execute(
            "DELETE FROM topic_rule_destinations WHERE account_id = $1 AND arn = $2",
            &[account.as_str().into(), arn.into()],
        )? == 1;
        if deleted {
            self.record_change(account, ChangeKind::TopicRule, arn, at)?;
        }
        Ok(deleted)
    }
}

fn destination_from_row(row: &Row) -> Result<TopicRuleDestination, Error> {
    let status = row.text(3)?;
    Ok(TopicRuleDestination {
        account: AccountId::parse(&row.text(0)?)?,
        arn: row.text(1)?,
        confirmation_url: row.text(2)?,
        status: DestinationStatus::parse(&status)
            .ok_or_else(|| Error::InvalidValue(format!("unknown destination status {status:?}")))?,
        status_reason: row.opt_text(4)?,
        token_sha256: row.text(5)?,
        confirmed: row.int(6)? != 0,
        created_at: from_millis(row.int(7)?)?,
        last_updated_at: from_millis(row.int(8)?)?,
    })
}
