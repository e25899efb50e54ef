//! The console's routes: sign-in and sign-out, the fleet overview, the certificate search and a
//! certificate's page with its status actions, the live JSON the script polls, and the two
//! assets. Every page is answered with the security headers (CSP with scripts and styles from
//! this origin only, no framing, no caching) under the request timeout; every state change
//! needs the session's CSRF token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use certfleet_pki::CertificateId;
use certfleet_registry::{
    AuditFindingFilter, AuditResourceId, CaFilter, CertificateSearch, CertificateStatus, KeyPageRequest, SearchAfter,
};
use certfleet_services::{Caller, EXPIRY_WINDOWS_DAYS};
use http::{HeaderMap, HeaderValue, StatusCode, header};

use crate::Console;
use crate::guard::{Refusal, clip};
use crate::html::{self, Fields, Html, MAX_FORM_BYTES, url_component, when};
use crate::session::{Session, same_secret};

const SESSION_COOKIE: &str = "cf_session";
const SIGN_IN_COOKIE: &str = "cf_signin";
const CSS: &str = include_str!("../assets/console.css");
const JS: &str = include_str!("../assets/console.js");
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The peer of the connection a request came on (set by the listener).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// The console's routes over `console`.
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/signin", get(sign_in_page).post(sign_in))
        .route("/signout", post(sign_out))
        .route("/overview", get(overview))
        .route("/certificates", get(certificates))
        .route("/certificates/{id}", get(certificate))
        .route("/certificates/{id}/status", post(change_status))
        .route("/api/live", get(live))
        .route("/api/rotations/{id}", get(crate::fleet_pages::live_campaign))
        .route("/api/endpoints/{name}", get(crate::fleet_pages::live_endpoint))
        .route("/cas", get(crate::fleet_pages::cas))
        .route("/cas/{id}", get(crate::fleet_pages::ca))
        .route("/cas/{id}/update", post(crate::fleet_pages::update_ca))
        .route("/rotations", get(crate::fleet_pages::campaigns))
        .route("/rotations/start", post(crate::fleet_pages::start_rotation))
        .route("/rotations/{id}", get(crate::fleet_pages::campaign))
        .route("/rotations/{id}/retry", post(crate::fleet_pages::retry))
        .route("/audits", get(crate::audit_pages::audits))
        .route("/audits/start", post(crate::audit_pages::start_audit))
        .route("/audits/configuration", post(crate::audit_pages::save_configuration))
        .route("/audits/{id}", get(crate::audit_pages::audit_task))
        .route("/endpoints", get(crate::fleet_pages::endpoints))
        .route("/endpoints/{name}", get(crate::fleet_pages::endpoint))
        .route("/endpoints/{name}/devices.csv", get(crate::fleet_pages::devices_csv))
        .route("/endpoints/{name}/migration", post(crate::fleet_pages::migration))
        .route("/endpoints/{name}/next-chain", post(crate::fleet_pages::stage_next_chain))
        .route("/assets/console.css", get(|| async { asset("text/css; charset=utf-8", CSS) }))
        .route("/assets/console.js", get(|| async { asset("text/javascript; charset=utf-8", JS) }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n").into_response() })
        .layer(axum::middleware::from_fn_with_state(console.clone(), guard_request))
        .with_state(console)
}

/// Every request: counted, bounded in time, answered with the security headers.
async fn guard_request(State(console): State<Arc<Console>>, request: Request, next: Next) -> Response {
    console.counters.requests.fetch_add(1, Ordering::Relaxed);
    let path = request.uri().path().to_owned();
    let is_asset = path.starts_with("/assets/");
    let host = request.headers().get(header::HOST).and_then(|value| value.to_str().ok());
    let mut response = if !crate::guard::host_allowed(host, &console.config.host_names) {
        console.refusals.refuse(Refusal::UnknownHost, &format!("host {:?} {path}", host.unwrap_or("")));
        (StatusCode::MISDIRECTED_REQUEST, "this console does not answer for that host name\n").into_response()
    } else {
        match tokio::time::timeout(console.config.request_timeout, next.run(request)).await {
            Ok(response) => response,
            Err(_) => {
                console.refusals.refuse(Refusal::TimedOut, &path);
                (StatusCode::SERVICE_UNAVAILABLE, "the request took too long\n").into_response()
            }
        }
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    if console.config.secure_cookies {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    }
    let cache = if is_asset { "private, max-age=300" } else { "no-store" };
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

pub(crate) fn html_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

pub(crate) fn redirect(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(location) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Runs a services call on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, certfleet_services::Error> + Send + 'static,
) -> Result<T, certfleet_services::Error> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|_| Err(certfleet_services::Error::Internal("the console's query was cancelled".into())))
}

/// The page for a services error: 404 for what the account does not hold, 400 with the
/// refusal for a rule it broke, 500 (logged, nothing said) for the rest.
pub(crate) fn error_page(session: Option<&Session>, error: certfleet_services::Error) -> Response {
    use certfleet_services::Error;
    let (status, message) = match &error {
        Error::NotFound(_) | Error::RuleNotFound(_) => (StatusCode::NOT_FOUND, "Not found in this account.".to_owned()),
        Error::LimitExceeded(_) => (StatusCode::TOO_MANY_REQUESTS, error.to_string()),
        // A rule of the operation refused it: say which (the text names the account's own
        // resources only).
        Error::InvalidRequest(_)
        | Error::Validation(_)
        | Error::InvalidArn(_)
        | Error::InUse(_)
        | Error::CertificateState(_)
        | Error::CertificateValidation(_)
        | Error::RegistrationCodeValidation(_)
        | Error::CertificateConflict(_)
        | Error::DeleteConflict(_)
        | Error::TransferConflict(_)
        | Error::TransferAlreadyCompleted(_)
        | Error::MalformedPolicy(_)
        | Error::VersionsLimitExceeded(_)
        | Error::VersionConflict(_)
        | Error::SqlParse(_)
        | Error::InvalidParameters(_)
        | Error::ResourceRegistrationFailure(_)
        | Error::ConflictingResourceUpdate(_)
        | Error::TemplateNotUsable { .. }
        | Error::AlreadyExists { .. } => (StatusCode::BAD_REQUEST, error.to_string()),
        Error::AccountGone(_) | Error::Registry(_) | Error::Internal(_) => {
            tracing::warn!(%error, "console: a query failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "The registry could not answer; try again.".to_owned())
        }
    };
    let mut body = Html::default();
    body.raw("<p class=\"error\">").text(&message).raw("</p>");
    let signed_in = session.map(|s| (s.account.as_str(), s.csrf.as_str()));
    html_response(status, html::page("Error", signed_in, &body.into_string()))
}

pub(crate) fn bad_input(console: &Console, session: Option<&Session>, why: &str) -> Response {
    console.refusals.refuse(Refusal::BadInput, why);
    let mut body = Html::default();
    body.raw("<p class=\"error\">The request was refused: ").text(why).raw(".</p>");
    let signed_in = session.map(|s| (s.account.as_str(), s.csrf.as_str()));
    html_response(StatusCode::BAD_REQUEST, html::page("Refused", signed_in, &body.into_string()))
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|value| value.to_str().ok()).find_map(|line| {
        line.split(';')
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, v)| v.to_owned())
    })
}

