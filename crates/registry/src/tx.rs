//! Every registry operation, written once over [`Conn`] and run inside a transaction.

use certfleet_pki::CertificateId;
use time::OffsetDateTime;

use crate::Error;
use crate::conn::{Conn, Row, Value};
use crate::model::*;

/// An open transaction: the only way to read or change the registry.
pub struct Tx<'a> {
    pub(crate) conn: &'a mut dyn Conn,
    /// Change-feed entries this transaction recorded ([`Tx::changes_recorded`]).
    changes: u32,
}

const ACCOUNT_COLUMNS: &str = "id, endpoint_identifier, registration_code, created_at";
const CA_COLUMNS: &str = "account_id, id, pem, subject_key, status, mode, auto_registration, \
     has_registration_config, template_body, role_arn, template_name, generation_id, customer_version, \
     not_before, not_after, created_at, last_modified";
const CERT_COLUMNS: &str = "account_id, id, pem, ca_certificate_id, status, mode, previous_owner, \
     generation_id, customer_version, not_before, not_after, created_at, last_modified, \
     transfer_pending_to, transfer_message, transfer_reject_reason, transfer_date, \
     transfer_accept_date, transfer_reject_date";

/// Rows per multi-row INSERT of [`Tx::insert_certificates`]: 500 rows of 20 values stay well under
/// SQLite's 32,766 and PostgreSQL's 65,535 bound parameters.
const BULK_ROWS: usize = 500;

impl<'a> Tx<'a> {
    pub(crate) fn new(conn: &'a mut dyn Conn) -> Self {
        Tx { conn, changes: 0 }
    }

    /// How many change-feed entries this transaction recorded so far: a store that tells
    /// followers of its commits (`certfleet_services::feed::Announcing`) reads it.
    pub fn changes_recorded(&self) -> u32 {
        self.changes
    }

    // ---- accounts -------------------------------------------------------------------------

    /// Adds an account.
    pub fn insert_account(&mut self, account: &Account) -> Result<(), Error> {
        self.conn.execute(
            &format!("INSERT INTO accounts ({ACCOUNT_COLUMNS}) VALUES ($1, $2, $3, $4)"),
            &[
                account.id.as_str().into(),
                account.endpoint_identifier.as_str().into(),
                account.registration_code.as_deref().into(),
                millis(account.created_at).into(),
            ],
        )?;
        Ok(())
    }

    /// An account by ID.
    pub fn get_account(&mut self, id: &AccountId) -> Result<Option<Account>, Error> {
        let rows =
            self.conn.query(&format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1"), &[id.as_str().into()])?;
        rows.first().map(account_from_row).transpose()
    }

    /// An account by ID, locked against concurrent writers and its deletion until the
    /// transaction ends. Every write made for an account takes this lock first: it serialises the
    /// per-account rules, and it is how a write learns, inside its own transaction, that the
    /// account is gone ([`Error::AccountNotFound`]), so that nothing lands for a deleted account.
    pub fn lock_account(&mut self, id: &AccountId) -> Result<Account, Error> {
        self.lock_account_if_present(id)?.ok_or_else(|| Error::AccountNotFound(id.clone()))
    }

    /// [`Tx::lock_account`] for batches spanning accounts (connection history, sweeps), which skip
    /// the rows of a deleted account instead of failing: `None` when the account is gone. Lock
    /// several accounts in ascending ID order, as every multi-account write does.
    pub fn lock_account_if_present(&mut self, id: &AccountId) -> Result<Option<Account>, Error> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1{}", self.conn.for_update());
        let rows = self.conn.query(&sql, &[id.as_str().into()])?;
        rows.first().map(account_from_row).transpose()
    }

