//! The checks: each reads what it needs of one account in keyset-paged batches (never one query
//! per certificate, never the PEM unless it parses certificates) and says which resources are
//! not compliant and why.
//!
//! | Check | Non-compliant when |
//! |---|---|
//! | DEVICE_CERTIFICATE_EXPIRING_CHECK | an ACTIVE/PENDING_TRANSFER certificate expires within `CERT_EXPIRATION_THRESHOLD_IN_DAYS` (default 30) or has expired |
//! | CA_CERTIFICATE_EXPIRING_CHECK | an ACTIVE CA expires within 30 days or has expired |
//! | DEVICE_CERTIFICATE_AGE_CHECK | a certificate was registered `CERT_AGE_THRESHOLD_IN_DAYS` (default 365) or more ago |
//! | *_KEY_QUALITY_CHECK | the key fails certfleet's key rules (RSA < 2048 bits, a curve other than P-256/384/521) |
//! | DEVICE_CERTIFICATE_SHARED_CHECK | in the last 31 days, connections of one certificate with different client IDs overlapped |
//! | CONFLICTING_CLIENT_IDS_CHECK | in the last 31 days, a client ID was used with several certificates and one of its connections was taken over |
//! | REVOKED_*_STILL_ACTIVE_CHECK | an uploaded CRL lists the certificate (issuer and serial) |
//! | IOT_POLICY_OVERLY_PERMISSIVE_CHECK | a default version allows connect/publish/subscribe/receive on `*` or a whole resource type |

use std::collections::{BTreeMap, BTreeSet, HashMap};

use certfleet_pki::{Certificate, CertificateId, Crl, check_key_rules};
use certfleet_policy::{Action, Effect, Policy};
use certfleet_registry::{self as registry, AccountId, AuditResource, AuditResourceId, ConnectionRecord};
use time::{Duration, OffsetDateTime};

use super::{AuditCheck, CERT_AGE_THRESHOLD, CERT_EXPIRATION_THRESHOLD};
use crate::{Error, Services};

/// Rows read per query.
const BATCH: u32 = 1000;

/// How far back the connection checks look.
const CONNECTION_WINDOW: Duration = Duration::days(31);

/// What a check runs with.
pub(super) struct CheckContext {
    pub(super) account: AccountId,
    pub(super) now: OffsetDateTime,
    pub(super) settings: BTreeMap<String, String>,
    pub(super) check: &'static AuditCheck,
}

impl CheckContext {
    /// A setting of the check in days, or its default.
    fn days(&self, key: &str) -> Duration {
        let default =
            self.check.settings.iter().find(|(name, _, _)| *name == key).map_or(0, |(_, default, _)| *default);
        Duration::days(self.settings.get(key).and_then(|value| value.parse().ok()).unwrap_or(default))
    }
}

/// One non-compliant resource.
pub(super) struct NewFinding {
    pub(super) resource: AuditResource,
    pub(super) related: Vec<AuditResource>,
    pub(super) reason: String,
    pub(super) reason_code: &'static str,
}

/// What a check found: how many resources it looked at, and the non-compliant ones.
pub(super) struct CheckOutcome {
    pub(super) total: i64,
    pub(super) findings: Vec<NewFinding>,
}

fn resource(id: AuditResourceId) -> AuditResource {
    AuditResource { id, additional_info: BTreeMap::new() }
}

fn finding(id: AuditResourceId, reason: String, reason_code: &'static str) -> NewFinding {
    NewFinding { resource: resource(id), related: Vec::new(), reason, reason_code }
}

/// Runs the check of `context`.
pub(super) fn run(services: &Services, context: &CheckContext) -> Result<CheckOutcome, Error> {
    match context.check.name {
        "DEVICE_CERTIFICATE_EXPIRING_CHECK" => device_expiring(services, context),
        "CA_CERTIFICATE_EXPIRING_CHECK" => ca_expiring(services, context),
        "DEVICE_CERTIFICATE_AGE_CHECK" => device_age(services, context),
        "DEVICE_CERTIFICATE_KEY_QUALITY_CHECK" => device_key_quality(services, context),
        "CA_CERTIFICATE_KEY_QUALITY_CHECK" => ca_key_quality(services, context),
        "DEVICE_CERTIFICATE_SHARED_CHECK" => shared_certificates(services, context),
        "CONFLICTING_CLIENT_IDS_CHECK" => conflicting_client_ids(services, context),
        "REVOKED_DEVICE_CERTIFICATE_STILL_ACTIVE_CHECK" => revoked_devices(services, context),
        "REVOKED_CA_CERTIFICATE_STILL_ACTIVE_CHECK" => revoked_cas(services, context),
        "IOT_POLICY_OVERLY_PERMISSIVE_CHECK" => overly_permissive_policies(services, context),
        other => Err(Error::Internal(format!("no implementation of the check {other}"))),
    }
}

