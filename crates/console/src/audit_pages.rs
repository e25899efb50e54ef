//! The console's audit pages: the account's audit configuration (which checks are enabled,
//! their thresholds, the role ARN), viewed and changed as UpdateAccountAuditConfiguration does,
//! the recent audit tasks, starting an on-demand audit of enabled checks, and a task's page with
//! its checks' outcomes and its findings, linked to the certificates and CAs they name.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Path, Request, State};
use axum::response::Response;
use certfleet_registry::{AuditCheckConfiguration, AuditFindingFilter, AuditResourceId, AuditTaskFilter};
use certfleet_services::{AUDIT_CHECKS, AuditConfigurationUpdate};
use http::StatusCode;

use crate::Console;
use crate::html::{self, Fields, Html, when};
use crate::pages::{bad_input, blocking, caller, error_page, html_response, redirect, require_session, state_change};
use crate::session::Session;

/// Recent tasks listed: those started within this many days, at most [`MAX_TASKS`].
const TASK_DAYS: i64 = 30;
const MAX_TASKS: u32 = 100;
const MAX_FINDINGS: u32 = 250;

fn signed_in_page(session: &Session, title: &str, body: Html) -> Response {
    html_response(
        StatusCode::OK,
        html::page(title, Some((session.account.as_str(), &session.csrf)), &body.into_string()),
    )
}

fn valid_task_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The form field that asks for a check: `check.<NAME>`.
fn check_field(name: &str) -> String {
    format!("check.{name}")
}

/// The configuration form's field that enables a check: `enabled.<NAME>`.
fn enabled_field(name: &str) -> String {
    format!("enabled.{name}")
}

/// The configuration form's field of a check's setting: `setting.<NAME>.<KEY>`.
fn setting_field(name: &str, key: &str) -> String {
    format!("setting.{name}.{key}")
}

/// The longest role ARN taken (AWS's bound).
const MAX_ROLE_ARN: usize = 2048;

/// An IAM role ARN: `arn:<partition>:iam::<12 digits>:role/<path and name>`, the name's
/// characters as IAM allows them.
fn valid_role_arn(arn: &str) -> bool {
    let Some(rest) = arn.strip_prefix("arn:") else { return false };
    let parts: Vec<&str> = rest.splitn(5, ':').collect();
    let [partition, service, region, account, resource] = parts[..] else { return false };
    let name = resource.strip_prefix("role/").unwrap_or("");
    arn.len() <= MAX_ROLE_ARN
        && !partition.is_empty()
        && partition.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        && service == "iam"
        && region.is_empty()
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && !name.is_empty()
        && !name.ends_with('/')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-/".contains(&b))
}

/// The update a configuration form asks for: the role ARN when given, and every check of the
/// catalogue, enabled when ticked, with its settings (whole days within the catalogue's range).
/// Any other field, or a value out of range, is refused with the reason.
fn configuration_update(fields: &Fields) -> Result<AuditConfigurationUpdate, String> {
    let mut known = vec!["csrf".to_owned(), "role_arn".to_owned()];
    let mut update = AuditConfigurationUpdate::default();
    if let Some(arn) = fields.get("role_arn") {
        if !valid_role_arn(arn) {
            return Err("a role ARN is arn:aws:iam::<account>:role/<name>".into());
        }
        update.role_arn = Some(arn.to_owned());
    }
    for check in AUDIT_CHECKS {
        let enabled = match fields.get(&enabled_field(check.name)) {
            None => false,
            Some("on") => true,
            Some(_) => return Err(format!("{} is ticked or not", check.name)),
        };
        let mut configuration = std::collections::BTreeMap::new();
        for (key, _, range) in check.settings {
            let field = setting_field(check.name, key);
            if let Some(value) = fields.get(&field) {
                match value.parse::<i64>() {
                    Ok(days) if range.contains(&days) => {
                        configuration.insert((*key).to_owned(), days.to_string());
                    }
                    _ => {
                        return Err(format!(
                            "{key} of {} is a number of days from {} to {}",
                            check.name,
                            range.start(),
                            range.end()
                        ));
                    }
                }
            }
            known.push(field);
        }
        known.push(enabled_field(check.name));
        update.checks.insert(check.name.to_owned(), AuditCheckConfiguration { enabled, configuration });
    }
    if let Some(unknown) = fields.names().find(|name| !known.iter().any(|known| known == name)) {
        return Err(format!("the form has a field {:?} that no check has", crate::guard::clip(unknown)));
    }
    Ok(update)
}