    /// Locks the accounts a batch's rows belong to, in ascending ID order (so two batches cannot
    /// deadlock), and answers those still present, sorted: the caller writes only their rows
    /// and drops those of an account deleted meanwhile.
    pub fn lock_accounts_present<'id>(
        &mut self,
        accounts: impl IntoIterator<Item = &'id AccountId>,
    ) -> Result<Vec<AccountId>, Error> {
        let mut accounts: Vec<&AccountId> = accounts.into_iter().collect();
        accounts.sort();
        accounts.dedup();
        let mut present = Vec::with_capacity(accounts.len());
        for account in accounts {
            if self.lock_account_if_present(account)?.is_some() {
                present.push(account.clone());
            }
        }
        Ok(present)
    }

    /// The account whose data endpoint has this identifier.
    pub fn account_by_endpoint(&mut self, endpoint_identifier: &str) -> Result<Option<Account>, Error> {
        let rows = self.conn.query(
            &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE endpoint_identifier = $1"),
            &[endpoint_identifier.into()],
        )?;
        rows.first().map(account_from_row).transpose()
    }

    /// Every account, oldest first.
    pub fn list_accounts(&mut self) -> Result<Vec<Account>, Error> {
        let rows = self.conn.query(&format!("SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY created_at, id"), &[])?;
        rows.iter().map(account_from_row).collect()
    }

    /// Deletes an account with everything it owns. Returns whether it existed.
    ///
    /// The account row is locked first: a write for the account that took its lock earlier has
    /// committed by then, so its rows are deleted below; one that comes later finds the account
    /// gone ([`Tx::lock_account`]). Either way no row is left owned by no account.
    pub fn delete_account(&mut self, id: &AccountId) -> Result<bool, Error> {
        if self.lock_account_if_present(id)?.is_none() {
            return Ok(false);
        }
        let account = [Value::from(id.as_str())];
        for table in [
            "access_keys",
            "certificates",
            "ca_certificates",
            "connections",
            "policies",
            "policy_versions",
            "policy_attachments",
            "things",
            "thing_attributes",
            "thing_principals",
            "provisioning_templates",
            "provisioning_template_versions",
            "provisioning_claims",
            "server_certificates",
            "domain_configurations",
            "endpoint_probes",
            "audit_configurations",
            "audit_notification_targets",
            "audit_check_configurations",
            "audit_tasks",
            "audit_check_runs",
            "audit_findings",
            "scheduled_audits",
            "audit_crls",
            "rotation_campaigns",
            "rotations",
            "topic_rules",
            "thing_types",
            "thing_groups",
            "thing_group_attributes",
            "thing_group_members",
            "group_policy_attachments",
        ] {
            self.conn.execute(&format!("DELETE FROM {table} WHERE account_id = $1"), &account)?;
        }
        self.conn
            .execute("DELETE FROM tags WHERE resource_arn LIKE $1", &[format!("arn:%:%:%:{}:%", id.as_str()).into()])?;
        Ok(self.conn.execute("DELETE FROM accounts WHERE id = $1", &account)? == 1)
    }

    /// Sets or clears an account's registration code.
    pub fn set_registration_code(&mut self, id: &AccountId, code: Option<&str>) -> Result<(), Error> {
        self.conn
            .execute("UPDATE accounts SET registration_code = $1 WHERE id = $2", &[code.into(), id.as_str().into()])?;
        Ok(())
    }

    // ---- access keys ----------------------------------------------------------------------

    /// Adds an access key.
    pub fn insert_access_key(&mut self, key: &AccessKey) -> Result<(), Error> {
        self.conn.execute(
            "INSERT INTO access_keys (access_key_id, secret_access_key, account_id, created_at) \
             VALUES ($1, $2, $3, $4)",
            &[
                key.access_key_id.as_str().into(),
                key.secret_access_key.as_str().into(),
                key.account.as_str().into(),
                millis(key.created_at).into(),
            ],
        )?;
        Ok(())
    }

    /// An access key by its ID.
    pub fn get_access_key(&mut self, access_key_id: &str) -> Result<Option<AccessKey>, Error> {
        let rows = self.conn.query(
            "SELECT access_key_id, secret_access_key, account_id, created_at FROM access_keys \
             WHERE access_key_id = $1",
            &[access_key_id.into()],
        )?;
        rows.first().map(access_key_from_row).transpose()
    }

    /// An account's access keys, oldest first.
    pub fn list_access_keys(&mut self, account: &AccountId) -> Result<Vec<AccessKey>, Error> {
        let rows = self.conn.query(
            "SELECT access_key_id, secret_access_key, account_id, created_at FROM access_keys \
             WHERE account_id = $1 ORDER BY created_at, access_key_id",
            &[account.as_str().into()],
        )?;
        rows.iter().map(access_key_from_row).collect()
    }

    /// Deletes an account's access key. Returns whether the account had it.
    pub fn delete_access_key(&mut self, account: &AccountId, access_key_id: &str) -> Result<bool, Error> {
        Ok(self.conn.execute(
            "DELETE FROM access_keys WHERE account_id = $1 AND access_key_id = $2",
            &[account.as_str().into(), access_key_id.into()],
        )? == 1)
    }

    // ---- CA certificates ------------------------------------------------------------------

    /// Adds a CA certificate to an account.
    pub fn insert_ca(&mut self, ca: &CaCertificate) -> Result<(), Error> {
        let config = ca.registration_config.clone().unwrap_or_default();
        self.conn.execute(
            &format!(
                "INSERT INTO ca_certificates ({CA_COLUMNS}) VALUES \
                 ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
            ),
            &[
                ca.account.as_str().into(),
                ca.id.as_str().into(),
                ca.pem.as_str().into(),
                ca.subject_key.as_str().into(),
                ca.status.as_str().into(),
                ca.mode.as_str().into(),
                i64::from(ca.auto_registration).into(),
                i64::from(ca.registration_config.is_some()).into(),
                config.template_body.into(),
                config.role_arn.into(),
                config.template_name.into(),
                ca.generation_id.as_str().into(),
                ca.customer_version.into(),
                millis(ca.not_before).into(),
                millis(ca.not_after).into(),
                millis(ca.created_at).into(),
                millis(ca.last_modified).into(),
            ],
        )?;
        Ok(())
    }

    /// Rewrites a CA certificate's mutable fields.
    pub fn update_ca(&mut self, ca: &CaCertificate) -> Result<(), Error> {
        let config = ca.registration_config.clone().unwrap_or_default();
        self.conn.execute(
            "UPDATE ca_certificates SET status = $1, auto_registration = $2, has_registration_config = $3, \
             template_body = $4, role_arn = $5, template_name = $6, generation_id = $7, \
             customer_version = $8, last_modified = $9 WHERE account_id = $10 AND id = $11",
            &[
                ca.status.as_str().into(),
                i64::from(ca.auto_registration).into(),
                i64::from(ca.registration_config.is_some()).into(),
                config.template_body.into(),
                config.role_arn.into(),
                config.template_name.into(),
                ca.generation_id.as_str().into(),
                ca.customer_version.into(),
                millis(ca.last_modified).into(),
                ca.account.as_str().into(),
                ca.id.as_str().into(),
            ],
        )?;
        Ok(())
    }

    /// A CA certificate of an account.
    pub fn get_ca(&mut self, account: &AccountId, id: &CertificateId) -> Result<Option<CaCertificate>, Error> {
        let rows = self.conn.query(
            &format!("SELECT {CA_COLUMNS} FROM ca_certificates WHERE account_id = $1 AND id = $2"),
            &[account.as_str().into(), id.as_str().into()],
        )?;
        rows.first().map(ca_from_row).transpose()
    }

    /// Deletes a CA certificate. Returns whether it existed.
    pub fn delete_ca(&mut self, account: &AccountId, id: &CertificateId) -> Result<bool, Error> {
        Ok(self.conn.execute(
            "DELETE FROM ca_certificates WHERE account_id = $1 AND id = $2",
            &[account.as_str().into(), id.as_str().into()],
        )? == 1)
    }

    /// The CA certificates of an account whose subject has this key.
    pub fn cas_with_subject(&mut self, account: &AccountId, subject_key: &str) -> Result<Vec<CaCertificate>, Error> {
        let rows = self.conn.query(
            &format!(
                "SELECT {CA_COLUMNS} FROM ca_certificates WHERE account_id = $1 AND subject_key = $2 \
                 ORDER BY created_at, id"
            ),
            &[account.as_str().into(), subject_key.into()],
        )?;
        rows.iter().map(ca_from_row).collect()
    }

    /// The account that holds this CA in DEFAULT mode, if any (at most one per region).
    pub fn default_mode_holder(&mut self, id: &CertificateId) -> Result<Option<AccountId>, Error> {
        let rows = self.conn.query(
            "SELECT account_id FROM ca_certificates WHERE id = $1 AND mode = 'DEFAULT'",
            &[id.as_str().into()],
        )?;
        rows.first().map(|row| AccountId::parse(&row.text(0)?)).transpose()
    }

    /// A page of an account's CA certificates, by creation date.
    pub fn list_cas(&mut self, account: &AccountId, page: &PageRequest) -> Result<Page<CaCertificate>, Error> {
        let (rows, next) = self.page(
            &format!("SELECT {CA_COLUMNS} FROM ca_certificates WHERE account_id = $1"),
            vec![account.as_str().into()],
            page,
        )?;
        Ok(Page { items: rows.iter().map(ca_from_row).collect::<Result<_, _>>()?, next })
    }

    // ---- device certificates --------------------------------------------------------------

    /// Adds a device certificate to an account.
    pub fn insert_certificate(&mut self, cert: &DeviceCertificate) -> Result<(), Error> {
        let mut values = cert_values(cert);
        values.truncate(13);
        values.extend(transfer_values(&cert.transfer));
        values.push(crate::tx_console::subject_cn_value(&cert.pem));
        self.conn.execute(
            &format!(
                "INSERT INTO certificates ({CERT_COLUMNS}, subject_cn) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                 $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)"
            ),
            &values,
        )?;
        Ok(())
    }

    /// Adds many device certificates with multi-row INSERTs of up to 500 rows: the same
    /// rows [`Tx::insert_certificate`] writes, one statement per chunk instead of one per
    /// certificate. For bulk loads (the load tool seeds a million certificates with it), where a
    /// round trip per row would dominate; the caller keeps the change feed up to date if it must.
    pub fn insert_certificates(&mut self, certs: &[DeviceCertificate]) -> Result<(), Error> {
        for chunk in certs.chunks(BULK_ROWS) {
            let mut values = Vec::with_capacity(chunk.len() * 20);
            let mut rows = Vec::with_capacity(chunk.len());
            for cert in chunk {
                let first = values.len() + 1;
                let placeholders: Vec<String> = (first..first + 20).map(|index| format!("${index}")).collect();
                rows.push(format!("({})", placeholders.join(", ")));
                let mut row = cert_values(cert);
                row.truncate(13);
                row.extend(transfer_values(&cert.transfer));
                row.push(crate::tx_console::subject_cn_value(&cert.pem));
                values.extend(row);
            }
            self.conn.execute(
                &format!("INSERT INTO certificates ({CERT_COLUMNS}, subject_cn) VALUES {}", rows.join(", ")),
                &values,
            )?;
        }
        Ok(())
    }

    /// Rewrites a device certificate's mutable fields (status, owner history, transfer data).
    pub fn update_certificate(&mut self, cert: &DeviceCertificate) -> Result<(), Error> {
        let mut values = vec![
            cert.status.as_str().into(),
            cert.previous_owner.as_ref().map(AccountId::as_str).into(),
            cert.generation_id.as_str().into(),
            cert.customer_version.into(),
            millis(cert.last_modified).into(),
        ];
        values.extend(transfer_values(&cert.transfer));
        values.push(cert.account.as_str().into());
        values.push(cert.id.as_str().into());
        self.conn.execute(
            "UPDATE certificates SET status = $1, previous_owner = $2, generation_id = $3, \
             customer_version = $4, last_modified = $5, transfer_pending_to = $6, transfer_message = $7, \
             transfer_reject_reason = $8, transfer_date = $9, transfer_accept_date = $10, \
             transfer_reject_date = $11 WHERE account_id = $12 AND id = $13",
            &values,
        )?;
        Ok(())
    }

    /// Moves a certificate to another account (an accepted transfer). The caller then updates it.
    pub fn change_certificate_owner(
        &mut self,
        id: &CertificateId,
        from: &AccountId,
        to: &AccountId,
    ) -> Result<(), Error> {
        self.conn.execute(
            "UPDATE certificates SET account_id = $1 WHERE account_id = $2 AND id = $3",
            &[to.as_str().into(), from.as_str().into(), id.as_str().into()],
        )?;
        Ok(())
    }

    /// A device certificate of an account.
    pub fn get_certificate(
        &mut self,
        account: &AccountId,
        id: &CertificateId,
    ) -> Result<Option<DeviceCertificate>, Error> {
        let rows = self.conn.query(
            &format!("SELECT {CERT_COLUMNS} FROM certificates WHERE account_id = $1 AND id = $2"),
            &[account.as_str().into(), id.as_str().into()],
        )?;
        rows.first().map(cert_from_row).transpose()
    }

    /// The accounts in which a certificate is registered (several with multi-account registration).
    pub fn certificate_accounts(&mut self, id: &CertificateId) -> Result<Vec<AccountId>, Error> {
        let rows = self
            .conn
            .query("SELECT account_id FROM certificates WHERE id = $1 ORDER BY account_id", &[id.as_str().into()])?;
        rows.iter().map(|row| AccountId::parse(&row.text(0)?)).collect()
    }

    /// A certificate offered to `target` by a pending transfer.
    pub fn certificate_pending_transfer_to(
        &mut self,
        target: &AccountId,
        id: &CertificateId,
    ) -> Result<Option<DeviceCertificate>, Error> {
        let rows = self.conn.query(
            &format!("SELECT {CERT_COLUMNS} FROM certificates WHERE transfer_pending_to = $1 AND id = $2"),
            &[target.as_str().into(), id.as_str().into()],
        )?;
        rows.first().map(cert_from_row).transpose()
    }

    /// Deletes a device certificate. Returns whether it existed.
    pub fn delete_certificate(&mut self, account: &AccountId, id: &CertificateId) -> Result<bool, Error> {
        Ok(self.conn.execute(
            "DELETE FROM certificates WHERE account_id = $1 AND id = $2",
            &[account.as_str().into(), id.as_str().into()],
        )? == 1)
    }

    /// A page of an account's device certificates, by creation date.
    pub fn list_certificates(
        &mut self,
        account: &AccountId,
        page: &PageRequest,
    ) -> Result<Page<DeviceCertificate>, Error> {
        let (rows, next) = self.page(
            &format!("SELECT {CERT_COLUMNS} FROM certificates WHERE account_id = $1"),
            vec![account.as_str().into()],
            page,
        )?;
        Ok(Page { items: rows.iter().map(cert_from_row).collect::<Result<_, _>>()?, next })
    }

    /// A page of the device certificates of an account signed by one of its CAs.
    pub fn list_certificates_by_ca(
        &mut self,
        account: &AccountId,
        ca: &CertificateId,
        page: &PageRequest,
    ) -> Result<Page<DeviceCertificate>, Error> {
        let (rows, next) = self.page(
            &format!("SELECT {CERT_COLUMNS} FROM certificates WHERE account_id = $1 AND ca_certificate_id = $2"),
            vec![account.as_str().into(), ca.as_str().into()],
            page,
        )?;
        Ok(Page { items: rows.iter().map(cert_from_row).collect::<Result<_, _>>()?, next })
    }

    // ---- issuers --------------------------------------------------------------------------

    /// Adds an issuer (a CA whose sealed key certfleet holds).
    pub fn insert_issuer(&mut self, issuer: &IssuerRecord) -> Result<(), Error> {
        self.conn.execute(
            "INSERT INTO issuers (id, purpose, certificate_pem, sealed_key, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[
                issuer.id.as_str().into(),
                issuer.purpose.as_str().into(),
                issuer.certificate_pem.as_str().into(),
                hex::encode(&issuer.sealed_key).into(),
                millis(issuer.created_at).into(),
            ],
        )?;
        Ok(())
    }

    /// The newest issuer for a purpose.
    pub fn current_issuer(&mut self, purpose: IssuerPurpose) -> Result<Option<IssuerRecord>, Error> {
        let rows = self.conn.query(
            "SELECT id, purpose, certificate_pem, sealed_key, created_at FROM issuers WHERE purpose = $1 \
             ORDER BY created_at DESC, id LIMIT 1",
            &[purpose.as_str().into()],
        )?;
        rows.first()
            .map(|row| {
                Ok(IssuerRecord {
                    id: cert_id(&row.text(0)?)?,
                    purpose: parse_text(&row.text(1)?, IssuerPurpose::parse)?,
                    certificate_pem: row.text(2)?,
                    sealed_key: hex::decode(row.text(3)?)
                        .map_err(|error| Error::InvalidValue(format!("sealed key: {error}")))?,
                    created_at: from_millis(row.int(4)?)?,
                })
            })
            .transpose()
    }

    // ---- tags -----------------------------------------------------------------------------

    /// Sets tags on a resource (replacing values of existing keys).
    pub fn put_tags(&mut self, resource_arn: &str, tags: &[Tag]) -> Result<(), Error> {
        for tag in tags {
            self.conn.execute(
                "DELETE FROM tags WHERE resource_arn = $1 AND tag_key = $2",
                &[resource_arn.into(), tag.key.as_str().into()],
            )?;
            self.conn.execute(
                "INSERT INTO tags (resource_arn, tag_key, tag_value) VALUES ($1, $2, $3)",
                &[resource_arn.into(), tag.key.as_str().into(), tag.value.as_str().into()],
            )?;
        }
        Ok(())
    }

    /// A resource's tags, by key.
    pub fn tags(&mut self, resource_arn: &str) -> Result<Vec<Tag>, Error> {
        let rows = self.conn.query(
            "SELECT tag_key, tag_value FROM tags WHERE resource_arn = $1 ORDER BY tag_key",
            &[resource_arn.into()],
        )?;
        rows.iter().map(|row| Ok(Tag { key: row.text(0)?, value: row.text(1)? })).collect()
    }

    /// Removes every tag of a resource.
    pub fn delete_tags(&mut self, resource_arn: &str) -> Result<(), Error> {
        self.conn.execute("DELETE FROM tags WHERE resource_arn = $1", &[resource_arn.into()])?;
        Ok(())
    }

    // ---- change feed --------------------------------------------------------------------

    /// Records that an entity changed, in the same transaction as the change itself, so that
    /// every node following the feed learns of exactly the committed changes.
    pub fn record_change(
        &mut self,
        account: &AccountId,
        kind: ChangeKind,
        entity_id: &str,
        at: OffsetDateTime,
    ) -> Result<(), Error> {
        self.conn.execute(
            "INSERT INTO changes (account_id, kind, entity_id, created_at) VALUES ($1, $2, $3, $4)",
            &[account.as_str().into(), kind.as_str().into(), entity_id.into(), millis(at).into()],
        )?;
        self.changes = self.changes.saturating_add(1);
        Ok(())
    }

    /// Up to `limit` changes with a sequence number above `after`, in sequence order.
    pub fn changes_after(&mut self, after: i64, limit: u32) -> Result<Vec<Change>, Error> {
        let rows = self.conn.query(
            "SELECT seq, account_id, kind, entity_id, created_at FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[after.into(), i64::from(limit).into()],
        )?;
        rows.iter()
            .map(|row| {
                Ok(Change {
                    seq: row.int(0)?,
                    account: AccountId::parse(&row.text(1)?)?,
                    kind: parse_text(&row.text(2)?, ChangeKind::parse)?,
                    entity_id: row.text(3)?,
                    created_at: from_millis(row.int(4)?)?,
                })
            })
            .collect()
    }

    /// The highest sequence number in the feed (0 when empty): where a new follower starts.
    pub fn last_change_seq(&mut self) -> Result<i64, Error> {
        let rows = self.conn.query("SELECT COALESCE(MAX(seq), 0) FROM changes", &[])?;
        rows.first().map_or(Ok(0), |row| row.int(0))
    }

    /// Forgets changes recorded before `before`. Returns how many.
    pub fn prune_changes(&mut self, before: OffsetDateTime) -> Result<u64, Error> {
        self.conn.execute("DELETE FROM changes WHERE created_at < $1", &[millis(before).into()])
    }

    // ---- connection history -------------------------------------------------------------

    /// Records that a device connected.
    pub fn insert_connection(&mut self, record: &ConnectionRecord) -> Result<(), Error> {
        self.conn.execute(
            "INSERT INTO connections (session_id, account_id, certificate_id, client_id, connected_at, \
             disconnected_at, disconnect_reason, endpoint, server_chain, tls_version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                record.session_id.as_str().into(),
                record.account.as_str().into(),
                record.certificate_id.as_str().into(),
                record.client_id.as_str().into(),
                millis(record.connected_at).into(),
                record.disconnected_at.map(millis).into(),
                record.disconnect_reason.as_deref().into(),
                record.via.endpoint().into(),
                record.via.chain().into(),
                record.via.tls_version().into(),
            ],
        )?;
        Ok(())
    }

    /// Records that a connection ended.
    pub fn close_connection(&mut self, session_id: &str, at: OffsetDateTime, reason: &str) -> Result<(), Error> {
        self.conn.execute(
            "UPDATE connections SET disconnected_at = $1, disconnect_reason = $2 WHERE session_id = $3",
            &[millis(at).into(), reason.into(), session_id.into()],
        )?;
        Ok(())
    }

    /// The connections of an account since a time, oldest first (of one certificate when given).
    pub fn connections_since(
        &mut self,
        account: &AccountId,
        certificate: Option<&CertificateId>,
        since: OffsetDateTime,
    ) -> Result<Vec<ConnectionRecord>, Error> {
        let columns = "session_id, account_id, certificate_id, client_id, connected_at, disconnected_at, \
                       disconnect_reason, endpoint, server_chain, tls_version";
        let rows = match certificate {
            Some(id) => self.conn.query(
                &format!(
                    "SELECT {columns} FROM connections WHERE account_id = $1 AND certificate_id = $2 \
                     AND (connected_at >= $3 OR disconnected_at IS NULL OR disconnected_at >= $3) ORDER BY connected_at, session_id"
                ),
                &[account.as_str().into(), id.as_str().into(), millis(since).into()],
            )?,
            None => self.conn.query(
                &format!(
                    "SELECT {columns} FROM connections WHERE account_id = $1 \
                     AND (connected_at >= $2 OR disconnected_at IS NULL OR disconnected_at >= $2) ORDER BY connected_at, session_id"
                ),
                &[account.as_str().into(), millis(since).into()],
            )?,
        };
        rows.iter()
            .map(|row| {
                Ok(ConnectionRecord {
                    session_id: row.text(0)?,
                    account: AccountId::parse(&row.text(1)?)?,
                    certificate_id: cert_id(&row.text(2)?)?,
                    client_id: row.text(3)?,
                    connected_at: from_millis(row.int(4)?)?,
                    disconnected_at: row.opt_int(5)?.map(from_millis).transpose()?,
                    disconnect_reason: row.opt_text(6)?,
                    via: ConnectionVia::new(
                        row.opt_text(7)?.as_deref(),
                        row.opt_text(8)?.as_deref(),
                        row.opt_text(9)?.as_deref(),
                    ),
                })
            })
            .collect()
    }

    // ---- helpers --------------------------------------------------------------------------

    /// Runs `select` (a query whose WHERE clause binds `params`) for one page ordered by
    /// `(created_at, id)`, fetching one extra row to know whether another page follows.
    fn page(
        &mut self,
        select: &str,
        mut params: Vec<Value>,
        page: &PageRequest,
    ) -> Result<(Vec<Row>, Option<Cursor>), Error> {
        let (comparison, order) = if page.ascending { (">", "ASC") } else { ("<", "DESC") };
        let mut sql = select.to_owned();
        if let Some(after) = &page.after {
            let first = params.len() + 1;
            sql.push_str(&format!(
                " AND (created_at {comparison} ${first} OR (created_at = ${first} AND id {comparison} ${}))",
                first + 1
            ));
            params.push(after.created_at_ms.into());
            params.push(after.id.as_str().into());
        }
        let limit = i64::from(page.limit.max(1));
        sql.push_str(&format!(" ORDER BY created_at {order}, id {order} LIMIT ${}", params.len() + 1));
        params.push((limit + 1).into());
        let mut rows = self.conn.query(&sql, &params)?;
        let next = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            let last = rows.last().ok_or_else(|| Error::InvalidValue("empty page".into()))?;
            Some(Cursor { created_at_ms: cursor_created_at(last)?, id: last.text(1)? })
        } else {
            None
        };
        Ok((rows, next))
    }
}