fn set_cookie(console: &Console, name: &str, value: &str, max_age: u64) -> HeaderValue {
    let secure = if console.config.secure_cookies { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"))
        .unwrap_or_else(|_| HeaderValue::from_static("cf_invalid=1"))
}

/// The request's live session: its cookie names one, and the access key that opened it still
/// exists in the same account (a deleted key or account ends its sessions).
async fn session_of(console: &Console, headers: &HeaderMap) -> Option<Session> {
    let id = cookie(headers, SESSION_COOKIE)?;
    let session = console.sessions.lock().ok()?.find(&id, Instant::now())?;
    let services = console.services.clone();
    let key_id = session.access_key_id.clone();
    let key = blocking(move || services.find_access_key(&key_id)).await.ok()?;
    match key {
        Some(key) if key.account == session.account => Some(session),
        _ => {
            if let Ok(mut sessions) = console.sessions.lock() {
                sessions.close_key(&session.access_key_id);
            }
            None
        }
    }
}

/// The session, or the answer for a request without one: a redirect to the sign-in page.
pub(crate) fn require_session<'a>(
    console: &'a Console,
    request: &Request,
) -> impl Future<Output = Result<Session, Response>> + Send + 'a {
    let path = request.uri().path().to_owned();
    let headers = request.headers().clone();
    async move { session_or_redirect(console, &headers, &path).await }
}

async fn session_or_redirect(console: &Console, headers: &HeaderMap, path: &str) -> Result<Session, Response> {
    match session_of(console, headers).await {
        Some(session) => Ok(session),
        None => {
            console.refusals.refuse(Refusal::NoSession, path);
            Err(redirect("/signin"))
        }
    }
}

pub(crate) fn caller(session: &Session) -> Caller {
    Caller { account: session.account.clone() }
}

/// The form body of a POST, at most [`MAX_FORM_BYTES`].
pub(crate) async fn form(request: Request) -> Result<(HeaderMap, Fields), String> {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES).await.map_err(|_| "a form larger than 4 KiB".to_owned())?;
    let text = std::str::from_utf8(&bytes).map_err(|_| "a form that is not UTF-8".to_owned())?;
    let fields = Fields::parse(text).map_err(|error| format!("a form {error}"))?;
    Ok((parts.headers, fields))
}

/// Whether a state change carries the session's CSRF token (form field `csrf` or header
/// `X-CSRF-Token`), compared in constant time.
pub(crate) fn csrf_holds(session: &Session, headers: &HeaderMap, fields: &Fields) -> bool {
    let sent = fields
        .get("csrf")
        .map(str::to_owned)
        .or_else(|| headers.get("x-csrf-token").and_then(|value| value.to_str().ok()).map(str::to_owned));
    sent.is_some_and(|token| same_secret(&token, &session.csrf))
}

/// The preamble of every state change, in one place so that no handler can forget a step: a
/// live session, its form (bounded), and the session's CSRF token in it. Answers the session,
/// the form's fields and the request's path, or the response that refuses the request.
pub(crate) async fn state_change(console: &Console, request: Request) -> Result<(Session, Fields, String), Response> {
    let session = require_session(console, &request).await?;
    let path = request.uri().path().to_owned();
    let (headers, fields) = form(request).await.map_err(|why| bad_input(console, Some(&session), &why))?;
    if !csrf_holds(&session, &headers, &fields) {
        return Err(csrf_refused(console, &session, &path));
    }
    Ok((session, fields, path))
}

pub(crate) fn csrf_refused(console: &Console, session: &Session, path: &str) -> Response {
    console.refusals.refuse(Refusal::CsrfMismatch, &format!("account {} {path}", session.account));
    let mut body = Html::default();
    body.raw(
        "<p class=\"error\">Refused: the form did not carry this session's token. Reload the page and try again.</p>",
    );
    html_response(
        StatusCode::FORBIDDEN,
        html::page("Refused", Some((session.account.as_str(), &session.csrf)), &body.into_string()),
    )
}

// ---- sign-in ------------------------------------------------------------------------------------

async fn root(State(console): State<Arc<Console>>, request: Request) -> Response {
    match session_of(&console, request.headers()).await {
        Some(_) => redirect("/overview"),
        None => redirect("/signin"),
    }
}

/// The sign-in form, with a fresh token in a cookie and in the form (login CSRF: a form
/// posted from elsewhere has no matching cookie).
async fn sign_in_page(State(console): State<Arc<Console>>) -> Response {
    sign_in_form(&console, StatusCode::OK, None)
}

