//! The console's pages over CAs, rotation campaigns and endpoints: the CA list and a CA's page
//! (activate, deactivate, auto-registration), the campaigns with their progress and a
//! campaign's rotations (retry a failed one), the domain configurations and one's root
//! migration (per-chain counters, who came back and who has not, as CSV; stage the next chain
//! from the account's server certificates, migrate, revert, finish). Every action is confirmed
//! first and carries the session's CSRF token.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use certfleet_pki::CertificateId;
use certfleet_registry::{CaStatus, Cursor, PageRequest, RotationFilter, RotationState};
use certfleet_services::{CaUpdate, EXPIRY_WINDOWS_DAYS, Migration, MigrationSettings};
use http::{StatusCode, header};

use crate::Console;
use crate::html::{self, Fields, Html, url_component, when};
use crate::pages::{
    bad_input, blocking, caller, card, error_page, html_response, redirect, require_session, state_change,
};
use crate::session::Session;
use crate::svg::ca_label;

/// A page of a signed-in operator.
fn signed_in_page(session: &Session, title: &str, body: Html) -> Response {
    html_response(
        StatusCode::OK,
        html::page(title, Some((session.account.as_str(), &session.csrf)), &body.into_string()),
    )
}

/// The confirmation of an action: `question` (trusted markup built with escaping), and a form
/// posting `fields` again with `confirm=yes` and the CSRF token.
fn confirm_page(session: &Session, question: Html, action: &str, fields: &[(&str, &str)], back: &str) -> Response {
    let mut body = question;
    body.raw("<form method=\"post\" action=\"").text(action).raw("\">");
    hidden(&mut body, "csrf", &session.csrf);
    for (name, value) in fields {
        hidden(&mut body, name, value);
    }
    hidden(&mut body, "confirm", "yes");
    body.raw("<button type=\"submit\" id=\"confirm\">Confirm</button> <a id=\"cancel\" href=\"")
        .text(back)
        .raw("\">Cancel</a></form>");
    signed_in_page(session, "Confirm", body)
}

fn hidden(body: &mut Html, name: &str, value: &str) {
    body.raw("<input type=\"hidden\" name=\"").text(name).raw("\" value=\"").text(value).raw("\">");
}

/// A button posting `fields` (and the CSRF token) to `action`.
fn action_button(body: &mut Html, session: &Session, action: &str, fields: &[(&str, &str)], id: &str, label: &str) {
    body.raw("<form method=\"post\" class=\"inline\" action=\"").text(action).raw("\">");
    hidden(body, "csrf", &session.csrf);
    for (name, value) in fields {
        hidden(body, name, value);
    }
    body.raw("<button type=\"submit\" id=\"").text(id).raw("\">").text(label).raw("…</button></form>");
}

/// A domain configuration's name as a path segment allows it: AWS's names (letters, digits,
/// `_ . -`) and the reserved ones (`iot:Data-ATS`, `certfleet:Test`).
fn valid_configuration_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':'))
}

fn notice(body: &mut Html, query: Option<&str>) {
    if query == Some("changed=1") {
        body.raw("<p class=\"notice\" id=\"changed\">Done.</p>");
    }
}

// ---- CAs ----------------------------------------------------------------------------------------

pub(crate) async fn cas(State(console): State<Arc<Console>>, request: Request) -> Response {
    let session = match require_session(&console, &request).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let fields = match Fields::parse(request.uri().query().unwrap_or("")) {
        Ok(fields) => fields,
        Err(error) => return bad_input(&console, Some(&session), &format!("a query {error}")),
    };
    let after = match fields.get("after").map(parse_ca_cursor) {
        None => None,
        Some(Some(cursor)) => Some(cursor),
        Some(None) => return bad_input(&console, Some(&session), "an invalid page marker"),
    };
    let owner = caller(&session);
    let fleet = match console.overview(&owner).await {
        Ok(fleet) => fleet,
        Err(error) => return error_page(Some(&session), error),
    };
    let services = console.services.clone();
    let page = match blocking(move || {
        services.list_ca_certificates(&owner, &PageRequest { limit: 100, ascending: true, after })
    })
    .await
    {
        Ok(page) => page,
        Err(error) => return error_page(Some(&session), error),
    };
    let mut body = Html::default();
    body.raw("<p class=\"hint\">Device counts as of ").text(&when(fleet.computed_at)).raw(".</p>");
    body.raw("<table id=\"cas\"><thead><tr><th>CA</th><th>Subject</th><th>Status</th><th>Mode</th><th>Auto-registration</th><th>Not after</th><th>Devices (ACTIVE)</th><th>Expiring within 30 days</th></tr></thead><tbody>");
    for ca in &page.items {
        let subject = certfleet_pki::Certificate::from_pem(&ca.pem).map(|c| c.subject_string()).unwrap_or_default();
        let counts = fleet.by_ca.get(&Some(ca.id.clone())).cloned().unwrap_or_default();
        body.raw("<tr><td><a class=\"ca-link\" href=\"/cas/")
            .text(ca.id.as_str())
            .raw("\"><code>")
            .text(&ca_label(Some(&ca.id)))
            .raw("…</code></a></td><td>")
            .text(&subject)
            .raw("</td><td>")
            .text(ca.status.as_str())
            .raw("</td><td>")
            .text(ca.mode.as_str())
            .raw("</td><td>")
            .raw(if ca.auto_registration { "enabled" } else { "disabled" })
            .raw("</td><td>")
            .text(&when(ca.not_after))
            .raw("</td><td class=\"devices\">")
            .number(counts.by_status.get("ACTIVE").copied().unwrap_or(0))
            .raw("</td><td>")
            .number(counts.expiring[1])
            .raw("</td></tr>");
    }
    body.raw("</tbody></table>");
    if page.items.is_empty() {
        body.raw(
            "<p id=\"no-cas\">No CA is registered in this account (<code>aws iot register-ca-certificate</code>).</p>",
        );
    }
    if let Some(next) = page.next {
        body.raw("<p><a id=\"next-page\" href=\"/cas?after=")
            .text(&url_component(&format!("{}.{}", next.created_at_ms, next.id)))
            .raw("\">Next page</a></p>");
    }
    signed_in_page(&session, "CA certificates", body)
}

