//! Topic rule destinations (CreateTopicRuleDestination, GetTopicRuleDestination,
//! ListTopicRuleDestinations, UpdateTopicRuleDestination, DeleteTopicRuleDestination,
//! ConfirmTopicRuleDestination): the http URL prefixes an account proved it controls.
//!
//! As AWS: a destination is created IN_PROGRESS with a confirmation token, which the caller (the
//! api crate, through the egress policy) POSTs to the confirmation URL; it becomes ENABLED only
//! through [`Services::confirm_topic_rule_destination`] with that token. ENABLED and DISABLED
//! switch through UpdateTopicRuleDestination once confirmed; asking for IN_PROGRESS sends a new
//! token; a confirmation that could not be delivered leaves it in ERROR
//! ([`Services::topic_rule_destination_unreachable`]). An http action runs only when its URL is
//! under an ENABLED destination's confirmation URL ([`url_under`]), checked when the rule is
//! created or replaced and again by the rules engine before each request.
//!
//! Every write records a `TopicRule` change-feed entry (entity: the destination's ARN), so every
//! node's rule book reloads the account. The token is kept only as its SHA-256 and never logged.

use certfleet_registry::{self as registry, DestinationStatus, KeyPage, KeyPageRequest, TopicRuleDestination};

use crate::ids::{random_bytes, uuid_v4};
use crate::{Caller, Error, Services};

/// At most this many destinations per account.
pub const MAX_DESTINATIONS: i64 = 100;

/// A destination just created (or asked to confirm again), with the token to send to its
/// confirmation URL.
#[derive(Clone, Debug)]
pub struct PendingConfirmation {
    pub destination: TopicRuleDestination,
    /// The confirmation token in clear (only its hash is stored). Never log it.
    pub confirmation_token: String,
}

/// Whether `url` is under the destination URL `prefix`: equal, or longer at a path boundary
/// (`prefix` ends with `/`, or `url` continues with `/` or `?`), so `https://a.example` does not
/// cover `https://a.example.evil.net/`.
pub fn url_under(url: &str, prefix: &str) -> bool {
    match url.strip_prefix(prefix) {
        Some("") => true,
        Some(rest) => prefix.ends_with('/') || rest.starts_with(['/', '?']),
        None => false,
    }
}