fn sign_in_form(console: &Console, status: StatusCode, message: Option<&str>) -> Response {
    let Some(token) = crate::session::random_token() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no randomness\n").into_response();
    };
    let mut body = Html::default();
    if let Some(message) = message {
        body.raw("<p class=\"error\" id=\"sign-in-error\">").text(message).raw("</p>");
    }
    body.raw("<form method=\"post\" action=\"/signin\" class=\"sign-in\">")
        .raw("<input type=\"hidden\" name=\"token\" value=\"")
        .text(&token)
        .raw("\"><label>Access key ID <input name=\"access_key_id\" id=\"access-key-id\" autocomplete=\"username\" maxlength=\"128\" required></label>")
        .raw("<label>Secret access key <input name=\"secret_access_key\" id=\"secret-access-key\" type=\"password\" autocomplete=\"current-password\" maxlength=\"128\" required></label>")
        .raw("<button type=\"submit\" id=\"sign-in\">Sign in</button></form>")
        .raw("<p class=\"hint\">Use an access key of the account, as in <code>certfleet account keys create</code> or the <code>credentials</code> file.</p>");
    let mut response = html_response(status, html::page("Sign in", None, &body.into_string()));
    response.headers_mut().append(header::SET_COOKIE, set_cookie(console, SIGN_IN_COOKIE, &token, 600));
    response
}

async fn sign_in(
    State(console): State<Arc<Console>>,
    axum::Extension(Peer(peer)): axum::Extension<Peer>,
    request: Request,
) -> Response {
    let now = Instant::now();
    let refused = |refusal: Refusal, detail: String, message: &str| {
        console.refusals.refuse(refusal, &format!("peer {} {detail}", peer.ip()));
        if refusal.is_failed_sign_in()
            && let Ok(mut limiter) = console.sign_in.lock()
        {
            limiter.failed(peer.ip(), now);
        }
        let status = match refusal {
            Refusal::ThrottledPeer | Refusal::ThrottledGlobal => StatusCode::TOO_MANY_REQUESTS,
            Refusal::SessionsFull => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        };
        sign_in_form(&console, status, Some(message))
    };
    let throttled = console.sign_in.lock().map(|mut limiter| limiter.check(peer.ip(), now)).unwrap_or(Ok(()));
    if let Err(refusal) = throttled {
        return refused(refusal, String::new(), "Too many failed sign-ins. Wait a minute and try again.");
    }
    let (headers, fields) = match form(request).await {
        Ok(form) => form,
        Err(why) => return refused(Refusal::MalformedSignIn, why, "The sign-in form was not valid."),
    };
    let token_holds = match (cookie(&headers, SIGN_IN_COOKIE), fields.get("token")) {
        (Some(cookie), Some(sent)) => same_secret(&cookie, sent),
        _ => false,
    };
    if !token_holds {
        return refused(Refusal::SignInTokenMismatch, String::new(), "The sign-in page expired. Try again.");
    }
    let (Some(key_id), Some(secret)) = (fields.get("access_key_id"), fields.get("secret_access_key")) else {
        return refused(Refusal::MalformedSignIn, "missing field".into(), "Give an access key ID and its secret.");
    };
    if key_id.len() > 128 || !key_id.bytes().all(|b| b.is_ascii_alphanumeric()) || secret.len() > 128 {
        return refused(
            Refusal::MalformedSignIn,
            format!("access key {}", clip(key_id)),
            "The access key ID or secret is wrong.",
        );
    }
    let services = console.services.clone();
    let lookup_id = key_id.to_owned();
    let key = match blocking(move || services.find_access_key(&lookup_id)).await {
        Ok(key) => key,
        Err(error) => {
            tracing::warn!(%error, "console: access key lookup failed");
            return sign_in_form(
                &console,
                StatusCode::SERVICE_UNAVAILABLE,
                Some("The registry could not answer; try again."),
            );
        }
    };
    let Some(key) = key else {
        // Compare anyway, so an unknown key costs what a wrong secret costs.
        let _ = same_secret(secret, "");
        return refused(
            Refusal::UnknownAccessKey,
            format!("access key {key_id}"),
            "The access key ID or secret is wrong.",
        );
    };
    if !same_secret(secret, &key.secret_access_key) {
        return refused(Refusal::WrongSecret, format!("access key {key_id}"), "The access key ID or secret is wrong.");
    }
    let opened = console.sessions.lock().map(|mut sessions| {
        let lifetime = sessions.lifetime();
        sessions.open(&key.account, &key.access_key_id, now).map(|opened| (opened, lifetime))
    });
    let ((id, _csrf, opened), lifetime) = match opened {
        Ok(Ok(opened)) => opened,
        _ => return refused(Refusal::SessionsFull, String::new(), "Too many console sessions are open; try later."),
    };
    if opened.evicted_oldest_of_account {
        console.counters.sessions_evicted.fetch_add(1, Ordering::Relaxed);
    }
    console.counters.sign_ins.fetch_add(1, Ordering::Relaxed);
    tracing::info!(account = %key.account, access_key_id = %key.access_key_id, peer = %peer.ip(), "console sign-in");
    let mut response = redirect("/overview");
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, set_cookie(&console, SESSION_COOKIE, &id, lifetime.as_secs()));
    headers.append(header::SET_COOKIE, set_cookie(&console, SIGN_IN_COOKIE, "", 0));
    response
}

async fn sign_out(State(console): State<Arc<Console>>, request: Request) -> Response {
    let session = match require_session(&console, &request).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let (headers, fields) = match form(request).await {
        Ok(form) => form,
        Err(why) => return bad_input(&console, Some(&session), &why),
    };
    if !csrf_holds(&session, &headers, &fields) {
        return csrf_refused(&console, &session, "/signout");
    }
    if let (Some(id), Ok(mut sessions)) = (cookie(&headers, SESSION_COOKIE), console.sessions.lock()) {
        sessions.close(&id);
    }
    console.counters.sign_outs.fetch_add(1, Ordering::Relaxed);
    tracing::info!(account = %session.account, access_key_id = %session.access_key_id, "console sign-out");
    let mut response = redirect("/signin");
    response.headers_mut().append(header::SET_COOKIE, set_cookie(&console, SESSION_COOKIE, "", 0));
    response
}

// ---- overview -----------------------------------------------------------------------------------