/// The `created_at` column of a CA or certificate row (both list it at the same place relative
/// to the end of their fixed prefix: read it by name position).
fn cursor_created_at(row: &Row) -> Result<i64, Error> {
    // CA rows have 17 columns with created_at at 15; certificate rows have 19 with it at 11.
    match row.0.len() {
        17 => row.int(15),
        19 => row.int(11),
        other => Err(Error::InvalidValue(format!("unexpected row width {other} for a page"))),
    }
}

fn cert_values(cert: &DeviceCertificate) -> Vec<Value> {
    vec![
        cert.account.as_str().into(),
        cert.id.as_str().into(),
        cert.pem.as_str().into(),
        cert.ca_certificate_id.as_ref().map(CertificateId::as_str).into(),
        cert.status.as_str().into(),
        cert.mode.as_str().into(),
        cert.previous_owner.as_ref().map(AccountId::as_str).into(),
        cert.generation_id.as_str().into(),
        cert.customer_version.into(),
        millis(cert.not_before).into(),
        millis(cert.not_after).into(),
        millis(cert.created_at).into(),
        millis(cert.last_modified).into(),
    ]
}

fn transfer_values(transfer: &TransferData) -> Vec<Value> {
    vec![
        transfer.pending_to.as_ref().map(AccountId::as_str).into(),
        transfer.transfer_message.as_deref().into(),
        transfer.reject_reason.as_deref().into(),
        transfer.transfer_date.map(millis).into(),
        transfer.accept_date.map(millis).into(),
        transfer.reject_date.map(millis).into(),
    ]
}