/// Why a certificate valid until `not_after` fails an expiry check at `now` with `threshold`.
pub(super) fn expiry(
    not_after: OffsetDateTime,
    now: OffsetDateTime,
    threshold: Duration,
) -> Option<(&'static str, String)> {
    if not_after <= now {
        Some(("CERTIFICATE_PAST_EXPIRATION", "Certificate is past its expiration.".into()))
    } else if not_after <= now + threshold {
        Some((
            "CERTIFICATE_APPROACHING_EXPIRATION",
            format!("Certificate is expiring within {} days.", threshold.whole_days()),
        ))
    } else {
        None
    }
}

fn expiry_info(not_after: OffsetDateTime) -> BTreeMap<String, String> {
    BTreeMap::from([("EXPIRATION_TIME".to_owned(), (not_after.unix_timestamp() * 1000).to_string())])
}

fn device_expiring(services: &Services, context: &CheckContext) -> Result<CheckOutcome, Error> {
    let threshold = context.days(CERT_EXPIRATION_THRESHOLD);
    let mut outcome = CheckOutcome { total: 0, findings: Vec::new() };
    let mut after: Option<CertificateId> = None;
    loop {
        let rows = registry::read(services.store(), |tx| {
            tx.scan_active_certificates(&context.account, after.as_ref(), BATCH)
        })?;
        for row in &rows {
            outcome.total += 1;
            if let Some((code, reason)) = expiry(row.not_after, context.now, threshold) {
                let mut found = finding(AuditResourceId::DeviceCertificate(row.id.clone()), reason, code);
                found.resource.additional_info = expiry_info(row.not_after);
                outcome.findings.push(found);
            }
        }
        match rows.last() {
            Some(last) if rows.len() == BATCH as usize => after = Some(last.id.clone()),
            _ => return Ok(outcome),
        }
    }
}

fn ca_expiring(services: &Services, context: &CheckContext) -> Result<CheckOutcome, Error> {
    let cas = registry::read(services.store(), |tx| tx.active_ca_certificates(&context.account))?;
    let mut outcome = CheckOutcome { total: cas.len() as i64, findings: Vec::new() };
    for (id, _, not_after) in cas {
        if let Some((code, reason)) = expiry(not_after, context.now, Duration::days(30)) {
            let mut found = finding(AuditResourceId::CaCertificate(id), reason, code);
            found.resource.additional_info = expiry_info(not_after);
            outcome.findings.push(found);
        }
    }
    Ok(outcome)
}

fn device_age(services: &Services, context: &CheckContext) -> Result<CheckOutcome, Error> {
    let threshold = context.days(CERT_AGE_THRESHOLD);
    let mut outcome = CheckOutcome { total: 0, findings: Vec::new() };
    let mut after: Option<CertificateId> = None;
    loop {
        let rows = registry::read(services.store(), |tx| {
            tx.scan_active_certificates(&context.account, after.as_ref(), BATCH)
        })?;
        for row in &rows {
            outcome.total += 1;
            if context.now - row.created_at >= threshold {
                outcome.findings.push(finding(
                    AuditResourceId::DeviceCertificate(row.id.clone()),
                    format!("Certificate has been active for {} days or more.", threshold.whole_days()),
                    "CERTIFICATE_PAST_AGE_THRESHOLD",
                ));
            }
        }
        match rows.last() {
            Some(last) if rows.len() == BATCH as usize => after = Some(last.id.clone()),
            _ => return Ok(outcome),
        }
    }
}

/// Calls `visit` with every ACTIVE/PENDING_TRANSFER device certificate of the account, parsed,
/// a batch at a time. Returns how many there were (unparseable ones included).
fn each_device_certificate(
    services: &Services,
    account: &AccountId,
    mut visit: impl FnMut(&CertificateId, &Certificate),
) -> Result<i64, Error> {
    let mut total = 0;
    let mut after: Option<CertificateId> = None;
    loop {
        let rows =
            registry::read(services.store(), |tx| tx.scan_active_certificate_pems(account, after.as_ref(), BATCH))?;
        for (id, pem) in &rows {
            total += 1;
            match Certificate::from_pem(pem) {
                Ok(certificate) => visit(id, &certificate),
                Err(error) => {
                    tracing::warn!(account = %account, cert = %id, %error, "stored certificate does not parse")
                }
            }
        }
        match rows.last() {
            Some((last, _)) if rows.len() == BATCH as usize => after = Some(last.clone()),
            _ => return Ok(total),
        }
    }
}

