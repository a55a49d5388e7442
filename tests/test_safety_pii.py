"""Personal data out of training exports: `alignchat feedback export --redact-pii` on a real SQLite database
replaces e-mail addresses, phone numbers and ID numbers with the cleaning stage's placeholders in both
files, and without the flag the export is unchanged (the flag is what removes them)."""
from __future__ import annotations

import json
import subprocess
import sys

from serve_support import ROOT, file_mode

EMAIL, PHONE, CN_ID = "li.na@example.org", "+86 138 1234 5678", "11010519491231002X"


def _export(db_url: str, out, *extra: str) -> tuple[str, str]:
    res = subprocess.run([sys.executable, "-m", "alignchat.cli", "feedback", "export", "--db", db_url,
                          "--out", str(out), *extra], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    return (out / "sft.jsonl").read_text(), (out / "comparisons.jsonl").read_text()


def test_feedback_export_redacts_personal_data(tmp_path):
    from alignchat.serve.store import Demonstration, Feedback, Store
    db_url = f"sqlite:///{tmp_path / 'fb.db'}"
    store = Store(db_url)
    user = store.ensure_user("alice")
    prompt = [{"role": "user", "content": f"Write to {EMAIL} or call {PHONE}; my ID is {CN_ID}."}]
    with store.session() as s, s.begin():
        s.add(Demonstration(user_id=user.id, prompt=prompt, response=f"Sure, I will e-mail {EMAIL}."))
        s.add(Feedback(user_id=user.id, kind="thumb", prompt=prompt, responses=[f"Call {PHONE}."], rating=1))
    store.dispose()

    sft, comps = _export(db_url, tmp_path / "raw")
    assert EMAIL in sft and PHONE in comps  # the plain export keeps the text as it was
    # users' conversations: owner-only files
    assert {file_mode(tmp_path / "raw" / n) for n in ("sft.jsonl", "comparisons.jsonl")} == {0o600}

    sft, comps = _export(db_url, tmp_path / "clean", "--redact-pii")
    for text in (sft, comps):
        assert EMAIL not in text and PHONE not in text and CN_ID not in text
    demo = json.loads(sft.splitlines()[0])
    assert demo["messages"][0]["content"] == "Write to <EMAIL> or call <PHONE>; my ID is <ID>."
    assert demo["messages"][-1]["content"] == "Sure, I will e-mail <EMAIL>."
    thumb = json.loads(comps.splitlines()[0])
    assert thumb["responses"] == ["Call <PHONE>."]
