//! Versioned schema migrations, applied in order at start.
//!
//! One schema for both backends: only BIGINT and TEXT columns, and SQL both understand. The one
//! spelling they do not share, an auto-increment key, is written `{serial_primary_key}`.
//! Never edit a migration that has shipped; add a new one.

/// `(version, statements)`; statements are separated by `;` at the end of a line.
pub(crate) const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    endpoint_identifier TEXT NOT NULL UNIQUE,
    registration_code TEXT,
    created_at BIGINT NOT NULL
);
CREATE TABLE access_keys (
    access_key_id TEXT PRIMARY KEY,
    secret_access_key TEXT NOT NULL,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL
);
CREATE INDEX access_keys_account ON access_keys(account_id);
CREATE TABLE ca_certificates (
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    id TEXT NOT NULL,
    pem TEXT NOT NULL,
    subject_key TEXT NOT NULL,
    status TEXT NOT NULL,
    mode TEXT NOT NULL,
    auto_registration BIGINT NOT NULL,
    has_registration_config BIGINT NOT NULL,
    template_body TEXT,
    role_arn TEXT,
    template_name TEXT,
    generation_id TEXT NOT NULL,
    customer_version BIGINT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    last_modified BIGINT NOT NULL,
    PRIMARY KEY (account_id, id)
);
CREATE UNIQUE INDEX ca_certificates_one_default_holder ON ca_certificates(id) WHERE mode = 'DEFAULT';
CREATE INDEX ca_certificates_subject ON ca_certificates(account_id, subject_key);
CREATE INDEX ca_certificates_created ON ca_certificates(account_id, created_at, id);
CREATE TABLE certificates (
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    id TEXT NOT NULL,
    pem TEXT NOT NULL,
    ca_certificate_id TEXT,
    status TEXT NOT NULL,
    mode TEXT NOT NULL,
    previous_owner TEXT,
    generation_id TEXT NOT NULL,
    customer_version BIGINT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    last_modified BIGINT NOT NULL,
    transfer_pending_to TEXT,
    transfer_message TEXT,
    transfer_reject_reason TEXT,
    transfer_date BIGINT,
    transfer_accept_date BIGINT,
    transfer_reject_date BIGINT,
    PRIMARY KEY (account_id, id)
);
CREATE INDEX certificates_created ON certificates(account_id, created_at, id);
CREATE INDEX certificates_by_ca ON certificates(account_id, ca_certificate_id, created_at, id);
CREATE INDEX certificates_pending_transfer ON certificates(transfer_pending_to, id);
CREATE TABLE issuers (
    id TEXT PRIMARY KEY,
    purpose TEXT NOT NULL,
    certificate_pem TEXT NOT NULL,
    sealed_key TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE tags (
    resource_arn TEXT NOT NULL,
    tag_key TEXT NOT NULL,
    tag_value TEXT NOT NULL,
    PRIMARY KEY (resource_arn, tag_key)
);
"#,
    ),
    (
        2,
        r#"
CREATE TABLE changes (
    seq {serial_primary_key},
    account_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX changes_created ON changes(created_at);
"#,
    ),
    (
        3,
        r#"
CREATE TABLE connections (
    session_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    certificate_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    connected_at BIGINT NOT NULL,
    disconnected_at BIGINT,
    disconnect_reason TEXT
);
CREATE INDEX connections_by_certificate ON connections(account_id, certificate_id, connected_at);
CREATE INDEX connections_by_client ON connections(account_id, client_id, connected_at);
"#,
    ),
    (
        4,
        r#"
CREATE TABLE policies (
    account_id TEXT NOT NULL,
    name TEXT NOT NULL,
    default_version BIGINT NOT NULL,
    next_version BIGINT NOT NULL,
    generation_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_modified BIGINT NOT NULL,
    PRIMARY KEY (account_id, name)
);
CREATE INDEX policies_created ON policies(account_id, created_at, name);
CREATE TABLE policy_versions (
    account_id TEXT NOT NULL,
    policy_name TEXT NOT NULL,
    version BIGINT NOT NULL,
    document TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, policy_name, version)
);
CREATE TABLE policy_attachments (
    account_id TEXT NOT NULL,
    policy_name TEXT NOT NULL,
    certificate_id TEXT NOT NULL,
    attached_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, policy_name, certificate_id)
);
CREATE INDEX policy_attachments_by_certificate ON policy_attachments(account_id, certificate_id, policy_name);
CREATE TABLE things (
    account_id TEXT NOT NULL,
    name TEXT NOT NULL,
    id TEXT NOT NULL,
    type_name TEXT,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, name)
);
CREATE TABLE thing_attributes (
    account_id TEXT NOT NULL,
    thing_name TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (account_id, thing_name, name)
);
CREATE INDEX thing_attributes_by_value ON thing_attributes(account_id, name, value);
CREATE TABLE thing_principals (
    account_id TEXT NOT NULL,
    thing_name TEXT NOT NULL,
    certificate_id TEXT NOT NULL,
    principal_type TEXT NOT NULL,
    attached_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, thing_name, certificate_id)
);
CREATE INDEX thing_principals_by_certificate ON thing_principals(account_id, certificate_id, thing_name);
"#,
    ),
    (
        5,
        r#"
CREATE TABLE provisioning_templates (
    account_id TEXT NOT NULL,
    name TEXT NOT NULL,
    id TEXT NOT NULL,
    description TEXT,
    body TEXT NOT NULL,
    enabled BIGINT NOT NULL,
    template_type TEXT NOT NULL,
    role_arn TEXT NOT NULL,
    default_version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    last_modified BIGINT NOT NULL,
    PRIMARY KEY (account_id, name)
);
"#,
    ),
    (
        6,
        r#"
CREATE TABLE server_certificates (
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    id TEXT NOT NULL,
    certificate_pem TEXT NOT NULL,
    chain_pem TEXT,
    sealed_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    domain_name TEXT NOT NULL,
    key_algorithm TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    imported_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, id)
);
CREATE TABLE domain_configurations (
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    arn_id TEXT NOT NULL,
    domain_name TEXT NOT NULL,
    domain_type TEXT NOT NULL,
    service_type TEXT NOT NULL,
    status TEXT NOT NULL,
    security_policy TEXT NOT NULL,
    authentication_type TEXT,
    application_protocol TEXT,
    current_chain TEXT NOT NULL,
    next_chain TEXT NOT NULL,
    serving_next BIGINT NOT NULL,
    migration TEXT,
    last_status_change BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    last_modified BIGINT NOT NULL,
    PRIMARY KEY (account_id, name)
);
CREATE UNIQUE INDEX domain_configurations_by_domain ON domain_configurations(domain_name);
CREATE TABLE endpoint_probes (
    seq {serial_primary_key},
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    configuration TEXT NOT NULL,
    peer TEXT NOT NULL,
    server_name TEXT,
    client_id TEXT,
    client_certificate_id TEXT,
    tls_version TEXT,
    cipher_suite TEXT,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX endpoint_probes_by_account ON endpoint_probes(account_id, seq);
"#,
    ),
    // 7: audits (Device Defender). Numbered 7 so it applies after migration 6 (server
    // certificates, domain configurations) and independently of it: versions are applied one by
    // one, not as a contiguous range.
    (
        7,
        r#"
CREATE TABLE audit_configurations (
    account_id TEXT PRIMARY KEY,
    role_arn TEXT,
    updated_at BIGINT NOT NULL
);
CREATE TABLE audit_notification_targets (
    account_id TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_arn TEXT,
    role_arn TEXT,
    enabled BIGINT NOT NULL,
    PRIMARY KEY (account_id, target_type)
);
CREATE TABLE audit_check_configurations (
    account_id TEXT NOT NULL,
    check_name TEXT NOT NULL,
    enabled BIGINT NOT NULL,
    configuration TEXT NOT NULL,
    PRIMARY KEY (account_id, check_name)
);
CREATE TABLE audit_tasks (
    account_id TEXT NOT NULL,
    id TEXT NOT NULL,
    task_type TEXT NOT NULL,
    status TEXT NOT NULL,
    scheduled_audit_name TEXT,
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
    lease_until BIGINT,
    PRIMARY KEY (account_id, id)
);
CREATE INDEX audit_tasks_started ON audit_tasks(account_id, started_at, id);
CREATE INDEX audit_tasks_runnable ON audit_tasks(status, lease_until);
CREATE TABLE audit_check_runs (
    account_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    check_name TEXT NOT NULL,
    status TEXT NOT NULL,
    total_resources BIGINT NOT NULL,
    non_compliant_resources BIGINT NOT NULL,
    suppressed_resources BIGINT NOT NULL,
    error_code TEXT,
    message TEXT,
    PRIMARY KEY (account_id, task_id, check_name)
);
CREATE TABLE audit_findings (
    account_id TEXT NOT NULL,
    id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    check_name TEXT NOT NULL,
    task_started_at BIGINT NOT NULL,
    found_at BIGINT NOT NULL,
    severity TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_key TEXT NOT NULL,
    resource_info TEXT NOT NULL,
    related TEXT NOT NULL,
    reason TEXT NOT NULL,
    reason_code TEXT NOT NULL,
    suppressed BIGINT NOT NULL,
    PRIMARY KEY (account_id, id)
);
CREATE INDEX audit_findings_by_task ON audit_findings(account_id, task_id, id);
CREATE INDEX audit_findings_by_time ON audit_findings(account_id, found_at, id);
CREATE TABLE scheduled_audits (
    account_id TEXT NOT NULL,
    name TEXT NOT NULL,
    frequency TEXT NOT NULL,
    day_of_month TEXT,
    day_of_week TEXT,
    check_names TEXT NOT NULL,
    next_run_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, name)
);
CREATE INDEX scheduled_audits_due ON scheduled_audits(next_run_at);
CREATE TABLE audit_crls (
    account_id TEXT NOT NULL,
    name TEXT NOT NULL,
    der TEXT NOT NULL,
    issuer_ca_id TEXT,
    uploaded_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, name)
);
CREATE INDEX certificates_audit_status ON certificates(account_id, status, id);
"#,
    ),
    (
        8,
        r#"
CREATE TABLE topic_rules (
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    arn TEXT NOT NULL,
    sql_text TEXT NOT NULL,
    topic_pattern TEXT NOT NULL,
    description TEXT,
    aws_iot_sql_version TEXT NOT NULL,
    rule_disabled BIGINT NOT NULL,
    actions TEXT NOT NULL,
    error_action TEXT,
    created_at BIGINT NOT NULL,
    last_modified BIGINT NOT NULL,
    PRIMARY KEY (account_id, name)
);
"#,
    ),
    // 9: certificate rotation (campaigns and per-device rotations). Numbered 9 so it applies
    // independently of the migrations other branches add (8 for topic rules).
    (
        9,
        r#"
CREATE TABLE rotation_campaigns (
    account_id TEXT NOT NULL,
    id TEXT NOT NULL,
    source TEXT NOT NULL,
    audit_task_id TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, id)
);
CREATE INDEX rotation_campaigns_by_task ON rotation_campaigns(account_id, audit_task_id);
CREATE TABLE rotations (
    account_id TEXT NOT NULL,
    id TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    old_certificate_id TEXT NOT NULL,
    new_certificate_id TEXT,
    csr_key_fingerprint TEXT,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    error TEXT,
    deadline BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    open BIGINT NOT NULL,
    PRIMARY KEY (account_id, id)
);
CREATE UNIQUE INDEX rotations_one_open ON rotations(account_id, old_certificate_id, client_id) WHERE open = 1;
CREATE INDEX rotations_by_campaign ON rotations(account_id, campaign_id, id);
CREATE INDEX rotations_by_client ON rotations(account_id, client_id, open);
CREATE INDEX rotations_by_new_certificate ON rotations(account_id, new_certificate_id);
CREATE INDEX rotations_by_deadline ON rotations(open, deadline);
"#,
    ),
    // 10: the audit scans' covering index (issue 7). It leads with what the scans select on and
    // order by (account, status, ID) and carries the columns the validity scan reads, so an
    // audit over a million certificates reads index pages in order (SQLite: a covering index;
    // PostgreSQL: an index-only scan once vacuumed) instead of a million rows scattered over the
    // table. It supersedes migration 7's (account, status, id), its prefix.
    (
        10,
        r#"
DROP INDEX certificates_audit_status;
CREATE INDEX certificates_audit_scan ON certificates(
    account_id, status, id, not_after, not_before, created_at, ca_certificate_id
);
"#,
    ),
    // 11: a rotation campaign's subject rule (issue 12): which subject the certificates it
    // issues carry. Existing campaigns keep the old certificate's subject.
    (
        11,
        r#"
ALTER TABLE rotation_campaigns ADD COLUMN subject_rule TEXT NOT NULL DEFAULT 'keep-old';
"#,
    ),
    // 12: topic rule destinations (issue 12): the confirmation URLs an account proved it
    // controls; an http action runs only under an ENABLED one. The confirmation token is kept
    // as its SHA-256 (hex), looked up by ConfirmTopicRuleDestination.
    (
        12,
        r#"
CREATE TABLE topic_rule_destinations (
    account_id TEXT NOT NULL,
    arn TEXT NOT NULL,
    confirmation_url TEXT NOT NULL,
    status TEXT NOT NULL,
    status_reason TEXT,
    token_sha256 TEXT NOT NULL,
    confirmed BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    last_updated_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, arn)
);
CREATE INDEX topic_rule_destinations_by_token ON topic_rule_destinations(account_id, token_sha256);
CREATE INDEX topic_rule_destinations_by_url ON topic_rule_destinations(account_id, confirmation_url);
"#,
    ),
    // 13: bounded registry growth (issue 13). The claim row of the registry prune (one node at a
    // time across a cluster, a conditional UPDATE on its lease), and the time indexes that make
    // each prune batch an index range scan on both backends instead of a table scan.
    (
        13,
        r#"
CREATE TABLE maintenance_claims (
    job TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    lease_until BIGINT NOT NULL
);
INSERT INTO maintenance_claims (job, holder, lease_until) VALUES ('registry_prune', '', 0);
CREATE INDEX connections_by_time ON connections(connected_at);
CREATE INDEX endpoint_probes_by_time ON endpoint_probes(at);
"#,
    ),
    // 14: thing types and static thing groups (issue 15). A thing names an existing type; a
    // group names its parent (set at creation, never changed); things are members of groups;
    // policies are attached to groups as well as to certificates. The types things already
    // name are created, so every stored thing names an existing type (IDs of those start with
    // `migrated-`). Searchable attribute names are kept joined by newlines (a name holds none).
    (
        14,
        r#"
CREATE TABLE thing_types (
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    id TEXT NOT NULL,
    description TEXT,
    searchable_attributes TEXT NOT NULL,
    deprecated_at BIGINT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, name)
);
INSERT INTO thing_types (account_id, name, id, description, searchable_attributes, deprecated_at, created_at)
    SELECT account_id, type_name, 'migrated-' || type_name, NULL, '', NULL, MIN(created_at)
    FROM things WHERE type_name IS NOT NULL GROUP BY account_id, type_name;