fn weak_key(certificate: &Certificate) -> Option<String> {
    check_key_rules(certificate.public_key()).err().map(|error| format!("Certificate key is weak: {error}."))
}

fn device_key_quality(services: &Services, context: &CheckContext) -> Result<CheckOutcome, Error> {
    let mut findings = Vec::new();
    let total = each_device_certificate(services, &context.account, |id, certificate| {
        if let Some(reason) = weak_key(certificate) {
            findings.push(finding(AuditResourceId::DeviceCertificate(id.clone()), reason, "CERTIFICATE_KEY_WEAK"));
        }
    })?;
    Ok(CheckOutcome { total, findings })
}

fn ca_key_quality(services: &Services, context: &CheckContext) -> Result<CheckOutcome, Error> {
    let cas = registry::read(services.store(), |tx| tx.active_ca_certificates(&context.account))?;
    let mut outcome = CheckOutcome { total: cas.len() as i64, findings: Vec::new() };
    for (id, pem, _) in cas {
        if let Some(reason) = Certificate::from_pem(&pem).ok().as_ref().and_then(weak_key) {
            outcome.findings.push(finding(AuditResourceId::CaCertificate(id), reason, "CERTIFICATE_KEY_WEAK"));
        }
    }
    Ok(outcome)
}

fn connections(services: &Services, context: &CheckContext) -> Result<Vec<ConnectionRecord>, Error> {
    services.connection_history(&context.account, None, context.now - CONNECTION_WINDOW)
}

fn millis_text(time: OffsetDateTime) -> String {
    ((time.unix_timestamp_nanos() / 1_000_000) as i64).to_string()
}

fn client_resource(connection: &ConnectionRecord) -> AuditResource {
    let mut info = BTreeMap::from([("CONNECTION_TIME".to_owned(), millis_text(connection.connected_at))]);
    if let Some(at) = connection.disconnected_at {
        info.insert("DISCONNECTION_TIME".to_owned(), millis_text(at));
    }
    AuditResource { id: AuditResourceId::ClientId(connection.client_id.clone()), additional_info: info }
}

/// The pairs of connections (by index) that were open at the same time with different client
/// IDs; `connections` are sorted by connection time. Open connections last until `now`.
pub(super) fn overlapping_client_ids(connections: &[&ConnectionRecord], now: OffsetDateTime) -> BTreeSet<usize> {
    let mut involved = BTreeSet::new();
    for (index, first) in connections.iter().enumerate() {
        let first_end = first.disconnected_at.unwrap_or(now);
        for (offset, second) in connections[index + 1..].iter().enumerate() {
            if second.connected_at >= first_end {
                break;
            }
            if second.client_id != first.client_id {
                involved.insert(index);
                involved.insert(index + 1 + offset);
            }
        }
    }
    involved
}

fn shared_certificates(services: &Services, context: &CheckContext) -> Result<CheckOutcome, Error> {
    let history = connections(services, context)?;
    let mut by_certificate: BTreeMap<&CertificateId, Vec<&ConnectionRecord>> = BTreeMap::new();
    for connection in &history {
        by_certificate.entry(&connection.certificate_id).or_default().push(connection);
    }
    let mut outcome = CheckOutcome { total: by_certificate.len() as i64, findings: Vec::new() };
    for (certificate, mut list) in by_certificate {
        list.sort_by_key(|connection| connection.connected_at);
        let involved = overlapping_client_ids(&list, context.now);
        if involved.is_empty() {
            continue;
        }
        let mut found = finding(
            AuditResourceId::DeviceCertificate(certificate.clone()),
            "Certificate shared by one or more devices.".into(),
            "CERTIFICATE_SHARED_BY_MULTIPLE_DEVICES",
        );
        found.related = involved.into_iter().map(|index| client_resource(list[index])).collect();
        outcome.findings.push(found);
    }
    Ok(outcome)
}