async fn overview(State(console): State<Arc<Console>>, request: Request) -> Response {
    let session = match require_session(&console, &request).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let caller = caller(&session);
    let fleet = match console.overview(&caller).await {
        Ok(fleet) => fleet,
        Err(error) => return error_page(Some(&session), error),
    };
    let connected = console.connected_clients(&caller).len();
    let refused = console.recent_refusals(&caller);
    let services = console.services.clone();
    let owner = caller.clone();
    let campaigns = blocking(move || services.open_rotation_campaigns(&owner, 20)).await;
    let services = console.services.clone();
    let owner = caller.clone();
    let configurations = blocking(move || services.list_domain_configurations(&owner, None, 250)).await;

    let mut body = Html::default();
    body.raw("<section class=\"cards\">");
    card(&mut body, "certificates", "Certificates", fleet.total);
    for (status, count) in &fleet.by_status {
        card(&mut body, &format!("status-{}", status.to_ascii_lowercase()), status, *count);
    }
    for (days, count) in EXPIRY_WINDOWS_DAYS.iter().zip(fleet.expiring) {
        card(&mut body, &format!("expiring-{days}"), &format!("Expiring within {days} days"), count);
    }
    card(&mut body, "expired", "Expired, still ACTIVE", fleet.expired_active);
    body.raw("<div class=\"card\"><span class=\"label\">Devices connected now</span><span class=\"value\" id=\"connected-count\" data-live=\"connected\">")
        .number(connected)
        .raw("</span></div><div class=\"card\"><span class=\"label\">Devices refused, last hour</span><span class=\"value\" id=\"refused-count\" data-live=\"refused\">")
        .number(refused.iter().map(|(_, count)| count).sum::<u64>())
        .raw("</span></div></section>");
    body.raw("<p class=\"hint\">Counts as of ")
        .text(&when(fleet.computed_at))
        .raw(" (computed at most once every 15 seconds per account; the connected and refused counts are live). Expiring and timeline count ACTIVE certificates only.</p>");
    body.raw("<h2>Expiry timeline</h2><p class=\"hint\">ACTIVE certificates by week of notAfter for the next year, stacked by issuing CA; the first bar is those already expired.</p>")
        .raw(&crate::svg::timeline(&fleet));

    body.raw("<h2>Why devices were refused (last hour, every node)</h2>");
    if refused.is_empty() {
        body.raw("<p id=\"no-refusals\">No device of this account was refused in the last hour.</p>");
    } else {
        body.raw("<table id=\"refusals\"><thead><tr><th>Reason</th><th>Devices refused</th></tr></thead><tbody>");
        for (reason, count) in &refused {
            body.raw("<tr><td class=\"reason\">")
                .text(reason)
                .raw("</td><td class=\"count\">")
                .number(count)
                .raw("</td></tr>");
        }
        body.raw("</tbody></table><p class=\"hint\">Reasons as in docs/gateway.md: Revoked, Inactive, Unregistered, Expired, NoClientCert, ...</p>");
    }
    body.raw("<h2>Rotation campaigns in progress</h2>");
    match campaigns {
        Ok(campaigns) if campaigns.is_empty() => {
            body.raw("<p id=\"no-campaigns\">No rotation campaign has a rotation open.</p>");
        }
        Ok(campaigns) => {
            body.raw("<table id=\"campaigns\"><thead><tr><th>Campaign</th><th>Progress</th><th>By state</th></tr></thead><tbody>");
            for campaign in campaigns {
                let (total, closed) = campaign.progress();
                body.raw("<tr><td><a href=\"/rotations/")
                    .text(&campaign.id)
                    .raw("\"><code>")
                    .text(&campaign.id)
                    .raw("</code></a></td><td><progress max=\"");
                body.number(total.max(1)).raw("\" value=\"").number(closed).raw("\"></progress> ");
                body.number(closed).raw(" / ").number(total).raw("</td><td>");
                for (state, count) in &campaign.counts {
                    body.text(state.as_str()).raw(" ").number(count).raw(" ");
                }
                body.raw("</td></tr>");
            }
            body.raw("</tbody></table>");
        }
        Err(error) => {
            tracing::warn!(%error, "console: listing campaigns failed");
            body.raw("<p class=\"error\">Campaigns could not be read.</p>");
        }
    }

    body.raw("<h2>Root migrations</h2>");
    match configurations {
        Ok((configurations, _)) => {
            let migrating: Vec<_> = configurations
                .into_iter()
                .filter(|c| c.migration.is_some() || c.serving_next || !c.next_chain.is_empty())
                .collect();
            if migrating.is_empty() {
                body.raw("<p id=\"no-migrations\">No domain configuration has a next chain or a migration.</p>");
            } else {
                body.raw("<table id=\"migrations\"><thead><tr><th>Configuration</th><th>Serving</th><th>Migration</th><th>Came back</th><th>Not back</th></tr></thead><tbody>");
                for configuration in migrating {
                    let report = console.endpoint_report(&caller, &configuration.name);
                    let drain = report.and_then(|report| report.drain);
                    body.raw("<tr><td><a href=\"/endpoints/")
                        .text(&url_component(&configuration.name))
                        .raw("\">")
                        .text(&configuration.name)
                        .raw("</a></td><td>");
                    body.raw(if configuration.serving_next { "next chain" } else { "current chain" });
                    body.raw("</td><td>")
                        .text(&crate::fleet_pages::migration_summary(configuration.migration.as_deref()))
                        .raw("</td><td>");
                    match &drain {
                        Some(drain) => {
                            body.number(drain.came_back.len()).raw("</td><td>").number(drain.not_back.len());
                        }
                        None => {
                            body.raw("-</td><td>-");
                        }
                    }
                    body.raw("</td></tr>");
                }
                body.raw("</tbody></table>");
            }
        }
        Err(error) => {
            tracing::warn!(%error, "console: listing domain configurations failed");
            body.raw("<p class=\"error\">Domain configurations could not be read.</p>");
        }
    }
    html_response(
        StatusCode::OK,
        html::page("Fleet overview", Some((session.account.as_str(), &session.csrf)), &body.into_string()),
    )
}