fn account_from_row(row: &Row) -> Result<Account, Error> {
    Ok(Account {
        id: AccountId::parse(&row.text(0)?)?,
        endpoint_identifier: row.text(1)?,
        registration_code: row.opt_text(2)?,
        created_at: from_millis(row.int(3)?)?,
    })
}

fn access_key_from_row(row: &Row) -> Result<AccessKey, Error> {
    Ok(AccessKey {
        access_key_id: row.text(0)?,
        secret_access_key: row.text(1)?,
        account: AccountId::parse(&row.text(2)?)?,
        created_at: from_millis(row.int(3)?)?,
    })
}

fn ca_from_row(row: &Row) -> Result<CaCertificate, Error> {
    let registration_config = (row.int(7)? != 0).then(|| -> Result<_, Error> {
        Ok(RegistrationConfig {
            template_body: row.opt_text(8)?,
            role_arn: row.opt_text(9)?,
            template_name: row.opt_text(10)?,
        })
    });
    Ok(CaCertificate {
        account: AccountId::parse(&row.text(0)?)?,
        id: cert_id(&row.text(1)?)?,
        pem: row.text(2)?,
        subject_key: row.text(3)?,
        status: parse_text(&row.text(4)?, CaStatus::parse)?,
        mode: parse_text(&row.text(5)?, CertificateMode::parse)?,
        auto_registration: row.int(6)? != 0,
        registration_config: registration_config.transpose()?,
        generation_id: row.text(11)?,
        customer_version: row.int(12)?,
        not_before: from_millis(row.int(13)?)?,
        not_after: from_millis(row.int(14)?)?,
        created_at: from_millis(row.int(15)?)?,
        last_modified: from_millis(row.int(16)?)?,
    })
}