fn conflicting_client_ids(services: &Services, context: &CheckContext) -> Result<CheckOutcome, Error> {
    let history = connections(services, context)?;
    let mut by_client: BTreeMap<&str, Vec<&ConnectionRecord>> = BTreeMap::new();
    for connection in &history {
        by_client.entry(&connection.client_id).or_default().push(connection);
    }
    let mut outcome = CheckOutcome { total: by_client.len() as i64, findings: Vec::new() };
    for (client_id, list) in by_client {
        let certificates: BTreeSet<&CertificateId> = list.iter().map(|connection| &connection.certificate_id).collect();
        let taken_over =
            list.iter().any(|connection| connection.disconnect_reason.as_deref() == Some("DUPLICATE_CLIENTID"));
        if certificates.len() < 2 || !taken_over {
            continue;
        }
        let mut found = finding(
            AuditResourceId::ClientId(client_id.to_owned()),
            "Multiple devices are connecting with the same client ID.".into(),
            "DUPLICATE_CLIENT_ID_ACROSS_CONNECTIONS",
        );
        found.related =
            certificates.into_iter().map(|id| resource(AuditResourceId::DeviceCertificate(id.clone()))).collect();
        outcome.findings.push(found);
    }
    Ok(outcome)
}

fn crls(services: &Services, account: &AccountId) -> Result<Vec<(String, bool, Crl)>, Error> {
    let stored = registry::read(services.store(), |tx| tx.list_crls(account))?;
    Ok(stored
        .into_iter()
        .filter_map(|crl| match Crl::from_der(crl.der) {
            Ok(parsed) => Some((crl.name, crl.issuer_ca.is_some(), parsed)),
            Err(error) => {
                tracing::warn!(account = %account, crl = %crl.name, %error, "stored CRL does not parse");
                None
            }
        })
        .collect())
}

fn revocation_finding(id: AuditResourceId, crl_name: &str, verified: bool) -> NewFinding {
    let mut found =
        finding(id, "Certificate is revoked by its issuer but still active.".into(), "CERTIFICATE_REVOKED_BY_ISSUER");
    found.resource.additional_info = BTreeMap::from([
        ("CRL_NAME".to_owned(), crl_name.to_owned()),
        ("CRL_SIGNATURE_VERIFIED".to_owned(), verified.to_string()),
    ]);
    found
}

fn revoked_devices(services: &Services, context: &CheckContext) -> Result<CheckOutcome, Error> {
    let lists = crls(services, &context.account)?;
    let mut findings = Vec::new();
    let total = each_device_certificate(services, &context.account, |id, certificate| {
        if let Some((name, verified, _)) = lists.iter().find(|(_, _, crl)| crl.lists(certificate)) {
            findings.push(revocation_finding(AuditResourceId::DeviceCertificate(id.clone()), name, *verified));
        }
    })?;
    Ok(CheckOutcome { total, findings })
}

fn revoked_cas(services: &Services, context: &CheckContext) -> Result<CheckOutcome, Error> {
    let lists = crls(services, &context.account)?;
    let cas = registry::read(services.store(), |tx| tx.active_ca_certificates(&context.account))?;
    let mut outcome = CheckOutcome { total: cas.len() as i64, findings: Vec::new() };
    for (id, pem, _) in cas {
        let Ok(certificate) = Certificate::from_pem(&pem) else { continue };
        if let Some((name, verified, _)) = lists.iter().find(|(_, _, crl)| crl.lists(&certificate)) {
            outcome.findings.push(revocation_finding(AuditResourceId::CaCertificate(id), name, *verified));
        }
    }
    Ok(outcome)
}

/// Whether a resource pattern of an Allow statement covers a whole resource type (or more):
/// `*`, `arn:aws:iot:*`, `arn:aws:iot:<region>:<account>:topic/*`, `...:client/*`, `...:*`.
/// A pattern with a policy variable (`${iot:ClientId}`) is scoped and not broad.
pub(super) fn broad_resource(pattern: &str) -> bool {
    if pattern.contains("${") {
        return false;
    }
    if pattern == "*" {
        return true;
    }
    let Some(rest) = pattern.strip_prefix("arn:") else { return false };
    // arn:partition:service:region:account:resource
    let parts: Vec<&str> = rest.splitn(5, ':').collect();
    match parts.as_slice() {
        [.., resource] if parts.len() == 5 => {
            resource.starts_with('*') || resource.split_once('/').is_some_and(|(_, name)| name.starts_with('*'))
        }
        // Fewer parts: a wildcard swallowed the rest (`arn:aws:iot:*`).
        _ => rest.contains('*'),
    }
}

