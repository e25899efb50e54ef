//! The console's handlers driven through its router, as a browser would (a session cookie, the
//! Host header, form posts), over a testkit registry: what each page shows, what each action
//! changes, and what an attacker's requests (another session's or no CSRF token, another
//! account's resource) change: nothing.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use certfleet_registry::{AccountId, ConnectionRecord, ConnectionVia};
use certfleet_services::{Caller, ConnectionEvent};
use certfleet_testkit::{START, World};
use http::{Request, StatusCode, header};
use tower::ServiceExt;

use crate::{Config, Console};

/// A console over a fresh registry.
pub(crate) struct Rig {
    pub world: World,
    pub console: Arc<Console>,
    router: Router,
}

/// A signed-in operator of one account: the session cookie and its CSRF token.
pub(crate) struct Operator {
    pub caller: Caller,
    cookie: String,
    pub csrf: String,
}

/// An answer: status, `Location` (for a redirect) and body.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub location: Option<String>,
    pub body: String,
}

impl Rig {
    pub fn new() -> Rig {
        let world = certfleet_testkit::world();
        let console = Console::new(world.services.clone(), None, Config { secure_cookies: false, ..Config::default() });
        Rig { router: crate::pages::router(console.clone()), world, console }
    }

    /// A new account with an access key, and a console session opened with it.
    pub fn operator(&self) -> Operator {
        let caller = self.world.caller();
        let key = self.world.services.create_access_key(&caller.account).unwrap();
        let (id, csrf, _) =
            self.console.sessions.lock().unwrap().open(&caller.account, &key.access_key_id, Instant::now()).unwrap();
        Operator { caller, cookie: format!("cf_session={id}"), csrf }
    }

    async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let location =
            response.headers().get(header::LOCATION).and_then(|value| value.to_str().ok()).map(str::to_owned);
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        Answer { status, location, body: String::from_utf8_lossy(&bytes).into_owned() }
    }

    pub async fn get(&self, who: &Operator, path: &str) -> Answer {
        let request = Request::get(path)
            .header(header::HOST, "localhost")
            .header(header::COOKIE, &who.cookie)
            .body(Body::empty())
            .unwrap();
        self.send(request).await
    }

    /// Posts `form` as is (the caller adds `csrf=` or leaves it out).
    pub async fn post(&self, who: &Operator, path: &str, form: &str) -> Answer {
        let request = Request::post(path)
            .header(header::HOST, "localhost")
            .header(header::COOKIE, &who.cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form.to_owned()))
            .unwrap();
        self.send(request).await
    }
}

/// The text of the first `<tr>` of the table `id` whose text holds `needle`, tags removed.
pub(crate) fn row_text(body: &str, table_id: &str, needle: &str) -> Option<String> {
    let table = body.split(&format!("<table id=\"{table_id}\"")).nth(1)?.split("</table>").next()?;
    table.split("<tr>").skip(1).map(strip_tags).find(|row| row.contains(needle))
}