pub(crate) fn card(body: &mut Html, id: &str, label: &str, value: u64) {
    body.raw("<div class=\"card\"><span class=\"label\">")
        .text(label)
        .raw("</span><span class=\"value\" id=\"")
        .text(id)
        .raw("\">")
        .number(value)
        .raw("</span></div>");
}

/// `{"connected": n}` for the overview's script (polled every few seconds).
async fn live(State(console): State<Arc<Console>>, request: Request) -> Response {
    let Some(session) = session_of(&console, request.headers()).await else {
        console.refusals.refuse(Refusal::NoSession, "/api/live");
        return (StatusCode::UNAUTHORIZED, [(header::CONTENT_TYPE, "application/json")], "{\"error\":\"signed out\"}")
            .into_response();
    };
    let owner = caller(&session);
    let connected = console.connected_clients(&owner).len();
    let refused: u64 = console.recent_refusals(&owner).iter().map(|(_, count)| count).sum();
    let body = serde_json::json!({
        "connected": connected,
        "refused": refused,
        "at": console.services.now().unix_timestamp(),
    });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

// ---- certificates -------------------------------------------------------------------------------

/// The search a query string asks for, validated.
pub(crate) fn parse_search(query: &str) -> Result<(CertificateSearch, Fields), String> {
    let fields = Fields::parse(query).map_err(|error| format!("a query {error}"))?;
    let mut search = CertificateSearch { limit: 50, ..Default::default() };
    if let Some(id) = fields.get("id") {
        let id = id.to_ascii_lowercase();
        if id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("a certificate ID prefix must be hexadecimal, at most 64 digits".into());
        }
        search.id_prefix = Some(id);
    }
    if let Some(cn) = fields.get("cn") {
        if cn.chars().count() > 128 || cn.chars().any(char::is_control) {
            return Err("a common name prefix is at most 128 characters, without control characters".into());
        }
        search.cn_prefix = Some(cn.to_owned());
    }
    if let Some(thing) = fields.get("thing") {
        if thing.chars().count() > 128 || thing.chars().any(char::is_control) {
            return Err("a thing name prefix is at most 128 characters, without control characters".into());
        }
        search.thing_prefix = Some(thing.to_owned());
    }
    if let Some(status) = fields.get("status") {
        search.status = Some(CertificateStatus::parse(status).ok_or("an unknown status")?);
    }
    if let Some(ca) = fields.get("ca") {
        search.ca = Some(if ca == "none" {
            CaFilter::None
        } else {
            CaFilter::Ca(CertificateId::parse(&ca.to_ascii_lowercase()).map_err(|_| "a CA is 64 hex digits, or none")?)
        });
    }
    if let Some(before) = fields.get("before") {
        let format = time::macros::format_description!("[year]-[month]-[day]");
        let date = time::Date::parse(before, &format).map_err(|_| "a date is YYYY-MM-DD")?;
        search.expiring_before = Some(date.midnight().assume_utc());
    }
    if let Some(limit) = fields.get("limit") {
        search.limit = match limit {
            "25" => 25,
            "50" => 50,
            "100" => 100,
            _ => return Err("a page size is 25, 50 or 100".into()),
        };
    }
    if let Some(after) = fields.get("after") {
        search.after = Some(parse_marker(after).ok_or("an invalid page marker")?);
    }
    Ok((search, fields))
}

/// A page marker in a URL: `i.<id>`, `c.<hex of the CN>.<id>` or `e.<millis>.<id>`.
fn marker(after: &SearchAfter) -> String {
    match after {
        SearchAfter::Id(id) => format!("i.{id}"),
        SearchAfter::CommonName(cn, id) => format!("c.{}.{id}", hex::encode(cn)),
        SearchAfter::Expiry(at, id) => format!("e.{at}.{id}"),
    }
}

fn parse_marker(text: &str) -> Option<SearchAfter> {
    let valid_id = |id: &str| CertificateId::parse(id).is_ok().then(|| id.to_owned());
    let (kind, rest) = text.split_once('.')?;
    match kind {
        "i" => Some(SearchAfter::Id(valid_id(rest)?)),
        "c" => {
            let (cn, id) = rest.split_once('.')?;
            let cn = String::from_utf8(hex::decode(cn).ok()?).ok()?;
            (cn.chars().count() <= 256).then_some(())?;
            Some(SearchAfter::CommonName(cn, valid_id(id)?))
        }
        "e" => {
            let (at, id) = rest.split_once('.')?;
            Some(SearchAfter::Expiry(at.parse().ok()?, valid_id(id)?))
        }
        _ => None,
    }
}

