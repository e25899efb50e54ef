"""The operator console in a real browser (Debian's headless Chromium driven by Playwright)
against the real binary, seeded through the AWS CLI: sign-in and sign-out, the overview's numbers
against the registry's, finding a certificate by ID prefix and CN, revoking it from its page
while a device is connected, tenant isolation, CSRF refusals and the failed sign-in bound.
Screenshots of each page go to docs/console/ (docs/console.md shows them)."""

from __future__ import annotations

import http.client
import ssl
import time
import uuid
from pathlib import Path

import pytest

from test_endpoints import ConfiguredServer, scrape_metrics
from test_gateway import make_device, start_sub

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"


def console_config(path: Path, extra: str = "") -> Path:
    # Certificates valid 60 days: every one expires within 90 days, none within 30.
    path.write_text(
        "[pki]\ndevice_certificate_validity = \"60d\"\n"
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
    with playwright_sync.sync_playwright() as playwright:
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
        page.wait_for_function("Number(document.querySelector('#connected-count').textContent) >= 1", timeout=15000)
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
        # ... and by its subject CN.
        page.fill("#search-id", "")
        page.fill("#search-cn", common_name)
        page.click("#search-submit")
        rows = page.locator("#certificates tbody tr")
        assert rows.count() == 1
        shot(page, "certificates")
        page.click("a.certificate-link")
        page.wait_for_url(f"**/certificates/{device.cert_id}")
        assert page.text_content("#certificate-status").strip() == "ACTIVE"
        assert "e2e-allow-all" in page.text_content("#policies")
        # The device is connected: its session shows on the page.
        deadline = time.monotonic() + 10
        while page.locator("#live-sessions tbody tr").count() == 0:
            assert time.monotonic() < deadline, "the connected device is not shown"
            time.sleep(0.3)
            page.reload()
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
    # Oversized and repeated inputs are refused.
    assert page.goto(console_url(server) + "certificates?limit=100000").status == 400
    assert page.goto(console_url(server) + "certificates?id=ab&id=cd").status == 400
    assert page.goto(console_url(server) + "certificates?cn=" + "x" * 5000).status == 400


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
