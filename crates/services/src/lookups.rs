//! Read-only lookups for the data plane: what a gateway node needs to decide whether a device
//! may connect, and the change feed it follows to keep its cache true.

use certfleet_pki::CertificateId;
use certfleet_registry::{self as registry, Account, AccountId, CaCertificate, Change, DeviceCertificate};

use crate::{Error, Services};

/// One entry of the connection history, as a gateway node records it.
#[derive(Clone, Debug)]
pub enum ConnectionEvent {
    /// A device connected.
    Connected(certfleet_registry::ConnectionRecord),
    /// A connection ended, and why (AWS's disconnectReason values).
    Disconnected { session_id: String, at: time::OffsetDateTime, reason: String },
}

impl Services {
    /// A device certificate of an account, as the gateway sees it.
    pub fn lookup_certificate(
        &self,
        account: &AccountId,
        id: &CertificateId,
    ) -> Result<Option<DeviceCertificate>, Error> {
        registry::read(self.store(), |tx| tx.get_certificate(account, id).map_err(Error::from))
    }

    /// A CA certificate of an account.
    pub fn lookup_ca_certificate(
        &self,
        account: &AccountId,
        id: &CertificateId,
    ) -> Result<Option<CaCertificate>, Error> {
        registry::read(self.store(), |tx| tx.get_ca(account, id).map_err(Error::from))
    }

    /// The accounts in which a certificate is registered (for the log of a refused device).
    pub fn accounts_holding_certificate(&self, id: &CertificateId) -> Result<Vec<AccountId>, Error> {
        registry::read(self.store(), |tx| tx.certificate_accounts(id).map_err(Error::from))
    }

    /// The account whose endpoint identifier this is.
    pub fn account_by_endpoint(&self, endpoint_identifier: &str) -> Result<Option<Account>, Error> {
        registry::read(self.store(), |tx| tx.account_by_endpoint(endpoint_identifier).map_err(Error::from))
    }

    /// An account by ID.
    pub fn lookup_account(&self, account: &AccountId) -> Result<Option<Account>, Error> {
        registry::read(self.store(), |tx| tx.get_account(account).map_err(Error::from))
    }

    /// Up to `limit` change-feed entries after `seq`.
    pub fn changes_after(&self, seq: i64, limit: u32) -> Result<Vec<Change>, Error> {
        registry::read(self.store(), |tx| tx.changes_after(seq, limit).map_err(Error::from))
    }

    /// The newest change-feed sequence number: where a new follower starts.
    pub fn last_change_seq(&self) -> Result<i64, Error> {
        registry::read(self.store(), |tx| tx.last_change_seq().map_err(Error::from))
    }

    /// Forgets change-feed entries older than `age`.
    pub fn prune_changes(&self, age: time::Duration) -> Result<u64, Error> {
        let before = self.now() - age;
        registry::write(self.store(), |tx| tx.prune_changes(before).map_err(Error::from))
    }
}

impl Services {
    /// Records connections and disconnections in one transaction: a gateway node batches what
    /// queued up while the previous batch was written, so a connect storm costs one commit per
    /// batch, not two per connection. All or nothing; the caller may retry them one by one.
    ///
    /// A connection that ended within the batch is written as one closed row (one statement
    /// rather than an insert and an update): in a reconnect storm that is most of them.
    pub fn record_connection_events(&self, events: &[ConnectionEvent]) -> Result<(), Error> {
        let mut opened: Vec<certfleet_registry::ConnectionRecord> = Vec::new();
        let mut by_session: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        let mut closed_earlier = Vec::new();
        for event in events {
            match event {
                ConnectionEvent::Connected(record) => {
                    by_session.insert(&record.session_id, opened.len());
                    opened.push(record.clone());
                }
                ConnectionEvent::Disconnected { session_id, at, reason } => match by_session.get(session_id.as_str()) {
                    Some(&index) => {
                        opened[index].disconnected_at = Some(*at);
                        opened[index].disconnect_reason = Some(reason.clone());
                    }
                    None => closed_earlier.push((session_id, *at, reason)),
                },
            }
        }
        registry::write(self.store(), |tx| {
            // The connections of an account deleted meanwhile go.
            let present = tx.lock_accounts_present(opened.iter().map(|record| &record.account))?;
            for record in opened.iter().filter(|record| present.binary_search(&record.account).is_ok()) {
                tx.insert_connection(record)?;
            }
            for (session_id, at, reason) in &closed_earlier {
                tx.close_connection(session_id, *at, reason)?;
            }
            Ok::<_, Error>(())
        })
    }

    /// Which client IDs used which certificates since `since` (of one certificate when given).
    pub fn connection_history(
        &self,
        account: &AccountId,
        certificate: Option<&CertificateId>,
        since: time::OffsetDateTime,
    ) -> Result<Vec<certfleet_registry::ConnectionRecord>, Error> {
        registry::read(self.store(), |tx| tx.connections_since(account, certificate, since).map_err(Error::from))
    }
}
