"""The web UI's built-in tools in headless Chromium against a real `alignchat serve --tools calculator`: switch the
calculator on, ask "What is 37×43?", see the model's tool call and the calculator's result 1591 inline as a
collapsible element and the answer 1591, and see them again after a reload; and a hostile tool result renders
as inert text.

How the test is deterministic and honest: the server runs `tools_support.tools_ckpt()`, a random tiny model
fine-tuned with the project's SFT (alignchat/train/sft.py) for 150 steps on three conversations written in the
project's tools format, one of which is "What is 37×43?" -> a `<tool_call>` to `calculator` with
`{"expression": "37*43"}` -> the tool's answer -> "1591". Sampling is greedy (temperature 0 in the UI's
settings), so the model writes that call by itself when the server offers the calculator; nothing forces
or rewrites its arguments. The 1591 in the tool result is the real calculator evaluating the arguments the
model generated, stored by the server and rendered by the UI."""
from __future__ import annotations

import pytest

from serve_support import ServerProcess
from tools_support import ANSWER, EXPRESSION, QUESTION, tools_ckpt

pytestmark = pytest.mark.browser


def _server(tmp_path) -> ServerProcess:
    policy = tmp_path / "no-moderation.toml"  # the tools are tested here, not the moderation classifier
    policy.write_text("enabled = false\n")
    return ServerProcess(tools_ckpt(), tmp_path / "ui.db", "--no-embeddings", "--tools", "calculator",
                         "--moderation-policy", str(policy)).wait_ready()


def test_calculator_call_and_result_show_inline(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    srv = _server(tmp_path)
    wait = WebDriverWait(browser, 120)
    try:
        browser.get(srv.url + "/")
        wait.until(EC.text_to_be_present_in_element((By.ID, "user-name"), "local"))
        assert browser.find_element(By.ID, "tools-box").is_displayed()
        browser.execute_script("""
            document.getElementById('temperature').value = 0;
            document.getElementById('max-tokens').value = 64;""")
        browser.find_element(By.ID, "tool-calculator").click()
        browser.find_element(By.ID, "composer-input").send_keys(QUESTION)
        browser.find_element(By.ID, "send-btn").click()

        answer_sel = ".msg.assistant[data-id]:not(.tool-round):not([data-id=''])"
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, answer_sel))
        wait.until(lambda d: not d.find_element(By.ID, "send-btn").get_attribute("class").count("hidden"))

        def check_round():
            [details] = browser.find_elements(By.CSS_SELECTOR, "#messages .tool-round details.tool-call")
            assert details.get_attribute("data-tool") == "calculator"
            assert details.get_attribute("open") is None  # collapsed, with the result in its summary
            summary = details.find_element(By.TAG_NAME, "summary")
            assert summary.text == f"Tool: calculator → {ANSWER}"
            summary.click()
            assert details.find_element(By.CSS_SELECTOR, "pre.tool-args").text == \
                f'{{"expression": "{EXPRESSION}"}}'
            assert details.find_element(By.CSS_SELECTOR, "pre.tool-result").text == ANSWER
            assert browser.find_element(By.CSS_SELECTOR, f"{answer_sel} .body").text == ANSWER
            # in order: the question, the tool round, the answer
            kinds = browser.execute_script("""return [...document.querySelectorAll('#messages .msg')].map(
                m => m.classList.contains('tool-round') ? 'tool' : m.classList.contains('user') ? 'user' : 'answer')""")
            assert kinds == ["user", "tool", "answer"]

        check_round()
        browser.refresh()  # from the database
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#messages .tool-round details.tool-call"))
        check_round()
        assert browser.find_element(By.ID, "tool-calculator").is_selected()  # the toggle is the conversation's
    finally:
        srv.stop()


def test_a_hostile_tool_result_renders_as_text(browser, tmp_path):
    """A tool result, its arguments and the tool's name are hostile: whatever a tool printed is shown as
    text, runs nothing and adds no element."""
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from alignchat.serve.store import Message, Store

    srv = _server(tmp_path)
    wait = WebDriverWait(browser, 120)
    evil = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>**bold** [a](javascript:x)'
    try:
        cid = httpx.post(srv.url + "/api/conversations", json={"title": "hostile"}, timeout=60).json()["id"]
        # stored exactly as the server stores a tool round (ui._save_tool_round), with hostile strings in it
        store = Store(srv.db_url)
        with store.session() as s, s.begin():
            call = {"id": "call_1", "type": "function",
                    "function": {"name": "python<img src=x onerror=window.__pwned=3>", "arguments": evil}}
            s.add_all([Message(conversation_id=cid, seq=0, role="user", content="run it"),
                       Message(conversation_id=cid, seq=1, role="assistant", content="", finish_reason="tool_calls",
                               meta={"tool_calls": [call]}),
                       Message(conversation_id=cid, seq=2, role="tool", content=evil,
                               meta={"tool_call_id": "call_1", "name": "python", "arguments": evil, "error": False})])
        store.dispose()
        browser.get(srv.url + "/")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"#conv-list .conv-item[data-id='{cid}']"))
        browser.find_element(By.CSS_SELECTOR, f"#conv-list .conv-item[data-id='{cid}']").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "details.tool-call"))
        details = browser.find_element(By.CSS_SELECTOR, "details.tool-call")
        details.find_element(By.TAG_NAME, "summary").click()
        assert details.find_element(By.CSS_SELECTOR, "pre.tool-result").text == evil
        assert details.find_element(By.CSS_SELECTOR, "pre.tool-args").text == evil
        assert "python<img src=x onerror=window.__pwned=3>" in details.find_element(By.TAG_NAME, "summary").text
        tags = browser.execute_script(
            "return [...arguments[0].querySelectorAll('*')].map(e => e.tagName.toLowerCase())", details)
        assert sorted(tags) == ["pre", "pre", "summary"]
        assert browser.execute_script("return typeof window.__pwned") == "undefined"
        assert browser.find_elements(By.CSS_SELECTOR, "#messages img, #messages script") == []
    finally:
        srv.stop()