async fn certificates(State(console): State<Arc<Console>>, request: Request) -> Response {
    let session = match require_session(&console, &request).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let query = request.uri().query().unwrap_or("").to_owned();
    let (search, fields) = match parse_search(&query) {
        Ok(parsed) => parsed,
        Err(why) => return bad_input(&console, Some(&session), &why),
    };
    let Some(_slot) = console.queries.enter(&session.account) else {
        console.refusals.refuse(Refusal::Busy, &format!("account {} search", session.account));
        return error_page(
            Some(&session),
            certfleet_services::Error::LimitExceeded("this account's queries are busy; try again in a moment".into()),
        );
    };
    let services = console.services.clone();
    let owner = caller(&session);
    let asked = search.clone();
    let started = Instant::now();
    let (rows, next) = match blocking(move || services.search_certificates(&owner, &asked)).await {
        Ok(found) => found,
        Err(error) => return error_page(Some(&session), error),
    };
    let elapsed = started.elapsed();
    let value = |name: &str| fields.get(name).unwrap_or("").to_owned();
    let mut body = Html::default();
    body.raw("<form method=\"get\" action=\"/certificates\" class=\"search\" id=\"search\">")
        .raw("<label>ID prefix <input name=\"id\" id=\"search-id\" maxlength=\"64\" value=\"")
        .text(&value("id"))
        .raw("\"></label><label>Subject CN prefix <input name=\"cn\" id=\"search-cn\" maxlength=\"128\" value=\"")
        .text(&value("cn"))
        .raw("\"></label><label>Thing name prefix <input name=\"thing\" id=\"search-thing\" maxlength=\"128\" value=\"")
        .text(&value("thing"))
        .raw("\"></label><label>Status <select name=\"status\" id=\"search-status\"><option value=\"\">any</option>");
    for status in ["ACTIVE", "INACTIVE", "REVOKED", "PENDING_TRANSFER", "REGISTER_INACTIVE", "PENDING_ACTIVATION"] {
        body.raw("<option");
        if fields.get("status") == Some(status) {
            body.raw(" selected");
        }
        body.raw(">").text(status).raw("</option>");
    }
    body.raw("</select></label><label>CA (ID or <code>none</code>) <input name=\"ca\" maxlength=\"64\" value=\"")
        .text(&value("ca"))
        .raw("\"></label><label>Expiring before <input type=\"date\" name=\"before\" value=\"")
        .text(&value("before"))
        .raw("\"></label><button type=\"submit\" id=\"search-submit\">Search</button></form>");
    body.raw("<p class=\"hint\">")
        .number(rows.len())
        .raw(" shown, found in ")
        .number(elapsed.as_millis())
        .raw(" ms.</p>");
    body.raw("<table id=\"certificates\"><thead><tr><th>Certificate ID</th><th>Subject CN</th><th>Status</th><th>CA</th><th>Not after</th></tr></thead><tbody>");
    for row in &rows {
        body.raw("<tr><td><a class=\"certificate-link\" href=\"/certificates/")
            .text(row.id.as_str())
            .raw("\"><code>")
            .text(&row.id.as_str()[..16])
            .raw("…</code></a></td><td class=\"cn\">")
            .text(row.subject_cn.as_deref().unwrap_or(""))
            .raw("</td><td class=\"status\">")
            .text(row.status.as_str())
            .raw("</td><td><code>")
            .text(&crate::svg::ca_label(row.ca.as_ref()))
            .raw("</code></td><td>")
            .text(&when(row.not_after))
            .raw("</td></tr>");
    }
    body.raw("</tbody></table>");
    if !rows.is_empty() {
        // Rotate what this search finds (its ACTIVE certificates, at most 1,000), confirmed.
        body.raw("<form method=\"post\" action=\"/rotations/start\" class=\"inline\" id=\"rotate-found\">");
        body.raw("<input type=\"hidden\" name=\"csrf\" value=\"").text(&session.csrf).raw("\">");
        for name in ["id", "cn", "thing", "ca", "before"] {
            if let Some(value) = fields.get(name) {
                body.raw("<input type=\"hidden\" name=\"").text(name).raw("\" value=\"").text(value).raw("\">");
            }
        }
        body.raw(
            "<button type=\"submit\" id=\"rotate-found-submit\">Rotate the ACTIVE certificates found…</button></form>",
        );
    }
    if let Some(next) = next {
        let mut link = String::from("/certificates?");
        for name in ["id", "cn", "thing", "status", "ca", "before", "limit"] {
            if let Some(value) = fields.get(name) {
                link.push_str(&format!("{name}={}&", url_component(value)));
            }
        }
        link.push_str(&format!("after={}", url_component(&marker(&next))));
        body.raw("<p><a id=\"next-page\" href=\"").text(&link).raw("\">Next page</a></p>");
    }
    html_response(
        StatusCode::OK,
        html::page("Certificates", Some((session.account.as_str(), &session.csrf)), &body.into_string()),
    )
}

fn sha_hex(algorithm: &'static aws_lc_rs::digest::Algorithm, der: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(algorithm, der).as_ref())
}

