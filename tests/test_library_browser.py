"""Library mode in headless Chromium (Selenium): add a document through the upload box, ask a question,
click a citation and see the cited passage, against a real `alignchat serve` with the tiny model."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from library_corpus import CORAL  # noqa: E402
from serve_support import ServerProcess  # noqa: E402

pytestmark = pytest.mark.browser


@contextmanager
def library_tab(browser, tiny_ckpt, tmp_path):
    """A server with the tiny model (no embeddings, its own home), the browser on its Library tab: yields
    (server, a 180 s WebDriverWait); the server stops afterwards."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    srv = ServerProcess(tiny_ckpt, tmp_path / "lib-ui.db", "--no-embeddings",
                        env={"ALIGNCHAT_HOME": str(tmp_path / "home")}).wait_ready()
    wait = WebDriverWait(browser, 180)
    try:
        browser.get(srv.url + "/")
        wait.until(EC.text_to_be_present_in_element((By.ID, "user-name"), "local"))
        browser.find_element(By.CSS_SELECTOR, ".tab[data-tab='library']").click()
        wait.until(EC.presence_of_element_located((By.ID, "lib-file")))
        yield srv, wait
    finally:
        srv.stop()


def test_library_mode_add_ask_click_citation(browser, tiny_ckpt, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    doc = tmp_path / "coral_reefs.md"
    doc.write_text(CORAL)
    with library_tab(browser, tiny_ckpt, tmp_path) as (srv, wait):
        # add a document
        browser.find_element(By.ID, "lib-file").send_keys(str(doc))
        browser.find_element(By.ID, "lib-upload").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "lib-docs"), "Coral Reef Bleaching Under Ocean Warming"))
        assert "added" in browser.find_element(By.ID, "lib-status").text

        # ask in Library mode
        box = browser.find_element(By.ID, "lib-question")
        box.send_keys("Why do corals turn white when the sea gets too warm?")
        browser.find_element(By.ID, "lib-ask").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#lib-answer a.lib-cite"))
        answer = browser.find_element(By.CSS_SELECTOR, "#lib-answer .lib-answer-text").text
        assert "expel the algae" in answer or "zooxanthellae" in answer
        refs = browser.find_element(By.CSS_SELECTOR, "#lib-answer .lib-refs").text
        assert "Maria Lopez, Kenji Sato (2019)" in refs

        # click a citation: the passage appears, with its document
        cite = browser.find_element(By.CSS_SELECTOR, "#lib-answer a.lib-cite")
        passage_id = cite.get_attribute("data-passage-id")
        cite.click()
        wait.until(EC.visibility_of_element_located((By.ID, "lib-passage")))
        wait.until(EC.text_to_be_present_in_element((By.ID, "lib-passage"), passage_id))
        shown = browser.find_element(By.ID, "lib-passage-text").text
        assert "coral" in shown.lower() and len(shown) > 100
        assert "Coral Reef Bleaching Under Ocean Warming" in browser.find_element(By.ID, "lib-passage").text


def test_library_mode_shows_metadata_citation_graph_and_review_table(browser, tiny_ckpt, tmp_path):
    """A document's metadata, references and citation graph, and the review's groups, table and gaps; document
    text that looks like HTML is shown as text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    from library_papers import PAPER_C, write_papers

    papers = write_papers(tmp_path)
    hostile = tmp_path / "hostile.txt"
    hostile.write_text(PAPER_C.replace("Large Language Models in Academic Libraries: A Survey",
                                       '<img src=x onerror="window.pwned=1"> Chatbots at the <b>Desk</b>', 1)
                       .replace("Jane Doe, John Smith and Ann Lee", "Ada Byron, Alan Turing"))
    with library_tab(browser, tiny_ckpt, tmp_path) as (srv, wait):
        browser.find_element(By.ID, "lib-file").send_keys("\n".join(str(p) for p in (papers["C"], papers["D"], hostile)))
        browser.find_element(By.ID, "lib-upload").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "lib-docs"), "Chatbots at the <b>Desk</b>"))

        # a document's metadata and its citation graph
        link = next(a for a in browser.find_elements(By.CSS_SELECTOR, "#lib-docs a.lib-doc-open")
                    if a.text.startswith("Large Language Models"))
        link.click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "lib-doc"), "Jane Doe, John Smith, Ann Lee"))
        panel = browser.find_element(By.ID, "lib-doc").text
        assert "Department of Information Science, University of Toronto, Canada" in panel
        assert "We survey how academic libraries" in panel and "large language models; academic libraries" in panel
        assert "References (4)" in panel and "Defining artificial intelligence for librarians" in panel
        cites = browser.find_element(By.CSS_SELECTOR, "#lib-doc [data-graph='cites']")
        assert "Retrieval-Augmented Generation for Library Question Answering" in cites.text
        cites.find_element(By.CSS_SELECTOR, "a.lib-doc-link").click()  # follow the link to the cited paper
        wait.until(EC.text_to_be_present_in_element((By.ID, "lib-doc-title"), "Retrieval-Augmented Generation"))
        cited_by = browser.find_element(By.CSS_SELECTOR, "#lib-doc [data-graph='citedBy']").text
        assert "Large Language Models in Academic Libraries" in cited_by

        # the review: groups, the comparison table, the gaps
        browser.find_element(By.ID, "lib-review-run").click()
        wait.until(EC.presence_of_element_located((By.ID, "lib-gaps")))
        rows = browser.find_elements(By.CSS_SELECTOR, "#lib-review-table tbody tr")
        assert len(rows) == 3 and any("84%" in r.text for r in rows)
        assert browser.find_element(By.ID, "lib-gaps").text.startswith("Gaps:")
        assert browser.find_elements(By.CSS_SELECTOR, "#lib-review .lib-group a.lib-cite")
        # hostile document text stayed text
        assert not browser.find_elements(By.CSS_SELECTOR, ".alignchat-library img, .alignchat-library b")
        assert browser.execute_script("return window.pwned === undefined")