fn strip_tags(markup: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in markup.chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ---- the connection history ---------------------------------------------------------------------

fn connection(
    account: &AccountId,
    certificate: &certfleet_pki::CertificateId,
    session: &str,
    via: ConnectionVia,
) -> ConnectionEvent {
    ConnectionEvent::Connected(ConnectionRecord {
        session_id: session.into(),
        account: account.clone(),
        certificate_id: certificate.clone(),
        client_id: format!("client-{session}"),
        connected_at: START,
        disconnected_at: None,
        disconnect_reason: None,
        via,
    })
}

#[tokio::test]
async fn the_history_shows_how_each_connection_came_and_a_dash_for_older_rows() {
    let rig = Rig::new();
    let alice = rig.operator();
    let services = &rig.world.services;
    let certificate = services.create_keys_and_certificate(&alice.caller, true).unwrap().certificate.id;
    services
        .record_connection_events(&[
            connection(
                &alice.caller.account,
                &certificate,
                "new",
                ConnectionVia::new(Some("iot:Data-ATS"), Some("builtin"), Some("TLSv1.3")),
            ),
            connection(&alice.caller.account, &certificate, "old", ConnectionVia::default()),
            connection(
                &alice.caller.account,
                &certificate,
                "hostile",
                ConnectionVia::new(Some("<script>x</script>"), Some("a+b"), Some("TLSv1.2")),
            ),
        ])
        .unwrap();
    let page = rig.get(&alice, &format!("/certificates/{certificate}")).await;
    assert_eq!(page.status, StatusCode::OK);
    for (session, expected) in [
        ("new", "iot:Data-ATS builtin TLSv1.3"),
        ("old", "- - -"),
        ("hostile", "&lt;script&gt;x&lt;/script&gt; a+b TLSv1.2"),
    ] {
        let row = row_text(&page.body, "history", &format!("client-{session}")).expect(session);
        assert!(row.ends_with(expected), "{session}: {row}");
    }
    assert!(!page.body.contains("<script>x"));

    // Another account's operator sees neither the certificate nor its history.
    let mallory = rig.operator();
    let page = rig.get(&mallory, &format!("/certificates/{certificate}")).await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert!(!page.body.contains("client-new"));
}

// ---- a certificate's status -----------------------------------------------------------------------

#[tokio::test]
async fn a_status_change_needs_this_sessions_token_and_a_certificate_of_this_account() {
    let rig = Rig::new();
    let (alice, mallory) = (rig.operator(), rig.operator());
    let services = &rig.world.services;
    let certificate = services.create_keys_and_certificate(&alice.caller, true).unwrap().certificate.id;
    let path = format!("/certificates/{certificate}/status");
    let status = || services.describe_certificate(&alice.caller, &certificate).unwrap().status.as_str();
    for (who, form, expected) in [
        (&alice, "status=REVOKED&confirm=yes".to_owned(), StatusCode::FORBIDDEN),
        (&alice, format!("status=REVOKED&confirm=yes&csrf={}", mallory.csrf), StatusCode::FORBIDDEN),
        // Mallory's own session and token, Alice's certificate: not found, nothing changed.
        (&mallory, format!("status=REVOKED&confirm=yes&csrf={}", mallory.csrf), StatusCode::NOT_FOUND),
    ] {
        assert_eq!(rig.post(who, &path, &form).await.status, expected, "{form}");
        assert_eq!(status(), "ACTIVE");
    }
    let done = rig.post(&alice, &path, &format!("status=INACTIVE&confirm=yes&csrf={}", alice.csrf)).await;
    assert_eq!(
        (done.status, done.location),
        (StatusCode::SEE_OTHER, Some(format!("/certificates/{certificate}?changed=1")))
    );
    assert_eq!(status(), "INACTIVE");
}

// ---- the audit configuration ----------------------------------------------------------------------

const ROLE: &str = "arn:aws:iam::123456789012:role/audit";
const EXPIRING: &str = "DEVICE_CERTIFICATE_EXPIRING_CHECK";

/// The account's expiring check: whether enabled, and its threshold.
fn expiring_check(rig: &Rig, who: &Operator) -> (bool, Option<String>) {
    let configuration = rig.world.services.describe_account_audit_configuration(&who.caller).unwrap();
    let check = &configuration.checks[EXPIRING];
    (check.enabled, check.configuration.get("CERT_EXPIRATION_THRESHOLD_IN_DAYS").cloned())
}

fn configuration_form(csrf: &str, days: &str) -> String {
    format!(
        "csrf={csrf}&role_arn={}&enabled.{EXPIRING}=on&setting.{EXPIRING}.CERT_EXPIRATION_THRESHOLD_IN_DAYS={days}",
        crate::html::url_component(ROLE)
    )
}

#[tokio::test]
async fn the_audit_configuration_is_changed_from_its_form() {
    let rig = Rig::new();
    let alice = rig.operator();
    assert_eq!(expiring_check(&rig, &alice), (false, None));
    let saved = rig.post(&alice, "/audits/configuration", &configuration_form(&alice.csrf, "90")).await;
    assert_eq!((saved.status, saved.location.as_deref()), (StatusCode::SEE_OTHER, Some("/audits?saved=1")));
    assert_eq!(expiring_check(&rig, &alice), (true, Some("90".into())));
    let page = rig.get(&alice, "/audits?saved=1").await;
    assert!(page.body.contains("id=\"saved\""));
    assert!(page.body.contains(&format!("id=\"enabled.{EXPIRING}\" value=\"on\" checked")), "ticked");
    assert!(page.body.contains("value=\"90\""), "the threshold shown");
    assert!(page.body.contains(&format!("value=\"{ROLE}\"")), "the role shown");
    // It can be started now.
    assert!(page.body.contains(&format!("name=\"check.{EXPIRING}\"")));
    // Unticking disables it (every check is given by the form).
    let saved = rig
        .post(&alice, "/audits/configuration", &format!("csrf={}&enabled.CONFLICTING_CLIENT_IDS_CHECK=on", alice.csrf))
        .await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER);
    assert!(!expiring_check(&rig, &alice).0);
}

