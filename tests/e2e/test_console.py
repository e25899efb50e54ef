"""The operator console in a real browser (Debian's headless Chromium driven by Playwright)
against the real binary, seeded through the AWS CLI: sign-in and sign-out, the overview's numbers
against the registry's, finding a certificate by ID prefix and CN, revoking it from its page
while a device is connected, tenant isolation, CSRF refusals and the failed sign-in bound.
Screenshots of each page go to docs/console/ (docs/console.md shows them)."""

from __future__ import annotations

import http.client
import json
import re
import ssl
import time
import uuid
from pathlib import Path

import pytest

from test_endpoints import ConfiguredServer, Fleet, connected_on, endpoint_cli, import_cert, root_and_server_cert, \
    scrape_metrics, status, wait_for
from test_gateway import make_device, mosquitto, start_sub

from playwright.sync_api import sync_playwright  # noqa: E402 (tests/e2e/requirements.txt)

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"


def console_config(path: Path, extra: str = "") -> Path:
    # Certificates valid 60 days: every one expires within 90 days, none within 30.
    path.write_text(
        "[pki]\ndevice_certificate_validity = \"60d\"\n"
        "[rotation]\nresponse_timeout = \"2s\"\nmax_attempts = 1\nsweep_interval = \"1s\"\n"
        "[console]\naddr = \"127.0.0.1:0\"\nexpiring_gauges_interval = \"1s\"\n" + extra
    )
    return path


def start_server(tmp_path_factory, label: str, extra: str = "") -> ConfiguredServer:
    base = tmp_path_factory.mktemp(label)
    srv = ConfiguredServer(base / "data", base / "server.log", console_config(base / "config.toml", extra))
    srv.start()
    assert srv.endpoints.get("console", "").startswith("https://127.0.0.1:"), srv.endpoints
    return srv


