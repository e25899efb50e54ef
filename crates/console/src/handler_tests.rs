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