/// The data-plane actions a policy allows on broad resources, with AWS's names, in a fixed order.
pub(super) fn broad_actions(policy: &Policy) -> Vec<&'static str> {
    let mut actions = BTreeSet::new();
    for statement in policy.statements() {
        if statement.effect() != Effect::Allow {
            continue;
        }
        let resources = statement.resources();
        let broad =
            if resources.negated { true } else { resources.values.iter().any(|pattern| broad_resource(pattern)) };
        if !broad {
            continue;
        }
        for action in [Action::Connect, Action::Publish, Action::Subscribe, Action::Receive] {
            if statement.covers(action) {
                actions.insert(action.name());
            }
        }
    }
    actions.into_iter().collect()
}

fn overly_permissive_policies(services: &Services, context: &CheckContext) -> Result<CheckOutcome, Error> {
    let mut outcome = CheckOutcome { total: 0, findings: Vec::new() };
    let mut after: Option<String> = None;
    let mut compiled: HashMap<String, Policy> = HashMap::new();
    loop {
        let rows = registry::read(services.store(), |tx| {
            tx.scan_default_policy_documents(&context.account, after.as_deref(), BATCH)
        })?;
        for row in &rows {
            outcome.total += 1;
            let policy = match Policy::parse(&row.document) {
                Ok(policy) => compiled.entry(row.policy_name.clone()).or_insert(policy),
                Err(error) => {
                    tracing::warn!(account = %context.account, policy = %row.policy_name, %error, "stored policy does not parse");
                    continue;
                }
            };
            let actions = broad_actions(policy);
            if !actions.is_empty() {
                outcome.findings.push(finding(
                    AuditResourceId::PolicyVersion {
                        policy_name: row.policy_name.clone(),
                        version_id: row.version.to_string(),
                    },
                    format!("Policy allows broad access to IoT data plane actions: [{}].", actions.join(", ")),
                    "ALLOWS_BROAD_ACCESS_TO_IOT_DATA_PLANE_ACTIONS",
                ));
            }
        }
        compiled.clear();
        match rows.last() {
            Some(last) if rows.len() == BATCH as usize => after = Some(last.policy_name.clone()),
            _ => return Ok(outcome),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broad_resources() {
        for (pattern, broad) in [
            ("*", true),
            ("arn:aws:iot:*", true),
            ("arn:aws:iot:us-east-1:123456789012:topic/*", true),
            ("arn:aws:iot:us-east-1:123456789012:client/*", true),
            ("arn:aws:iot:us-east-1:123456789012:*", true),
            ("arn:aws:iot:*:*:topicfilter/*", true),
            ("arn:aws:iot:us-east-1:123456789012:topic/sensors/*", false),
            ("arn:aws:iot:us-east-1:123456789012:client/${iot:Connection.Thing.ThingName}", false),
            ("arn:aws:iot:us-east-1:123456789012:client/*${iot:ClientId}", false),
            ("arn:aws:iot:us-east-1:123456789012:client/lamp-1", false),
        ] {
            assert_eq!(broad_resource(pattern), broad, "{pattern}");
        }
    }

    #[test]
    fn broad_actions_of_policies() {
        let check = |document: &str, expected: &[&str]| {
            assert_eq!(broad_actions(&Policy::parse(document).unwrap()), expected, "{document}");
        };
        check(
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"iot:*","Resource":"*"}}"#,
            &["iot:Connect", "iot:Publish", "iot:Receive", "iot:Subscribe"],
        );
        check(
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"iot:Publish","Resource":"arn:aws:iot:us-east-1:123456789012:topic/*"}}"#,
            &["iot:Publish"],
        );
        check(
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws:iot:us-east-1:123456789012:client/${iot:ClientId}"}}"#,
            &[],
        );
        check(r#"{"Version":"2012-10-17","Statement":{"Effect":"Deny","Action":"iot:*","Resource":"*"}}"#, &[]);
    }

    #[test]
    fn expiry_reasons() {
        let now = OffsetDateTime::UNIX_EPOCH + Duration::days(1000);
        let code = |days: i64| expiry(now + Duration::days(days), now, Duration::days(30)).map(|(code, _)| code);
        assert_eq!(code(-1), Some("CERTIFICATE_PAST_EXPIRATION"));
        assert_eq!(code(0), Some("CERTIFICATE_PAST_EXPIRATION"));
        assert_eq!(code(30), Some("CERTIFICATE_APPROACHING_EXPIRATION"));
        assert_eq!(code(31), None);
    }
}