pub(crate) async fn audits(State(console): State<Arc<Console>>, request: Request) -> Response {
    let session = match require_session(&console, &request).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let services = console.services.clone();
    let owner = caller(&session);
    let found = blocking(move || {
        let configuration = services.describe_account_audit_configuration(&owner)?;
        let now = services.now();
        let filter =
            AuditTaskFilter { start: now - time::Duration::days(TASK_DAYS), end: now, task_type: None, status: None };
        let tasks = services.list_audit_tasks(&owner, &filter, None, MAX_TASKS)?.items;
        Ok((configuration, tasks))
    })
    .await;
    let (configuration, mut tasks) = match found {
        Ok(found) => found,
        Err(error) => return error_page(Some(&session), error),
    };
    tasks.sort_by_key(|task| std::cmp::Reverse(task.started_at));
    let mut body = Html::default();
    match request.uri().query() {
        Some("started=1") => {
            body.raw("<p class=\"notice\" id=\"started\">The audit started; its task is listed below.</p>");
        }
        Some("saved=1") => {
            body.raw("<p class=\"notice\" id=\"saved\">The audit configuration was saved.</p>");
        }
        _ => {}
    }
    body.raw("<h2>Start an on-demand audit</h2>");
    let enabled: Vec<&str> = AUDIT_CHECKS
        .iter()
        .map(|check| check.name)
        .filter(|name| configuration.checks.get(*name).is_some_and(|c| c.enabled))
        .collect();
    if enabled.is_empty() {
        body.raw("<p id=\"no-checks\">No check is enabled in this account's audit configuration: enable some below (or with <code>aws iot update-account-audit-configuration</code>).</p>");
    } else {
        body.raw("<form method=\"post\" action=\"/audits/start\" id=\"start-audit\"><input type=\"hidden\" name=\"csrf\" value=\"")
            .text(&session.csrf)
            .raw("\"><ul class=\"checks\">");
        for name in &enabled {
            body.raw("<li><label><input type=\"checkbox\" checked name=\"")
                .text(&check_field(name))
                .raw("\" value=\"on\"> ")
                .text(name)
                .raw("</label></li>");
        }
        body.raw("</ul><button type=\"submit\" id=\"start-audit-submit\">Start the audit</button></form>");
    }
    body.raw("<h2>Configuration</h2><form method=\"post\" action=\"/audits/configuration\" id=\"audit-configuration\"><input type=\"hidden\" name=\"csrf\" value=\"")
        .text(&session.csrf)
        .raw("\"><p><label>Role ARN (audits act as it, as in AWS; required the first time) <input name=\"role_arn\" id=\"role-arn\" size=\"60\" maxlength=\"2048\" value=\"")
        .text(configuration.role_arn.as_deref().unwrap_or(""))
        .raw("\"></label></p><table id=\"checks\"><thead><tr><th>Check</th><th>Severity</th><th>Enabled</th><th>Settings</th></tr></thead><tbody>");
    for check in AUDIT_CHECKS {
        let configured = configuration.checks.get(check.name);
        let on = configured.is_some_and(|c| c.enabled);
        body.raw("<tr><td>")
            .text(check.name)
            .raw("</td><td>")
            .text(check.severity.as_str())
            .raw("</td><td class=\"enabled\"><label><input type=\"checkbox\" name=\"")
            .text(&enabled_field(check.name))
            .raw("\" id=\"")
            .text(&enabled_field(check.name))
            .raw("\" value=\"on\"")
            .raw(if on { " checked" } else { "" })
            .raw("> ")
            .raw(if on { "yes" } else { "no" })
            .raw("</label></td><td>");
        for (key, default, range) in check.settings {
            let value =
                configured.and_then(|c| c.configuration.get(*key)).cloned().unwrap_or_else(|| default.to_string());
            body.raw("<label>")
                .text(key)
                .raw(" <input type=\"number\" name=\"")
                .text(&setting_field(check.name, key))
                .raw("\" id=\"")
                .text(&setting_field(check.name, key))
                .raw("\" min=\"")
                .number(range.start())
                .raw("\" max=\"")
                .number(range.end())
                .raw("\" value=\"")
                .text(&value)
                .raw("\"></label>");
        }
        body.raw("</td></tr>");
    }
    body.raw("</tbody></table><p><button type=\"submit\" id=\"save-configuration\">Save the configuration</button> <span class=\"hint\">A check a scheduled audit uses cannot be disabled; notification targets and scheduled audits stay with the AWS CLI.</span></p></form>");
    body.raw("<h2>Tasks of the last 30 days</h2><table id=\"tasks\"><thead><tr><th>Task</th><th>Type</th><th>Status</th><th>Started</th><th>Finished</th></tr></thead><tbody>");
    for task in &tasks {
        body.raw("<tr><td><a class=\"task-link\" href=\"/audits/")
            .text(&task.id)
            .raw("\"><code>")
            .text(&task.id)
            .raw("</code></a></td><td>")
            .text(task.task_type.as_str())
            .raw("</td><td class=\"task-status\">")
            .text(task.status.as_str())
            .raw("</td><td>")
            .text(&when(task.started_at))
            .raw("</td><td>")
            .text(&task.finished_at.map(when).unwrap_or_else(|| "-".into()))
            .raw("</td></tr>");
    }
    body.raw("</tbody></table>");
    signed_in_page(&session, "Audits", body)
}