fn cert_from_row(row: &Row) -> Result<DeviceCertificate, Error> {
    let optional_account = |index| row.opt_text(index)?.map(|text| AccountId::parse(&text)).transpose();
    let optional_time = |index| row.opt_int(index)?.map(from_millis).transpose();
    Ok(DeviceCertificate {
        account: AccountId::parse(&row.text(0)?)?,
        id: cert_id(&row.text(1)?)?,
        pem: row.text(2)?,
        ca_certificate_id: row.opt_text(3)?.map(|text| cert_id(&text)).transpose()?,
        status: parse_text(&row.text(4)?, CertificateStatus::parse)?,
        mode: parse_text(&row.text(5)?, CertificateMode::parse)?,
        previous_owner: optional_account(6)?,
        generation_id: row.text(7)?,
        customer_version: row.int(8)?,
        not_before: from_millis(row.int(9)?)?,
        not_after: from_millis(row.int(10)?)?,
        created_at: from_millis(row.int(11)?)?,
        last_modified: from_millis(row.int(12)?)?,
        transfer: TransferData {
            pending_to: optional_account(13)?,
            transfer_message: row.opt_text(14)?,
            reject_reason: row.opt_text(15)?,
            transfer_date: optional_time(16)?,
            accept_date: optional_time(17)?,
            reject_date: optional_time(18)?,
        },
    })
}

pub(crate) fn cert_id(text: &str) -> Result<CertificateId, Error> {
    CertificateId::parse(text).map_err(|error| Error::InvalidValue(format!("certificate id {text:?}: {error}")))
}

pub(crate) fn parse_text<T>(text: &str, parse: fn(&str) -> Option<T>) -> Result<T, Error> {
    parse(text).ok_or_else(|| Error::InvalidValue(format!("unknown stored value {text:?}")))
}

/// A timestamp as the integer milliseconds the registry stores.
pub fn millis(time: OffsetDateTime) -> i64 {
    (time.unix_timestamp_nanos() / 1_000_000) as i64
}

/// A timestamp from stored milliseconds.
pub fn from_millis(millis: i64) -> Result<OffsetDateTime, Error> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .map_err(|error| Error::InvalidValue(format!("timestamp {millis}: {error}")))
}
