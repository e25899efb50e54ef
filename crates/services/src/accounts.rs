//! Accounts, their access keys and registration codes (the admin side and GetRegistrationCode).

use certfleet_registry::{self as registry, AccessKey, Account, AccountId, ChangeKind};
use time::OffsetDateTime;

use crate::ids::{random_string, registration_code};
use crate::{Caller, Error, Services};

const DIGITS: &[u8] = b"0123456789";
const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const KEY_ID_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// A freshly created access key: the only moment its secret is handed out.
#[derive(Clone)]
pub struct NewAccessKey {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub account: AccountId,
}

impl std::fmt::Debug for NewAccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewAccessKey").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

/// An access key as listed: everything but its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessKeySummary {
    pub access_key_id: String,
    pub account: AccountId,
    pub created_at: OffsetDateTime,
}

impl Services {
    /// Creates an account with a random 12-digit ID and endpoint identifier.
    pub fn create_account(&self) -> Result<Account, Error> {
        let account = Account {
            id: AccountId::parse(&random_string(DIGITS, 12)?)?,
            endpoint_identifier: random_string(LOWER_ALNUM, 14)?,
            registration_code: None,
            created_at: self.now(),
        };
        registry::write(self.store(), |tx| {
            tx.insert_account(&account)?;
            tx.record_change(&account.id, ChangeKind::Account, account.id.as_str(), account.created_at)
                .map_err(Error::from)
        })?;
        tracing::info!(account = %account.id, "account created");
        Ok(account)
    }

    /// Every account.
    pub fn list_accounts(&self) -> Result<Vec<Account>, Error> {
        registry::read(self.store(), |tx| tx.list_accounts().map_err(Error::from))
    }

    /// Deletes an account and everything it owns (its access keys, certificates, CAs, policies,
    /// things, rules, audits, rotations, domain configurations, history and tags), in one
    /// transaction that locks the account row first, so that a write racing the deletion either
    /// commits before it (and is deleted with the rest) or finds the account gone and lands
    /// nothing. The change-feed entry makes every API node forget the account's keys and every
    /// gateway node close its devices' sessions.
    pub fn delete_account(&self, account: &AccountId) -> Result<(), Error> {
        let now = self.now();
        let existed = registry::write(self.store(), |tx| {
            let existed = tx.delete_account(account)?;
            if existed {
                tx.record_change(account, ChangeKind::Account, account.as_str(), now)?;
            }
            Ok::<_, Error>(existed)
        })?;
        if !existed {
            return Err(Error::NotFound(format!("account {account} does not exist")));
        }
        tracing::info!(%account, "account deleted");
        Ok(())
    }

    /// Creates an access key for an account. The change-feed entry, in the same transaction,
    /// makes every API node forget that it found no key of this ID.
    pub fn create_access_key(&self, account: &AccountId) -> Result<NewAccessKey, Error> {
        let key = AccessKey {
            access_key_id: format!("AKIA{}", random_string(KEY_ID_ALPHABET, 16)?),
            secret_access_key: random_string(SECRET_ALPHABET, 40)?,
            account: account.clone(),
            created_at: self.now(),
        };
        registry::write(self.store(), |tx| {
            if tx.lock_account_if_present(account)?.is_none() {
                return Err(Error::NotFound(format!("account {account} does not exist")));
            }
            tx.insert_access_key(&key)?;
            // API nodes that remember the ID as unknown forget that.
            tx.record_change(account, ChangeKind::AccessKey, &key.access_key_id, key.created_at).map_err(Error::from)
        })?;
        tracing::info!(%account, access_key_id = %key.access_key_id, "access key created");
        Ok(NewAccessKey {
            access_key_id: key.access_key_id,
            secret_access_key: key.secret_access_key,
            account: key.account,
        })
    }

    /// An account's access keys, oldest first, without their secrets.
    pub fn list_access_keys(&self, account: &AccountId) -> Result<Vec<AccessKeySummary>, Error> {
        registry::read(self.store(), |tx| {
            if tx.get_account(account)?.is_none() {
                return Err(Error::NotFound(format!("account {account} does not exist")));
            }
            let keys = tx.list_access_keys(account)?;
            Ok(keys
                .into_iter()
                .map(|key| AccessKeySummary {
                    access_key_id: key.access_key_id,
                    account: key.account,
                    created_at: key.created_at,
                })
                .collect())
        })
    }

    /// Deletes one of an account's access keys. The change-feed entry, in the same transaction,
    /// makes every API node forget the key's signing keys: requests signed with it are refused
    /// from then on. A key of another account is answered as a key that does not exist.
    pub fn delete_access_key(&self, account: &AccountId, access_key_id: &str) -> Result<(), Error> {
        let now = self.now();
        registry::write(self.store(), |tx| {
            if tx.lock_account_if_present(account)?.is_none() {
                return Err(Error::NotFound(format!("account {account} does not exist")));
            }
            if !tx.delete_access_key(account, access_key_id)? {
                return Err(Error::NotFound(format!("account {account} has no access key {access_key_id}")));
            }
            tx.record_change(account, ChangeKind::AccessKey, access_key_id, now).map_err(Error::from)
        })?;
        tracing::info!(%account, access_key_id, "access key deleted");
        Ok(())
    }

    /// The access key with this ID, if any: what SigV4 verification looks up.
    pub fn find_access_key(&self, access_key_id: &str) -> Result<Option<AccessKey>, Error> {
        registry::read(self.store(), |tx| tx.get_access_key(access_key_id).map_err(Error::from))
    }

    /// GetRegistrationCode: the account's code, created on first request and stable after.
    pub fn get_registration_code(&self, caller: &Caller) -> Result<String, Error> {
        let fresh = registration_code()?;
        registry::write(self.store(), |tx| {
            let account = tx.lock_account(&caller.account)?;
            match account.registration_code {
                Some(code) => Ok(code),
                None => {
                    tx.set_registration_code(&caller.account, Some(&fresh))?;
                    Ok(fresh.clone())
                }
            }
        })
    }

    /// DeleteRegistrationCode: the next GetRegistrationCode makes a new one.
    pub fn delete_registration_code(&self, caller: &Caller) -> Result<(), Error> {
        registry::write(self.store(), |tx| {
            let account = tx.lock_account(&caller.account)?;
            if account.registration_code.is_none() {
                return Err(Error::NotFound("the account has no registration code".into()));
            }
            tx.set_registration_code(&caller.account, None).map_err(Error::from)
        })
    }

    pub(crate) fn account(&self, caller: &Caller) -> Result<Account, Error> {
        registry::read(self.store(), |tx| tx.get_account(&caller.account)?.ok_or_else(|| missing_account(caller)))
    }
}

pub(crate) fn missing_account(caller: &Caller) -> Error {
    Error::AccountGone(caller.account.clone())
}