CREATE INDEX things_by_type ON things(account_id, type_name, name);
CREATE TABLE thing_groups (
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    id TEXT NOT NULL,
    parent_name TEXT,
    description TEXT,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, name)
);
CREATE INDEX thing_groups_by_parent ON thing_groups(account_id, parent_name, name);
CREATE TABLE thing_group_attributes (
    account_id TEXT NOT NULL,
    group_name TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (account_id, group_name, name)
);
CREATE TABLE thing_group_members (
    account_id TEXT NOT NULL,
    group_name TEXT NOT NULL,
    thing_name TEXT NOT NULL,
    added_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, group_name, thing_name)
);
CREATE INDEX thing_group_members_by_thing ON thing_group_members(account_id, thing_name, group_name);
CREATE TABLE group_policy_attachments (
    account_id TEXT NOT NULL,
    policy_name TEXT NOT NULL,
    group_name TEXT NOT NULL,
    attached_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, policy_name, group_name)
);
CREATE INDEX group_policy_attachments_by_group ON group_policy_attachments(account_id, group_name, policy_name);
"#,
    ),
    // 15: fleet provisioning (issue 15). Template versions (the bodies; existing templates get
    // their body as their one version, so the same SQL migrates both backends), the next
    // version's ID and the pre-provisioning hook on the template row, and provisioning claims:
    // which template a claim certificate may provision with. Independent of migration 14.
    (
        15,
        r#"
ALTER TABLE provisioning_templates ADD COLUMN next_version BIGINT NOT NULL DEFAULT 2;
ALTER TABLE provisioning_templates ADD COLUMN hook_target TEXT;
ALTER TABLE provisioning_templates ADD COLUMN hook_payload_version TEXT;
CREATE TABLE provisioning_template_versions (
    account_id TEXT NOT NULL,
    template_name TEXT NOT NULL,
    version_id BIGINT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, template_name, version_id)
);
INSERT INTO provisioning_template_versions (account_id, template_name, version_id, body, created_at)
    SELECT account_id, name, default_version, body, created_at FROM provisioning_templates;