fn parse_ca_cursor(text: &str) -> Option<Cursor> {
    let (at, id) = text.split_once('.')?;
    CertificateId::parse(id).ok()?;
    Some(Cursor { created_at_ms: at.parse().ok()?, id: id.to_owned() })
}

pub(crate) async fn ca(State(console): State<Arc<Console>>, Path(id): Path<String>, request: Request) -> Response {
    let session = match require_session(&console, &request).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let Ok(id) = CertificateId::parse(&id) else {
        return bad_input(&console, Some(&session), "a CA ID is 64 hex digits");
    };
    let owner = caller(&session);
    let services = console.services.clone();
    let (asked, wanted) = (owner.clone(), id.clone());
    let record = match blocking(move || services.describe_ca_certificate(&asked, &wanted)).await {
        Ok(record) => record,
        Err(error) => return error_page(Some(&session), error),
    };
    let fleet = match console.overview(&owner).await {
        Ok(fleet) => fleet,
        Err(error) => return error_page(Some(&session), error),
    };
    let counts = fleet.by_ca.get(&Some(id.clone())).cloned().unwrap_or_default();
    let parsed = certfleet_pki::Certificate::from_pem(&record.pem).ok();
    let mut body = Html::default();
    notice(&mut body, request.uri().query());
    body.raw("<dl class=\"fields\"><dt>CA certificate ID</dt><dd><code id=\"ca-id\">")
        .text(id.as_str())
        .raw("</code></dd>");
    body.raw("<dt>Status</dt><dd id=\"ca-status\">").text(record.status.as_str()).raw("</dd>");
    body.raw("<dt>Mode</dt><dd>").text(record.mode.as_str()).raw("</dd>");
    body.raw("<dt>Auto-registration</dt><dd id=\"ca-auto-registration\">")
        .raw(if record.auto_registration { "enabled" } else { "disabled" })
        .raw("</dd>");
    if let Some(parsed) = &parsed {
        for (label, value) in [
            ("Subject", parsed.subject_string()),
            ("Issuer", parsed.issuer_string()),
            ("Serial", parsed.serial_hex()),
            ("Key", parsed.public_key().kind().to_string()),
        ] {
            body.raw("<dt>").text(label).raw("</dt><dd>").text(&value).raw("</dd>");
        }
    }
    body.raw("<dt>Validity</dt><dd>")
        .text(&when(record.not_before))
        .raw(" – ")
        .text(&when(record.not_after))
        .raw("</dd>");
    body.raw("<dt>Registered</dt><dd>").text(&when(record.created_at)).raw("</dd>");
    if let Some(config) = &record.registration_config {
        if let Some(name) = &config.template_name {
            body.raw("<dt>Provisioning template</dt><dd>").text(name).raw("</dd>");
        }
        if let Some(template) = &config.template_body {
            body.raw("<dt>Template body</dt><dd><pre>").text(template).raw("</pre></dd>");
        }
        if let Some(role) = &config.role_arn {
            body.raw("<dt>Role ARN</dt><dd>").text(role).raw("</dd>");
        }
    }
    body.raw("</dl><h2>Devices chaining to it</h2><section class=\"cards\">");
    card(&mut body, "ca-devices", "Certificates", counts.total());
    for (status, count) in &counts.by_status {
        card(&mut body, &format!("ca-status-{}", status.to_ascii_lowercase()), status, *count);
    }
    for (days, count) in EXPIRY_WINDOWS_DAYS.iter().zip(counts.expiring) {
        card(&mut body, &format!("ca-expiring-{days}"), &format!("ACTIVE, expiring within {days} days"), count);
    }
    body.raw("</section><p><a id=\"ca-certificates\" href=\"/certificates?ca=")
        .text(id.as_str())
        .raw("\">Its certificates</a> · <a href=\"/certificates?ca=")
        .text(id.as_str())
        .raw("&amp;status=ACTIVE&amp;before=")
        .text(&{
            let soon = console.services.now() + time::Duration::days(30);
            format!("{:04}-{:02}-{:02}", soon.year(), u8::from(soon.month()), soon.day())
        })
        .raw("\">those expiring within 30 days</a></p><h2>Actions</h2><div class=\"actions\">");
    let action = format!("/cas/{}/update", id.as_str());
    match record.status {
        CaStatus::Active => {
            action_button(&mut body, &session, &action, &[("change", "deactivate")], "ca-deactivate", "Deactivate")
        }
        CaStatus::Inactive => {
            action_button(&mut body, &session, &action, &[("change", "activate")], "ca-activate", "Activate")
        }
    }
    if record.auto_registration {
        action_button(
            &mut body,
            &session,
            &action,
            &[("change", "auto-off")],
            "ca-auto-off",
            "Disable auto-registration",
        );
    } else {
        action_button(&mut body, &session, &action, &[("change", "auto-on")], "ca-auto-on", "Enable auto-registration");
    }
    body.raw("</div>");
    signed_in_page(&session, "CA certificate", body)
}

pub(crate) async fn update_ca(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let (session, fields, path) = match state_change(&console, request).await {
        Ok(change) => change,
        Err(response) => return response,
    };
    let Ok(id) = CertificateId::parse(&id) else {
        return bad_input(&console, Some(&session), "a CA ID is 64 hex digits");
    };
    let change = fields.get("change").unwrap_or("");
    let (update, question) = match change {
        "activate" => (
            CaUpdate { new_status: Some(CaStatus::Active), ..CaUpdate::default() },
            "Activate the CA? Devices chaining to it can connect again.",
        ),
        "deactivate" => (
            CaUpdate { new_status: Some(CaStatus::Inactive), ..CaUpdate::default() },
            "Deactivate the CA? Every device whose certificate chains to it is refused, and its connected devices are disconnected.",
        ),
        "auto-on" => (
            CaUpdate { new_auto_registration: Some(true), ..CaUpdate::default() },
            "Enable auto-registration? Unknown devices signed by this CA are registered when they first connect.",
        ),
        "auto-off" => {
            (CaUpdate { new_auto_registration: Some(false), ..CaUpdate::default() }, "Disable auto-registration?")
        }
        _ => return bad_input(&console, Some(&session), "an unknown change"),
    };
    let back = format!("/cas/{}", id.as_str());
    if fields.get("confirm") != Some("yes") {
        let mut body = Html::default();
        body.raw("<p>CA <code>").text(id.as_str()).raw("</code>: ").text(question).raw("</p>");
        return confirm_page(&session, body, &path, &[("change", change)], &back);
    }
    let services = console.services.clone();
    let owner = caller(&session);
    let target = id.clone();
    if let Err(error) = blocking(move || services.update_ca_certificate(&owner, &target, &update)).await {
        return error_page(Some(&session), error);
    }
    console.counters.status_changes.fetch_add(1, Ordering::Relaxed);
    tracing::info!(account = %session.account, access_key_id = %session.access_key_id, ca = %id, change, "console: CA changed");
    redirect(&format!("{back}?changed=1"))
}

