//! The registry operations of endpoints: imported server certificates, domain configurations
//! and what test endpoints saw, written once over [`Conn`](crate::conn).

use time::OffsetDateTime;

use crate::Error;
use crate::conn::{Row, Value};
use crate::model::*;
use crate::tx::{Tx, from_millis, millis};

const SERVER_CERT_COLUMNS: &str = "account_id, id, certificate_pem, chain_pem, sealed_key, fingerprint, domain_name, \
                                   key_algorithm, not_before, not_after, imported_at";

const DOMAIN_COLUMNS: &str = "account_id, name, arn_id, domain_name, domain_type, service_type, status, security_policy, \
                              authentication_type, application_protocol, current_chain, next_chain, serving_next, \
                              migration, last_status_change, created_at, last_modified";

const PROBE_COLUMNS: &str = "seq, account_id, configuration, peer, server_name, client_id, client_certificate_id, \
                             tls_version, cipher_suite, outcome, detail, at";

impl<'a> Tx<'a> {
    // ---- server certificates ------------------------------------------------------------

    /// Adds a server certificate, or replaces the one with the same ID (ACM's re-import).
    pub fn put_server_certificate(&mut self, cert: &ServerCertificate) -> Result<(), Error> {
        let key = [Value::from(cert.account.as_str()), Value::from(cert.id.as_str())];
        self.conn.execute("DELETE FROM server_certificates WHERE account_id = $1 AND id = $2", &key)?;
        self.conn.execute(
            &format!(
                "INSERT INTO server_certificates ({SERVER_CERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            ),
            &[
                cert.account.as_str().into(),
                cert.id.as_str().into(),
                cert.certificate_pem.as_str().into(),
                cert.chain_pem.as_deref().into(),
                hex::encode(&cert.sealed_key).into(),
                cert.fingerprint.as_str().into(),
                cert.domain_name.as_str().into(),
                cert.key_algorithm.as_str().into(),
                millis(cert.not_before).into(),
                millis(cert.not_after).into(),
                millis(cert.imported_at).into(),
            ],
        )?;
        Ok(())
    }

    /// A server certificate of an account.
    pub fn get_server_certificate(
        &mut self,
        account: &AccountId,
        id: &str,
    ) -> Result<Option<ServerCertificate>, Error> {
        let rows = self.conn.query(
            &format!("SELECT {SERVER_CERT_COLUMNS} FROM server_certificates WHERE account_id = $1 AND id = $2"),
            &[account.as_str().into(), id.into()],
        )?;
        rows.first().map(server_cert_from_row).transpose()
    }

    /// Deletes a server certificate. Returns whether it existed.
    pub fn delete_server_certificate(&mut self, account: &AccountId, id: &str) -> Result<bool, Error> {
        let key = [Value::from(account.as_str()), Value::from(id)];
        Ok(self.conn.execute("DELETE FROM server_certificates WHERE account_id = $1 AND id = $2", &key)? == 1)
    }

    /// A page of an account's server certificates, by ID.
    pub fn list_server_certificates(
        &mut self,
        account: &AccountId,
        page: &KeyPageRequest,
    ) -> Result<KeyPage<ServerCertificate>, Error> {
        let (rows, next) = self.key_page(
            &format!("SELECT {SERVER_CERT_COLUMNS} FROM server_certificates WHERE account_id = $1"),
            vec![account.as_str().into()],
            "id",
            1,
            page,
        )?;
        Ok(KeyPage { items: rows.iter().map(server_cert_from_row).collect::<Result<_, _>>()?, next })
    }

    /// The names of the account's domain configurations that serve (or hold as next) a server
    /// certificate.
    pub fn server_certificate_users(&mut self, account: &AccountId, id: &str) -> Result<Vec<String>, Error> {
        let rows = self.conn.query(
            "SELECT name FROM domain_configurations WHERE account_id = $1 \
             AND (' ' || current_chain || ' ' || next_chain || ' ') LIKE $2 ORDER BY name",
            &[account.as_str().into(), format!("% {id} %").into()],
        )?;
        rows.iter().map(|row| row.text(0)).collect()
    }

    // ---- domain configurations ----------------------------------------------------------

    /// Adds a domain configuration.
    pub fn insert_domain_configuration(&mut self, config: &DomainConfiguration) -> Result<(), Error> {
        let taken = self.conn.query(
            "SELECT account_id, name FROM domain_configurations WHERE domain_name = $1",
            &[config.domain_name.as_str().into()],
        )?;
        if !taken.is_empty() {
            return Err(Error::Conflict(format!("domain name {}", config.domain_name)));
        }
        self.conn.execute(
            &format!(
                "INSERT INTO domain_configurations ({DOMAIN_COLUMNS}) VALUES \
                 ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
            ),
            &domain_values(config),
        )?;
        Ok(())
    }

    /// Replaces a domain configuration's mutable fields (everything but account, name, ARN id,
    /// domain name and creation time).
    pub fn update_domain_configuration(&mut self, config: &DomainConfiguration) -> Result<(), Error> {
        let [
            account,
            name,
            _,
            _,
            domain_type,
            service_type,
            status,
            policy,
            authentication,
            protocol,
            current,
            next,
            serving,
            migration,
            changed,
            _,
            modified,
        ] = domain_values(config);
        let updated = self.conn.execute(
            // SQLite numbers parameters in order of appearance: keep `$n` in ascending order.
            "UPDATE domain_configurations SET domain_type = $1, service_type = $2, status = $3, \
             security_policy = $4, authentication_type = $5, application_protocol = $6, current_chain = $7, \
             next_chain = $8, serving_next = $9, migration = $10, last_status_change = $11, last_modified = $12 \
             WHERE account_id = $13 AND name = $14",
            &[
                domain_type,
                service_type,
                status,
                policy,
                authentication,
                protocol,
                current,
                next,
                serving,
                migration,
                changed,
                modified,
                account,
                name,
            ],
        )?;
        if updated != 1 {
            return Err(Error::InvalidValue(format!("domain configuration {} is not stored", config.name)));
        }
        Ok(())
    }

    /// A domain configuration of an account, by name.
    pub fn get_domain_configuration(
        &mut self,
        account: &AccountId,
        name: &str,
    ) -> Result<Option<DomainConfiguration>, Error> {
        let rows = self.conn.query(
            &format!("SELECT {DOMAIN_COLUMNS} FROM domain_configurations WHERE account_id = $1 AND name = $2"),
            &[account.as_str().into(), name.into()],
        )?;
        rows.first().map(domain_from_row).transpose()
    }

    /// The domain configuration serving a domain name, in any account (SNI routing).
    pub fn domain_configuration_by_domain(&mut self, domain_name: &str) -> Result<Option<DomainConfiguration>, Error> {
        let rows = self.conn.query(
            &format!("SELECT {DOMAIN_COLUMNS} FROM domain_configurations WHERE domain_name = $1"),
            &[domain_name.into()],
        )?;
        rows.first().map(domain_from_row).transpose()
    }

    /// Deletes a domain configuration. Returns whether it existed.
    pub fn delete_domain_configuration(&mut self, account: &AccountId, name: &str) -> Result<bool, Error> {
        let key = [Value::from(account.as_str()), Value::from(name)];
        Ok(self.conn.execute("DELETE FROM domain_configurations WHERE account_id = $1 AND name = $2", &key)? == 1)
    }

    /// A page of an account's stored domain configurations, by name.
    pub fn list_domain_configurations(
        &mut self,
        account: &AccountId,
        page: &KeyPageRequest,
    ) -> Result<KeyPage<DomainConfiguration>, Error> {
        let (rows, next) = self.key_page(
            &format!("SELECT {DOMAIN_COLUMNS} FROM domain_configurations WHERE account_id = $1"),
            vec![account.as_str().into()],
            "name",
            1,
            page,
        )?;
        Ok(KeyPage { items: rows.iter().map(domain_from_row).collect::<Result<_, _>>()?, next })
    }

    // ---- test endpoint probes -----------------------------------------------------------

    /// Records what a test endpoint saw of a client, keeping at most `keep` per account.
    pub fn insert_endpoint_probe(&mut self, probe: &EndpointProbe, keep: i64) -> Result<(), Error> {
        self.conn.execute(
            "INSERT INTO endpoint_probes (account_id, configuration, peer, server_name, client_id, \
             client_certificate_id, tls_version, cipher_suite, outcome, detail, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                probe.account.as_str().into(),
                probe.configuration.as_str().into(),
                probe.peer.as_str().into(),
                probe.server_name.as_deref().into(),
                probe.client_id.as_deref().into(),
                probe.client_certificate_id.as_deref().into(),
                probe.tls_version.as_deref().into(),
                probe.cipher_suite.as_deref().into(),
                probe.outcome.as_str().into(),
                probe.detail.as_str().into(),
                millis(probe.at).into(),
            ],
        )?;
        self.conn.execute(
            // `seq` is shared by all accounts: keep this account's `keep` newest rows, whatever
            // other accounts inserted in between (the subquery is NULL, deleting nothing, while
            // the account has `keep` rows or fewer).
            "DELETE FROM endpoint_probes WHERE account_id = $1 AND seq <= \
             (SELECT seq FROM endpoint_probes WHERE account_id = $1 ORDER BY seq DESC LIMIT 1 OFFSET $2)",
            &[probe.account.as_str().into(), keep.into()],
        )?;
        Ok(())
    }