async fn certificate(State(console): State<Arc<Console>>, Path(id): Path<String>, request: Request) -> Response {
    let session = match require_session(&console, &request).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let Ok(id) = CertificateId::parse(&id) else {
        return bad_input(&console, Some(&session), "a certificate ID is 64 hex digits");
    };
    let changed = request.uri().query() == Some("changed=1");
    let caller = caller(&session);
    let services = console.services.clone();
    let (owner, wanted) = (caller.clone(), id.clone());
    let details = blocking(move || {
        let certificate = services.describe_certificate(&owner, &wanted)?;
        let arn = services.certificate_arn(&owner.account, &wanted);
        let first = KeyPageRequest { limit: 50, after: None };
        let policies = services.list_attached_policies(&owner, &arn, false, &first)?.items;
        let things = services.list_principal_things(&owner, &arn, None, &first)?.items;
        let since = services.now() - time::Duration::days(31);
        let mut history = services.connection_history(&owner.account, Some(&wanted), since)?;
        history.sort_by_key(|record| std::cmp::Reverse(record.connected_at));
        history.truncate(20);
        let rotations = services.certificate_rotations(&owner, &wanted, 20)?;
        let filter = AuditFindingFilter {
            task_id: None,
            check_name: None,
            resource: Some(AuditResourceId::DeviceCertificate(wanted.clone())),
            start: Some(services.now() - time::Duration::days(90)),
            end: Some(services.now()),
            include_suppressed: true,
        };
        let findings = services.list_audit_findings(&owner, &filter, None, 20)?.items;
        Ok((certificate, policies, things, history, rotations, findings))
    })
    .await;
    let (record, policies, things, history, rotations, findings) = match details {
        Ok(details) => details,
        Err(error) => return error_page(Some(&session), error),
    };
    let live: Vec<_> =
        console.connected_clients(&caller).into_iter().filter(|client| client.certificate_id == id).collect();
    let parsed = certfleet_pki::Certificate::from_pem(&record.pem).ok();
    let mut body = Html::default();
    if changed {
        body.raw("<p class=\"notice\" id=\"changed\">Status changed to ").text(record.status.as_str()).raw(".</p>");
    }
    body.raw("<dl class=\"fields\"><dt>Certificate ID</dt><dd><code id=\"certificate-id\">")
        .text(id.as_str())
        .raw("</code></dd>");
    body.raw("<dt>Status</dt><dd id=\"certificate-status\">").text(record.status.as_str()).raw("</dd>");
    if let Some(parsed) = &parsed {
        for (label, value) in [
            ("Subject", parsed.subject_string()),
            ("Issuer", parsed.issuer_string()),
            ("Serial", parsed.serial_hex()),
            ("Not before", when(parsed.not_before())),
            ("Not after", when(parsed.not_after())),
            ("Key", parsed.public_key().kind().to_string()),
            ("SHA-1 thumbprint", sha_hex(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, parsed.der())),
            ("SHA-256 thumbprint", sha_hex(&aws_lc_rs::digest::SHA256, parsed.der())),
        ] {
            body.raw("<dt>").text(label).raw("</dt><dd>").text(&value).raw("</dd>");
        }
    }
    body.raw("<dt>CA</dt><dd><code>")
        .text(&crate::svg::ca_label(record.ca_certificate_id.as_ref()))
        .raw("</code></dd>");
    body.raw("<dt>Mode</dt><dd>").text(record.mode.as_str()).raw("</dd>");
    body.raw("<dt>Registered</dt><dd>").text(&when(record.created_at)).raw("</dd></dl>");

    body.raw("<h2>Status</h2><div class=\"actions\">");
    for (status, label) in [("ACTIVE", "Activate"), ("INACTIVE", "Deactivate"), ("REVOKED", "Revoke")] {
        if record.status.as_str() == status {
            continue;
        }
        body.raw("<form method=\"post\" class=\"inline\" action=\"/certificates/")
            .text(id.as_str())
            .raw("/status\"><input type=\"hidden\" name=\"csrf\" value=\"")
            .text(&session.csrf)
            .raw("\"><input type=\"hidden\" name=\"status\" value=\"")
            .text(status)
            .raw("\"><button type=\"submit\" id=\"action-")
            .text(&status.to_ascii_lowercase())
            .raw("\">")
            .text(label)
            .raw("…</button></form>");
    }
    body.raw("</div>");

    body.raw("<h2>Attached policies</h2><ul id=\"policies\">");
    for policy in &policies {
        body.raw("<li>").text(policy.name.as_str()).raw("</li>");
    }
    body.raw("</ul><h2>Things</h2><ul id=\"things\">");
    for thing in &things {
        body.raw("<li>").text(thing.thing_name.as_str()).raw(" (").text(thing.principal_type.as_str()).raw(")</li>");
    }
    body.raw("</ul><h2>Connected now</h2><table id=\"live-sessions\"><thead><tr><th>Client ID</th><th>Since</th><th>Endpoint</th><th>Chain</th><th>TLS</th><th>SNI</th><th>Peer</th></tr></thead><tbody>");
    for client in &live {
        body.raw("<tr><td>")
            .text(client.client_id.as_deref().unwrap_or("(connecting)"))
            .raw("</td><td>")
            .text(&when(client.connected_at))
            .raw("</td><td>")
            .text(client.endpoint.as_deref().unwrap_or("-"))
            .raw("</td><td><code>")
            .text(client.chain.as_deref().unwrap_or("-"))
            .raw("</code></td><td>")
            .text(&client.tls_version)
            .raw("</td><td>")
            .text(client.sni.as_deref().unwrap_or("-"))
            .raw("</td><td>")
            .text(&client.peer)
            .raw("</td></tr>");
    }
    body.raw("</tbody></table><h2>Connection history (31 days, newest 20)</h2><table id=\"history\"><thead><tr><th>Client ID</th><th>Connected</th><th>Disconnected</th><th>Reason</th><th>Endpoint</th><th>Chain</th><th>TLS</th></tr></thead><tbody>");
    // Sessions recorded before the history kept how they came show `-` there.
    for record in &history {
        body.raw("<tr><td>")
            .text(&record.client_id)
            .raw("</td><td>")
            .text(&when(record.connected_at))
            .raw("</td><td>")
            .text(&record.disconnected_at.map(when).unwrap_or_else(|| "-".into()))
            .raw("</td><td>")
            .text(record.disconnect_reason.as_deref().unwrap_or("-"))
            .raw("</td><td class=\"endpoint\">")
            .text(record.via.endpoint().unwrap_or("-"))
            .raw("</td><td class=\"chain\"><code>")
            .text(record.via.chain().unwrap_or("-"))
            .raw("</code></td><td class=\"tls\">")
            .text(record.via.tls_version().unwrap_or("-"))
            .raw("</td></tr>");
    }
    body.raw("</tbody></table><h2>Rotations</h2><table id=\"rotations\"><thead><tr><th>Rotation</th><th>Client ID</th><th>State</th><th>Attempts</th><th>Error</th></tr></thead><tbody>");
    for rotation in &rotations {
        body.raw("<tr><td><code>")
            .text(&rotation.id)
            .raw("</code></td><td>")
            .text(&rotation.client_id)
            .raw("</td><td>")
            .text(rotation.state.as_str())
            .raw("</td><td>")
            .number(rotation.attempts)
            .raw("</td><td>")
            .text(rotation.error.as_deref().unwrap_or("-"))
            .raw("</td></tr>");
    }
    body.raw("</tbody></table><h2>Audit findings (90 days)</h2><table id=\"findings\"><thead><tr><th>Check</th><th>Found</th><th>Severity</th><th>Reason</th></tr></thead><tbody>");
    for finding in &findings {
        body.raw("<tr><td>")
            .text(&finding.check_name)
            .raw("</td><td>")
            .text(&when(finding.found_at))
            .raw("</td><td>")
            .text(finding.severity.as_str())
            .raw("</td><td>")
            .text(&finding.reason)
            .raw("</td></tr>");
    }
    body.raw("</tbody></table>");
    html_response(
        StatusCode::OK,
        html::page("Certificate", Some((session.account.as_str(), &session.csrf)), &body.into_string()),
    )
}

