"""Cross-site request forgery in headless Chromium: a plain HTML page on another origin (a second loopback
server: another port is another origin, and the same site) submits forms to the alignchat server's library
upload and to /api/logout. Nothing gets planted, and the logged-in session survives."""
from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import httpx
import pytest

from serve_support import ServerProcess, users_cli

pytestmark = pytest.mark.browser

PLANT = "Coral reefs planted by a foreign page: the attacker wrote this passage about reef bleaching."


@pytest.fixture
def foreign_site(tmp_path):
    """Serve files from a folder on another loopback port; yields (folder, base URL)."""
    root = tmp_path / "foreign"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _attack_page(root: Path, target: str) -> str:
    """The page: one form per forged request, posting to `target` as plain HTML forms do."""
    (root / "attack.html").write_text(f"""<!doctype html><html><body>
<form id="plant" method="post" enctype="text/plain" action="{target}/v1/library/documents?filename=planted.txt">
  <input type="hidden" name="{PLANT}" value=" More of it."><button>plant</button></form>
<form id="logout" method="post" action="{target}/api/logout"><button>logout</button></form>
</body></html>""")
    return "/attack.html"


def _submit(browser, page_url: str, form: str, target: str) -> None:
    """Open the foreign page, submit one form, wait until the browser shows the alignchat server's answer."""
    from selenium.webdriver.support.ui import WebDriverWait
    browser.get(page_url)
    browser.execute_script(f"document.getElementById('{form}').submit()")
    WebDriverWait(browser, 60).until(lambda d: d.current_url.startswith(target)
                                     and d.execute_script("return document.readyState") == "complete")


def _fetch_json(browser, path: str) -> dict:
    """GET `path` from the page currently open (same origin, with its cookies): {"status", "body"}."""
    return browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(arguments[0], {credentials: "same-origin"})
          .then(async r => done({status: r.status, body: await r.json()}))
          .catch(e => done({status: 0, body: String(e)}));""", path)


def test_foreign_form_cannot_plant_a_document_for_the_local_user(browser, tiny_ckpt, tmp_path, foreign_site):
    root, foreign = foreign_site
    srv = ServerProcess(tiny_ckpt, tmp_path / "csrf-local.db", "--no-embeddings",
                        env={"ALIGNCHAT_HOME": str(tmp_path / "home")}).wait_ready()
    try:
        page = foreign + _attack_page(root, srv.url)
        _submit(browser, page, "plant", srv.url)
        assert "cross_site_request" in browser.page_source
        # the credential-less local user's library is untouched
        assert httpx.get(srv.url + "/v1/library/documents", timeout=30).json()["data"] == []
    finally:
        srv.stop()


def test_foreign_form_cannot_log_out_or_plant_with_a_session(browser, tiny_ckpt, tmp_path, foreign_site):
    root, foreign = foreign_site
    srv = ServerProcess(tiny_ckpt, tmp_path / "csrf-login.db", "--no-embeddings", "--require-login",
                        env={"ALIGNCHAT_HOME": str(tmp_path / "home")}).wait_ready()
    try:
        users_cli(srv.db_url, "add", "alice", "--password-stdin", stdin="alice-password\n")
        browser.get(srv.url + "/")
        status = browser.execute_async_script("""
            const done = arguments[arguments.length - 1];
            fetch("/api/login", {method: "POST", headers: {"Content-Type": "application/json"},
                                 body: JSON.stringify({username: "alice", password: "alice-password"})})
              .then(r => done(r.status)).catch(e => done(String(e)));""")
        assert status == 200
        assert _fetch_json(browser, "/api/me")["body"]["user"]["username"] == "alice"

        page = foreign + _attack_page(root, srv.url)
        _submit(browser, page, "logout", srv.url)
        assert "cross_site_request" in browser.page_source
        _submit(browser, page, "plant", srv.url)
        assert "cross_site_request" in browser.page_source

        browser.get(srv.url + "/")
        me = _fetch_json(browser, "/api/me")
        assert me["status"] == 200 and me["body"]["user"]["username"] == "alice"  # still logged in
        docs = _fetch_json(browser, "/v1/library/documents")
        assert docs["status"] == 200 and docs["body"]["data"] == []  # nothing planted
    finally:
        srv.stop()
