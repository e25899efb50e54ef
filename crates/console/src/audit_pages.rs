//! The console's audit pages: the account's audit configuration (which checks are enabled), the
//! recent audit tasks, starting an on-demand audit of enabled checks, and a task's page with
//! its checks' outcomes and its findings, linked to the certificates and CAs they name.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Path, Request, State};
use axum::response::Response;
use certfleet_registry::{AuditFindingFilter, AuditResourceId, AuditTaskFilter};
use certfleet_services::AUDIT_CHECKS;
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
    if request.uri().query() == Some("started=1") {
        body.raw("<p class=\"notice\" id=\"started\">The audit started; its task is listed below.</p>");
    }
    body.raw("<h2>Start an on-demand audit</h2>");
    let enabled: Vec<&str> = AUDIT_CHECKS
        .iter()
        .map(|check| check.name)
        .filter(|name| configuration.checks.get(*name).is_some_and(|c| c.enabled))
        .collect();
    if enabled.is_empty() {
        body.raw("<p id=\"no-checks\">No check is enabled in this account's audit configuration (<code>aws iot update-account-audit-configuration</code>).</p>");
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
    body.raw("<h2>Checks</h2><table id=\"checks\"><thead><tr><th>Check</th><th>Enabled</th><th>Settings</th></tr></thead><tbody>");
    for check in AUDIT_CHECKS {
        let configured = configuration.checks.get(check.name);
        body.raw("<tr><td>")
            .text(check.name)
            .raw("</td><td>")
            .raw(if configured.is_some_and(|c| c.enabled) { "yes" } else { "no" })
            .raw("</td><td>");
        if let Some(configured) = configured {
            for (key, value) in &configured.configuration {
                body.text(key).raw(" = ").text(value).raw(" ");
            }
        }
        body.raw("</td></tr>");
    }
    body.raw("</tbody></table><h2>Tasks of the last 30 days</h2><table id=\"tasks\"><thead><tr><th>Task</th><th>Type</th><th>Status</th><th>Started</th><th>Finished</th></tr></thead><tbody>");
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
}