UPDATE provisioning_templates SET next_version = default_version + 1;
CREATE TABLE provisioning_claims (
    account_id TEXT NOT NULL,
    certificate_id TEXT NOT NULL,
    template_name TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, certificate_id)
);
CREATE INDEX provisioning_claims_by_expiry ON provisioning_claims(expires_at);
"#,
    ),
    // 16: the operator console's read models (issue 16). A device certificate's subject common
    // name, kept beside it so the console finds certificates by CN through an index (empty when
    // the certificate has none; NULL for rows written before this migration, until the console's
    // backfill fills them), and an index by expiry that carries what the expiry counts and the
    // expiring-certificate gauges read (status, CA), so they range-scan only what expires soon.
    (
        16,
        r#"
ALTER TABLE certificates ADD COLUMN subject_cn TEXT;
CREATE INDEX certificates_by_cn ON certificates(account_id, subject_cn, id);
CREATE INDEX certificates_by_expiry ON certificates(account_id, not_after, status, ca_certificate_id, id);
"#,
    ),
    // 17: how each connection of the history came (issue 16): the endpoint (domain
    // configuration) its SNI named, the server chain it was answered with and its TLS version,
    // as the console's certificate page shows them. Bounded by a CHECK on both backends (the
    // gateway clips to the same bounds, `ConnectionVia`); NULL in the rows written before.
    (
        17,
        r#"
ALTER TABLE connections ADD COLUMN endpoint TEXT CHECK (length(endpoint) <= 128);
ALTER TABLE connections ADD COLUMN server_chain TEXT CHECK (length(server_chain) <= 160);
ALTER TABLE connections ADD COLUMN tls_version TEXT CHECK (length(tls_version) <= 16);
"#,
    ),
];

