"""The web UI in headless Chromium (Selenium + Debian's chromium/chromium-driver): send a message and watch the
reply stream in, reload and see the history, give a thumb, pick in compare mode, and find both in the export."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serve_support import ROOT, ServerProcess

pytestmark = pytest.mark.browser


def test_chat_ui_end_to_end(browser, tiny_ckpt, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    srv = ServerProcess(tiny_ckpt, tmp_path / "ui.db", "--no-embeddings").wait_ready()
    wait = WebDriverWait(browser, 120)
    try:
        browser.get(srv.url + "/")
        wait.until(EC.text_to_be_present_in_element((By.ID, "user-name"), "local"))
        # every asset is local: no script or stylesheet points off this server
        srcs = browser.execute_script(
            "return [...document.querySelectorAll('script[src],link[href]')].map(e => e.src || e.href)")
        assert srcs and all(s.startswith(srv.url) for s in srcs)
        assert browser.execute_script("return !!(window.marked && window.DOMPurify && window.hljs)")

        # 1-2. send a message and watch the reply stream in (record every intermediate text of the live answer)
        browser.execute_script("""
            document.getElementById('max-tokens').value = 80;
            // a fixed seed: the random tiny model could otherwise end its answer after one token
            document.getElementById('seed').value = 1234;
            window.__seen = [];
            new MutationObserver(() => {
              const b = document.querySelector('.msg.assistant.streaming .body');
              if (b && b.textContent && window.__seen[window.__seen.length - 1] !== b.textContent)
                window.__seen.push(b.textContent);
            }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
        """)
        box = browser.find_element(By.ID, "composer-input")
        box.send_keys("Hello there, 你好")
        browser.find_element(By.ID, "send-btn").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-id]:not([data-id=''])"))
        seen = browser.execute_script("return window.__seen")
        answer_el = browser.find_element(By.CSS_SELECTOR, ".msg.assistant[data-id]")
        # text was shown while the answer was still streaming (how many repaints that took depends on the
        # machine's speed, so it is not counted)
        assert seen, "no text was shown while the answer streamed"
        answer_id = answer_el.get_attribute("data-id")
        assert browser.find_element(By.CSS_SELECTOR, ".msg.user .body").text == "Hello there, 你好"
        assert browser.find_elements(By.CSS_SELECTOR, "#conv-list .conv-item")

        # 3. reload: the conversation is still there, from the database
        browser.refresh()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f".msg.assistant[data-id='{answer_id}']"))
        assert browser.find_element(By.CSS_SELECTOR, ".msg.user .body").text == "Hello there, 你好"
        assert "Hello there" in browser.find_element(By.CSS_SELECTOR, "#conv-list .conv-item .title").text

        # 4. a thumb up on the answer
        browser.find_element(By.CSS_SELECTOR, f".msg.assistant[data-id='{answer_id}'] .thumb-up").click()
        wait.until(lambda d: "on" in d.find_element(
            By.CSS_SELECTOR, f".msg.assistant[data-id='{answer_id}'] .thumb-up").get_attribute("class"))

        # the language switch relabels the UI
        browser.find_element(By.ID, "lang-btn").click()
        assert browser.find_element(By.ID, "send-btn").text == "发送"
        browser.find_element(By.ID, "lang-btn").click()
        assert browser.find_element(By.ID, "send-btn").text == "Send"

        # 5. compare mode: two answers side by side, pick the second
        browser.find_element(By.ID, "compare-toggle").click()
        box = browser.find_element(By.ID, "composer-input")
        box.send_keys("Which is better?")
        browser.find_element(By.ID, "send-btn").click()
        wait.until(lambda d: len([b for b in d.find_elements(By.CSS_SELECTOR, "#compare-area .pick-btn")
                                  if b.is_enabled()]) == 2)
        cols = browser.find_elements(By.CSS_SELECTOR, "#compare-area .cmp-col")
        assert len(cols) == 2
        browser.find_elements(By.CSS_SELECTOR, "#compare-area .pick-btn")[1].click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant")) == 2)
        shot = tmp_path / "ui.png"
        browser.save_screenshot(str(shot))
        if os.environ.get("ALIGNCHAT_SCREENSHOT_DIR"):
            shutil.copy(shot, Path(os.environ["ALIGNCHAT_SCREENSHOT_DIR"]) / "ui-chat.png")
            browser.find_element(By.CSS_SELECTOR, ".tab[data-tab='label']").click()
            wait.until(lambda d: d.find_element(By.ID, "label-stats").text)
            browser.save_screenshot(str(Path(os.environ["ALIGNCHAT_SCREENSHOT_DIR"]) / "ui-label.png"))
    finally:
        srv.stop()

    # 6. the export holds the thumb and the chosen pair
    out = tmp_path / "export"
    proc = subprocess.run([sys.executable, "-m", "alignchat.cli", "feedback", "export", "--db", srv.db_url,
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    comps = [json.loads(x) for x in (out / "comparisons.jsonl").read_text().splitlines()]
    thumb = [r for r in comps if r["source"] == "ui:thumb"]
    pair = [r for r in comps if r["source"] == "ui:pair"]
    assert len(thumb) == 1 and thumb[0]["rating"] == 1 and thumb[0]["meta"]["message_id"] == answer_id
    assert thumb[0]["prompt"][-1] == {"role": "user", "content": "Hello there, 你好"}
    assert len(pair) == 1 and pair[0]["ranking"] == [1, 0] and len(pair[0]["responses"]) == 2
    assert pair[0]["prompt"][-1] == {"role": "user", "content": "Which is better?"}
