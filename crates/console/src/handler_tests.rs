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
        Rig::over(certfleet_testkit::world())
    }

    /// A console over `world`.
    pub fn over(world: World) -> Rig {
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

// ---- staging the next chain -----------------------------------------------------------------------

const DOMAIN: &str = "devices.example.com";

/// A rig whose domain claims trust `root` (so a server certificate it issued proves the domain),
/// with the key passphrase loaded.
fn endpoint_rig(root: &certfleet_pki::Issuer) -> Rig {
    let world = certfleet_testkit::world_with(certfleet_services::Config {
        domain_claims: certfleet_services::DomainClaims {
            trust_anchors: vec![root.certificate().clone()],
            ..Default::default()
        },
        ..Default::default()
    });
    world.services.attach_key_passphrase(zeroize::Zeroizing::new(b"console test".to_vec()));
    Rig::over(world)
}

fn root(name: &str) -> certfleet_pki::Issuer {
    certfleet_pki::Issuer::generate_root(
        name,
        "example",
        time::Duration::days(30),
        certfleet_pki::KeyAlgorithm::EcdsaP256,
        START - time::Duration::hours(1),
    )
    .unwrap()
}

/// Imports a server certificate for `domain` issued by `root` into `who`'s account: its ID.
fn import(
    rig: &Rig,
    who: &Operator,
    root: &certfleet_pki::Issuer,
    domain: &str,
    algorithm: certfleet_pki::KeyAlgorithm,
) -> String {
    let (leaf, key) = root
        .issue_server_certificate(
            domain,
            &[domain.into()],
            time::Duration::days(20),
            algorithm,
            START - time::Duration::hours(1),
        )
        .unwrap();
    let arn = rig
        .world
        .services
        .import_server_certificate(
            &who.caller,
            &certfleet_services::ServerCertificateImport {
                certificate_pem: leaf.to_pem(),
                private_key_pem: zeroize::Zeroizing::new(certfleet_pki::pem_encode("PRIVATE KEY", &key)),
                chain_pem: Some(root.certificate().to_pem()),
                certificate_arn: None,
            },
        )
        .unwrap();
    arn.rsplit_once('/').unwrap().1.to_owned()
}

/// Alice's custom domain `devices` on the ECDSA certificate `current`, and two certificates of
/// another root for the next chain (ECDSA, RSA): (rig, alice, current, next ECDSA, next RSA).
fn staged_fleet() -> (Rig, Operator, String, String, String) {
    let (old_root, new_root) = (root("old root"), root("new root"));
    let rig = endpoint_rig(&old_root);
    let alice = rig.operator();
    let current = import(&rig, &alice, &old_root, DOMAIN, certfleet_pki::KeyAlgorithm::EcdsaP256);
    let next_ecdsa = import(&rig, &alice, &new_root, DOMAIN, certfleet_pki::KeyAlgorithm::EcdsaP256);
    let next_rsa = import(&rig, &alice, &new_root, DOMAIN, certfleet_pki::KeyAlgorithm::Rsa2048);
    rig.world
        .services
        .create_domain_configuration(
            &alice.caller,
            &certfleet_services::DomainConfigurationDefinition {
                name: "devices".into(),
                domain_name: Some(DOMAIN.into()),
                server_certificate_arns: vec![
                    rig.world.services.server_certificate_arn(&alice.caller.account, &current),
                ],
                ..Default::default()
            },
        )
        .unwrap();
    (rig, alice, current, next_ecdsa, next_rsa)
}

fn next_chain(rig: &Rig, who: &Operator, name: &str) -> Vec<String> {
    rig.world.services.describe_domain_configuration(&who.caller, name).unwrap().next_chain
}

#[tokio::test]
async fn a_next_chain_is_staged_from_the_accounts_server_certificates_once_confirmed() {
    let (rig, alice, current, next_ecdsa, next_rsa) = staged_fleet();
    let page = rig.get(&alice, "/endpoints/devices").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("id=\"stage-next\""));
    for id in [&current, &next_ecdsa, &next_rsa] {
        assert!(page.body.contains(&format!("<option value=\"{id}\">")), "{id} offered");
    }
    assert!(page.body.contains(&format!("{current} (current chain)")));
    assert!(page.body.contains("Stage a next chain first"), "no migrate before staging");

    // The first post asks, naming what would be staged; nothing is stored yet.
    let path = "/endpoints/devices/next-chain";
    let asked =
        rig.post(&alice, path, &format!("csrf={}&certificate={next_ecdsa}&second={next_rsa}", alice.csrf)).await;
    assert_eq!(asked.status, StatusCode::OK);
    assert!(
        asked.body.contains(&next_ecdsa) && asked.body.contains("RSA_2048") && asked.body.contains("id=\"confirm\"")
    );
    assert!(!asked.body.contains("does not name"), "both name the domain");
    assert!(next_chain(&rig, &alice, "devices").is_empty());
    // Confirmed, it is staged; the page then offers to migrate.
    let done = rig
        .post(&alice, path, &format!("csrf={}&certificate={next_ecdsa}&second={next_rsa}&confirm=yes", alice.csrf))
        .await;
    assert_eq!((done.status, done.location.as_deref()), (StatusCode::SEE_OTHER, Some("/endpoints/devices?changed=1")));
    assert_eq!(next_chain(&rig, &alice, "devices"), [next_ecdsa.clone(), next_rsa.clone()]);
    let page = rig.get(&alice, "/endpoints/devices").await;
    assert!(page.body.contains("id=\"endpoint-migrate\"") && page.body.contains("id=\"next-clear\""));

    // Two ECDSA leaves: the services' refusal is shown, the staged chain stays.
    let refused = rig
        .post(&alice, path, &format!("csrf={}&certificate={current}&second={next_ecdsa}&confirm=yes", alice.csrf))
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.body.contains("at most one ECDSA and one RSA"), "{}", refused.body);
    assert_eq!(next_chain(&rig, &alice, "devices"), [next_ecdsa.clone(), next_rsa.clone()]);
    // A certificate not naming the configuration's domain is staged only past a warning.
    let warned = rig
        .post(&alice, "/endpoints/iot%3AData-ATS/next-chain", &format!("csrf={}&certificate={next_ecdsa}", alice.csrf))
        .await;
    assert!(warned.body.contains("does not name"), "{}", warned.body);
    // Cleared, once confirmed.
    let asked = rig.post(&alice, path, &format!("csrf={}&clear=yes", alice.csrf)).await;
    assert!(asked.body.contains("clear the next chain?"));
    assert_eq!(next_chain(&rig, &alice, "devices").len(), 2);
    rig.post(&alice, path, &format!("csrf={}&clear=yes&confirm=yes", alice.csrf)).await;
    assert!(next_chain(&rig, &alice, "devices").is_empty());

    // While the next chain is served, staging waits for finish or revert.
    rig.post(&alice, path, &format!("csrf={}&certificate={next_ecdsa}&confirm=yes", alice.csrf)).await;
    rig.world
        .services
        .migrate_domain_configuration(&alice.caller, "devices", certfleet_services::MigrationSettings::default())
        .unwrap();
    let page = rig.get(&alice, "/endpoints/devices").await;
    assert!(page.body.contains("id=\"stage-serving\"") && !page.body.contains("id=\"stage-next\""));
}