/// A status action: the first post asks to confirm (a page with the same form and
/// `confirm=yes`); the confirmed one changes the status through the services.
async fn change_status(State(console): State<Arc<Console>>, Path(id): Path<String>, request: Request) -> Response {
    let (session, fields, _) = match state_change(&console, request).await {
        Ok(change) => change,
        Err(response) => return response,
    };
    let Ok(id) = CertificateId::parse(&id) else {
        return bad_input(&console, Some(&session), "a certificate ID is 64 hex digits");
    };
    let status = match fields.get("status").and_then(CertificateStatus::parse) {
        Some(status @ (CertificateStatus::Active | CertificateStatus::Inactive | CertificateStatus::Revoked)) => status,
        _ => return bad_input(&console, Some(&session), "a status is ACTIVE, INACTIVE or REVOKED"),
    };
    if fields.get("confirm") != Some("yes") {
        let mut body = Html::default();
        body.raw("<p>Change certificate <code>")
            .text(id.as_str())
            .raw("</code> to <b>")
            .text(status.as_str())
            .raw("</b>?");
        if status == CertificateStatus::Revoked {
            body.raw(" Its devices are disconnected at once, and a revoked certificate cannot be activated again.");
        }
        body.raw("</p><form method=\"post\" action=\"/certificates/")
            .text(id.as_str())
            .raw("/status\"><input type=\"hidden\" name=\"csrf\" value=\"")
            .text(&session.csrf)
            .raw("\"><input type=\"hidden\" name=\"status\" value=\"")
            .text(status.as_str())
            .raw("\"><input type=\"hidden\" name=\"confirm\" value=\"yes\"><button type=\"submit\" id=\"confirm\">Confirm</button> <a href=\"/certificates/")
            .text(id.as_str())
            .raw("\" id=\"cancel\">Cancel</a></form>");
        return html_response(
            StatusCode::OK,
            html::page("Confirm", Some((session.account.as_str(), &session.csrf)), &body.into_string()),
        );
    }
    let services = console.services.clone();
    let owner = caller(&session);
    let target = id.clone();
    if let Err(error) = blocking(move || services.update_certificate(&owner, &target, status)).await {
        return error_page(Some(&session), error);
    }
    console.counters.status_changes.fetch_add(1, Ordering::Relaxed);
    console.forget_overview(&session.account);
    tracing::info!(account = %session.account, access_key_id = %session.access_key_id, cert = %id, status = status.as_str(), "console: certificate status changed");
    redirect(&format!("/certificates/{}?changed=1", id.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn searches_are_validated() {
        for (query, ok) in [
            ("", true),
            ("id=ABCdef01", true),
            ("id=xyz", false),
            (&format!("id={}", "a".repeat(65)), false),
            ("cn=sensor-1&status=ACTIVE&limit=100", true),
            ("status=BOGUS", false),
            ("limit=1000000", false),
            ("ca=none", true),
            ("ca=12", false),
            ("before=2027-01-31", true),
            ("before=31/01/2027", false),
            ("cn=%00", false),
            ("after=i.zz", false),
            ("id=a&id=b", false),
            ("thing=pump-", true),
            ("thing=%07", false),
        ] {
            assert_eq!(parse_search(query).is_ok(), ok, "{query}");
        }
        let (search, _) = parse_search("id=ABCdef01&before=2027-01-31").unwrap();
        assert_eq!(search.id_prefix.as_deref(), Some("abcdef01"));
        assert_eq!(search.limit, 50);
        assert_eq!(search.order(), certfleet_registry::CertificateOrder::Expiry);
    }

    #[test]
    fn page_markers_round_trip() {
        let id = "ab".repeat(32);
        for after in [
            SearchAfter::Id(id.clone()),
            SearchAfter::CommonName("sensor <1> & \"x\"".into(), id.clone()),
            SearchAfter::Expiry(1_800_000_000_000, id.clone()),
        ] {
            assert_eq!(parse_marker(&marker(&after)), Some(after));
        }
        for bad in ["", "i", "x.1", "c.zz.ab", "e.notanumber.ab", "i.short"] {
            assert_eq!(parse_marker(bad), None, "{bad}");
        }
    }

    fn session() -> Session {
        let mut sessions = crate::session::Sessions::new(crate::session::SessionLimits::default());
        let (id, _, _) = sessions
            .open(&certfleet_registry::AccountId::parse("111111111111").unwrap(), "AKIA1", Instant::now())
            .unwrap();
        sessions.find(&id, Instant::now()).unwrap()
    }

    #[test]
    fn a_state_change_needs_this_sessions_token_in_the_form_or_the_header() {
        let session = session();
        let other = self::session();
        let headers_with = |token: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("x-csrf-token", HeaderValue::from_str(token).unwrap());
            headers
        };
        let form = |text: &str| Fields::parse(text).unwrap();
        let none = HeaderMap::new();
        let token = session.csrf.clone();
        for (headers, fields, holds) in [
            (&none, form(&format!("csrf={token}&status=REVOKED")), true),
            (&headers_with(&token), form("status=REVOKED"), true),
            (&none, form("status=REVOKED"), false),
            (&none, form("csrf=&status=REVOKED"), false),
            (&none, form(&format!("csrf={}", other.csrf)), false),
            (&headers_with(&other.csrf), form("status=REVOKED"), false),
            (&none, form(&format!("csrf={}", &token[..63])), false),
            (&none, form(&format!("csrf={}", token.to_uppercase())), false),
        ] {
            assert_eq!(csrf_holds(&session, headers, &fields), holds, "{fields:?} {headers:?}");
        }
    }

    #[tokio::test]
    async fn forms_are_read_up_to_four_kib() {
        let request =
            |body: String| Request::builder().method("POST").uri("/x").body(axum::body::Body::from(body)).unwrap();
        let (_, fields) = form(request("csrf=abc&status=ACTIVE".into())).await.unwrap();
        assert_eq!(fields.get("status"), Some("ACTIVE"));
        assert!(form(request("a".repeat(MAX_FORM_BYTES + 1))).await.is_err());
        assert!(form(request("a=1&a=2".into())).await.is_err());
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("other=1; cf_session_x=2"));
        headers.append(header::COOKIE, HeaderValue::from_static("cf_session=abc"));
        assert_eq!(cookie(&headers, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&headers, SIGN_IN_COOKIE), None);
    }
}