// ---- rotations ----------------------------------------------------------------------------------

/// Rotations of a campaign, and how many are closed (retired or failed).
fn closed_of(counts: &std::collections::BTreeMap<RotationState, i64>) -> (i64, i64) {
    let total: i64 = counts.values().sum();
    let closed: i64 = counts.iter().filter(|(state, _)| !state.is_open()).map(|(_, count)| *count).sum();
    (closed, total)
}

/// A progress bar and `closed / total closed`, with the hooks the script refreshes.
fn progress(body: &mut Html, counts: &std::collections::BTreeMap<RotationState, i64>) {
    let (closed, total) = closed_of(counts);
    body.raw("<progress data-live-max=\"total\" data-live-value=\"closed\" max=\"")
        .number(total.max(1))
        .raw("\" value=\"")
        .number(closed)
        .raw("\"></progress> <span data-live=\"closed\">")
        .number(closed)
        .raw("</span> / <span data-live=\"total\">")
        .number(total)
        .raw("</span> closed");
}

/// `requested 2 failed 1 ...`, in protocol order.
fn states_text(counts: &std::collections::BTreeMap<RotationState, i64>) -> String {
    RotationState::ALL
        .iter()
        .filter_map(|state| {
            counts.get(state).filter(|count| **count > 0).map(|count| format!("{} {count}", state.as_str()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn state_counts(body: &mut Html, counts: &std::collections::BTreeMap<RotationState, i64>) {
    body.raw("<span data-live=\"states\">").text(&states_text(counts)).raw("</span>");
}

pub(crate) async fn campaigns(State(console): State<Arc<Console>>, request: Request) -> Response {
    let session = match require_session(&console, &request).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let services = console.services.clone();
    let owner = caller(&session);
    let campaigns = match blocking(move || services.rotation_campaigns(&owner, 50)).await {
        Ok(campaigns) => campaigns,
        Err(error) => return error_page(Some(&session), error),
    };
    let mut body = Html::default();
    body.raw("<p class=\"hint\">The newest 50 campaigns. Start one from a certificate search (<a href=\"/certificates\">Certificates</a>) or with <code>certfleet rotation start</code>; audits start them too (docs/rotation.md).</p>");
    body.raw("<table id=\"campaigns\"><thead><tr><th>Campaign</th><th>Source</th><th>Started</th><th>Progress</th><th>By state</th></tr></thead><tbody>");
    for summary in &campaigns {
        body.raw("<tr><td><a class=\"campaign-link\" href=\"/rotations/")
            .text(&summary.campaign.id)
            .raw("\"><code>")
            .text(&summary.campaign.id)
            .raw("</code></a></td><td>")
            .text(summary.campaign.source.as_str())
            .raw("</td><td>")
            .text(&when(summary.campaign.created_at))
            .raw("</td><td>");
        progress(&mut body, &summary.counts);
        body.raw("</td><td>");
        state_counts(&mut body, &summary.counts);
        body.raw("</td></tr>");
    }
    body.raw("</tbody></table>");
    signed_in_page(&session, "Rotation campaigns", body)
}

/// The most certificates one campaign started from a search rotates.
const MAX_ROTATED: u32 = 1000;

/// Starts a rotation campaign for what a certificate search finds (its ACTIVE certificates, at
/// most [`MAX_ROTATED`]): the first post shows how many, the confirmed one starts it.
pub(crate) async fn start_rotation(State(console): State<Arc<Console>>, request: Request) -> Response {
    let (session, fields, path) = match state_change(&console, request).await {
        Ok(change) => change,
        Err(response) => return response,
    };
    let kept: Vec<(&str, String)> = ["id", "cn", "thing", "ca", "before"]
        .into_iter()
        .filter_map(|name| fields.get(name).map(|v| (name, v.to_owned())))
        .collect();
    let query: Vec<String> = kept.iter().map(|(name, value)| format!("{name}={}", url_component(value))).collect();
    let mut search = match crate::pages::parse_search(&query.join("&")) {
        Ok((search, _)) => search,
        Err(why) => return bad_input(&console, Some(&session), &why),
    };
    search.status = Some(certfleet_registry::CertificateStatus::Active);
    search.limit = MAX_ROTATED;
    search.after = None;
    let Some(_slot) = console.queries.enter(&session.account) else {
        console.refusals.refuse(crate::guard::Refusal::Busy, &format!("account {} rotation search", session.account));
        return error_page(
            Some(&session),
            certfleet_services::Error::LimitExceeded("this account's queries are busy; try again in a moment".into()),
        );
    };
    let services = console.services.clone();
    let owner = caller(&session);
    let found = match blocking(move || services.search_certificates(&owner, &search)).await {
        Ok((rows, more)) => (rows.into_iter().map(|row| row.id).collect::<Vec<_>>(), more.is_some()),
        Err(error) => return error_page(Some(&session), error),
    };
    let (ids, more) = found;
    if ids.is_empty() {
        return bad_input(&console, Some(&session), "the search finds no ACTIVE certificate");
    }
    if fields.get("confirm") != Some("yes") {
        let mut body = Html::default();
        body.raw("<p>Start a rotation campaign for <b id=\"rotate-count\">")
            .number(ids.len())
            .raw("</b> ACTIVE certificates");
        if more {
            body.raw(" (the first ").number(MAX_ROTATED).raw(" the search finds; start another campaign for the rest)");
        }
        body.raw("? Each device connected with them is asked for a CSR (docs/rotation.md); a certificate never seen connected fails at once.</p>");
        let hidden: Vec<(&str, &str)> = kept.iter().map(|(name, value)| (*name, value.as_str())).collect();
        return confirm_page(&session, body, &path, &hidden, "/certificates");
    }
    let services = console.services.clone();
    let owner = caller(&session);
    let count = ids.len();
    let started = blocking(move || {
        services.start_rotation(
            &owner,
            &ids,
            certfleet_registry::RotationSource::Manual,
            certfleet_registry::SubjectRule::KeepOld,
        )
    })
    .await;
    let summary = match started {
        Ok(summary) => summary,
        Err(error) => return error_page(Some(&session), error),
    };
    console.counters.status_changes.fetch_add(1, Ordering::Relaxed);
    tracing::info!(account = %session.account, access_key_id = %session.access_key_id, campaign = %summary.campaign.id, certificates = count, "console: rotation campaign started");
    redirect(&format!("/rotations/{}?changed=1", summary.campaign.id))
}

fn valid_rotation_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

pub(crate) async fn campaign(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let session = match require_session(&console, &request).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    if !valid_rotation_id(&id) {
        return bad_input(&console, Some(&session), "a campaign ID is letters, digits and dashes");
    }
    let services = console.services.clone();
    let owner = caller(&session);
    let wanted = id.clone();
    let found = blocking(move || {
        let summary = services.describe_rotation_campaign(&owner, &wanted)?;
        let filter = RotationFilter { campaign_id: Some(wanted.clone()), ..RotationFilter::default() };
        let rotations = services.list_rotations(&owner, &filter, None, 500)?;
        Ok((summary, rotations))
    })
    .await;
    let (summary, rotations) = match found {
        Ok(found) => found,
        Err(error) => return error_page(Some(&session), error),
    };
    let mut body = Html::default();
    notice(&mut body, request.uri().query());
    body.raw("<dl class=\"fields\"><dt>Campaign</dt><dd><code id=\"campaign-id\">")
        .text(&summary.campaign.id)
        .raw("</code></dd><dt>Source</dt><dd>")
        .text(summary.campaign.source.as_str())
        .raw("</dd><dt>Subject rule</dt><dd>")
        .text(summary.campaign.subject_rule.as_str())
        .raw("</dd><dt>Started</dt><dd>")
        .text(&when(summary.campaign.created_at))
        .raw("</dd><dt>Progress</dt><dd id=\"campaign-progress\" data-live-source=\"/api/rotations/")
        .text(&summary.campaign.id)
        .raw("\">");
    progress(&mut body, &summary.counts);
    body.raw("</dd><dt>By state</dt><dd id=\"campaign-states\">");
    state_counts(&mut body, &summary.counts);
    body.raw("</dd></dl><h2>Rotations (first 500)</h2><table id=\"rotations\"><thead><tr><th>Rotation</th><th>Client ID</th><th>Old certificate</th><th>New certificate</th><th>State</th><th>Attempts</th><th>Error</th><th></th></tr></thead><tbody>");
    let action = format!("/rotations/{}/retry", summary.campaign.id);
    for rotation in &rotations {
        body.raw("<tr><td><code>")
            .text(&rotation.id)
            .raw("</code></td><td>")
            .text(&rotation.client_id)
            .raw("</td><td><a href=\"/certificates/")
            .text(rotation.old_certificate_id.as_str())
            .raw("\"><code>")
            .text(&rotation.old_certificate_id.as_str()[..12])
            .raw("…</code></a></td><td>");
        if let Some(new) = &rotation.new_certificate_id {
            body.raw("<a href=\"/certificates/")
                .text(new.as_str())
                .raw("\"><code>")
                .text(&new.as_str()[..12])
                .raw("…</code></a>");
        }
        body.raw("</td><td class=\"state\">")
            .text(rotation.state.as_str())
            .raw("</td><td>")
            .number(rotation.attempts)
            .raw("</td><td>")
            .text(rotation.error.as_deref().unwrap_or(""))
            .raw("</td><td>");
        if rotation.state == RotationState::Failed {
            action_button(
                &mut body,
                &session,
                &action,
                &[("rotation", &rotation.id)],
                &format!("retry-{}", rotation.id),
                "Retry",
            );
        }
        body.raw("</td></tr>");
    }
    body.raw("</tbody></table>");
    signed_in_page(&session, "Rotation campaign", body)
}

pub(crate) async fn retry(State(console): State<Arc<Console>>, Path(id): Path<String>, request: Request) -> Response {
    let (session, fields, path) = match state_change(&console, request).await {
        Ok(change) => change,
        Err(response) => return response,
    };
    let rotation = fields.get("rotation").unwrap_or("").to_owned();
    if !valid_rotation_id(&id) || !valid_rotation_id(&rotation) {
        return bad_input(&console, Some(&session), "a campaign or rotation ID is letters, digits and dashes");
    }
    let back = format!("/rotations/{id}");
    if fields.get("confirm") != Some("yes") {
        let mut body = Html::default();
        body.raw("<p>Retry rotation <code>")
            .text(&rotation)
            .raw("</code>? It goes back to requested and the device is asked for a CSR again.</p>");
        return confirm_page(&session, body, &path, &[("rotation", &rotation)], &back);
    }
    let services = console.services.clone();
    let owner = caller(&session);
    let target = rotation.clone();
    let retried = blocking(move || {
        let found = services.describe_rotation(&owner, &target)?;
        if found.campaign_id != id {
            return Err(certfleet_services::Error::NotFound(format!("no rotation {target} in this campaign")));
        }
        services.retry_rotation(&owner, &target)
    })
    .await;
    if let Err(error) = retried {
        return error_page(Some(&session), error);
    }
    console.counters.status_changes.fetch_add(1, Ordering::Relaxed);
    tracing::info!(account = %session.account, access_key_id = %session.access_key_id, rotation, "console: rotation retried");
    redirect(&format!("{back}?changed=1"))
}

// ---- endpoints ----------------------------------------------------------------------------------

pub(crate) fn migration_summary(text: Option<&str>) -> String {
    match text.map(|text| (text, Migration::parse(text))) {
        None => "none".to_owned(),
        Some((_, Some(migration))) => match (&migration.reverted_at, &migration.revert_reason) {
            (Some(at), reason) => {
                format!("reverted {} ({})", when(*at), reason.as_deref().unwrap_or("no reason given"))
            }
            (None, _) => format!("started {}", when(migration.started_at)),
        },
        Some((_, None)) => "unreadable".to_owned(),
    }
}

pub(crate) async fn endpoints(State(console): State<Arc<Console>>, request: Request) -> Response {
    let session = match require_session(&console, &request).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let services = console.services.clone();
    let owner = caller(&session);
    let (configurations, _) = match blocking(move || services.list_domain_configurations(&owner, None, 250)).await {
        Ok(found) => found,
        Err(error) => return error_page(Some(&session), error),
    };
    let mut body = Html::default();
    body.raw("<table id=\"endpoints\"><thead><tr><th>Configuration</th><th>Domain</th><th>Status</th><th>TLS policy</th><th>Serving</th><th>Migration</th></tr></thead><tbody>");
    for configuration in &configurations {
        body.raw("<tr><td><a class=\"endpoint-link\" href=\"/endpoints/")
            .text(&url_component(&configuration.name))
            .raw("\">")
            .text(&configuration.name)
            .raw("</a></td><td>")
            .text(&configuration.domain_name)
            .raw("</td><td>")
            .text(configuration.status.as_str())
            .raw("</td><td>")
            .text(&configuration.security_policy)
            .raw("</td><td>")
            .raw(if configuration.serving_next { "next chain" } else { "current chain" })
            .raw("</td><td>")
            .text(&migration_summary(configuration.migration.as_deref()))
            .raw("</td></tr>");
    }
    body.raw("</tbody></table>");
    signed_in_page(&session, "Endpoints", body)
}

fn chain_label(ids: &[String]) -> String {
    if ids.is_empty() { "built-in".to_owned() } else { ids.join(" + ") }
}

pub(crate) async fn endpoint(
    State(console): State<Arc<Console>>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    let session = match require_session(&console, &request).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    if !valid_configuration_name(&name) {
        return bad_input(&console, Some(&session), "a configuration name is letters, digits and _ . - :");
    }
    let services = console.services.clone();
    let owner = caller(&session);
    let wanted = name.clone();
    let found = blocking(move || {
        let configuration = services.describe_domain_configuration(&owner, &wanted)?;
        let (certificates, _) = services.list_server_certificates(&owner, None, MAX_CHOICES)?;
        Ok((configuration, certificates))
    })
    .await;
    let (configuration, certificates) = match found {
        Ok(found) => found,
        Err(error) => return error_page(Some(&session), error),
    };
    let report = console.endpoint_report(&caller(&session), &name).unwrap_or_default();
    let mut body = Html::default();
    notice(&mut body, request.uri().query());
    body.raw("<dl class=\"fields\"><dt>Configuration</dt><dd id=\"endpoint-name\">")
        .text(&configuration.name)
        .raw("</dd><dt>Domain</dt><dd>")
        .text(&configuration.domain_name)
        .raw("</dd><dt>Status</dt><dd>")
        .text(configuration.status.as_str())
        .raw("</dd><dt>TLS policy</dt><dd>")
        .text(&configuration.security_policy)
        .raw("</dd><dt>Current chain</dt><dd><code>")
        .text(&chain_label(&configuration.current_chain))
        .raw("</code></dd><dt>Next chain</dt><dd><code>")
        .text(
            if configuration.next_chain.is_empty() { "none".into() } else { chain_label(&configuration.next_chain) }
                .as_str(),
        )
        .raw("</code></dd><dt>Serving</dt><dd id=\"endpoint-serving\" data-live=\"serving\" data-live-source=\"/api/endpoints/")
        .text(&url_component(&configuration.name))
        .raw("\">")
        .raw(if configuration.serving_next { "next chain" } else { "current chain" })
        .raw("</dd><dt>Migration</dt><dd id=\"endpoint-migration\">")
        .text(&migration_summary(configuration.migration.as_deref()))
        .raw("</dd></dl>");
    body.raw("<h2>Chains (every node)</h2><table id=\"chains\"><thead><tr><th>Chain</th><th>Serving</th><th>Connected</th><th>Handshakes completed</th><th>Handshakes failed</th></tr></thead><tbody>");
    for chain in &report.chains {
        body.raw("<tr><td><code>")
            .text(&chain.chain)
            .raw("</code></td><td>")
            .raw(if chain.serving { "yes" } else { "no" })
            .raw("</td><td>")
            .number(chain.connected)
            .raw("</td><td>")
            .number(chain.handshakes_completed)
            .raw("</td><td>");
        for (alert, count) in &chain.handshakes_failed {
            body.text(alert).raw(" ").number(count).raw(" ");
        }
        body.raw("</td></tr>");
    }
    body.raw("</tbody></table><h2>Who came back</h2>");
    let csv = format!("/endpoints/{}/devices.csv", url_component(&configuration.name));
    let live = drain_numbers(report.drain.as_ref());
    body.raw("<p id=\"drain\">Drained <b data-live=\"closed\">")
        .text(&live.closed)
        .raw("</b> of <b data-live=\"sessions\">")
        .text(&live.sessions)
        .raw("</b> sessions; <b id=\"came-back-count\" data-live=\"came_back\">")
        .text(&live.came_back)
        .raw("</b> came back on the new chain, <b id=\"not-back-count\" data-live=\"not_back\">")
        .text(&live.not_back)
        .raw("</b> not (yet). These refresh by themselves; reload for the lists.</p>");
    match &report.drain {
        Some(drain) => {
            body.raw("<p>Drain to <code>").text(&drain.to_chain).raw("</code>.");
            if let Some(reason) = &drain.guard_tripped {
                body.raw(" The guard reverted the migration: ").text(reason).raw(".");
            }
            body.raw("</p><p><a id=\"csv-not-back\" href=\"")
                .text(&csv)
                .raw("?which=not_back\">Not back (CSV)</a> · <a id=\"csv-came-back\" href=\"")
                .text(&csv)
                .raw("?which=came_back\">Came back (CSV)</a></p><ul id=\"not-back\">");
            for client in drain.not_back.iter().take(100) {
                body.raw("<li>").text(client).raw("</li>");
            }
            body.raw("</ul>");
        }
        None => {
            body.raw("<p id=\"no-drain\">No migration or revert has drained sessions since the nodes started.</p>");
        }
    }
    body.raw("<h2>Actions</h2><div class=\"actions\">");
    let action = format!("/endpoints/{}/migration", url_component(&configuration.name));
    if configuration.serving_next {
        action_button(&mut body, &session, &action, &[("action", "revert")], "endpoint-revert", "Revert");
        action_button(&mut body, &session, &action, &[("action", "finish")], "endpoint-finish", "Finish");
    } else if !configuration.next_chain.is_empty() {
        action_button(&mut body, &session, &action, &[("action", "migrate")], "endpoint-migrate", "Migrate");
    } else {
        body.raw("<p class=\"hint\">Stage a next chain first (below), then migrate to it (docs/endpoints.md).</p>");
    }
    body.raw("</div>");
    stage_section(&mut body, &session, &configuration, &certificates);
    signed_in_page(&session, "Endpoint", body)
}

/// The most server certificates offered for a next chain (the account's first, by ID).
const MAX_CHOICES: u32 = 100;

/// Staging the next chain: one server certificate of the account, and optionally a second of
/// the other key type (a chain serves an ECDSA and an RSA leaf side by side); clearing it.
fn stage_section(
    body: &mut Html,
    session: &Session,
    configuration: &certfleet_registry::DomainConfiguration,
    certificates: &[certfleet_services::ServerCertificateDescription],
) {
    body.raw("<h2>Stage the next chain</h2>");
    if configuration.serving_next {
        body.raw("<p class=\"hint\" id=\"stage-serving\">The next chain is being served: finish or revert the migration before staging another.</p>");
        return;
    }
    let action = format!("/endpoints/{}/next-chain", url_component(&configuration.name));
    if certificates.is_empty() {
        body.raw("<p class=\"hint\" id=\"stage-none\">This account has no server certificate to stage: import one first (<code>aws acm import-certificate</code>).</p>");
    } else {
        let options = |body: &mut Html, empty: Option<&str>| {
            if let Some(label) = empty {
                body.raw("<option value=\"\">").text(label).raw("</option>");
            }
            for described in certificates {
                let record = &described.record;
                let current = configuration.current_chain.contains(&record.id);
                body.raw("<option value=\"")
                    .text(&record.id)
                    .raw("\">")
                    .text(&record.domain_name)
                    .raw(" · ")
                    .text(&record.key_algorithm)
                    .raw(" · until ")
                    .text(&when(record.not_after))
                    .raw(" · ")
                    .text(&record.id)
                    .raw(if current { " (current chain)" } else { "" })
                    .raw("</option>");
            }
        };
        body.raw("<form method=\"post\" class=\"search\" id=\"stage-next\" action=\"").text(&action).raw("\">");
        hidden(body, "csrf", &session.csrf);
        body.raw("<label>Server certificate <select name=\"certificate\" id=\"next-certificate\" required>");
        options(body, None);
        body.raw("</select></label><label>A second, of the other key type (optional) <select name=\"second\" id=\"next-second\">");
        options(body, Some("none"));
        body.raw("</select></label><button type=\"submit\" id=\"stage-next-submit\">Stage as the next chain…</button></form>");
        body.raw("<p class=\"hint\">Staging changes no handshake: devices get the next chain only once it is migrated to. Stage a chain whose root the devices already trust.</p>");
    }
    if !configuration.next_chain.is_empty() {
        action_button(body, session, &action, &[("clear", "yes")], "next-clear", "Clear the next chain");
    }
}

/// A server certificate ID as the console takes it: ACM's IDs (a UUID, or the ID of an ARN
/// given at import: letters, digits and dashes).
fn valid_server_certificate_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 256 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// What a staging form asks: the certificate IDs of the next chain (none: clear it).
fn staged_ids(fields: &Fields) -> Result<Vec<String>, &'static str> {
    const TAKEN: [&str; 5] = ["csrf", "certificate", "second", "clear", "confirm"];
    if fields.names().any(|name| !TAKEN.contains(&name)) {
        return Err("the form has a field staging does not take");
    }
    let ids: Vec<String> =
        ["certificate", "second"].into_iter().filter_map(|field| fields.get(field)).map(str::to_owned).collect();
    match fields.get("clear") {
        Some("yes") if ids.is_empty() => return Ok(Vec::new()),
        Some(_) => return Err("a form clears the next chain or stages one, not both"),
        None => {}
    }
    if ids.iter().any(|id| !valid_server_certificate_id(id)) {
        return Err("a server certificate ID is letters, digits and dashes");
    }
    match &ids[..] {
        [] => Err("choose a server certificate to stage"),
        [first, second] if first == second => Err("a chain's two certificates are different ones"),
        _ => Ok(ids),
    }
}

/// Stages the next chain of a configuration (or clears it): the first post shows what will be
/// staged (and warns of a certificate not naming the configuration's domain), the confirmed
/// one stores it as the API's next-chain call does. Nothing changes for devices until migrate.
pub(crate) async fn stage_next_chain(
    State(console): State<Arc<Console>>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    let (session, fields, path) = match state_change(&console, request).await {
        Ok(change) => change,
        Err(response) => return response,
    };
    if !valid_configuration_name(&name) {
        return bad_input(&console, Some(&session), "a configuration name is letters, digits and _ . - :");
    }
    let ids = match staged_ids(&fields) {
        Ok(ids) => ids,
        Err(why) => return bad_input(&console, Some(&session), why),
    };
    let back = format!("/endpoints/{}", url_component(&name));
    let owner = caller(&session);
    let arns: Vec<String> = ids.iter().map(|id| console.services.server_certificate_arn(&owner.account, id)).collect();
    if fields.get("confirm") != Some("yes") {
        // Both found in this account before anything is asked (another account's is not found).
        let services = console.services.clone();
        let (asked, wanted, staged) = (owner.clone(), name.clone(), arns.clone());
        let found = blocking(move || {
            let configuration = services.describe_domain_configuration(&asked, &wanted)?;
            let described = staged
                .iter()
                .map(|arn| services.describe_server_certificate(&asked, arn))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((configuration, described))
        })
        .await;
        let (configuration, described) = match found {
            Ok(found) => found,
            Err(error) => return error_page(Some(&session), error),
        };
        let mut body = Html::default();
        if described.is_empty() {
            body.raw("<p>").text(&name).raw(": clear the next chain? Nothing is staged for a migration then.</p>");
            return confirm_page(&session, body, &path, &[("clear", "yes")], &back);
        }
        body.raw("<p>").text(&name).raw(": stage this as the next chain? New handshakes keep the current chain until you migrate.</p><ul id=\"staged\">");
        for certificate in &described {
            body.raw("<li><code>")
                .text(&certificate.record.id)
                .raw("</code> ")
                .text(&certificate.record.domain_name)
                .raw(" · ")
                .text(&certificate.record.key_algorithm)
                .raw(" · until ")
                .text(&when(certificate.record.not_after));
            if !certificate.certificate.names_host(&configuration.domain_name) {
                body.raw(" <b class=\"error\">does not name ")
                    .text(&configuration.domain_name)
                    .raw(": devices checking the name will refuse it</b>");
            }
            body.raw("</li>");
        }
        body.raw("</ul>");
        let mut kept: Vec<(&str, &str)> = vec![("certificate", ids[0].as_str())];
        if let Some(second) = ids.get(1) {
            kept.push(("second", second.as_str()));
        }
        return confirm_page(&session, body, &path, &kept, &back);
    }
    let services = console.services.clone();
    let target = name.clone();
    if let Err(error) = blocking(move || services.set_next_chain(&owner, &target, &arns)).await {
        return error_page(Some(&session), error);
    }
    console.counters.status_changes.fetch_add(1, Ordering::Relaxed);
    tracing::info!(account = %session.account, access_key_id = %session.access_key_id, configuration = name, next_chain = ?ids, "console: next chain staged");
    redirect(&format!("{back}?changed=1"))
}

/// The drain's numbers as shown (`-` before any drain on this node).
struct DrainNumbers {
    closed: String,
    sessions: String,
    came_back: String,
    not_back: String,
}

fn drain_numbers(drain: Option<&certfleet_services::DrainReport>) -> DrainNumbers {
    match drain {
        Some(drain) => DrainNumbers {
            closed: drain.closed.to_string(),
            sessions: drain.sessions.to_string(),
            came_back: drain.came_back.len().to_string(),
            not_back: drain.not_back.len().to_string(),
        },
        None => DrainNumbers { closed: "-".into(), sessions: "-".into(), came_back: "-".into(), not_back: "-".into() },
    }
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

fn signed_out() -> Response {
    json_response(StatusCode::UNAUTHORIZED, serde_json::json!({ "error": "signed out" }))
}

/// A campaign's progress for the page's script: `{closed, total, states}`.
pub(crate) async fn live_campaign(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let Ok(session) = require_session(&console, &request).await else { return signed_out() };
    if !valid_rotation_id(&id) {
        return json_response(StatusCode::BAD_REQUEST, serde_json::json!({ "error": "bad campaign ID" }));
    }
    let services = console.services.clone();
    let owner = caller(&session);
    match blocking(move || services.describe_rotation_campaign(&owner, &id)).await {
        Ok(summary) => {
            let (closed, total) = closed_of(&summary.counts);
            json_response(
                StatusCode::OK,
                serde_json::json!({ "closed": closed, "total": total, "states": states_text(&summary.counts) }),
            )
        }
        Err(_) => json_response(StatusCode::NOT_FOUND, serde_json::json!({ "error": "not found" })),
    }
}

/// A configuration's migration for the page's script: `{serving, closed, sessions, came_back, not_back}`.
pub(crate) async fn live_endpoint(
    State(console): State<Arc<Console>>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    let Ok(session) = require_session(&console, &request).await else { return signed_out() };
    if !valid_configuration_name(&name) {
        return json_response(StatusCode::BAD_REQUEST, serde_json::json!({ "error": "bad name" }));
    }
    let services = console.services.clone();
    let owner = caller(&session);
    let wanted = name.clone();
    let configuration = match blocking(move || services.describe_domain_configuration(&owner, &wanted)).await {
        Ok(configuration) => configuration,
        Err(_) => return json_response(StatusCode::NOT_FOUND, serde_json::json!({ "error": "not found" })),
    };
    let drain = console.endpoint_report(&caller(&session), &name).and_then(|report| report.drain);
    let numbers = drain_numbers(drain.as_ref());
    json_response(
        StatusCode::OK,
        serde_json::json!({
            "serving": if configuration.serving_next { "next chain" } else { "current chain" },
            "closed": numbers.closed,
            "sessions": numbers.sessions,
            "came_back": numbers.came_back,
            "not_back": numbers.not_back,
        }),
    )
}

/// A CSV field: quoted, quotes doubled, and a leading `= + - @` (or tab, CR) defused with an
/// apostrophe so a spreadsheet never runs a client ID as a formula.
fn csv_field(value: &str) -> String {
    let defused =
        if value.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{value}") } else { value.to_owned() };
    format!("\"{}\"", defused.replace('"', "\"\""))
}

pub(crate) async fn devices_csv(
    State(console): State<Arc<Console>>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    let session = match require_session(&console, &request).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    if !valid_configuration_name(&name) {
        return bad_input(&console, Some(&session), "a configuration name is letters, digits and _ . - :");
    }
    let which = match request.uri().query() {
        Some("which=not_back") => "not_back",
        Some("which=came_back") => "came_back",
        _ => return bad_input(&console, Some(&session), "which is not_back or came_back"),
    };
    let services = console.services.clone();
    let owner = caller(&session);
    let wanted = name.clone();
    if let Err(error) = blocking(move || services.describe_domain_configuration(&owner, &wanted)).await {
        return error_page(Some(&session), error);
    }
    let drain = console.endpoint_report(&caller(&session), &name).and_then(|report| report.drain);
    let mut text = String::from("client_id,state,migration_id,to_chain\r\n");
    if let Some(drain) = &drain {
        let clients = if which == "not_back" { &drain.not_back } else { &drain.came_back };
        for client in clients {
            text.push_str(&format!(
                "{},{},{},{}\r\n",
                csv_field(client),
                which,
                csv_field(&drain.migration_id),
                csv_field(&drain.to_chain)
            ));
        }
    }
    let filename = format!("{}-{which}.csv", name.replace(':', "_"));
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{filename}\"")),
        ],
        text,
    )
        .into_response()
}

pub(crate) async fn migration(
    State(console): State<Arc<Console>>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    let (session, fields, path) = match state_change(&console, request).await {
        Ok(change) => change,
        Err(response) => return response,
    };
    if !valid_configuration_name(&name) {
        return bad_input(&console, Some(&session), "a configuration name is letters, digits and _ . - :");
    }
    let action = fields.get("action").unwrap_or("").to_owned();
    let question = match action.as_str() {
        "migrate" => {
            "Serve the next chain? Sessions on the current chain are drained (50 a second per node) and devices reconnect on the new one."
        }
        "revert" => "Go back to the current chain? Sessions on the next chain are drained.",
        "finish" => "Make the next chain the current one? The migration ends; reverting is no longer possible.",
        _ => return bad_input(&console, Some(&session), "an action is migrate, revert or finish"),
    };
    let back = format!("/endpoints/{}", url_component(&name));
    if fields.get("confirm") != Some("yes") {
        let mut body = Html::default();
        body.raw("<p>").text(&name).raw(": ").text(question).raw("</p>");
        return confirm_page(&session, body, &path, &[("action", &action)], &back);
    }
    let services = console.services.clone();
    let owner = caller(&session);
    let target = name.clone();
    let kind = action.clone();
    let done = blocking(move || match kind.as_str() {
        "migrate" => services.migrate_domain_configuration(&owner, &target, MigrationSettings::default()),
        "revert" => {
            services.revert_domain_configuration(&owner.account, &target, "reverted by an operator in the console")
        }
        _ => services.finish_migration(&owner, &target),
    })
    .await;
    if let Err(error) = done {
        return error_page(Some(&session), error);
    }
    console.counters.status_changes.fetch_add(1, Ordering::Relaxed);
    tracing::info!(account = %session.account, access_key_id = %session.access_key_id, configuration = name, action, "console: migration changed");
    redirect(&format!("{back}?changed=1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_defused() {
        for (value, expected) in [
            ("sensor-1", "\"sensor-1\""),
            ("a\"b", "\"a\"\"b\""),
            ("=HYPERLINK(\"x\")", "\"'=HYPERLINK(\"\"x\"\")\""),
            ("+1", "\"'+1\""),
            ("-1", "\"'-1\""),
            ("@SUM(A1)", "\"'@SUM(A1)\""),
            ("a,b", "\"a,b\""),
        ] {
            assert_eq!(csv_field(value), expected, "{value}");
        }
    }

    #[test]
    fn names_and_markers_are_validated() {
        for (name, ok) in [("iot:Data-ATS", true), ("fleet-eu_1.a", true), ("", false), ("a/b", false), ("a b", false)]
        {
            assert_eq!(valid_configuration_name(name), ok, "{name}");
        }
        assert!(!valid_configuration_name(&"a".repeat(129)));
        assert!(valid_rotation_id("3f2a-9c"));
        assert!(!valid_rotation_id("../x"));
        let id = "cd".repeat(32);
        assert_eq!(parse_ca_cursor(&format!("17.{id}")), Some(Cursor { created_at_ms: 17, id: id.clone() }));
        assert_eq!(parse_ca_cursor("x.y"), None);
        assert_eq!(parse_ca_cursor(&format!("x.{id}")), None);
    }

    #[test]
    fn staging_forms_are_validated() {
        for (form, expected) in [
            ("csrf=x&certificate=4f1c-9a", Ok(vec!["4f1c-9a"])),
            ("csrf=x&certificate=a&second=b&confirm=yes", Ok(vec!["a", "b"])),
            ("csrf=x&certificate=a&second=", Ok(vec!["a"])),
            ("csrf=x&clear=yes", Ok(vec![])),
            ("csrf=x&clear=yes&certificate=a", Err("not both")),
            ("csrf=x&clear=no", Err("not both")),
            ("csrf=x", Err("choose a server certificate")),
            ("csrf=x&second=a", Ok(vec!["a"])),
            ("csrf=x&certificate=a&second=a", Err("different ones")),
            ("csrf=x&certificate=../x", Err("letters, digits and dashes")),
            ("csrf=x&certificate=%3Cb%3E", Err("letters, digits and dashes")),
            ("csrf=x&certificate=a&action=migrate", Err("does not take")),
        ] {
            let outcome = staged_ids(&Fields::parse(form).unwrap());
            match (outcome, expected) {
                (Ok(ids), Ok(expected)) => assert_eq!(ids, expected, "{form}"),
                (Err(why), Err(words)) => assert!(why.contains(words), "{form}: {why}"),
                (outcome, expected) => panic!("{form}: {outcome:?} instead of {expected:?}"),
            }
        }
        assert!(!valid_server_certificate_id(&"a".repeat(257)));
    }

    #[test]
    fn migrations_are_summarised_from_their_stored_form() {
        assert_eq!(migration_summary(None), "none");
        assert_eq!(migration_summary(Some("{")), "unreadable");
        let started = r#"{"id":"m1","drainPerSecond":50.0,"startedAt":1800000000000}"#;
        assert!(migration_summary(Some(started)).starts_with("started 2027-01-15"));
        let reverted = r#"{"id":"m2","drainPerSecond":50.0,"startedAt":1800000000000,"revertedAt":1800000060000,"revertReason":"guard"}"#;
        assert!(migration_summary(Some(reverted)).ends_with("(guard)"));
    }
}