#[tokio::test]
async fn refusals_of_the_audit_configuration_are_shown_and_change_nothing() {
    let rig = Rig::new();
    let alice = rig.operator();
    // The first configuration needs a role ARN (the services' rule, shown as they word it).
    let refused =
        rig.post(&alice, "/audits/configuration", &format!("csrf={}&enabled.{EXPIRING}=on", alice.csrf)).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.body.contains("must give a roleArn"), "{}", refused.body);
    assert_eq!(expiring_check(&rig, &alice), (false, None));
    // Out of range, or not a number: refused by the console, with the range.
    for days in ["29", "1e3", "%3Cscript%3E"] {
        let refused = rig.post(&alice, "/audits/configuration", &configuration_form(&alice.csrf, days)).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{days}");
        assert!(refused.body.contains("a number of days from 30 to 3652"), "{}", refused.body);
        assert!(!refused.body.contains("<script>"));
    }
    assert_eq!(expiring_check(&rig, &alice), (false, None));
    // A check a scheduled audit uses cannot be disabled.
    assert_eq!(
        rig.post(&alice, "/audits/configuration", &configuration_form(&alice.csrf, "60")).await.status,
        StatusCode::SEE_OTHER
    );
    let schedule = certfleet_services::ScheduledAuditDefinition {
        frequency: certfleet_registry::AuditFrequency::Daily,
        day_of_month: None,
        day_of_week: None,
        check_names: vec![EXPIRING.into()],
        tags: Vec::new(),
    };
    rig.world.services.create_scheduled_audit(&alice.caller, "nightly", &schedule).unwrap();
    let refused = rig.post(&alice, "/audits/configuration", &format!("csrf={}", alice.csrf)).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.body.contains("used by the scheduled audits"), "{}", refused.body);
    assert_eq!(expiring_check(&rig, &alice), (true, Some("60".into())));
}

#[tokio::test]
async fn an_attacker_cannot_change_the_audit_configuration() {
    let rig = Rig::new();
    let (alice, mallory) = (rig.operator(), rig.operator());
    for form in [
        configuration_form("", "90").replacen("csrf=&", "", 1),
        configuration_form(&mallory.csrf, "90"),
        configuration_form(&"0".repeat(64), "90"),
    ] {
        assert_eq!(rig.post(&alice, "/audits/configuration", &form).await.status, StatusCode::FORBIDDEN, "{form}");
    }
    assert_eq!(expiring_check(&rig, &alice), (false, None));
    // Mallory's own save changes Mallory's account only.
    assert_eq!(
        rig.post(&mallory, "/audits/configuration", &configuration_form(&mallory.csrf, "90")).await.status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(expiring_check(&rig, &mallory), (true, Some("90".into())));
    assert_eq!(expiring_check(&rig, &alice), (false, None));
    // A form past the bounds is refused before anything is read into it.
    let huge = format!("csrf={}&role_arn={}", alice.csrf, "a".repeat(5000));
    assert_eq!(rig.post(&alice, "/audits/configuration", &huge).await.status, StatusCode::BAD_REQUEST);
}