pub(crate) async fn start_audit(State(console): State<Arc<Console>>, request: Request) -> Response {
    let (session, fields, _) = match state_change(&console, request).await {
        Ok(change) => change,
        Err(response) => return response,
    };
    let checks = asked_checks(&fields);
    if checks.is_empty() {
        return bad_input(&console, Some(&session), "no known check was asked for");
    }
    let services = console.services.clone();
    let owner = caller(&session);
    let asked = checks.clone();
    let task = match blocking(move || services.start_on_demand_audit_task(&owner, &asked)).await {
        Ok(task) => task,
        Err(error) => return error_page(Some(&session), error),
    };
    console.counters.status_changes.fetch_add(1, Ordering::Relaxed);
    tracing::info!(account = %session.account, access_key_id = %session.access_key_id, task, checks = ?checks, "console: on-demand audit started");
    redirect("/audits?started=1")
}

/// Saves the account's audit configuration from its form (every check ticked or not, their
/// settings, the role ARN), as UpdateAccountAuditConfiguration would; a refusal (a value out of
/// range, a check a scheduled audit uses, no role ARN the first time) is shown with its reason.
pub(crate) async fn save_configuration(State(console): State<Arc<Console>>, request: Request) -> Response {
    let (session, fields, _) = match state_change(&console, request).await {
        Ok(change) => change,
        Err(response) => return response,
    };
    let update = match configuration_update(&fields) {
        Ok(update) => update,
        Err(why) => return bad_input(&console, Some(&session), &why),
    };
    let enabled: Vec<&str> =
        update.checks.iter().filter(|(_, check)| check.enabled).map(|(name, _)| name.as_str()).collect();
    tracing::info!(account = %session.account, access_key_id = %session.access_key_id, enabled = ?enabled, "console: saving the audit configuration");
    let services = console.services.clone();
    let owner = caller(&session);
    if let Err(error) = blocking(move || services.update_account_audit_configuration(&owner, &update)).await {
        return error_page(Some(&session), error);
    }
    console.counters.status_changes.fetch_add(1, Ordering::Relaxed);
    redirect("/audits?saved=1")
}

/// The catalogue's checks a form asks for (`check.<NAME>=on`), in catalogue order.
fn asked_checks(fields: &Fields) -> Vec<String> {
    AUDIT_CHECKS
        .iter()
        .filter(|check| fields.get(&check_field(check.name)) == Some("on"))
        .map(|check| check.name.to_owned())
        .collect()
}