def stop_server(srv: ConfiguredServer) -> None:
    code = srv.stop()
    if code != 0:
        pytest.fail(f"certfleet server exited {code} after SIGTERM (expected 0)\n{srv.log_tail()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory, "certfleet-console")
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (.ci/run does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def context(browser):
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
    try:
        yield context
    finally:
        context.close()


def console_url(server) -> str:
    return server.endpoints["console"]


def sign_in(page, server, profile="default"):
    key_id, secret = server.credentials(profile)
    page.goto(console_url(server) + "signin")
    page.fill("#access-key-id", key_id)
    page.fill("#secret-access-key", secret)
    page.click("#sign-in")
    page.wait_for_url("**/overview")


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def wait_text(page, selector: str, expected, timeout: float = 30) -> None:
    """Waits until the element's text is `expected` (or passes `expected` when it is callable),
    without reloading: the page's own script must change it. (Playwright's wait_for_function
    evaluates strings with eval, which the console's CSP refuses, as it should.)"""
    deadline = time.monotonic() + timeout
    while True:
        text = page.text_content(selector).strip()
        if expected(text) if callable(expected) else text == expected:
            return
        assert time.monotonic() < deadline, f"{selector} shows {text!r}, waiting for {expected!r}"
        time.sleep(0.2)


def number(page, selector: str) -> int:
    return int(page.text_content(selector).strip())


def raw_request(server, method: str, path: str, cookie: str | None = None, body: str | None = None,
                headers: dict | None = None) -> http.client.HTTPResponse:
    """One request outside the browser (no redirects followed), over TLS checked against the
    server root."""
    host, port = console_url(server).removeprefix("https://").rstrip("/").rsplit(":", 1)
    context = ssl.create_default_context(cafile=server.ca_bundle)
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    all_headers = dict(headers or {})
    if cookie:
        all_headers["Cookie"] = cookie
    if body is not None:
        all_headers["Content-Type"] = "application/x-www-form-urlencoded"
    connection.request(method, path, body=body, headers=all_headers)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def session_cookie(context) -> str:
    cookies = [c for c in context.cookies() if c["name"] == "cf_session"]
    assert len(cookies) == 1, context.cookies()
    cookie = cookies[0]
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict", cookie
    assert cookie["expires"] > time.time(), cookie
    return f"cf_session={cookie['value']}"


def registry_certificates(server, profile="default") -> list[dict]:
    return server.aws("list-certificates", "--page-size", "250", profile=profile)["certificates"]


def test_sign_in_and_the_overview_matches_the_registry(server, openssl, context):
    devices = [make_device(server, openssl) for _ in range(4)]
    server.aws("update-certificate", "--certificate-id", devices[0].cert_id, "--new-status", "REVOKED")
    server.aws("update-certificate", "--certificate-id", devices[1].cert_id, "--new-status", "INACTIVE")
    sub = start_sub(server, devices[2], "console/overview", "-W", "60")
    try:
        page = context.new_page()
        page.goto(console_url(server))
        page.wait_for_url("**/signin")
        shot(page, "signin")
        sign_in(page, server)
        certificates = registry_certificates(server)
        active = sum(1 for c in certificates if c["status"] == "ACTIVE")
        assert number(page, "#certificates") == len(certificates)
        assert number(page, "#status-active") == active
        assert number(page, "#status-revoked") == 1
        assert number(page, "#status-inactive") == 1
        # 60-day certificates: every ACTIVE one expires within 90 days, none within 30.
        assert number(page, "#expiring-90") == active
        assert number(page, "#expiring-30") == 0
        assert page.locator("#expiry-timeline rect.bar").count() >= 1
        # The connected count follows the device without a reload (the script polls).
        wait_text(page, "#connected-count", lambda text: int(text) >= 1, timeout=15)
        shot(page, "overview")
        # The gauges count the same certificates, per account and CA.
        account = server.default_account.id
        deadline = time.monotonic() + 10
        line = f'certfleet_certificates_expiring{{account="{account}",ca="none",within="90d"}} {active}'
        while line not in (metrics := scrape_metrics(server)):
            assert time.monotonic() < deadline, f"{line} not in\n{metrics}"
            time.sleep(0.5)
        assert "certfleet_console_sessions 1" in metrics
    finally:
        sub.kill()
        sub.wait()


def test_find_a_certificate_and_revoke_it_while_its_device_is_connected(server, openssl, context):
    device = make_device(server, openssl)
    sub = start_sub(server, device, "console/revoke", "-W", "60")
    try:
        page = context.new_page()
        sign_in(page, server)
        # Find it by its ID prefix...
        page.goto(console_url(server) + "certificates")
        page.fill("#search-id", device.cert_id[:10])
        page.click("#search-submit")
        assert page.locator("#certificates tbody tr").count() == 1
        common_name = page.text_content("#certificates tbody tr td.cn").strip()
        assert common_name.startswith("dev-"), common_name
        # ... by the thing it is attached to ...
        thing = f"console-thing-{uuid.uuid4().hex[:6]}"
        client = server.client()
        client.create_thing(thingName=thing)
        client.attach_thing_principal(thingName=thing, principal=client.describe_certificate(
            certificateId=device.cert_id)["certificateDescription"]["certificateArn"])
        page.fill("#search-id", "")
        page.fill("#search-thing", thing[:-2])
        page.click("#search-submit")
        assert [a.get_attribute("href").rsplit("/", 1)[1] for a in page.locator("a.certificate-link").all()] == [
            device.cert_id]
        # ... and by its subject CN.
        page.fill("#search-thing", "")
        page.fill("#search-cn", common_name)
        page.click("#search-submit")
        rows = page.locator("#certificates tbody tr")
        assert rows.count() == 1
        shot(page, "certificates")
        page.click("a.certificate-link")
        page.wait_for_url(f"**/certificates/{device.cert_id}")
        assert page.text_content("#certificate-status").strip() == "ACTIVE"
        assert "e2e-allow-all" in page.text_content("#policies")
        assert thing in page.text_content("#things")
        # The device is connected: its session shows on the page.
        deadline = time.monotonic() + 10
        while page.locator("#live-sessions tbody tr").count() == 0:
            assert time.monotonic() < deadline, "the connected device is not shown"
            time.sleep(0.3)
            page.reload()
        live_row = page.locator("#live-sessions tbody tr").first.text_content()
        assert "iot:Data-ATS" in live_row and "builtin" in live_row, live_row
        # The connection history (written off the session's path) keeps how the session came.
        deadline = time.monotonic() + 10
        while page.locator("#history tbody tr").count() == 0:
            assert time.monotonic() < deadline, "the session is not in the history"
            time.sleep(0.3)
            page.reload()
        history_row = page.locator("#history tbody tr").first
        assert history_row.locator("td.endpoint").text_content() == "iot:Data-ATS"
        assert history_row.locator("td.chain").text_content() == "builtin"
        assert history_row.locator("td.tls").text_content() in ("TLSv1.2", "TLSv1.3")
        shot(page, "certificate")
        page.click("#action-revoked")
        assert "REVOKED" in page.text_content("main")
        shot(page, "confirm")
        page.click("#confirm")
        page.wait_for_selector("#changed")
        assert page.text_content("#certificate-status").strip() == "REVOKED"
        # The device is cut off at once.
        sub.wait(timeout=5)
        assert sub.returncode != 0, sub.communicate()
        described = server.aws("describe-certificate", "--certificate-id", device.cert_id)
        assert described["certificateDescription"]["status"] == "REVOKED"
        # Trying again is refused, and the overview says why devices were refused.
        again = mosquitto("mosquitto_pub", server, device, "-t", "console/revoke", "-m", "x")
        assert again.returncode != 0
        page.goto(console_url(server) + "overview")
        reasons = dict(zip(page.locator("#refusals td.reason").all_text_contents(),
                           map(int, page.locator("#refusals td.count").all_text_contents())))
        assert reasons.get("Revoked", 0) >= 1, reasons
        assert number(page, "#refused-count") >= 1
        # The revocation closed the session within a second of its commit, on the histogram.
        metrics = scrape_metrics(server)
        count = next(int(line.split()[1]) for line in metrics.splitlines()
                     if line.startswith("certfleet_revocation_to_disconnect_seconds_count "))
        within = next(int(line.split()[1]) for line in metrics.splitlines()
                      if line.startswith('certfleet_revocation_to_disconnect_seconds_bucket{le="1"}'))
        assert count >= 1 and within == count, metrics
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()


def test_a_second_account_sees_none_of_the_firsts_data(server, openssl, browser):
    first = make_device(server, openssl)
    other = server.create_account()
    context = browser.new_context(ignore_https_errors=True)
    try:
        page = context.new_page()
        sign_in(page, server, other.profile)
        assert page.text_content("#account-id").strip() == other.id
        assert number(page, "#certificates") == 0
        page.goto(console_url(server) + "certificates?id=" + first.cert_id[:8])
        assert page.locator("#certificates tbody tr").count() == 0
        page.goto(console_url(server) + "certificates")
        assert page.locator("#certificates tbody tr").count() == 0
        answer = page.goto(console_url(server) + "certificates/" + first.cert_id)
        assert answer.status == 404
        assert "Not found in this account" in page.text_content("main")
        # Its own device shows, and only it.
        own = make_device(server, openssl, profile=other.profile)
        page.goto(console_url(server) + "certificates")
        ids = [a.get_attribute("href").rsplit("/", 1)[1] for a in page.locator("a.certificate-link").all()]
        assert ids == [own.cert_id]
    finally:
        context.close()


def test_a_state_change_without_the_csrf_token_is_refused_and_changes_nothing(server, openssl, context):
    device = make_device(server, openssl)
    page = context.new_page()
    sign_in(page, server)
    cookie = session_cookie(context)
    path = f"/certificates/{device.cert_id}/status"
    for body, headers in [
        ("status=REVOKED&confirm=yes", {}),
        ("status=REVOKED&confirm=yes&csrf=" + "0" * 64, {}),
        ("status=REVOKED&confirm=yes", {"X-CSRF-Token": "f" * 64}),
    ]:
        answer = raw_request(server, "POST", path, cookie=cookie, body=body, headers=headers)
        assert answer.status == 403, (body, headers, answer.status)
    # Sign-out needs the token too.
    assert raw_request(server, "POST", "/signout", cookie=cookie, body="").status == 403
    described = server.aws("describe-certificate", "--certificate-id", device.cert_id)
    assert described["certificateDescription"]["status"] == "ACTIVE"
    # The same request with the session's token (as the page's script would send it) works.
    token = page.get_attribute("meta[name=csrf-token]", "content")
    answer = raw_request(server, "POST", path, cookie=cookie, body="status=INACTIVE&confirm=yes",
                         headers={"X-CSRF-Token": token})
    assert answer.status == 303
    described = server.aws("describe-certificate", "--certificate-id", device.cert_id)
    assert described["certificateDescription"]["status"] == "INACTIVE"
    assert "csrf_mismatch" in scrape_metrics(server)


def test_sign_out_ends_the_session(server, context):
    page = context.new_page()
    sign_in(page, server)
    cookie = session_cookie(context)
    assert raw_request(server, "GET", "/overview", cookie=cookie).status == 200
    page.click("#sign-out")
    page.wait_for_url("**/signin")
    answer = raw_request(server, "GET", "/overview", cookie=cookie)
    assert answer.status == 303 and answer.getheader("Location") == "/signin"
    live = raw_request(server, "GET", "/api/live", cookie=cookie)
    assert live.status == 401


def test_every_metric_the_grafana_dashboard_uses_is_exported(server):
    dashboard = (Path(__file__).resolve().parents[2] / "docs" / "grafana" / "certfleet.json").read_text()
    used = set(re.findall(r"certfleet_[a-z0-9_]+", dashboard))
    metrics = scrape_metrics(server)
    # A family is exported when declared (`# TYPE`), even before its first series.
    exported = {line.split()[2] for line in metrics.splitlines() if line.startswith("# TYPE ")}
    exported |= {line.split("{")[0].split(" ")[0] for line in metrics.splitlines() if line and not line.startswith("#")}
    exported |= {name.removesuffix(suffix) for name in exported for suffix in ("_bucket", "_sum", "_count")}
    assert len(used) >= 8, used
    assert used <= exported, sorted(used - exported)


def test_pages_carry_the_security_headers_and_escape_tenant_strings(server, openssl, context):
    # A thing name cannot carry markup (AWS's pattern), but a CN can: search for one.
    page = context.new_page()
    sign_in(page, server)
    answer = page.goto(console_url(server) + "certificates?cn=%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    headers = answer.headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "no-store"
    assert page.input_value("#search-cn") == "<script>alert(1)</script>"
    assert "<script>alert(1)" not in page.content().split("<main>", 1)[1].replace("&lt;script&gt;", "")
    # A page asked for another host name (a DNS-rebinding page names its own) is refused.
    rebound = raw_request(server, "GET", "/signin", headers={"Host": "attacker.example:8444"})
    assert rebound.status == 421
    assert raw_request(server, "GET", "/signin", headers={"Host": "localhost"}).status == 200
    # Oversized and repeated inputs are refused.
    assert page.goto(console_url(server) + "certificates?limit=100000").status == 400
    assert page.goto(console_url(server) + "certificates?id=ab&id=cd").status == 400
    assert page.goto(console_url(server) + "certificates?cn=" + "x" * 5000).status == 400


def test_the_ca_pages_count_their_devices_and_deactivate_a_ca(server, openssl, browser):
    tenant = server.create_account()
    client = server.client(tenant.profile)
    ca, ca_key = openssl.self_signed_ca(f"console-ca-{uuid.uuid4().hex[:6]}")
    code = client.get_registration_code()["registrationCode"]
    verification = openssl.verification_cert(f"console-ver-{uuid.uuid4().hex[:6]}", ca, ca_key, code)
    ca_id = client.register_ca_certificate(caCertificate=openssl.read(ca), verificationCertificate=openssl.read(verification),
                                           setAsActive=True)["certificateId"]
    for n in range(3):
        cert = openssl.device_cert(f"console-dev-{n}-{uuid.uuid4().hex[:6]}", ca, ca_key)
        client.register_certificate(certificatePem=openssl.read(cert), caCertificatePem=openssl.read(ca), status="ACTIVE")
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        sign_in(page, server, tenant.profile)
        page.click("text=CAs")
        page.wait_for_url("**/cas")
        rows = page.locator("#cas tbody tr")
        assert rows.count() == 1
        assert rows.locator("td.devices").text_content().strip() == "3"
        shot(page, "cas")
        page.click("a.ca-link")
        page.wait_for_url(f"**/cas/{ca_id}")
        assert number(page, "#ca-devices") == 3
        assert page.text_content("#ca-status").strip() == "ACTIVE"
        shot(page, "ca")
        page.click("#ca-certificates")
        assert page.locator("#certificates tbody tr").count() == 3
        page.go_back()
        page.click("#ca-deactivate")
        page.click("#confirm")
        page.wait_for_selector("#changed")
        assert page.text_content("#ca-status").strip() == "INACTIVE"
        described = client.describe_ca_certificate(certificateId=ca_id)["certificateDescription"]
        assert described["status"] == "INACTIVE"
    finally:
        context.close()


def test_a_failed_rotation_is_retried_from_its_campaign(server, openssl, context):
    device = make_device(server, openssl)
    client_id = f"console-rot-{uuid.uuid4().hex[:8]}"
    # The device never answers: its rotation times out (2 s, one attempt) and fails.
    sub = start_sub(server, device, f"management/topic/{client_id}/csr_req", "-i", client_id, "-q", "1", count=2)
    try:
        time.sleep(1.5)  # the gateway records the session in the background
        out = server.certfleet("rotation", "start", device.cert_id, "--data-dir", str(server.data_dir), "--output", "json")
        campaign = json.loads(out.stdout)["campaignId"]
        page = context.new_page()
        sign_in(page, server)
        page.goto(console_url(server) + "rotations")
        link = page.locator(f"a.campaign-link[href='/rotations/{campaign}']")
        assert link.count() == 1
        link.click()
        page.wait_for_url(f"**/rotations/{campaign}")
        deadline = time.monotonic() + 20
        while page.text_content("#rotations tbody td.state").strip() != "failed":
            assert time.monotonic() < deadline, page.text_content("#rotations")
            time.sleep(0.5)
            page.reload()
        assert "1 / 1 closed" in page.text_content("#campaign-progress")
        shot(page, "campaign")
        page.click("#rotations tbody button")
        page.click("#confirm")
        page.wait_for_selector("#changed")
        # The retried rotation times out again (2 s): the progress follows without a reload.
        assert page.text_content("#campaign-states").strip() == "requested 1"
        wait_text(page, "#campaign-states", "failed 1")
        wait_text(page, "#campaign-progress", "1 / 1 closed")
        # The retried rotation asks the device for a CSR again.
        stdout, stderr = sub.communicate(timeout=30)
        assert sub.returncode == 0, stderr
        assert stdout.count(f"management/topic/{client_id}/csr_req") == 2, stdout
        page.goto(console_url(server) + "rotations")
        shot(page, "rotations")
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()


def test_a_rotation_campaign_starts_from_a_search(server, openssl, browser):
    tenant = server.create_account()
    devices = [make_device(server, openssl, profile=tenant.profile) for _ in range(2)]
    inactive = make_device(server, openssl, profile=tenant.profile, active=False)
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        sign_in(page, server, tenant.profile)
        page.goto(console_url(server) + "certificates?before=2099-01-01")
        assert page.locator("#certificates tbody tr").count() == 3
        page.click("#rotate-found-submit")
        assert page.text_content("#rotate-count").strip() == "2", "ACTIVE ones only"
        page.click("#confirm")
        page.wait_for_url("**/rotations/*?changed=1")
        olds = sorted(a.get_attribute("href").rsplit("/", 1)[1] for a in page.locator("#rotations a").all())
        assert olds == sorted(d.cert_id for d in devices)
        assert inactive.cert_id not in olds
        # Never connected: each fails at once, and the campaign is closed.
        assert "2 / 2 closed" in page.text_content("#campaign-progress")
    finally:
        context.close()


def test_an_on_demand_audit_started_from_the_console_finds_the_expiring_certificates(server, openssl, browser):
    tenant = server.create_account()
    devices = [make_device(server, openssl, profile=tenant.profile) for _ in range(2)]
    # 60-day certificates are within a 90-day threshold: both are findings.
    server.aws(
        "update-account-audit-configuration", "--role-arn", "arn:aws:iam::123456789012:role/audit",
        "--audit-check-configurations",
        json.dumps({"DEVICE_CERTIFICATE_EXPIRING_CHECK": {
            "enabled": True, "configuration": {"CERT_EXPIRATION_THRESHOLD_IN_DAYS": "90"}}}),
        profile=tenant.profile,
    )
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        sign_in(page, server, tenant.profile)
        page.goto(console_url(server) + "audits")
        page.click("#start-audit-submit")
        page.wait_for_selector("#started")
        page.click("a.task-link")
        deadline = time.monotonic() + 30
        while page.text_content("#task-status").strip() != "COMPLETED":
            assert time.monotonic() < deadline, page.text_content("main")
            time.sleep(0.5)
            page.reload()
        assert page.text_content("#runs td.non-compliant").strip() == "2"
        links = sorted(a.get_attribute("href").rsplit("/", 1)[1] for a in page.locator("a.finding-certificate").all())
        assert links == sorted(d.cert_id for d in devices)
        shot(page, "audit")
        page.click("a.finding-certificate >> nth=0")
        page.wait_for_url("**/certificates/*")
        assert "DEVICE_CERTIFICATE_EXPIRING_CHECK" in page.text_content("#findings")
        page.goto(console_url(server) + "audits")
        shot(page, "audits")
    finally:
        context.close()


def test_the_audit_configuration_is_changed_from_the_console(server, browser):
    tenant = server.create_account()
    check = "DEVICE_CERTIFICATE_EXPIRING_CHECK"
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        sign_in(page, server, tenant.profile)
        page.goto(console_url(server) + "audits")
        assert page.locator("#no-checks").count() == 1
        # The first configuration needs a role ARN: the refusal is shown, nothing is stored.
        page.check(f"[id='enabled.{check}']")
        with page.expect_response(lambda r: r.url.endswith("/audits/configuration")) as posted:
            page.click("#save-configuration")
        assert posted.value.status == 400
        assert "must give a roleArn" in page.text_content("main")
        described = server.aws("describe-account-audit-configuration", profile=tenant.profile)
        assert not described["auditCheckConfigurations"][check]["enabled"]
        # With one, the check is enabled with its threshold, as the AWS CLI then sees it.
        page.goto(console_url(server) + "audits")
        page.fill("#role-arn", "arn:aws:iam::123456789012:role/console-audit")
        page.check(f"[id='enabled.{check}']")
        page.fill(f"[id='setting.{check}.CERT_EXPIRATION_THRESHOLD_IN_DAYS']", "90")
        page.click("#save-configuration")
        page.wait_for_selector("#saved")
        described = server.aws("describe-account-audit-configuration", profile=tenant.profile)
        assert described["roleArn"] == "arn:aws:iam::123456789012:role/console-audit"
        assert described["auditCheckConfigurations"][check] == {
            "enabled": True, "configuration": {"CERT_EXPIRATION_THRESHOLD_IN_DAYS": "90"}}
        assert page.is_checked(f"[id='enabled.{check}']")
        assert page.input_value(f"[id='setting.{check}.CERT_EXPIRATION_THRESHOLD_IN_DAYS']") == "90"
        assert page.locator(f"#start-audit input[name='check.{check}']").count() == 1
        # Without the session's token, or with another account's session, nothing changes.
        cookie = session_cookie(context)
        form = f"role_arn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fx&setting.{check}.CERT_EXPIRATION_THRESHOLD_IN_DAYS=30"
        assert raw_request(server, "POST", "/audits/configuration", cookie=cookie, body=form).status == 403
        described = server.aws("describe-account-audit-configuration", profile=tenant.profile)
        assert described["auditCheckConfigurations"][check]["configuration"]["CERT_EXPIRATION_THRESHOLD_IN_DAYS"] == "90"
        assert described["roleArn"].endswith("/console-audit")
    finally:
        context.close()


def test_a_root_migration_shows_who_came_back_and_reverts_from_the_console(server, openssl, browser):
    tenant = server.create_account()
    host = server.aws("describe-endpoint", "--endpoint-type", "iot:Data-ATS", profile=tenant.profile)["endpointAddress"]
    root_b, cert_b, key_b = root_and_server_cert(openssl, host, "console-B")
    arn_b = import_cert(server, cert_b, key_b, profile=tenant.profile)
    id_b = arn_b.rsplit("/", 1)[1]
    both = openssl.write("console-both-roots.pem", open(server.ca_bundle).read() + open(root_b).read())
    device = make_device(server, openssl, profile=tenant.profile)
    old_only = [f"old-only-{i}" for i in range(3)]
    trusting_both = [f"both-{i}" for i in range(3)]
    fleet = Fleet(server, device, host, {c: server.ca_bundle for c in old_only} | {c: str(both) for c in trusting_both})
    name = "iot:Data-ATS"
    tenant_server = TenantView(server, tenant)
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
    try:
        wait_for(lambda: connected_on(tenant_server.status(name), "builtin") == 6, "6 clients on the built-in chain")
        page = context.new_page()
        sign_in(page, server, tenant.profile)
        page.goto(console_url(server) + "endpoints")
        page.click("a.endpoint-link[href='/endpoints/iot%3AData%2DATS']")
        assert page.text_content("#endpoint-serving").strip() == "current chain"
        assert page.text_content("#came-back-count").strip() == "-"
        # Migrated by the CLI while the page is open: its numbers follow without a reload.
        tenant_server.cli("migrate", name, "--next-cert-arn", arn_b, "--drain-per-second", "100")
        wait_text(page, "#came-back-count", "3", timeout=60)
        wait_text(page, "#endpoint-serving", "next chain")
        wait_for(lambda: len((tenant_server.status(name).get("drain") or {}).get("notBack", [])) == 3, "3 not back")
        page.reload()
        assert page.text_content("#endpoint-serving").strip() == "next chain"
        assert page.text_content("#came-back-count").strip() == "3"
        assert page.text_content("#not-back-count").strip() == "3"
        assert sorted(page.locator("#not-back li").all_text_contents()) == old_only
        assert id_b in page.text_content("#chains")
        shot(page, "endpoint")
        # The list of who has not come back, as CSV.
        cookie = session_cookie(context)
        answer = raw_request(server, "GET", "/endpoints/iot%3AData%2DATS/devices.csv?which=not_back", cookie=cookie)
        assert answer.status == 200 and answer.getheader("Content-Type").startswith("text/csv")
        with page.expect_download() as download:
            page.click("#csv-not-back")
        lines = Path(download.value.path()).read_text().splitlines()
        assert lines[0] == "client_id,state,migration_id,to_chain"
        assert sorted(line.split(",")[0].strip('"') for line in lines[1:]) == old_only
        # Revert from the console, confirmed: everyone is back on the built-in chain.
        page.click("#endpoint-revert")
        assert "Go back to the current chain" in page.text_content("main")
        page.click("#confirm")
        page.wait_for_selector("#changed")
        assert page.text_content("#endpoint-serving").strip() == "current chain"
        assert "reverted" in page.text_content("#endpoint-migration")
        wait_for(lambda: connected_on(tenant_server.status(name), "builtin") == 6, "all 6 back on the built-in chain")
    finally:
        context.close()
        fleet.close()


def test_a_root_migration_from_the_console_stage_migrate_come_back_finish(server, openssl, browser):
    tenant = server.create_account()
    host = server.aws("describe-endpoint", "--endpoint-type", "iot:Data-ATS", profile=tenant.profile)["endpointAddress"]
    root_b, cert_b, key_b = root_and_server_cert(openssl, host, "console-stage-B")
    arn_b = import_cert(server, cert_b, key_b, profile=tenant.profile)
    id_b = arn_b.rsplit("/", 1)[1]
    both = openssl.write("console-stage-both-roots.pem", open(server.ca_bundle).read() + open(root_b).read())
    device = make_device(server, openssl, profile=tenant.profile)
    trusting_both = [f"stage-both-{i}" for i in range(3)]
    old_only = ["stage-old-only"]
    fleet = Fleet(server, device, host, {c: str(both) for c in trusting_both} | {c: server.ca_bundle for c in old_only})
    name = "iot:Data-ATS"
    tenant_server = TenantView(server, tenant)
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
    try:
        wait_for(lambda: connected_on(tenant_server.status(name), "builtin") == 4, "4 clients on the built-in chain")
        page = context.new_page()
        sign_in(page, server, tenant.profile)
        page.goto(console_url(server) + "endpoints/iot%3AData%2DATS")
        assert page.locator("#endpoint-migrate").count() == 0, "nothing to migrate to yet"
        # Stage: the account's server certificate, confirmed; no handshake changes.
        page.select_option("#next-certificate", id_b)
        shot(page, "endpoint-stage")
        page.click("#stage-next-submit")
        assert id_b in page.text_content("#staged") and "does not name" not in page.text_content("main")
        page.click("#confirm")
        page.wait_for_selector("#changed")
        assert id_b in page.text_content("main")
        assert page.text_content("#endpoint-serving").strip() == "current chain"
        staged = tenant_server.status(name)["certfleet"]
        assert [c["serverCertificateArn"] for c in staged["nextServerCertificates"]] == [arn_b], staged
        assert staged["serving"] == "current", staged
        # Migrate, confirmed: devices trusting the new root come back on it, the other does not.
        page.click("#endpoint-migrate")
        page.click("#confirm")
        page.wait_for_selector("#changed")
        wait_text(page, "#endpoint-serving", "next chain")
        wait_text(page, "#came-back-count", "3", timeout=60)
        wait_for(lambda: connected_on(tenant_server.status(name), id_b) == 3, "3 clients on the new chain")
        page.reload()
        assert page.locator("#not-back li").all_text_contents() == old_only
        assert id_b in page.text_content("#chains")
        # Finish, confirmed: the new chain is the current one, nothing staged, no migration.
        page.click("#endpoint-finish")
        assert "Make the next chain the current one" in page.text_content("main")
        page.click("#confirm")
        page.wait_for_selector("#changed")
        assert page.text_content("#endpoint-migration").strip() == "none"
        assert page.text_content("#endpoint-serving").strip() == "current chain"
        assert page.locator("#endpoint-migrate").count() == 0
        fields = page.text_content("dl.fields")
        assert f"Current chain{id_b}" in fields.replace("\n", "") and "Next chainnone" in fields.replace("\n", ""), fields
        assert all(fleet.leaf[c] == fleet.leaf[trusting_both[0]] for c in trusting_both)
        # Without the session's token, staging is refused and changes nothing.
        cookie = session_cookie(context)
        answer = raw_request(server, "POST", "/endpoints/iot%3AData%2DATS/next-chain", cookie=cookie,
                             body=f"certificate={id_b}&confirm=yes")
        assert answer.status == 403
        page.reload()
        assert "Next chainnone" in page.text_content("dl.fields").replace("\n", "")
    finally:
        context.close()
        fleet.close()


class TenantView:
    """`certfleet endpoint ...` for another account's profile."""

    def __init__(self, server, tenant):
        self.server, self.tenant = server, tenant

    def cli(self, *args: str) -> dict:
        proc = self.server.certfleet("endpoint", *args, "--data-dir", str(self.server.data_dir), "--profile",
                                     self.tenant.profile, "--output", "json")
        return json.loads(proc.stdout)

    def status(self, name: str) -> dict:
        return self.cli("status", name)


def test_failed_sign_ins_are_rate_limited(tmp_path_factory, browser):
    srv = start_server(tmp_path_factory, "certfleet-console-limits", "sign_in_failures_per_peer = 3\n")
    context = browser.new_context(ignore_https_errors=True)
    try:
        key_id, secret = srv.credentials("default")
        page = context.new_page()
        wrong = "wrong-" + uuid.uuid4().hex
        for _ in range(3):
            page.goto(console_url(srv) + "signin")
            page.fill("#access-key-id", key_id)
            page.fill("#secret-access-key", wrong)
            page.click("#sign-in")
            assert "wrong" in page.text_content("#sign-in-error")
        # The fourth attempt is refused unchecked, even with the right secret.
        page.goto(console_url(srv) + "signin")
        page.fill("#access-key-id", key_id)
        page.fill("#secret-access-key", secret)
        with page.expect_response(lambda r: r.url.endswith("/signin") and r.request.method == "POST") as posted:
            page.click("#sign-in")
        assert posted.value.status == 429
        assert "Too many failed sign-ins" in page.text_content("#sign-in-error")
        shot(page, "signin-throttled")
        metrics = scrape_metrics(srv)
        assert 'certfleet_console_refused_total{reason="wrong_secret"} 3' in metrics
        assert 'certfleet_console_refused_total{reason="throttled_peer"} 1' in metrics
        log = srv.log_path.read_text(errors="replace")
        assert "wrong_secret" in log and "throttled_peer" in log
        assert wrong not in log and secret not in log, "a secret reached the log"
        # A sign-in page posted from elsewhere (no matching token cookie) is refused too.
        answer = raw_request(srv, "POST", "/signin",
                             body=f"token={'a' * 64}&access_key_id={key_id}&secret_access_key={secret}")
        assert answer.status in (401, 429)
    finally:
        context.close()
        stop_server(srv)