/// The SQL dialect a migration is rendered for.
#[derive(Clone, Copy)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// The statements of one migration, in the backend's dialect.
pub(crate) fn statements(sql: &str, dialect: Dialect) -> Vec<String> {
    let serial = match dialect {
        Dialect::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
        Dialect::Postgres => "BIGSERIAL PRIMARY KEY",
    };
    sql.replace("{serial_primary_key}", serial)
        .split(";\n")
        .map(str::trim)
        .filter(|statement| !statement.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Migration 17 keeps the history written before it (its new columns NULL) and bounds the
    /// new columns: a value longer than its bound is refused by the database itself.
    #[test]
    fn migration_17_keeps_old_connections_and_bounds_the_new_columns() {
        let connection = rusqlite::Connection::open_in_memory().unwrap();
        let apply = |version: i64| {
            let (_, sql) = MIGRATIONS.iter().find(|(number, _)| *number == version).unwrap();
            for statement in statements(sql, Dialect::Sqlite) {
                connection.execute_batch(&statement).unwrap();
            }
        };
        for (version, _) in MIGRATIONS.iter().filter(|(version, _)| *version < 17) {
            apply(*version);
        }
        connection
            .execute_batch("INSERT INTO connections VALUES ('old', '111111111111', 'ab', 'sensor-1', 1000, NULL, NULL)")
            .unwrap();
        apply(17);
        let old: (Option<String>, Option<String>, Option<String>) = connection
            .query_row("SELECT endpoint, server_chain, tls_version FROM connections", [], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .unwrap();
        assert_eq!(old, (None, None, None));
        let insert = |endpoint: &str, chain: &str, tls: &str| {
            connection.execute(
                "INSERT INTO connections (session_id, account_id, certificate_id, client_id, connected_at, endpoint, \
                 server_chain, tls_version) VALUES (?1, '111111111111', 'ab', 'c', 1, ?2, ?3, ?4)",
                rusqlite::params![format!("{endpoint}{chain}{tls}"), endpoint, chain, tls],
            )
        };
        assert!(insert(&"e".repeat(128), &"c".repeat(160), &"t".repeat(16)).is_ok());
        assert!(insert(&"e".repeat(129), "builtin", "TLSv1.3").is_err());
        assert!(insert("iot:Data-ATS", &"c".repeat(161), "TLSv1.3").is_err());
        assert!(insert("iot:Data-ATS", "builtin", &"t".repeat(17)).is_err());
    }

    /// Migration 15 gives every template made before it its body as its one version.
    #[test]
    fn migration_15_copies_existing_bodies_into_version_1() {
        let connection = rusqlite::Connection::open_in_memory().unwrap();
        let apply = |version: i64| {
            let (_, sql) = MIGRATIONS.iter().find(|(number, _)| *number == version).unwrap();
            for statement in statements(sql, Dialect::Sqlite) {
                connection.execute_batch(&statement).unwrap();
            }
        };
        for (version, _) in MIGRATIONS.iter().filter(|(version, _)| *version < 15) {
            apply(*version);
        }
        connection
            .execute_batch(
                "INSERT INTO provisioning_templates VALUES ('111111111111', 'old', 'id', NULL, '{\"Resources\": {}}', 1, 'JITP', 'arn:aws:iam::111111111111:role/r', 1, 5000, 6000)",
            )
            .unwrap();
        apply(15);
        let version: (String, i64, String, i64) = connection
            .query_row(
                "SELECT template_name, version_id, body, created_at FROM provisioning_template_versions",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .unwrap();
        assert_eq!(version, ("old".to_owned(), 1, "{\"Resources\": {}}".to_owned(), 5000));
        let next: i64 =
            connection.query_row("SELECT next_version FROM provisioning_templates", [], |row| row.get(0)).unwrap();
        assert_eq!(next, 2);
    }
}