pub(crate) async fn audit_task(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let session = match require_session(&console, &request).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    if !valid_task_id(&id) {
        return bad_input(&console, Some(&session), "a task ID is letters, digits and dashes");
    }
    let services = console.services.clone();
    let owner = caller(&session);
    let wanted = id.clone();
    let found = blocking(move || {
        let (task, runs) = services.describe_audit_task(&owner, &wanted)?;
        let filter = AuditFindingFilter {
            task_id: Some(wanted.clone()),
            check_name: None,
            resource: None,
            start: None,
            end: None,
            include_suppressed: true,
        };
        let findings = services.list_audit_findings(&owner, &filter, None, MAX_FINDINGS)?.items;
        Ok((task, runs, findings))
    })
    .await;
    let (task, runs, findings) = match found {
        Ok(found) => found,
        Err(error) => return error_page(Some(&session), error),
    };
    let mut body = Html::default();
    body.raw("<dl class=\"fields\"><dt>Task</dt><dd><code>")
        .text(&task.id)
        .raw("</code></dd><dt>Type</dt><dd>")
        .text(task.task_type.as_str())
        .raw("</dd><dt>Status</dt><dd id=\"task-status\">")
        .text(task.status.as_str())
        .raw("</dd><dt>Started</dt><dd>")
        .text(&when(task.started_at))
        .raw("</dd><dt>Finished</dt><dd>")
        .text(&task.finished_at.map(when).unwrap_or_else(|| "-".into()))
        .raw("</dd></dl><h2>Checks</h2><table id=\"runs\"><thead><tr><th>Check</th><th>Status</th><th>Resources</th><th>Non-compliant</th><th>Message</th></tr></thead><tbody>");
    for run in &runs {
        body.raw("<tr><td>")
            .text(&run.check_name)
            .raw("</td><td>")
            .text(run.status.as_str())
            .raw("</td><td>")
            .number(run.total_resources)
            .raw("</td><td class=\"non-compliant\">")
            .number(run.non_compliant_resources)
            .raw("</td><td>")
            .text(run.message.as_deref().unwrap_or(""))
            .raw("</td></tr>");
    }
    body.raw("</tbody></table><h2>Findings (first 250)</h2><table id=\"findings\"><thead><tr><th>Check</th><th>Severity</th><th>Resource</th><th>Reason</th></tr></thead><tbody>");
    for finding in &findings {
        body.raw("<tr><td>")
            .text(&finding.check_name)
            .raw("</td><td>")
            .text(finding.severity.as_str())
            .raw("</td><td>");
        match &finding.resource.id {
            AuditResourceId::DeviceCertificate(id) => {
                body.raw("<a class=\"finding-certificate\" href=\"/certificates/")
                    .text(id.as_str())
                    .raw("\">certificate <code>")
                    .text(&id.as_str()[..12])
                    .raw("…</code></a>");
            }
            AuditResourceId::CaCertificate(id) => {
                body.raw("<a href=\"/cas/")
                    .text(id.as_str())
                    .raw("\">CA <code>")
                    .text(&id.as_str()[..12])
                    .raw("…</code></a>");
            }
            other => {
                body.text(other.resource_type()).raw(" ").text(&other.key());
            }
        }
        body.raw("</td><td>").text(&finding.reason).raw("</td></tr>");
    }
    body.raw("</tbody></table>");
    signed_in_page(&session, "Audit task", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_catalogue_checks_asked_for_are_started() {
        let fields = Fields::parse(
            "csrf=x&check.DEVICE_CERTIFICATE_EXPIRING_CHECK=on&check.NOT_A_CHECK=on&check.CA_CERTIFICATE_EXPIRING_CHECK=off",
        )
        .unwrap();
        assert_eq!(asked_checks(&fields), ["DEVICE_CERTIFICATE_EXPIRING_CHECK"]);
        assert!(asked_checks(&Fields::parse("csrf=x").unwrap()).is_empty());
        assert!(valid_task_id("d620bb98dd8b52b17cfba821b8e69c88"));
        assert!(!valid_task_id("../x") && !valid_task_id(""));
    }

    #[test]
    fn role_arns_are_iam_roles() {
        for (arn, ok) in [
            ("arn:aws:iam::123456789012:role/audit", true),
            ("arn:aws-cn:iam::123456789012:role/service-role/Audit_1+=,.@-", true),
            ("arn:aws:iam::123456789012:user/audit", false),
            ("arn:aws:iam::123456789012:role/", false),
            ("arn:aws:iam::123456789012:role/a/", false),
            ("arn:aws:iam:us-east-1:123456789012:role/a", false),
            ("arn:aws:s3::123456789012:role/a", false),
            ("arn:aws:iam::12345678901:role/a", false),
            ("arn:aws:iam::123456789012:role/a b", false),
            ("arn:aws:iam::123456789012:role/<script>", false),
            ("arn:AWS:iam::123456789012:role/a", false),
            ("role/a", false),
        ] {
            assert_eq!(valid_role_arn(arn), ok, "{arn}");
        }
        assert!(!valid_role_arn(&format!("arn:aws:iam::123456789012:role/{}", "a".repeat(MAX_ROLE_ARN))));
    }

    /// What a form should give: the checks enabled and the settings, in name order.
    type Expected<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);

    /// `check` of one form: the update's enabled checks and settings, or the refusal's words.
    fn check(form: &str, expected: Result<Expected<'_>, &str>) {
        let outcome = configuration_update(&Fields::parse(form).unwrap());
        match (outcome, expected) {
            (Ok(update), Ok((enabled, settings))) => {
                let on: Vec<&str> =
                    update.checks.iter().filter(|(_, c)| c.enabled).map(|(name, _)| name.as_str()).collect();
                assert_eq!(on, enabled, "{form}");
                assert_eq!(update.checks.len(), AUDIT_CHECKS.len(), "every check is given");
                let given: Vec<(&str, &str)> = update
                    .checks
                    .values()
                    .flat_map(|c| c.configuration.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .collect();
                assert_eq!(given, settings, "{form}");
            }
            (Err(why), Err(words)) => assert!(why.contains(words), "{form}: {why}"),
            (outcome, expected) => panic!("{form}: {:?} instead of {expected:?}", outcome.map(|_| ())),
        }
    }

    /// The whole form (every check ticked, every setting, the role ARN, the token) stays within
    /// the form parser's bounds: a catalogue grown past them would make the page unsavable.
    #[test]
    fn the_whole_configuration_form_fits_the_form_bounds() {
        let mut fields = vec![
            format!("csrf={}", "a".repeat(64)),
            format!("role_arn=arn:aws:iam::123456789012:role/{}", "r".repeat(64)),
        ];
        for check in AUDIT_CHECKS {
            fields.push(format!("{}=on", enabled_field(check.name)));
            for (key, _, range) in check.settings {
                fields.push(format!("{}={}", setting_field(check.name, key), range.end()));
            }
        }
        let form = Fields::parse(&fields.join("&")).expect("the whole form parses");
        let update = configuration_update(&form).unwrap();
        assert!(update.checks.values().all(|check| check.enabled));
    }

    #[test]
    fn configuration_forms_are_validated() {
        check("csrf=x", Ok((&[], &[])));
        check(
            "csrf=x&role_arn=arn:aws:iam::123456789012:role/audit&enabled.DEVICE_CERTIFICATE_EXPIRING_CHECK=on             &setting.DEVICE_CERTIFICATE_EXPIRING_CHECK.CERT_EXPIRATION_THRESHOLD_IN_DAYS=90             &setting.DEVICE_CERTIFICATE_AGE_CHECK.CERT_AGE_THRESHOLD_IN_DAYS=0365",
            Ok((
                &["DEVICE_CERTIFICATE_EXPIRING_CHECK"],
                &[("CERT_AGE_THRESHOLD_IN_DAYS", "365"), ("CERT_EXPIRATION_THRESHOLD_IN_DAYS", "90")],
            )),
        );
        check("csrf=x&enabled.CA_CERTIFICATE_EXPIRING_CHECK=yes", Err("ticked or not"));
        check("csrf=x&enabled.NOT_A_CHECK=on", Err("no check has"));
        check("csrf=x&setting.CA_CERTIFICATE_EXPIRING_CHECK.CERT_AGE_THRESHOLD_IN_DAYS=40", Err("no check has"));
        check("csrf=x&confirm=yes", Err("no check has"));
        for days in ["29", "3653", "-1", "ninety", "9e9", "1.5"] {
            check(
                &format!("csrf=x&setting.DEVICE_CERTIFICATE_EXPIRING_CHECK.CERT_EXPIRATION_THRESHOLD_IN_DAYS={days}"),
                Err("a number of days from 30 to 3652"),
            );
        }
        check("csrf=x&role_arn=arn:aws:iam::1:role/a", Err("a role ARN is"));
    }
}
