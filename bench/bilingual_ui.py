"""The bilingual model in the web UI: a screenshot of a Chinese question answered in 中文 mode.

Starts the real server (`alignchat serve` in a subprocess on 127.0.0.1) with the model, opens the web UI
in headless Chromium (Selenium and Debian's chromium/chromium-driver, as the browser tests do), switches
the UI to 中文, asks the question with temperature 0, waits for the whole reply and saves the screenshot.
The reply is written to bench/results/bilingual/bilingual-ui.json; the script fails when it holds no Chinese text.
Chromium needs a font with Chinese glyphs, or the screenshot shows empty boxes: the script refuses to run
without one (`apt-get install fonts-wqy-microhei`).

    python bench/bilingual_ui.py --model runs/bilingual/sft/final      # -> docs/images/bilingual-zh-ui.png
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from serve_support import ServerProcess  # noqa: E402

PROMPT = "床前明月光，下一句是什么？"
HAN = re.compile(r"[\u4e00-\u9fff]")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "runs" / "bilingual" / "sft" / "final"))
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "docs" / "images" / "bilingual-zh-ui.png"))
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "bilingual" / "bilingual-ui.json"))
    args = ap.parse_args()
    fonts = ""
    if shutil.which("fc-list"):
        fonts = subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True).stdout
    if not fonts.strip():
        print("error: no font with Chinese glyphs (fc-list :lang=zh is empty): apt-get install fonts-wqy-microhei",
              file=sys.stderr)
        return 2

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    work = Path(tempfile.mkdtemp(prefix="bilingual-ui-"))
    srv = ServerProcess(args.model, work / "ui.db", "--no-embeddings")
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1400,900", "--lang=en-US"]:
        opts.add_argument(flag)
    driver = None
    try:
        srv.wait_ready(timeout=900)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
        driver.set_page_load_timeout(120)
        wait = WebDriverWait(driver, 1800)
        driver.get(srv.url + "/")
        wait.until(lambda d: d.find_element(By.ID, "user-name").text)
        driver.find_element(By.ID, "lang-btn").click()  # the UI starts in English (--lang=en-US)
        wait.until(lambda d: d.find_element(By.ID, "send-btn").text == "发送")
        driver.execute_script("""
            const t = document.getElementById('temperature'); t.value = 0; t.dispatchEvent(new Event('input'));
            document.getElementById('max-tokens').value = arguments[0];
            document.querySelectorAll('.tool-toggle:checked').forEach((b) => b.click());""", args.max_tokens)
        driver.find_element(By.ID, "composer-input").send_keys(args.prompt)
        driver.find_element(By.ID, "send-btn").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-id]:not([data-id=''])"))
        reply = driver.find_element(By.CSS_SELECTOR, ".msg.assistant[data-id] .body").text
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    finally:
        if driver is not None:
            driver.quit()
        srv.stop()
    chinese = bool(HAN.search(reply))
    result = {"model": str(args.model), "prompt": args.prompt, "ui_language": "zh", "temperature": 0,
              "max_tokens": args.max_tokens, "reply": reply, "reply_has_chinese": chinese, "screenshot": str(out)}
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, ensure_ascii=False))
    return 0 if chinese else 1


if __name__ == "__main__":
    sys.exit(main())