#[tokio::test]
async fn an_attacker_cannot_stage_a_chain() {
    let (rig, alice, _, next_ecdsa, _) = staged_fleet();
    let mallory = rig.operator();
    let mallorys = import(&rig, &mallory, &root("mallory root"), DOMAIN, certfleet_pki::KeyAlgorithm::EcdsaP256);
    let path = "/endpoints/devices/next-chain";
    // No token, or another session's: refused, nothing staged.
    for form in [
        format!("certificate={next_ecdsa}&confirm=yes"),
        format!("csrf={}&certificate={next_ecdsa}&confirm=yes", mallory.csrf),
    ] {
        assert_eq!(rig.post(&alice, path, &form).await.status, StatusCode::FORBIDDEN, "{form}");
    }
    assert!(next_chain(&rig, &alice, "devices").is_empty());
    // Mallory naming Alice's configuration, with Mallory's or Alice's certificate: not found.
    for certificate in [&mallorys, &next_ecdsa] {
        for confirm in ["", "&confirm=yes"] {
            let form = format!("csrf={}&certificate={certificate}{confirm}", mallory.csrf);
            let answer = rig.post(&mallory, path, &form).await;
            assert_eq!(answer.status, StatusCode::NOT_FOUND, "{form}");
            assert!(!answer.body.contains(DOMAIN));
        }
    }
    // Mallory staging Alice's certificate on Mallory's own endpoint: not found either.
    let own = "/endpoints/iot%3AData-ATS/next-chain";
    for confirm in ["", "&confirm=yes"] {
        let answer = rig.post(&mallory, own, &format!("csrf={}&certificate={next_ecdsa}{confirm}", mallory.csrf)).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
    }
    assert!(next_chain(&rig, &alice, "devices").is_empty());
    assert!(next_chain(&rig, &mallory, "iot:Data-ATS").is_empty());
    // Mallory's page lists Mallory's certificates only.
    let page = rig.get(&mallory, "/endpoints/iot%3AData-ATS").await;
    assert!(page.body.contains(&mallorys) && !page.body.contains(&next_ecdsa));
}