impl Services {
    /// CreateTopicRuleDestination with an `httpUrlConfiguration`.
    pub fn create_topic_rule_destination(
        &self,
        caller: &Caller,
        confirmation_url: &str,
    ) -> Result<PendingConfirmation, Error> {
        check_destination_url(confirmation_url)?;
        let (token, token_sha256) = new_token()?;
        let now = self.now();
        let destination = TopicRuleDestination {
            account: caller.account.clone(),
            arn: self.arn(&caller.account, &format!("ruledestination/http/{}", uuid_v4()?)),
            confirmation_url: confirmation_url.to_owned(),
            status: DestinationStatus::InProgress,
            status_reason: None,
            token_sha256,
            confirmed: false,
            created_at: now,
            last_updated_at: now,
        };
        registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            if let Some(existing) = tx.topic_rule_destination_by_url(&caller.account, confirmation_url)? {
                return Err(Error::AlreadyExists {
                    message: format!("a topic rule destination for {confirmation_url} already exists"),
                    resource_id: existing.arn.clone(),
                    resource_arn: Some(existing.arn),
                });
            }
            if tx.count_topic_rule_destinations(&caller.account)? >= MAX_DESTINATIONS {
                return Err(Error::LimitExceeded(format!(
                    "an account has at most {MAX_DESTINATIONS} topic rule destinations"
                )));
            }
            tx.insert_topic_rule_destination(&destination).map_err(Error::from)
        })?;
        tracing::info!(account = %caller.account, arn = destination.arn, "topic rule destination created");
        Ok(PendingConfirmation { destination, confirmation_token: token })
    }

    /// GetTopicRuleDestination.
    pub fn get_topic_rule_destination(&self, caller: &Caller, arn: &str) -> Result<TopicRuleDestination, Error> {
        registry::read(self.store(), |tx| tx.get_topic_rule_destination(&caller.account, arn).map_err(Error::from))?
            .ok_or_else(|| missing(arn))
    }

    /// ListTopicRuleDestinations, by ARN.
    pub fn list_topic_rule_destinations(
        &self,
        caller: &Caller,
        page: &KeyPageRequest,
    ) -> Result<KeyPage<TopicRuleDestination>, Error> {
        registry::read(self.store(), |tx| tx.list_topic_rule_destinations(&caller.account, page).map_err(Error::from))
    }

    /// UpdateTopicRuleDestination. ENABLED needs a confirmed destination; DISABLED an enabled
    /// or disabled one; IN_PROGRESS sends a new token (returned, to be POSTed); ERROR is the
    /// server's to set.
    pub fn update_topic_rule_destination(
        &self,
        caller: &Caller,
        arn: &str,
        status: DestinationStatus,
    ) -> Result<Option<PendingConfirmation>, Error> {
        let fresh = match status {
            DestinationStatus::InProgress => Some(new_token()?),
            DestinationStatus::Enabled | DestinationStatus::Disabled | DestinationStatus::Error => None,
        };
        let now = self.now();
        let updated = registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let existing = tx.get_topic_rule_destination(&caller.account, arn)?.ok_or_else(|| missing(arn))?;
            let refuse = |why: &str| {
                Err(Error::InvalidRequest(format!(
                    "cannot set the destination {arn} from {} to {}: {why}",
                    existing.status.as_str(),
                    status.as_str()
                )))
            };
            let mut updated =
                TopicRuleDestination { status, status_reason: None, last_updated_at: now, ..existing.clone() };
            match status {
                DestinationStatus::Enabled if !existing.confirmed => return refuse("it was never confirmed"),
                DestinationStatus::Enabled => {}
                DestinationStatus::Disabled => match existing.status {
                    DestinationStatus::Enabled | DestinationStatus::Disabled => {}
                    DestinationStatus::InProgress | DestinationStatus::Error => {
                        return refuse("only an enabled destination can be disabled");
                    }
                },
                DestinationStatus::InProgress => {
                    if let Some((_, hash)) = &fresh {
                        updated.token_sha256 = hash.clone();
                    }
                    updated.confirmed = false;
                }
                DestinationStatus::Error => return refuse("ERROR is set by the server"),
            }
            tx.update_topic_rule_destination(&updated)?;
            Ok::<_, Error>(updated)
        })?;
        tracing::info!(account = %caller.account, arn, status = status.as_str(), "topic rule destination updated");
        Ok(fresh.map(|(token, _)| PendingConfirmation { destination: updated, confirmation_token: token }))
    }

    /// ConfirmTopicRuleDestination: the token sent to an IN_PROGRESS destination enables it.
    pub fn confirm_topic_rule_destination(&self, caller: &Caller, token: &str) -> Result<TopicRuleDestination, Error> {
        let invalid = || Error::InvalidRequest("the confirmation token is not valid".into());
        if token.is_empty() || token.len() > 2048 {
            return Err(invalid());
        }
        let hash = sha256_hex(token);
        let now = self.now();
        let confirmed = registry::write(self.store(), |tx| {
            tx.lock_account(&caller.account)?;
            let existing = tx.topic_rule_destination_by_token(&caller.account, &hash)?.ok_or_else(invalid)?;
            if existing.status != DestinationStatus::InProgress {
                return Err(Error::InvalidRequest(format!(
                    "the destination {} is {}, not IN_PROGRESS",
                    existing.arn,
                    existing.status.as_str()
                )));
            }
            let confirmed = TopicRuleDestination {
                status: DestinationStatus::Enabled,
                status_reason: None,
                confirmed: true,
                last_updated_at: now,
                ..existing
            };
            tx.update_topic_rule_destination(&confirmed)?;
            Ok::<_, Error>(confirmed)
        })?;
        tracing::info!(account = %caller.account, arn = confirmed.arn, "topic rule destination confirmed");
        Ok(confirmed)
    }

    /// DeleteTopicRuleDestination.
    pub fn delete_topic_rule_destination(&self, caller: &Caller, arn: &str) -> Result<(), Error> {
        let now = self.now();
        let deleted = registry::write(self.store(), |tx| tx.delete_topic_rule_destination(&caller.account, arn, now))?;
        if !deleted {
            return Err(missing(arn));
        }
        tracing::info!(account = %caller.account, arn, "topic rule destination deleted");
        Ok(())
    }

    /// The confirmation of `pending` could not be delivered: the destination goes to ERROR with
    /// `reason` (already generic: it is shown to the tenant), unless it moved on meanwhile (a
    /// newer token, a confirmation, a deletion).
    pub fn topic_rule_destination_unreachable(&self, pending: &PendingConfirmation, reason: &str) -> Result<(), Error> {
        let sent = &pending.destination;
        let now = self.now();
        registry::write(self.store(), |tx| {
            tx.lock_account(&sent.account)?;
            let Some(current) = tx.get_topic_rule_destination(&sent.account, &sent.arn)? else { return Ok(()) };
            if current.status != DestinationStatus::InProgress || current.token_sha256 != sent.token_sha256 {
                return Ok(());
            }
            let failed = TopicRuleDestination {
                status: DestinationStatus::Error,
                status_reason: Some(format!("the confirmation could not be delivered: {reason}")),
                last_updated_at: now,
                ..current
            };
            tx.update_topic_rule_destination(&failed)?;
            Ok::<_, Error>(())
        })
    }
}

/// AWS's model gives these operations no ResourceNotFoundException: a destination the caller
/// does not have is answered like a rule it does not have, `UnauthorizedException`.
fn missing(arn: &str) -> Error {
    Error::RuleNotFound(format!("the topic rule destination {arn} does not exist"))
}

/// A confirmation URL: `https://` or `http://` (the egress policy decides which may be sent
/// to), a host, no user information, at most 2000 characters.
fn check_destination_url(url: &str) -> Result<(), Error> {
    crate::topic_rules::check_url_syntax(url, "confirmationUrl")
}

/// A new token (64 hex digits) and its SHA-256.
fn new_token() -> Result<(String, String), Error> {
    let token = hex::encode(random_bytes::<32>()?);
    let hash = sha256_hex(&token);
    Ok((token, hash))
}

fn sha256_hex(token: &str) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::url_under;

    #[test]
    fn urls_under_a_destination() {
        for (url, prefix, expected) in [
            ("https://a.example/hook", "https://a.example/hook", true),
            ("https://a.example/hook/1", "https://a.example/hook", true),
            ("https://a.example/hook?x=1", "https://a.example/hook", true),
            ("https://a.example/hooks", "https://a.example/hook", false),
            ("https://a.example/x", "https://a.example/", true),
            ("https://a.example/x", "https://a.example", true),
            ("https://a.example.evil.net/x", "https://a.example", false),
            ("https://a.example:444/x", "https://a.example", false),
            ("https://a.example@evil/x", "https://a.example", false),
            ("http://a.example/x", "https://a.example", false),
        ] {
            assert_eq!(url_under(url, prefix), expected, "{url} under {prefix}");
        }
    }
}