    /// The newest probes of an account (newest first), optionally of one client ID.
    pub fn endpoint_probes(
        &mut self,
        account: &AccountId,
        client_id: Option<&str>,
        since: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<EndpointProbe>, Error> {
        let rows = match client_id {
            Some(client_id) => self.conn.query(
                &format!(
                    "SELECT {PROBE_COLUMNS} FROM endpoint_probes WHERE account_id = $1 AND at >= $2 \
                     AND client_id = $3 ORDER BY seq DESC LIMIT $4"
                ),
                &[account.as_str().into(), millis(since).into(), client_id.into(), i64::from(limit).into()],
            )?,
            None => self.conn.query(
                &format!(
                    "SELECT {PROBE_COLUMNS} FROM endpoint_probes WHERE account_id = $1 AND at >= $2 \
                     ORDER BY seq DESC LIMIT $3"
                ),
                &[account.as_str().into(), millis(since).into(), i64::from(limit).into()],
            )?,
        };
        rows.iter().map(probe_from_row).collect()
    }
}

fn domain_values(config: &DomainConfiguration) -> [Value; 17] {
    [
        config.account.as_str().into(),
        config.name.as_str().into(),
        config.arn_id.as_str().into(),
        config.domain_name.as_str().into(),
        config.domain_type.as_str().into(),
        config.service_type.as_str().into(),
        config.status.as_str().into(),
        config.security_policy.as_str().into(),
        config.authentication_type.as_deref().into(),
        config.application_protocol.as_deref().into(),
        config.current_chain.join(" ").into(),
        config.next_chain.join(" ").into(),
        i64::from(config.serving_next).into(),
        config.migration.as_deref().into(),
        millis(config.last_status_change).into(),
        millis(config.created_at).into(),
        millis(config.last_modified).into(),
    ]
}

fn chain(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

fn server_cert_from_row(row: &Row) -> Result<ServerCertificate, Error> {
    Ok(ServerCertificate {
        account: AccountId::parse(&row.text(0)?)?,
        id: row.text(1)?,
        certificate_pem: row.text(2)?,
        chain_pem: row.opt_text(3)?,
        sealed_key: hex::decode(row.text(4)?).map_err(|error| Error::InvalidValue(format!("sealed key: {error}")))?,
        fingerprint: row.text(5)?,
        domain_name: row.text(6)?,
        key_algorithm: row.text(7)?,
        not_before: from_millis(row.int(8)?)?,
        not_after: from_millis(row.int(9)?)?,
        imported_at: from_millis(row.int(10)?)?,
    })
}

fn domain_from_row(row: &Row) -> Result<DomainConfiguration, Error> {
    let status = row.text(6)?;
    Ok(DomainConfiguration {
        account: AccountId::parse(&row.text(0)?)?,
        name: row.text(1)?,
        arn_id: row.text(2)?,
        domain_name: row.text(3)?,
        domain_type: row.text(4)?,
        service_type: row.text(5)?,
        status: DomainStatus::parse(&status)
            .ok_or_else(|| Error::InvalidValue(format!("domain configuration status {status}")))?,
        security_policy: row.text(7)?,
        authentication_type: row.opt_text(8)?,
        application_protocol: row.opt_text(9)?,
        current_chain: chain(&row.text(10)?),
        next_chain: chain(&row.text(11)?),
        serving_next: row.int(12)? != 0,
        migration: row.opt_text(13)?,
        last_status_change: from_millis(row.int(14)?)?,
        created_at: from_millis(row.int(15)?)?,
        last_modified: from_millis(row.int(16)?)?,
    })
}

fn probe_from_row(row: &Row) -> Result<EndpointProbe, Error> {
    Ok(EndpointProbe {
        seq: row.int(0)?,
        account: AccountId::parse(&row.text(1)?)?,
        configuration: row.text(2)?,
        peer: row.text(3)?,
        server_name: row.opt_text(4)?,
        client_id: row.opt_text(5)?,
        client_certificate_id: row.opt_text(6)?,
        tls_version: row.opt_text(7)?,
        cipher_suite: row.opt_text(8)?,
        outcome: row.text(9)?,
        detail: row.text(10)?,
        at: from_millis(row.int(11)?)?,
    })
}
